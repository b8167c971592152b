"""Archives inside mail, opened with the standard library and bounded (NIST SP 800-45
5.x: scan the contents of compressed files; refuse what cannot be bounded).

`walk(data, path, budget)` yields every member of an archive, depth first, and the
members of the archives inside it: ZIP (APPNOTE.TXT; also the Office Open XML,
OpenDocument, JAR and APK files built on it), tar (POSIX ustar / GNU), and gzip
(RFC 1952), bzip2 and xz streams. Formats it cannot open (RAR, 7z, CAB, ...), members
it cannot read (encrypted: general-purpose flag bit 0; compression methods other than
stored and deflate) and archives that are corrupt are yielded as `Entry`s with a
`problem` and no data, so the caller applies its policy for uninspectable content.

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

Never raises anything but `ArchiveLimitExceeded`.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailward.message.sniff import ARCHIVE_FORMATS, sniff, zip_container_kind

__all__ = [
    "ArchiveLimitExceeded",
    "ArchiveLimits",
    "Budget",
    "Entry",
    "archive_format",
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
    names the member goes by (the original name a gzip header records)."""

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
