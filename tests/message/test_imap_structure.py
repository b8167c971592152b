"""ENVELOPE and BODY/BODYSTRUCTURE (RFC 9051 7.5.2) against golden wire text.

Each `golden/<name>.eml` has a `golden/<name>.imap` holding the expected ENVELOPE,
BODY and BODYSTRUCTURE in IMAP wire syntax, written by the small serialiser below.
`UPDATE_GOLDEN=1 pytest tests/message` rewrites them; review the diff by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.message.imap_structure import (
    Adjacent,
    ImapValue,
    address_list,
    bodystructure,
    envelope,
)
from mailward.message.mime import parse

GOLDEN = Path(__file__).parent / "golden"
CORPUS = sorted(GOLDEN.glob("*.eml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def wire(value: ImapValue) -> bytes:
    """IMAP wire text: NIL, number, quoted string when safe, else a literal."""
    if value is None:
        return b"NIL"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, bytes):
        if all(0x20 <= octet < 0x7F for octet in value):
            return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return b"{%d}\r\n" % len(value) + value
    out = bytearray(b"(")
    leading = isinstance(value, Adjacent)
    for index, item in enumerate(value):
        leading = leading and isinstance(item, list)
        if index and not leading:
            out += b" "
        out += wire(item)
    return bytes(out + b")")


def imap_text(data: bytes) -> bytes:
    root = parse(data)
    return (
        b"ENVELOPE "
        + wire(envelope(data, root))
        + b"\r\nBODY "
        + wire(bodystructure(data, root, extensible=False))
        + b"\r\nBODYSTRUCTURE "
        + wire(bodystructure(data, root))
        + b"\r\n"
    )


def load(name: str) -> bytes:
    return (GOLDEN / f"{name}.eml").read_bytes()


def test_serialiser() -> None:
    value: ImapValue = [None, 7, b'a "q" \\', b"caf\xc3\xa9", [], [b"x"]]
    assert wire(value) == b'(NIL 7 "a \\"q\\" \\\\" {5}\r\ncaf\xc3\xa9 () ("x"))'
    adjacent = Adjacent([[b"a"], [b"b"], b"MIXED", [b"p"], None, [b"l"]])
    assert wire(adjacent) == b'(("a")("b") "MIXED" ("p") NIL ("l"))'


def test_corpus_is_present() -> None:
    assert len(CORPUS) >= 15


@pytest.mark.parametrize("eml", CORPUS, ids=[path.stem for path in CORPUS])
def test_golden(eml: Path) -> None:
    expected_path = eml.with_suffix(".imap")
    actual = imap_text(eml.read_bytes())
    if UPDATE:
        expected_path.write_bytes(actual)
    assert expected_path.exists(), f"no golden file; run with UPDATE_GOLDEN=1: {expected_path}"
    assert actual == expected_path.read_bytes()


def test_rfc9051_fetch_example_envelope_and_body() -> None:
    # RFC 9051 6.4.5, the FETCH example response (IMAP4rev2 subject line).
    data = load("rfc9051_fetch_example")
    root = parse(data)
    assert wire(envelope(data, root)) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)"'
        b' "IMAP4rev2 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")'
        b'("John Klensin" NIL "KLENSIN" "MIT.EDU")) NIL NIL'
        b' "<B27397-0100000@cac.washington.edu>")'
    )
    assert wire(bodystructure(data, root, extensible=False)) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 3028 92)'
    )


def test_rfc9051_body_example() -> None:
    # RFC 9051 7.5.2 BODYSTRUCTURE example, in its BODY (non-extensible) form.
    data = load("rfc9051_body_example")
    assert wire(bodystructure(data, parse(data), extensible=False)) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152'
        b' 23)("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff")'
        b' "<960723163407.20117h@cac.washington.edu>" "Compiler diff"'
        b' "BASE64" 4554 73) "MIXED")'
    )


def test_extension_data_order() -> None:
    data = (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-ID: <id@x>\r\nContent-Description: desc\r\n"
        b"Content-Transfer-Encoding: 8bit\r\nContent-MD5: bWQ1\r\n"
        b"Content-Disposition: inline; filename=a.txt\r\n"
        b"Content-Language: en, fr\r\nContent-Location: http://x/a.txt\r\n\r\nab\r\n"
    )
    assert bodystructure(data, parse(data)) == [
        b"TEXT",
        b"PLAIN",
        [b"CHARSET", b"utf-8"],
        b"<id@x>",
        b"desc",
        b"8BIT",
        4,
        1,
        b"bWQ1",
        [b"INLINE", [b"FILENAME", b"a.txt"]],
        [b"en", b"fr"],
        b"http://x/a.txt",
    ]


def test_multipart_extension_data_order() -> None:
    data = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n'
        b"Content-Disposition: inline\r\nContent-Language: de\r\n"
        b"Content-Location: http://x/\r\n\r\n"
        b"--b\r\nContent-Type: application/zip\r\n\r\nPK\r\n--b--\r\n"
    )
    root = parse(data)
    assert bodystructure(data, root) == [
        [b"APPLICATION", b"ZIP", None, None, None, b"7BIT", 2, None, None, None, None],
        b"MIXED",
        [b"BOUNDARY", b"b"],
        [b"INLINE", None],
        [b"de"],
        b"http://x/",
    ]
    assert bodystructure(data, root, extensible=False) == [
        [b"APPLICATION", b"ZIP", None, None, None, b"7BIT", 2],
        b"MIXED",
    ]


def test_message_rfc822_fields_order() -> None:
    data = load("forwarded_rfc822")
    root = parse(data)
    attached = bodystructure(data, root)[1]
    assert isinstance(attached, list)
    start = data.index(b"From: Erin")
    size = data.index(b"\r\n--fwd-outer--") - start
    assert attached[:7] == [b"MESSAGE", b"RFC822", None, None, None, b"7BIT", size]
    assert attached[7] == envelope(data, root.children[1].message)  # type: ignore[arg-type]
    assert isinstance(attached[8], list) and attached[8][-5] == b"ALTERNATIVE"
    assert attached[9] == root.children[1].lines
    assert attached[10:] == [None, [b"INLINE", None], None, None]


def test_text_part_without_charset_reports_us_ascii() -> None:
    data = b"Content-Type: text/html\r\n\r\n<p>\r\n"
    assert bodystructure(data, parse(data))[2] == [b"CHARSET", b"us-ascii"]
    data = b"Content-Type: image/png\r\n\r\nx"
    assert bodystructure(data, parse(data))[2] is None


def test_multipart_without_parts_reports_one_empty_text_part() -> None:
    data = load("missing_boundary")
    structure = bodystructure(data, parse(data), extensible=False)
    assert structure == [
        [b"TEXT", b"PLAIN", [b"CHARSET", b"us-ascii"], None, None, b"7BIT", 0, 0],
        b"MIXED",
    ]


def test_encoded_message_rfc822_is_opaque() -> None:
    data = load("rfc822_base64")
    child = bodystructure(data, parse(data))[0]
    assert isinstance(child, list)
    assert child[:2] == [b"APPLICATION", b"OCTET-STREAM"]
    assert child[5] == b"BASE64"


def test_envelope_absent_and_empty_fields() -> None:
    # RFC 9051 7.5.2: absent -> NIL, present but empty -> "" (date, subject, ids).
    data = load("header_only")
    assert envelope(data, parse(data)) == [
        b"Sun, 9 Mar 2025 00:00:00 +0000",
        b"",
        [[None, None, b"terse", b"example.org"]],
        [[None, None, b"terse", b"example.org"]],
        [[None, None, b"terse", b"example.org"]],
        None,
        None,
        None,
        None,
        b"",
    ]


def test_envelope_is_raw_and_unfolded() -> None:
    data = b"Subject: =?UTF-8?Q?caf=C3=A9?=\r\n  and more\r\nFrom: a@b\r\n\r\n"
    assert envelope(data, parse(data))[1] == b"=?UTF-8?Q?caf=C3=A9?=  and more"


def test_envelope_uses_first_occurrence() -> None:
    data = b"Subject: one\r\nSubject: two\r\n\r\n"
    assert envelope(data, parse(data))[1] == b"one"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"user@domain", [[None, None, b"user", b"domain"]]),
        (b"user@domain (Real Name)", [[b"Real Name", None, b"user", b"domain"]]),
        (b"Real  Name <user@domain>", [[b"Real Name", None, b"user", b"domain"]]),
        (b'"Smith, J." <j@x.test>', [[b"Smith, J.", None, b"j", b"x.test"]]),
        (b'"a \\"b\\"" <c@d>', [[b'a "b"', None, b"c", b"d"]]),
        (b"<@r1,@r2:u@h>", [[None, b"@r1,@r2", b"u", b"h"]]),
        (b'"quoted local"@h', [[None, None, b'"quoted local"', b"h"]]),
        (b"u@[192.0.2.1]", [[None, None, b"u", b"[192.0.2.1]"]]),
        (b"John Q. Public <jqp@x>", [[b"John Q. Public", None, b"jqp", b"x"]]),
        (b"j\xc3\xb6rg <j@x>", [[b"j\xc3\xb6rg", None, b"j", b"x"]]),
        (b"nodomain", [[None, None, b"nodomain", b"MISSING_DOMAIN"]]),
        (b"<>", [[None, None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"]]),
        (b"a@b,, ,c@d", [[None, None, b"a", b"b"], [None, None, b"c", b"d"]]),
        (b"", None),
        (b"  ", None),
        (
            b"g: a@b, c@d;, e@f",
            [
                [None, None, b"g", None],
                [None, None, b"a", b"b"],
                [None, None, b"c", b"d"],
                [None, None, None, None],
                [None, None, b"e", b"f"],
            ],
        ),
        (b"empty:;", [[None, None, b"empty", None], [None, None, None, None]]),
        (b"open: a@b", [[None, None, b"open", None], [None, None, b"a", b"b"], [None] * 4]),
        (b"Bad <unclosed@x", [[b"Bad", None, b"unclosed", b"x"]]),
    ],
)
def test_address_list(value: bytes, expected: list[ImapValue] | None) -> None:
    assert address_list(value) == expected


def test_group_syntax_in_envelope() -> None:
    data = load("group_addresses")
    env = envelope(data, parse(data))
    from_ = [[None, b"@relay.example", b"quiet", b"example.org"]]
    assert env[2:5] == [from_, from_, from_]
    assert env[5] == [[None, None, b"undisclosed-recipients", None], [None] * 4]
    assert env[6] == [
        [None, None, b"Friends", None],
        [None, None, b"alice", b"example.org"],
        [b"Bob B.", None, b"bob", b"example.net"],
        [None, None, None, None],
        [None, None, b"carol", b"example.com"],
    ]
    assert env[7] == [
        [None, None, b"Project", None],
        [b"Dana", None, b"dana", b"example.org"],
        [None, None, None, None],
    ]


def _walk_structure(value: ImapValue) -> None:
    if isinstance(value, list):
        for item in value:
            _walk_structure(item)
    else:
        assert value is None or isinstance(value, bytes | int)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    root = parse(data)
    _walk_structure(envelope(data, root))
    _walk_structure(bodystructure(data, root))
    _walk_structure(bodystructure(data, root, extensible=False))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([path.read_bytes() for path in CORPUS]),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=4)), max_size=6),
)
def test_never_raises_on_mutated_corpus(data: bytes, edits: list[tuple[int, bytes]]) -> None:
    for position, replacement in edits:
        at = position % (len(data) + 1)
        data = data[:at] + replacement + data[at + len(replacement) // 2 :]
    root = parse(data)
    wire(envelope(data, root))
    wire(bodystructure(data, root))
