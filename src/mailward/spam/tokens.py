"""The tokens of a message, as the Bayes filter (spam/bayes.py) counts them.

After Paul Graham, "A Plan for Spam" (2002) and "Better Bayesian Filtering" (2003),
and the SpamBayes tokenizer (Tim Peters et al., spambayes/tokenizer.py), whose tests
settled most of these choices:

- Body words: the decoded text of the text/plain and text/html parts (HTML through
  `text_extract.html_to_text`), split on white space, enclosing punctuation removed
  (but "$", "%" and "!" kept: "$$$" and "free!!!" are clues), lower-cased. Words of 3
  to 40 characters are tokens as they are; shorter ones are dropped (noise); longer
  ones become "skip:<first char> <length rounded down to 10>" (SpamBayes: base64 junk,
  long URLs); numbers become "num:<digits>" so prices and phone numbers count as a
  kind, not each on its own.
- Header clues, each prefixed by its field so "free" in the Subject is not "free" in
  the body: Subject words, From: / Reply-To: domains (and their parent domains),
  whether Reply-To: points elsewhere, the From: local part, the message's
  Content-Type and charset, the X-Mailer / User-Agent product, the number of
  Received: fields (bucketed), the Message-ID domain or its absence, the number of
  To/Cc addresses (bucketed), and the name of every header field present (SpamBayes
  found field names among the strongest clues).
- URL host names in the body (and in HTML attributes) and their parent domains:
  "url:example.com"; an IP literal is "url:ip".
- MIME: the type of every leaf part, and of each attachment its type and extension.

Bounded (DESIGN.md 3): at most `MAX_INPUT` octets of the message are looked at, at
most `MAX_TEXT` characters of body text, at most `MAX_TOKENS` distinct tokens (header
clues first, then the body in order). Each token is hashed to a signed 64-bit integer
(BLAKE2b, 8 octets, a fixed personalisation and no key) so the store keeps integers,
never words of anyone's mail; Python's hash() is salted per process and useless here.

`message_tokens` never raises: the MIME parser and the text extractor never raise on
malformed input, and a last guard returns the tokens found so far should anything
else go wrong (fuzzed by the tests).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Iterable, Iterator
from email.utils import getaddresses

from mailward.message.mime import (
    Part,
    content_type_of,
    decode_charset,
    header_fields,
    parse,
)
from mailward.message.search_text import decode_header_value
from mailward.message.text_extract import extension, html_to_text, leaves

__all__ = [
    "MAX_INPUT",
    "MAX_TEXT",
    "MAX_TOKENS",
    "message_tokens",
    "token_hash",
    "token_strings",
]

MAX_INPUT = 1024 * 1024  # octets of a message tokenized (callers may give less)
MAX_TEXT = 256 * 1024  # characters of body text read
MAX_TOKENS = 2000  # distinct tokens per message
MIN_WORD = 3
MAX_WORD = 40
MAX_HEADER_VALUE = 2000  # characters of one header value looked at
MAX_HEADER_NAMES = 64  # "header:<name>" tokens
MAX_URLS = 200
MAX_ADDRESSES = 50  # addresses read from one From/Reply-To/To/Cc field
_PERSON = b"mailward-bayes-1"  # BLAKE2b personalisation: changing it resets all counts

_PUNCTUATION = "\"'`.,;:()[]{}<>*_=+|\\/~^#&?-\u2018\u2019\u201c\u201d\u00ab\u00bb"
_NUMBER = re.compile(r"[0-9][0-9.,]*")
_URL = re.compile(
    r"(?i)(?:\b(?:https?|ftp)://|\bwww\.)"  # a scheme, or a bare www.
    r"([^\s/?#\"'<>(){}\\,;]{1,300})"  # userinfo@host:port ([IPv6] included)
    r"[^\s\"'<>]*"  # the rest of the URL
)
_HOST_LABEL = re.compile(r"[a-z0-9-]{1,63}")
_FIELD_NAME = re.compile(r"[!-9;-~]{1,40}")
_EMAIL = re.compile(r"[^@\s]{1,64}@([a-z0-9.-]{1,253})")


def token_hash(token: str) -> int:
    """The stored form of a token: a stable signed 64-bit integer (SQLite INTEGER)."""
    digest = hashlib.blake2b(
        token.encode("utf-8", "surrogatepass"), digest_size=8, person=_PERSON
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def message_tokens(message: bytes) -> list[int]:
    """The distinct token hashes of a raw RFC 5322 message (module doc). Never raises."""
    return [token_hash(t) for t in token_strings(message)]


def token_strings(message: bytes) -> list[str]:
    """The distinct tokens of a message before hashing, in the order found (for tests
    and for an administrator wondering why a message scored as it did)."""
    found = _Tokens()
    with contextlib.suppress(Exception):  # never raise (module doc): keep what was found
        _tokenize(bytes(message[:MAX_INPUT]), found)
    return found.items


class _Tokens:
    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.items: list[str] = []

    @property
    def full(self) -> bool:
        return len(self.items) >= MAX_TOKENS

    def add(self, token: str) -> None:
        if token not in self.seen and len(self.items) < MAX_TOKENS:
            self.seen.add(token)
            self.items.append(token)

    def extend(self, tokens: Iterable[str]) -> None:
        for token in tokens:
            if self.full:
                return
            self.add(token)


def _tokenize(data: bytes, out: _Tokens) -> None:
    root = parse(data)
    out.extend(_header_tokens(data, root))
    out.extend(_body_tokens(data, root))


# ----------------------------------------------------------------------------- words


def words(text: str, prefix: str = "") -> Iterator[str]:
    """Word tokens of `text` (module doc), each with `prefix`; URLs are not words
    (their host names are tokens of their own, see `url_tokens`)."""
    for raw in _URL.sub(" ", text).split():
        word = raw.strip(_PUNCTUATION).lower()
        if not word:
            continue
        if _NUMBER.fullmatch(word):
            digits = sum(c.isdigit() for c in word)
            yield f"{prefix}num:{min(digits, 12)}"
            continue
        email = _EMAIL.fullmatch(word)
        if email is not None:
            yield f"{prefix}email:{email[1].strip('.')[:MAX_WORD]}"
            continue
        if len(word) < MIN_WORD:
            continue
        if len(word) > MAX_WORD:
            yield f"{prefix}skip:{word[0]} {len(word) // 10 * 10}"
            continue
        yield prefix + word


def url_tokens(text: str) -> Iterator[str]:
    """ "url:<domain>" for the host of every URL in `text` and its parent domains
    ("url:ip" for an address literal); at most MAX_URLS URLs."""
    for count, match in enumerate(_URL.finditer(text)):
        if count >= MAX_URLS:
            return
        host = match[1].rpartition("@")[2].lower()
        if host.startswith("["):
            yield "url:ip"
            continue
        host = host.partition(":")[0].strip(".")
        if _is_ip(host):
            yield "url:ip"
            continue
        yield from _domains("url:", host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _domains(prefix: str, host: str) -> Iterator[str]:
    """`prefix` + the host and each parent domain of two labels or more (at most 4)."""
    labels = host.lower().strip(".").split(".")
    if not labels or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        yield prefix + "invalid"
        return
    for start in range(max(0, len(labels) - 5), len(labels) - 1):
        yield prefix + ".".join(labels[start:])
    if len(labels) == 1:
        yield prefix + labels[0]


# ----------------------------------------------------------------------------- headers


def _bucket(n: int) -> str:
    if n <= 2:
        return str(n)
    if n <= 5:
        return "3-5"
    if n <= 10:
        return "6-10"
    return "11+"


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """(display name, address) of the first MAX_ADDRESSES addresses in the values."""
    try:
        pairs = getaddresses(values)
    except Exception:  # email.utils on hostile input: no addresses rather than a failure
        return []
    return pairs[:MAX_ADDRESSES]


def _header_tokens(data: bytes, root: Part) -> Iterator[str]:
    fields: dict[str, list[str]] = {}
    for raw_name, raw_value in header_fields(data, root.start, root.header_end):
        name = raw_name.decode("ascii", "replace").lower()
        if not _FIELD_NAME.fullmatch(name):
            continue
        values = fields.setdefault(name, [])
        if len(values) < 100:
            values.append(decode_header_value(raw_value[: MAX_HEADER_VALUE * 4])[:MAX_HEADER_VALUE])
        elif name == "received":
            values.append("")  # only counted
    for count, name in enumerate(sorted(fields)):
        if count >= MAX_HEADER_NAMES:
            break
        yield "header:" + name

    subjects = fields.get("subject", [])
    if not subjects or not subjects[0].strip():
        yield "subject:none"
    for subject in subjects[:1]:
        yield from words(subject, "subject:")
        if any(c.isupper() for c in subject) and not any(c.islower() for c in subject):
            yield "subject:all-caps"

    from_domain = ""
    senders = _addresses(fields.get("from", []))
    if not senders:
        yield "from:none"
    for display, address in senders[:1]:
        local, at, domain = address.rpartition("@")
        from_domain = domain.lower() if at else ""
        if from_domain:
            yield from _domains("from:dom:", from_domain)
            if local and len(local) <= MAX_WORD:
                yield "from:local:" + local.lower()
        else:
            yield "from:invalid"
        yield "from:name:" + ("present" if display.strip() else "none")
    for _display, address in _addresses(fields.get("reply-to", []))[:1]:
        domain = address.rpartition("@")[2].lower()
        if domain:
            yield from _domains("reply-to:dom:", domain)
            if domain != from_domain:
                yield "reply-to:differs"

    recipients = _addresses(fields.get("to", []) + fields.get("cc", []))
    yield "to:count:" + _bucket(len(recipients))
    yield "received:count:" + _bucket(len(fields.get("received", [])))

    message_ids = fields.get("message-id", [])
    if not message_ids:
        yield "message-id:none"
    for message_id in message_ids[:1]:
        domain = message_id.strip().strip("<>").rpartition("@")[2].lower()
        if domain:
            yield from _domains("message-id:dom:", domain)
        else:
            yield "message-id:no-domain"
    if "date" not in fields:
        yield "date:none"

    for name in ("x-mailer", "user-agent"):
        for value in fields.get(name, [])[:1]:
            product = value.split()[0].lower()[:MAX_WORD] if value.split() else "empty"
            yield f"{name}:{product}"

    for value in fields.get("content-type", [])[:1]:
        content_type, params = content_type_of(value.encode("utf-8", "replace"))
        yield "content-type:" + content_type
        charset = dict(params).get("charset", "").lower()[:MAX_WORD]
        if charset:
            yield "charset:" + charset


# ----------------------------------------------------------------------------- body


def _body_tokens(data: bytes, root: Part) -> Iterator[str]:
    remaining = MAX_TEXT
    saw_plain = saw_html = False
    for leaf in leaves(data, root):
        yield "ctype:" + leaf.content_type[:MAX_WORD]
        if leaf.attachment:
            yield "attach:type:" + leaf.content_type[:MAX_WORD]
            for name in leaf.names[:4]:
                ext = extension(name)[:MAX_WORD]
                yield "attach:ext:" + (ext or "none")
            continue
        if not leaf.content_type.startswith("text/") or remaining <= 0:
            continue
        raw = leaf.content[: remaining * 4]
        if leaf.content_type == "text/html":
            saw_html = True
            markup = decode_charset(raw, leaf.charset)
            yield from url_tokens(markup)
            text = html_to_text(markup)[:remaining]
            if re.search(r"(?i)<img\b", markup[:remaining]):
                yield "html:img"
        else:
            saw_plain = saw_plain or leaf.content_type == "text/plain"
            text = decode_charset(raw, leaf.charset)[:remaining]
            yield from url_tokens(text)
        remaining -= len(text)
        if leaf.charset:
            yield "charset:" + leaf.charset.lower()[:MAX_WORD]
        yield from words(text)
    if saw_html and not saw_plain:
        yield "mime:html-only"
