r"""What a file really is, from its bytes (magic numbers), never from its declared
Content-Type or its name (NIST SP 800-45 5.x: content filtering by file type).

`sniff(data)` names the content with the extension it usually has ("exe" for any PE
or DOS executable, "iso" for an ISO 9660 / UDF image) or with a generic label where
there is no single extension ("script" for a "#!" script, "macho", "elf"). None means
"nothing this module recognises" (plain text, most media). Archive formats have their
own labels (`ARCHIVE_FORMATS`); `OPEN_ARCHIVES` are those `message.archives` can open.

Office containers need a look inside:

- OLE2 compound files ([MS-CFB]): VBA projects live in storages "Macros" (Word) or
  "_VBA_PROJECT_CUR" (Excel) holding a "VBA" storage and a "_VBA_PROJECT" stream
  ([MS-OVBA] 2.2). `ole_has_macros` looks for those names (UTF-16LE, any case) where
  a directory entry must start (128-octet entries in 512- or 4096-octet sectors, so
  at offsets that are multiples of 128) and checks that the entry is plausible (name
  length field, object type, colour). Windows Installer packages (.msi/.msp/.mst) are
  OLE files whose root entry carries their CLSID ({000C1084-...} and siblings).
- ZIP-based files are judged by member names (`zip_container_kind`): a JAR has
  META-INF/MANIFEST.MF, an Android package AndroidManifest.xml, an MSIX/AppX
  AppxManifest.xml; `member_labels` finds macros among OOXML / OpenDocument members.

Active content in documents (NIST SP 800-45 v2 "active content"; `active_labels`,
labels in `ACTIVE_CONTENT_LABELS`):

- "pdf-launch": a PDF (`is_pdf`: "%PDF-" in the first 1024 octets, as readers look
  for it) with a /Launch action (ISO 32000-1 12.6.4.5: runs a program); and
  "pdf-javascript": a /JavaScript name (12.6.4.16, the document-level JavaScript name
  tree 7.7.4) or a /JS name followed by its value (a string or a reference: three
  characters alone turn up by chance in binary streams). Names are matched as PDF
  names, also written with "#hh" escapes (7.3.5: "/J#61vaScript"), case-sensitively
  (as readers do), followed by a delimiter (so "/JSON" is not "/JS"). `pdf_labels`
  reads the octets it is given: the file itself here (what is not in a stream, and
  uncompressed streams); `archives.pdf_inside` decodes the object streams (7.5.7) and
  hands them to it too. A literal string holding the text "/Launch" counts as well
  (rare outside PDFs about PDFs). Not seen: names in compressed streams other than
  object streams, in an encrypted PDF's object streams, JavaScript in XFA forms (XML
  <script> elements), and other actions (/SubmitForm, /ImportData, /GoToE,
  /RichMedia). "pdf-launch" is blocked by default; "pdf-javascript" is not (many PDF
  forms use JavaScript): add it to the block list to refuse those too.
- "rtf-object": an RTF document (`{\rt` at the start: Word asks no more) holding an
  OLE object or a link to one: the control words \object, \objdata, \objupdate,
  \objemb, \objlink, \objautlink, \objocx, \objhtml, \objsub, \objpub,
  \objicemb (RTF 1.9.1 "Objects"; the carriers of CVE-2017-0199 and CVE-2017-11882),
  in any case and with CR/LF inside them (Word ignores CR and LF), not when the
  backslash is itself escaped (\\object is text). Not seen: control words Word
  would build from \'hh escapes or \bin data (it does not), an RTF that does not start
  with `{\rt` (Word opens it as text), and RTF inside other containers (the
  compressed RTF body of a TNEF message).

Every function here is pure, never raises on any input, and reads a bounded prefix
(or, for OLE, scans with C-speed regular expressions).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable

__all__ = [
    "ACTIVE_CONTENT_LABELS",
    "ARCHIVE_FORMATS",
    "BLOCKED_BY_DEFAULT",
    "EXECUTABLE_LABELS",
    "OPEN_ARCHIVES",
    "active_labels",
    "is_pdf",
    "member_labels",
    "ole_has_macros",
    "pdf_labels",
    "pdf_name_regex",
    "rtf_has_object",
    "sniff",
    "zip_container_kind",
]

# Labels of content that runs (blocked by the default attachment policy).
EXECUTABLE_LABELS = frozenset(
    {"exe", "elf", "macho", "script", "class", "dex", "iso", "lnk", "msi", "vhd", "vhdx"}
    | {"dmg", "chm", "reg", "jar", "apk", "msix", "macro"}
)
# File name extensions (and the labels above) of content that runs when opened: the
# default block list of the attachment policy (NIST SP 800-45 5.x; Outlook's "Level 1"
# list is the usual reference). Disk images are here because files inside them escape
# Windows' Mark-of-the-Web; macro-enabled Office formats because macros run.
BLOCKED_BY_DEFAULT: tuple[str, ...] = (
    # Windows programs, libraries, installers and app packages
    *("exe", "scr", "com", "pif", "cpl", "dll", "sys", "drv", "ocx", "msi", "msp", "mst"),
    *("msu", "msix", "msixbundle", "appx", "appxbundle", "appinstaller", "application"),
    *("appref-ms", "gadget", "xbap", "xll"),
    # scripts
    *("bat", "cmd", "js", "jse", "vbs", "vbe", "vb", "wsf", "wsh", "ws", "wsc", "sct"),
    *("hta", "htc", "ps1", "ps1xml", "ps2", "ps2xml", "psc1", "psc2", "psm1", "psd1"),
    *("msh", "msh1", "msh2", "mshxml", "msh1xml", "msh2xml", "scf", "inf", "ins", "isp"),
    *("reg", "sh", "bash", "csh", "ksh", "command"),
    # Java and Android
    *("jar", "jnlp", "class", "apk", "dex"),
    # shortcuts that run or fetch code
    *("lnk", "url", "website", "settingcontent-ms", "library-ms", "searchconnector-ms"),
    # disk images
    *("iso", "img", "vhd", "vhdx", "dmg"),
    # help files, consoles, Access applications
    *("chm", "hlp", "msc", "mde", "accde", "ade", "adp"),
    # macro-enabled Office documents
    *("docm", "dotm", "xlsm", "xltm", "xlam", "xla", "pptm", "potm", "ppam", "ppsm", "sldm"),
    # macOS
    *("app", "pkg"),
    # content recognised by sniffing that has no extension of its own
    *("elf", "macho", "script", "macro"),
    # active content in documents (`active_labels`; "pdf-javascript" is left out:
    # many PDF forms use JavaScript, add it to refuse those too)
    *("pdf-launch", "rtf-object"),
)
# Labels `active_labels` gives (module doc).
ACTIVE_CONTENT_LABELS = frozenset({"pdf-launch", "pdf-javascript", "rtf-object"})
# "tnef": a Transport Neutral Encapsulation Format stream (winmail.dat, MS-OXTNEF),
# opened like an archive by `message.archives`.
ARCHIVE_FORMATS = frozenset(
    {"zip", "rar", "7z", "gzip", "bzip2", "xz", "tar", "cab", "arj", "lzh", "ace", "zstd"}
    | {"lzip", "compress", "tnef"}
)
OPEN_ARCHIVES = frozenset({"zip", "gzip", "bzip2", "xz", "tar", "tnef"})

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_TNEF_MAGIC = b"\x78\x9f\x3e\x22"  # 0x223E9F78 little-endian (MS-OXTNEF 2.1.3.1)
_LNK_MAGIC = b"L\x00\x00\x00\x01\x14\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00F"
_MACHO_MAGICS = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")
_ISO_OFFSETS = (0x8001, 0x8801, 0x9001)  # ISO 9660 volume descriptors (ECMA-119 8)
_ISO_IDS = (b"CD001", b"BEA01", b"NSR02", b"NSR03")  # ISO 9660, then UDF (ECMA-167)
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_SHEBANG = re.compile(rb"#![ \t]*/")
_REG_HEADERS = (b"windows registry editor version", b"regedit4")
# Windows Installer database, patch and transform CLSIDs {000C1084/1086/1082-0000-0000-
# C000-000000000046}, as stored (little-endian first three fields) in the root entry.
_MSI_CLSIDS = frozenset(
    bytes([low, 0x10, 0x0C, 0]) + b"\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46"
    for low in (0x84, 0x86, 0x82)
)
_VBA_NAMES = frozenset({"macros", "vba", "_vba_project", "_vba_project_cur"})


def sniff(data: bytes) -> str | None:
    """A label for what `data` is (see the module doc), or None."""
    head = data[:64]
    if head.startswith(b"MZ") and _is_dos_executable(data):
        return "exe"
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head.startswith(_MACHO_MAGICS):
        return "macho"
    if head.startswith(b"\xca\xfe\xba\xbe") and len(head) >= 8:
        # Shared by Java class files (then minor, major >= 45) and fat Mach-O (then a
        # small architecture count), the test file(1) uses.
        return "macho" if struct.unpack_from(">I", head, 4)[0] < 20 else "class"
    if re.match(rb"dex\n\d\d\d\x00", head):
        return "dex"
    if head.startswith(_OLE_MAGIC):
        return "msi" if _ole_root_clsid(data) in _MSI_CLSIDS else "ole"
    if head.startswith(_LNK_MAGIC):
        return "lnk"
    if head.startswith(b"ITSF"):
        return "chm"
    if head.startswith((b"conectix", b"vhdxfile")):
        return "vhd" if head.startswith(b"conectix") else "vhdx"
    if any(data[offset : offset + 5] in _ISO_IDS for offset in _ISO_OFFSETS):
        return "iso"
    archive = _archive_format(data)
    if archive is not None:
        return archive
    if is_pdf(data):
        return "pdf"
    if head.startswith(b"{\\rt"):
        return "rtf"  # Word opens as RTF whatever follows "{\rt" ("{\rtx", "{\rt0")
    text = _text_start(head)
    if _SHEBANG.match(text):
        return "script"
    if text.lower().startswith(_REG_HEADERS):
        return "reg"
    if len(data) >= 512 and data[-512:].startswith(b"conectix"):
        return "vhd"  # a fixed VHD has its footer only at the end
    if len(data) >= 512 and data[-512:].startswith(b"koly"):
        return "dmg"
    return None


def _is_dos_executable(data: bytes) -> bool:
    """ "MZ" starts a PE (its e_lfanew points at "PE\\0\\0") or a DOS program; a text
    that merely begins with "MZ" has no control octets in its first 64."""
    if len(data) >= 0x40:
        (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
        if data[pe_offset : pe_offset + 4] == b"PE\x00\x00":
            return True
    return any(byte < 0x09 for byte in data[2:64])


def _archive_format(data: bytes) -> str | None:
    head = data[:16]
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return "zip"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x1f\x9d"):
        return "compress"
    if re.match(rb"BZh[1-9]1AY&SY", head):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    if head.startswith(b"LZIP"):
        return "lzip"
    if head.startswith(b"MSCF\x00\x00\x00\x00"):
        return "cab"
    if head.startswith(_TNEF_MAGIC):
        return "tnef"
    if head.startswith(b"\x60\xea"):
        return "arj"
    if re.match(rb"..-l[hz][0-9a-z]-", head, re.DOTALL):
        return "lzh"
    if head[7:14] == b"**ACE**":
        return "ace"
    if data[257:262] == b"ustar":
        return "tar"
    return None


def _text_start(head: bytes) -> bytes:
    """The start of a text without its byte order mark, UTF-16 read as ASCII."""
    for bom in _BOMS:
        if head.startswith(bom):
            head = head[len(bom) :]
            if bom != _BOMS[0]:
                head = head.replace(b"\x00", b"")
            break
    return head.lstrip(b" \t\r\n")


# ----------------------------------------------------------------------------- OLE2


def _ole_name_pattern(names: Iterable[str]) -> re.Pattern[bytes]:
    """Directory entry names as UTF-16LE, case-insensitively ([MS-CFB] 2.6.4), each
    followed by its terminating NUL character."""
    alternatives = []
    for name in sorted(names, key=len, reverse=True):
        pieces = (f"[{re.escape(c.upper())}{re.escape(c.lower())}]\x00" for c in name)
        alternatives.append("".join(pieces))
    return re.compile(("(?:" + "|".join(alternatives) + ")\x00\x00").encode("latin-1"))


_VBA_PATTERN = _ole_name_pattern(_VBA_NAMES)
_ROOT_PATTERN = _ole_name_pattern(["Root Entry"])


def _entry_ok(data: bytes, offset: int, name_bytes: int) -> bool:
    """A plausible [MS-CFB] 2.6 directory entry at `offset` (a multiple of 128)."""
    if offset % 128 or offset < 512 or offset + 128 > len(data):
        return False
    (declared,) = struct.unpack_from("<H", data, offset + 64)
    return declared == name_bytes and data[offset + 66] in (1, 2, 5) and data[offset + 67] < 2


def ole_has_macros(data: bytes) -> bool:
    """A VBA project storage or stream in an OLE2 file ([MS-OVBA] 2.2.1)."""
    if not data.startswith(_OLE_MAGIC):
        return False
    for match in _VBA_PATTERN.finditer(data, 512):
        if _entry_ok(data, match.start(), match.end() - match.start()):
            return True
    return False


def _ole_root_clsid(data: bytes) -> bytes:
    for match in _ROOT_PATTERN.finditer(data, 512):
        offset = match.start()
        if _entry_ok(data, offset, match.end() - offset) and data[offset + 66] == 5:
            return data[offset + 80 : offset + 96]
    return b""


# ----------------------------------------------------------------------------- ZIP


def zip_container_kind(names: Iterable[str]) -> str | None:
    """What a ZIP-based file is, from its member names: "jar", "apk" or "msix" for
    packages that install or run code; "ooxml" (Office Open XML, ECMA-376 Part 2: a
    [Content_Types].xml) or "odf" (OpenDocument: a `mimetype` member) for documents
    whose members `member_labels` judges; None for a plain archive."""
    found = {name.replace("\\", "/").lower() for name in names}
    if "androidmanifest.xml" in found or "classes.dex" in found:
        return "apk"
    if "appxmanifest.xml" in found or "appxmetadata/appxbundlemanifest.xml" in found:
        return "msix"
    if "meta-inf/manifest.mf" in found:
        return "jar"
    if "[content_types].xml" in found:
        return "ooxml"
    if "mimetype" in found and "meta-inf/manifest.xml" in found:
        return "odf"
    return None


_ODF_LIBRARY_INDEXES = frozenset(
    {"script-lc.xml", "script-lb.xml", "dialog-lc.xml", "dialog-lb.xml"}
)


def member_labels(container: str | None, name: str, data: bytes | None) -> set[str]:
    """{"macro"} when a member of an Office document (`container` as from
    `zip_container_kind`) is active content: in OOXML a VBA project (vbaProject.bin;
    under another name it is still an OLE2 file with a VBA storage, which the caller
    finds with `ole_has_macros`), Excel 4.0 macro sheets, ActiveX controls, or a
    [Content_Types].xml declaring macro-enabled parts; in OpenDocument a Basic module
    or a script under Scripts/."""
    path = name.replace("\\", "/").lower().lstrip("/")
    base = path.rsplit("/", 1)[-1]
    found = False
    if container == "ooxml":
        found = (
            base == "vbaproject.bin"
            or "/macrosheets/" in f"/{path}"
            or ("/activex/" in f"/{path}" and base.endswith(".bin"))
        )
        if base == "[content_types].xml" and data is not None:
            head = data[: 1024 * 1024].lower()
            found = b"macroenabled" in head or b"vbaproject" in head
    elif container == "odf":
        module = path.startswith("basic/") and base not in _ODF_LIBRARY_INDEXES
        found = (module and base.endswith(".xml")) or (
            path.startswith("scripts/") and not path.endswith("/")
        )
    return {"macro"} if found else set()


# ----------------------------------------------------------------------------- active


def active_labels(data: bytes) -> set[str]:
    """Labels of active content in `data` that need no decompression (module doc):
    "pdf-launch" / "pdf-javascript" from a PDF's own octets, "rtf-object"."""
    if is_pdf(data):
        return pdf_labels(data)
    if data.startswith(b"{\\rt") and rtf_has_object(data):
        return {"rtf-object"}
    return set()


