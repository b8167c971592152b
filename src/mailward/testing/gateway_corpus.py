"""A seeded corpus of inbound mail for the gateway's checks, with the DNS to match
(shipped test support: used by tests/e2e/test_gateway_corpus.py and
bench/pipeline_bench.py).

    keys = sender_keys(tmp / "keys")              # DKIM keys of sender.test
    corpus = build_corpus(7, 60, keys, recipients=["alice@example.test"])
    with TestDns() as dns:
        publish(dns, keys)                        # SPF, DKIM, DMARC, PTR/A, the DNSBL
        for m in corpus:                          # send m.data from m.source_ip ...
            ...                                   # ... and compare with m.expected

The same seed, count, mix and recipients give the same messages (only the Date fields,
which are set near the time of building, and the DKIM signatures' t= differ), so a
failure can be reproduced and a benchmark's runs compare like with like.

The world the corpus lives in (`dns_data`): sender.test publishes SPF
"ip4:127.0.0.0/8 -all", DKIM keys (Ed25519 and RSA-2048, `sender_keys`) and DMARC
p=reject; promo.test and spoofer.test publish nothing; 127.0.0.1 has PTR
mail.sender.test (and back), 127.0.0.2 has PTR mx.promo.test (and back) and is listed
in the DNSBL zone (`DNSBL`, "bl.test"; RFC 5782 5: 127.0.0.2 is every list's test
entry). Clients send from 127.0.0.1 unless said otherwise (Linux routes all of
127.0.0.0/8 to the loopback interface, so a test client can bind either address).

The kinds, and what a gateway with every check on must decide (`expected`, for a
configuration with the DNSBL at a score of at least `spam.junk_score` minus 2, no
trained Bayes filter, and the default attachment policy; `KINDS` has the table):

- ham_text, ham_alt, ham_attach: ordinary mail from sender.test, DKIM-signed, SPF and
  DMARC pass: text; text + HTML alternative; the same with a PDF-, zip- or
  docx-shaped attachment (up to ~1 MB encoded). -> "inbox", X-Spam-Status "No".
- spam_listed: HTML-only mail (capital subject half the time, link shorteners) from
  promo.test (no SPF) sent from 127.0.0.2, which the DNSBL lists. -> "junk": the
  listing (5 points by default) plus MIME_HTML_ONLY, URI_SHORTENER and SPF_NONE (2).
- spam_unlisted: the same shape from 127.0.0.1 (not listed). -> "inbox": on the rules
  alone it scores under the Junk score (a filter's false negative, kept on purpose);
  a trained Bayes filter or rspamd may put it in Junk, so tests that want a fixed
  outcome leave it out (`GATEWAY_MIX` does).
- spam_rules: HTML-only mail from 127.0.0.1 (not listed) that trips enough of our own
  deterministic rules to be junked without any blocklist: all-capitals subject, a
  link to a bare IP address and to a shortener, a HELO that is no domain name, SPF
  none. -> "junk" (6 points by those rules against the default Junk score of 5;
  rspamd's packaged rules add ~4, far from the reject score of 15).
- gtube: text mail carrying the GTUBE test string. -> "refused:550" 5.7.1 (spam).
- spoof: From: ceo@sender.test sent by spoofer.test, unsigned, so DMARC fails under
  p=reject. -> "refused:550" 5.7.1 (sender authentication).
- eicar: DKIM-signed mail from sender.test with the EICAR test file attached, as a
  text file or inside a zip. -> "refused:554" 5.7.1 (malware, found by clamd).
- exe: DKIM-signed mail with a Windows program attached, either named
  "invoice.pdf.exe" or named "scan.pdf" with a PE header in it. -> "refused:554"
  5.7.1 (the attachment policy's blocked types, by name or by content).
- zip_bomb: DKIM-signed mail with a zip whose one member expands over 1000:1.
  -> "refused:552" 5.3.4 (the archive compression-ratio limit).
- encrypted_zip: DKIM-signed mail with a password-protected (ZipCrypto) zip and the
  password in the text, the usual way malware gets past scanners. -> "held": the
  attachment policy cannot look inside, and its `uninspectable` default is to
  quarantine (local recipients get a notice in their INBOX instead).

`expected` is "inbox", "junk", "held" or "refused:<code>"; `enhanced_code` is the
refusal's RFC 3463 code ("" otherwise) and `check` the content check (or "auth") that
makes the decision. The EICAR file and GTUBE string are assembled at run time, so no
file of this repository is itself flagged.
"""

