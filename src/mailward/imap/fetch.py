"""FETCH responses: one untagged `* n FETCH (...)` per message.

RFC 9051 (IMAP4rev2) 6.4.5 FETCH and 7.5.2 FETCH response; RFC 3501 (IMAP4rev1) 6.4.5
and 7.4.2 (RFC822, RFC822.HEADER, RFC822.TEXT); RFC 3516 4.2 (BINARY[...],
BINARY.PEEK[...], BINARY.SIZE[...]) and 4.3 ([UNKNOWN-CTE]); RFC 7162 3.1.4 (MODSEQ
fetch data); RFC 9051 6.4.9 (UID FETCH always returns UID).

Implementation notes
- Pure: no I/O. `render_fetch` returns the response as a list of `bytes` and
  `BlobRange` chunks; the session writes the bytes and streams each `BlobRange` from
  the message blob. Concatenated, the chunks are exactly the response line(s).
- Whole-message items (BODY[], BODY.PEEK[], RFC822, and their partials
  BODY[]<start.len>) are always a literal header `{n}CRLF` followed by a `BlobRange`
  of n octets, whether or not `data` was loaded, so a large message is never copied
  into the response. `needs_message` is False for them (and for FLAGS, INTERNALDATE,
  RFC822.SIZE, UID, MODSEQ), so the session can skip loading the message.
- Item order is the request order. UID comes first when `include_uid` adds it (UID
  FETCH, RFC 9051 6.4.9) and the client did not ask for it; FLAGS (`include_flags`,
  for a fetch that just set \\Seen, RFC 9051 6.4.5) and MODSEQ (`include_modseq`, RFC
  7162 3.1.4.1) are appended at the end when not asked for. Repeated identical items
  are answered once.
- BODY.PEEK[...] answers as BODY[...]; the section spec is echoed with field names as
  the parser upper-cased them, each sent as an astring. A partial answers as
  `BODY[...]<start>` with the substring (RFC 9051 6.4.5: an empty string when start is
  beyond the end; BODY[]<0.2048> of a 1500-octet message answers BODY[]<0> with 1500
  octets). BINARY partials answer `BINARY[...]<start>` likewise (RFC 3516 4.2 and RFC
  9051 7.5.2 prose, as Dovecot and Stalwart do; errata 7246 notes the ABNF omits it).
- A section that does not exist, or means nothing for its part (3.HEADER of a text
  part), answers the empty string "" rather than BAD or NIL: the long-standing
  reading of RFC 3501 / RFC 9051 6.4.5 (Mark Crispin on imap-protocol, 2011) that
  clients expect. BINARY of a non-existent part answers NIL (its value is an nstring)
  and BINARY.SIZE of one answers 0 (its value must be a number).
- BINARY[part] is the body with its Content-Transfer-Encoding removed; `~{n}` (RFC
  3516 literal8) only when the decoded octets contain NUL. BINARY[] is the whole
  message as stored. An encoding `mime.decoded_body` does not know raises
  `UnknownCte`; the session answers `NO [UNKNOWN-CTE]` and sends nothing of this
  message.
- BODY[...] content goes out byte-exact: quoted when short printable ASCII, else a
  literal `{n}` (never literal8: RFC 9051 9 allows that only for BINARY).
- `structure_cache` maps blob ids to parsed `mime.Part` trees so that FETCHes of the
  same message do not reparse it; it is bounded here (`STRUCTURE_CACHE_LIMIT`
  entries, oldest dropped first).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass

from mailward.message import imap_structure, mime
from mailward.proto import imap_wire
from mailward.proto.imap_commands import FetchItem, Section
from mailward.store.api import MessageInfo

__all__ = [
    "STRUCTURE_CACHE_LIMIT",
    "BlobRange",
    "Chunk",
    "UnknownCte",
    "needs_message",
    "render_fetch",
    "sets_seen",
]

STRUCTURE_CACHE_LIMIT = 512

# Flags go out in this order, then any other system flag, then keywords, sorted.
_SYSTEM_FLAG_ORDER = ("\\Recent", "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
_WHOLE = Section()
_STRUCTURE_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT"})


@dataclass(frozen=True, slots=True)
class BlobRange:
    """`length` octets of the message blob starting at `offset`, to be streamed by the
    session at this point of the response. Always preceded by a `{length}CRLF`."""

    offset: int
    length: int


Chunk = bytes | BlobRange


class UnknownCte(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is not known: answer
    `NO [UNKNOWN-CTE]` (RFC 3516 4.3, RFC 9051 7.1)."""

    def __init__(self, item: str) -> None:
        super().__init__(f"unknown content transfer encoding in {item}")
        self.item = item


def _is_whole_message(item: FetchItem) -> bool:
    return item.name == "RFC822" or (item.name == "BODY" and item.section == _WHOLE)


