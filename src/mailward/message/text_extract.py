"""The files in a message and the text a person would read in them, bounded (for the
attachment policy and data-loss prevention, NIST SP 800-45 5.x).

`leaves(data)` yields every leaf body part of a message, transfer-decoded (RFC 2045
6), through multiparts and attached messages, also those a sender encoded in base64
or quoted-printable against RFC 2046 5.2.1 (they are decoded and parsed again, the
nesting still bounded by `mime.MAX_DEPTH`). Each `Leaf` has the file names it goes by:
every `filename` / `name` parameter of every Content-Disposition / Content-Type field
(duplicates included: mail readers differ in which one they believe), RFC 2231
(`mime.parse_params`) and RFC 2047 (`search_text.decode_header_value`) decoded.

`message_texts(data)` yields (where, text) for DLP: the Subject; text/plain,
text/html (tags dropped, entities decoded, comments and alt/title/value attributes
kept: hidden text leaves the organisation too), other text/* and text-looking
attachments (CSV, JSON, ...); PDF text; Office Open XML (DOCX, XLSX, PPTX) and
OpenDocument text; and the same inside ZIP/tar/gzip archives (`archives.walk`, with
its bounds; an archive past them is read no further here, the attachment policy is
what refuses it). The text in all is at most `max_chars` characters.

PDF (ISO 32000-1 7.3.8, 7.4, 9.4), best effort and bounded: streams are found by
their `stream`/`endstream` keywords, FlateDecode / ASCIIHexDecode / ASCII85Decode
are undone (images, fonts and cross-reference streams skipped, each stream inflated to
at most `_PDF_MAX_STREAM` octets and all of a file's to `_PDF_MAX_INFLATE`), and the
string operands of the text operators Tj, TJ, ' and " are kept. Text drawn with
composite (CID) fonts comes out as their glyph codes, not as text.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from mailward.message.archives import ArchiveLimitExceeded, ArchiveLimits, Budget, walk
from mailward.message.mime import (
    MAX_DEPTH,
    MAX_PARTS,
    MESSAGE_TYPES,
    Part,
    content_type_of,
    decode_charset,
    decoded_body,
    header_fields,
    parse,
    parse_params,
    unfold,
)
from mailward.message.search_text import decode_header_value
from mailward.message.sniff import sniff

__all__ = [
    "MAX_TEXT",
    "Leaf",
    "MimeLimitExceeded",
    "extension",
    "file_names",
    "html_to_text",
    "leaves",
    "message_texts",
    "pdf_text",
    "xml_text",
]

MAX_TEXT = 16 * 1024 * 1024  # characters of text extracted from one message
TEXT_EXTENSIONS = frozenset(
    {"txt", "csv", "tsv", "json", "xml", "md", "log", "ini", "yaml", "yml", "sql", "vcf", "ics"}
)
_TEXT_TYPES = frozenset(
    {"application/json", "application/xml", "application/csv", "application/x-csv"}
    | {"application/sql", "application/x-yaml", "application/yaml"}
)
# Sniffed formats that are text (a "#!" script, a .reg file, RTF): read as text.
_TEXT_LABELS = frozenset({None, "script", "reg", "rtf", "pdf"})
_IDENTITY = frozenset({"7bit", "8bit", "binary"})
_HTML_EXTENSIONS = frozenset({"htm", "html", "xhtml"})
_PDF_MAX_INFLATE = 32 * 1024 * 1024
_PDF_MAX_STREAM = 16 * 1024 * 1024
_PDF_MAX_STREAMS = 10_000


@dataclass(frozen=True, slots=True)
class Leaf:
    """One leaf body part: `content` is transfer-decoded (the raw body when the
    encoding is unknown). `names` are its file names, decoded, as written."""

    content_type: str
    charset: str | None
    names: tuple[str, ...]
    content: bytes
    attachment: bool  # has a file name or Content-Disposition: attachment


class MimeLimitExceeded(Exception):
    """The MIME structure goes past the parser's caps; `rule` is "mime-depth" or
    "mime-parts" (parts beyond them would be hidden from a check)."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


@dataclass(slots=True)
class _Walk:
    strict: bool
    parts: int = 0


