"""FETCH rendering (mailward.imap.fetch): exact response bytes, RFC 9051 6.4.5 / 7.5.2,
RFC 3516 (BINARY), RFC 7162 3.1.4 (MODSEQ)."""

from __future__ import annotations

import base64
import datetime

import pytest

from mailward.imap import fetch
from mailward.imap.fetch import BlobRange, UnknownCte, needs_message, render_fetch, sets_seen
from mailward.message import mime
from mailward.proto.imap_commands import Fetch, FetchItem, Section, parse_command
from mailward.store.api import MessageInfo

JAN_1 = datetime.datetime(2024, 1, 1, 10, 0, 0, tzinfo=datetime.UTC).timestamp()

SIMPLE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: Hello\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)

TEXT_B64 = base64.b64encode("Café au lait\r\n".encode()) + b"\r\n"
BLOB = b"\x00\x01binary\x00"
MULTI = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: =?UTF-8?B?w4ljb2xl?=\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + TEXT_B64 + b"--XX\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.b64encode(BLOB) + b"\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"From: carol@example.test\r\n"
    b"\r\n"
    b"Inner body\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Transfer-Encoding: x-uuencode\r\n"
    b"\r\n"
    b"begin 644 f\r\n"
    b"end\r\n"
    b"--XX--\r\n"
)


def info(data: bytes = SIMPLE, **changes: object) -> MessageInfo:
    fields: dict[str, object] = {
        "mailbox_id": 1,
        "uid": 42,
        "size": len(data),
        "internal_date": JAN_1,
        "flags": frozenset(),
        "modseq": 7,
        "blob_id": "blob-42",
    }
    fields.update(changes)
    return MessageInfo(**fields)  # type: ignore[arg-type]


def items(text: str) -> tuple[FetchItem, ...]:
    """Fetch items as the real parser reads them from `FETCH 1 <text>`."""
    args = parse_command(b"a FETCH 1 " + text.encode()).args
    assert isinstance(args, Fetch)
    return args.items


def wire(chunks: list[bytes | BlobRange], blob: bytes) -> bytes:
    """The response bytes with each BlobRange streamed from `blob`."""
    out = bytearray()
    for chunk in chunks:
        if isinstance(chunk, BlobRange):
            out += blob[chunk.offset : chunk.offset + chunk.length]
        else:
            out += chunk
    return bytes(out)


def render(
    text: str,
    data: bytes | None = SIMPLE,
    *,
    seq: int = 1,
    uid: bool = False,
    modseq: bool = False,
    **info_changes: object,
) -> bytes:
    blob = data if data is not None else SIMPLE
    message = info(blob, **info_changes)
    chunks = render_fetch(seq, message, items(text), data, include_uid=uid, include_modseq=modseq)
    return wire(chunks, blob)


# --- metadata items -------------------------------------------------------------------------


def test_metadata_items_exact_bytes() -> None:
    flags = frozenset({"$Label", "\\Flagged", "\\Seen"})
    out = render("(FLAGS INTERNALDATE RFC822.SIZE UID MODSEQ)", None, seq=3, flags=flags, size=1234)
    assert out == (
        b"* 3 FETCH (FLAGS (\\Seen \\Flagged $Label) "
        b'INTERNALDATE " 1-Jan-2024 10:00:00 +0000" RFC822.SIZE 1234 UID 42 MODSEQ (7))\r\n'
    )


def test_flags_empty_and_recent_first() -> None:
    assert render("FLAGS", None) == b"* 1 FETCH (FLAGS ())\r\n"
    out = render("FLAGS", None, flags=frozenset({"\\Deleted", "\\Recent", "zeta", "Alpha"}))
    assert out == b"* 1 FETCH (FLAGS (\\Recent \\Deleted Alpha zeta))\r\n"


def test_items_keep_request_order() -> None:
    out = render("(RFC822.SIZE FLAGS UID)", None)
    assert out == b"* 1 FETCH (RFC822.SIZE %d FLAGS () UID 42)\r\n" % len(SIMPLE)


def test_uid_fetch_adds_uid_first_once() -> None:
    assert render("FLAGS", None, uid=True) == b"* 1 FETCH (UID 42 FLAGS ())\r\n"
    assert render("(FLAGS UID)", None, uid=True) == b"* 1 FETCH (FLAGS () UID 42)\r\n"


