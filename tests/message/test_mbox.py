"""mboxrd writing, mbox/mboxrd reading (RFC 4155) and Maildir reading."""

from __future__ import annotations

import io
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.message import mbox
from mailward.message.mbox import (
    MailEntry,
    canonical_line_endings,
    envelope_sender,
    from_line,
    maildir_flags,
    mboxrd_entry,
    parse_from_line,
    quote_mboxrd,
    read_maildir,
    read_mbox,
)

TRICKY = [
    b"Subject: plain\r\n\r\nhello\r\n",
    b"Subject: from lines\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\nFrom\r\n",
    b"Subject: binary\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\x00\x80\xff\xe9t\xe9\r\n",
    b"Subject: no final newline\r\n\r\nlast line",
    b"Subject: lf only\n\nFrom here\nbody\n",
    b"Subject: blank tail\r\n\r\nbody\r\n\r\n\r\n",
    b"Subject: stray\r\n\r\nbare\nLF and bare\r CR\r\nFrom x\r\n",
]


def write_all(messages: list[bytes], date: float = 1_700_000_000) -> bytes:
    return b"".join(mboxrd_entry(m, sender="a@example.org", date=date) for m in messages)


def read_all(data: bytes, **kw: int) -> list[MailEntry]:
    return list(read_mbox(io.BytesIO(data), **kw))


def test_from_line_is_rfc4155_asctime_utc() -> None:
    assert from_line("a@example.org", 0) == b"From a@example.org Thu Jan  1 00:00:00 1970"
    assert from_line("", 0).startswith(b"From MAILER-DAEMON ")
    assert from_line("has space@x", 0).startswith(b"From MAILER-DAEMON ")


def test_entry_uses_message_line_ending_and_one_blank_line() -> None:
    crlf = mboxrd_entry(b"A: b\r\n\r\nx\r\n", sender="s@x", date=0)
    assert crlf == b"From s@x Thu Jan  1 00:00:00 1970\r\nA: b\r\n\r\nx\r\n\r\n"
    lf = mboxrd_entry(b"A: b\n\nx\n", sender="s@x", date=0)
    assert lf == b"From s@x Thu Jan  1 00:00:00 1970\nA: b\n\nx\n\n"


def test_quoting_is_mboxrd() -> None:
    quoted = quote_mboxrd(b"A: b\r\n\r\nFrom x\r\n>From y\r\n>>From z\r\n From no\r\n>From")
    assert quoted == b"A: b\r\n\r\n>From x\r\n>>From y\r\n>>>From z\r\n From no\r\n>From"


def test_round_trip_is_byte_exact() -> None:
    data = write_all(TRICKY)
    entries = read_all(data)
    assert [e.problem for e in entries] == [""] * len(TRICKY)
    assert [e.data for e in entries] == TRICKY
    assert all(e.internal_date == 1_700_000_000 for e in entries)
    assert all(e.sender == "a@example.org" for e in entries)
    # and writing what was read gives the same file
    assert write_all([e.data for e in entries]) == data


def test_body_from_lines_do_not_split_messages() -> None:
    data = write_all([TRICKY[1]])
    assert data.count(b"\nFrom ") == 0  # every body From_ is quoted
    assert len(read_all(data)) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from([b"From ", b">", b"\r\n", b"\n", b"\r", b"x", b"\xff", b" ", b"\x00"]),
            max_size=30,
        ).map(b"".join),
        min_size=1,
        max_size=5,
    )
)
def test_round_trip_property(bodies: list[bytes]) -> None:
    messages = [b"X-Test: 1\r\n" + body for body in bodies]
    entries = read_all(write_all(messages))
    assert [e.data for e in entries] == messages


def test_foreign_mbox_lf_with_timezone_and_missing_date() -> None:
    data = (
        b"From bob@example.com Sat Jan  3 01:05:34 +0100 1996\n"
        b"Subject: one\n\n>From quoted\n\n"
        b"From someone\n"
        b"Subject: two\nDate: Thu, 01 Jan 1970 00:01:00 +0000\n\nbody\n"
    )
    one, two = read_all(data)
    assert one.data == b"Subject: one\n\nFrom quoted\n"
    assert one.internal_date == 820_631_134 - 3600  # 1996-01-03 01:05:34 +0100
    assert two.internal_date == 60.0  # fell back to the Date: header
    # Without the conventional empty line, the last line ending still belongs to the
    # separator (the rule that makes messages without a final newline round-trip).
    assert two.data.endswith(b"\n\nbody")