def leaves(data: bytes, root: Part | None = None, *, strict: bool = False) -> Iterator[Leaf]:
    """Every leaf body part of the message `data` (`root`: its `mime.parse`, if the
    caller has it already), see the module doc. Parts past `mime.MAX_DEPTH` levels
    (counted through re-parsed encoded messages too) or `mime.MAX_PARTS` parts are left
    out, or with `strict` raise `MimeLimitExceeded`: the parser leaves a multipart or
    message it did not expand at its depth cap childless, so a childless one at that
    depth, or a part count at the cap, means something was cut off."""
    walk = _Walk(strict)
    yield from _leaves(data, parse(data) if root is None else root, 0, 0, walk)


def _leaves(data: bytes, part: Part, depth: int, local: int, walk: _Walk) -> Iterator[Leaf]:
    walk.parts += 1
    container = part.is_multipart or (
        part.content_type in MESSAGE_TYPES and part.encoding in _IDENTITY
    )
    if walk.parts >= MAX_PARTS:
        if walk.strict:
            raise MimeLimitExceeded("mime-parts", f"{MAX_PARTS} parts")
        return
    unexpanded = container and not part.children and part.message is None
    if depth >= MAX_DEPTH or (unexpanded and local + 1 >= MAX_DEPTH):
        if walk.strict:
            raise MimeLimitExceeded("mime-depth", f"{MAX_DEPTH} levels")
        return
    if part.is_multipart:
        for child in part.children:
            yield from _leaves(data, child, depth + 1, local + 1, walk)
        return
    if part.message is not None:
        yield from _leaves(data, part.message, depth + 1, local + 1, walk)
        return
    content = decoded_body(data, part)
    if content is None:
        content = data[part.body_start : part.end]
    if part.content_type in MESSAGE_TYPES and not container:
        # RFC 2046 5.2.1 forbids encoding message/rfc822; readers decode it anyway.
        yield from _leaves(content, parse(content), depth + 1, 0, walk)
        return
    names = file_names(data, part)
    disposition = part.disposition[0] if part.disposition else ""
    yield Leaf(
        part.content_type,
        part.param("charset"),
        names,
        content,
        bool(names) or disposition == "attachment",
    )


def file_names(data: bytes, part: Part) -> tuple[str, ...]:
    """Every file name a part's header gives, decoded, in order, without repeats."""
    found: list[str] = []
    for name, value in header_fields(data, part.start, part.header_end):
        key = name.lower()
        if key == b"content-type":
            params = content_type_of(value)[1]
            wanted = "name"
        elif key == b"content-disposition":
            text = unfold(value).decode("utf-8", "replace")
            params = parse_params(text.partition(";")[2])
            wanted = "filename"
        else:
            continue
        for param, raw in params:
            if param == wanted and raw:
                decoded = decode_header_value(raw.encode("utf-8", "surrogateescape"))
                if decoded not in found:
                    found.append(decoded)
    return tuple(found)


def extension(name: str) -> str:
    """The lower-case extension of a file name as Windows sees it: trailing dots and
    spaces dropped, any directory part ignored ("a.PDF.exe. " -> "exe")."""
    base = re.split(r"[/\\]", name)[-1].rstrip(" .\t\r\n\x00")
    _stem, dot, ext = base.rpartition(".")
    return ext.strip().lower() if dot else ""


# ----------------------------------------------------------------------------- text


def message_texts(
    data: bytes, *, max_chars: int = MAX_TEXT, limits: ArchiveLimits | None = None
) -> Iterator[tuple[str, str]]:
    """(where, text) for every piece of readable text in the message (module doc)."""
    yield from _Extractor(max_chars, limits).message(data)


