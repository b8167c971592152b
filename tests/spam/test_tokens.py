"""spam.tokens: what a message becomes for the Bayes filter, bounded, never raising."""

from __future__ import annotations

import base64
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.spam import tokens as tokens_mod
from mailward.spam.tokens import (
    MAX_TOKENS,
    message_tokens,
    token_hash,
    token_strings,
    url_tokens,
    words,
)

INT64 = (-(1 << 63), (1 << 63) - 1)

SPAMMY = (
    b'From: "Prize Desk" <winner@promo.lucky-prize.example.com>\r\n'
    b"Reply-To: claims@collect.example.net\r\n"
    b"To: alice@example.org, bob@example.org, carol@example.org\r\n"
    b"Subject: =?utf-8?q?You_WON_=24=24=24?= FREE Money!!!\r\n"
    b"Received: from a.example by b.example\r\n"
    b"Received: from c.example by d.example\r\n"
    b"X-Mailer: BulkBlaster 9.1\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b1"\r\n'
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b'<p>CLAIM your <b>prize</b> at <a href=3D"https://www.lucky-prize.example.com/c?id=3D1">'
    b"here</a> or http://192.0.2.7/x. Only $1,000.00, call 5551234567 now!</p>"
    b'<img src=3D"cid:x">\r\n'
    b"--b1\r\n"
    b'Content-Type: application/octet-stream; name="invoice.PDF.exe"\r\n'
    b"Content-Disposition: attachment\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAgAAAAA==\r\n"
    b"--b1--\r\n"
)


def test_hash_is_stable_signed_64_bit_and_not_pythons_hash() -> None:
    # Stored counts outlive processes and versions: the hash must never change.
    assert token_hash("viagra") == 6738145097025910177
    assert token_hash("subject:free") == 2985189914133538558
    for word in ("a", "", "\udc80", "x" * 10_000):
        value = token_hash(word)
        assert isinstance(value, int) and INT64[0] <= value <= INT64[1]
    assert len({token_hash(f"w{i}") for i in range(10_000)}) == 10_000


def test_header_clues_are_prefixed_by_field() -> None:
    found = set(token_strings(SPAMMY))
    expected = {
        "subject:won",
        "subject:$$$",
        "subject:free",
        "subject:money!!!",
        "from:dom:promo.lucky-prize.example.com",
        "from:dom:lucky-prize.example.com",
        "from:dom:example.com",
        "from:local:winner",
        "from:name:present",
        "reply-to:dom:collect.example.net",
        "reply-to:differs",
        "to:count:3-5",
        "received:count:2",
        "message-id:none",
        "date:none",
        "x-mailer:bulkblaster",
        "content-type:multipart/mixed",
        "header:mime-version",
        "header:x-mailer",
    }
    assert expected <= found, expected - found
    assert "won" not in found and "free" not in found  # the Subject's words stay its own


def test_body_words_urls_and_attachments() -> None:
    found = set(token_strings(SPAMMY))
    expected = {
        "claim",
        "your",
        "prize",
        "here",
        "only",
        "$1,000.00",
        "num:10",  # 5551234567
        "url:www.lucky-prize.example.com",
        "url:lucky-prize.example.com",
        "url:ip",
        "html:img",
        "mime:html-only",
        "ctype:text/html",
        "charset:utf-8",
        "attach:type:application/octet-stream",
        "attach:ext:exe",
    }
    assert expected <= found, expected - found
    assert not any(t.startswith(("https", "http:", "<")) for t in found)
    assert "at" not in found and "or" not in found  # shorter than 3


def test_words() -> None:
    text = "Hello, WORLD!! it's 2026 a 12:30 ok x y Über-Angebot " + "z" * 41
    assert list(words(text)) == [
        "hello",
        "world!!",  # "!" is a clue, not punctuation to strip
        "it's",
        "num:4",
        "12:30",
        "über-angebot",
        "skip:z 40",
    ]
    assert list(words("12 1,234.50 999999999999999999")) == ["num:2", "num:6", "num:12"]
    assert list(words("mail me@Example.ORG now", "subject:")) == [
        "subject:mail",
        "subject:email:example.org",
        "subject:now",
    ]
    assert list(words("see https://example.com/a/very/long/path now")) == ["see", "now"]


