"""Shared by the IMAP and POP3 client interop tests: a mail corpus delivered to alice,
what the server holds (read back with imaplib), Maildir reading, running a client.

The corpus (`populate`) is what a real mailbox looks like and what tends to break
clients and servers:

  INBOX (SMTP, port 25)   multipart/mixed with a random binary base64 attachment whose
                          filename is non-ASCII (RFC 2231); UTF-8 8bit body with an
                          RFC 2047 encoded-word Subject (BODY=8BITMIME); a ~2 MB
                          multipart; a text message with lines "." / ".." / "From "
                          (POP3 byte-stuffing, mbox quoting) and a folded header
  "Résumé"     (APPEND)   multipart with a message/rfc822 attachment, \\Seen
  "Archiv/Übersicht"      another binary-attachment multipart (no flags); creating it
                          also creates its parent "Archiv" (RFC 9051 6.3.4)
  "日本語"     (APPEND)   UTF-8 8bit message, \\Flagged \\Answered

Every message carries a unique Message-ID, which is how the tests match a client's
copy to the server's. What the server holds is read with imaplib
`UID FETCH 1:* (FLAGS)` / `(BODY.PEEK[])`; SMTP deliveries are the sent bytes behind
mailward's trace block (Return-Path, Authentication-Results, Received), APPENDs are the
appended bytes.
"""

from __future__ import annotations

import base64
import imaplib
import os
import random
import re
import shutil
import smtplib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailward.testing.server import RunningServer

ALICE = "alice@example.test"
PASSWORD = "correct-horse-battery-staple-42"  # tests/conftest.py ACCOUNTS
SENDER = "carol@example.org"
TIMEOUT = 60  # seconds, for every client run and socket

NON_ASCII_MAILBOXES = ("Résumé", "Archiv/Übersicht", "日本語")
UTF8_SUBJECT = "Grüße aus Köln — 日本語 ✓"
UTF8_BODY_WORD = "Ünïcödé"
ATTACHMENT_NAME = "résumé.bin"
BIG_PAYLOAD_BYTES = 1_500_000  # ~2.05 MB once base64-encoded

# Maildir info flags (https://cr.yp.to/proto/maildir.html) <-> IMAP system flags.
MAILDIR_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}


# --------------------------------------------------------------------------- tools


