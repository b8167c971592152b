"""Text matching for IMAP SEARCH HEADER, BODY and TEXT (RFC 9051 6.4.4).

Header values are unfolded and their RFC 2047 encoded-words decoded (B and Q, any
charset Python knows, invalid octets replaced, adjacent words of one charset joined
before decoding so a character split across words survives; RFC 2231 5 language
suffixes ignored). Raw 8-bit header text is read as UTF-8 (RFC 6532).

Bodies are the text/* leaf parts, transfer-decoded (RFC 2045 6) and charset-decoded,
found through multiparts and message/rfc822; HTML is matched as written. TEXT also
matches every header block: the message's, each part's MIME header (RFC 9051: "the
header (including MIME header fields) or body") and those of attached messages, plus
the RFC 2231-decoded Content-Type and Content-Disposition parameter values (so an
attachment's file name is found however it was encoded).

Matching is a substring test after `str.casefold()` on both sides.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

from mailward.message.mime import (
    Part,
    base64_lenient,
    decode_charset,
    decoded_body,
    header_fields,
    unfold,
)

_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")


def decode_header_value(raw: bytes) -> str:
    """The unfolded value with RFC 2047 encoded-words decoded. Never raises."""
    value = unfold(raw)
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position : match.start()]
        if not (position and not gap.strip()):
            out.append(decode_charset(bytes(pending), pending_charset))
            pending.clear()
            out.append(gap.decode("utf-8", "replace"))
        charset = match[1].decode("ascii", "replace").partition("*")[0].lower()
        if charset != pending_charset:
            out.append(decode_charset(bytes(pending), pending_charset))
            pending.clear()
            pending_charset = charset
        pending += _decode_word(match[2], match[3])
        position = match.end()
    out.append(decode_charset(bytes(pending), pending_charset))
    out.append(value[position:].decode("utf-8", "replace"))
    return "".join(out)


def _decode_word(encoding: bytes, text: bytes) -> bytes:
    if encoding in b"Bb":
        return base64_lenient(text)
    return binascii.a2b_qp(text, header=True)


def header_matches(data: bytes, root: Part, name: str, needle: str) -> bool:
    """SEARCH HEADER: some field `name` of the message header contains `needle`; an
    empty needle matches any message that has the field."""
    return header_section_matches(data, root.start, root.header_end, name, needle)


def header_section_matches(data: bytes, start: int, end: int, name: str, needle: str) -> bool:
    """`header_matches` on the header section data[start:end], without a MIME parse.

    Most headers are plain ASCII without encoded words; for those, decoding is the
    identity and case folding is lower-casing, so when the needle does not occur in
    the lower-cased section no field can match and the fields need not be split."""
    folded = needle.casefold()
    wanted = name.lower().encode("utf-8", "replace")
    if folded and folded.isascii():
        section = data[start:end]
        if section.isascii() and b"=?" not in section:
            lowered = _FOLD.sub(b"", section).lower()  # RFC 5322 2.2.3 unfolding
            if folded.encode() not in lowered or wanted not in lowered:
                return False
    return any(
        folded in decode_header_value(value).casefold()
        for field, value in header_fields(data, start, end)
        if field.lower() == wanted
    )


def body_matches(data: bytes, root: Part, needle: str) -> bool:
    """SEARCH BODY: the decoded text of some text/* part contains `needle`."""
    folded = needle.casefold()
    return any(folded in text.casefold() for text in _body_texts(data, root))


def text_matches(data: bytes, root: Part, needle: str) -> bool:
    """SEARCH TEXT: some header block (decoded) or the body contains `needle`."""
    folded = needle.casefold()
    headers = (text.casefold() for text in _header_texts(data, root))
    return any(folded in text for text in headers) or body_matches(data, root, needle)


def _body_texts(data: bytes, part: Part) -> Iterator[str]:
    if part.is_multipart:
        for child in part.children:
            yield from _body_texts(data, child)
    elif part.message is not None:
        yield from _body_texts(data, part.message)
    elif part.content_type.startswith("text/"):
        body = decoded_body(data, part)
        raw = data[part.body_start : part.end] if body is None else body
        yield decode_charset(raw, part.param("charset"))


def _header_texts(data: bytes, part: Part) -> Iterator[str]:
    fields = header_fields(data, part.start, part.header_end)
    yield "\n".join(
        f"{name.decode('utf-8', 'replace')}: {decode_header_value(value)}" for name, value in fields
    )
    params = part.params + (part.disposition[1] if part.disposition else ())
    yield "\n".join(value for _, value in params)
    for child in part.children:
        yield from _header_texts(data, child)
    if part.message is not None:
        yield from _header_texts(data, part.message)
