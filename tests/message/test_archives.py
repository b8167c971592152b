"""Archive inspection (message/archives.py): members through nesting, every bound
refusing with its rule (zip bombs made here, refused without inflating them), and
what cannot be inspected (encrypted, other compression methods, other formats,
corrupt) reported rather than raised."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import struct
import tarfile
import zipfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.message.archives import (
    ArchiveLimitExceeded,
    ArchiveLimits,
    Budget,
    Entry,
    archive_format,
    walk,
)

MiB = 1024 * 1024


def make_zip(files: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def zip_bomb(size: int, name: str = "bomb.txt") -> bytes:
    """A ZIP with one member of `size` zero octets, written 1 MiB at a time (the
    deflated member is about size/1000 octets)."""
    out = io.BytesIO()
    archive = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED)
    with archive, archive.open(name, "w", force_zip64=True) as member:
        chunk = bytes(MiB)
        for _ in range(size // MiB):
            member.write(chunk)
    return out.getvalue()


def gzip_bomb(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(MiB)
    return b"".join(compressor.compress(chunk) for _ in range(size // MiB)) + compressor.flush()


def set_encrypted(data: bytes) -> bytes:
    """Set general-purpose flag bit 0 in every local and central header (zipfile
    cannot write encrypted archives)."""
    out = bytearray(data)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = out.find(signature)
        while position >= 0:
            (flags,) = struct.unpack_from("<H", out, position + flag_offset)
            struct.pack_into("<H", out, position + flag_offset, flags | 1)
            position = out.find(signature, position + 4)
    return bytes(out)


def members(data: bytes, name: str = "a.zip", limits: ArchiveLimits | None = None) -> list[Entry]:
    return list(walk(data, (name,), Budget(limits)))


def paths(entries: list[Entry]) -> list[tuple[str, ...]]:
    return [entry.path for entry in entries]


def test_members_of_nested_zips_depth_first() -> None:
    inner = make_zip({"setup.exe": b"MZ\x00\x00", "doc/readme.txt": b"hello"})
    outer = make_zip({"inner.zip": inner, "notes.txt": b"notes"})
    entries = members(outer)
    assert paths(entries) == [
        ("a.zip", "inner.zip"),
        ("a.zip", "inner.zip", "setup.exe"),
        ("a.zip", "inner.zip", "doc/readme.txt"),
        ("a.zip", "notes.txt"),
    ]
    assert [entry.depth for entry in entries] == [1, 2, 2, 1]
    assert entries[1].data == b"MZ\x00\x00"
    assert all(entry.problem == "" for entry in entries)


def nested(levels: int) -> bytes:
    data = make_zip({"deepest.txt": b"bottom"})
    for level in range(levels - 1):
        data = make_zip({f"level{level}.zip": data})
    return data


@pytest.mark.parametrize(("levels", "allowed"), [(1, True), (3, True), (4, False), (9, False)])
def test_nesting_depth(levels: int, allowed: bool) -> None:
    data = nested(levels)
    if allowed:
        assert members(data)[-1].name == "deepest.txt"
    else:
        with pytest.raises(ArchiveLimitExceeded) as e:
            members(data)
        assert e.value.rule == "depth"


def test_members_bound_before_reading() -> None:
    data = make_zip({f"f{i}.txt": b"x" for i in range(11)})
    with pytest.raises(ArchiveLimitExceeded) as e:
        members(data, limits=ArchiveLimits(max_members=10))
    assert e.value.rule == "members"
    assert len(members(data, limits=ArchiveLimits(max_members=11))) == 11


def test_members_bound_from_the_end_record_before_parsing() -> None:
    """A directory declaring 65,000 entries is refused from the end record alone."""
    data = bytearray(make_zip({"a.txt": b"x"}))
    end = data.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 65000, 65000)
    with pytest.raises(ArchiveLimitExceeded) as e:
        members(bytes(data))
    assert e.value.rule == "members"


def test_an_end_record_by_chance_is_not_a_zip() -> None:
    """Other data that happens to hold the end-record signature (with a large count)
    is neither refused nor opened; a real ZIP behind other data still is."""
    chance = b"\xff\xd8\xff\xe0 picture data " * 100 + b"PK\x05\x06" + bytes(4)
    chance += struct.pack("<HHII", 60000, 60000, 1234, 999) + bytes(2) + b" more picture" * 9
    assert archive_format(chance) == "zip"  # by its end only
    assert members(chance, "photo.jpg") == []
    real = bytearray(b"prefix " * 10 + make_zip({"a.txt": b"x"}))
    end = real.rfind(b"PK\x05\x06")
    struct.pack_into("<HH", real, end + 8, 65000, 65000)
    with pytest.raises(ArchiveLimitExceeded):
        members(bytes(real), "photo.jpg")


def test_members_bound_counts_every_archive_of_the_budget() -> None:
    budget = Budget(ArchiveLimits(max_members=5))
    data = make_zip({f"f{i}.txt": b"x" for i in range(3)})
    assert len(list(walk(data, ("one.zip",), budget))) == 3
    with pytest.raises(ArchiveLimitExceeded):
        list(walk(data, ("two.zip",), budget))


def test_zip_bomb_is_refused_from_its_headers() -> None:
    """200 MiB of zeros in a 200 KiB ZIP: the declared size is over the bound, so
    nothing is inflated at all."""
    bomb = zip_bomb(200 * MiB)
    assert len(bomb) < 1 * MiB
    budget = Budget()
    with pytest.raises(ArchiveLimitExceeded) as e:
        list(walk(bomb, ("bomb.zip",), budget))
    assert e.value.rule == "size"
    assert budget.size == 0  # not one octet was decompressed


def test_zip_ratio_bound_from_headers() -> None:
    bomb = zip_bomb(20 * MiB)  # under the size bound, ratio about 1000:1
    with pytest.raises(ArchiveLimitExceeded) as e:
        members(bomb)
    assert e.value.rule == "ratio"
    assert len(members(bomb, limits=ArchiveLimits(max_ratio=10_000))[0].data or b"") == 20 * MiB


def test_ratio_bound_spares_small_members() -> None:
    data = make_zip({"zeros.bin": bytes(512 * 1024)})  # 1000:1 but under 1 MiB
    assert len(members(data)) == 1


def test_size_bound_counts_octets_as_they_are_inflated() -> None:
    """Each nested archive is small and declares little; the octets actually produced
    across them are what reaches the bound."""
    inner = zip_bomb(8 * MiB)
    outer = make_zip({f"part{i}.zip": inner for i in range(5)})
    limits = ArchiveLimits(max_total_size=30 * MiB, max_ratio=10_000)
    budget = Budget(limits)
    with pytest.raises(ArchiveLimitExceeded) as e:
        list(walk(outer, ("outer.zip",), budget))
    assert e.value.rule == "size"
    assert budget.size <= 30 * MiB


def test_gzip_bomb_stops_while_inflating() -> None:
    """gzip declares no trustworthy size: the stream is inflated 64 KiB at a time and
    stops at the ratio bound (or, with no ratio bound, the size bound)."""
    bomb = gzip_bomb(200 * MiB)
    budget = Budget()
    with pytest.raises(ArchiveLimitExceeded) as e:
        list(walk(bomb, ("bomb.gz",), budget))
    assert e.value.rule == "ratio"
    assert budget.size < 30 * MiB
    budget = Budget(ArchiveLimits(max_ratio=10**9))
    with pytest.raises(ArchiveLimitExceeded) as e:
        list(walk(bomb, ("bomb.gz",), budget))
    assert e.value.rule == "size"
    assert budget.size <= 100 * MiB


@pytest.mark.parametrize(
    ("compress", "name", "inner"),
    [
        (gzip.compress, "logs.txt.gz", "logs.txt"),
        (bz2.compress, "logs.txt.bz2", "logs.txt"),
        (lzma.compress, "logs.txt.xz", "logs.txt"),
    ],
)
def test_compressed_streams(compress: object, name: str, inner: str) -> None:
    assert callable(compress)
    entries = members(compress(b"log line\n" * 100), name)
    assert paths(entries) == [(name, inner)]
    assert entries[0].data == b"log line\n" * 100


def test_concatenated_gzip_streams_are_one_file() -> None:
    data = gzip.compress(b"one ") + gzip.compress(b"two")
    assert members(data, "x.gz")[0].data == b"one two"


def test_gzip_original_name_is_another_name() -> None:
    out = io.BytesIO()
    with gzip.GzipFile(filename="payload.exe", mode="wb", fileobj=out, mtime=0) as f:
        f.write(b"MZ")
    (entry,) = members(out.getvalue(), "report.pdf.gz")
    assert entry.name == "report.pdf"
    assert entry.other_names == ("payload.exe",)


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_and_compressed_tar_are_one_level(mode: str) -> None:
    inner = make_zip({"run.js": b"alert(1)"})
    data = tar_bytes({"src/run.sh": b"#!/bin/sh\n", "bundle.zip": inner}, mode)
    entries = members(data, "src.tar")
    assert paths(entries) == [
        ("src.tar", "src/run.sh"),
        ("src.tar", "bundle.zip"),
        ("src.tar", "bundle.zip", "run.js"),
    ]
    assert [entry.depth for entry in entries] == [1, 1, 2]


def test_encrypted_members_are_reported() -> None:
    data = set_encrypted(make_zip({"secret.docx": b"x" * 100, "payload.exe": b"MZ"}))
    entries = members(data)
    assert [(entry.name, entry.problem, entry.data) for entry in entries] == [
        ("secret.docx", "encrypted", None),
        ("payload.exe", "encrypted", None),
    ]


def test_other_compression_methods_are_not_read() -> None:
    """zipfile inflates bzip2 and LZMA members without a max_length: never used."""
    data = make_zip({"a.txt": b"x" * 1000}, zipfile.ZIP_BZIP2)
    assert [(entry.name, entry.problem) for entry in members(data)] == [
        ("a.txt", "unsupported compression")
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"Rar!\x1a\x07\x01\x00" + bytes(100), "rar archive"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(100), "7z archive"),
        (b"MSCF\x00\x00\x00\x00" + bytes(100), "cab archive"),
        (b"PK\x03\x04" + bytes(100), "corrupt zip archive"),
        (b"\x1f\x8b\x08\x00" + bytes(10) + b"garbage", "corrupt gzip stream"),
        (gzip.compress(random.Random(1).randbytes(5000))[:-30], "corrupt gzip stream"),
    ],
)
def test_what_cannot_be_opened_is_a_problem_entry(data: bytes, problem: str) -> None:
    (entry,) = members(data, "x")
    assert entry.path == ("x",) and entry.data is None and entry.problem == problem


def test_damaged_member_is_a_problem_entry() -> None:
    data = bytearray(make_zip({"a.txt": b"hello world " * 100}))
    start = data.find(b"a.txt") + 5
    data[start + 10 : start + 20] = bytes(10)  # inside the deflated data
    entries = members(bytes(data))
    assert [(entry.name, entry.problem) for entry in entries] == [("a.txt", "corrupt zip member")]


def test_zip_after_other_data_is_found() -> None:
    """Readers find a ZIP by its end record; so do we (a ZIP appended to a picture)."""
    data = b"\xff\xd8\xff\xe0 not really a jpeg " * 10 + make_zip({"a.exe": b"MZ"})
    assert archive_format(data) == "zip"
    assert paths(members(data, "photo.jpg")) == [("photo.jpg", "a.exe")]


def test_archive_format() -> None:
    assert archive_format(make_zip({"a": b"b"})) == "zip"
    assert archive_format(gzip.compress(b"x")) == "gzip"
    assert archive_format(b"plain text") is None
    assert archive_format(b"%PDF-1.4 ...") is None


def test_container_kind_is_on_each_member() -> None:
    data = make_zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w/>"})
    assert {entry.container for entry in members(data, "a.docx")} == {"ooxml"}


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=2000))
def test_mutated_archives_never_raise_anything_else(noise: bytes, where: int) -> None:
    """Parse or report a problem (or a limit), nothing else, on damaged archives."""
    for base in (
        make_zip({"a.txt": b"hello " * 50, "b/c.exe": b"MZ"}),
        gzip.compress(b"data " * 100),
        tar_bytes({"x.txt": b"abc"}),
    ):
        position = where % len(base)
        data = base[:position] + noise + base[position + len(noise) :]
        try:
            entries = members(data, "fuzz")
        except ArchiveLimitExceeded:
            continue
        assert all(isinstance(entry, Entry) for entry in entries)