def test_modseq_added_at_end_when_asked_by_session() -> None:
    assert render("FLAGS", None, modseq=True) == b"* 1 FETCH (FLAGS () MODSEQ (7))\r\n"
    assert render("(MODSEQ FLAGS)", None, modseq=True) == b"* 1 FETCH (MODSEQ (7) FLAGS ())\r\n"


def test_include_flags_after_implicit_seen() -> None:
    message = info(flags=frozenset({"\\Seen"}))
    chunks = render_fetch(
        1,
        message,
        items("BODY[TEXT]"),
        SIMPLE,
        include_uid=True,
        include_modseq=True,
        include_flags=True,
    )
    assert wire(chunks, SIMPLE) == (
        b"* 1 FETCH (UID 42 BODY[TEXT] {12}\r\nHello Bob.\r\n FLAGS (\\Seen) MODSEQ (7))\r\n"
    )


def test_duplicate_items_answered_once() -> None:
    assert render("(FLAGS FLAGS)", None) == b"* 1 FETCH (FLAGS ())\r\n"


# --- whole message: streamed ranges -----------------------------------------------------------


@pytest.mark.parametrize("data", [None, SIMPLE], ids=["not-loaded", "loaded"])
@pytest.mark.parametrize(
    ("request_text", "name"),
    [("BODY[]", b"BODY[]"), ("BODY.PEEK[]", b"BODY[]"), ("RFC822", b"RFC822")],
)
def test_whole_message_is_a_blob_range(data: bytes | None, request_text: str, name: bytes) -> None:
    chunks = render_fetch(
        1, info(), items(request_text), data, include_uid=False, include_modseq=False
    )
    n = len(SIMPLE)
    assert chunks == [b"* 1 FETCH (" + name + b" {%d}\r\n" % n, BlobRange(0, n), b")\r\n"]


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        ("<0.4>", b"BODY[]<0> {4}\r\nFrom"),
        ("<6.5>", b"BODY[]<6> {5}\r\nAlice"),
        # RFC 9051 6.4.5: truncated at the end, still answered as a partial
        ("<0.100000>", b"BODY[]<0> {%d}\r\n" % len(SIMPLE) + SIMPLE),
        (f"<{len(SIMPLE) - 4}.100>", b"BODY[]<%d> {4}\r\nb.\r\n" % (len(SIMPLE) - 4)),
        # RFC 9051 6.4.5: start beyond the end is the empty string
        ("<5000.10>", b'BODY[]<5000> ""'),
        (f"<{len(SIMPLE)}.10>", b'BODY[]<%d> ""' % len(SIMPLE)),
    ],
)
@pytest.mark.parametrize("data", [None, SIMPLE], ids=["not-loaded", "loaded"])
def test_whole_message_partial(partial: str, expected: bytes, data: bytes | None) -> None:
    assert render("BODY.PEEK[]" + partial, data) == b"* 1 FETCH (" + expected + b")\r\n"


def test_big_message_not_loaded_is_streamed() -> None:
    size = 25 * 1024 * 1024
    message = info(size=size)
    wanted = items("(UID RFC822.SIZE BODY.PEEK[] BODY[]<1000.2000000> BODY[]<26214300.500>)")
    assert not needs_message(wanted)
    chunks = render_fetch(7, message, wanted, None, include_uid=True, include_modseq=False)
    assert sum(len(c) for c in chunks if isinstance(c, bytes)) < 200  # no message octets held
    ranges = [c for c in chunks if isinstance(c, BlobRange)]
    assert ranges == [BlobRange(0, size), BlobRange(1000, 2_000_000), BlobRange(26214300, 100)]
    for index, chunk in enumerate(chunks):
        if isinstance(chunk, BlobRange):
            before = chunks[index - 1]
            assert isinstance(before, bytes)
            assert before.endswith(b"{%d}\r\n" % chunk.length)  # literal size == range length
    assert chunks[0] == b"* 7 FETCH (UID 42 RFC822.SIZE %d BODY[] {%d}\r\n" % (size, size)
    assert chunks[-1] == b")\r\n"


