"""DATA and BDAT content handling of the SMTP server core (proto.smtp).

RFC 5321 4.1.1.4 (end of data), 4.5.2 (transparency), 4.5.3.1.6 (line length),
RFC 3030 (BDAT), RFC 1870 (SIZE), and the SMTP smuggling defence (bare CR/LF).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from mailward.proto.replies import MESSAGE_ACCEPTED, RECIPIENT_OK, SENDER_OK
from mailward.proto.smtp import SmtpServer, SmtpSettings
from mailward.proto.smtp_events import (
    CommandRefused,
    ConnectionClosed,
    MailFrom,
    MessageAborted,
    MessageChunk,
    MessageEnd,
    MessageStart,
    NeedData,
    RcptTo,
    SmtpEvent,
)

from . import merged

OPEN = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
OPEN_REPLIES = (
    b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE %d\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
    b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
)
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
ACCEPTED = b"250 2.0.0 Message accepted\r\n"
BARE = b"554 5.6.0 Message refused: bare CR or LF not allowed\r\n"
LONG = b"554 5.6.0 Message refused: line longer than 1000 octets\r\n"
TOO_BIG = b"552 5.3.4 Message size exceeds fixed limit\r\n"
ANSWERS = {MailFrom: SENDER_OK, RcptTo: RECIPIENT_OK, MessageEnd: MESSAGE_ACCEPTED}


def run(pieces: Iterable[bytes], **settings: Any) -> tuple[list[SmtpEvent], bytes]:
    """Feed `pieces` one after another, answering every decision positively."""
    srv = SmtpServer(SmtpSettings("mx.example.test", **settings))
    srv.data_to_send()
    events: list[SmtpEvent] = []
    for piece in pieces:
        srv.receive_data(piece)
        while not isinstance(event := srv.next_event(), NeedData):
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events, srv.data_to_send()
            if type(event) in ANSWERS:
                srv.send_reply(ANSWERS[type(event)])
    return events, srv.data_to_send()


def both_ways(data: bytes, **settings: Any) -> tuple[list[SmtpEvent], bytes]:
    """Run `data` whole and one byte at a time; the results must be the same."""
    whole = run([data], **settings)
    bytewise = run([data[i : i + 1] for i in range(len(data))], **settings)
    assert merged(whole[0]) == merged(bytewise[0])
    assert whole[1] == bytewise[1]
    return merged(whole[0]), whole[1]


def message(data: bytes, **settings: Any) -> tuple[list[SmtpEvent], bytes]:
    """Events and replies after the transaction is open, for `DATA` + `data`."""
    events, out = both_ways(OPEN + b"DATA\r\n" + data, **settings)
    prefix = OPEN_REPLIES % settings.get("max_message_size", 52428800)
    assert out.startswith(prefix)
    return events[3:], out[len(prefix) :]


def content(events: list[SmtpEvent]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, MessageChunk))


# --- DATA -----------------------------------------------------------------------------------


def test_data_byte_exact() -> None:
    body = b"Subject: hi\r\n\r\nline 1\r\n\r\n  spaced  \r\n\xff\xfe 8bit\r\n"
    events, out = message(body + b".\r\n")
    assert events == [MessageStart(), MessageChunk(body), MessageEnd(len(body))]
    assert out == START_DATA + ACCEPTED


def test_data_without_final_crlf_in_content_is_impossible() -> None:
    # "abc.\r\n" does not end: the dot is not at a line start
    events, _out = message(b"abc.\r\n.\r\n")
    assert content(events) == b"abc.\r\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"..\r\n", b".\r\n"),
        (b"..x\r\n", b".x\r\n"),
        (b"a\r\n..\r\nb\r\n", b"a\r\n.\r\nb\r\n"),
        (b"...\r\n", b"..\r\n"),
        (b".x\r\n", b"x\r\n"),  # a lone leading dot is removed too (RFC 5321 4.5.2)
        (b"a\r\n.b\r\n.c\r\n", b"a\r\nb\r\nc\r\n"),
        (b"\r\n..\r\n", b"\r\n.\r\n"),
    ],
)
def test_dot_unstuffing(raw: bytes, expected: bytes) -> None:
    events, _ = message(raw + b".\r\n")
    assert content(events) == expected
    assert events[-1] == MessageEnd(len(expected))


def test_empty_message_right_after_354() -> None:
    events, out = message(b".\r\n")
    assert events == [MessageStart(), MessageEnd(0)]
    assert out == START_DATA + ACCEPTED


def test_message_of_one_empty_line() -> None:
    events, _ = message(b"\r\n.\r\n")
    assert content(events) == b"\r\n"


def test_pipelined_command_after_data() -> None:
    events, out = message(b"x\r\n.\r\nQUIT\r\n")
    assert events[-2:] == [MessageEnd(3), ConnectionClosed("quit")]
    assert out == START_DATA + ACCEPTED + b"221 2.0.0 Bye\r\n"


SMUGGLING = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n.\r", b"\r\n.\r"]


@pytest.mark.parametrize("seq", SMUGGLING)
def test_smuggling_sequences_never_end_data_reject(seq: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@d.example>\r\nDATA\r\n"
    events, out = message(b"Subject: a\r\n\r\nbody" + seq + smuggled + b"evil\r\n.\r\nNOOP\r\n")
    assert [type(e) for e in events] == [MessageStart, MessageAborted]
    assert events[1] == MessageAborted(554, "bare CR or LF")
    assert out == START_DATA + BARE + b"250 2.0.0 OK\r\n"  # one reply, at the real end


@pytest.mark.parametrize("seq", SMUGGLING)
def test_smuggling_sequences_never_end_data_normalize(seq: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@x.example>\r\n"
    events, out = message(
        b"body" + seq + smuggled + b"more\r\n.\r\n", bare_line_endings="normalize"
    )
    assert [type(e) for e in events] == [MessageStart, MessageChunk, MessageEnd]
    data = content(events)
    assert smuggled in data  # part of the message, never a command
    assert data.endswith(b"more\r\n")
    assert data.replace(b"\r\n", b"").count(b"\r") == 0
    assert data.replace(b"\r\n", b"").count(b"\n") == 0
    assert out == START_DATA + ACCEPTED


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n"),
        (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\n\rb\r\n", b"a\r\n\r\nb\r\n"),
        (b"\nx\r\n", b"\r\nx\r\n"),
    ],
)
def test_bare_line_endings_normalized(raw: bytes, expected: bytes) -> None:
    events, _ = message(raw + b".\r\n", bare_line_endings="normalize")
    assert content(events) == expected
    assert events[-1] == MessageEnd(len(expected))


def test_no_chunks_after_abort_and_transaction_reset() -> None:
    events, out = message(b"a\nb\r\n" + b"x" * 5000 + b"\r\n.\r\nRCPT TO:<c@d.example>\r\n")
    assert [type(e) for e in events] == [MessageStart, MessageAborted, CommandRefused]
    assert out == START_DATA + BARE + b"503 5.5.1 Send MAIL first\r\n"


@pytest.mark.parametrize("stuffed", [False, True])
def test_line_length_limit(stuffed: bool) -> None:
    dot = b"." if stuffed else b""
    fits = dot + b"y" * 998 + b"\r\n"  # 1000 octets with CRLF, not counting a stuffed dot
    events, out = message(fits * 3 + b".\r\n")
    assert content(events) == (b"y" * 998 + b"\r\n") * 3
    events, out = message(fits + dot + b"z" * 999 + b"\r\n" + fits + b".\r\n")
    assert events == [MessageStart(), MessageAborted(554, "line over 1000 octets")]
    assert out == START_DATA + LONG


def test_long_line_without_end() -> None:
    # refused as soon as the line passes 998 octets; ".\r\n" is not at a line start,
    # so the message has not ended and no reply is due yet
    events, out = message(b"z" * 5000 + b".\r\n")
    assert events == [MessageStart(), MessageAborted(554, "line over 1000 octets")]
    assert out == START_DATA
    events, out = message(b"z" * 5000 + b"\r\n.\r\n")
    assert events == [MessageStart(), MessageAborted(554, "line over 1000 octets")]


def test_size_limit() -> None:
    events, out = message(b"x" * 98 + b"\r\n.\r\n", max_message_size=100)
    assert events[-1] == MessageEnd(100)
    events, out = message(
        b"x" * 99 + b"\r\n" + b"y" * 500 + b"\r\n.\r\nNOOP\r\n", max_message_size=100
    )
    assert events == [MessageStart(), MessageAborted(552, "message over size limit")]
    assert out == START_DATA + TOO_BIG + b"250 2.0.0 OK\r\n"


def test_first_violation_wins_whatever_the_cut() -> None:
    # long line (at octet 998) before the size limit (octet 2000) before a bare LF
    events, out = message(b"x" * 3000 + b"\n\r\n.\r\n", max_message_size=2000)
    assert events[-1] == MessageAborted(554, "line over 1000 octets")
    assert out == START_DATA + LONG
    events, out = message(b"ab\ncd" + b"x" * 3000 + b"\r\n.\r\n", max_message_size=2000)
    assert events[-1] == MessageAborted(554, "bare CR or LF")
    assert out == START_DATA + BARE
    events, out = message(b"ab\r\n" * 600 + b"\n\r\n.\r\n", max_message_size=2000)
    assert events[-1] == MessageAborted(552, "message over size limit")
    assert out == START_DATA + TOO_BIG


def test_eof_during_data() -> None:
    srv = SmtpServer(SmtpSettings("mx.example.test"))
    srv.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    srv.next_event()
    srv.next_event()
    srv.send_reply(SENDER_OK)
    srv.receive_data(b"RCPT TO:<c@d.example>\r\n")
    srv.next_event()
    srv.send_reply(RECIPIENT_OK)
    srv.receive_data(b"DATA\r\nhalf\r\n.")
    srv.receive_eof()
    seen = [srv.next_event() for _ in range(3)]
    assert seen == [MessageStart(), MessageChunk(b"hal"), ConnectionClosed("eof")]


# --- BDAT (RFC 3030) ---------------------------------------------------------------------


def bdat(data: bytes, **settings: Any) -> tuple[list[SmtpEvent], bytes]:
    events, out = both_ways(OPEN + data, **settings)
    prefix = OPEN_REPLIES % settings.get("max_message_size", 52428800)
    assert out.startswith(prefix)
    return events[3:], out[len(prefix) :]


def test_bdat_chunks() -> None:
    events, out = bdat(b"BDAT 5\r\nhelloBDAT 10\r\n.\r\n..\r\nxyzBDAT 0 LAST\r\nNOOP\r\n")
    assert events == [
        MessageStart(),
        MessageChunk(b"hello.\r\n..\r\nxyz"),  # raw octets, no dot-unstuffing
        MessageEnd(15),
    ]
    assert out == (
        b"250 2.0.0 5 octets received\r\n250 2.0.0 10 octets received\r\n"
        + ACCEPTED
        + b"250 2.0.0 OK\r\n"
    )


def test_bdat_single_last_chunk() -> None:
    events, out = bdat(b"bdat 4 last\r\nab\r\n")
    assert events == [MessageStart(), MessageChunk(b"ab\r\n"), MessageEnd(4)]
    assert out == ACCEPTED


def test_bdat_crlf_split_across_chunks() -> None:
    events, _out = bdat(b"BDAT 3\r\nab\rBDAT 3 LAST\r\n\ncd")
    assert content(events) == b"ab\r\ncd"
    assert events[-1] == MessageEnd(6)


def test_bdat_bare_cr_at_end() -> None:
    events, out = bdat(b"BDAT 3\r\nab\rBDAT 0 LAST\r\n")
    assert events == [MessageStart(), MessageAborted(554, "bare CR or LF")]
    assert out == b"250 2.0.0 3 octets received\r\n" + BARE
    events, out = bdat(b"BDAT 3\r\nab\rBDAT 0 LAST\r\n", bare_line_endings="normalize")
    assert content(events) == b"ab\r\n"


def test_bdat_bare_lf_reply_after_chunk_then_reset() -> None:
    events, out = bdat(b"BDAT 6\r\na\nb\r\nxBDAT 2 LAST\r\nzzRCPT TO:<c@d.example>\r\n")
    assert [type(e) for e in events] == [
        MessageStart,
        MessageAborted,
        CommandRefused,
        CommandRefused,
    ]
    # the failed chunk gets 554; the transaction is over, so the next BDAT is refused
    # but its 2 octets are still skipped, never read as a command
    assert out == BARE + b"503 5.5.1 Send MAIL first\r\n" * 2


def test_bdat_size_limit_discards_announced_octets() -> None:
    events, out = bdat(
        b"BDAT 20 LAST\r\n" + b"QUIT\r\n" * 3 + b"xx" + b"NOOP\r\n", max_message_size=10
    )
    assert events == [MessageStart(), MessageAborted(552, "message over size limit")]
    assert out == TOO_BIG + b"250 2.0.0 OK\r\n"


def test_bdat_without_recipient_skips_octets() -> None:
    events, out = both_ways(b"EHLO c.example\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert [type(e) for e in events] == [type(events[0]), CommandRefused]
    assert out.endswith(b"503 5.5.1 Send MAIL first\r\n250 2.0.0 OK\r\n")


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"DATA\r\n", b"503 5.5.1 Send BDAT or RSET to finish the message\r\n"),
        (b"RCPT TO:<x@d.example>\r\n", b"503 5.5.1 Send BDAT or RSET to finish the message\r\n"),
        (b"MAIL FROM:<x@d.example>\r\n", b"503 5.5.1 Nested MAIL command\r\n"),
    ],
)
def test_bdat_sequence(line: bytes, reply: bytes) -> None:
    _events, out = bdat(b"BDAT 1\r\nx" + line)
    assert out == b"250 2.0.0 1 octets received\r\n" + reply


@pytest.mark.parametrize(
    "args", [b"", b" x", b" 1 LATE", b" -1", b" 1  LAST", b" 123456789012345678901"]
)
def test_bdat_syntax(args: bytes) -> None:
    _events, out = bdat(b"BDAT" + args + b"\r\n")
    assert out == b"501 5.5.4 Syntax error in parameters or arguments\r\n"


def test_rset_during_bdat() -> None:
    _events, out = bdat(b"BDAT 1\r\nxRSET\r\nMAIL FROM:<a@b.example>\r\n")
    assert out == b"250 2.0.0 1 octets received\r\n250 2.0.0 OK\r\n250 2.1.0 Sender OK\r\n"