from __future__ import annotations

import base64
import io
import math
import random
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mailward.crypto.dkim import DkimKey, dns_records, generate_domain_keys, sign_message
from mailward.spam.rules import GTUBE
from mailward.testing.clamd import eicar

if TYPE_CHECKING:
    from mailward.testing.dns_server import TestDns

__all__ = [
    "BENCH_MIX",
    "CLEAN_IP",
    "DNSBL",
    "GATEWAY_MIX",
    "KINDS",
    "LISTED_IP",
    "SENDER_DOMAIN",
    "SPAM_DOMAIN",
    "SPOOF_DOMAIN",
    "CorpusMaker",
    "CorpusMessage",
    "KindSpec",
    "build_corpus",
    "dns_data",
    "publish",
    "sender_keys",
]

SENDER_DOMAIN = "sender.test"  # SPF, DKIM, DMARC p=reject
SPAM_DOMAIN = "promo.test"  # no SPF, no DMARC
SPOOF_DOMAIN = "spoofer.test"
DNSBL = "bl.test"
CLEAN_IP = "127.0.0.1"
LISTED_IP = "127.0.0.2"  # RFC 5782 5: every list's test entry
SELECTOR_DATE = "202401"

Signer = Callable[[bytes], bytes]  # message -> the DKIM-Signature field(s) to prepend


@dataclass(frozen=True, slots=True)
class KindSpec:
    expected: str  # "inbox" | "junk" | "held" | "refused:<code>"
    enhanced_code: str  # RFC 3463, refusals only
    check: str  # what decides: "spam", "auth", "malware", "attachments"
    what: str


KINDS: dict[str, KindSpec] = {
    "ham_text": KindSpec("inbox", "", "spam", "plain text, DKIM-signed, SPF/DMARC pass"),
    "ham_alt": KindSpec("inbox", "", "spam", "text + HTML alternative, DKIM-signed"),
    "ham_attach": KindSpec("inbox", "", "spam", "with a PDF, zip or docx, DKIM-signed"),
    "spam_listed": KindSpec("junk", "", "spam", "HTML-only spam from a DNSBL-listed IP"),
    "spam_unlisted": KindSpec("inbox", "", "spam", "HTML-only spam, unlisted (under Junk)"),
    "spam_rules": KindSpec("junk", "", "spam", "unlisted spam over Junk on our rules"),
    "gtube": KindSpec("refused:550", "5.7.1", "spam", "the GTUBE test string"),
    "spoof": KindSpec("refused:550", "5.7.1", "auth", "From: sender.test, DMARC p=reject"),
    "eicar": KindSpec("refused:554", "5.7.1", "malware", "EICAR attached (text or zip)"),
    "exe": KindSpec("refused:554", "5.7.1", "attachments", "a Windows program attached"),
    "zip_bomb": KindSpec("refused:552", "5.3.4", "attachments", "zip expanding > 1000:1"),
    "encrypted_zip": KindSpec("held", "", "attachments", "password-protected zip"),
}

# Share of the corpus per kind; the rest is ham_text. The benchmark's mix (what
# bench/pipeline_bench.py measures; changing it changes its corpus):
BENCH_MIX: dict[str, float] = {
    "ham_alt": 0.25,
    "ham_attach": 0.20,
    "spam_listed": 0.12,
    "spam_unlisted": 0.05,
    "eicar": 0.03,
    "gtube": 0.02,
    "spoof": 0.03,
}
# Every kind with a fixed outcome, each at least 3 times in 60 messages.
GATEWAY_MIX: dict[str, float] = {
    "ham_alt": 0.15,
    "ham_attach": 0.15,
    "spam_listed": 0.10,
    "spam_rules": 0.10,
    "gtube": 0.05,
    "spoof": 0.05,
    "eicar": 0.08,
    "exe": 0.05,
    "zip_bomb": 0.05,
    "encrypted_zip": 0.05,
}