def test_parse_from_line() -> None:
    assert parse_from_line(b"From x@y Thu Jan  1 00:00:00 1970\r\n") == ("x@y", 0.0)
    assert parse_from_line(b"From x@y Thu Jan 1 00:01 1970\n") == ("x@y", 60.0)
    assert parse_from_line(b"From x@y garbage\n") == ("x@y", None)


def test_malformed_entries_are_reported_and_neighbours_survive() -> None:
    good = b"Subject: ok\r\n\r\nfine\r\n"
    data = (
        b"junk before any separator\r\n"
        + write_all([good])
        + b"From x Thu Jan  1 00:00:00 1970\r\n\r\n"  # empty
        + b"From x Thu Jan  1 00:00:00 1970\r\nnot a header line\r\n\r\n"
        + write_all([b"Subject: big\r\n\r\n" + b"y" * 500 + b"\r\n", good])
    )
    entries = read_all(data, max_size=300)
    problems = [e.problem for e in entries]
    assert problems[0] == "data before the first From_ line"
    assert problems[1] == ""
    assert problems[2] == "empty message"
    assert "header" in problems[3]
    assert problems[4] == "larger than 300 bytes"
    assert problems[5] == ""
    assert entries[1].data == good and entries[5].data == good
    assert entries[3].label == "message 3 (line 9)"


def test_not_an_mbox() -> None:
    (entry,) = read_all(b"hello\nworld\n")
    assert entry.problem == "not an mbox: no From_ line"


def test_long_lines_are_chunked_without_false_separators() -> None:
    # "From " right after a chunk boundary is inside a line: not a separator.
    body = b"Subject: long\r\n\r\n" + b"a" * (mbox._CHUNK - 17) + b"From inside\r\n"
    long_line = b"Subject: longer\r\n\r\n" + b"b" * (3 * mbox._CHUNK) + b"\r\n"
    entries = read_all(write_all([body, long_line]))
    assert [e.data for e in entries] == [body, long_line]


def test_canonical_line_endings() -> None:
    assert canonical_line_endings(b"A: b\n\nc\n") == b"A: b\r\n\r\nc\r\n"
    mixed = b"A: b\r\n\r\nc\n"
    assert canonical_line_endings(mixed) is mixed
    assert canonical_line_endings(b"no newline") == b"no newline"


def test_envelope_sender() -> None:
    assert envelope_sender(b"Return-Path: <a@b.example>\r\nX: y\r\n\r\n") == "a@b.example"
    assert envelope_sender(b"Return-Path: <>\r\n\r\n") == ""
    assert envelope_sender(b"X: y\r\n\r\nReturn-Path: <body@x>\r\n") == ""


def test_maildir_flags() -> None:
    assert maildir_flags("123.abc.host:2,FRS") == {"\\Flagged", "\\Answered", "\\Seen"}
    assert maildir_flags("123.abc.host:2,DTPa") == {"\\Draft", "\\Deleted"}
    assert maildir_flags("123.abc.host!2,S") == {"\\Seen"}
    assert maildir_flags("123.abc.host") == frozenset()


def test_read_maildir(tmp_path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    files = {
        "cur/1.a.h:2,S": (b"Subject: one\n\n1\n", 1000),
        "cur/2.b.h:2,RF": (b"Subject: two\r\n\r\n2\r\n", 2000),
        "new/3.c.h": (b"Subject: three\n\n3\n", 3000),
        "cur/4.d.h:2,": (b"garbage without header\n", 4000),
        "cur/.hidden": (b"Subject: no\n\n", 500),
        "tmp/5.e.h": (b"Subject: in delivery\n\n", 600),
    }
    for name, (data, mtime) in files.items():
        (tmp_path / name).write_bytes(data)
        os.utime(tmp_path / name, (mtime, mtime))
    entries = list(read_maildir(tmp_path))
    assert [e.label for e in entries] == [
        "cur/1.a.h:2,S",
        "cur/2.b.h:2,RF",
        "new/3.c.h",
        "cur/4.d.h:2,",
    ]
    assert entries[0].flags == {"\\Seen"} and entries[0].internal_date == 1000
    assert entries[1].flags == {"\\Answered", "\\Flagged"}
    assert entries[1].data == b"Subject: two\r\n\r\n2\r\n"
    assert entries[2].flags == frozenset()
    assert entries[3].problem and not entries[3].data