def test_items_needing_the_message_refuse_none() -> None:
    with pytest.raises(ValueError, match="need the message"):
        render_fetch(1, info(), items("ENVELOPE"), None, include_uid=False, include_modseq=False)


# --- sections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("BODY[TEXT]", b"BODY[TEXT] {12}\r\nHello Bob.\r\n"),
        ("RFC822.TEXT", b"RFC822.TEXT {12}\r\nHello Bob.\r\n"),
        ("BODY.PEEK[1]", b"BODY[1] {12}\r\nHello Bob.\r\n"),
        (
            "BODY.PEEK[HEADER.FIELDS (Subject FROM)]",
            b"BODY[HEADER.FIELDS (SUBJECT FROM)] {52}\r\n"
            b"From: Alice <alice@example.test>\r\nSubject: Hello\r\n\r\n",
        ),
        (
            "BODY.PEEK[HEADER.FIELDS.NOT (from to date message-id)]",
            b"BODY[HEADER.FIELDS.NOT (FROM TO DATE MESSAGE-ID)] {18}\r\nSubject: Hello\r\n\r\n",
        ),
        (
            "BODY.PEEK[HEADER.FIELDS (X-Absent)]",
            b"BODY[HEADER.FIELDS (X-ABSENT)] {2}\r\n\r\n",
        ),
        ("BODY.PEEK[TEXT]<6.100>", b"BODY[TEXT]<6> {6}\r\nBob.\r\n"),
        ("BODY.PEEK[TEXT]<0.5>", b'BODY[TEXT]<0> "Hello"'),
        ("BODY.PEEK[TEXT]<99.5>", b'BODY[TEXT]<99> ""'),
        # sections that do not exist, or mean nothing for the part: the empty string
        ("BODY.PEEK[2]", b'BODY[2] ""'),
        ("BODY.PEEK[1.HEADER]", b'BODY[1.HEADER] ""'),
        ("BODY.PEEK[1.2.3]", b'BODY[1.2.3] ""'),
    ],
)
def test_simple_sections(request_text: str, expected: bytes) -> None:
    assert render(request_text) == b"* 1 FETCH (" + expected + b")\r\n"


def test_header_and_rfc822_header() -> None:
    header = SIMPLE[: SIMPLE.index(b"\r\n\r\n") + 4]
    literal = b"{%d}\r\n" % len(header) + header
    assert render("BODY.PEEK[HEADER]") == b"* 1 FETCH (BODY[HEADER] " + literal + b")\r\n"
    assert render("RFC822.HEADER") == b"* 1 FETCH (RFC822.HEADER " + literal + b")\r\n"


def test_field_name_needing_quotes_is_sent_as_a_string() -> None:
    item = FetchItem("BODY", Section((), "HEADER.FIELDS", ('X"Q',)), peek=True)
    chunks = render_fetch(1, info(), [item], SIMPLE, include_uid=False, include_modseq=False)
    assert wire(chunks, SIMPLE).startswith(b'* 1 FETCH (BODY[HEADER.FIELDS ("X\\"Q")] {2}\r\n')


def multi(text: str, **kw: object) -> bytes:
    return render(text, MULTI, **kw)  # type: ignore[arg-type]


def section_bytes(request_text: str, name: bytes, content: bytes) -> None:
    expected = b"* 1 FETCH (" + name + b" {%d}\r\n" % len(content) + content + b")\r\n"
    assert multi(request_text) == expected


def test_nested_part_sections() -> None:
    assert multi("BODY.PEEK[1]") == b'* 1 FETCH (BODY[1] "' + TEXT_B64[:-2] + b'")\r\n'
    section_bytes(
        "BODY.PEEK[1.MIME]",
        b"BODY[1.MIME]",
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    )
    section_bytes(
        "BODY.PEEK[3.HEADER]",
        b"BODY[3.HEADER]",
        b"Subject: inner\r\nFrom: carol@example.test\r\n\r\n",
    )
    section_bytes(
        "BODY.PEEK[3.HEADER.FIELDS (FROM)]",
        b"BODY[3.HEADER.FIELDS (FROM)]",
        b"From: carol@example.test\r\n\r\n",
    )
    assert multi("BODY.PEEK[3.TEXT]") == b'* 1 FETCH (BODY[3.TEXT] "Inner body")\r\n'
    assert multi("BODY.PEEK[3.1]") == b'* 1 FETCH (BODY[3.1] "Inner body")\r\n'
    assert multi("BODY.PEEK[5]") == b'* 1 FETCH (BODY[5] "")\r\n'
    assert multi("BODY.PEEK[2.1]") == b'* 1 FETCH (BODY[2.1] "")\r\n'


