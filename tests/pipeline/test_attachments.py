"""The attachment policy (pipeline/attachments.py): every way a file name can say
"executable", executables with innocent names found by content, macro documents,
active content (PDF launch actions and JavaScript, RTF OLE objects, files embedded
in PDFs and TNEF winmail.dat), archives inside archives, the bounds (zip bombs,
nesting, MIME caps) and what cannot be inspected, each as a whole message through
the check. Every file is built here, octet by octet."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zipfile
import zlib
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.logs import EventLog
from mailward.message.archives import ArchiveLimits
from mailward.message.mime import MAX_DEPTH, MAX_PARTS
from mailward.message.sniff import BLOCKED_BY_DEFAULT
from mailward.pipeline.attachments import LIMIT_REPLIES, AttachmentPolicy, display_name
from mailward.pipeline.content import ContentCheck, MessageView
from mailward.pipeline.types import CheckResult, Decision, Envelope, RemoteRecipient, SessionInfo
from tests.message.file_samples import TNEF_SIGNATURE, pdf_file, pdf_stream, tnef_attribute

MiB = 1024 * 1024
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


# ------------------------------------------------------------------ building mail


def mail(*files: tuple[str | None, bytes], body: str = "Please see attached.") -> bytes:
    """A message with a text body and one attachment per (file name, content)."""
    message = EmailMessage(policy=SMTP)
    message["From"] = "alice@example.test"
    message["To"] = "bob@example.net"
    message["Subject"] = "Files"
    message.set_content(body)
    for name, data in files:
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes()


def raw_part(headers: str, content: bytes = b"harmless text") -> bytes:
    """A multipart/mixed message whose second part has exactly `headers`."""
    encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
    return (
        b"From: alice@example.test\r\nTo: bob@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--b1\r\n"
        + headers.encode("utf-8")
        + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encoded
        + b"--b1--\r\n"
    )


def make_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def set_encrypted(data: bytes) -> bytes:
    """General-purpose flag bit 0 set in every local and central header."""
    out = bytearray(data)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = out.find(signature)
        while position >= 0:
            (flags,) = struct.unpack_from("<H", out, position + flag_offset)
            struct.pack_into("<H", out, position + flag_offset, flags | 1)
            position = out.find(signature, position + 4)
    return bytes(out)


def pe() -> bytes:
    data = bytearray(512)
    data[0:2] = b"MZ"
    struct.pack_into("<I", data, 0x3C, 0x80)
    data[0x80:0x84] = b"PE\x00\x00"
    return bytes(data)


def ole_entry(name: str, kind: int, clsid: bytes = bytes(16)) -> bytes:
    encoded = name.encode("utf-16-le") + b"\x00\x00"
    entry = bytearray(128)
    entry[0 : len(encoded)] = encoded
    struct.pack_into("<HBB", entry, 64, len(encoded), kind, 1)
    entry[80:96] = clsid
    return bytes(entry)


def ole(*names: str, clsid: bytes = bytes(16)) -> bytes:
    entries = [ole_entry("Root Entry", 5, clsid)] + [ole_entry(n, 1) for n in names]
    return OLE_MAGIC + bytes(504) + b"".join(entries) + bytes(512)


def docx(extra: dict[str, bytes] | None = None, types: bytes = b"<Types/>") -> bytes:
    files = {
        "[Content_Types].xml": types,
        "_rels/.rels": b"<Relationships/>",
        "word/document.xml": b"<w:document><w:body><w:p><w:r><w:t>Hi</w:t></w:r></w:p></w:body>"
        b"</w:document>",
    }
    return make_zip(files | (extra or {}))


def at(offset: int, marker: bytes, size: int = 0x9000) -> bytes:
    data = bytearray(size)
    data[offset : offset + len(marker)] = marker
    return bytes(data)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
PDF = b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n"
LNK = b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00F" + bytes(60)
MSI_CLSID = bytes.fromhex("84100c0000000000c000000000000046")


# ------------------------------------------------------------------ the check


def policy(**options: Any) -> AttachmentPolicy:
    return AttachmentPolicy(log=EventLog(io.StringIO()), **options)


def judge(data: bytes, **options: Any) -> CheckResult:
    return policy(**options).evaluate(data)


def assert_blocked(result: CheckResult, shown: str) -> None:
    assert result.decision == Decision.REJECT, result
    assert result.reply is not None
    assert (result.reply.code, result.reply.enhanced) == (554, "5.7.1")
    assert result.reply.text == f"Message refused: attachment type not allowed ({shown})"


def assert_accepted(result: CheckResult) -> None:
    assert result.decision == Decision.ACCEPT, result


@pytest.mark.parametrize(
    "extension",
    [
        *("exe", "scr", "com", "pif", "cpl", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta"),
        *("bat", "cmd", "ps1", "psm1", "jar", "lnk", "iso", "img", "vhd", "msi", "msp", "reg"),
        *("dll", "sys", "app", "apk", "docm", "xlsm", "pptm", "chm", "url", "appx", "msix"),
    ],
)
def test_every_blocked_extension(extension: str) -> None:
    name = f"file.{extension}"
    assert_blocked(judge(mail((name, b"harmless text"))), name)
    upper = f"FILE.{extension.upper()}"
    assert_blocked(judge(mail((upper, b"harmless text"))), upper)


@pytest.mark.parametrize(
    ("headers", "shown"),
    [
        ('Content-Type: application/octet-stream; name="setup.exe"', "setup.exe"),
        ('Content-Disposition: attachment; filename="invoice.pdf.exe"', "invoice.pdf.exe"),
        ('Content-Disposition: attachment; filename="invoice.exe."', "invoice.exe."),
        ('Content-Disposition: attachment; filename="invoice.exe . . "', "invoice.exe . ."),
        ('Content-Disposition: attachment; filename="Invoice.PdF.ScR"', "Invoice.PdF.ScR"),
        # RFC 2231 charset and percent-encoding, and continuations
        (
            "Content-Disposition: attachment; filename*=utf-8''Rechnung%20f%C3%BCr%20Sie.exe",
            "Rechnung f?r Sie.exe",
        ),
        (
            'Content-Disposition: attachment; filename*0="inv"; filename*1="oice.e";'
            ' filename*2="xe"',
            "invoice.exe",
        ),
        # RFC 2047 encoded-words where they do not belong (mail readers decode them)
        (
            'Content-Disposition: attachment; filename="=?utf-8?B?'
            + base64.b64encode("résumé.js".encode()).decode()
            + '?="',
            "r?sum?.js",
        ),
        ('Content-Type: application/pdf; name="=?iso-8859-1?Q?a=2Evbs?="', "a.vbs"),
        # cut short by C-string readers, NTFS streams, directories
        ("Content-Disposition: attachment; filename*=utf-8''run.bat%00.pdf", "run.bat?.pdf"),
        ('Content-Disposition: attachment; filename="run.hta::$DATA"', "run.hta::$DATA"),
        ('Content-Disposition: attachment; filename="C:\\\\Temp\\\\job.cmd"', "C:\\Temp\\job.cmd"),
        ('Content-Disposition: attachment; filename="../../evil.ps1"', "../../evil.ps1"),
        # two names: readers differ in which they show and which they save as
        (
            'Content-Type: application/pdf; name="report.pdf"\r\n'
            'Content-Disposition: attachment; filename="report.vbs"',
            "report.pdf",
        ),
        (
            'Content-Disposition: attachment; filename="a.pdf"\r\n'
            'Content-Disposition: attachment; filename="a.wsf"',
            "a.pdf",
        ),
    ],
)
def test_file_name_forms(headers: str, shown: str) -> None:
    assert_blocked(judge(raw_part(headers)), shown)


@pytest.mark.parametrize(
    "name",
    ["report.pdf", "photo.jpg", "data.csv", "archive.exe.txt", "exe", "setup.exe.zip", "a."],
)
def test_harmless_names_pass(name: str) -> None:
    assert_accepted(judge(mail((name, b"harmless text"))))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("photo.jpg", pe()),
        ("notes.txt", b"\x7fELF\x02\x01\x01" + bytes(100)),
        ("readme.txt", b"#!/bin/sh\nrm -rf ~\n"),
        ("image.png", b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + bytes(100)),
        ("data.bin", b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + bytes(100)),
        ("holiday.jpg", at(0x8001, b"CD001")),
        ("shortcut.txt", LNK),
        ("document.doc", ole(clsid=MSI_CLSID)),
        ("settings.txt", b"Windows Registry Editor Version 5.00\r\n[HKEY_CURRENT_USER\\x]\r\n"),
        (None, pe()),  # no name at all
    ],
)
def test_executables_with_innocent_names_found_by_content(name: str | None, content: bytes) -> None:
    assert_blocked(judge(mail((name, content))), name or "unnamed")


def test_declared_content_type_is_not_trusted() -> None:
    headers = 'Content-Type: image/jpeg; name="photo.jpg"'
    assert_blocked(judge(raw_part(headers, pe())), "photo.jpg")
    headers = "Content-Type: text/plain; charset=us-ascii\r\nContent-Disposition: inline"
    assert_blocked(judge(raw_part(headers, pe())), "unnamed")


def test_message_text_starting_with_a_shebang_is_not_a_script() -> None:
    """A body part without a file name is read, not run."""
    assert_accepted(judge(mail(body="#!/bin/sh\necho this is how you start a script\n")))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("report.doc", ole("Macros", "VBA", "_VBA_PROJECT")),
        ("budget.xls", ole("_VBA_PROJECT_CUR", "VBA")),
        ("report.docx", docx({"word/vbaProject.bin": ole("VBA", "_VBA_PROJECT")})),
        ("report.docx", docx({"word/media/image9.bin": ole("VBA", "_VBA_PROJECT")})),  # renamed
        (
            "report.docx",
            docx(types=b'<Default ContentType="application/vnd.ms-word.document.macroEnabled.x"/>'),
        ),
        ("sheet.xlsx", docx({"xl/macrosheets/sheet1.xml": b"<xm:macrosheet/>"})),
        ("form.docx", docx({"word/activeX/activeX1.bin": b"\x00" * 16})),
    ],
)
def test_macro_documents(name: str, content: bytes) -> None:
    assert_blocked(judge(mail((name, content))), name)


def test_documents_without_macros_pass() -> None:
    assert_accepted(judge(mail(("report.docx", docx()), ("memo.doc", ole("WordDocument")))))
    assert_accepted(judge(mail(("report.pdf", PDF), ("logo.png", PNG))))


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\n", "a/B.class": b"\xca\xfe"}, "jar"),
        ({"AndroidManifest.xml": b"\x03\x00", "classes.dex": b"dex\n035\x00"}, "apk"),
    ],
)
def test_packages_that_run_code_are_blocked_by_content(files: dict[str, bytes], kind: str) -> None:
    result = judge(mail(("tools.zip", make_zip(files))))
    assert_blocked(result, "tools.zip")
    assert kind in result.reason


def test_nested_zips() -> None:
    inner = make_zip({"tool.exe": pe()})
    outer = make_zip({"inner.zip": inner, "readme.txt": b"read me"})
    assert_blocked(judge(mail(("outer.zip", outer))), "outer.zip > inner.zip > tool.exe")
    harmless = make_zip({"inner.zip": make_zip({"a.txt": b"a", "b.pdf": PDF}), "c.png": PNG})
    assert_accepted(judge(mail(("outer.zip", harmless))))
    renamed = make_zip({"inner.zip": make_zip({"cat.jpg": pe()})})
    assert_blocked(judge(mail(("photos.zip", renamed))), "photos.zip > inner.zip > cat.jpg")
    docm = make_zip({"q3.docx": docx({"word/vbaProject.bin": b"x"})})
    assert_blocked(judge(mail(("reports.zip", docm))), "reports.zip > q3.docx")


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    data = make_zip({"a.txt": b"a"})
    for level in range(4):
        data = make_zip({f"level{level}.zip": data})
    result = judge(mail(("deep.zip", data)))
    assert result.decision == Decision.REJECT
    assert result.reply == LIMIT_REPLIES["depth"]
    assert result.reply.text == "Message refused: archive nesting too deep"
    assert result.reply.code == 552
    assert_accepted(judge(mail(("deep.zip", data)), limits=ArchiveLimits(max_depth=5)))


def test_zip_bomb_is_refused_without_inflating_it() -> None:
    out = io.BytesIO()
    archive = zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED)
    with archive, archive.open("zeros.bin", "w", force_zip64=True) as member:
        chunk = bytes(MiB)
        for _ in range(200):
            member.write(chunk)
    bomb = out.getvalue()
    assert len(bomb) < MiB
    result = judge(mail(("invoice.zip", bomb)))
    assert result.reply == LIMIT_REPLIES["size"]
    assert result.reply.text == "Message refused: archive expands too large"


def test_compression_ratio_and_member_count_bounds() -> None:
    ratio = make_zip({"zeros.bin": bytes(5 * MiB)})
    assert judge(mail(("a.zip", ratio))).reply == LIMIT_REPLIES["ratio"]
    many = make_zip({f"f{i}.txt": b"x" for i in range(30)})
    result = judge(mail(("a.zip", many)), limits=ArchiveLimits(max_members=20))
    assert result.reply == LIMIT_REPLIES["members"]
    assert result.reply.text == "Message refused: too many files in archive"


def test_encrypted_archive_is_quarantined() -> None:
    encrypted = set_encrypted(make_zip({"statement.pdf": PDF}))
    result = judge(mail(("statement.zip", encrypted)))
    assert result.decision == Decision.QUARANTINE
    assert result.reply is None
    assert "encrypted" in result.reason and "statement.zip > statement.pdf" in result.reason


def test_encrypted_archive_with_a_blocked_name_is_refused() -> None:
    """Member names are not encrypted: a visible .exe decides."""
    encrypted = set_encrypted(make_zip({"readme.txt": b"x", "payload.exe": pe()}))
    assert_blocked(judge(mail(("secure.zip", encrypted))), "secure.zip > payload.exe")


@pytest.mark.parametrize(
    ("uninspectable", "decision"),
    [("quarantine", Decision.QUARANTINE), ("reject", Decision.REJECT), ("accept", Decision.ACCEPT)],
)
def test_uninspectable_policy(uninspectable: str, decision: Decision) -> None:
    rar = b"Rar!\x1a\x07\x01\x00" + bytes(200)
    result = judge(mail(("photos.rar", rar)), uninspectable=uninspectable)
    assert result.decision == decision
    if decision == Decision.REJECT:
        assert result.reply is not None
        assert result.reply.text == "Message refused: attachment cannot be inspected (photos.rar)"


def test_blocked_outranks_uninspectable() -> None:
    rar = b"Rar!\x1a\x07\x01\x00" + bytes(200)
    assert_blocked(judge(mail(("photos.rar", rar), ("run.js", b"x"))), "run.js")


def test_quarantine_action() -> None:
    result = judge(mail(("run.js", b"alert(1)")), action="quarantine")
    assert result.decision == Decision.QUARANTINE
    assert result.reason == "attachment type js by name (run.js)"


def test_allow_extensions_override_names_and_content() -> None:
    iso = at(0x8001, b"CD001")
    assert_accepted(judge(mail(("disk.iso", iso)), allow_extensions=["iso"]))
    assert_accepted(judge(mail(("photo.jpg", pe())), allow_extensions=[".EXE"]))
    assert_blocked(judge(mail(("a.exe", pe())), allow_extensions=["iso"]), "a.exe")


def test_block_list_is_configurable() -> None:
    assert_blocked(judge(mail(("a.pdf", PDF)), block_extensions=[".PDF"]), "a.pdf")
    assert_accepted(judge(mail(("a.exe", b"text")), block_extensions=["pdf"]))
    assert policy().blocked == frozenset(BLOCKED_BY_DEFAULT)


def test_archives_are_not_opened_when_told() -> None:
    data = mail(("tools.zip", make_zip({"tool.exe": pe()})))
    assert_accepted(judge(data, inspect_archives=False))
    assert_blocked(judge(data), "tools.zip > tool.exe")


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_compressed_tarballs_are_opened(mode: str) -> None:
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode=mode) as archive:  # type: ignore[call-overload]
        info = tarfile.TarInfo("bin/install.sh")
        data = b"#!/bin/sh\ncurl x | sh\n"
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    assert_blocked(judge(mail(("src.tar.gz", out.getvalue()))), "src.tar.gz > bin/install.sh")


def test_uuencoded_file_names_in_text() -> None:
    body = "Here it is:\n\nbegin 644 tool.exe\nM1F]O\n`\nend\n"
    assert_blocked(judge(mail(body=body)), "unnamed > tool.exe")


def test_attached_messages_are_searched() -> None:
    inner = mail(("payload.vbs", b"WScript.Echo 1"))
    outer = EmailMessage(policy=SMTP)
    outer["Subject"] = "Fwd"
    outer.set_content("forwarded")
    outer.add_attachment(inner, maintype="message", subtype="rfc822")
    assert_blocked(judge(outer.as_bytes()), "payload.vbs")
    # RFC 2046 5.2.1 forbids encoding message/rfc822; readers decode it anyway.
    headers = 'Content-Type: message/rfc822; name="fwd.eml"'
    data = raw_part(headers, inner)
    assert b"base64" in data
    assert_blocked(judge(data), "payload.vbs")


def nested_multiparts(levels: int) -> bytes:
    head = b"Subject: deep\r\nMIME-Version: 1.0\r\n"
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nbottom" + closing


def test_mime_structure_past_the_parser_caps_is_refused() -> None:
    assert_accepted(judge(nested_multiparts(MAX_DEPTH - 2)))
    result = judge(nested_multiparts(MAX_DEPTH + 5))
    assert result.reply == LIMIT_REPLIES["mime-depth"]
    assert result.reply.text == "Message refused: MIME nesting too deep"
    parts = b"".join(b"--b\r\n\r\nx\r\n" for _ in range(MAX_PARTS + 10))
    wide = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + parts + b"--b--\r\n"
    result = judge(wide)
    assert result.reply == LIMIT_REPLIES["mime-parts"]
    assert result.reply.code == 552 and result.reply.enhanced == "5.3.4"


def test_reply_shows_a_sanitised_shortened_name() -> None:
    name = "\u202egpj." + "x" * 200 + "\u00e9.exe"
    result = judge(raw_part(f"Content-Disposition: attachment; filename*=utf-8''{_pct(name)}"))
    assert result.reply is not None
    text = result.reply.text
    assert isinstance(text, str) and text.isascii() and text.isprintable()
    shown = text.removeprefix("Message refused: attachment type not allowed (").removesuffix(")")
    assert len(shown) == 64 and shown.startswith("...") and shown.endswith("x?.exe")
    assert display_name(["a\r\nb.exe"]) == "a??b.exe"
    assert display_name([]) == "unnamed"


def _pct(text: str) -> str:
    return "".join(f"%{b:02X}" for b in text.encode("utf-8"))


def test_plain_messages_pass() -> None:
    assert_accepted(judge(b"Subject: hi\r\n\r\nJust text.\r\n"))
    assert_accepted(judge(b""))
    assert_accepted(judge(mail(("notes.txt", b"notes"), ("data.csv", b"a,b\n1,2\n"))))


# ------------------------------------------------------------------ active content


def object_stream(first_number: int, *objects: bytes) -> bytes:
    """A Flate-compressed object stream (ISO 32000-1 7.5.7) holding `objects`."""
    offsets, body = [], b""
    for index, item in enumerate(objects):
        offsets.append(b"%d %d" % (first_number + index, len(body)))
        body += item + b"\n"
    header = b" ".join(offsets) + b"\n"
    dictionary = b"/Type /ObjStm /N %d /First %d /Filter /FlateDecode" % (len(objects), len(header))
    return pdf_stream(dictionary, zlib.compress(header + body))


CATALOG = b"<< /Type /Catalog /Pages 2 0 R /OpenAction 3 0 R >>"
PAGES = b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>"
PAGE = b"<< /Type /Page /Parent 2 0 R /Contents 5 0 R >>"
TEXT = pdf_stream(b"/Filter /FlateDecode", zlib.compress(b"BT (Hello) Tj ET"))


def document(action: bytes) -> bytes:
    """A one-page PDF whose /OpenAction is object 3, `action`."""
    return pdf_file(CATALOG, PAGES, action, PAGE, TEXT)


LAUNCH = b"<< /Type /Action /S /Launch /Win << /F (cmd.exe) /P (/c calc) >> >>"
JAVASCRIPT = b"<< /Type /Action /S /JavaScript /JS (app.alert('hi');) >>"
WITH_JAVASCRIPT = (*BLOCKED_BY_DEFAULT, "pdf-javascript")


def test_pdf_with_a_launch_action_is_refused() -> None:
    result = judge(mail(("report.pdf", document(LAUNCH))))
    assert_blocked(result, "report.pdf")
    assert result.reason == "attachment type pdf-launch by content (report.pdf)"
    hidden = pdf_file(CATALOG, PAGES, object_stream(3, LAUNCH), PAGE, TEXT)
    assert_blocked(judge(mail(("report.pdf", hidden))), "report.pdf")
    escaped = document(b"<< /S /L#61unch /F (calc.exe) >>")
    assert_blocked(judge(mail(("report.pdf", escaped))), "report.pdf")
    quarantined = judge(mail(("report.pdf", document(LAUNCH))), action="quarantine")
    assert quarantined.decision == Decision.QUARANTINE
    assert_accepted(judge(mail(("report.pdf", document(LAUNCH))), allow_extensions=["pdf-launch"]))


@pytest.mark.parametrize(
    "pdf",
    [
        document(JAVASCRIPT),
        document(b"<< /S /J#61vaScript /J#53 (app.alert(1)) >>"),  # hex-escaped names
        pdf_file(CATALOG, PAGES, object_stream(3, JAVASCRIPT), PAGE, TEXT),  # compressed
        pdf_file(
            CATALOG.replace(b">>", b"/Names << /JavaScript 6 0 R >> >>"),
            PAGES,
            b"<< >>",
            PAGE,
            TEXT,
            object_stream(6, b"<< /Names [(init) 7 0 R] >>", b"<< /S /J#61vaScript /JS 8 0 R >>"),
        ),
    ],
)
def test_pdf_javascript_is_accepted_unless_configured(pdf: bytes) -> None:
    assert_accepted(judge(mail(("form.pdf", pdf))))
    result = judge(mail(("form.pdf", pdf)), block_extensions=WITH_JAVASCRIPT)
    assert_blocked(result, "form.pdf")
    assert "pdf-javascript" in result.reason


def test_pdf_javascript_in_compressed_streams_needs_archive_inspection() -> None:
    hidden = pdf_file(CATALOG, PAGES, object_stream(3, JAVASCRIPT), PAGE, TEXT)
    policy_options: dict[str, Any] = {"block_extensions": WITH_JAVASCRIPT}
    assert_blocked(judge(mail(("form.pdf", hidden)), **policy_options), "form.pdf")
    assert_accepted(judge(mail(("form.pdf", hidden)), inspect_archives=False, **policy_options))
    plain = document(JAVASCRIPT)  # no decompression needed
    assert_blocked(
        judge(mail(("form.pdf", plain)), inspect_archives=False, **policy_options), "form.pdf"
    )


def test_ordinary_pdfs_are_accepted() -> None:
    assert_accepted(judge(mail(("report.pdf", document(b"<< /S /GoTo /D [4 0 R /Fit] >>")))))
    # Page text about launch actions and JavaScript, in a compressed content stream,
    # and names that only start like them.
    about = pdf_stream(
        b"/Filter /FlateDecode", zlib.compress(b"BT (Avoid /Launch and /JavaScript) Tj ET")
    )
    lookalikes = b"<< /S /GoTo /D [4 0 R /Fit] /JSON 1 /Launcher 2 >>"
    data = pdf_file(CATALOG, PAGES, lookalikes, PAGE, about)
    assert_accepted(judge(mail(("paper.pdf", data)), block_extensions=WITH_JAVASCRIPT))


def test_pdfs_inside_archives_are_judged() -> None:
    zipped = make_zip({"docs/form.pdf": pdf_file(CATALOG, PAGES, object_stream(3, LAUNCH))})
    assert_blocked(judge(mail(("docs.zip", zipped))), "docs.zip > docs/form.pdf")
    zipped = make_zip({"form.pdf": document(JAVASCRIPT)})
    assert_accepted(judge(mail(("docs.zip", zipped))))
    assert_blocked(
        judge(mail(("docs.zip", zipped)), block_extensions=WITH_JAVASCRIPT), "docs.zip > form.pdf"
    )


def test_pdf_with_an_undecodable_object_stream_is_held() -> None:
    lzw = pdf_stream(b"/Type /ObjStm /N 1 /First 4 /Filter /LZWDecode", b"\x80\x0b\x60\x50")
    result = judge(mail(("scan.pdf", pdf_file(CATALOG, PAGES, lzw))))
    assert result.decision == Decision.QUARANTINE
    assert (
        result.reason == "attachment cannot be inspected: undecodable pdf object stream (scan.pdf)"
    )
    assert_accepted(
        judge(mail(("scan.pdf", pdf_file(CATALOG, PAGES, lzw))), uninspectable="accept")
    )


def test_pdf_found_by_content_whatever_its_name() -> None:
    assert_blocked(judge(mail(("scan.jpg", document(LAUNCH)))), "scan.jpg")
    assert_blocked(judge(mail((None, b"garbage\n" + document(LAUNCH)))), "unnamed")


def filespec(name: bytes, number: int) -> bytes:
    return b"<< /Type /Filespec /F " + name + b" /UF " + name + b" /EF << /F %d 0 R >> >>" % number


def embedded(data: bytes) -> bytes:
    return pdf_stream(b"/Type /EmbeddedFile /Filter /FlateDecode", zlib.compress(data))


def with_attachment(name: bytes, data: bytes) -> bytes:
    """A PDF carrying one embedded file (objects 6 and 7)."""
    names = b"/Names << /EmbeddedFiles << /Names [(f) 6 0 R] >> >>"
    catalog = b"<< /Type /Catalog /Pages 2 0 R " + names + b" >>"
    return pdf_file(catalog, PAGES, b"<< >>", PAGE, TEXT, filespec(name, 7), embedded(data))


@pytest.mark.parametrize(
    ("name", "content", "shown"),
    [
        (b"(invoice.exe)", b"harmless text", "doc.pdf > invoice.exe"),
        (b"(<FEFF0069006E0076002E006A0073>)"[1:-1], b"x", "doc.pdf > inv.js"),  # UTF-16
        (b"(holiday.jpg)", pe(), "doc.pdf > holiday.jpg"),  # by content
        (b"(tools.zip)", make_zip({"tool.exe": b"x"}), "doc.pdf > tools.zip > tool.exe"),
        (b"(q3.docx)", docx({"word/vbaProject.bin": b"x"}), "doc.pdf > q3.docx"),
        (b"(inner.pdf)", document(LAUNCH), "doc.pdf > inner.pdf"),
    ],
)
def test_files_embedded_in_pdfs_are_judged_like_members(
    name: bytes, content: bytes, shown: str
) -> None:
    assert_blocked(judge(mail(("doc.pdf", with_attachment(name, content)))), shown)


def test_harmless_files_embedded_in_pdfs_pass() -> None:
    assert_accepted(judge(mail(("doc.pdf", with_attachment(b"(notes.txt)", b"notes")))))
    data = with_attachment(b"(data.zip)", make_zip({"a.csv": b"1,2"}))
    assert_accepted(judge(mail(("doc.pdf", data))))


def test_pdf_with_an_undecodable_embedded_file_is_held() -> None:
    data = with_attachment(b"(notes.txt)", b"notes").replace(
        b"/Type /EmbeddedFile /Filter /FlateDecode", b"/Type /EmbeddedFile /Filter /LZWDecode"
    )
    result = judge(mail(("doc.pdf", data)))
    assert result.decision == Decision.QUARANTINE
    assert "doc.pdf > notes.txt" in result.reason


def test_pdf_bombs_hit_the_archive_bounds() -> None:
    dictionary = b"/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode"
    bomb = pdf_file(CATALOG, PAGES, pdf_stream(dictionary, zlib.compress(bytes(20 * MiB), 9)))
    assert judge(mail(("a.pdf", bomb))).reply == LIMIT_REPLIES["ratio"]
    nested = with_attachment(
        b"(a.pdf)", with_attachment(b"(b.pdf)", with_attachment(b"(c.pdf)", PDF))
    )
    nested = with_attachment(b"(z.pdf)", nested)
    assert judge(mail(("a.pdf", nested))).reply == LIMIT_REPLIES["depth"]


def rtf_with_object(control: bytes) -> bytes:
    return rb"{\rtf1\ansi\deff0{\fonttbl{\f0 Calibri;}}\f0 Invoice attached.\par" + control + rb"}"


@pytest.mark.parametrize(
    "rtf",
    [
        # CVE-2017-11882: an Equation Editor object
        rtf_with_object(
            rb"{\object\objemb\objupdate{\*\objclass Equation.3}\objw380\objh260"
            rb"{\*\objdata 01050000020000000b0000004571756174696f6e2e3300}}"
        ),
        # CVE-2017-0199: a link updated when opened
        rtf_with_object(rb"{\object\objautlink\objupdate\rsltpict{\*\objdata 0105}}"),
        rtf_with_object(b"{\\OBJ\r\nECT\\OBJ\r\nDATA 0105}"),  # case, CR/LF in words
        b"{\\rtx" + rtf_with_object(rb"{\*\objdata 0105}")[5:],  # "{\rt" is enough
    ],
)
def test_rtf_with_an_ole_object_is_refused(rtf: bytes) -> None:
    result = judge(mail(("letter.rtf", rtf)))
    assert_blocked(result, "letter.rtf")
    assert result.reason == "attachment type rtf-object by content (letter.rtf)"
    assert_blocked(judge(mail(("letter.doc", rtf))), "letter.doc")  # Word opens it anyway


def test_plain_rtf_is_accepted() -> None:
    rtf = rb"{\rtf1\ansi{\fonttbl{\f0 Arial;}}\f0 Write \\object in text, \b bold\b0 .\par}"
    assert_accepted(judge(mail(("letter.rtf", rtf))))


def test_rtf_shown_as_the_text_of_a_message_is_not_judged() -> None:
    """A text part without a file name is read by a person, not opened by Word."""
    body = r"{\rtf1 Here is how an exploit starts: {\object\objdata 0105}}"
    assert_accepted(judge(mail(body=body)))


def tnef(*files: tuple[str, bytes], short: str | None = None) -> bytes:
    """A winmail.dat: for each file attAttachRenddata, attAttachTitle (an 8.3 name, or
    `short`), attAttachData, attAttachment with PR_ATTACH_LONG_FILENAME (Unicode)."""
    out = [TNEF_SIGNATURE, b"\x01\x00"]
    out.append(tnef_attribute(1, 0x00078008, b"IPM.Microsoft Mail.Note\x00"))  # class
    for name, data in files:
        stem, _dot, ext = name.rpartition(".")
        title = short or f"{stem[:6]}~1.{ext[:3]}".upper()
        long_name = (name + "\x00").encode("utf-16-le")
        long_name += bytes(-len(long_name) % 4)
        props = struct.pack("<I", 1) + struct.pack("<HHII", 0x001F, 0x3707, 1, len(name) * 2 + 2)
        props += long_name
        out.append(tnef_attribute(2, 0x00069002, bytes(14)))  # attAttachRenddata
        out.append(tnef_attribute(2, 0x00018010, title.encode() + b"\x00"))  # attAttachTitle
        out.append(tnef_attribute(2, 0x0006800F, data))  # attAttachData
        out.append(tnef_attribute(2, 0x00069005, props))  # attAttachment
    return b"".join(out)


def tnef_mail(data: bytes) -> bytes:
    return raw_part('Content-Type: application/ms-tnef; name="winmail.dat"', data)


def test_tnef_is_opened_and_its_attachments_judged() -> None:
    result = judge(tnef_mail(tnef(("notes.txt", b"notes"), ("invoice.exe", b"harmless"))))
    assert_blocked(result, "winmail.dat > invoice.exe")
    assert_accepted(judge(tnef_mail(tnef(("notes.txt", b"notes"), ("photo.jpg", PNG)))))
    assert_blocked(judge(tnef_mail(tnef(("notes.txt", pe())))), "winmail.dat > notes.txt")
    # every name counts: the long one, and the 8.3 title
    long_only = tnef(("readme.txt.js", b"x"), short="README~1.TXT")
    assert_blocked(judge(tnef_mail(long_only)), "winmail.dat > readme.txt.js")
    short_only = tnef(("readme.txt", b"x"), short="README~1.JS")
    assert_blocked(judge(tnef_mail(short_only)), "winmail.dat > readme.txt")
    # inside an archive, and without archive inspection
    zipped = make_zip({"winmail.dat": tnef(("run.vbs", b"x"))})
    assert_blocked(judge(mail(("mail.zip", zipped))), "mail.zip > winmail.dat > run.vbs")
    assert_accepted(judge(tnef_mail(tnef(("payload.bin", pe()))), inspect_archives=False))


def test_tnef_members_count_against_the_archive_budget() -> None:
    data = tnef(*((f"f{i}.txt", b"x") for i in range(30)))
    result = judge(tnef_mail(data), limits=ArchiveLimits(max_members=20))
    assert result.reply == LIMIT_REPLIES["members"]


@pytest.mark.parametrize(
    "data",
    [
        tnef(("notes.txt", b"notes"))[:-7],  # truncated
        TNEF_SIGNATURE + b"\x01\x00" + struct.pack("<BII", 2, 0x0006800F, 0xFFFFFF00) + b"x",
        TNEF_SIGNATURE + bytes(range(256)) * 4,  # the right magic, then noise
    ],
)
def test_malformed_tnef_is_held(data: bytes) -> None:
    result = judge(tnef_mail(data))
    assert result.decision == Decision.QUARANTINE, result
    assert "winmail.dat" in result.reason


def test_truncated_tnef_is_still_judged_by_what_was_read() -> None:
    data = tnef(("notes.txt", b"notes"), ("invoice.exe", b"MZ" + bytes(100)))[:-120]
    assert_blocked(judge(tnef_mail(data)), "winmail.dat > INVOIC~1.EXE")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.pdf", b"%PDF-1.7\n1 0 obj << /Type /ObjStm /N 1 /First 9 /Filter /Fl >>\nstream\n"),
        ("a.pdf", b"%PDF-" + bytes(range(256)) * 8),
        ("a.pdf", b"%PDF-1.4\n/EF << /F 99999999999 0 R >> /EF /EF <<"),
        ("a.rtf", b"{\\rt" + bytes(range(256)) * 8),
        ("a.rtf", b"{\\rtf1" + b"\\" * 100_000 + b"object"),
        ("winmail.dat", TNEF_SIGNATURE),
        ("winmail.dat", TNEF_SIGNATURE + b"\x01\x00" + b"\x02" + b"\xff" * 8),
    ],
)
def test_malformed_documents_get_a_decision(name: str, data: bytes) -> None:
    result = judge(mail((name, data)))
    assert result.decision in set(Decision)


# ------------------------------------------------------------------ as a ContentCheck


def view(data: bytes, listener: str = "mx", trace: bytes = b"") -> MessageView:
    session = SessionInfo(listener, "192.0.2.7", 40000, "sess-1")
    envelope = Envelope("mallory@example.net", recipients=[RemoteRecipient("x@example.org")])
    content = trace + data
    end = data.find(b"\r\n\r\n")
    section = data[: end + 4] if end >= 0 else data  # what the runner hands checks
    return MessageView(
        session, envelope, section, content, Path("/nonexistent"), len(trace), len(data)
    )


def test_check_through_the_content_check_protocol() -> None:
    stream = io.StringIO()
    check: ContentCheck = AttachmentPolicy(log=EventLog(stream, "debug"))
    assert check.name == "attachments"
    assert check.applies(SessionInfo("mx", "192.0.2.7", 1, "s"))
    assert check.applies(SessionInfo("submission", "192.0.2.7", 1, "s"))
    data = mail(("photo.jpg", pe()))
    result = asyncio.run(check.check(view(data, trace=b"Received: from x\r\n")))
    assert_blocked(result, "photo.jpg")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["attachments.refused"]
    assert events[0]["reason"] == "attachment type exe by content (photo.jpg)"
    assert events[0]["session"] == "sess-1"
    stream.seek(0)
    stream.truncate()
    assert asyncio.run(check.check(view(mail(("a.pdf", PDF))))).decision == Decision.ACCEPT
    assert stream.getvalue() == ""


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        policy(action="bounce")
    with pytest.raises(ValueError, match="uninspectable"):
        policy(uninspectable="maybe")
    with pytest.raises(ValueError, match="at least 1"):
        policy(limits=ArchiveLimits(max_depth=0))


FUZZ_SEEDS = [
    mail(("a.zip", make_zip({"b.docx": docx({"word/vbaProject.bin": ole("VBA")})}))),
    raw_part('Content-Type: message/rfc822; name="f.eml"', mail(("x.js", b"1"))),
    nested_multiparts(6),
]
# Binary seeds, attached as they are and damaged before encoding: the documents and
# containers of the active-content checks.
FILE_SEEDS = [
    ("doc.pdf", with_attachment(b"(a.txt)", make_zip({"b.exe": b"x"}))),
    ("form.pdf", pdf_file(CATALOG, PAGES, object_stream(3, JAVASCRIPT, LAUNCH), PAGE, TEXT)),
    ("letter.rtf", rtf_with_object(rb"{\object\objemb{\*\objdata 0105}}")),
    ("winmail.dat", tnef(("notes.txt", b"notes"), ("invoice.exe", pe()))),
]


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(FUZZ_SEEDS),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=12)), max_size=6),
)
def test_damaged_messages_get_a_decision(seed: bytes, edits: list[tuple[int, bytes]]) -> None:
    """Whatever the damage, a decision and never an exception."""
    data = bytearray(seed)
    for where, noise in edits:
        position = where % (len(data) or 1)
        data[position : position + len(noise)] = noise
    result = policy().evaluate(bytes(data))
    assert result.decision in set(Decision)
    assert result.reply is None or result.reply.text.isascii()  # type: ignore[union-attr]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(FILE_SEEDS),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=12)), max_size=6),
    st.booleans(),
)
def test_damaged_documents_get_a_decision(
    seed: tuple[str, bytes], edits: list[tuple[int, bytes]], javascript: bool
) -> None:
    """PDFs, RTF and TNEF damaged anywhere: a decision, never an exception."""
    name, content = seed
    data = bytearray(content)
    for where, noise in edits:
        position = where % (len(data) or 1)
        data[position : position + len(noise)] = noise
    blocked = WITH_JAVASCRIPT if javascript else BLOCKED_BY_DEFAULT
    result = policy(block_extensions=blocked).evaluate(mail((name, bytes(data))))
    assert result.decision in set(Decision)


@pytest.mark.parametrize(
    ("header", "plain"),
    [
        (b"Subject: x\r\n\r\n", True),
        (b"Content-Type: text/plain; charset=utf-8\r\n\r\n", True),
        (b"Content-Type: TEXT/HTML\r\n\r\n", True),
        (b'Content-Type: text/plain;\r\n name="setup.exe"\r\n\r\n', False),
        (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n", False),
        (b"Content-Type: application/octet-stream\r\n\r\n", False),
        (b"Content-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\n", False),
        (b"Content-Type: text/plain\r\nContent-Type: application/x-msdownload\r\n\r\n", False),
    ],
)
def test_single_text_part_needs_no_body_read(header: bytes, plain: bool) -> None:
    from mailward.pipeline.attachments import _plain_text_only

    assert _plain_text_only(header) is plain
