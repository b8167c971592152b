"""Archive inspection (message/archives.py): members through nesting, every bound
refusing with its rule (zip bombs made here, refused without inflating them), and
what cannot be inspected (encrypted, other compression methods, other formats,
corrupt) reported rather than raised. TNEF (winmail.dat) streams and PDFs (object
streams, embedded files) are built here octet by octet."""

from __future__ import annotations

import binascii
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
    pdf_inside,
    walk,
)
from tests.message.file_samples import TNEF_SIGNATURE, pdf_file, pdf_stream, tnef_attribute

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


# ----------------------------------------------------------------------------- TNEF

ATT_RENDDATA = 0x00069002
ATT_TITLE = 0x00018010
ATT_DATA = 0x0006800F
ATT_ATTACHMENT = 0x00069005
ATT_MESSAGE_CLASS = 0x00078008
PT_STRING8, PT_UNICODE, PT_BINARY, PT_OBJECT, PT_LONG = 0x001E, 0x001F, 0x0102, 0x000D, 0x0003


def pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def mapi_property(kind: int, tag: int, value: bytes | int) -> bytes:
    """One property of a MAPI property list ([MS-OXTNEF] 2.1.3.4)."""
    head = struct.pack("<HH", kind, tag)
    if isinstance(value, int):
        return head + struct.pack("<I", value)
    return head + struct.pack("<II", 1, len(value)) + pad4(value)


def mapi_properties(*properties: bytes) -> bytes:
    return struct.pack("<I", len(properties)) + b"".join(properties)