def test_body_section_with_nul_is_a_plain_literal() -> None:
    data = b"Subject: x\r\n\r\na\x00b"
    out = render("BODY.PEEK[TEXT]", data)
    assert out == b"* 1 FETCH (BODY[TEXT] {3}\r\na\x00b)\r\n"  # never ~{n} outside BINARY


# --- BINARY (RFC 3516) ---------------------------------------------------------------------------


def test_binary_decodes_the_transfer_encoding() -> None:
    text = "Café au lait\r\n".encode()
    assert multi("BINARY.PEEK[1]") == b"* 1 FETCH (BINARY[1] {%d}\r\n" % len(text) + text + b")\r\n"


def test_binary_with_nul_is_literal8() -> None:
    assert multi("BINARY.PEEK[2]") == b"* 1 FETCH (BINARY[2] ~{9}\r\n" + BLOB + b")\r\n"


def test_binary_size_and_partial() -> None:
    out = multi("(BINARY.SIZE[2] BINARY.SIZE[1] BINARY.PEEK[2]<2.6>)")
    text_size = len("Café au lait\r\n".encode())
    assert out == b'* 1 FETCH (BINARY.SIZE[2] 9 BINARY.SIZE[1] %d BINARY[2]<2> "binary")\r\n' % (
        text_size
    )


def test_binary_of_whole_message_and_identity_part() -> None:
    assert multi("BINARY.SIZE[]") == b"* 1 FETCH (BINARY.SIZE[] %d)\r\n" % len(MULTI)
    inner = b"Subject: inner\r\nFrom: carol@example.test\r\n\r\nInner body"
    assert (
        multi("BINARY.PEEK[3]") == b"* 1 FETCH (BINARY[3] {%d}\r\n" % len(inner) + inner + b")\r\n"
    )
    assert render("BINARY.PEEK[1]") == b"* 1 FETCH (BINARY[1] {12}\r\nHello Bob.\r\n)\r\n"


def test_binary_of_missing_part() -> None:
    assert multi("BINARY.PEEK[9]") == b"* 1 FETCH (BINARY[9] NIL)\r\n"
    assert multi("BINARY.SIZE[9]") == b"* 1 FETCH (BINARY.SIZE[9] 0)\r\n"


@pytest.mark.parametrize("request_text", ["BINARY.PEEK[4]", "BINARY[4]", "BINARY.SIZE[4]"])
def test_binary_unknown_cte(request_text: str) -> None:
    with pytest.raises(UnknownCte):
        multi(request_text)
    # BODY[4] is fine: no decoding involved
    assert multi("BODY.PEEK[4]") == b"* 1 FETCH (BODY[4] {16}\r\nbegin 644 f\r\nend)\r\n"


# --- structure items ------------------------------------------------------------------------


def test_envelope_and_body() -> None:
    out = render("(ENVELOPE BODY)")
    assert out == (
        b'* 1 FETCH (ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "Hello" '
        b'(("Alice" NIL "alice" "example.test")) (("Alice" NIL "alice" "example.test")) '
        b'(("Alice" NIL "alice" "example.test")) ((NIL NIL "bob" "example.test")) '
        b'NIL NIL NIL "<1@example.test>") '
        b'BODY ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 1))\r\n'
    )


def test_bodystructure_has_extension_data() -> None:
    out = render("BODYSTRUCTURE")
    assert out == (
        b'* 1 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 1 '
        b"NIL NIL NIL NIL))\r\n"
    )


def test_multipart_bodystructure_names_parts() -> None:
    out = multi("BODYSTRUCTURE")
    assert out.startswith(b'* 1 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8")')
    assert b'"MESSAGE" "RFC822"' in out and b'"MIXED" ("BOUNDARY" "XX")' in out


