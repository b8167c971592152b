"""SEARCH HEADER / BODY / TEXT matching (RFC 9051 6.4.4) and RFC 2047 decoding."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.message.mime import parse
from mailward.message.search_text import (
    body_matches,
    decode_header_value,
    header_matches,
    text_matches,
)

GOLDEN = Path(__file__).parent / "golden"


def load(name: str) -> bytes:
    return (GOLDEN / f"{name}.eml").read_bytes()


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        # RFC 2047 8, the examples of encoded-word display
        (b"(=?ISO-8859-1?Q?a?=)", "(a)"),
        (b"(=?ISO-8859-1?Q?a?= b)", "(a b)"),
        (b"(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"),
        (b"(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)"),
        (b"(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", "(ab)"),
        (b"(=?ISO-8859-1?Q?a_b?=)", "(a b)"),
        (b"(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)"),
        (b"=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),
        (b"=?US-ASCII?Q?Keith_Moore?=", "Keith Moore"),
        # RFC 2231 5: language suffix
        (b"=?US-ASCII*EN?Q?Keith_Moore?=", "Keith Moore"),
        (b"=?utf-8?b?w6k=?=", "é"),
        (b"=?UTF-8?B?w6k?=", "é"),
        # a character split across two words
        (b"=?UTF-8?B?4oI=?= =?UTF-8?B?rA==?=", "€"),
        (b"=?utf-8?q?=E2=82?==?utf-8?q?=AC?=", "€"),
        (b"=?x-unknown?q?caf=C3=A9?=", "café"),
        (b"=?utf-8?q?bad=FF?=", "bad\ufffd"),
        (b"=?base64?q?x?=", "x"),
        (b"=?utf-8?x?unknown-encoding?=", "=?utf-8?x?unknown-encoding?="),
        (b"plain \xc3\xa9 utf-8", "plain é utf-8"),
        (b" folded\r\n value ", "folded value"),
        (b"a =?utf-8?q?b?= c", "a b c"),
        (b"", ""),
    ],
)
def test_decode_header_value(raw: bytes, decoded: str) -> None:
    assert decode_header_value(raw) == decoded


def test_header_matches() -> None:
    data = load("attachment_rfc2231")
    root = parse(data)
    assert header_matches(data, root, "subject", "RESÜMEE")
    assert header_matches(data, root, "From", "jürgen")
    assert header_matches(data, root, "FROM", "JUERGEN@example")
    assert not header_matches(data, root, "To", "jürgen")
    assert header_matches(data, root, "Message-ID", "")
    assert not header_matches(data, root, "X-Absent", "")
    assert not header_matches(data, root, "Content-Disposition", "")  # a part's, not the message's


def test_header_matches_any_occurrence() -> None:
    data = b"Received: from a\r\nReceived: from b\r\n\r\n"
    root = parse(data)
    assert header_matches(data, root, "received", "FROM B")
    assert not header_matches(data, root, "received", "from c")


def test_header_casefold() -> None:
    data = b"Subject: =?utf-8?q?Stra=C3=9Fe?=\r\n\r\n"
    assert header_matches(data, parse(data), "subject", "STRASSE")


def test_body_matches_decoded_text_parts() -> None:
    data = load("alternative_qp")
    root = parse(data)
    assert body_matches(data, root, "CAFÉ")
    assert body_matches(data, root, "strasse")
    assert body_matches(data, root, "long enough")  # across a soft line break
    assert body_matches(data, root, "<b>")
    assert not body_matches(data, root, "Lunch")  # subject only


def test_body_matches_base64_and_charsets() -> None:
    data = load("encoded_words")
    assert body_matches(data, parse(data), "ünïcödé BODY")
    data = load("forwarded_rfc822")
    root = parse(data)
    assert body_matches(data, root, "café plans")  # iso-8859-1 qp inside message/rfc822
    assert body_matches(data, root, "see below")


def test_body_ignores_non_text_parts() -> None:
    payload = base64.encodebytes(b"secret needle").decode()
    data = (
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain\r\n\r\nvisible\r\n"
        "--b\r\nContent-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + payload + "--b--\r\n"
    ).encode()
    root = parse(data)
    assert body_matches(data, root, "VISIBLE")
    assert not body_matches(data, root, "needle")
    assert not text_matches(data, root, "needle")


def test_body_with_unknown_encoding_is_searched_raw() -> None:
    data = b"Content-Transfer-Encoding: x-weird\r\n\r\nraw words\r\n"
    assert body_matches(data, parse(data), "RAW WORDS")


def test_text_matches_headers_mime_fields_and_body() -> None:
    data = load("attachment_rfc2231")
    root = parse(data)
    assert text_matches(data, root, "lebenslauf")  # body
    assert text_matches(data, root, "Resümee")  # subject, encoded-word
    assert text_matches(data, root, "€ résumé.pdf")  # RFC 2231 file name
    assert text_matches(data, root, "application/pdf")  # MIME header field
    assert not text_matches(data, root, "nowhere to be found")


def test_text_matches_headers_of_attached_message() -> None:
    data = load("forwarded_rfc822")
    root = parse(data)
    assert text_matches(data, root, "assist@example.com")
    assert not body_matches(data, root, "assist@example.com")


def test_empty_needle() -> None:
    data = b"Subject: x\r\n\r\n"
    assert body_matches(data, parse(data), "")
    assert text_matches(data, parse(data), "")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=5))
def test_never_raises(data: bytes, needle: str) -> None:
    root = parse(data)
    decode_header_value(data)
    header_matches(data, root, "subject", needle)
    body_matches(data, root, needle)
    text_matches(data, root, needle)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["utf-8", "iso-8859-1", "bogus", "utf-16", "idna", "rot13", ""]),
            st.sampled_from(["B", "Q", "b", "q"]),
            st.binary(max_size=12),
        ),
        max_size=4,
    )
)
def test_encoded_words_never_raise(words: list[tuple[str, str, bytes]]) -> None:
    raw = b" ".join(
        b"=?%s?%s?%s?="
        % (charset.encode(), kind.encode(), text.replace(b"?", b"").replace(b" ", b""))
        for charset, kind, text in words
    )
    assert isinstance(decode_header_value(raw), str)


def test_header_search_prefilter_keeps_folded_and_encoded_matches() -> None:
    folded = b"Subject: quarterly\r\n figures are in\r\nFrom: a@b.c\r\n\r\nbody\r\n"
    root = parse(folded)
    assert header_matches(folded, root, "subject", "quarterly figures")
    assert header_matches(folded, root, "SUBJECT", "FIGURES ARE")
    assert not header_matches(folded, root, "subject", "a@b.c")
    encoded = b"Subject: =?UTF-8?Q?caf=C3=A9_menu?=\r\n\r\n"
    assert header_matches(encoded, parse(encoded), "subject", "caf\u00e9 MENU")
    kelvin = "Subject: 300 \u212a\r\n\r\n".encode()  # KELVIN SIGN casefolds to "k"
    assert header_matches(kelvin, parse(kelvin), "subject", "300 k")