def tnef(*files: tuple[str | None, bytes], long_name: str | None = None) -> bytes:
    """A TNEF stream with a message class and one attachment per (title, data); the
    last one's attAttachment carries PR_ATTACH_LONG_FILENAME `long_name` (Unicode)."""
    out = [TNEF_SIGNATURE, struct.pack("<H", 0x1234)]
    out.append(tnef_attribute(1, ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\x00"))
    for index, (title, data) in enumerate(files):
        out.append(tnef_attribute(2, ATT_RENDDATA, bytes(14)))
        if title is not None:
            out.append(tnef_attribute(2, ATT_TITLE, title.encode("cp1252") + b"\x00"))
        out.append(tnef_attribute(2, ATT_DATA, data))
        if long_name is not None and index == len(files) - 1:
            props = mapi_properties(
                mapi_property(PT_LONG, 0x3705, 1),  # PR_ATTACH_METHOD: by value
                mapi_property(PT_UNICODE, 0x3707, (long_name + "\x00").encode("utf-16-le")),
            )
            out.append(tnef_attribute(2, ATT_ATTACHMENT, props))
    return b"".join(out)


def test_tnef_is_an_archive() -> None:
    assert archive_format(tnef(("notes.txt", b"hello"))) == "tnef"


def test_tnef_attachments_are_members() -> None:
    data = tnef(("notes.txt", b"hello"), ("INVOIC~1.EXE", b"MZ\x00\x00"), long_name="invoice.exe")
    entries = members(data, "winmail.dat")
    assert [(entry.path, entry.data, entry.other_names) for entry in entries] == [
        (("winmail.dat", "notes.txt"), b"hello", ()),
        (("winmail.dat", "invoice.exe"), b"MZ\x00\x00", ("INVOIC~1.EXE",)),  # long name first
    ]
    assert all(entry.problem == "" and entry.depth == 1 for entry in entries)


def test_tnef_names_and_data_from_the_property_list() -> None:
    """No attAttachTitle or attAttachData: PR_ATTACH_FILENAME (8-bit) and
    PR_ATTACH_DATA_BIN; a named property and multi-valued ones are skipped over."""
    named = struct.pack("<HH", PT_LONG, 0x8005) + bytes(16) + struct.pack("<II", 0, 0x8233)
    named += struct.pack("<I", 7)
    multi = struct.pack("<HHI", 0x1003, 0x6800, 3) + struct.pack("<III", 1, 2, 3)
    multi_strings = struct.pack("<HHI", 0x101E, 0x6801, 2)
    multi_strings += struct.pack("<I", 3) + pad4(b"ab\x00") + struct.pack("<I", 1) + pad4(b"\x00")
    props = mapi_properties(
        named,
        multi,
        multi_strings,
        mapi_property(PT_STRING8, 0x3704, b"RUN.BAT\x00"),
        mapi_property(0x0040, 0x3007, b"")[:4] + bytes(8),  # PtypTime, 8 octets
        mapi_property(PT_BINARY, 0x3701, b"@echo off\r\n"),
    )
    data = TNEF_SIGNATURE + b"\x00\x00" + tnef_attribute(2, ATT_RENDDATA, bytes(14))
    data += tnef_attribute(2, ATT_ATTACHMENT, props)
    (entry,) = members(data, "winmail.dat")
    assert entry.path == ("winmail.dat", "RUN.BAT")
    assert entry.data == b"@echo off\r\n"


def test_tnef_embedded_message_is_a_nested_tnef() -> None:
    inner = tnef(("tool.exe", b"MZ"))
    props = mapi_properties(
        mapi_property(PT_LONG, 0x3705, 5),  # ATTACH_EMBEDDED_MSG
        mapi_property(PT_STRING8, 0x3001, b"Fwd: tools\x00"),
        mapi_property(PT_OBJECT, 0x3701, bytes(16) + inner),  # IID_IMessage, then TNEF
    )
    data = TNEF_SIGNATURE + b"\x00\x00" + tnef_attribute(2, ATT_RENDDATA, bytes(14))
    data += tnef_attribute(2, ATT_ATTACHMENT, props)
    entries = members(data, "winmail.dat")
    assert paths(entries) == [
        ("winmail.dat", "Fwd: tools"),
        ("winmail.dat", "Fwd: tools", "tool.exe"),
    ]
    assert [entry.depth for entry in entries] == [1, 2]


def test_tnef_members_count_in_the_budget() -> None:
    data = tnef(*((f"f{i}.txt", b"x") for i in range(5)))
    with pytest.raises(ArchiveLimitExceeded) as e:
        members(data, "winmail.dat", ArchiveLimits(max_members=4))
    assert e.value.rule == "members"


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        # cut inside the second attachment's data: the first is whole, the second named
        (-10, [("notes.txt", b"hello"), ("setup.exe", b"")]),
        (8, []),  # inside the first attribute header
    ],
)
def test_truncated_tnef_yields_what_was_read_then_a_problem(
    cut: int, expected: list[tuple[str, bytes]]
) -> None:
    data = tnef(("notes.txt", b"hello"), ("setup.exe", b"MZ" + bytes(40)))[:cut]
    entries = members(data, "winmail.dat")
    assert entries[-1].path == ("winmail.dat",) and entries[-1].problem == "corrupt tnef stream"
    assert [(entry.name, entry.data) for entry in entries[:-1]] == expected


def test_tnef_absurd_lengths_are_a_problem_not_an_allocation() -> None:
    data = TNEF_SIGNATURE + b"\x00\x00" + struct.pack("<BII", 2, ATT_DATA, 0xFFFFFFF0) + b"xx"
    (entry,) = members(data, "winmail.dat")
    assert entry.problem == "corrupt tnef stream"
    props = struct.pack("<I", 0xFFFFFFFF) + struct.pack("<HHII", PT_BINARY, 0x3701, 1, 0x7FFFFFFF)
    data = TNEF_SIGNATURE + b"\x00\x00" + tnef_attribute(2, ATT_TITLE, b"a.txt\x00")
    data += tnef_attribute(2, ATT_ATTACHMENT, props)
    (entry,) = members(data, "winmail.dat")
    assert (entry.name, entry.problem) == ("a.txt", "corrupt tnef attachment properties")


# ----------------------------------------------------------------------------- PDF


def object_stream(first_number: int, *objects: bytes, type_name: bytes = b"/Type /ObjStm") -> bytes:
    """An object stream (ISO 32000-1 7.5.7) holding `objects`, Flate-compressed."""
    offsets, body = [], b""
    for index, item in enumerate(objects):
        offsets.append(b"%d %d" % (first_number + index, len(body)))
        body += item + b"\n"
    header = b" ".join(offsets) + b"\n"
    data = zlib.compress(header + body)
    dictionary = type_name + b" /N %d /First %d /Filter /FlateDecode" % (len(objects), len(header))
    return pdf_stream(dictionary, data)


CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
PAGES = b"<< /Type /Pages /Kids [] /Count 0 >>"


def test_object_streams_are_decoded_for_labels() -> None:
    hidden = b"<< /S /JavaScript /JS (app.alert(1)) >>"
    data = pdf_file(CATALOG, PAGES, object_stream(10, b"<< /Type /Foo >>", hidden))
    assert b"JavaScript" not in data
    budget = Budget()
    inside = pdf_inside(data, ("a.pdf",), budget)
    assert inside.labels == {"pdf-javascript"} and inside.files == ()
    assert budget.size > 0  # the inflated octets are counted


@pytest.mark.parametrize(
    "type_name",
    [b"/Type /ObjStm", b"/Type /Obj#53tm", b"/Type/ObjStm", b"", b"/Type /Foo"],
)
def test_object_stream_dictionaries(type_name: bytes) -> None:
    """Found by /Type /ObjStm (also escaped), or without it by /N and /First."""
    launch = b"<< /Type /Action /S /Launch /F (cmd.exe) >>"
    data = pdf_file(CATALOG, object_stream(10, launch, type_name=type_name))
    assert pdf_inside(data, ("a.pdf",), Budget()).labels == {"pdf-launch"}


def test_escaped_filter_names_and_filter_chains() -> None:
    body = b"1 0\n<< /S /JavaScript >>"
    flate_hex = binascii.hexlify(zlib.compress(body)) + b">"
    dictionary = b"/Type /ObjStm /N 1 /First 4 /Filter [/AHx /Fl#61teDecode]"
    data = pdf_file(CATALOG, pdf_stream(dictionary, flate_hex))
    assert pdf_inside(data, ("a.pdf",), Budget()).labels == {"pdf-javascript"}


def test_inflation_ignores_a_false_length_and_endstream_inside() -> None:
    """The deflate stream says where it ends, not /Length or "endstream"."""
    body = b"1 0\n" + b"<< /X (endstream) >> " * 3 + b"<< /S /Launch >>"
    compressed = zlib.compress(body, 0)  # stored: "endstream" appears in the data
    assert b"endstream" in compressed
    dictionary = b"/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length 3"
    data = pdf_file(CATALOG, b"<< " + dictionary + b" >>\nstream\n" + compressed + b"\nendstream")
    assert pdf_inside(data, ("a.pdf",), Budget()).labels == {"pdf-launch"}


def test_object_stream_bomb_hits_the_bounds() -> None:
    data = pdf_file(
        CATALOG,
        pdf_stream(
            b"/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode", zlib.compress(bytes(20 * MiB), 9)
        ),
    )
    with pytest.raises(ArchiveLimitExceeded) as e:
        pdf_inside(data, ("a.pdf",), Budget())
    assert e.value.rule == "ratio"
    budget = Budget(ArchiveLimits(max_total_size=5 * MiB, max_ratio=10**9))
    with pytest.raises(ArchiveLimitExceeded) as e:
        pdf_inside(data, ("a.pdf",), budget)
    assert e.value.rule == "size" and budget.size <= 5 * MiB


def test_undecodable_object_stream_is_a_problem_unless_encrypted() -> None:
    lzw = pdf_stream(b"/Type /ObjStm /N 1 /First 4 /Filter /LZWDecode", b"\x80\x0b\x60\x50")
    (problem,) = pdf_inside(pdf_file(CATALOG, lzw), ("a.pdf",), Budget()).files
    assert problem.path == ("a.pdf",) and problem.problem == "undecodable pdf object stream"
    encrypted = pdf_file(CATALOG, lzw, trailer=b"<< /Root 1 0 R /Encrypt 9 0 R >>")
    assert pdf_inside(encrypted, ("a.pdf",), Budget()).files == ()


def filespec(name: bytes, number: int, key: bytes = b"/F") -> bytes:
    return b"<< /Type /Filespec " + key + b" " + name + b" /EF << /F %d 0 R >> >>" % number


