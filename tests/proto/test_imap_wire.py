"""Tests of the IMAP response serialiser and mailbox-name encodings (proto.imap_wire).

RFC 9051 4 (strings, literals, NIL), 7.1 (status responses), 7.6 (continuation);
RFC 3501 5.1.3 (modified UTF-7); RFC 3516 (literal8). Property tests in test_imap_fuzz.py.
"""

from __future__ import annotations

import datetime

import pytest

from mailward.proto.imap_wire import (
    MAX_QUOTED,
    astring,
    continuation,
    decode_mutf7,
    encode_mutf7,
    format_datetime,
    list_mailbox_quote,
    literal,
    nstring,
    quote_or_literal,
    response,
    serialize,
)

# --- strings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (b"", b'""'),
        (b"hello world", b'"hello world"'),
        ("plain", b'"plain"'),
        (b'say "hi"', b'"say \\"hi\\""'),
        (b"back\\slash", b'"back\\\\slash"'),
        (b"line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        (b"tab\there", b"{8}\r\ntab\there"),
        (b"\xc3\xa9t\xc3\xa9", b"{5}\r\n\xc3\xa9t\xc3\xa9"),  # 8-bit: literal
        ("été", b"{5}\r\n\xc3\xa9t\xc3\xa9"),  # str goes out as UTF-8
        (b"nul\x00byte", b"~{8}\r\nnul\x00byte"),  # RFC 3516 literal8
    ],
)
def test_quote_or_literal(value: bytes | str, wire: bytes) -> None:
    assert quote_or_literal(value) == wire


def test_long_strings_become_literals() -> None:
    assert quote_or_literal(b"a" * MAX_QUOTED) == b'"' + b"a" * MAX_QUOTED + b'"'
    long = b"a" * (MAX_QUOTED + 1)
    assert quote_or_literal(long) == b"{%d}\r\n" % len(long) + long


def test_literal_always_literal() -> None:
    assert literal(b"abc") == b"{3}\r\nabc"
    assert literal(b"") == b"{0}\r\n"
    assert literal(b"\x00") == b"~{1}\r\n\x00"


def test_nstring() -> None:
    assert nstring(None) == b"NIL"
    assert nstring(b"NIL") == b'"NIL"'
    assert nstring("x") == b'"x"'


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("INBOX", b"INBOX"),
        ("a]b", b"a]b"),  # resp-specials are ASTRING-CHARs
        ("", b'""'),
        ("two words", b'"two words"'),
        ("star*", b'"star*"'),
        ("per%cent", b'"per%cent"'),
        ("paren(", b'"paren("'),
        ("brace{", b'"brace{"'),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("ünï", b"{5}\r\n\xc3\xbcn\xc3\xaf"),
    ],
)
def test_astring(value: str, wire: bytes) -> None:
    assert astring(value) == wire


# --- serialize -------------------------------------------------------------------------------


def test_serialize_nested_values() -> None:
    value = [
        "FLAGS",
        ["\\Seen", "$Forwarded"],
        "UID",
        42,
        "BODY[]",
        b"x\r\n",
        "ENVELOPE",
        [None, b"subj", []],
    ]
    assert serialize(value) == (
        b'(FLAGS (\\Seen $Forwarded) UID 42 BODY[] {3}\r\nx\r\n ENVELOPE (NIL "subj" ()))'
    )
    assert serialize(()) == b"()"
    assert serialize(None) == b"NIL"
    assert serialize(0) == b"0"
    assert serialize(bytearray(b"ab")) == b'"ab"'


@pytest.mark.parametrize("bad", [-1, True, "atom\r\n", "a\nb", "nul\x00", ["ok", "x\ry"]])
def test_serialize_refuses(bad: object) -> None:
    with pytest.raises(ValueError):
        serialize(bad)  # type: ignore[arg-type]


# --- status responses ------------------------------------------------------------------------


