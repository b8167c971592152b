"""The spam score's rules: each looks at one thing and says how spam-like it is.

A rule returns `Hit`s (name, score, detail); the check (`pipeline.spam`) adds them up.
Names and scores follow SpamAssassin's conventions where it has the same test, so an
administrator reading `X-Spam-Status` recognises them; scores are deliberately
modest: no single heuristic here puts a message over the default Junk threshold (5)
on its own, except GTUBE, the anti-spam test string that exists to be caught.

Rules and what they rest on:

- GTUBE (the Generic Test for Unsolicited Bulk Email): 1000.
- HELO (RFC 5321 4.1.1.1, 2.3.5: the argument is the client's FQDN, or an address
  literal): not a domain name nor a literal (HELO_NOT_FQDN), an address literal that
  is not the client's address (HELO_IP_MISMATCH), a bare IP address without brackets
  (HELO_BARE_IP), our own name or address (HELO_IS_OURS: a client never is us).
- Reverse DNS (RFC 1912 2.1: every host should have a matching PTR and A): none
  (RDNS_NONE), a name that does not resolve back to the client (RDNS_NOT_CONFIRMED),
  a name that looks like an access-network pool (RDNS_DYNAMIC).
- Header section (RFC 5322 3.6: Date and From are required, Message-ID should be
  there): MISSING_DATE, MISSING_FROM, MISSING_MID, DATE_IN_FUTURE / DATE_IN_PAST,
  no To/Cc (TO_MISSING), an all-capitals Subject, a display name that carries
  another domain's address (FROM_DISPLAY_SPOOF, a phishing staple).
- MIME: HTML without a plain-text alternative (MIME_HTML_ONLY), HTML that is little
  more than an image (HTML_IMAGE_ONLY), links to bare IP addresses (URI_IP), to
  link shorteners (URI_SHORTENER).
- Sender authentication (RFC 7208, 6376, 7489 results from `pipeline.authentication`):
  SPF fail/softfail/none, DKIM signatures that fail, DMARC fail under p=none; a
  DMARC pass lowers the score a little (DMARC_PASS), since it ties the author's
  domain to the mail, not to its good intent.
- Bayes (each recipient's own filter, `spam.bayes`): BAYES_00 ... BAYES_99 by the
  classifier's probability.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from mailward.message import mime
from mailward.message.headers import header_values, mailbox_addresses
from mailward.message.text_extract import html_to_text
from mailward.pipeline.networks import client_address

# Assembled from two pieces so that this source file is not itself a GTUBE message.
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*" + b"GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_SCORE = 1000.0

MAX_TEXT_PARTS = 20
MAX_PART_TEXT = 256 * 1024
FUTURE_SLACK = 24 * 3600.0
PAST_SLACK = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    score: float
    detail: str = ""  # for the log only (never content)


def gtube(message: bytes) -> list[Hit]:
    return [Hit("GTUBE", GTUBE_SCORE)] if GTUBE in message else []


def same_ip(a: str, b: str) -> bool:
    left = client_address(a)
    return left is not None and left == client_address(b)


_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")


def helo(helo_name: str, peer_ip: str, hostname: str) -> list[Hit]:
    """Rules on the EHLO/HELO argument; `hostname` is this server's name."""
    name = helo_name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        if literal.startswith("ipv6:"):
            literal = literal[5:]
        if not same_ip(literal, peer_ip):
            return [Hit("HELO_IP_MISMATCH", 1.5)]
        return []
    if client_address(name) is not None:
        hits = [Hit("HELO_BARE_IP", 1.0)]
        if not same_ip(name, peer_ip):
            hits.append(Hit("HELO_IP_MISMATCH", 1.5))
        return hits
    if name == hostname.lower().rstrip(".") and name not in ("localhost", ""):
        return [Hit("HELO_IS_OURS", 3.0)]
    if not _DOMAIN.fullmatch(name):
        return [Hit("HELO_NOT_FQDN", 1.5)]
    return []


# Access-network naming: the address's octets in the name, or the usual pool words.
_DYNAMIC_WORDS = re.compile(
    r"(?:^|[.-])(?:dyn|dynamic|dhcp|dsl|adsl|xdsl|cable|pool|ppp|dialup|dial-up|"
    r"broadband|customer|cpe|static-ip)[0-9.-]*(?:[.-]|$)"
)


def reverse_dns(peer_ip: str, names: Sequence[str], confirmed: bool) -> list[Hit]:
    """`names`: the PTR names of `peer_ip`; `confirmed`: one of them resolves back."""
    if not names:
        return [Hit("RDNS_NONE", 1.0)]
    hits = []
    if not confirmed:
        hits.append(Hit("RDNS_NOT_CONFIRMED", 0.5))
    first = names[0].lower().rstrip(".")
    address = client_address(peer_ip)
    octets_in_name = False
    if isinstance(address, ipaddress.IPv4Address):
        parts = str(address).split(".")
        dashed, dotted = "-".join(parts), ".".join(parts)
        reversed_dashed = "-".join(reversed(parts))
        octets_in_name = any(p in first for p in (dashed, dotted, reversed_dashed))
    if octets_in_name or _DYNAMIC_WORDS.search(first.split(".", 1)[0] + "."):
        hits.append(Hit("RDNS_DYNAMIC", 1.0))
    return hits


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


_EMBEDDED_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