def find_tool(name: str) -> str:
    """The client binary; a missing one fails the test (never a skip)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    assert path, f"{name} is not installed (Debian package); run scripts/install-test-deps"
    return path


def run_client(
    argv: Sequence[str], home: Path, *, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a client with HOME pointing into the test's temp dir (nothing under ~)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
    }
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def transcript(proc: subprocess.CompletedProcess[str], limit: int = 6000) -> str:
    return (
        f"$ {' '.join(map(str, proc.args))}\nexit {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-limit:]}\n--- stderr ---\n{proc.stderr[-limit:]}"
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, transcript(proc)
    return proc


def first_difference(got: bytes, want: bytes) -> str:
    n = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if n is None:
        n = min(len(got), len(want))
    return (
        f"lengths got {len(got)} want {len(want)}; first difference at byte {n}: "
        f"got {got[max(0, n - 60) : n + 60]!r} want {want[max(0, n - 60) : n + 60]!r}"
    )


def assert_bytes(got: bytes, want: bytes, what: str) -> None:
    assert got == want, f"{what}: {first_difference(got, want)}"


# --------------------------------------------------------------------------- mUTF-7


def encode_mutf7(name: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3), written here independently of the server's."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            raw = base64.b64encode("".join(run).encode("utf-16-be")).decode("ascii")
            out.append("&" + raw.rstrip("=").replace("/", ",") + "-")
            run.clear()

    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(name: str) -> str:
    def shift(m: re.Match[str]) -> str:
        text = m.group(1)
        if not text:
            return "&"
        text = text.replace(",", "/")
        return base64.b64decode(text + "=" * (-len(text) % 4)).decode("utf-16-be")

    return re.sub(r"&([A-Za-z0-9+,]*)-", shift, name)


# RFC 3501 5.1.3's own example, so a broken encoder fails here and not in a client.
assert encode_mutf7("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
assert decode_mutf7("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
assert encode_mutf7("Résumé") == "R&AOk-sum&AOk-" and encode_mutf7("A&B") == "A&-B"


def quoted(mailbox: str) -> str:
    """A mailbox argument for imaplib (which sends str arguments unquoted)."""
    return '"' + encode_mutf7(mailbox).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------- messages


def crlf(*lines: str) -> bytes:
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


def encoded_word(text: str) -> str:
    return "=?UTF-8?B?" + base64.b64encode(text.encode("utf-8")).decode("ascii") + "?="


def base64_lines(payload: bytes) -> bytes:
    """76-character base64 lines, each ending in CRLF (RFC 2045 6.8)."""
    return base64.encodebytes(payload).replace(b"\n", b"\r\n")


def binary_attachment_message(tag: str, payload: bytes, to: str = ALICE) -> bytes:
    """multipart/mixed: text part, then the payload base64-encoded (part 2). BODY[2] of
    this message is `base64_lines(payload)` minus its last CRLF (that CRLF belongs to
    the boundary delimiter, RFC 2046 5.1.1)."""
    boundary = f"=_mixed_{tag}"
    head = crlf(
        f"From: Carol <{SENDER}>",
        f"To: {to}",
        f"Subject: binary attachment {tag}",
        "Date: Mon, 23 Nov 2026 10:00:00 +0100",
        f"Message-ID: <{tag}@interop.test>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/mixed; boundary="{boundary}"',
        "",
        "This is a multi-part message in MIME format.",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"The attachment is random bytes ({tag}).",
        f"--{boundary}",
        "Content-Type: application/octet-stream",
        "Content-Transfer-Encoding: base64",
        "Content-Disposition: attachment;",
        " filename*=UTF-8''r%C3%A9sum%C3%A9.bin",
        "",
    )
    return head + base64_lines(payload) + crlf(f"--{boundary}--")


def utf8_message(tag: str, to: str = ALICE) -> bytes:
    """8bit UTF-8 body (RFC 6152), non-ASCII Subject as an encoded-word (RFC 2047)."""
    return crlf(
        f"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <{SENDER}>",
        f"To: {to}",
        f"Subject: {encoded_word(UTF8_SUBJECT)}",
        "Date: Mon, 23 Nov 2026 10:05:00 +0100",
        f"Message-ID: <{tag}@interop.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"{UTF8_BODY_WORD} body ({tag}): ça va? Здравствуйте, 你好, مرحبا, 🙂",
        "Zweite Zeile mit Umlauten: äöüß ÄÖÜ",
    )


def forward_message(tag: str, inner: bytes, to: str = ALICE) -> bytes:
    """multipart/mixed whose part 2 is message/rfc822 (the whole `inner` message)."""
    boundary = f"=_fwd_{tag}"
    return (
        crlf(
            f"From: Carol <{SENDER}>",
            f"To: {to}",
            f"Subject: Fwd: forwarded {tag}",
            "Date: Mon, 23 Nov 2026 10:10:00 +0100",
            f"Message-ID: <{tag}@interop.test>",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "See the forwarded message.",
            f"--{boundary}",
            "Content-Type: message/rfc822",
            "Content-Disposition: attachment",
            "",
        )
        + inner
        + crlf(f"--{boundary}--")
    )


def dotted_message(tag: str, to: str = ALICE) -> bytes:
    """Lines POP3 must byte-stuff (RFC 1939 3) and mbox formats quote."""
    return crlf(
        f"From: <{SENDER}>",
        f"To: {to}",
        f"Subject: dots and From lines {tag}",
        "Date: Mon, 23 Nov 2026 10:15:00 +0100",
        f"Message-ID: <{tag}@interop.test>",
        "X-Folded: the first part of a folded field",
        "\tand its continuation line",
        "",
        ".",
        "..",
        ".leading dot",
        "From the start of a line",
        ">From already quoted",
        "trailing spaces   ",
        "x" * 998,
        "",
        "last line",
    )


@dataclass(frozen=True)
class Sent:
    mailbox: str
    data: bytes
    via: str  # "smtp" or "append"
    flags: frozenset[str]

    @property
    def message_id(self) -> str:
        return message_id(self.data)


@dataclass
class Corpus:
    messages: list[Sent]
    attachment: bytes  # decoded payload of the INBOX binary attachment
    big_attachment: bytes

    def by_id(self) -> dict[str, Sent]:
        return {m.message_id: m for m in self.messages}

    def in_mailbox(self, mailbox: str) -> list[Sent]:
        return [m for m in self.messages if m.mailbox == mailbox]

    def find(self, prefix: str, mailbox: str = "INBOX") -> Sent:
        [sent] = [m for m in self.in_mailbox(mailbox) if m.message_id.startswith(prefix)]
        return sent


def message_id(data: bytes) -> str:
    m = re.search(rb"(?im)^Message-ID:\s*<([^>]+)>", data)
    assert m, f"no Message-ID in {data[:300]!r}"
    return m.group(1).decode("ascii")


def smtp_deliver(srv: RunningServer, *messages: bytes) -> None:
    with smtplib.SMTP(srv.host, srv.smtp_port, "client.example.org", TIMEOUT) as smtp:
        smtp.ehlo()
        for data in messages:
            assert smtp.sendmail(SENDER, [ALICE], data, mail_options=["BODY=8BITMIME"]) == {}


def imap_login(srv: RunningServer) -> imaplib.IMAP4_SSL:
    client = imaplib.IMAP4_SSL(
        srv.host, srv.imaps_port, ssl_context=srv.ssl_context(), timeout=TIMEOUT
    )
    client.login(ALICE, PASSWORD)
    return client


def append(client: imaplib.IMAP4, mailbox: str, data: bytes, flags: Sequence[str] = ()) -> int:
    flag_list = f"({' '.join(flags)})" if flags else None
    typ, resp = client.append(quoted(mailbox), flag_list, None, data)
    assert typ == "OK", resp
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", resp[0])
    assert m, resp
    return int(m.group(1))


def populate(srv: RunningServer, *, mailboxes: bool = True, seed: str = "corpus") -> Corpus:
    """Deliver the corpus (see the module docstring) and check the server holds it."""
    rng = random.Random(seed)
    attachment = rng.randbytes(48 * 1024 + 7)
    big_attachment = rng.randbytes(BIG_PAYLOAD_BYTES)
    inbox = [
        binary_attachment_message("mixed-1", attachment),
        utf8_message("utf8-1"),
        binary_attachment_message("big-1", big_attachment),
        dotted_message("dots-1"),
    ]
    smtp_deliver(srv, *inbox)
    messages = [Sent("INBOX", data, "smtp", frozenset()) for data in inbox]
    if mailboxes:
        appended = [
            Sent("Résumé", forward_message("fwd-1", utf8_message("inner-1")), "append",
                 frozenset({"\\Seen"})),
            Sent("Archiv/Übersicht", binary_attachment_message("mixed-2", rng.randbytes(9000)),
                 "append", frozenset()),
            Sent("日本語", utf8_message("utf8-2"), "append",
                 frozenset({"\\Flagged", "\\Answered"})),
        ]  # fmt: skip
        client = imap_login(srv)
        try:
            for name in NON_ASCII_MAILBOXES:
                typ, resp = client.create(quoted(name))
                assert typ == "OK", (name, resp)
            for sent in appended:
                append(client, sent.mailbox, sent.data, sorted(sent.flags))
        finally:
            client.logout()
        messages += appended
    corpus = Corpus(messages, attachment, big_attachment)
    assert_server_holds(srv, corpus)
    return corpus


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class Held:
    uid: int
    flags: frozenset[str]
    data: bytes


def list_mailboxes(client: imaplib.IMAP4) -> list[str]:
    """Selectable mailbox names (decoded to Unicode) from LIST "" "*"."""
    typ, lines = client.list('""', "*")
    assert typ == "OK", lines
    names = []
    for line in lines:
        assert isinstance(line, bytes), lines
        m = re.fullmatch(rb'\((?P<attrs>[^)]*)\) (?:"(?P<d>[^"]*)"|NIL) (?P<name>.+)', line)
        assert m, line
        if b"\\noselect" in m.group("attrs").lower():
            continue
        raw = m.group("name").decode("ascii")
        if raw.startswith('"'):
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        names.append(decode_mutf7(raw))
    return names


def parse_flags(text: bytes) -> frozenset[str]:
    m = re.search(rb"FLAGS \(([^)]*)\)", text)
    assert m, text
    return frozenset(f for f in m.group(1).decode().split() if f != "\\Recent")


def mailbox_messages(client: imaplib.IMAP4, mailbox: str) -> dict[int, Held]:
    typ, resp = client.select(quoted(mailbox), readonly=True)
    assert typ == "OK", (mailbox, resp)
    if int(resp[0]) == 0:
        return {}
    typ, lines = client.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK", lines
    flags = {}
    for line in lines:
        assert isinstance(line, bytes), line
        flags[int(re.search(rb"UID (\d+)", line).group(1))] = parse_flags(line)
    typ, items = client.uid("FETCH", "1:*", "(BODY.PEEK[])")
    assert typ == "OK", items
    held = {}
    for item in items:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            held[uid] = Held(uid, flags[uid], item[1])
    assert sorted(held) == sorted(flags), (mailbox, sorted(held), sorted(flags))
    return held


def server_snapshot(srv: RunningServer) -> dict[str, dict[int, Held]]:
    """Every selectable mailbox of alice -> uid -> (flags, exact bytes)."""
    client = imap_login(srv)
    try:
        return {name: mailbox_messages(client, name) for name in list_mailboxes(client)}
    finally:
        client.logout()


# mailward's trace block: Return-Path, the Authentication-Results and X-Spam fields of
# its MX checks, then its Received (each possibly folded).
TRACE = re.compile(
    rb"\AReturn-Path: <[^>\r\n]*>\r\n"
    rb"(?:Authentication-Results: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)?"
    rb"(?:X-Spam-(?:Score|Status|Flag): [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*)*"
    rb"Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*"
)


def assert_server_holds(srv: RunningServer, corpus: Corpus) -> None:
    """What the server hands out is what was delivered: SMTP = trace block + the sent
    bytes, APPEND = the appended bytes, each in its mailbox with its flags."""
    snapshot = server_snapshot(srv)
    if any(sent.via == "append" for sent in corpus.messages):
        assert {*NON_ASCII_MAILBOXES, "Archiv"} <= set(snapshot), sorted(snapshot)
    for sent in corpus.messages:
        held = [h for h in snapshot[sent.mailbox].values() if sent.message_id.encode() in h.data]
        assert len(held) == 1, (sent.mailbox, sent.message_id, len(held))
        [h] = held
        if sent.via == "smtp":
            trace = TRACE.match(h.data)
            assert trace, h.data[:400]
            assert_bytes(h.data[trace.end() :], sent.data, f"stored {sent.message_id}")
        else:
            assert_bytes(h.data, sent.data, f"stored {sent.message_id}")
        assert h.flags == sent.flags, (sent.message_id, h.flags, sent.flags)


# --------------------------------------------------------------------------- Maildir


@dataclass(frozen=True)
class LocalMessage:
    path: Path
    uid: int | None  # the ",U=<uid>" both mbsync and offlineimap put in the file name
    flags: frozenset[str]  # as IMAP flags
    data: bytes


def read_maildirs(root: Path) -> dict[str, list[LocalMessage]]:
    """Every Maildir (a directory with cur/ new/ tmp/) under `root`, by its path
    relative to `root` ("INBOX", "Archiv/Übersicht", ...)."""
    folders: dict[str, list[LocalMessage]] = {}
    for cur in sorted(root.rglob("cur")):
        folder = cur.parent
        if not (cur.is_dir() and (folder / "new").is_dir() and (folder / "tmp").is_dir()):
            continue
        messages = []
        for sub in ("cur", "new"):
            for path in sorted((folder / sub).iterdir()):
                if path.name.startswith("."):
                    continue
                base, _, info = path.name.partition(":2,")
                m = re.search(r",U=(\d+)", base)
                flags = frozenset(MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS)
                messages.append(
                    LocalMessage(path, int(m.group(1)) if m else None, flags, path.read_bytes())
                )
        folders[folder.relative_to(root).as_posix()] = messages
    return folders


def maildir_rename(message: LocalMessage, flags: str) -> Path:
    """Move a message to cur/ with these Maildir info flags (what a MUA does on read)."""
    base = message.path.name.partition(":2,")[0]
    target = message.path.parent.parent / "cur" / f"{base}:2,{flags}"
    message.path.rename(target)
    return target


def write_new_maildir_message(folder: Path, data: bytes, name: str) -> Path:
    """Deliver into a Maildir the way an MDA does: write in tmp/, rename into new/."""
    tmp = folder / "tmp" / name
    tmp.write_bytes(data)
    target = folder / "new" / name
    tmp.rename(target)
    return target


def split_header(data: bytes, eol: bytes) -> tuple[bytes, bytes]:
    """(header block including the EOL of its last field, the rest from the empty line)."""
    end = data.find(eol + eol)
    assert end >= 0, f"no end of header in {data[:300]!r}"
    return data[: end + len(eol)], data[end + len(eol) :]