_WORD_TEXT = (
    "the meeting report quarter budget project team review please attached find update "
    "schedule thanks regards customer invoice order shipment delivery office agenda notes "
    "draft version final minutes call tomorrow week month plan results sales figures "
    "design proposal contract client support ticket issue release service server data "
    "summary question answer follow up next steps deadline friday monday lunch travel "
    "hotel flight conference slides feedback comments changes approved signed payment "
    "account statement balance training course workshop room booking calendar invite"
)
WORDS = tuple(_WORD_TEXT.split())
_SPAM_TEXT = (
    "free winner cash prize offer limited exclusive deal click now claim bonus discount "
    "guaranteed urgent act today lowest price viagra casino loan credit unsecured income "
    "work from home earn money fast risk free no obligation congratulations selected"
)
SPAM_WORDS = tuple(_SPAM_TEXT.split())
SHORTENERS = ("bit.ly", "tinyurl.com", "t.co", "is.gd", "cutt.ly", "rb.gy")
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class CorpusMessage:
    kind: str
    data: bytes  # as the client sends it (CRLF line ends, no trace fields)
    sender: str  # MAIL FROM
    recipients: tuple[str, ...]  # RCPT TO
    helo: str
    source_ip: str  # the client address to send from
    expected: str  # "inbox" | "junk" | "held" | "refused:<code>"
    enhanced_code: str  # of the refusal ("" when accepted)
    check: str  # the check that decides
    message_id: str  # the Message-ID field's value, with the angle brackets


# --------------------------------------------------------------------------- parts


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _text(rng: random.Random, size: int, words: Sequence[str] = WORDS) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(6, 11)))
        line = line[0].upper() + line[1:] + "."
        lines.append(line)
        total += len(line) + 2
        if rng.random() < 0.15:
            lines.append("")
    return "\r\n".join(lines) + "\r\n"


def _html(rng: random.Random, text: str, links: Sequence[str]) -> str:
    paragraphs = [p for p in text.split("\r\n") if p]
    out = ["<html><body>"]
    for i, p in enumerate(paragraphs):
        if links and i % 4 == 0:
            p += f' <a href="{rng.choice(links)}">more</a>'
        out.append(f"<p>{p}</p>")
    out.append("</body></html>")
    return "\r\n".join(out) + "\r\n"


def _b64(data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)) + "\r\n"