def needs_message(items: Sequence[FetchItem]) -> bool:
    """Whether any item needs the message bytes or their parsed structure (everything
    except FLAGS, INTERNALDATE, RFC822.SIZE, UID, MODSEQ and whole-message items)."""
    for item in items:
        if item.name in _STRUCTURE_ITEMS or item.name.startswith("BINARY"):
            return True
        if item.name == "BODY" and not _is_whole_message(item):
            return True  # BODY (structure) or BODY[section]
    return False


def sets_seen(items: Sequence[FetchItem]) -> bool:
    """RFC 9051 6.4.5: BODY[...] and BINARY[...] (not .PEEK), RFC822 and RFC822.TEXT
    set \\Seen."""
    return any(
        item.name in ("RFC822", "RFC822.TEXT")
        or (item.name in ("BODY", "BINARY") and item.section is not None and not item.peek)
        for item in items
    )


def render_fetch(
    seq: int,
    info: MessageInfo,
    items: Sequence[FetchItem],
    data: bytes | None,
    *,
    include_uid: bool,
    include_modseq: bool,
    include_flags: bool = False,
    structure_cache: MutableMapping[str, mime.Part] | None = None,
) -> list[Chunk]:
    """The untagged FETCH response for message `seq`, as chunks (see the module notes).

    `data` is the whole message; it may be None only when `needs_message(items)` is
    False (else ValueError). Raises `UnknownCte` for BINARY of an unknown encoding."""
    if data is None and needs_message(items):
        raise ValueError("these fetch items need the message")
    plan: list[FetchItem] = []
    if include_uid and not any(item.name == "UID" for item in items):
        plan.append(FetchItem("UID"))
    for item in items:
        if item not in plan:
            plan.append(item)
    if include_flags and not any(item.name == "FLAGS" for item in plan):
        plan.append(FetchItem("FLAGS"))
    if include_modseq and not any(item.name == "MODSEQ" for item in plan):
        plan.append(FetchItem("MODSEQ"))

    message = _Message(info, data, structure_cache)
    out = _Output()
    out.add(b"* %d FETCH (" % seq)
    for index, item in enumerate(plan):
        if index:
            out.add(b" ")
        out.add(_response_name(item) + b" ")
        _render_item(out, item, message)
    out.add(b")\r\n")
    return out.finish()


_METADATA = frozenset({"UID", "FLAGS", "MODSEQ", "RFC822.SIZE", "INTERNALDATE"})


def metadata_renderer(
    items: Sequence[FetchItem], *, include_uid: bool, include_modseq: bool
) -> Callable[[int, MessageInfo], bytes] | None:
    """A fast renderer for FETCHes of index data only (`UID FETCH 1:* (FLAGS)`, what
    every client sends to resynchronise): the same bytes as `render_fetch`, with the
    plan made once per command and each distinct flag set serialised once. None when
    some item needs more than the index."""
    plan: list[str] = []
    if include_uid and not any(item.name == "UID" for item in items):
        plan.append("UID")
    for item in items:
        if item.name not in _METADATA or item.section is not None or item.partial is not None:
            return None
        if item.name not in plan:
            plan.append(item.name)
    if include_modseq and "MODSEQ" not in plan:
        plan.append("MODSEQ")
    flag_text: dict[frozenset[str], bytes] = {}

    def render(seq: int, info: MessageInfo) -> bytes:
        parts = []
        for name in plan:
            if name == "UID":
                parts.append(b"UID %d" % info.uid)
            elif name == "FLAGS":
                text = flag_text.get(info.flags)
                if text is None:
                    text = flag_text[info.flags] = imap_wire.serialize(_ordered_flags(info.flags))
                parts.append(b"FLAGS " + text)
            elif name == "MODSEQ":
                parts.append(b"MODSEQ (%d)" % info.modseq)
            elif name == "RFC822.SIZE":
                parts.append(b"RFC822.SIZE %d" % info.size)
            else:
                date = imap_wire.format_datetime(info.internal_date).encode("ascii")
                parts.append(b'INTERNALDATE "' + date + b'"')
        return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts))

    return render