class _Extractor:
    def __init__(self, max_chars: int, limits: ArchiveLimits | None) -> None:
        self.remaining = max_chars
        self.budget = Budget(limits)

    def take(self, where: str, text: str) -> Iterator[tuple[str, str]]:
        if text and self.remaining > 0:
            text = text[: self.remaining]
            self.remaining -= len(text)
            yield where, text

    def message(self, data: bytes) -> Iterator[tuple[str, str]]:
        root = parse(data)
        for name, value in header_fields(data, root.start, root.header_end):
            if name.lower() == b"subject":
                yield from self.take("subject", decode_header_value(value))
        for leaf in leaves(data, root):
            if self.remaining <= 0:
                return
            where = leaf.names[0] if leaf.names else leaf.content_type
            yield from self.file(where, leaf.content_type, leaf.charset, leaf.content, leaf.names)

    def file(
        self,
        where: str,
        content_type: str,
        charset: str | None,
        content: bytes,
        names: tuple[str, ...],
    ) -> Iterator[tuple[str, str]]:
        label = sniff(content)
        extensions = {extension(name) for name in names}
        if label == "pdf":
            yield from self.take(where, pdf_text(content, max_chars=self.remaining))
            if not _looks_textual(content):
                return
            # "%PDF-" near the start of what is really text (or a PDF without binary
            # streams): read it as text too, so those five octets hide nothing.
        elif label in ("zip", "tar", "gzip", "bzip2", "xz"):
            yield from self.archive(where, content)
            return
        elif label == "ole":
            yield from self.take(where, binary_strings(content[: self.remaining * 4]))
            return
        elif label not in _TEXT_LABELS:
            return  # some other binary format
        if content_type == "text/html" or extensions & _HTML_EXTENSIONS:
            limit = self.remaining * 4  # markup is longer than its text
            yield from self.take(where, html_to_text(decode_charset(content[:limit], charset)))
        elif (
            label is not None
            or content_type.startswith("text/")
            or content_type in _TEXT_TYPES
            or extensions & TEXT_EXTENSIONS
            or _looks_textual(content)
        ):
            yield from self.take(where, decode_charset(content[: self.remaining * 4], charset))

    def archive(self, where: str, content: bytes) -> Iterator[tuple[str, str]]:
        try:
            for entry in walk(content, (where,), self.budget):
                if self.remaining <= 0 or entry.data is None:
                    continue
                inner = f"{where}: {entry.name}"
                if entry.container in ("ooxml", "odf"):
                    if _OFFICE_TEXT.match(entry.name):
                        yield from self.take(inner, xml_text(entry.data))
                    continue
                if sniff(entry.data) not in ("zip", "tar", "gzip", "bzip2", "xz"):
                    names = (entry.name, *entry.other_names)
                    yield from self.file(inner, "application/octet-stream", None, entry.data, names)
        except ArchiveLimitExceeded:
            return


_ASCII_RUN = re.compile(rb"[\t\n\r\x20-\x7e]{6,}")
_UTF16_RUN = re.compile(rb"(?:[\t\n\r\x20-\x7e]\x00){6,}")


def binary_strings(content: bytes) -> str:
    """Runs of six or more printable characters, 8-bit and UTF-16LE, as strings(1)
    finds them: the text of a legacy binary Office document, roughly."""
    ascii_runs = (run.decode("ascii") for run in _ASCII_RUN.findall(content))
    utf16_runs = (run.decode("utf-16-le") for run in _UTF16_RUN.findall(content))
    return "\n".join([*ascii_runs, *utf16_runs])


def _looks_textual(content: bytes) -> bool:
    """No NUL and mostly printable in the first 8 KiB (UTF-8 and 8-bit text pass)."""
    head = content[:8192]
    if not head or b"\x00" in head:
        return False
    control = sum(1 for byte in head if byte < 0x20 and byte not in (9, 10, 12, 13))
    return control * 50 < len(head)


# ----------------------------------------------------------------------------- HTML


