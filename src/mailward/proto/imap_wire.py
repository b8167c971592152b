"""IMAP wire format: the response serialiser and the mailbox-name encodings.

RFC 9051 (IMAP4rev2) 4 "Data Formats" and 9 "Formal Syntax"; RFC 3501 (IMAP4rev1) 4
and 5.1.3 "Mailbox International Naming Convention" (modified UTF-7); RFC 3516 4.2
(literal8 for binary content); RFC 7888 (non-synchronising literals, client side only).

Implementation notes
- Everything here returns `bytes` ready for `ImapServer.send()` (or `str` for the
  mailbox encodings) and never reads client input, except `decode_mutf7`.
- Response injection: any text that reaches the wire outside a literal is checked for
  CR, LF and NUL (`ValueError`); client-supplied strings go out as quoted strings or
  literals, never as raw atoms, unless the caller passes them as `str` on purpose.
- Strings are sent quoted when that is safe and short (printable US-ASCII only, at
  most `MAX_QUOTED` octets), otherwise as a literal `{n}`; data with NUL octets goes out
  as `~{n}` (RFC 3516 literal8), which only BINARY fetch responses may carry.
- `encode_mutf7` / `decode_mutf7` are for IMAP4rev1 clients that did not ENABLE
  UTF8=ACCEPT (RFC 6855 3; RFC 9051 5.1 uses UTF-8 names). The session decides which
  form a client sees; `decode_mutf7` is strict (canonical form only, RFC 3501 5.1.3).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Sequence
from typing import TypeAlias

from mailward.message.imap_structure import Adjacent

__all__ = [
    "MAX_QUOTED",
    "WireValue",
    "astring",
    "continuation",
    "decode_mutf7",
    "encode_mutf7",
    "format_datetime",
    "list_mailbox_quote",
    "literal",
    "nstring",
    "quote_or_literal",
    "response",
    "serialize",
]

MAX_QUOTED = 1024  # longer strings go out as literals

# RFC 9051 9: ASTRING-CHAR = ATOM-CHAR / resp-specials; ATOM-CHAR = <any CHAR except
# atom-specials>; atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards /
# quoted-specials / resp-specials
_ASTRING_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\\x80-\xff]+')
_PRINTABLE = re.compile(rb"[\x20-\x7e]*")
_UNSAFE_TEXT = re.compile(r"[\r\n\x00]")
_STATUS = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

WireValue: TypeAlias = "bytes | int | str | Sequence[WireValue] | None"
"""A neutral response value for `serialize`: None is NIL, bytes a string, int a number,
str an atom written as is, a list or tuple a parenthesised list."""


def _quoted(data: bytes) -> bytes:
    # RFC 9051 4.3: quoted = DQUOTE *QUOTED-CHAR DQUOTE; "\" escapes DQUOTE and "\"
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def literal(data: bytes) -> bytes:
    """A literal `{n}CRLF` + data; `~{n}` (RFC 3516 literal8) when data has NUL octets."""
    prefix = b"~" if b"\x00" in data else b""
    return prefix + b"{%d}\r\n" % len(data) + data


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def quote_or_literal(value: bytes | str) -> bytes:
    """An IMAP string (RFC 9051 4.3): quoted when short and printable US-ASCII, else a
    literal (literal8 for data with NUL). A `str` is sent as UTF-8."""
    data = _as_bytes(value)
    if len(data) <= MAX_QUOTED and _PRINTABLE.fullmatch(data):
        return _quoted(data)
    return literal(data)


def nstring(value: bytes | str | None) -> bytes:
    """RFC 9051 9: nstring = string / nil."""
    return b"NIL" if value is None else quote_or_literal(value)


def astring(value: bytes | str) -> bytes:
    """RFC 9051 9: astring = 1*ASTRING-CHAR / string. "NIL" is quoted so that it can
    never be read as nil."""
    data = _as_bytes(value)
    if _ASTRING_ATOM.fullmatch(data) and data.upper() != b"NIL":
        return data
    return quote_or_literal(data)


def list_mailbox_quote(name: str) -> bytes:
    """A mailbox name for LIST/LSUB/STATUS responses: always a quoted string (as most
    servers send it), UTF-8 allowed (RFC 9051 9 QUOTED-CHAR includes UTF8-2/3/4), a
    literal when the name holds control characters or is long. For IMAP4rev1 clients
    without UTF8=ACCEPT, pass `encode_mutf7(name)`."""
    data = name.encode("utf-8")
    if len(data) <= MAX_QUOTED and not re.search(r"[\x00-\x1f\x7f-\x9f]", name):
        return _quoted(data)
    return literal(data)


def serialize(value: WireValue) -> bytes:
    """Serialise a neutral nested value: None -> NIL, bytes -> string (quoted or
    literal), int -> number, list/tuple -> parenthesised list, str -> atom as is.

    Raises ValueError for a negative number, a bool, or a str with CR, LF or NUL."""
    if value is None:
        return b"NIL"
    if isinstance(value, bytes | bytearray | memoryview):
        return quote_or_literal(bytes(value))
    if isinstance(value, bool):
        raise ValueError("bool is not an IMAP value")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("IMAP numbers are unsigned")  # RFC 9051 4.2
        return b"%d" % value
    if isinstance(value, str):
        if _UNSAFE_TEXT.search(value):
            raise ValueError("CR, LF or NUL in an atom")
        return value.encode("utf-8")
    # RFC 9051 9: the bodies of a multipart ("1*body SP media-subtype") and the
    # addresses of an address list ("(" 1*address ")") follow each other with no
    # space; `imap_structure.Adjacent` marks such lists.
    out = bytearray(b"(")
    leading = isinstance(value, Adjacent)
    for i, item in enumerate(value):
        leading = leading and isinstance(item, list)
        if i and not leading:
            out += b" "
        out += serialize(item)
    out += b")"
    return bytes(out)


def _safe_text(text: str, what: str) -> str:
    if _UNSAFE_TEXT.search(text):
        raise ValueError(f"CR, LF or NUL in response {what}")
    return text


def response(tag: str | None, status: str, text: str, code: str | None = None) -> bytes:
    """A status response line (RFC 9051 7.1): `tag SP status SP ["[" code "]" SP] text
    CRLF`; tag None gives an untagged `*` response. Raises ValueError for an unknown
    status, an empty text, or CR/LF/NUL anywhere (response injection)."""
    if status not in _STATUS:
        raise ValueError(f"unknown status {status!r}")
    if not text:
        raise ValueError("empty response text")  # RFC 3501 9: text = 1*TEXT-CHAR
    head = "*" if tag is None else _safe_text(tag, "tag")
    if not head or " " in head:
        raise ValueError("bad tag")
    body = _safe_text(text, "text")
    if code is not None:
        body = "[" + _safe_text(code, "code") + "] " + body
    return f"{head} {status} {body}\r\n".encode()


def continuation(text: str = "Ready") -> bytes:
    """A command continuation request (RFC 9051 7.6): `+ SP text CRLF`. For a SASL
    challenge pass the base64 text (`sasl.encode_challenge`)."""
    return b"+ " + _safe_text(text, "text").encode("utf-8") + b"\r\n"


# --- modified UTF-7 (RFC 3501 5.1.3) ---------------------------------------------------------


def _b64_run(chars: list[str]) -> str:
    try:
        raw = "".join(chars).encode("utf-16-be")
    except UnicodeEncodeError as exc:  # lone surrogate
        raise ValueError("mailbox name is not valid Unicode") from exc
    return "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode_mutf7(name: str) -> str:
    """Encode a mailbox name in modified UTF-7 (RFC 3501 5.1.3): printable US-ASCII
    (0x20-0x7e) stands for itself, "&" is "&-", everything else is modified BASE64
    (RFC 2152 with "," for "/", no padding) of UTF-16BE between "&" and "-"."""
    out: list[str] = []
    pending: list[str] = []
    for ch in name:
        if " " <= ch <= "~":
            if pending:
                out.append(_b64_run(pending))
                pending = []
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    if pending:
        out.append(_b64_run(pending))
    return "".join(out)


_MB64 = re.compile(r"[A-Za-z0-9+,]+")


def decode_mutf7(name: str) -> str:
    """Decode a modified UTF-7 mailbox name (RFC 3501 5.1.3). Strict: raises ValueError
    for characters outside 0x20-0x7e, an unterminated or empty shift, bad base64, non-zero
    padding bits, invalid UTF-16, printable US-ASCII encoded in base64, and null shifts
    ("-&" joining two base64 runs)."""
    out: list[str] = []
    i = 0
    n = len(name)
    run_end = -1  # index just after the last base64 run
    while i < n:
        ch = name[i]
        if not " " <= ch <= "~":
            raise ValueError("non-ASCII or control character in a modified UTF-7 name")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        j = name.find("-", i + 1)
        if j < 0:
            raise ValueError("unterminated base64 shift")
        if j == i + 1:
            out.append("&")
            i = j + 1
            continue
        if i == run_end:
            raise ValueError("null shift between two base64 runs")
        run = name[i + 1 : j]
        if not _MB64.fullmatch(run):
            raise ValueError("invalid modified base64")
        try:
            raw = base64.b64decode(run.replace(",", "/") + "=" * (-len(run) % 4), validate=True)
            text = raw.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("invalid modified base64 or UTF-16") from exc
        if base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") != run:
            raise ValueError("non-canonical modified base64")  # stray padding bits
        if any(" " <= c <= "~" for c in text):
            raise ValueError("printable US-ASCII must not be base64-encoded")
        out.append(text)
        i = j + 1
        run_end = i
    return "".join(out)


# --- dates -----------------------------------------------------------------------------------


def format_datetime(ts: float, tz: datetime.tzinfo | None = None) -> str:
    """An INTERNALDATE value without its quotes (RFC 9051 9 date-time):
    "dd-Mon-yyyy hh:mm:ss +zzzz", the day space-padded (date-day-fixed), English month
    names whatever the locale, in `tz` (default UTC)."""
    dt = datetime.datetime.fromtimestamp(ts, tz or datetime.UTC)
    offset = dt.utcoffset() or datetime.timedelta(0)
    seconds = int(offset.total_seconds())
    sign = "+" if seconds >= 0 else "-"
    hours, minutes = divmod(abs(seconds) // 60, 60)
    return (
        f"{dt.day:2d}-{_MONTHS[dt.month - 1]}-{dt.year:04d} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {sign}{hours:02d}{minutes:02d}"
    )
