"""Content sniffing by magic numbers (message/sniff.py): every label from real-shaped
headers, the look-alikes that must not match, OLE2 macro and MSI detection on
hand-built compound files, ZIP container kinds, and active content in PDF and RTF
documents (launch actions, JavaScript, OLE objects) with the obfuscations handled."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.message.sniff import (
    ACTIVE_CONTENT_LABELS,
    ARCHIVE_FORMATS,
    BLOCKED_BY_DEFAULT,
    EXECUTABLE_LABELS,
    active_labels,
    member_labels,
    ole_has_macros,
    pdf_labels,
    rtf_has_object,
    sniff,
    zip_container_kind,
)

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
MSI_CLSID = bytes.fromhex(
    "84100c0000000000c000000000000046"
)  # {000C1084-0000-0000-C000-000000000046}


def pe(size: int = 256) -> bytes:
    """A DOS stub whose e_lfanew points at a PE signature."""
    data = bytearray(size)
    data[0:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 0x80)
    data[0x80:0x84] = b"PE\x00\x00"
    return bytes(data)


def ole_entry(name: str, kind: int, clsid: bytes = bytes(16)) -> bytes:
    """One [MS-CFB] 2.6 directory entry (128 octets)."""
    encoded = name.encode("utf-16-le") + b"\x00\x00"
    entry = bytearray(128)
    entry[0 : len(encoded)] = encoded
    struct.pack_into("<HBB", entry, 64, len(encoded), kind, 1)
    struct.pack_into("<III", entry, 68, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    entry[80:96] = clsid
    return bytes(entry)


def ole(*entries: bytes, sector: int = 512) -> bytes:
    """A compound file: header sector, then the directory entries (sector aligned)."""
    header = OLE_MAGIC + bytes(sector - len(OLE_MAGIC))
    return header + b"".join(entries) + bytes(128 * 4)


def at(offset: int, marker: bytes, size: int = 0x9000) -> bytes:
    data = bytearray(max(size, offset + len(marker)))
    data[offset : offset + len(marker)] = marker
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "label"),
    [
        (pe(), "exe"),
        (b"MZ\x90\x00\x03\x00\x00\x00" + bytes(56), "exe"),  # DOS program, PE cut off
        (b"\x7fELF\x02\x01\x01" + bytes(57), "elf"),
        (b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + bytes(24), "macho"),
        (b"\xfe\xed\xfa\xce" + bytes(28), "macho"),
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + bytes(40), "macho"),  # fat binary, 2 archs
        (b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + bytes(40), "class"),  # Java 8 class file
        (b"dex\n035\x00" + bytes(100), "dex"),
        (b"#!/bin/sh\necho hi\n", "script"),
        (b"#! /usr/bin/env python3\n", "script"),
        (b"\xef\xbb\xbf#!/usr/bin/perl\n", "script"),
        (b"Windows Registry Editor Version 5.00\r\n\r\n[HKEY_CURRENT_USER]", "reg"),
        (b"\xff\xfe" + "Windows Registry Editor Version 5.00".encode("utf-16-le"), "reg"),
        (b"REGEDIT4\r\n", "reg"),
        (at(0x8001, b"CD001"), "iso"),
        (at(0x8801, b"CD001"), "iso"),
        (at(0x8001, b"BEA01"), "iso"),  # UDF
        (
            b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00F"
            + bytes(60),
            "lnk",
        ),
        (b"ITSF\x03\x00\x00\x00" + bytes(50), "chm"),
        (b"conectix" + bytes(504), "vhd"),
        (bytes(4096) + b"conectix" + bytes(504), "vhd"),  # fixed VHD: footer at the end
        (b"vhdxfile" + bytes(100), "vhdx"),
        (bytes(4096) + b"koly" + bytes(508), "dmg"),
        (ole(ole_entry("Root Entry", 5)), "ole"),
        (ole(ole_entry("Root Entry", 5, MSI_CLSID)), "msi"),
        (b"PK\x03\x04\x14\x00" + bytes(30), "zip"),
        (b"PK\x05\x06" + bytes(18), "zip"),
        (b"Rar!\x1a\x07\x01\x00" + bytes(20), "rar"),
        (b"Rar!\x1a\x07\x00" + bytes(20), "rar"),
        (b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24), "7z"),
        (b"\x1f\x8b\x08\x00" + bytes(16), "gzip"),
        (b"BZh91AY&SY" + bytes(20), "bzip2"),
        (b"\xfd7zXZ\x00\x00\x04" + bytes(20), "xz"),
        (b"\x28\xb5\x2f\xfd" + bytes(20), "zstd"),
        (b"MSCF\x00\x00\x00\x00" + bytes(30), "cab"),
        (at(257, b"ustar\x0000", 1024), "tar"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "pdf"),
        (b"junk before\n%PDF-1.4\n", "pdf"),
        (b"{\\rtf1\\ansi hello}", "rtf"),
        (b"{\\rtx1 hello}", "rtf"),  # Word reads "{\\rt" and no further
        (b"\x78\x9f\x3e\x22\x01\x00" + bytes(20), "tnef"),
    ],
)
def test_labels(data: bytes, label: str) -> None:
    assert sniff(data) == label


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Hello, world\n",
        b"MZ is how my initials start, and this is plain text.\n",  # no control octets
        b"# not a shebang\n#!/bin/sh later\n",
        b"\x89PNG\r\n\x1a\n" + bytes(40),
        b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(40),
        b"GIF89a" + bytes(40),
        b"<html><body>#!/bin/sh</body></html>",
        at(0x8002, b"CD001"),  # not where a volume descriptor is
    ],
)
def test_innocent_content_has_no_label(data: bytes) -> None:
    assert sniff(data) is None


def test_every_executable_label_is_blocked_by_default() -> None:
    assert set(BLOCKED_BY_DEFAULT) >= EXECUTABLE_LABELS
    # active content: JavaScript in PDFs is common in forms, so only on request
    assert set(BLOCKED_BY_DEFAULT) & ACTIVE_CONTENT_LABELS == {"pdf-launch", "rtf-object"}
    assert not ARCHIVE_FORMATS & set(BLOCKED_BY_DEFAULT)  # archives are opened, not blocked
    assert len(BLOCKED_BY_DEFAULT) == len(set(BLOCKED_BY_DEFAULT))
    assert all(ext == ext.lower() and not ext.startswith(".") for ext in BLOCKED_BY_DEFAULT)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([ole_entry("Root Entry", 5), ole_entry("WordDocument", 2)], False),
        ([ole_entry("Root Entry", 5), ole_entry("Macros", 1), ole_entry("VBA", 1)], True),
        ([ole_entry("Root Entry", 5), ole_entry("_VBA_PROJECT_CUR", 1)], True),
        ([ole_entry("Root Entry", 5), ole_entry("_VBA_PROJECT", 2)], True),
        ([ole_entry("Root Entry", 5), ole_entry("_vba_project_cur", 1)], True),  # any case
        ([ole_entry("Root Entry", 5), ole_entry("Macrosoft", 2)], False),
    ],
)
def test_ole_macros(entries: list[bytes], expected: bool) -> None:
    assert ole_has_macros(ole(*entries)) is expected
    assert ole_has_macros(ole(*entries, sector=4096)) is expected  # version 4 files


def test_ole_macro_names_elsewhere_do_not_count() -> None:
    # The name as document text: not at an entry boundary, or without the entry fields.
    text = "see the Macros menu".encode("utf-16-le")
    assert not ole_has_macros(ole(ole_entry("Root Entry", 5)) + text)
    loose = bytearray(ole_entry("Macros", 1))
    loose[64:66] = b"\x00\x00"  # wrong name length: not a directory entry
    assert not ole_has_macros(ole(ole_entry("Root Entry", 5), bytes(loose)))
    assert not ole_has_macros(b"not ole" + ole_entry("Macros", 1))


@pytest.mark.parametrize(
    ("names", "kind"),
    [
        (["META-INF/MANIFEST.MF", "com/example/Main.class"], "jar"),
        (["AndroidManifest.xml", "classes.dex", "META-INF/MANIFEST.MF"], "apk"),
        (["AppxManifest.xml", "AppxBlockMap.xml", "app.exe"], "msix"),
        (["[Content_Types].xml", "word/document.xml"], "ooxml"),
        (["mimetype", "META-INF/manifest.xml", "content.xml"], "odf"),
        (["mimetype", "META-INF/container.xml", "OEBPS/x.xhtml"], None),  # EPUB
        (["photos/a.jpg", "notes.txt"], None),
    ],
)
def test_zip_container_kind(names: list[str], kind: str | None) -> None:
    assert zip_container_kind(names) == kind


@pytest.mark.parametrize(
    ("container", "name", "data", "macro"),
    [
        ("ooxml", "word/vbaProject.bin", b"x", True),
        ("ooxml", "xl/vbaProject.bin", None, True),
        ("ooxml", "xl/macrosheets/sheet1.xml", b"<x/>", True),
        ("ooxml", "word/activeX/activeX1.bin", b"x", True),
        (
            "ooxml",
            "[Content_Types].xml",
            b'<Default ContentType="application/vnd.ms-word.document.macroEnabled.main+xml"/>',
            True,
        ),
        ("ooxml", "[Content_Types].xml", b'<Default ContentType="application/xml"/>', False),
        ("ooxml", "word/document.xml", b"<w:document/>", False),
        ("odf", "Basic/Standard/Module1.xml", b"<script/>", True),
        ("odf", "Basic/script-lc.xml", b"<library/>", False),
        ("odf", "Scripts/python/run.py", b"import os", True),
        ("odf", "content.xml", b"<office/>", False),
        (None, "scripts/build.xml", b"<project/>", False),  # a plain ZIP
        (None, "vbaProject.bin", b"x", False),
    ],
)
def test_member_labels(container: str | None, name: str, data: bytes | None, macro: bool) -> None:
    assert member_labels(container, name, data) == ({"macro"} if macro else set())


@pytest.mark.parametrize(
    ("data", "labels"),
    [
        (b"/OpenAction << /S /Launch /F (cmd.exe) >>", {"pdf-launch"}),
        (b"/S/Launch/Win<</F(calc.exe)>>", {"pdf-launch"}),
        (b"/S /L#61unch", {"pdf-launch"}),
        (b"/S /#4C#41#55#4e#43#48", set()),  # "/LAUNCH": names are case-sensitive
        (b"/S /#4c#61#75#6E#63#68", {"pdf-launch"}),  # every character escaped
        (b"/Launched /Launch_", set()),
        (b"<< /S /JavaScript /JS (app.alert(1)) >>", {"pdf-javascript"}),
        (b"/Names << /JavaScript 5 0 R >>", {"pdf-javascript"}),
        (b"/J#61vaScript", {"pdf-javascript"}),
        (b"/AA<</O<</JS 7 0 R>>>>", {"pdf-javascript"}),
        (b"/J#53(x)", {"pdf-javascript"}),
        (b"/JS 12 0 R", {"pdf-javascript"}),  # the script in a stream
        (b"/JS %comment\n<616c657274>", {"pdf-javascript"}),
        (b"/JS", set()),  # no value: as found by chance in binary data
        (b"/JSON /JSX /javascript /Javascript /JavaScripts", set()),
        (b"/JS(x)/Launch", {"pdf-javascript", "pdf-launch"}),
        (b"JavaScript Launch (not names)", set()),
        (b"/J#6", set()),  # a broken escape
    ],
)
def test_pdf_labels(data: bytes, labels: set[str]) -> None:
    assert pdf_labels(data) == labels
    assert active_labels(b"%PDF-1.7\n" + data) == labels
    assert active_labels(data) == set()  # not a PDF


@pytest.mark.parametrize(
    ("rtf", "has_object"),
    [
        (rb"{\rtf1{\object\objemb{\*\objclass Equation.3}{\*\objdata 01050000}}}", True),
        (rb"{\rtf1{\object\objautlink\objupdate\rsltpict{\*\objdata 0105}}}", True),
        (rb"{\rtf1{\*\objdata 0105000002000000}}", True),
        (rb"{\rtf1 \objupdate}", True),
        (rb"{\rtf1{\OBJECT\ObjData 01}}", True),  # any case
        (b"{\\rtf1{\\ob\r\nj\nda\r\nta 01}}", True),  # CR and LF are ignored
        (rb"{\rtf1{\objdata1 01}}", True),  # with a parameter
        (rb"{\rtf1\\\objdata}", True),  # an escaped backslash, then the word
        (rb"{\rtf1\ansi\deff0 {\fonttbl{\f0 Arial;}}\f0\fs20 Hello, object world.\par}", False),
        (rb"{\rtf1 see the \\object keyword}", False),  # "\\" is a backslash in text
        (rb"{\rtf1 \objectx \objdatum \objw300}", False),  # other words
        (rb"{\rtf1 \ob ject}", False),
    ],
)
def test_rtf_objects(rtf: bytes, has_object: bool) -> None:
    assert rtf_has_object(rtf) is has_object
    assert active_labels(rtf) == ({"rtf-object"} if has_object else set())


def test_rtf_objects_only_in_rtf() -> None:
    assert active_labels(b"Notes on \\objdata in RTF files\n") == set()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=2048),
    st.sampled_from(
        [b"", OLE_MAGIC, b"MZ", b"PK\x03\x04", b"\xca\xfe\xba\xbe", b"%PDF-1.7\n/J#", b"{\\rt\\"]
    ),
)
def test_never_raises(data: bytes, prefix: bytes) -> None:
    blob = prefix + data
    label = sniff(blob)
    assert label is None or isinstance(label, str)
    assert isinstance(ole_has_macros(blob), bool)
    assert active_labels(blob) <= ACTIVE_CONTENT_LABELS