def embedded(
    data: bytes, compress: bool = True, type_name: bytes = b"/Type /EmbeddedFile"
) -> bytes:
    if compress:
        return pdf_stream(type_name + b" /Filter /FlateDecode", zlib.compress(data))
    return pdf_stream(type_name, data)


def test_embedded_files_are_members() -> None:
    data = pdf_file(
        CATALOG,
        filespec(b"(invoice.exe)", 3),
        embedded(b"MZ\x90\x00"),
        filespec(b"<FEFF006E006F007400650073002E007400780074>", 5, b"/UF"),  # "notes.txt"
        embedded(b"plain notes", compress=False),
    )
    budget = Budget()
    inside = pdf_inside(data, ("doc.pdf",), budget)
    assert [(entry.path, entry.data, entry.depth) for entry in inside.files] == [
        (("doc.pdf", "invoice.exe"), b"MZ\x90\x00", 1),
        (("doc.pdf", "notes.txt"), b"plain notes", 1),
    ]
    assert budget.members == 2


def test_embedded_file_found_by_object_number_and_in_object_streams() -> None:
    """A stream without /Type /EmbeddedFile, named by a file specification that is
    itself in a compressed object stream."""
    spec = filespec(b"(run.js)", 3)
    data = pdf_file(CATALOG, object_stream(10, spec), embedded(b"WScript.Echo(1)", type_name=b""))
    (entry,) = pdf_inside(data, ("doc.pdf",), Budget()).files
    assert entry.path == ("doc.pdf", "run.js") and entry.data == b"WScript.Echo(1)"


def test_embedded_files_without_a_name_or_a_stream() -> None:
    data = pdf_file(CATALOG, embedded(b"MZ"), filespec(b"(missing.exe)", 40))
    entries = pdf_inside(data, ("doc.pdf",), Budget()).files
    assert [(entry.path, entry.data) for entry in entries] == [
        (("doc.pdf", "missing.exe"), b""),
        (("doc.pdf", "embedded file 2"), b"MZ"),
    ]


def test_embedded_files_in_an_encrypted_pdf_are_uninspectable() -> None:
    data = pdf_file(
        CATALOG, filespec(b"(a.txt)", 3), embedded(b"x"), trailer=b"<< /Encrypt 5 0 R >>"
    )
    (entry,) = pdf_inside(data, ("doc.pdf",), Budget()).files
    assert entry.path == ("doc.pdf", "a.txt") and entry.problem == "encrypted"


def test_embedded_files_past_the_depth_limit() -> None:
    data = pdf_file(CATALOG, filespec(b"(a.txt)", 3), embedded(b"x"))
    with pytest.raises(ArchiveLimitExceeded) as e:
        pdf_inside(data, ("doc.pdf",), Budget(ArchiveLimits(max_depth=2)), depth=3)
    assert e.value.rule == "depth"
    plain = pdf_file(CATALOG, PAGES)  # nothing inside: no nesting to refuse
    assert pdf_inside(plain, ("doc.pdf",), Budget(ArchiveLimits(max_depth=2)), depth=3).files == ()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=5000))
def test_mutated_tnef_and_pdf_never_raise_anything_else(noise: bytes, where: int) -> None:
    """A TNEF or PDF with damage anywhere: entries and problems (or a limit)."""
    for base in (
        tnef(("notes.txt", b"hello"), ("a.exe", b"MZ" * 20), long_name="long name.exe"),
        pdf_file(
            CATALOG,
            object_stream(10, filespec(b"(x.exe)", 4), b"<< /S /JavaScript >>"),
            b"<< /Type /Filespec /UF (y.txt) /EF << /F 4 0 R >> >>",
            embedded(b"MZ" * 30),
        ),
    ):
        position = where % len(base)
        data = base[:position] + noise + base[position + len(noise) :]
        try:
            entries = members(data, "fuzz")
            inside = pdf_inside(data, ("fuzz",), Budget())
        except ArchiveLimitExceeded:
            continue
        assert all(isinstance(entry, Entry) for entry in [*entries, *inside.files])
        assert inside.labels <= {"pdf-launch", "pdf-javascript"}