def _pdf(rng: random.Random, size: int) -> bytes:
    # A PDF-shaped file: header, a (random, incompressible) stream object, trailer.
    stream = rng.randbytes(max(0, size - 200))
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"
    head += f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode()
    return head + stream + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def _zip(rng: random.Random, size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("report.txt", _ZIP_TIME), _text(rng, size // 2))
        z.writestr(zipfile.ZipInfo("data.csv", _ZIP_TIME), rng.randbytes(size // 2))
    return buf.getvalue()


def _docx(rng: random.Random, size: int) -> bytes:
    body = "".join(
        f"<w:p><w:r><w:t>{line}</w:t></w:r></w:p>" for line in _text(rng, size // 2).split("\r\n")
    )
    parts: dict[str, str | bytes] = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats'
            '.org/package/2006/content-types"><Default Extension="xml" ContentType="application'
            '/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxml'
            'formats-officedocument.wordprocessingml.document.main+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxml'
            'formats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
            'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
            'Target="word/document.xml"/></Relationships>'
        ),
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.'
            'openxmlformats.org/wordprocessingml/2006/main"><w:body>'
            f"{body}</w:body></w:document>"
        ),
        "docProps/thumbnail.jpeg": rng.randbytes(size // 3),  # incompressible, like images
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in parts.items():
            z.writestr(zipfile.ZipInfo(name, _ZIP_TIME), content)
    return buf.getvalue()


def _program(rng: random.Random) -> bytes:
    """A PE-shaped Windows program: a DOS header whose e_lfanew (offset 0x3C) points
    at a PE signature, then filler."""
    return b"MZ" + b"\x00" * 58 + (64).to_bytes(4, "little") + b"PE\x00\x00" + rng.randbytes(4000)


def _zip_bomb(size: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(zipfile.ZipInfo("payload.bin", _ZIP_TIME), bytes(size), zipfile.ZIP_DEFLATED)
    return buf.getvalue()


class _ZipCrypto:
    """Traditional PKWARE encryption (APPNOTE.TXT 6.1), which zipfile reads but does
    not write."""

    def __init__(self, password: bytes) -> None:
        self.keys = [0x12345678, 0x23456789, 0x34567890]
        for byte in password:
            self._update(byte)

    def _update(self, byte: int) -> None:
        k0, k1, k2 = self.keys
        k0 = zlib.crc32(bytes([byte]), k0 ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
        k1 = ((k1 + (k0 & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        k2 = zlib.crc32(bytes([k1 >> 24]), k2 ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
        self.keys = [k0, k1, k2]

    def encrypt(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            temp = (self.keys[2] | 2) & 0xFFFF
            out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
            self._update(byte)
        return bytes(out)


def _encrypted_zip(rng: random.Random, name: str, content: bytes, password: bytes) -> bytes:
    """A one-member ZIP, stored, encrypted with `password` (general purpose flag bit
    0): written by hand, since zipfile cannot."""
    crc = zlib.crc32(content)
    header = rng.randbytes(11) + bytes([crc >> 24])  # the check byte: CRC's high octet
    payload = _ZipCrypto(password).encrypt(header + content)
    filename = name.encode("ascii")
    dos_time, dos_date = 0, (2024 - 1980) << 9 | 1 << 5 | 1
    common = struct.pack(
        "<HHHHHIII", 20, 0x0001, 0, dos_time, dos_date, crc, len(payload), len(content)
    )
    local = b"PK\x03\x04" + common + struct.pack("<HH", len(filename), 0) + filename
    central = (
        b"PK\x01\x02"
        + struct.pack("<H", 20)
        + common
        + struct.pack("<HHHHHII", len(filename), 0, 0, 0, 0, 0, 0)
        + filename
    )
    offset = len(local) + len(payload)
    end = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, len(central), offset, 0)
    return local + payload + central + end


def _multipart(subtype: str, parts: Sequence[tuple[str, str | None, str | bytes]]) -> str:
    """Its Content-Type field, a blank line, the multipart body. Parts: (content type,
    attachment file name or None, text or bytes); "multipart" parts are inserted as
    they are (a nested `_multipart`, which starts with its own Content-Type field)."""
    boundary = f"=_bench_{subtype}_boundary="
    out = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n']
    for ctype, filename, content in parts:
        out.append(f"--{boundary}\r\n")
        if ctype == "multipart":
            assert isinstance(content, str)
            out.append(content)
            continue
        if filename is None:
            assert isinstance(content, str)
            out.append(f'Content-Type: {ctype}; charset="us-ascii"\r\n\r\n{content}')
        else:
            data = content.encode() if isinstance(content, str) else content
            out.append(
                f'Content-Type: {ctype}; name="{filename}"\r\n'
                f'Content-Disposition: attachment; filename="{filename}"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{_b64(data)}"
            )
    out.append(f"--{boundary}--\r\n")
    return "".join(out)


def _to_field(recipients: Sequence[str]) -> str:
    return ", ".join(f"{r.partition('@')[0].capitalize()} <{r}>" for r in recipients)


def dkim_signer(keys: Sequence[DkimKey]) -> Signer:
    """Signs with every key in turn (`crypto.dkim.sign_message`, relaxed/relaxed)."""

    def sign(message: bytes) -> bytes:
        return b"".join(sign_message(message, key) for key in keys)

    return sign


# --------------------------------------------------------------------------- messages


class CorpusMaker:
    """Makes one message of a kind at a time from one seeded random stream."""

    def __init__(
        self,
        seed: int,
        keys: Sequence[DkimKey],
        *,
        recipients: Sequence[str],
        sign: Signer | None = None,
        now: float | None = None,
    ) -> None:
        """`sign` (default `dkim_signer(keys)`) returns the DKIM-Signature fields for a
        message of sender.test; `now` (default the time) dates the messages."""
        if not recipients:
            raise ValueError("a corpus needs at least one recipient")
        self.rng = random.Random(seed)  # noqa: S311 - test data, reproducible
        self.recipients = tuple(recipients)
        self._to = _to_field(self.recipients)
        self._sign_fields = sign if sign is not None else dkim_signer(keys)
        self.now = time.time() if now is None else now
        self.serial = 0
        self._message_id = ""

    def _head(self, from_: str, subject: str, domain: str, extra: str = "") -> str:
        self.serial += 1
        # within the last two days (no DATE_IN_PAST / DATE_IN_FUTURE)
        when = format_datetime(
            datetime.fromtimestamp(self.now - self.rng.uniform(60, 2 * 86400), UTC)
        )
        self._message_id = f"<{self.serial}.{self.rng.getrandbits(48):x}@{domain}>"
        return (
            f"From: {from_}\r\nTo: {self._to}\r\nSubject: {subject}\r\n"
            f"Date: {when}\r\nMessage-ID: {self._message_id}"
            f"\r\nMIME-Version: 1.0\r\n{extra}"
        )

    def _sign(self, message: bytes) -> bytes:
        return self._sign_fields(message) + message

    def _subject(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 7))).capitalize()

    def _message(self, kind: str, sender: str, helo: str, ip: str, data: bytes) -> CorpusMessage:
        spec = KINDS[kind]
        return CorpusMessage(
            kind,
            data,
            sender,
            self.recipients,
            helo,
            ip,
            spec.expected,
            spec.enhanced_code,
            spec.check,
            self._message_id,
        )

    def _signed(self, kind: str, msg: str) -> CorpusMessage:
        """From sender.test: a bounce address of its own, signed."""
        return self._message(
            kind,
            f"bounce+{self.serial}@{SENDER_DOMAIN}",
            f"mail.{SENDER_DOMAIN}",
            CLEAN_IP,
            self._sign(msg.encode("ascii")),
        )

    def ham(self, kind: str) -> CorpusMessage:
        rng = self.rng
        name = rng.choice(("Ann", "Bob", "Carol", "Dave", "Erin"))
        from_ = f"{name} <{name.lower()}@{SENDER_DOMAIN}>"
        links = [f"https://www.{SENDER_DOMAIN}/docs/{rng.randint(1, 999)}" for _ in range(3)]
        if kind == "ham_text":
            head = self._head(from_, self._subject(), SENDER_DOMAIN)
            body = _text(rng, _log_uniform(rng, 2000, 12_000))
            msg = head + 'Content-Type: text/plain; charset="us-ascii"\r\n\r\n' + body
        elif kind == "ham_alt":
            text = _text(rng, _log_uniform(rng, 1500, 20_000))
            msg = self._head(from_, self._subject(), SENDER_DOMAIN) + _multipart(
                "alternative",
                [("text/plain", None, text), ("text/html", None, _html(rng, text, links))],
            )
        else:
            size = _log_uniform(rng, 15_000, 720_000)  # ~1 MB message at most, base64
            which = rng.choice(("pdf", "zip", "docx"))
            blob = {"pdf": _pdf, "zip": _zip, "docx": _docx}[which](rng, size)
            ctype = {
                "pdf": "application/pdf",
                "zip": "application/zip",
                "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            }[which]
            text = _text(rng, _log_uniform(rng, 500, 4000))
            inner = _multipart(
                "alternative",
                [("text/plain", None, text), ("text/html", None, _html(rng, text, links))],
            )
            msg = self._head(from_, self._subject(), SENDER_DOMAIN) + _multipart(
                "mixed",
                [("multipart", None, inner), (ctype, f"document-{self.serial}.{which}", blob)],
            )
        return self._signed(kind, msg)

    def spam(self, kind: str) -> CorpusMessage:
        rng = self.rng
        subject = " ".join(rng.choice(SPAM_WORDS) for _ in range(rng.randint(3, 6)))
        if rng.random() < 0.5:
            subject = subject.upper() + "!!!"
        links = [f"https://{rng.choice(SHORTENERS)}/{rng.getrandbits(30):x}" for _ in range(3)]
        text = _text(rng, _log_uniform(rng, 2000, 15_000), SPAM_WORDS)
        extra = 'Content-Type: text/html; charset="us-ascii"\r\n\r\n'
        head = self._head(f"Deals <offers@{SPAM_DOMAIN}>", subject, SPAM_DOMAIN, extra)
        msg = head + _html(rng, text, links)
        ip = LISTED_IP if kind == "spam_listed" else CLEAN_IP
        helo = f"mx.{SPAM_DOMAIN}" if ip == LISTED_IP else f"mail.{SPAM_DOMAIN}"
        return self._message(kind, f"offers@{SPAM_DOMAIN}", helo, ip, msg.encode("ascii"))

    def spam_rules(self) -> CorpusMessage:
        """Junk on our own rules: SUBJ_ALL_CAPS 1, MIME_HTML_ONLY 1, URI_IP 1.5,
        URI_SHORTENER 0.5, HELO_NOT_FQDN 1.5, SPF_NONE 0.5 (no display-name spoof:
        rspamd's FROM_NEQ_DISPLAY_NAME, 4 points, would take it past the reject
        score)."""
        rng = self.rng
        words = [rng.choice(SPAM_WORDS) for _ in range(rng.randint(4, 6))]
        subject = " ".join(words).upper() + "!!!"
        while sum(c.isalpha() for c in subject) < 10:
            subject = rng.choice(SPAM_WORDS).upper() + " " + subject
        links = [
            f"http://192.0.2.{rng.randint(1, 254)}/login?id={rng.getrandbits(24):x}",
            f"https://{rng.choice(SHORTENERS)}/{rng.getrandbits(30):x}",
        ]
        text = _text(rng, _log_uniform(rng, 1500, 8000), SPAM_WORDS)
        extra = 'Content-Type: text/html; charset="us-ascii"\r\n\r\n'
        from_ = f"Account Security <alerts@{SPAM_DOMAIN}>"
        msg = self._head(from_, subject, SPAM_DOMAIN, extra) + _html(rng, text, links)
        helo = f"win-{rng.getrandbits(32):08x}"  # no dot: not a domain name
        return self._message(
            "spam_rules", f"alerts@{SPAM_DOMAIN}", helo, CLEAN_IP, msg.encode("ascii")
        )

    def gtube(self) -> CorpusMessage:
        rng = self.rng
        body = _text(rng, 1500) + GTUBE.decode("ascii") + "\r\n" + _text(rng, 1000)
        head = self._head(f"Tester <test@{SPAM_DOMAIN}>", self._subject(), SPAM_DOMAIN)
        msg = head + 'Content-Type: text/plain; charset="us-ascii"\r\n\r\n' + body
        return self._message(
            "gtube", f"test@{SPAM_DOMAIN}", f"mail.{SPAM_DOMAIN}", CLEAN_IP, msg.encode()
        )

    def eicar(self) -> CorpusMessage:
        rng = self.rng
        virus = eicar()
        if rng.random() < 0.5:
            name, ctype, blob = "readme.txt", "text/plain", virus + b"\r\n"
        else:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(zipfile.ZipInfo("readme.txt", _ZIP_TIME), virus)
                z.writestr(zipfile.ZipInfo("notes.txt", _ZIP_TIME), _text(rng, 2000))
            name, ctype, blob = "invoice.zip", "application/zip", buf.getvalue()
        text = _text(rng, _log_uniform(rng, 2000, 60_000))
        msg = self._head(f"Ann <ann@{SENDER_DOMAIN}>", self._subject(), SENDER_DOMAIN) + _multipart(
            "mixed", [("text/plain", None, text), (ctype, name, blob)]
        )
        return self._signed("eicar", msg)

    def spoof(self) -> CorpusMessage:
        rng = self.rng
        head = self._head(f"CEO <ceo@{SENDER_DOMAIN}>", "Urgent wire transfer", SPOOF_DOMAIN)
        msg = head + 'Content-Type: text/plain; charset="us-ascii"\r\n\r\n' + _text(rng, 1800)
        return self._message(
            "spoof", f"x@{SPOOF_DOMAIN}", f"mail.{SPOOF_DOMAIN}", CLEAN_IP, msg.encode()
        )

    def exe(self) -> CorpusMessage:
        rng = self.rng
        # blocked by its name, or by its content (a PE named .pdf)
        name = "invoice.pdf.exe" if rng.random() < 0.5 else "scan.pdf"
        text = _text(rng, _log_uniform(rng, 500, 3000))
        msg = self._head(f"Bob <bob@{SENDER_DOMAIN}>", "Your invoice", SENDER_DOMAIN) + _multipart(
            "mixed", [("text/plain", None, text), ("application/pdf", name, _program(rng))]
        )
        return self._signed("exe", msg)

    def zip_bomb(self) -> CorpusMessage:
        rng = self.rng
        blob = _zip_bomb(rng.randint(4, 8) * 1024 * 1024)  # ~4-8 KB compressed
        text = _text(rng, _log_uniform(rng, 500, 3000))
        msg = self._head(f"Bob <bob@{SENDER_DOMAIN}>", self._subject(), SENDER_DOMAIN) + _multipart(
            "mixed", [("text/plain", None, text), ("application/zip", "backup.zip", blob)]
        )
        return self._signed("zip_bomb", msg)

    def encrypted_zip(self) -> CorpusMessage:
        rng = self.rng
        password = f"{rng.randint(1000, 9999)}"
        member = _pdf(rng, _log_uniform(rng, 5_000, 60_000))
        blob = _encrypted_zip(rng, "statement.pdf", member, password.encode())
        text = _text(rng, _log_uniform(rng, 300, 1500)) + f"The password is {password}.\r\n"
        msg = self._head(
            f"Carol <carol@{SENDER_DOMAIN}>", "Your statement", SENDER_DOMAIN
        ) + _multipart(
            "mixed", [("text/plain", None, text), ("application/zip", "statement.zip", blob)]
        )
        return self._signed("encrypted_zip", msg)

    def make(self, kind: str) -> CorpusMessage:
        if kind.startswith("ham"):
            return self.ham(kind)
        if kind in ("spam_listed", "spam_unlisted"):
            return self.spam(kind)
        makers: dict[str, Callable[[], CorpusMessage]] = {
            "spam_rules": self.spam_rules,
            "gtube": self.gtube,
            "eicar": self.eicar,
            "spoof": self.spoof,
            "exe": self.exe,
            "zip_bomb": self.zip_bomb,
            "encrypted_zip": self.encrypted_zip,
        }
        if kind not in makers:
            raise ValueError(f"unknown corpus kind {kind!r}")
        return makers[kind]()


def build_corpus(
    seed: int,
    count: int,
    keys: Sequence[DkimKey],
    *,
    recipients: Sequence[str],
    mix: Mapping[str, float] = GATEWAY_MIX,
    sign: Signer | None = None,
    now: float | None = None,
) -> list[CorpusMessage]:
    """`count` messages to `recipients`, round(count * share) of each kind in `mix`
    and ham_text for the rest, in a seeded random order. `keys`: sender.test's
    (`sender_keys`); `sign`, `now`: as for `CorpusMaker`."""
    if "ham_text" in mix or any(kind not in KINDS for kind in mix):
        raise ValueError("mix: shares of kinds in KINDS other than ham_text (the rest)")
    counts = {kind: round(count * share) for kind, share in mix.items()}
    counts["ham_text"] = count - sum(counts.values())
    if counts["ham_text"] < 0:
        raise ValueError("mix: the shares add up to more than the corpus")
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    random.Random(seed).shuffle(kinds)  # noqa: S311 - test data, reproducible
    maker = CorpusMaker(seed, keys, recipients=recipients, sign=sign, now=now)
    return [maker.make(kind) for kind in kinds]


# --------------------------------------------------------------------------- DNS


def sender_keys(directory: Path) -> list[DkimKey]:
    """New DKIM keys for sender.test (Ed25519 and RSA-2048) under `directory`."""
    return generate_domain_keys(directory, SENDER_DOMAIN, selector_date=SELECTOR_DATE)


def dns_data(
    keys: Sequence[DkimKey], dnsbl: str = DNSBL
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(zones, records as (name, type, value)) the corpus needs."""
    records = [
        (name, rtype, value)
        for name, rtype, value in dns_records(SENDER_DOMAIN, f"mail.{SENDER_DOMAIN}", list(keys))
        if not (rtype == "TXT" and (name == SENDER_DOMAIN or name.startswith("_dmarc.")))
    ]
    records += [
        (SENDER_DOMAIN, "TXT", "v=spf1 ip4:127.0.0.0/8 -all"),
        (f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject"),
        (f"mail.{SENDER_DOMAIN}", "A", CLEAN_IP),
        ("1.0.0.127.in-addr.arpa", "PTR", f"mail.{SENDER_DOMAIN}."),
        (f"mx.{SPAM_DOMAIN}", "A", LISTED_IP),
        ("2.0.0.127.in-addr.arpa", "PTR", f"mx.{SPAM_DOMAIN}."),
        (f"mail.{SPAM_DOMAIN}", "A", "192.0.2.77"),
        (f"2.0.0.127.{dnsbl}", "A", "127.0.0.2"),
        (f"2.0.0.127.{dnsbl}", "TXT", "listed for the benchmark"),
    ]
    zones = [SENDER_DOMAIN, SPAM_DOMAIN, SPOOF_DOMAIN, dnsbl, "0.0.127.in-addr.arpa"]
    return zones, records


def publish(dns: TestDns, keys: Sequence[DkimKey], dnsbl: str = DNSBL) -> None:
    """Serve `dns_data(keys, dnsbl)` from `dns`."""
    zones, records = dns_data(keys, dnsbl)
    for zone in zones:
        dns.add_zone(zone)
    for name, rtype, value in records:
        dns.add(name, rtype, value)
