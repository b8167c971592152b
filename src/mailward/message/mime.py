"""MIME structure of a raw message, byte-exact and bounded, for IMAP FETCH and SEARCH.

RFC 2045 (MIME header fields, Content-Transfer-Encoding), RFC 2046 (multipart,
message/rfc822, multipart/digest defaults), RFC 2231 (parameter continuations and
charsets), RFC 6532 (message/global), RFC 9051 6.4.5 (BODY[section] addressing).

Implementation notes:

- A `Part` is offsets into the original bytes; nothing is copied or normalised, so
  FETCH answers are byte-exact slices. The header block `data[start:header_end]`
  includes the blank line that ends it (RFC 9051 BODY[HEADER]); a part without a
  blank line is all header and has an empty body.
- RFC 2046 5.1.1: the line break before a boundary delimiter belongs to the
  delimiter, not to the preceding part. A missing close delimiter ends the last part
  at the end of its parent; preamble and epilogue belong to no part.
- Bounded: at most `MAX_DEPTH` levels of nesting and `MAX_PARTS` parts in all; a
  multipart or message/rfc822 found beyond either limit is an opaque leaf (no
  children, no encapsulated message). Header fields are read from the first
  `MAX_HEADER_SCAN` octets of a header block only (the block's offsets still cover
  all of it). Boundaries are found with bytes.find (C speed, no per-line Python
  loop), so parsing is linear in the message size times the nesting depth.
- `parse` never raises: broken header fields are skipped, unknown or malformed
  Content-Type falls back to the RFC 2045 5.2 default.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

MAX_DEPTH = 32
MAX_PARTS = 10_000
MAX_HEADER_SCAN = 256 * 1024

Params = tuple[tuple[str, str], ...]

_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_ASCII_CHARSETS = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us"})

_BLANK_LINE = re.compile(rb"\n\r?\n")
_DELIMITER_TAIL = re.compile(rb"(--)?[ \t]*(?:\r?\n|\Z)")
_MAX_NEAR_MISSES = 64
_FIELD = re.compile(rb"^([^ \t\r\n:][^:\r\n]*):([^\n]*(?:\n[ \t][^\n]*)*)", re.MULTILINE)
_LINE_BREAK = re.compile(rb"\r?\n")
_MIME_ATOM = r"[^\x00-\x20\x7f()<>@,;:\\\"/\[\]?=]+"  # RFC 2045 5.1 token
_TOKEN = re.compile(_MIME_ATOM)
_TYPE = re.compile(f"({_MIME_ATOM})/({_MIME_ATOM})")
_COMMENT = re.compile(r"\((?:[^()\\]|\\.|\([^()]*\))*\)?", re.DOTALL)
_PARAM_PIECE = re.compile(r'(?:"(?:[^"\\]|\\.)*"?|[^;"])+', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_QUOTED_STRING = re.compile(r'"((?:[^"\\]|\\.)*)', re.DOTALL)
_RFC2231_NAME = re.compile(r"([^*]+)\*(?:(\d{1,4})(\*)?)?")
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_BASE64 = bytes(c for c in range(256) if c not in _BASE64_ALPHABET)


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME entity: offsets into the whole message and its parsed Content-* fields.

    `data[start:header_end]` is the header block with its closing blank line
    (`header_end == body_start`); `data[body_start:end]` is the body, `size` octets
    and `lines` line breaks long (LF count, as Dovecot reports). `children` are the
    body parts of a multipart; `message` is the encapsulated message of a
    message/rfc822 or message/global part (None when not parsed: limits, or a
    transfer encoding RFC 2046 5.2.1 forbids for it). Parameter names are
    lower-case, values unquoted and RFC 2231-decoded."""

    start: int
    header_end: int
    body_start: int
    end: int
    content_type: str = "text/plain"
    params: Params = ()
    encoding: str = "7bit"
    id: str | None = None
    description: str | None = None
    md5: str | None = None
    disposition: tuple[str, Params] | None = None
    language: tuple[str, ...] | None = None
    location: str | None = None
    children: tuple[Part, ...] = ()
    message: Part | None = None
    lines: int = 0
    size: int = 0

    @property
    def is_multipart(self) -> bool:
        return self.content_type.startswith("multipart/")

    def param(self, name: str) -> str | None:
        """The value of Content-Type parameter `name` (case-insensitive), if present."""
        wanted = name.lower()
        return next((value for key, value in self.params if key == wanted), None)


