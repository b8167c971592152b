"""IMAP ENVELOPE and BODY/BODYSTRUCTURE values of a parsed message (RFC 9051 7.5.2).

Values are neutral nested Python values for the wire serialiser: None is NIL, bytes a
string, int a number, list a parenthesised list.

Implementation notes:

- ENVELOPE fields are raw header values (unfolded, not RFC 2047 decoded), the first
  occurrence of each field. Date, Subject, In-Reply-To and Message-ID are NIL when
  absent and "" when empty; Sender and Reply-To default to From when absent or
  empty. Address lists follow RFC 5322 3.4, leniently: group syntax becomes the
  RFC 9051 start/end markers, a comment stands in for a missing display name, and
  a missing mailbox or domain reads "MISSING_MAILBOX" / "MISSING_DOMAIN" (as
  Dovecot does) so that no address is mistaken for a group marker.
- BODYSTRUCTURE field order (RFC 9051 7.5.2, formal syntax 9):
  body-type-1part = type subtype params id description encoding octets
  [envelope body lines] (message/rfc822, message/global) [lines] (text/*),
  then md5 disposition language location; body-type-mpart = children subtype, then
  params disposition language location. Types, subtypes, encodings and parameter
  names are upper-cased as in the RFC's examples; values are kept as written.
- A text part without a charset parameter reports charset US-ASCII (RFC 2046
  4.1.2). A multipart without any body part (no boundary, nothing found, limits
  reached) reports one empty text/plain part, since the grammar needs at least one;
  a message/rfc822 whose encapsulated message was not parsed (limits, or a
  transfer encoding RFC 2046 5.2.1 forbids) is reported as application/octet-stream.
"""

from __future__ import annotations

import re
from typing import TypeAlias

from mailward.message.mime import MESSAGE_TYPES, Params, Part, header_fields, unfold

ImapValue: TypeAlias = "bytes | int | list[ImapValue] | None"


class Adjacent(list[ImapValue]):
    """A list whose leading run of parenthesised items is written with no space
    between them: the bodies of a multipart (RFC 9051 9: body-type-mpart = 1*body SP
    media-subtype ...) and the addresses of an address list (env-to = "(" 1*address
    ")"). Every other list, and this one after its first non-list item, takes SP."""


_ENVELOPE_FIELDS = (
    b"date",
    b"subject",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"bcc",
    b"in-reply-to",
    b"message-id",
)
_MISSING_MAILBOX = b"MISSING_MAILBOX"
_MISSING_DOMAIN = b"MISSING_DOMAIN"