def is_pdf(data: bytes) -> bool:
    """A PDF header within the first 1024 octets (where readers accept it)."""
    return b"%PDF-" in data[:1024]


_PDF_DELIMITER = rb"(?=[\x00\t\n\x0c\r ()<>\[\]{}/%]|\Z)"  # ISO 32000-1 7.2.2


def pdf_name_regex(names: Iterable[str]) -> bytes:
    """A regular expression (source) matching the PDF names `names` with their
    slash, each character as itself or as a "#hh" escape (ISO 32000-1 7.3.5, hex
    digits in any case), and the name ending there."""
    alternatives = []
    for name in sorted(names, key=len, reverse=True):
        pieces = []
        for char in name:
            hexes = "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{ord(char):02x}")
            pieces.append(f"(?:{re.escape(char)}|#{hexes})")
        alternatives.append("".join(pieces))
    return b"/(?:" + "|".join(alternatives).encode("ascii") + b")" + _PDF_DELIMITER


_PDF_LAUNCH = re.compile(pdf_name_regex(["Launch"]))
# /JS only with a value after it (a string, or a reference to a stream), whitespace
# and comments between: three characters alone turn up by chance in binary streams.
_PDF_JAVASCRIPT = re.compile(
    pdf_name_regex(["JavaScript"])
    + b"|"
    + pdf_name_regex(["JS"])
    + rb"(?:[\x00\t\n\x0c\r ]|%[^\r\n]*)*(?:[(<]|[0-9]+[\x00\t\n\x0c\r ]+[0-9]+[\x00\t\n\x0c\r ]+R)"
)


