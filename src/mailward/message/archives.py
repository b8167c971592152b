"""Archives inside mail, opened with the standard library and bounded (NIST SP 800-45
5.x: scan the contents of compressed files; refuse what cannot be bounded).

`walk(data, path, budget)` yields every member of an archive, depth first, and the
members of the archives inside it: ZIP (APPNOTE.TXT; also the Office Open XML,
OpenDocument, JAR and APK files built on it), tar (POSIX ustar / GNU), gzip
(RFC 1952), bzip2 and xz streams, and TNEF (winmail.dat, application/ms-tnef,
[MS-OXTNEF]: each attachment a member, see `_tnef`). Formats it cannot open (RAR, 7z,
CAB, ...), members it cannot read (encrypted: general-purpose flag bit 0; compression
methods other than stored and deflate) and archives that are corrupt are yielded as
`Entry`s with a `problem` and no data, so the caller applies its policy for
uninspectable content.

Bounds, shared by every archive of one message through one `Budget`, each raising
`ArchiveLimitExceeded` (naming the rule) rather than working on:

- nesting depth (`max_depth`: an archive attached to the message is depth 1; a tar
  inside a gzip/bzip2/xz stream is one archive, .tar.gz, not two);
- members in all (`max_members`), checked against the ZIP end-of-central-directory
  count before the directory is parsed at all;
- decompressed octets in all (`max_total_size`): first against the sizes the ZIP
  directory declares, then against the octets actually produced, counted as they are
  read in 64 KiB pieces (decompressors are always called with a `max_length`, so a
  bomb is never inflated past the bound, whatever its headers say);
- compression ratio (`max_ratio`, for members of more than `ratio_min_size` octets),
  both declared and actual.

`pdf_inside(data, path, budget)` looks inside a PDF, within the same budget: its object
streams decoded (for `sniff.pdf_labels`) and its embedded files (see there).

Never raises anything but `ArchiveLimitExceeded`.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import io
import lzma
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailward.message.sniff import (
    ARCHIVE_FORMATS,
    pdf_labels,
    pdf_name_regex,
    sniff,
    zip_container_kind,
)

__all__ = [
    "ArchiveLimitExceeded",
    "ArchiveLimits",
    "Budget",
    "Entry",
    "PdfInside",
    "archive_format",
    "pdf_inside",
    "walk",
]

CHUNK = 64 * 1024
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    NotImplementedError,
    RuntimeError,
    OSError,
    EOFError,
    ValueError,
    IndexError,
    struct.error,
    zlib.error,
)
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, struct.error)
_STREAM_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
_COMPRESSED_SUFFIXES = {".gz": "", ".tgz": ".tar", ".bz2": "", ".tbz2": ".tar", ".xz": ""}
_COMPRESSED_SUFFIXES |= {".txz": ".tar", ".z": ""}


class ArchiveLimitExceeded(Exception):
    """A bound was reached; `rule` is "depth", "members", "size" or "ratio"."""

    def __init__(self, rule: str, detail: str) -> None:
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_depth: int = 3
    max_members: int = 1000
    max_total_size: int = 100 * 1024 * 1024
    max_ratio: int = 100
    ratio_min_size: int = 1024 * 1024


class Budget:
    """What the archives of one message may still cost (members, octets)."""

    def __init__(self, limits: ArchiveLimits | None = None) -> None:
        self.limits = limits or ArchiveLimits()
        self.members = 0
        self.size = 0

    def expect_members(self, count: int) -> None:
        if self.members + count > self.limits.max_members:
            raise ArchiveLimitExceeded(
                "members", f"{self.members + count} members (limit {self.limits.max_members})"
            )

    def add_member(self) -> None:
        self.expect_members(1)
        self.members += 1

    def expect_size(self, size: int) -> None:
        if self.size + size > self.limits.max_total_size:
            raise ArchiveLimitExceeded(
                "size", f"{self.size + size} octets (limit {self.limits.max_total_size})"
            )

    def add_size(self, size: int) -> None:
        self.expect_size(size)
        self.size += size

    def check_ratio(self, expanded: int, compressed: int, name: str) -> None:
        limits = self.limits
        if expanded > limits.ratio_min_size and expanded > limits.max_ratio * max(compressed, 1):
            raise ArchiveLimitExceeded(
                "ratio",
                f"{name!r}: {expanded} octets from {compressed} (limit {limits.max_ratio}:1)",
            )


@dataclass(frozen=True, slots=True)
class Entry:
    """One member: `path` names it from the outermost archive down (the first name is
    the archive's own). `data` is its content, or None with `problem` saying why
    ("encrypted", "unsupported compression", "corrupt zip archive", "rar archive", ...;
    a problem about a whole archive has that archive's path). `container` is what
    `sniff.zip_container_kind` says of the ZIP holding it. `other_names` are further
    names the member goes by (the original name a gzip header records, the other
    names of a TNEF attachment or a PDF embedded file)."""

    path: tuple[str, ...]
    data: bytes | None
    depth: int
    container: str | None = None
    problem: str = ""
    other_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.path[-1]


def archive_format(data: bytes) -> str | None:
    """The archive format `data` starts with (a `sniff.ARCHIVE_FORMATS` label), "zip"
    for a ZIP with other data in front of it (readers find a ZIP by its end), or None."""
    label = sniff(data)
    if label in ARCHIVE_FORMATS:
        return label
    if _zip_directory_end(data) >= 0:
        return "zip"
    return None


def walk(data: bytes, path: tuple[str, ...], budget: Budget, *, depth: int = 1) -> Iterator[Entry]:
    """Every member of the archive `data` (called `path[-1]`) and of the archives
    nested in it, depth first, each nested archive's own entry before its members."""
    if depth > budget.limits.max_depth:
        raise ArchiveLimitExceeded("depth", f"{'/'.join(path)!r} at depth {depth}")
    label = sniff(data)
    if label == "zip" or (label not in ARCHIVE_FORMATS and _zip_directory_end(data) >= 0):
        yield from _zip(data, path, budget, depth, strict=label == "zip")
    elif label == "tar":
        yield from _tar(data, path, budget, depth)
    elif label in ("gzip", "bzip2", "xz"):
        yield from _compressed(data, label, path, budget, depth)
    elif label == "tnef":
        yield from _tnef(data, path, budget, depth)
    elif label in ARCHIVE_FORMATS:
        yield Entry(path, None, depth, problem=f"{label} archive")


def _nested(entry: Entry, budget: Budget) -> Iterator[Entry]:
    """The members of `entry` if it is an archive itself."""
    if entry.data is not None and archive_format(entry.data) is not None:
        yield from walk(entry.data, entry.path, budget, depth=entry.depth + 1)


# ----------------------------------------------------------------------------- ZIP


def _zip_directory_end(data: bytes) -> int:
    """Offset of the end-of-central-directory record (APPNOTE 4.3.16), or -1."""
    position = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if position < 0 or position + 22 > len(data):
        return -1
    return position


def _zip_declared_entries(data: bytes) -> int:
    """The member count the end record declares (ZIP64 record if need be; APPNOTE
    4.3.14-4.3.16), so a directory of a million entries is refused unparsed."""
    end = _zip_directory_end(data)
    if end < 0:
        return 0
    (count,) = struct.unpack_from("<H", data, end + 10)
    locator = end - 20
    if count == 0xFFFF and locator >= 0 and data.startswith(b"PK\x06\x07", locator):
        (record,) = struct.unpack_from("<Q", data, locator + 8)
        if record + 40 <= len(data) and data.startswith(b"PK\x06\x06", record):
            (count,) = struct.unpack_from("<Q", data, record + 32)
    return int(count)


def _zip_directory_real(data: bytes) -> bool:
    """The end record is followed back to a central directory header (or a ZIP64 end
    record): it belongs to a ZIP, not to data that happens to contain its signature."""
    end = _zip_directory_end(data)
    if end < 0:
        return False
    (size,) = struct.unpack_from("<I", data, end + 12)
    if size == 0xFFFFFFFF:
        return end >= 20 and data.startswith(b"PK\x06\x07", end - 20)
    return end >= size and data.startswith(b"PK\x01\x02", end - size)


def _zip(
    data: bytes, path: tuple[str, ...], budget: Budget, depth: int, *, strict: bool
) -> Iterator[Entry]:
    declared = _zip_declared_entries(data)
    if declared > budget.limits.max_members - budget.members:
        if not (strict or _zip_directory_real(data)):
            return  # an end record by chance in some other file: not a ZIP
        budget.expect_members(declared)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        # (not ZipInfo.is_dir(): it raises IndexError on an empty name)
        infos = [info for info in archive.infolist() if not info.filename.endswith("/")]
    except _ZIP_ERRORS:
        if strict:  # it starts like a ZIP; a ZIP found only by its end may be chance
            yield Entry(path, None, depth, problem="corrupt zip archive")
        return
    budget.expect_members(len(infos))
    container = zip_container_kind(info.filename for info in infos)
    budget.expect_size(sum(info.file_size for info in infos if not info.flag_bits & 1))
    for info in infos:
        budget.check_ratio(info.file_size, info.compress_size, info.filename)
    for info in infos:
        budget.add_member()
        member = (*path, info.filename)
        if info.flag_bits & 1:
            yield Entry(member, None, depth, container, "encrypted")
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile calls the bzip2 and LZMA decompressors without a max_length.
            yield Entry(member, None, depth, container, "unsupported compression")
            continue
        try:
            content = _read_zip_member(archive, info, budget)
        except _ZIP_ERRORS:
            yield Entry(member, None, depth, container, "corrupt zip member")
            continue
        entry = Entry(member, content, depth, container)
        yield entry
        yield from _nested(entry, budget)


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> bytes:
    out = bytearray()
    with archive.open(info) as member:
        while chunk := member.read(CHUNK):  # deflate: at most max(n, 4096) out per call
            budget.add_size(len(chunk))
            out += chunk
            budget.check_ratio(len(out), info.compress_size, info.filename)
    return bytes(out)


# ----------------------------------------------------------------------------- tar


def _tar(data: bytes, path: tuple[str, ...], budget: Budget, depth: int) -> Iterator[Entry]:
    """Files of a tar. Every header counts as a member; the octets of a plain file are
    a slice of `data` (already counted), a sparse file's are counted as they expand."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 (in memory)
    except _TAR_ERRORS:
        yield Entry(path, None, depth, problem="corrupt tar archive")
        return
    while True:
        try:
            info = archive.next()
            if info is None:
                return
            budget.add_member()
            if not info.isreg():
                continue
            if info.issparse():
                budget.add_size(info.size)
            elif info.offset_data + info.size > len(data):
                raise tarfile.TarError("member extends past the end")
            handle = archive.extractfile(info)
            content = handle.read(info.size) if handle is not None else b""
        except _TAR_ERRORS:
            yield Entry(path, None, depth, problem="corrupt tar archive")
            return
        entry = Entry((*path, info.name), content, depth)
        yield entry
        yield from _nested(entry, budget)


# -------------------------------------------------------------- gzip, bzip2, xz


def _compressed(
    data: bytes, label: str, path: tuple[str, ...], budget: Budget, depth: int
) -> Iterator[Entry]:
    """One compressed stream (several concatenated streams are one, as gunzip has
    it). Its content is the one member; a tar inside is read at the same depth."""
    try:
        content = _decompress(data, label, budget, path[-1])
    except _STREAM_ERRORS:
        yield Entry(path, None, depth, problem=f"corrupt {label} stream")
        return
    budget.add_member()
    name = _inner_name(path[-1])
    original = _gzip_original_name(data) if label == "gzip" else ""
    others = (original,) if original and original != name else ()
    if sniff(content) == "tar":
        yield from _tar(content, path, budget, depth)
        return
    entry = Entry((*path, name), content, depth, other_names=others)
    yield entry
    yield from _nested(entry, budget)


def _decompress(data: bytes, label: str, budget: Budget, name: str) -> bytes:
    """The content of the compressed stream(s) `data`, fed to the decompressor
    `CHUNK` octets at a time and drawn `CHUNK` octets at a time (so neither the
    output nor zlib's copy of the unconsumed input grows with a bomb)."""
    make: Callable[[], _Stream]
    if label == "gzip":
        make = _ZlibStream
    elif label == "bzip2":
        make = _Bz2Stream
    else:
        make = _XzStream
    out = bytearray()
    stream = make()
    offset = 0
    while True:
        piece = b""
        if stream.needs_input and offset < len(data):
            piece = data[offset : offset + CHUNK]
            offset += len(piece)
        chunk = stream.decompress(piece, CHUNK)
        budget.add_size(len(chunk))
        out += chunk
        budget.check_ratio(len(out), len(data), name)
        if stream.eof:
            offset -= len(stream.unused_data)  # a suffix of what was fed
            if data.count(b"\x00", offset) == len(data) - offset:
                break  # (tar-style zero padding after the last stream is allowed)
            budget.add_member()  # another concatenated stream
            stream = make()
        elif not chunk and not piece:
            raise EOFError("truncated stream")
    return bytes(out)


class _Stream:
    eof = False
    unused_data = b""
    needs_input = True

    def decompress(self, data: bytes, max_length: int) -> bytes:
        raise NotImplementedError


class _ZlibStream(_Stream):
    """zlib's decompressobj keeps unconsumed input in unconsumed_tail (we feed it back)."""

    def __init__(self) -> None:
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._tail = b""

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._tail + data if self._tail else data, max_length)
        self._tail = self._d.unconsumed_tail
        self.eof = self._d.eof
        self.unused_data = self._d.unused_data
        self.needs_input = not self._tail
        return out


class _Bz2Stream(_Stream):
    def __init__(self) -> None:
        self._d = bz2.BZ2Decompressor()

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(data, max_length)
        self.eof, self.unused_data, self.needs_input = (
            self._d.eof,
            self._d.unused_data,
            self._d.needs_input,
        )
        return out


class _XzStream(_Stream):
    def __init__(self) -> None:
        self._d = lzma.LZMADecompressor(lzma.FORMAT_XZ)

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(data, max_length)
        self.eof, self.unused_data, self.needs_input = (
            self._d.eof,
            self._d.unused_data,
            self._d.needs_input,
        )
        return out


def _inner_name(name: str) -> str:
    """ "logs.tar.gz" -> "logs.tar", "x.tgz" -> "x.tar", else the name itself."""
    lowered = name.lower()
    for suffix, replacement in _COMPRESSED_SUFFIXES.items():
        if lowered.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + replacement
    return name


def _gzip_original_name(data: bytes) -> str:
    """The FNAME of a gzip header (RFC 1952 2.3.1), "" if none."""
    if len(data) < 10 or not data[3] & 0x08:
        return ""
    position = 10
    if data[3] & 0x04:  # FEXTRA
        if len(data) < 12:
            return ""
        position += 2 + struct.unpack_from("<H", data, 10)[0]
    end = data.find(b"\x00", position, position + 1024)
    return data[position:end].decode("latin-1") if end > position else ""


# ----------------------------------------------------------------------------- TNEF

_TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"
_TNEF_MAX_ATTRIBUTES = 100_000
# Attribute IDs (the low 16 bits; [MS-OXTNEF] 2.1.3.3; the high 16 bits, the type,
# are not trusted).
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_TRANSPORT_FILENAME = 0x9001
_ATT_ATTACH_RENDDATA = 0x9002
_ATT_ATTACHMENT = 0x9005
# MAPI properties of an attachment ([MS-OXPROPS]): names first, most trusted first.
_PR_ATTACH_DATA = 0x3701
_PR_ATTACH_LONG_FILENAME = 0x3707
_NAME_PROPERTIES = (0x3707, 0x3704, 0x370D, 0x3708, 0x370C, 0x3001, 0x3703)
# PtypXxx value sizes ([MS-OXCDATA] 2.11.1) of the fixed-size property types.
_FIXED_SIZES = {0x0002: 2, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8}
_FIXED_SIZES |= {0x000A: 4, 0x000B: 2, 0x0014: 8, 0x0040: 8, 0x0048: 16}
_VARIABLE_TYPES = frozenset({0x000D, 0x001E, 0x001F, 0x0102})  # object, strings, binary


class _TnefError(ValueError):
    pass


@dataclass(slots=True)
class _TnefFile:
    names: list[str]
    data: list[bytes]
    problem: str = ""


def _tnef(data: bytes, path: tuple[str, ...], budget: Budget, depth: int) -> Iterator[Entry]:
    """The attachments of a TNEF stream ([MS-OXTNEF] 2.1.3): each starts with an
    attAttachRenddata attribute (level 2) and is named by attAttachTitle,
    attAttachTransportFilename and, in its attAttachment property list,
    PR_ATTACH_LONG_FILENAME and the other name properties; its content is
    attAttachData or PR_ATTACH_DATA_BIN / PR_ATTACH_DATA_OBJ (an embedded message is a
    TNEF stream itself, after the 16-octet interface ID, so it is opened as a nested
    archive). The long file name names the entry; every name is judged, and every
    distinct content (a reader may take either). The content is a slice of `data`
    (already counted). Checksums are not checked. A stream cut short, with a length
    past its end, or with properties we cannot size yields what was read, then a
    "corrupt tnef stream" problem. The message's own attributes (its compressed RTF
    body, PR_RTF_COMPRESSED, among them) are not read."""
    files: list[_TnefFile] = []
    problem = ""
    try:
        _tnef_parse(data, files)
    except _TnefError as exc:
        problem = str(exc)
    for number, found in enumerate(files, 1):
        budget.add_member()
        names = list(dict.fromkeys(name for name in found.names if name))
        name = names[0] if names else f"attachment {number}"
        contents = list(dict.fromkeys(found.data)) or [b""]
        for content in contents:
            entry = Entry(
                (*path, name), content, depth, other_names=tuple(names[1:]), problem=found.problem
            )
            yield entry
            yield from _nested(entry, budget)
    if problem:
        yield Entry(path, None, depth, problem=problem)


def _tnef_parse(data: bytes, files: list[_TnefFile]) -> None:
    if not data.startswith(_TNEF_SIGNATURE) or len(data) < 6:
        raise _TnefError("corrupt tnef stream")
    position = 6  # signature, legacy key
    current: _TnefFile | None = None
    for _ in range(_TNEF_MAX_ATTRIBUTES):
        if position >= len(data) or not any(data[position : position + 11]):
            return  # the end (zero padding after the last attribute is tolerated)
        if position + 9 > len(data):
            raise _TnefError("corrupt tnef stream")
        level = data[position]
        attribute, length = struct.unpack_from("<II", data, position + 1)
        start = position + 9
        end = start + length
        if level not in (1, 2) or end + 2 > len(data):
            raise _TnefError("corrupt tnef stream")
        value = data[start:end]
        position = end + 2  # and the checksum
        if level != 2:
            continue
        kind = attribute & 0xFFFF
        if current is None or kind == _ATT_ATTACH_RENDDATA:
            current = _TnefFile([], [])
            files.append(current)
        if kind == _ATT_ATTACH_DATA:
            current.data.append(value)
        elif kind in (_ATT_ATTACH_TITLE, _ATT_ATTACH_TRANSPORT_FILENAME):
            current.names.append(_tnef_string(value, unicode=False))
        elif kind == _ATT_ATTACHMENT:
            try:
                _tnef_properties(value, current)
            except (_TnefError, struct.error):
                current.problem = "corrupt tnef attachment properties"
    raise _TnefError("tnef stream with too many attributes")


def _tnef_properties(value: bytes, found: _TnefFile) -> None:
    """The names and content in an attachment's MAPI property list ([MS-OXTNEF]
    2.1.3.4); raises on what cannot be read (what was read before is kept)."""
    (count,) = struct.unpack_from("<I", value, 0)
    position = 4
    for _ in range(count):
        if position >= len(value):
            raise _TnefError("property list cut short")
        kind, tag = struct.unpack_from("<HH", value, position)
        position += 4
        if tag >= 0x8000:  # a named property: GUID, kind, then an ID or a name
            (name_kind,) = struct.unpack_from("<I", value, position + 16)
            position += 20
            if name_kind == 0:
                position += 4
            else:
                (size,) = struct.unpack_from("<I", value, position)
                position += 4 + _padded(size)
        multiple = kind & 0x1000
        base = kind & 0x0FFF
        values = 1
        if multiple or base in _VARIABLE_TYPES:
            (values,) = struct.unpack_from("<I", value, position)
            position += 4
        if base in _FIXED_SIZES:
            position += values * _padded(_FIXED_SIZES[base])
            continue
        if base not in _VARIABLE_TYPES:
            raise _TnefError(f"property type {kind:#06x}")
        for _ in range(values):
            (size,) = struct.unpack_from("<I", value, position)
            position += 4
            if position + size > len(value):
                raise _TnefError("property value cut short")
            item = value[position : position + size]
            position += _padded(size)
            if tag in _NAME_PROPERTIES and base in (0x001E, 0x001F):
                name = _tnef_string(item, unicode=base == 0x001F)
                if tag == _PR_ATTACH_LONG_FILENAME:
                    found.names.insert(0, name)  # the name Outlook shows and saves as
                else:
                    found.names.append(name)
            elif tag == _PR_ATTACH_DATA and base == 0x0102:
                found.data.append(item)
            elif tag == _PR_ATTACH_DATA and base == 0x000D and len(item) > 16:
                found.data.append(item[16:])  # after the interface ID


def _padded(size: int) -> int:
    return (size + 3) & ~3


def _tnef_string(value: bytes, *, unicode: bool) -> str:
    text = value.decode("utf-16-le", "replace") if unicode else value.decode("cp1252", "replace")
    return text.rstrip("\x00")


# ----------------------------------------------------------------------------- PDF

_PDF_MAX_OBJECT_STREAMS = 10_000  # streams examined per PDF (text_extract's bound)
_PDF_MAX_DICTIONARY = 64 * 1024  # octets of a stream's dictionary read
_PDF_MAX_LOOKUPS = 64  # embedded file streams looked up by object number per PDF
_PDF_NAME_WINDOW = 1024  # octets around an /EF where its file names are looked for
_PDF_MAX_NAMES = 8
_PDF_WHITE = rb"[\x00\t\n\x0c\r ]"
_PDF_MARKERS = re.compile(pdf_name_regex(["ObjStm", "EmbeddedFile", "First"]))
_PDF_EF = re.compile(pdf_name_regex(["EF"]))
_PDF_ENCRYPT = re.compile(pdf_name_regex(["Encrypt"]))
_PDF_KEYWORD = re.compile(
    rb"(?<![A-Za-z0-9])(?:(?P<stream>stream)(?:\r\n|\n|\r)|(?:endobj|obj)(?![A-Za-z0-9]))"
)
_PDF_HEADER_END = re.compile(
    rb"([0-9]{1,10})" + _PDF_WHITE + rb"+[0-9]{1,5}" + _PDF_WHITE + rb"*\Z"
)
_PDF_REF = re.compile(rb"([0-9]{1,10})" + _PDF_WHITE + rb"+([0-9]{1,5})" + _PDF_WHITE + rb"+R")
_PDF_EF_DICT = re.compile(rb"[\x00\t\n\x0c\r ]*<<(.{0,1024}?)>>", re.DOTALL)
_PDF_STRING = (
    rb"(?P<lit>\((?:[^()\\]|\\.|\((?:[^()\\]|\\.){0,1024}\)){0,1024}\))"
    rb"|(?P<hex><[0-9A-Fa-f\x00\t\n\x0c\r ]{0,4096}>)"
)
_PDF_FILE_NAME = re.compile(
    pdf_name_regex(["UF", "F", "DOS", "Mac", "Unix"]) + _PDF_WHITE + b"*(?:" + _PDF_STRING + b")",
    re.DOTALL,
)
_PDF_ESCAPE = re.compile(rb"#([0-9A-Fa-f]{2})")
_PDF_LITERAL_ESCAPE = re.compile(rb"\\([0-7]{1,3}|\r\n|.)", re.DOTALL)
_PDF_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_PDF_FILTER_NAMES = re.compile(rb"/([A-Za-z0-9]+)")
_PDF_LENGTH = re.compile(
    rb"/Length"
    + _PDF_WHITE
    + rb"*([0-9]{1,12})(?!"
    + _PDF_WHITE
    + rb"+[0-9]+"
    + _PDF_WHITE
    + rb"+R)"
)
_PDF_PREDICTOR = re.compile(rb"/Predictor" + _PDF_WHITE + rb"*([0-9]+)")


@dataclass(frozen=True, slots=True)
class PdfInside:
    """What `pdf_inside` found: `labels` of active content in the object streams
    (`sniff.pdf_labels`), and `files`: the embedded files (data decoded) and problems."""

    labels: frozenset[str]
    files: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class _PdfStream:
    number: int | None  # the object number, if its "n g obj" header was found
    dictionary: bytes  # "#hh" escapes decoded
    start: int  # of the stream data


def pdf_inside(data: bytes, path: tuple[str, ...], budget: Budget, *, depth: int = 1) -> PdfInside:
    """A look inside the PDF `data` (ISO 32000-1), called `path[-1]`, bounded by `budget`.

    Streams are found from their dictionaries: a /Type /ObjStm (or /First) or /Type
    /EmbeddedFile name (also "#hh"-escaped) followed by the `stream` keyword before
    any `obj`/`endobj`; at most `_PDF_MAX_OBJECT_STREAMS` of them (more refuse the
    message, rule "members"). Their data is decoded through FlateDecode (inflated
    `CHUNK` octets at a time from the stream start until the deflate stream ends, so a
    false /Length or an "endstream" inside the data cuts nothing short; every octet
    counted in `budget`, with its ratio bound), ASCIIHexDecode and ASCII85Decode.

    - Object streams (7.5.7) are read by `sniff.pdf_labels`. One we cannot decode
      (another filter, a predictor, corrupt data) makes a problem entry for the PDF;
      in an encrypted PDF (/Encrypt) they are skipped: only its unencrypted object
      layer is judged.
    - Embedded files (7.11.4): every /EF dictionary of a file specification, in the
      file or in an object stream, makes one entry, named by the file specification's
      /UF, /F (or /DOS, /Mac, /Unix) strings within `_PDF_NAME_WINDOW` octets of it
      (the nearest first; all are judged), with the content of the stream it refers to
      (found among the /EmbeddedFile streams, or by its "n g obj" header). Streams of
      type /EmbeddedFile no file specification names are entries too ("embedded file
      n"). A file specification whose stream is not found is judged by name (empty
      content); a stream we cannot decode is a problem entry ("encrypted" in an
      encrypted PDF). Each counts as a member; `depth` is theirs. Streams are looked
      up by number in one pass, for at most `_PDF_MAX_LOOKUPS` objects over at most
      `_PDF_MAX_OBJECT_STREAMS` headers; past that the PDF is a problem entry.

    Not seen: an /EF given as an indirect reference (names only), and streams in
    incremental updates that are only reachable by cross-reference offsets."""
    labels: set[str] = set()
    files: list[Entry] = []
    name = path[-1]
    encrypted = _PDF_ENCRYPT.search(data) is not None
    streams = _pdf_marked_streams(data)
    if len(streams) > _PDF_MAX_OBJECT_STREAMS:
        raise ArchiveLimitExceeded(
            "members", f"{name!r}: over {_PDF_MAX_OBJECT_STREAMS} object streams and files"
        )
    layers = [data]
    embedded: dict[int, _PdfStream] = {}
    unnumbered: list[_PdfStream] = []
    undecodable = False
    for stream in streams:
        if _pdf_has_name(stream.dictionary, b"EmbeddedFile"):
            if stream.number is None:
                unnumbered.append(stream)
            else:
                embedded[stream.number] = stream
            continue
        if (
            not (
                _pdf_has_name(stream.dictionary, b"ObjStm")
                or (
                    _pdf_has_name(stream.dictionary, b"First")
                    and _pdf_has_name(stream.dictionary, b"N")
                )
            )
            or encrypted
        ):
            continue
        content = _pdf_decode(data, stream, budget, name, unfiltered=False)
        if content is None:
            undecodable = True
        elif content:
            labels |= pdf_labels(content)
            layers.append(content)
    if undecodable:
        files.append(Entry(path, None, depth, problem="undecodable pdf object stream"))
    specs: list[tuple[list[str], list[int]]] = []
    for layer in layers:
        for match in _PDF_EF.finditer(layer):
            budget.add_member()
            refs = _pdf_ef_refs(layer, match.end())
            specs.append((_pdf_file_names(layer, match.start()), refs))
    wanted = {number for _names, refs in specs for number in refs if number not in embedded}
    found, complete = _pdf_lookup(data, wanted)
    if not complete:
        files.append(Entry(path, None, depth, problem="pdf with too many objects"))
    linked: set[int] = set()
    for names, refs in specs:
        target: _PdfStream | None = None
        for number in refs:
            target = embedded.get(number) or found.get(number)
            if target is not None:
                linked.add(number)
                break
        label = names[0] if names else f"embedded file {refs[0] if refs else '?'}"
        files.append(
            _pdf_file(data, target, (*path, label), tuple(names[1:]), budget, depth, encrypted)
        )
    for number, unlinked in embedded.items():
        if number not in linked:
            budget.add_member()
            member = (*path, f"embedded file {number}")
            files.append(_pdf_file(data, unlinked, member, (), budget, depth, encrypted))
    for unlinked in unnumbered:
        budget.add_member()
        member = (*path, "embedded file")
        files.append(_pdf_file(data, unlinked, member, (), budget, depth, encrypted))
    if depth > budget.limits.max_depth and any(entry.path != path for entry in files):
        raise ArchiveLimitExceeded("depth", f"{'/'.join(path)!r} at depth {depth}")
    return PdfInside(frozenset(labels), tuple(files))


def _pdf_file(
    data: bytes,
    stream: _PdfStream | None,
    member: tuple[str, ...],
    others: tuple[str, ...],
    budget: Budget,
    depth: int,
    encrypted: bool,
) -> Entry:
    if stream is None:
        return Entry(member, b"", depth, other_names=others)
    if encrypted:
        return Entry(member, None, depth, problem="encrypted", other_names=others)
    content = _pdf_decode(data, stream, budget, member[-1], unfiltered=True)
    if content is None:
        return Entry(member, None, depth, problem="undecodable pdf stream", other_names=others)
    return Entry(member, content, depth, other_names=others)


def _pdf_marked_streams(data: bytes) -> list[_PdfStream]:
    """Streams whose dictionary holds one of `_PDF_MARKERS` (in order, each once).
    Each marker costs a search to the next keyword, and a marker before the keyword
    found last is skipped, so the scan is linear."""
    found: list[_PdfStream] = []
    resume = 0
    for marker in _PDF_MARKERS.finditer(data):
        if marker.start() < resume:
            continue
        keyword = _PDF_KEYWORD.search(data, marker.end())
        if keyword is None:
            break
        floor, resume = resume, keyword.end()
        if keyword["stream"] is None:
            continue  # the marker is in an object with no stream (an outline's /First)
        found.append(_pdf_stream_at(data, marker.start(), keyword.start(), keyword.end(), floor))
        if len(found) > _PDF_MAX_OBJECT_STREAMS:
            break
    return found


def _pdf_stream_at(
    data: bytes, inside: int, keyword: int, start: int, floor: int = 0
) -> _PdfStream:
    """The stream whose dictionary contains offset `inside`: dictionary from its
    object's "obj" (at most `_PDF_MAX_DICTIONARY` octets back, and not before
    `floor`, where the previous one ended) to the keyword."""
    lowest = max(0, floor, inside - _PDF_MAX_DICTIONARY)
    header = data.rfind(b"obj", lowest, inside)
    number = None
    if header >= 0:
        head = _PDF_HEADER_END.search(data, max(0, header - 32), header)
        if head is not None and not data.startswith(b"end", header - 3):
            number = int(head[1])
    begin = header + 3 if header >= 0 else lowest
    dictionary = data[begin : min(keyword, begin + 2 * _PDF_MAX_DICTIONARY)]
    return _PdfStream(number, _pdf_unescape_names(dictionary), start)


_HEX_OCTETS = {f"{i:02x}".encode(): bytes([i]) for i in range(256)}
_HEX_OCTETS |= {key.upper(): value for key, value in _HEX_OCTETS.items()}
_HEX_OCTETS |= {key[:1].upper() + key[1:]: value for key, value in _HEX_OCTETS.items()}
_HEX_OCTETS |= {key[:1] + key[1:].upper(): value for key, value in _HEX_OCTETS.items()}


def _pdf_unescape_names(text: bytes) -> bytes:
    """ "#hh" escapes decoded (ISO 32000-1 7.3.5), with a table, not a callback."""
    if b"#" not in text:
        return text
    parts = _PDF_ESCAPE.split(text)
    parts[1::2] = [_HEX_OCTETS[digits] for digits in parts[1::2]]
    return b"".join(parts)


def _pdf_lookup(data: bytes, wanted: set[int]) -> tuple[dict[int, _PdfStream], bool]:
    """The streams of the objects `wanted` (at most `_PDF_MAX_LOOKUPS` of them, each
    by its last "n g obj" header: a later update replaces an object) in one pass, and
    whether the pass was complete (at most `_PDF_MAX_OBJECT_STREAMS` headers)."""
    numbers = sorted(wanted)[:_PDF_MAX_LOOKUPS]
    if not numbers:
        return {}, True
    alternatives = b"|".join(b"%d" % number for number in numbers)
    # No lookbehind for a digit before the number: it would cost a step at every
    # offset; starting with a digit, the search skips to digits at C speed.
    header = re.compile(
        b"("
        + alternatives
        + b")"
        + _PDF_WHITE
        + rb"+[0-9]{1,5}"
        + _PDF_WHITE
        + rb"+obj(?![A-Za-z0-9])"
    )
    last: dict[int, int] = {}
    position = 0
    for _ in range(_PDF_MAX_OBJECT_STREAMS):
        match = header.search(data, position)
        if match is None:
            break
        position = match.start() + 1
        if match.start() == 0 or not data[match.start() - 1 : match.start()].isdigit():
            last[int(match[1])] = match.end()
            position = match.end()
    else:
        return {}, False
    found = {}
    for number, end in last.items():
        keyword = _PDF_KEYWORD.search(data, end)
        if keyword is not None and keyword["stream"] is not None:
            stream = _pdf_stream_at(data, end, keyword.start(), keyword.end())
            found[number] = _PdfStream(number, stream.dictionary, stream.start)
    return found, len(wanted) <= _PDF_MAX_LOOKUPS


def _pdf_has_name(dictionary: bytes, name: bytes) -> bool:
    return re.search(b"/" + name + rb"(?![A-Za-z0-9#._-])", dictionary) is not None


def _pdf_ef_refs(layer: bytes, position: int) -> list[int]:
    """The objects referred to in the /EF dictionary that starts at `position`."""
    match = _PDF_EF_DICT.match(layer, position)
    if match is None:
        return []
    return list(dict.fromkeys(int(ref[1]) for ref in _PDF_REF.finditer(match[1])))


def _pdf_file_names(layer: bytes, position: int) -> list[str]:
    """File name strings near the /EF at `position`, the nearest first."""
    low = max(0, position - _PDF_NAME_WINDOW)
    found = []
    for match in _PDF_FILE_NAME.finditer(layer, low, position + _PDF_NAME_WINDOW):
        found.append((abs(match.start() - position), _pdf_string(match)))
    found.sort(key=lambda item: item[0])
    names = [text for _distance, text in found if text]
    return list(dict.fromkeys(names))[:_PDF_MAX_NAMES]


def _pdf_string(match: re.Match[bytes]) -> str:
    if match["lit"] is not None:
        raw = _PDF_LITERAL_ESCAPE.sub(_pdf_unescape, match["lit"][1:-1])
    else:
        digits = re.sub(rb"[^0-9A-Fa-f]", b"", match["hex"])
        raw = binascii.unhexlify(digits + b"0" * (len(digits) % 2))
    if raw.startswith(b"\xfe\xff"):
        return raw[2:].decode("utf-16-be", "replace")
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", "replace")
    return raw.decode("latin-1")


def _pdf_unescape(match: re.Match[bytes]) -> bytes:
    escaped = match[1]
    if escaped[:1].isdigit():
        return bytes([int(escaped, 8) & 0xFF])
    if escaped in (b"\r\n", b"\n", b"\r"):
        return b""
    return _PDF_ESCAPES.get(escaped, escaped)


def _pdf_decode(
    data: bytes, stream: _PdfStream, budget: Budget, name: str, *, unfiltered: bool
) -> bytes | None:
    """The decoded data of `stream`, None if it cannot be decoded; an unfiltered
    stream is b"" unless `unfiltered` (its octets are in the file as they are)."""
    filters = _pdf_filters(stream.dictionary)
    if filters is None:
        return None
    if not filters:
        return _pdf_raw(data, stream) if unfiltered else b""
    content = b""
    try:
        for index, filter_name in enumerate(filters):
            source, offset = (data, stream.start) if index == 0 else (content, 0)
            if filter_name in (b"FlateDecode", b"Fl"):
                content = _pdf_inflate(source, offset, budget, name)
            elif filter_name in (b"ASCIIHexDecode", b"AHx"):
                end = source.find(b">", offset)
                digits = re.sub(rb"[^0-9A-Fa-f]", b"", source[offset : end if end >= 0 else None])
                content = binascii.unhexlify(digits + b"0" * (len(digits) % 2))
            else:  # ASCII85Decode
                end = source.find(b"~>", offset)
                body = source[offset : end if end >= 0 else None].strip().removeprefix(b"<~")
                content = base64.a85decode(body, ignorechars=b" \t\r\n\x0c\x00")
    except (zlib.error, binascii.Error, ValueError):
        return None
    return content


def _pdf_filters(dictionary: bytes) -> list[bytes] | None:
    """The /Filter names in order; None if one is not ours or a predictor is used."""
    position = dictionary.find(b"/Filter")
    if position < 0:
        return []
    rest = dictionary[position + 7 :].lstrip(b"\x00\t\n\x0c\r ")
    if rest.startswith(b"["):
        names = _PDF_FILTER_NAMES.findall(rest[: rest.find(b"]") + 1])
    else:
        names = _PDF_FILTER_NAMES.findall(rest[:64])[:1]
    known = {b"FlateDecode", b"Fl", b"ASCIIHexDecode", b"AHx", b"ASCII85Decode", b"A85"}
    if not names or any(filter_name not in known for filter_name in names):
        return None
    predictor = _PDF_PREDICTOR.search(dictionary)
    if predictor is not None and int(predictor[1]) > 1:
        return None
    return names


def _pdf_raw(data: bytes, stream: _PdfStream) -> bytes:
    """An unfiltered stream's octets: /Length if direct and inside the file, else up
    to "endstream" (a slice of the message, already counted)."""
    length = _PDF_LENGTH.search(stream.dictionary)
    if length is not None and stream.start + int(length[1]) <= len(data):
        return data[stream.start : stream.start + int(length[1])]
    end = data.find(b"endstream", stream.start)
    return data[stream.start : end if end >= 0 else len(data)]


def _pdf_inflate(source: bytes, offset: int, budget: Budget, name: str) -> bytes:
    """The zlib stream starting at `offset`, `CHUNK` octets in and out at a time,
    every octet counted (the end is where the deflate stream says)."""
    inflater = zlib.decompressobj()
    out = bytearray()
    fed = offset
    tail = b""
    while not inflater.eof:
        if tail:
            piece = tail
        elif fed < len(source):
            piece = source[fed : fed + CHUNK]
            fed += len(piece)
        else:
            break  # cut short: what was inflated is what a reader shows
        chunk = inflater.decompress(piece, CHUNK)
        tail = inflater.unconsumed_tail
        budget.add_size(len(chunk))
        out += chunk
        budget.check_ratio(len(out), fed - offset, name)
    return bytes(out)