def test_url_tokens() -> None:
    text = (
        "a https://user:pw@Deep.Sub.Example.co.uk:8080/x?y b www.shop.example "
        "http://[2001:db8::1]/ http://198.51.100.4:80/ ftp://bad_host!/"
    )
    assert list(url_tokens(text)) == [
        "url:deep.sub.example.co.uk",
        "url:sub.example.co.uk",
        "url:example.co.uk",
        "url:co.uk",
        "url:shop.example",  # a bare "www." is not part of the host name here
        "url:ip",
        "url:ip",
        "url:invalid",
    ]
    many = " ".join(f"http://h{i}.example" for i in range(1000))
    assert len(list(url_tokens(many))) == tokens_mod.MAX_URLS


def test_transfer_encodings_and_charsets_are_decoded() -> None:
    body = "Réunion du projet: budget trimestriel".encode("latin-1")
    message = (
        b"From: a@example.org\r\nSubject: x\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(body)
    )
    found = set(token_strings(message))
    assert {"réunion", "projet", "budget", "trimestriel", "charset:iso-8859-1"} <= found


def test_tokens_are_distinct_in_order_and_hashes_match() -> None:
    strings = token_strings(SPAMMY)
    assert len(strings) == len(set(strings))
    assert message_tokens(SPAMMY) == [token_hash(t) for t in strings]
    assert message_tokens(SPAMMY) == message_tokens(SPAMMY)


def test_bounded_on_a_huge_message() -> None:
    rng = random.Random(7)
    vocabulary = ["".join(rng.choice("abcdefghij") for _ in range(8)) for _ in range(50_000)]
    body = " ".join(rng.choice(vocabulary) for _ in range(400_000)).encode()
    message = b"From: a@example.org\r\nSubject: big\r\n\r\n" + body
    started = time.monotonic()
    found = token_strings(message)
    assert len(found) == MAX_TOKENS
    assert "subject:big" in found  # header clues come first
    assert time.monotonic() - started < 30  # generous: a sanity bound, not a benchmark
    # Only MAX_TEXT characters of body text are read: words past it never appear.
    late = b"From: a@example.org\r\n\r\n" + b"aa " * 200_000 + b"latecomer"
    assert "latecomer" not in token_strings(late)


def test_empty_and_headerless_input() -> None:
    assert isinstance(message_tokens(b""), list)
    assert "subject:none" in token_strings(b"\r\n\r\njust a body")
    # No blank line: all of it is header section (RFC 5322 2.1), no body words.
    assert "hello" not in token_strings(b"hello there")


def test_an_unexpected_failure_returns_what_was_found(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, out: tokens_mod._Tokens) -> None:
        out.add("first")
        raise RecursionError("boom")

    monkeypatch.setattr(tokens_mod, "_tokenize", broken)
    assert token_strings(SPAMMY) == ["first"]
    assert message_tokens(SPAMMY) == [token_hash("first")]


def _check(data: bytes) -> None:
    result = message_tokens(data)
    assert len(result) <= MAX_TOKENS
    assert len(set(result)) == len(result)
    assert all(INT64[0] <= t <= INT64[1] for t in result)


def test_fuzz_random_bytes() -> None:
    rng = random.Random(20261123)
    for _ in range(300):
        _check(rng.randbytes(rng.randrange(0, 4000)))


def test_fuzz_mutated_messages() -> None:
    rng = random.Random(5788)
    for _ in range(300):
        data = bytearray(SPAMMY)
        for _ in range(rng.randrange(1, 30)):
            position = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.4:
                data[position] = rng.randrange(256)
            elif choice < 0.7:
                del data[position : position + rng.randrange(1, 50)]
            else:
                data[position:position] = rng.choice(
                    [
                        b"\r\n",
                        b"--b1\r\n",
                        b"=?utf-8?b?",
                        b"Content-Type: multipart/mixed;",
                        b"\x00",
                    ]
                )
        _check(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_hypothesis_bytes(data: bytes) -> None:
    _check(data)


_FIELD = st.sampled_from(
    [b"Subject", b"From", b"Reply-To", b"To", b"Received", b"Content-Type", b"X-Mailer"]
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_FIELD, st.binary(max_size=200)), max_size=12),
    st.binary(max_size=2000),
)
def test_fuzz_hypothesis_structured(fields: list[tuple[bytes, bytes]], body: bytes) -> None:
    head = b"".join(name + b": " + value + b"\r\n" for name, value in fields)
    _check(head + b"\r\n" + body)