def pdf_labels(data: bytes) -> set[str]:
    """ "pdf-launch" and "pdf-javascript" for the names found in the PDF octets `data`
    (a file, or a decoded object stream): module doc."""
    found = set()
    if _PDF_LAUNCH.search(data):
        found.add("pdf-launch")
    if _PDF_JAVASCRIPT.search(data):
        found.add("pdf-javascript")
    return found


_RTF_OBJECT_WORDS = (
    *("object", "objdata", "objupdate", "objemb", "objlink", "objautlink", "objocx"),
    *("objhtml", "objsub", "objpub", "objicemb"),
)
_RTF_OBJECT = re.compile(
    # A backslash, then one of the words, CR/LF allowed anywhere in it, then no
    # further letter (`rtf_has_object` checks that the backslash is not escaped).
    rb"\\[\r\n]*(?:"
    + b"|".join(
        b"".join(re.escape(c).encode("ascii") + rb"[\r\n]*" for c in word)
        for word in sorted(_RTF_OBJECT_WORDS, key=len, reverse=True)
    )
    + rb")(?![a-zA-Z])",
    re.IGNORECASE,
)


def rtf_has_object(data: bytes) -> bool:
    """An embedded or linked OLE object in the RTF document `data` (module doc)."""
    for match in _RTF_OBJECT.finditer(data):
        if _backslashes_before(data, match.start()) % 2 == 0:
            return True  # (after an odd number it is an escaped backslash: text)
    return False


def _backslashes_before(data: bytes, end: int) -> int:
    """How many backslashes end `data[:end]` (looked at in growing windows)."""
    size = 64
    while True:
        window = data[max(0, end - size) : end]
        run = len(window) - len(window.rstrip(b"\\"))
        if run < len(window) or len(window) == end:
            return run
        size *= 4