def parse(data: bytes) -> Part:
    """The MIME tree of a whole message. Never raises."""
    return _Parser(data).part(0, len(data), 0, in_digest=False)


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.budget = MAX_PARTS

    def part(self, start: int, end: int, depth: int, *, in_digest: bool) -> Part:
        self.budget -= 1
        data = self.data
        body_start = _header_end(data, start, end)
        fields = _mime_fields(data, start, body_start)
        content_type, params = content_type_of(fields.get(b"content-type"), in_digest=in_digest)
        encoding = _encoding(fields.get(b"content-transfer-encoding"))
        expand = depth + 1 < MAX_DEPTH and self.budget > 0
        children: tuple[Part, ...] = ()
        message = None
        if expand and content_type.startswith("multipart/"):
            boundary = dict(params).get("boundary", "").encode("utf-8")
            digest = content_type == "multipart/digest"
            children = self.children(body_start, end, depth + 1, boundary, digest=digest)
        elif expand and content_type in MESSAGE_TYPES and encoding in _IDENTITY_ENCODINGS:
            message = self.part(body_start, end, depth + 1, in_digest=False)
        return Part(
            start=start,
            header_end=body_start,
            body_start=body_start,
            end=end,
            content_type=content_type,
            params=params,
            encoding=encoding,
            id=_text_field(fields.get(b"content-id")),
            description=_text_field(fields.get(b"content-description")),
            md5=_text_field(fields.get(b"content-md5")),
            disposition=_disposition(fields.get(b"content-disposition")),
            language=_language(fields.get(b"content-language")),
            location=_text_field(fields.get(b"content-location")),
            children=children,
            message=message,
            lines=data.count(b"\n", body_start, end),
            size=end - body_start,
        )

    def children(
        self, start: int, end: int, depth: int, boundary: bytes, *, digest: bool
    ) -> tuple[Part, ...]:
        if not boundary:
            return ()
        parts: list[Part] = []
        for part_start, part_end in body_parts(self.data, start, end, boundary):
            if self.budget <= 0:
                break
            parts.append(self.part(part_start, part_end, depth, in_digest=digest))
        return tuple(parts)


def _header_end(data: bytes, start: int, end: int) -> int:
    """Offset just past the blank line ending the header block at `start` (or `end`)."""
    if data.startswith(b"\n", start, end):
        return start + 1
    if data.startswith(b"\r\n", start, end):
        return start + 2
    match = _BLANK_LINE.search(data, start, end)
    return match.end() if match else end