def headers(section: bytes, now: float) -> list[Hit]:
    """Rules on the message's header section (RFC 5322 3.6)."""
    hits: list[Hit] = []
    dates = header_values(section, "Date")
    if not dates:
        hits.append(Hit("MISSING_DATE", 1.0))
    else:
        try:
            when = parsedate_to_datetime(dates[0]).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            hits.append(Hit("INVALID_DATE", 1.0))
        else:
            if when > now + FUTURE_SLACK:
                hits.append(Hit("DATE_IN_FUTURE", 1.5))
            elif when < now - PAST_SLACK:
                hits.append(Hit("DATE_IN_PAST", 1.0))
    if not header_values(section, "Message-ID"):
        hits.append(Hit("MISSING_MID", 1.0))
    from_values = header_values(section, "From")
    if not from_values:
        hits.append(Hit("MISSING_FROM", 2.0))
    else:
        hits.extend(_display_spoof(from_values[0]))
    if not header_values(section, "To") and not header_values(section, "Cc"):
        hits.append(Hit("TO_MISSING", 0.5))
    subjects = header_values(section, "Subject")
    if subjects:
        letters = [c for c in subjects[0] if c.isalpha()]
        if len(letters) >= 10 and all(c.isupper() for c in letters):
            hits.append(Hit("SUBJ_ALL_CAPS", 1.0))
    return hits


def _display_spoof(from_value: str) -> list[Hit]:
    addresses = mailbox_addresses([from_value])
    if len(addresses) != 1:
        return []
    actual = _domain_of(addresses[0])
    display = from_value.split("<", 1)[0] if "<" in from_value else ""
    for m in _EMBEDDED_ADDRESS.finditer(display):
        if m.group(1).lower().rstrip(".") != actual:
            return [Hit("FROM_DISPLAY_SPOOF", 2.0)]
    return []


_URL = re.compile(r"(?i)\bhttps?://([^/\s\"'<>?#]+)")
_IMG = re.compile(r"(?i)<img\b")
SHORTENERS = frozenset(
    {"bit.ly", "tinyurl.com", "goo.gl", "ow.ly", "t.co", "is.gd", "buff.ly", "cutt.ly"}
    | {"rebrand.ly", "shorturl.at", "rb.gy", "tiny.cc", "s.id", "t.ly", "v.gd"}
)


def mime_structure(message: bytes) -> list[Hit]:
    """Rules on the MIME structure and the text of its text parts."""
    root = mime.parse(message)
    texts: list[tuple[str, str]] = []  # (content type, decoded text)
    _text_parts(message, root, texts)
    hits: list[Hit] = []
    kinds = {kind for kind, _ in texts}
    if "text/html" in kinds and "text/plain" not in kinds:
        hits.append(Hit("MIME_HTML_ONLY", 1.0))
    for kind, text in texts:
        if kind == "text/html" and _IMG.search(text):
            visible = html_to_text(text)
            if len("".join(visible.split())) < 100:
                hits.append(Hit("HTML_IMAGE_ONLY", 1.5))
                break
    hosts: set[str] = set()
    for _kind, text in texts:
        for m in _URL.finditer(text):
            host = m.group(1).rsplit("@", 1)[-1].lower()
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
            hosts.add(host.strip("[]").rstrip("."))
    if any(client_address(h) is not None for h in hosts):
        hits.append(Hit("URI_IP", 1.5))
    if hosts & SHORTENERS:
        hits.append(Hit("URI_SHORTENER", 0.5))
    return hits


def _text_parts(data: bytes, part: mime.Part, out: list[tuple[str, str]]) -> None:
    if len(out) >= MAX_TEXT_PARTS:
        return
    if part.children:
        for child in part.children:
            _text_parts(data, child, out)
        return
    if part.message is not None or part.content_type not in ("text/plain", "text/html"):
        return
    if part.disposition is not None and part.disposition[0] == "attachment":
        return
    body = mime.decoded_body(data, part)
    raw = data[part.body_start : part.end] if body is None else body
    out.append((part.content_type, mime.decode_charset(raw[:MAX_PART_TEXT], part.param("charset"))))


@dataclass(frozen=True, slots=True)
class AuthVerdicts:
    """The sender-authentication results the rules look at (from the A-R report)."""

    spf: str  # "pass" | "fail" | "softfail" | "neutral" | "none" | "temperror" | "permerror"
    dkim: tuple[str, ...]  # one result per signature ("pass", "fail", "neutral", ...)
    dmarc: tuple[tuple[str, str], ...]  # (result, policy) per author domain


def authentication(verdicts: AuthVerdicts) -> list[Hit]:
    hits: list[Hit] = []
    spf_scores = {"fail": 3.0, "softfail": 1.5, "none": 0.5, "permerror": 0.5}
    if verdicts.spf in spf_scores:
        hits.append(Hit(f"SPF_{verdicts.spf.upper()}", spf_scores[verdicts.spf]))
    if any(r == "fail" for r in verdicts.dkim) and "pass" not in verdicts.dkim:
        hits.append(Hit("DKIM_INVALID", 1.5))
    results = {result for result, _policy in verdicts.dmarc}
    if "pass" in results:
        hits.append(Hit("DMARC_PASS", -1.0))
    elif any(result == "fail" and policy == "none" for result, policy in verdicts.dmarc):
        hits.append(Hit("DMARC_FAIL_NONE", 2.0))
    return hits


# (lowest probability, name, score), highest first; SpamAssassin's BAYES_* bands.
_BAYES_BANDS = (
    (0.99, "BAYES_99", 5.0),
    (0.95, "BAYES_95", 3.5),
    (0.80, "BAYES_80", 2.0),
    (0.60, "BAYES_60", 1.0),
    (0.40, "BAYES_50", 0.0),
    (0.20, "BAYES_20", -0.5),
    (0.05, "BAYES_05", -1.0),
    (0.0, "BAYES_00", -2.0),
)


def bayes(probability: float) -> Hit:
    for floor, name, score in _BAYES_BANDS:
        if probability >= floor:
            return Hit(name, score, f"p={probability:.3f}")
    return Hit("BAYES_00", -2.0, f"p={probability:.3f}")
