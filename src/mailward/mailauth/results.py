"""The Authentication-Results header field (RFC 8601): writing ours, removing forgeries.

`format_results()` renders one field, one resinfo per folded line (folded with a TAB):

    Authentication-Results: mx.example.org;
        spf=pass smtp.mailfrom=sender@example.com;
        dkim=pass header.d=example.com header.s=sel header.a=ed25519-sha256 header.b="AbC+/dEf";
        dmarc=pass (p=reject dis=none) header.from=example.com;
        arc=none

Methods and ptypes as registered: spf (RFC 7208 9.1: smtp.mailfrom, smtp.helo), dkim
(RFC 6376 / RFC 8601 2.7.1: header.d, header.s, header.a; header.b from RFC 6008, the
first 8 characters of the signature), dmarc (RFC 7489 11.2: header.from), arc (RFC
8617: none/pass/fail). Values that are not tokens are quoted (RFC 2045 token, as RFC
8601 2.2 requires); comments carry only printable ASCII with no parentheses.

`strip_ours()` implements RFC 8601 5: an MTA MUST delete Authentication-Results
fields that claim (by their authserv-id, compared case-insensitively) to come from
inside its trust boundary; fields with other authserv-ids are kept. It works on the
raw header section bytes, so every other byte of the message stays as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

FIELD_NAME = "Authentication-Results"
HEADER_B_LENGTH = 8  # RFC 6008 2: at least eight characters

# RFC 2045 token: any printable ASCII except SPACE, CTLs and tspecials.
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
# A pvalue may also be [local-part] "@" domain (RFC 8601 2.2): a dot-atom local part.
_ADDRESS = re.compile(
    r"^([A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*)?@"
    r"[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True, slots=True)
class Resinfo:
    """One `method=result (comment) ptype.property=value ...` clause."""

    method: str  # "spf", "dkim", "dmarc", "arc"
    result: str
    comment: str = ""
    properties: tuple[tuple[str, str], ...] = ()  # ("smtp.mailfrom", "a@b.example")


def pvalue(value: str) -> str:
    """A property value as RFC 8601 2.2 allows it: token, address, or quoted-string."""
    if _TOKEN.match(value) or _ADDRESS.match(value):
        return value
    escaped = "".join(c for c in value if c.isprintable() and c.isascii())
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def comment(text: str) -> str:
    """A CFWS comment's content: printable ASCII, no parentheses or backslashes."""
    clean = "".join(c for c in text if c.isascii() and c.isprintable() and c not in "()\\")
    return " ".join(clean.split())[:200]


def _render(info: Resinfo) -> str:
    parts = [f"{info.method}={info.result}"]
    note = comment(info.comment)
    if note:
        parts.append(f"({note})")
    parts.extend(f"{name}={pvalue(value)}" for name, value in info.properties if value)
    return " ".join(parts)


def format_results(authserv_id: str, results: Sequence[Resinfo]) -> str:
    """The field *value* (after "Authentication-Results:"), folded with CRLF TAB.
    With no results it is `authserv-id; none` (RFC 8601 2.2)."""
    if not results:
        return f" {authserv_id}; none"
    body = ";\r\n\t".join(_render(r) for r in results)
    return f" {authserv_id};\r\n\t{body}"


def header_field(authserv_id: str, results: Sequence[Resinfo]) -> bytes:
    """The whole field, ending in CRLF, ready to prepend to a message."""
    return f"{FIELD_NAME}:{format_results(authserv_id, results)}\r\n".encode("ascii", "replace")


# --------------------------------------------------------------------------- stripping


def _skip_cfws(text: str, i: int) -> int:
    """Index of the first character after whitespace and (nested) comments at `i`."""
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < len(text):
                c = text[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return i


def authserv_id(value: str) -> str:
    """The authserv-id of an Authentication-Results value (lower case; "" if none)."""
    i = _skip_cfws(value, 0)
    if value[i : i + 1] == '"':
        out = []
        i += 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\":
                i += 1
            out.append(value[i : i + 1])
            i += 1
        return "".join(out).strip().lower()
    end = i
    while end < len(value) and value[end] not in ' \t\r\n;("':
        end += 1
    return value[i:end].lower()


_FIELD_START = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def strip_ours(section: bytes, our_id: str) -> tuple[bytes, int]:
    """Remove every Authentication-Results field of `section` (a header section, raw
    bytes) whose authserv-id is `our_id`; returns (new section, fields removed)."""
    wanted = our_id.rstrip(".").lower()
    if b"authentication-results" not in section.lower():
        return section, 0
    out: list[bytes] = []
    field: list[bytes] = []
    removed = 0

    def flush() -> None:
        nonlocal removed
        if not field:
            return
        m = _FIELD_START.match(field[0])
        if m and m.group(1).lower() == b"authentication-results":
            value = b"".join(field)[m.end() :].decode("utf-8", "replace")
            if authserv_id(value).rstrip(".") == wanted:
                removed += 1
                field.clear()
                return
        out.extend(field)
        field.clear()

    for line in section.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and field:
            field.append(line)
            continue
        flush()
        field.append(line)
    flush()
    return b"".join(out), removed


__all__ = [
    "FIELD_NAME",
    "HEADER_B_LENGTH",
    "Resinfo",
    "authserv_id",
    "comment",
    "format_results",
    "header_field",
    "pvalue",
    "strip_ours",
]
