"""MIME structure (RFC 2045/2046/2231) and BODY[section] (RFC 9051 6.4.5), byte-exact."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.message.mime import (
    MAX_DEPTH,
    MAX_HEADER_SCAN,
    MAX_PARTS,
    Part,
    base64_lenient,
    content_type_of,
    decoded_body,
    header_fields,
    locate,
    parse,
    parse_params,
    section,
    unfold,
)

GOLDEN = Path(__file__).parent / "golden"
CORPUS = sorted(GOLDEN.glob("*.eml"))


def load(name: str) -> bytes:
    return (GOLDEN / f"{name}.eml").read_bytes()


def body(data: bytes, part: Part) -> bytes:
    return data[part.body_start : part.end]


def all_parts(part: Part) -> list[Part]:
    out = [part]
    for child in part.children:
        out += all_parts(child)
    if part.message is not None:
        out += all_parts(part.message)
    return out


def check_offsets(data: bytes, part: Part, low: int = 0, high: int | None = None) -> None:
    high = len(data) if high is None else high
    assert low <= part.start <= part.header_end == part.body_start <= part.end <= high
    assert part.size == part.end - part.body_start
    assert part.lines == data.count(b"\n", part.body_start, part.end)
    previous = part.body_start
    for child in part.children:
        assert child.start >= previous
        check_offsets(data, child, part.body_start, part.end)
        previous = child.end
    if part.message is not None:
        assert (part.message.start, part.message.end) == (part.body_start, part.end)
        check_offsets(data, part.message, part.body_start, part.end)


# -- header block --------------------------------------------------------------


def test_header_block_includes_blank_line() -> None:
    data = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n"
    root = parse(data)
    assert data[root.start : root.header_end] == b"Subject: hi\r\nFrom: a@b\r\n\r\n"
    assert body(data, root) == b"body\r\n"
    assert (root.size, root.lines) == (6, 1)


def test_bare_lf_header_block() -> None:
    data = b"Subject: hi\n\nbody\n"
    root = parse(data)
    assert data[: root.header_end] == b"Subject: hi\n\n"
    assert body(data, root) == b"body\n"


def test_message_without_blank_line_is_all_header() -> None:
    data = b"Subject: hi\r\nnot a header"
    root = parse(data)
    assert (root.header_end, root.body_start, root.end, root.size) == (len(data),) * 3 + (0,)


def test_message_starting_with_blank_line_has_empty_header() -> None:
    data = b"\r\nSubject: this is body\r\n"
    root = parse(data)
    assert root.header_end == 2
    assert body(data, root) == b"Subject: this is body\r\n"
    assert parse(b"\nx").header_end == 1


def test_empty_message() -> None:
    root = parse(b"")
    assert (root.start, root.header_end, root.end, root.content_type) == (0, 0, 0, "text/plain")


def test_header_fields_keep_folding_and_skip_non_fields() -> None:
    data = (
        b" orphan continuation\r\n"
        b"Subject: folded\r\n  twice\r\n\tthrice\r\n"
        b"no colon here\r\n"
        b"X-Spaced : value\r\n"
        b"X-Empty:\r\n"
        b"\r\n"
    )
    root = parse(data)
    assert header_fields(data, root.start, root.header_end) == [
        (b"Subject", b" folded\r\n  twice\r\n\tthrice"),
        (b"X-Spaced", b" value"),
        (b"X-Empty", b""),
    ]


def test_unfold() -> None:
    assert unfold(b" a\r\n b\n\tc ") == b"a b\tc"


# -- Content-Type and friends ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("text/plain", (("charset", "us-ascii"),))),
        (b"Text/HTML", ("text/html", ())),
        (b'text/plain; charset="utf-8"', ("text/plain", (("charset", "utf-8"),))),
        (b"text / plain (comment) ; format=flowed", ("text/plain", (("format", "flowed"),))),
        (b"text", ("text/plain", (("charset", "us-ascii"),))),
        (b"", ("text/plain", (("charset", "us-ascii"),))),
        (b"garbage here", ("text/plain", (("charset", "us-ascii"),))),
        (
            b'multipart/mixed;\r\n boundary="a;b\\"c"; X=1',
            ("multipart/mixed", (("boundary", 'a;b"c'), ("x", "1"))),
        ),
        (b"a/b; n=1; n=2; bare; =x", ("a/b", (("n", "1"),))),
        (b'a/b; n="unterminated', ("a/b", (("n", "unterminated"),))),
    ],
)
def test_content_type(value: bytes | None, expected: tuple[str, object]) -> None:
    assert content_type_of(value) == expected


def test_digest_default_is_message_rfc822() -> None:
    assert content_type_of(None, in_digest=True) == ("message/rfc822", ())
    data = load("digest")
    root = parse(data)
    assert [child.content_type for child in root.children] == [
        "text/plain",
        "message/rfc822",
        "message/rfc822",
    ]
    assert root.children[1].message is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # RFC 2231 3: continuations
        (
            '; URL*0="ftp://"; URL*1="cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"',
            (("url", "ftp://cs.utk.edu/pub/moore/bulk-mailer/bulk-mailer.tar"),),
        ),
        # RFC 2231 4: charset and language
        (
            "; title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A",
            (("title", "This is ***fun***"),),
        ),
        # RFC 2231 4.1: both combined
        (
            "; title*0*=us-ascii'en'This%20is%20even%20more%20;"
            ' title*1*=%2A%2A%2Afun%2A%2A%2A%20; title*2="isn\'t it!"',
            (("title", "This is even more ***fun*** isn't it!"),),
        ),
        ("; name*=UTF-8''%E2%82%AC.pdf", (("name", "€.pdf"),)),
        ("; name*=iso-8859-1''r%E9sum%E9", (("name", "résumé"),)),
        ("; name*=x-unknown''caf%C3%A9", (("name", "café"),)),
        ("; name*=utf-8''bad%FF", (("name", "bad\ufffd"),)),
        ("; name=plain; name*=UTF-8''better", (("name", "better"),)),
        ("; name*1=orphan", (("name", ""),)),
        ("; name=keep; name*1=orphan", (("name", "keep"),)),
        ("; name*0*=utf-8''%E2%82; name*1*=%AC", (("name", "€"),)),
        ("; n*0=a; n*2=c", (("n", "a"),)),
    ],
)
def test_rfc2231_parameters(text: str, expected: tuple[tuple[str, str], ...]) -> None:
    assert parse_params(text) == expected


def test_rfc2231_filename_in_corpus() -> None:
    data = load("attachment_rfc2231")
    attachment = parse(data).children[1]
    assert attachment.param("name") == "résumé.pdf"
    assert attachment.disposition == (
        "attachment",
        (("filename", "€ résumé.pdf"), ("size", "1000")),
    )


def test_mime_fields_of_a_part() -> None:
    data = load("nested_related")
    notes = parse(data).children[1]
    assert notes.content_type == "text/plain"
    assert notes.params == (("charset", "us-ascii"), ("format", "flowed"))
    assert notes.description == "Reader notes"
    assert notes.language == ("en-GB", "de")
    assert notes.disposition == ("attachment", (("filename", "notes.txt"),))
    assert notes.md5 is not None and notes.id is None and notes.location is None
    image = parse(data).children[0].children[1].children[1]
    assert (image.id, image.location) == ("<logo@example.com>", "http://example.com/logo.png")
    assert image.disposition == ("inline", ())


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"", "7bit"),
        (b"Content-Transfer-Encoding: BASE64\r\n", "base64"),
        (b"Content-Transfer-Encoding: (c) Quoted-Printable \r\n", "quoted-printable"),
        (b"Content-Transfer-Encoding: ?invalid\r\n", "7bit"),
        (b"Content-Transfer-Encoding: x-uuencode\r\n", "x-uuencode"),
    ],
)
def test_transfer_encoding(header: bytes, expected: str) -> None:
    assert parse(header + b"\r\nx").encoding == expected


def test_first_occurrence_of_a_mime_field_wins() -> None:
    data = b"Content-Type: text/html\r\nContent-Type: image/png\r\n\r\n"
    assert parse(data).content_type == "text/html"


# -- multipart splitting (RFC 2046 5.1.1) --------------------------------------


def test_line_break_before_delimiter_belongs_to_delimiter() -> None:
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"preamble\r\n--b\r\n\r\none\r\n\r\n--b\r\nContent-Type: text/html\r\n\r\ntwo"
        b"\r\n--b--\r\nepilogue\r\n"
    )
    root = parse(data)
    assert [body(data, child) for child in root.children] == [b"one\r\n", b"two"]
    assert [child.lines for child in root.children] == [1, 0]
    assert data[root.children[1].start : root.children[1].header_end] == (
        b"Content-Type: text/html\r\n\r\n"
    )


def test_first_delimiter_at_body_start_and_transport_padding() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\n\n--b \t\n\na\n--b--  \n"
    root = parse(data)
    assert [body(data, child) for child in root.children] == [b"a"]


def test_longer_boundary_is_not_a_delimiter() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\n--bb\r\n--b-x\r\n--b--\r\n'
    )
    root = parse(data)
    assert [body(data, child) for child in root.children] == [b"--bb\r\n--b-x"]


def test_many_near_miss_delimiters() -> None:
    near_misses = b"--bX\r\n--b-\r\n" * 200
    data = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n"
        + near_misses
        + b"\r\n--b\r\n\r\nsecond\r\n--b\r\n\r\nthird\r\n--b--\r\n"
    )
    root = parse(data)
    assert [body(data, child) for child in root.children] == [near_misses, b"second", b"third"]


def test_unterminated_multipart_runs_to_the_end() -> None:
    data = load("unterminated_boundary")
    root = parse(data)
    assert len(root.children) == 2
    assert body(data, root.children[1]) == b"second and last, no close delimiter\r\n"
    assert root.children[1].end == len(data)


def test_multipart_without_delimiters_or_boundary_has_no_children() -> None:
    assert parse(load("missing_boundary")).children == ()
    data = b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nno delimiter\r\n"
    assert parse(data).children == ()
    data = b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n\r\nx\r\n'
    assert parse(data).children == ()


def test_adjacent_delimiters_make_an_empty_part() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n--b\r\n\r\nx\r\n--b--"
    root = parse(data)
    assert root.children[0].start == root.children[0].end == data.index(b"--b\r\n\r\n")
    assert [body(data, child) for child in root.children] == [b"", b"x"]


def test_nested_boundaries_and_bare_lf() -> None:
    data = load("bare_lf")
    root = parse(data)
    assert [body(data, child) for child in root.children] == [
        b"line one\nline two",
        b"<p>line one</p>",
    ]


def test_corpus_offsets() -> None:
    for path in CORPUS:
        data = path.read_bytes()
        check_offsets(data, parse(data))


def test_message_rfc822_with_transfer_encoding_is_a_leaf() -> None:
    child = parse(load("rfc822_base64")).children[0]
    assert (child.content_type, child.message) == ("message/rfc822", None)


def test_message_global_is_parsed() -> None:
    data = b"Content-Type: message/global\r\n\r\nSubject: inner\r\n\r\nhi"
    message = parse(data).message
    assert message is not None and body(data, message) == b"hi"


# -- limits ---------------------------------------------------------------------


def nested_multiparts(depth: int) -> bytes:
    data = b"innermost\r\n"
    for level in reversed(range(depth)):
        data = (
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level)
            + data
            + b"\r\n--b%d--\r\n" % level
        )
    return data


def depth_of(part: Part) -> int:
    below = [depth_of(child) for child in part.children]
    if part.message is not None:
        below.append(depth_of(part.message))
    return 1 + max(below, default=0)


def test_nesting_depth_is_bounded() -> None:
    data = nested_multiparts(MAX_DEPTH + 20)
    root = parse(data)
    assert depth_of(root) == MAX_DEPTH
    check_offsets(data, root)
    deepest = root
    while deepest.children:
        deepest = deepest.children[0]
    assert deepest.content_type == "multipart/mixed"
    assert body(data, deepest).startswith(b"--b%d\r\n" % (MAX_DEPTH - 1))


def test_nested_messages_depth_is_bounded() -> None:
    data = b"Subject: end\r\n\r\nbody"
    for _ in range(MAX_DEPTH + 5):
        data = b"Content-Type: message/rfc822\r\n\r\n" + data
    assert depth_of(parse(data)) == MAX_DEPTH


def test_part_count_is_bounded() -> None:
    count = MAX_PARTS + 500
    data = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count
    root = parse(data)
    assert len(all_parts(root)) == MAX_PARTS
    check_offsets(data, root)


def test_header_fields_are_read_from_a_bounded_prefix() -> None:
    filler = b"X-Filler: " + b"x" * 100 + b"\r\n"
    data = filler * (MAX_HEADER_SCAN // len(filler) + 10) + b"Content-Type: image/png\r\n\r\nb"
    root = parse(data)
    assert root.content_type == "text/plain"
    assert data[root.body_start :] == b"b"
    fields = header_fields(data, root.start, root.header_end)
    assert len(fields) == MAX_HEADER_SCAN // len(filler) + 1


def test_large_message_parses_fast() -> None:
    attachment = base64.encodebytes(os.urandom(18_000_000)).replace(b"\n", b"\r\n")
    data = (
        b'Subject: big\r\nContent-Type: multipart/mixed; boundary="=_b_0123456789"\r\n\r\n'
        b"--=_b_0123456789\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--=_b_0123456789\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n--=_b_0123456789--\r\n"
    )
    assert len(data) > 24_000_000
    elapsed = min(_timed(parse, data) for _ in range(3))
    root = parse(data)
    assert len(root.children) == 2 and root.children[1].size == len(attachment)
    assert elapsed < 0.5, f"parse took {elapsed:.3f}s"


def _timed(function: object, data: bytes) -> float:
    assert callable(function)
    started = time.perf_counter()
    function(data)
    return time.perf_counter() - started


# -- BODY[section] (RFC 9051 6.4.5) ----------------------------------------------


SECTIONS = load("rfc9051_sections")


def sect(path: tuple[int, ...], text: str = "", fields: tuple[str, ...] = ()) -> bytes | None:
    return section(SECTIONS, parse(SECTIONS), path, text, fields)


@pytest.mark.parametrize(
    ("path", "text", "starts", "ends"),
    [
        ((), "HEADER", b"From: sections@", b'boundary="b0"\r\n\r\n'),
        ((), "TEXT", b"--b0\r\n", b"--b0--\r\n"),
        ((), "", b"From: sections@", b"--b0--\r\n"),
        ((1,), "", b"part 1", b"part 1"),
        ((2,), "", b"cGFydCAy", b"cGFydCAy"),
        ((3,), "", b"Subject: part 3\r\n", b"--b3--"),
        ((3,), "HEADER", b"Subject: part 3\r\n", b'boundary="b3"\r\n\r\n'),
        ((3,), "TEXT", b"--b3\r\n", b"--b3--"),
        ((3,), "MIME", b"Content-Type: MESSAGE/RFC822\r\n\r\n", b"\r\n\r\n"),
        ((3, 1), "", b"part 3.1", b"part 3.1"),
        ((3, 2), "", b"part 3.2", b"part 3.2"),
        ((4,), "", b"--b4\r\n", b"--b4--"),
        ((4, 1), "", b"R0lGODlh", b"ACw="),
        ((4, 1), "MIME", b"Content-Type: IMAGE/GIF\r\n", b"base64\r\n\r\n"),
        ((4, 2), "HEADER", b"Subject: part 4.2\r\n", b'boundary="b42"\r\n\r\n'),
        ((4, 2), "TEXT", b"--b42\r\n", b"--b42--"),
        ((4, 2, 1), "", b"part 4.2.1", b"part 4.2.1"),
        ((4, 2, 2), "", b"--b422\r\n", b"--b422--"),
        ((4, 2, 2, 1), "", b"part 4.2.2.1", b"part 4.2.2.1"),
        ((4, 2, 2, 2), "", b"part 4.2.2.2", b"part 4.2.2.2"),
        ((4, 2, 2, 2), "MIME", b"Content-Type: TEXT/RICHTEXT\r\n\r\n", b"\r\n\r\n"),
    ],
)
def test_rfc9051_section_example(
    path: tuple[int, ...], text: str, starts: bytes, ends: bytes
) -> None:
    content = sect(path, text)
    assert content is not None
    assert content.startswith(starts) and content.endswith(ends)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((5,), ""),
        ((0,), ""),
        ((1, 1), ""),
        ((1,), "HEADER"),
        ((1,), "TEXT"),
        ((4,), "HEADER"),
        ((4, 3), ""),
        ((3, 3), ""),
        ((), "MIME"),
        ((), "BOGUS"),
    ],
)
def test_missing_sections(path: tuple[int, ...], text: str) -> None:
    assert sect(path, text) is None


def test_section_is_case_insensitive() -> None:
    assert sect((3,), "header") == sect((3,), "HEADER")


def test_non_multipart_message_has_only_part_one() -> None:
    data = b"Subject: x\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    root = parse(data)
    assert section(data, root, (1,), "", ()) == b"hello\r\n"
    assert section(data, root, (1,), "MIME", ()) == data[: root.header_end]
    assert section(data, root, (2,), "", ()) is None
    assert section(data, root, (1, 1), "", ()) is None
    assert locate(root, (1,)) is root


def test_top_level_message_rfc822_numbering() -> None:
    data = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\ninner body"
    root = parse(data)
    assert section(data, root, (1,), "HEADER", ()) == b"Subject: in\r\n\r\n"
    assert section(data, root, (1, 1), "", ()) == b"inner body"


def test_multipart_without_parts_has_no_part_one() -> None:
    data = load("missing_boundary")
    assert section(data, parse(data), (1,), "", ()) is None


def test_header_fields_section() -> None:
    data = b"From: a@b\r\nSubject: one\r\n two\r\nTO: c@d\r\nsubject: again\r\n\r\nbody"
    root = parse(data)
    assert section(data, root, (), "HEADER.FIELDS", ("Subject", "to")) == (
        b"Subject: one\r\n two\r\nTO: c@d\r\nsubject: again\r\n\r\n"
    )
    assert section(data, root, (), "HEADER.FIELDS.NOT", ("SUBJECT", "To")) == (b"From: a@b\r\n\r\n")
    assert section(data, root, (), "HEADER.FIELDS", ("X-None",)) == b"\r\n"


def test_header_fields_section_of_encapsulated_message() -> None:
    data = load("forwarded_rfc822")
    assert section(data, parse(data), (2,), "HEADER.FIELDS", ("subject",)) == (
        b"Subject: Plans\r\n\r\n"
    )


def test_header_fields_section_without_final_line_break() -> None:
    data = b"From: a@b\r\nSubject: cut"
    assert section(data, parse(data), (), "HEADER.FIELDS", ("subject",)) == (
        b"Subject: cut\r\n\r\n"
    )


# -- transfer decoding (RFC 2045 6) ----------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "raw", "decoded"),
    [
        ("7bit", b"as is\r\n", b"as is\r\n"),
        ("8bit", b"\xe9t\xe9", b"\xe9t\xe9"),
        ("binary", b"\x00\xff", b"\x00\xff"),
        ("base64", b"aGVs\r\nbG8=\r\n", b"hello"),
        ("base64", b"aGVs bG8", b"hello"),
        ("base64", b"aGVsbG8*!\r\n", b"hello"),
        ("base64", b"aGVsbA", b"hell"),
        ("base64", b"aGVsb", b"hel"),
        ("base64", b"", b""),
        ("quoted-printable", b"caf=C3=A9 soft=\r\nbreak=3D\r\n", b"caf\xc3\xa9 softbreak=\r\n"),
        ("quoted-printable", b"bad =ZZ escape", b"bad =ZZ escape"),
    ],
)
def test_decoded_body(encoding: str, raw: bytes, decoded: bytes) -> None:
    data = b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n" + raw
    assert decoded_body(data, parse(data)) == decoded


def test_unknown_encoding_is_none() -> None:
    data = b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
    assert decoded_body(data, parse(data)) is None


def test_base64_lenient_decodes_chunks_run_together() -> None:
    assert base64_lenient(b"QQ==QUI=\r\nQUJD") == b"AABABC"
    assert base64_lenient(b"====") == b""


def test_corpus_attachment_decodes() -> None:
    data = load("rfc9051_body_example")
    decoded = decoded_body(data, parse(data).children[1])
    assert decoded is not None and decoded.startswith(b"--- a/cc.c")


# -- property tests ----------------------------------------------------------------


def check_everything(data: bytes) -> None:
    root = parse(data)
    check_offsets(data, root)
    for part in all_parts(root):
        decoded_body(data, part)
    paths: list[tuple[int, ...]] = [(), (1,), (2,), (1, 1), (1, 2), (2, 1), (1, 1, 1), (3, 2, 1)]
    for path in paths:
        for text in ("", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            result = section(data, root, path, text, ("subject", "content-type"))
            assert result is None or isinstance(result, bytes)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=800))
def test_arbitrary_bytes(data: bytes) -> None:
    check_everything(data)


LINE = st.sampled_from(
    [
        b"--b",
        b"--b--",
        b"--c",
        b"--c--",
        b"",
        b" ",
        b"\t folded",
        b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: multipart/digest; boundary=c",
        b"Content-Type: message/rfc822",
        b"Content-Type: text/plain; charset*0*=utf-8''%E2; charset*1*=%82",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Disposition: attachment; filename*=utf-8''%ZZ",
        b"Subject: =?utf-8?b?w6k=?=",
        b"From: g: a@b, <c@d>;",
        b"aGVsbG8=",
        b"=C3=A9=",
        b"no colon",
        b"\x00\xff",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(LINE, max_size=40), st.sampled_from([b"\r\n", b"\n"]))
def test_mime_shaped_input(lines: list[bytes], newline: bytes) -> None:
    check_everything(newline.join(lines))


LEAF = st.binary(max_size=40).map(lambda raw: raw.replace(b"-", b"_").replace(b"\r", b"_"))
TREE = st.recursive(
    LEAF, lambda children: st.lists(children, min_size=1, max_size=4), max_leaves=12
)
Tree = bytes | list["Tree"]


def render(tree: Tree, newline: bytes, names: list[int]) -> bytes:
    if isinstance(tree, bytes):
        return b"Content-Type: text/plain" + newline + newline + tree
    names.append(len(names))
    boundary = b"=_%d" % names[-1]
    out = b"Content-Type: multipart/mixed; boundary=" + boundary + newline + newline
    for child in tree:
        out += b"--" + boundary + newline + render(child, newline, names) + newline
    return out + b"--" + boundary + b"--" + newline


def leaves(tree: Tree, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], bytes]]:
    if isinstance(tree, bytes):
        return [(path or (1,), tree)]
    out: list[tuple[tuple[int, ...], bytes]] = []
    for number, child in enumerate(tree, 1):
        out += leaves(child, (*path, number))
    return out


@settings(max_examples=300, deadline=None)
@given(TREE, st.sampled_from([b"\r\n", b"\n"]))
def test_rendered_trees_round_trip(tree: Tree, newline: bytes) -> None:
    data = render(tree, newline, [])
    root = parse(data)
    check_offsets(data, root)
    for path, content in leaves(tree):
        assert section(data, root, path, "", ()) == content
        node = locate(root, path)
        assert node is not None and node.content_type == "text/plain"