class _Output:
    """Collects bytes, cutting them where a BlobRange goes."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.buffer = bytearray()

    def add(self, data: bytes) -> None:
        self.buffer += data

    def blob(self, offset: int, length: int) -> None:
        self.buffer += b"{%d}\r\n" % length
        self.chunks.append(bytes(self.buffer))
        self.buffer.clear()
        self.chunks.append(BlobRange(offset, length))

    def finish(self) -> list[Chunk]:
        if self.buffer:
            self.chunks.append(bytes(self.buffer))
            self.buffer.clear()
        return self.chunks


class _Message:
    """The message of one response: metadata, bytes, and the lazily parsed tree."""

    def __init__(
        self,
        info: MessageInfo,
        data: bytes | None,
        cache: MutableMapping[str, mime.Part] | None,
    ) -> None:
        self.info = info
        self._data = data
        self._cache = cache
        self._root: mime.Part | None = None

    @property
    def size(self) -> int:
        return self.info.size if self._data is None else len(self._data)

    @property
    def data(self) -> bytes:
        if self._data is None:  # needs_message() guards this
            raise ValueError("message bytes not loaded")
        return self._data

    @property
    def root(self) -> mime.Part:
        if self._root is None:
            cache, key = self._cache, self.info.blob_id
            root = cache.get(key) if cache is not None else None
            if root is None or root.end != len(self.data):
                root = mime.parse(self.data)
                if cache is not None:
                    cache.pop(key, None)
                    while len(cache) >= STRUCTURE_CACHE_LIMIT:
                        del cache[next(iter(cache))]
                    cache[key] = root
            self._root = root
        return self._root


def _response_name(item: FetchItem) -> bytes:
    """RFC 9051 7.5.2 item name: BODY[1.2.HEADER.FIELDS (SUBJECT)]<0>, BINARY[2], ..."""
    name = item.name.encode("ascii")
    section = item.section
    if section is None:
        return name
    spec = ".".join(str(number) for number in section.part).encode("ascii")
    if section.text:
        spec = spec + b"." + section.text.encode("ascii") if spec else section.text.encode()
    if section.text.startswith("HEADER.FIELDS"):
        spec += b" (" + b" ".join(imap_wire.astring(field) for field in section.fields) + b")"
    name += b"[" + spec + b"]"
    if item.partial is not None:
        name += b"<%d>" % item.partial[0]
    return name


def _body_string(content: bytes) -> bytes:
    """BODY[...] content: quoted or a plain literal; literal8 is for BINARY only."""
    if b"\x00" not in content:
        return imap_wire.quote_or_literal(content)
    return b"{%d}\r\n" % len(content) + content


def _slice(content: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return content
    start, length = partial
    return content[start : start + length]


def _render_item(out: _Output, item: FetchItem, message: _Message) -> None:
    info = message.info
    name = item.name
    if name == "UID":
        out.add(b"%d" % info.uid)
    elif name == "FLAGS":
        out.add(imap_wire.serialize(_ordered_flags(info.flags)))
    elif name == "INTERNALDATE":
        out.add(b'"' + imap_wire.format_datetime(info.internal_date).encode("ascii") + b'"')
    elif name == "RFC822.SIZE":
        out.add(b"%d" % info.size)
    elif name == "MODSEQ":
        out.add(b"(%d)" % info.modseq)  # RFC 7162 3.1.4: MODSEQ (<mod-sequence>)
    elif name == "ENVELOPE":
        out.add(imap_wire.serialize(imap_structure.envelope(message.data, message.root)))
    elif name == "BODYSTRUCTURE" or (name == "BODY" and item.section is None):
        extensible = name == "BODYSTRUCTURE"
        structure = imap_structure.bodystructure(message.data, message.root, extensible)
        out.add(imap_wire.serialize(structure))
    elif _is_whole_message(item):
        _render_whole(out, item, message)
    elif name == "BODY" and item.section is not None:
        section = item.section
        content = mime.section(
            message.data, message.root, section.part, section.text, section.fields
        )
        out.add(_body_string(_slice(content or b"", item.partial)))
    elif name in ("RFC822.HEADER", "RFC822.TEXT"):
        text = name.partition(".")[2]  # RFC 3501 6.4.5: BODY.PEEK[HEADER], BODY[TEXT]
        content = mime.section(message.data, message.root, (), text, ())
        out.add(_body_string(content or b""))
    elif name == "BINARY":
        decoded = _binary(item, message)
        out.add(imap_wire.nstring(None if decoded is None else _slice(decoded, item.partial)))
    elif name == "BINARY.SIZE":
        decoded = _binary(item, message)
        out.add(b"%d" % (0 if decoded is None else len(decoded)))
    else:
        raise ValueError(f"unknown fetch item {name!r}")


def _render_whole(out: _Output, item: FetchItem, message: _Message) -> None:
    size = message.size
    start, length = 0, size
    if item.partial is not None:
        start = min(item.partial[0], size)
        length = min(item.partial[1], size - start)
    if length:
        out.blob(start, length)
    else:
        out.add(b'""')


def _binary(item: FetchItem, message: _Message) -> bytes | None:
    """Decoded octets of BINARY[part], None for a part that does not exist."""
    part = item.section.part if item.section is not None else ()
    if not part:
        return message.data  # BINARY[]: the whole message, which has no transfer encoding
    node = mime.locate(message.root, part)
    if node is None:
        return None
    decoded = mime.decoded_body(message.data, node)
    if decoded is None:
        raise UnknownCte(_response_name(item).decode("ascii", "replace"))
    return decoded


def _ordered_flags(flags: frozenset[str]) -> list[str]:
    def key(flag: str) -> tuple[int, int, str]:
        if flag in _SYSTEM_FLAG_ORDER:
            return (0, _SYSTEM_FLAG_ORDER.index(flag), "")
        return (1 if flag.startswith("\\") else 2, 0, flag.lower())

    return sorted(flags, key=key)