def test_response_lines() -> None:
    assert response("a1", "OK", "LOGIN completed") == b"a1 OK LOGIN completed\r\n"
    assert response(None, "BAD", "Empty command line") == b"* BAD Empty command line\r\n"
    assert response("a2", "NO", "Too big", "TOOBIG") == b"a2 NO [TOOBIG] Too big\r\n"
    assert response(None, "BYE", "Logging out") == b"* BYE Logging out\r\n"
    assert response(None, "PREAUTH", "Hi") == b"* PREAUTH Hi\r\n"


@pytest.mark.parametrize(
    "args",
    [
        ("a", "OK", "text\r\n* OK injected"),
        ("a", "OK", "text", "CODE]\r\n"),
        ("a\r\n", "OK", "text"),
        ("a b", "OK", "text"),
        ("", "OK", "text"),
        ("a", "MAYBE", "text"),
        ("a", "OK", ""),
        ("a", "OK", "nul\x00"),
    ],
)
def test_response_refuses_injection(args: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        response(*args)  # type: ignore[arg-type]


def test_continuation() -> None:
    assert continuation() == b"+ Ready\r\n"
    assert continuation("idling") == b"+ idling\r\n"
    assert continuation("") == b"+ \r\n"  # RFC 9051 7.6: "+" SP, empty base64 challenge
    with pytest.raises(ValueError):
        continuation("x\r\ny")


# --- modified UTF-7 (RFC 3501 5.1.3) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("INBOX", "INBOX"),
        ("", ""),
        ("&", "&-"),
        ("Tom & Jerry", "Tom &- Jerry"),
        # RFC 3501 5.1.3 example
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("Gelöschte Elemente", "Gel&APY-schte Elemente"),
        ("😀", "&2D3eAA-"),  # astral plane: a UTF-16 surrogate pair
        ("a\tb", "a&AAk-b"),  # control characters are not printable: encoded
        ("é&", "&AOk-&-"),
    ],
)
def test_mutf7_known_values(text: str, encoded: str) -> None:
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize(
    ("encoded", "why"),
    [
        ("&", "unterminated"),
        ("&U,BTFw", "unterminated"),
        ("&U/BTFw-", "'/' is not modified base64"),
        ("&U,BTF=-", "padding is not allowed"),
        ("&AGE-", "printable ASCII 'a' encoded"),
        ("&AOk-&AOk-", "null shift joining two runs"),
        ("&AO-", "odd number of octets"),
        ("&AOl-", "non-zero padding bits"),
        ("&2D0-", "lone high surrogate"),
        ("caf\u00e9", "8-bit character"),
        ("tab\there", "control character"),
        ("&A-", "too short a run"),
    ],
)
def test_mutf7_rejects(encoded: str, why: str) -> None:
    with pytest.raises(ValueError):
        decode_mutf7(encoded)


def test_mutf7_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        encode_mutf7("bad\ud800")


# --- dates and mailbox names -----------------------------------------------------------------


def test_format_datetime() -> None:
    ts = datetime.datetime(2024, 3, 5, 7, 8, 9, tzinfo=datetime.UTC).timestamp()
    assert format_datetime(ts) == " 5-Mar-2024 07:08:09 +0000"  # date-day-fixed
    cet = datetime.timezone(datetime.timedelta(hours=1))
    assert format_datetime(ts, cet) == " 5-Mar-2024 08:08:09 +0100"
    nst = datetime.timezone(-datetime.timedelta(hours=3, minutes=30))
    assert format_datetime(ts, nst) == " 5-Mar-2024 03:38:09 -0330"
    ts = datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC).timestamp()
    assert format_datetime(ts) == "31-Dec-1999 23:59:59 +0000"


def test_list_mailbox_quote() -> None:
    assert list_mailbox_quote("INBOX") == b'"INBOX"'
    assert list_mailbox_quote('a"b\\c') == b'"a\\"b\\\\c"'
    assert list_mailbox_quote("Entwürfe") == '"Entwürfe"'.encode()  # RFC 9051 UTF-8 quoted
    assert list_mailbox_quote("a\nb") == b"{3}\r\na\nb"
    assert list_mailbox_quote(encode_mutf7("Entwürfe")) == b'"Entw&APw-rfe"'