_HTML_SKIP = frozenset({"script", "style", "template"})
_HTML_BLOCK = frozenset(
    {"p", "div", "br", "tr", "li", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6"}
    | {"pre", "blockquote", "section", "article", "header", "footer", "hr", "dt", "dd"}
)
_HTML_CELL = frozenset({"td", "th"})
_HTML_TAG_NAME = re.compile(r"(/?)([A-Za-z][A-Za-z0-9-]*)")
_HTML_ATTRIBUTE = re.compile(
    r"""(?<![\w-])(?:alt|title|value)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""", re.IGNORECASE
)
_HTML_SKIP_END = {name: re.compile(rf"</{name}\s*>", re.IGNORECASE) for name in _HTML_SKIP}


def html_to_text(markup: str) -> str:
    """The text of an HTML document: tags dropped (line breaks for block elements,
    tabs before cells), character references decoded (no-break spaces as spaces),
    script and style left out, comments and alt/title/value attributes kept.

    A linear scan with str.find (no backtracking, no HTML parser state to blow up):
    good enough for finding data, not a renderer."""
    out: list[str] = []
    position, end = 0, len(markup)
    while position < end:
        start = markup.find("<", position)
        if start < 0:
            out.append(markup[position:])
            break
        out.append(markup[position:start])
        if markup.startswith("<!--", start):
            close = markup.find("-->", start + 4)
            close = end if close < 0 else close
            out.append(f"\n{markup[start + 4 : close]}\n")
            position = close + 3
            continue
        close = markup.find(">", start + 1)
        if close < 0:
            out.append(markup[start:])
            break
        tag = markup[start + 1 : close]
        position = close + 1
        match = _HTML_TAG_NAME.match(tag)
        if match is None:
            continue  # <!DOCTYPE ...>, <?xml ...?>, or a stray "<"
        closing, name = match[1] == "/", match[2].lower()
        if name in _HTML_SKIP and not closing:
            skip = _HTML_SKIP_END[name].search(markup, position)
            position = end if skip is None else skip.end()
            continue
        if name in _HTML_BLOCK:
            out.append("\n")
        elif name in _HTML_CELL and not closing:
            out.append("\t")
        if "=" in tag:
            out.extend(f" {''.join(value)} " for value in _HTML_ATTRIBUTE.findall(tag))
    return html.unescape("".join(out)).replace("\xa0", " ")  # &nbsp; is a space


# ----------------------------------------------------------------------------- XML

_OFFICE_TEXT = re.compile(
    r"(?:word/(?:document|header\d*|footer\d*|footnotes|endnotes|comments)\.xml"
    r"|xl/sharedStrings\.xml|xl/worksheets/[^/]+\.xml"
    r"|ppt/(?:slides|notesSlides)/[^/]+\.xml|content\.xml)\Z",
    re.IGNORECASE,
)
_XML_BREAK = re.compile(
    r"</(?:w:p|a:p|text:p|text:h|si|row|table:table-row)>"
    r"|<(?:w:br|w:cr|a:br|text:line-break)\b[^>]*>"
)
_XML_CELL = re.compile(r"</(?:c|w:tc|table:table-cell)>|<(?:w:tab|text:tab|text:s)\b[^>]*>")
_XML_TAG = re.compile(r"<[^>]*>")


def xml_text(document: bytes) -> str:
    """The character data of an Office Open XML / OpenDocument part: paragraphs and
    rows on lines, cells separated by tabs, runs of one paragraph joined. Read with
    regular expressions, not an XML parser: no entity expansion, no DTD."""
    encoding = "utf-16" if document.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8"
    text = document.decode(encoding, "replace")
    text = _XML_TAG.sub("", _XML_CELL.sub("\t", _XML_BREAK.sub("\n", text)))
    return html.unescape(text).replace("\xa0", " ")


# ----------------------------------------------------------------------------- PDF

_STREAM = re.compile(rb"(?<!end)stream(?:\r\n|\n|\r)")
_FILTERS = re.compile(rb"/([A-Za-z0-9]+)")
_SKIPPED_STREAMS = (b"/Image", b"/XRef", b"/Length1", b"/Length2", b"/Length3", b"/Metadata")
_PDF_TOKEN = re.compile(
    rb"(?P<lit>\((?:[^()\\]|\\.|\((?:[^()\\]|\\.){0,1024}\)){0,8192}\))"
    rb"|(?P<hex><[0-9A-Fa-f\s]{0,16384}>)"
    rb"|(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))"
    rb"|(?P<op>[A-Za-z'\"*]+)"
    rb"|(?P<open>\[)|(?P<close>\])",
    re.DOTALL,
)
_LITERAL_ESCAPE = re.compile(rb"\\([0-7]{1,3}|\r\n|.)", re.DOTALL)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def pdf_text(data: bytes, *, max_chars: int = MAX_TEXT) -> str:
    """The text shown by a PDF's content streams, best effort (module doc)."""
    out: list[str] = []
    total = 0
    inflate_left = _PDF_MAX_INFLATE
    streams = 0
    for match in _STREAM.finditer(data):
        streams += 1
        if streams > _PDF_MAX_STREAMS or total >= max_chars or inflate_left <= 0:
            break
        start = match.end()
        end = data.find(b"endstream", start)
        end = len(data) if end < 0 else end
        dictionary = data[max(0, match.start() - 2048) : match.start()]
        cut = dictionary.rfind(b"obj")  # "12 0 obj" (or the "endobj" before it)
        dictionary = dictionary[cut + 3 :] if cut >= 0 else dictionary
        if any(marker in dictionary for marker in _SKIPPED_STREAMS):
            continue
        content = _decode_stream(dictionary, data[start:end], min(inflate_left, _PDF_MAX_STREAM))
        if content is None:
            continue
        inflate_left -= len(content)
        text = _content_text(content)
        out.append(text)
        total += len(text)
    return "".join(out)[:max_chars]


def _decode_stream(dictionary: bytes, raw: bytes, limit: int) -> bytes | None:
    filters: list[bytes] = []
    position = dictionary.find(b"/Filter")
    if position >= 0:
        rest = dictionary[position + 7 :].lstrip()
        spec = rest[: rest.find(b"]") + 1] if rest.startswith(b"[") else rest[:64]
        names = _FILTERS.findall(spec)
        filters = names if rest.startswith(b"[") else names[:1]
    content = raw
    try:
        for name in filters:
            if name in (b"FlateDecode", b"Fl"):
                content = zlib.decompressobj().decompress(content, limit)
            elif name in (b"ASCIIHexDecode", b"AHx"):
                digits = re.sub(rb"[^0-9A-Fa-f]", b"", content.partition(b">")[0])
                content = binascii.unhexlify(digits + b"0" * (len(digits) % 2))
            elif name in (b"ASCII85Decode", b"A85"):
                body = content.strip().removeprefix(b"<~").partition(b"~>")[0]
                content = base64.a85decode(body, ignorechars=b" \t\r\n\x0c\x00")
            else:
                return None  # LZW, DCT, JBIG2, CCITT, Crypt...: not text we can read
    except (zlib.error, binascii.Error, ValueError):
        return None
    return content[:limit]


def _content_text(content: bytes) -> str:
    """Strings shown by Tj, TJ, ' and " (ISO 32000-1 9.4.3); a line break for T*, ET,
    and a move to another line, a space for other moves and wide TJ gaps."""
    out: list[str] = []
    operands: list[str] = []
    array: list[str] | None = None
    numbers: list[float] = []
    for token in _PDF_TOKEN.finditer(content):
        kind = token.lastgroup
        value = token.group()
        if kind in ("lit", "hex"):
            text = _pdf_string(value, literal=kind == "lit")
            (array if array is not None else operands).append(text)
        elif kind == "num":
            if array is not None:
                if float(value) < -200:  # a gap wider than a fifth of an em: a space
                    array.append(" ")
            else:
                numbers.append(float(value))
        elif kind == "open":
            array = []
        elif kind == "close":
            operands.append("".join(array or []))
            array = None
        else:
            if value in (b"Tj", b"'", b'"', b"TJ") and operands:
                if value != b"Tj" and value != b"TJ":
                    out.append("\n")
                out.append(operands[-1])
            elif value in (b"T*", b"ET"):
                out.append("\n")
            elif value in (b"Td", b"TD"):
                out.append("\n" if len(numbers) >= 2 and numbers[-1] != 0 else " ")
            elif value == b"Tm":
                out.append(" ")
            operands, numbers = [], []
    return "".join(out)


def _pdf_string(token: bytes, *, literal: bool) -> str:
    if literal:
        raw = _LITERAL_ESCAPE.sub(_unescape, token[1:-1])
    else:
        digits = re.sub(rb"\s", b"", token[1:-1])
        raw = binascii.unhexlify(digits + b"0" * (len(digits) % 2))
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", "replace")
    return raw.decode("latin-1")


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    if escaped[:1].isdigit():
        return bytes([int(escaped, 8) & 0xFF])
    if escaped in (b"\r\n", b"\n", b"\r"):
        return b""  # a line continuation
    return _ESCAPES.get(escaped, escaped)