def body_parts(data: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each body part of the multipart body `data[start:end]`."""
    part_start = -1
    for line_start, line_end, close in _delimiters(data, start, end, boundary):
        if part_start >= 0:
            yield part_start, _before_line_break(data, line_start, part_start)
        if close:
            return
        part_start = line_end
    if part_start >= 0:
        yield part_start, end


def _delimiters(
    data: bytes, start: int, end: int, boundary: bytes
) -> Iterator[tuple[int, int, bool]]:
    """(line start, line end, is close delimiter) of each delimiter line.

    RFC 2046 5.1.1: CRLF "--" boundary ["--"] *LWSP CRLF (bare LF accepted). bytes.find
    finds candidates; once a hostile body has shown many candidates that are not
    delimiters ("--boundaryX"), one compiled regex takes over so the scan stays in C."""
    marker = b"--" + boundary
    position = start
    if data.startswith(marker, start, end):
        tail = _DELIMITER_TAIL.match(data, start + len(marker), end)
        if tail is not None:
            yield start, tail.end(), bool(tail[1])
            position = _resume(data, tail.end())
    needle = b"\n" + marker
    misses = 0
    while misses < _MAX_NEAR_MISSES:
        found = data.find(needle, position, end)
        if found < 0:
            return
        tail = _DELIMITER_TAIL.match(data, found + len(needle), end)
        if tail is None:
            misses += 1
            position = found + 1
            continue
        yield found, tail.end(), bool(tail[1])
        position = _resume(data, tail.end())
    pattern = _delimiter_pattern(boundary)
    while (match := pattern.search(data, position, end)) is not None:
        yield match.start(), match.end(), bool(match[1])
        position = _resume(data, match.end())


@lru_cache(maxsize=64)
def _delimiter_pattern(boundary: bytes) -> re.Pattern[bytes]:
    return re.compile(rb"\n--" + re.escape(boundary) + _DELIMITER_TAIL.pattern)


def _resume(data: bytes, line_end: int) -> int:
    """Where to look for the next delimiter: its line break may end this line."""
    return line_end - 1 if data[line_end - 1] == 0x0A else line_end


def _before_line_break(data: bytes, newline: int, floor: int) -> int:
    if newline > floor and data[newline - 1] == 0x0D:
        return newline - 1
    return max(newline, floor)


def _field_spans(
    data: bytes, start: int, header_end: int
) -> Iterator[tuple[bytes, bytes, int, int]]:
    """(name, raw value, line start, line end) of each field; lines without a colon skipped."""
    block = data[start : min(header_end, start + MAX_HEADER_SCAN)]
    for match in _FIELD.finditer(block):
        value = match.group(2)
        if value.endswith(b"\r"):
            value = value[:-1]
        line_end = match.end() + 1 if block[match.end() : match.end() + 1] == b"\n" else match.end()
        yield match.group(1).rstrip(b" \t"), value, start + match.start(), start + line_end


def header_fields(data: bytes, part_start: int, header_end: int) -> list[tuple[bytes, bytes]]:
    """Raw (name, value) pairs of a header block; values keep their folding, not their
    final line break. Lines that are not fields (no colon) are skipped."""
    return [(name, value) for name, value, _, _ in _field_spans(data, part_start, header_end)]


def unfold(value: bytes) -> bytes:
    """RFC 5322 2.2.3 unfolding, then surrounding whitespace removed."""
    return _LINE_BREAK.sub(b"", value).strip(b" \t\r\n")


def _mime_fields(data: bytes, start: int, header_end: int) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value, _, _ in _field_spans(data, start, header_end):
        key = name.lower()
        if key.startswith(b"content-"):
            found.setdefault(key, value)
    return found


def _text(value: bytes) -> str:
    return unfold(value).decode("utf-8", "replace")


def _text_field(value: bytes | None) -> str | None:
    return None if value is None else _text(value)


def content_type_of(value: bytes | None, *, in_digest: bool = False) -> tuple[str, Params]:
    """(lower-case type/subtype, parameters) of a Content-Type value (RFC 2045 5, 5.2).

    Absent: text/plain; charset=us-ascii, or message/rfc822 inside multipart/digest
    (RFC 2046 5.1.5). Syntactically invalid: text/plain; charset=us-ascii.
    """
    default: tuple[str, Params] = (
        ("message/rfc822", ()) if in_digest else ("text/plain", (("charset", "us-ascii"),))
    )
    if value is None:
        return default
    head, _, rest = _text(value).partition(";")
    match = _TYPE.fullmatch(re.sub(r"\s+", "", _COMMENT.sub("", head)))
    if match is None:
        return "text/plain", (("charset", "us-ascii"),)
    return f"{match[1]}/{match[2]}".lower(), parse_params(rest)


def _encoding(value: bytes | None) -> str:
    match = _TOKEN.match(_COMMENT.sub("", _text(value)).strip()) if value is not None else None
    return match[0].lower() if match else "7bit"


def _disposition(value: bytes | None) -> tuple[str, Params] | None:
    if value is None:
        return None
    head, _, rest = _text(value).partition(";")
    match = _TOKEN.match(_COMMENT.sub("", head).strip())
    return (match[0].lower(), parse_params(rest)) if match else None


def _language(value: bytes | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    tags = tuple(tag.strip() for tag in _COMMENT.sub("", _text(value)).split(","))
    return tuple(tag for tag in tags if tag) or None


def parse_params(text: str) -> Params:
    """`attribute=value` pairs separated by ';' (RFC 2045 5.1), names lower-cased,
    quoted values unquoted, RFC 2231 continuations and charsets merged. The first
    occurrence of a name wins."""
    pairs: list[tuple[str, str]] = []
    for piece in _PARAM_PIECE.findall(text):
        name, equals, value = piece.partition("=")
        name = _COMMENT.sub("", name).strip().lower()
        if equals and name:
            pairs.append((name, _unquote(value.strip())))
    return _merge_rfc2231(pairs)


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    match = _QUOTED_STRING.match(value)
    inner = match[1] if match else value[1:]
    return _QUOTED_PAIR.sub(r"\1", inner)


def _merge_rfc2231(pairs: list[tuple[str, str]]) -> Params:
    plain: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    for name, value in pairs:
        match = _RFC2231_NAME.fullmatch(name)
        if match is None:
            plain.setdefault(name, value)
            continue
        base, index, encoded = match[1], int(match[2] or 0), match[3] is not None or not match[2]
        sections.setdefault(base, {}).setdefault(index, (value, encoded))
        plain.setdefault(base, "")
    return tuple(
        (name, _join_sections(sections[name]) if 0 in sections.get(name, {}) else value)
        for name, value in plain.items()
    )


def _join_sections(sections: dict[int, tuple[str, bool]]) -> str:
    """RFC 2231 3-4: sections *0, *1, ... in order (stopping at a gap); encoded ones
    are %-escaped octets in the charset named by the first section."""
    charset = ""
    out: list[str] = []
    pending = bytearray()
    index = 0
    while index in sections:
        value, encoded = sections[index]
        if encoded:
            if index == 0 and value.count("'") >= 2:
                charset, _language, value = value.split("'", 2)
            pending += unquote_to_bytes(value)
        else:
            out.append(decode_charset(bytes(pending), charset))
            pending.clear()
            out.append(value)
        index += 1
    out.append(decode_charset(bytes(pending), charset))
    return "".join(out)


def decode_charset(raw: bytes, charset: str | None) -> str:
    """`raw` decoded from `charset`, invalid octets replaced; an unknown or ASCII
    charset is read as UTF-8 (RFC 6532), which also keeps mislabelled 8-bit text."""
    name = (charset or "").strip().lower()
    if name and name not in _ASCII_CHARSETS:
        try:
            return raw.decode(name, "replace")
        except (LookupError, ValueError):
            pass
    return raw.decode("utf-8", "replace")


def base64_lenient(encoded: bytes) -> bytes:
    """Base64 (RFC 2045 6.8) ignoring characters outside the alphabet, missing padding
    and padding in the middle (separately encoded chunks run together)."""
    chunks = encoded.translate(None, _NOT_BASE64).split(b"=")
    return b"".join(_base64_chunk(chunk) for chunk in chunks if chunk)


def _base64_chunk(chunk: bytes) -> bytes:
    usable = len(chunk) - len(chunk) % 4
    if len(chunk) - usable > 1:
        return binascii.a2b_base64(chunk + b"=" * (4 - len(chunk) + usable))
    return binascii.a2b_base64(chunk[:usable])


def decoded_body(data: bytes, part: Part) -> bytes | None:
    """The body with its Content-Transfer-Encoding removed; None for an encoding this
    module does not know (IMAP BINARY then answers [UNKNOWN-CTE], RFC 3516 4.3)."""
    body = data[part.body_start : part.end]
    if part.encoding in _IDENTITY_ENCODINGS:
        return body
    if part.encoding == "base64":
        return base64_lenient(body)
    if part.encoding == "quoted-printable":
        return binascii.a2b_qp(body)
    return None


def locate(root: Part, path: tuple[int, ...]) -> Part | None:
    """The part numbered `path` (RFC 9051 6.4.5): numbers count the children of a
    multipart; a non-multipart message has only part 1, itself; after a
    message/rfc822 part the numbers go on inside the encapsulated message."""
    node, in_message = root, True
    for number in path:
        if not in_message and node.message is not None:
            node, in_message = node.message, True
        if node.is_multipart:
            siblings = node.children
        elif in_message:
            siblings = (node,)
        else:
            return None
        if not 1 <= number <= len(siblings):
            return None
        node, in_message = siblings[number - 1], False
    return node


def section(
    data: bytes, root: Part, part: tuple[int, ...], text: str, fields: tuple[str, ...]
) -> bytes | None:
    """The octets of BODY[<part>.<text>] (RFC 9051 6.4.5), or None if there is no such
    section. `text` is "", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or
    "MIME"; `fields` names the HEADER.FIELDS[.NOT] fields."""
    node = locate(root, part)
    spec = text.upper()
    if node is None:
        return None
    if spec == "":
        return data[node.body_start : node.end] if part else data[root.start : root.end]
    if spec == "MIME":
        return data[node.start : node.header_end] if part else None
    message = node.message if part else root
    if message is None:
        return None
    if spec == "HEADER":
        return data[message.start : message.header_end]
    if spec == "TEXT":
        return data[message.body_start : message.end]
    if spec in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return _header_lines(data, message, fields, keep=spec == "HEADER.FIELDS")
    return None


def _header_lines(data: bytes, message: Part, fields: tuple[str, ...], *, keep: bool) -> bytes:
    wanted = {name.lower().encode("utf-8", "replace") for name in fields}
    out = bytearray()
    for name, _, line_start, line_end in _field_spans(data, message.start, message.header_end):
        if (name.lower() in wanted) == keep:
            line = data[line_start:line_end]
            out += line if line.endswith(b"\n") else line + b"\r\n"
    out += b"\r\n"
    return bytes(out)