def test_structure_cache_parses_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_parse = mime.parse

    def counting(data: bytes) -> mime.Part:
        calls.append(len(data))
        return real_parse(data)

    monkeypatch.setattr(mime, "parse", counting)
    cache: dict[str, mime.Part] = {}
    message = info(MULTI)
    for text in ("BODYSTRUCTURE", "ENVELOPE", "BODY.PEEK[1]", "BINARY.PEEK[2]"):
        render_fetch(
            1,
            message,
            items(text),
            MULTI,
            include_uid=False,
            include_modseq=False,
            structure_cache=cache,
        )
    assert calls == [len(MULTI)]
    assert list(cache) == ["blob-42"]
    render_fetch(
        1, message, items("(ENVELOPE BODY)"), MULTI, include_uid=False, include_modseq=False
    )
    assert len(calls) == 2  # without a cache: parsed once per response


def test_structure_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "STRUCTURE_CACHE_LIMIT", 3)
    cache: dict[str, mime.Part] = {}
    for n in range(5):
        message = info(blob_id=f"b{n}")
        render_fetch(
            1,
            message,
            items("BODY"),
            SIMPLE,
            include_uid=False,
            include_modseq=False,
            structure_cache=cache,
        )
    assert list(cache) == ["b2", "b3", "b4"]


# --- needs_message / sets_seen ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "needed"),
    [
        ("(FLAGS INTERNALDATE RFC822.SIZE UID MODSEQ)", False),
        ("FAST", False),
        ("BODY[]", False),
        ("BODY.PEEK[]<0.100>", False),
        ("RFC822", False),
        ("ALL", True),  # ENVELOPE
        ("BODY", True),
        ("BODYSTRUCTURE", True),
        ("BODY.PEEK[HEADER]", True),
        ("BODY[TEXT]", True),
        ("BODY[1]", True),
        ("RFC822.HEADER", True),
        ("RFC822.TEXT", True),
        ("BINARY[]", True),
        ("BINARY.PEEK[1]", True),
        ("BINARY.SIZE[1]", True),
        ("(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])", True),
    ],
)
def test_needs_message(request_text: str, needed: bool) -> None:
    assert needs_message(items(request_text)) is needed


@pytest.mark.parametrize(
    ("request_text", "seen"),
    [
        ("BODY[]", True),
        ("BODY[TEXT]<0.10>", True),
        ("BODY.PEEK[]", False),
        ("BINARY[1]", True),
        ("BINARY.PEEK[1]", False),
        ("BINARY.SIZE[1]", False),
        ("RFC822", True),
        ("RFC822.TEXT", True),
        ("RFC822.HEADER", False),
        ("(FLAGS BODY BODYSTRUCTURE ENVELOPE)", False),
        ("(FLAGS BODY.PEEK[1] BODY[2])", True),
    ],
)
def test_sets_seen(request_text: str, seen: bool) -> None:
    assert sets_seen(items(request_text)) is seen


# --- the index-only fast path --------------------------------------------------------------


@pytest.mark.parametrize(
    "request_text",
    ["FLAGS", "(UID FLAGS)", "(FLAGS UID)", "FAST", "(MODSEQ FLAGS)", "(INTERNALDATE UID)"],
)
@pytest.mark.parametrize("uid", [False, True])
@pytest.mark.parametrize("modseq", [False, True])
@pytest.mark.parametrize(
    "flags", [frozenset(), frozenset({"\\Seen", "$Work", "\\Recent", "\\Answered"})]
)
def test_metadata_renderer_matches_render_fetch(
    request_text: str, uid: bool, modseq: bool, flags: frozenset[str]
) -> None:
    fast = fetch.metadata_renderer(items(request_text), include_uid=uid, include_modseq=modseq)
    assert fast is not None
    expected = render(request_text, None, seq=9, uid=uid, modseq=modseq, flags=flags)
    assert fast(9, info(SIMPLE, flags=flags)) == expected


@pytest.mark.parametrize(
    "request_text", ["ENVELOPE", "(FLAGS BODY.PEEK[])", "ALL", "BINARY.SIZE[1]"]
)
def test_metadata_renderer_declines_message_items(request_text: str) -> None:
    assert (
        fetch.metadata_renderer(items(request_text), include_uid=True, include_modseq=False) is None
    )
