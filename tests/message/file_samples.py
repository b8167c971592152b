"""Builders for test files with active content, shared by the archive walker's tests
(tests/message/test_archives.py) and the attachment policy's (tests/pipeline/
test_attachments.py): PDF files (ISO 32000 7.5: objects, cross-reference table,
trailer) and TNEF attributes ([MS-OXTNEF] 2.1.3.1). Built byte by byte: no binary
sample is kept in the repository."""

from __future__ import annotations

import struct

TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"


def tnef_attribute(level: int, attribute: int, data: bytes) -> bytes:
    """[MS-OXTNEF] 2.1.3.1: level, ID, length, data, checksum (sum of the octets)."""
    checksum = sum(data) & 0xFFFF
    return struct.pack("<BII", level, attribute, len(data)) + data + struct.pack("<H", checksum)


def pdf_file(*objects: bytes, trailer: bytes = b"<< /Root 1 0 R >>") -> bytes:
    """A PDF with `objects` numbered from 1 and a cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n" + trailer + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def pdf_stream(dictionary: bytes, data: bytes) -> bytes:
    """A PDF stream object's body: `dictionary` plus the right /Length, then `data`."""
    return b"<< " + dictionary + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