_ADDRESS_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\((?:[^()\\]|\\.|\((?:[^()\\]|\\.)*\)?)*\)?)
  | (?P<quoted>"(?:[^"\\]|\\.)*"?)
  | (?P<literal>\[(?:[^\[\]\\]|\\.)*\]?)
  | (?P<special>[<>:;,@])
  | (?P<atom>[^ \t\r\n()"\[\]<>:;,@]+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)

_Token = tuple[str, str]
_BLANK = ("space", "comment")


def envelope(data: bytes, part: Part) -> list[ImapValue]:
    """ENVELOPE of the message whose header block is `part`'s (the root, or the
    `message` of a message/rfc822 part)."""
    found: dict[bytes, bytes] = {}
    for name, value in header_fields(data, part.start, part.header_end):
        key = name.lower()
        if key in _ENVELOPE_FIELDS:
            found.setdefault(key, value)

    def text(name: bytes) -> bytes | None:
        value = found.get(name)
        return None if value is None else unfold(value)

    def addresses(name: bytes) -> list[ImapValue] | None:
        value = found.get(name)
        return None if value is None else address_list(value)

    sender = addresses(b"from")
    return [
        text(b"date"),
        text(b"subject"),
        sender,
        addresses(b"sender") or sender,
        addresses(b"reply-to") or sender,
        addresses(b"to"),
        addresses(b"cc"),
        addresses(b"bcc"),
        text(b"in-reply-to"),
        text(b"message-id"),
    ]


def address_list(value: bytes) -> list[ImapValue] | None:
    """RFC 9051 address structures (name adl mailbox host) of an RFC 5322
    address-list, or None when it holds no address."""
    out = Adjacent()
    current: list[_Token] = []
    in_group = in_angle = False
    for kind, word in _tokens(unfold(value).decode("latin-1")):
        if kind in ("<", ">"):
            in_angle = kind == "<"
        elif kind in (",", ":", ";") and not in_angle:
            if kind == ":" and not in_group:
                out.append([None, None, _phrase(current).encode("latin-1"), None])
                in_group = True
            else:
                out.extend(_mailbox(current))
                if kind == ";" and in_group:
                    out.append([None, None, None, None])
                    in_group = False
            current = []
            continue
        current.append((kind, word))
    out.extend(_mailbox(current))
    if in_group:
        out.append([None, None, None, None])
    return out or None


def _tokens(text: str) -> list[_Token]:
    """(kind, text) lexemes; a special character is its own kind."""
    tokens: list[_Token] = []
    for match in _ADDRESS_TOKEN.finditer(text):
        kind = match.lastgroup or "other"
        tokens.append((match[0] if kind == "special" else kind, match[0]))
    return tokens


def _mailbox(tokens: list[_Token]) -> list[ImapValue]:
    """Zero or one address structure for the tokens of one mailbox."""
    if all(kind in _BLANK for kind, _ in tokens):
        return []
    angle = next((i for i, (kind, _) in enumerate(tokens) if kind == "<"), -1)
    if angle < 0:
        comments = [word for kind, word in tokens if kind == "comment"]
        name = _uncomment(comments[-1]) if comments else ""
        route, spec = "", tokens
    else:
        name = _phrase(tokens[:angle])
        route, spec = _split_route([t for t in tokens[angle + 1 :] if t[0] != ">"])
    mailbox, host = _addr_spec(spec)
    return [[_nstring(name), _nstring(route), mailbox, host]]


def _split_route(tokens: list[_Token]) -> tuple[str, list[_Token]]:
    """RFC 5322 4.4 obs-route: "@a,@b:" before the addr-spec inside angle brackets."""
    colon = next((i for i, (kind, _) in enumerate(tokens) if kind == ":"), -1)
    if colon < 0:
        return "", tokens
    return _joined(tokens[:colon]), tokens[colon + 1 :]


def _addr_spec(tokens: list[_Token]) -> tuple[bytes, bytes]:
    at = max((i for i, (kind, _) in enumerate(tokens) if kind == "@"), default=-1)
    local = _joined(tokens[:at] if at >= 0 else tokens)
    domain = _joined(tokens[at + 1 :]) if at >= 0 else ""
    return (
        local.encode("latin-1") or _MISSING_MAILBOX,
        domain.encode("latin-1") or _MISSING_DOMAIN,
    )


def _joined(tokens: list[_Token]) -> str:
    return "".join(word for kind, word in tokens if kind not in _BLANK)


def _phrase(tokens: list[_Token]) -> str:
    """Display name: words joined by single spaces where the source had space."""
    out: list[str] = []
    spaced = False
    for kind, word in tokens:
        if kind in _BLANK:
            spaced = True
            continue
        if spaced and out:
            out.append(" ")
        out.append(_unquote(word) if kind == "quoted" else word)
        spaced = False
    return "".join(out)


def _uncomment(comment: str) -> str:
    inner = comment[1:-1] if comment.endswith(")") else comment[1:]
    return _QUOTED_PAIR.sub(r"\1", inner).strip()


def _unquote(quoted: str) -> str:
    inner = quoted[1:-1] if len(quoted) > 1 and quoted.endswith('"') else quoted[1:]
    return _QUOTED_PAIR.sub(r"\1", inner)


def _nstring(value: str) -> bytes | None:
    return value.encode("latin-1") if value else None


def bodystructure(data: bytes, part: Part, extensible: bool = True) -> list[ImapValue]:
    """BODYSTRUCTURE of `part` (with extension data) or, not `extensible`, BODY."""
    if part.is_multipart:
        return _multipart(data, part, extensible)
    return _single(data, part, extensible)


def _multipart(data: bytes, part: Part, extensible: bool) -> list[ImapValue]:
    out = Adjacent(bodystructure(data, child, extensible) for child in part.children)
    if not out:
        out.append(_empty_text(extensible))
    out.append(_upper(part.content_type.partition("/")[2]))
    if extensible:
        out += [_params(part.params), *_extension(part)]
    return out


def _single(data: bytes, part: Part, extensible: bool) -> list[ImapValue]:
    media, _, subtype = part.content_type.partition("/")
    params = part.params
    if part.content_type in MESSAGE_TYPES and part.message is None:
        media, subtype = "application", "octet-stream"
    if media == "text" and not any(name == "charset" for name, _ in params):
        params = (*params, ("charset", "us-ascii"))
    out: list[ImapValue] = [
        _upper(media),
        _upper(subtype),
        _params(params),
        _utf8(part.id),
        _utf8(part.description),
        _upper(part.encoding),
        part.size,
    ]
    if part.message is not None:
        out += [envelope(data, part.message), bodystructure(data, part.message, extensible)]
        out.append(part.lines)
    elif media == "text":
        out.append(part.lines)
    if extensible:
        out += [_utf8(part.md5), *_extension(part)]
    return out


def _extension(part: Part) -> list[ImapValue]:
    """body-fld-dsp, body-fld-lang, body-fld-loc."""
    disposition: ImapValue = None
    if part.disposition is not None:
        kind, params = part.disposition
        disposition = [_upper(kind), _params(params)]
    language: ImapValue = None
    if part.language:
        language = [tag.encode("utf-8") for tag in part.language]
    return [disposition, language, _utf8(part.location)]


def _empty_text(extensible: bool) -> list[ImapValue]:
    out: list[ImapValue] = [b"TEXT", b"PLAIN", [b"CHARSET", b"us-ascii"], None, None, b"7BIT", 0, 0]
    if extensible:
        out += [None, None, None, None]
    return out


def _params(params: Params) -> list[ImapValue] | None:
    out: list[ImapValue] = []
    for name, value in params:
        out += [_upper(name), value.encode("utf-8")]
    return out or None


def _upper(value: str) -> bytes:
    return value.upper().encode("utf-8")


def _utf8(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")
