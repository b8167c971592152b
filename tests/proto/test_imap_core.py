"""Byte-level transcript tests of the IMAP connection core (proto.imap).

Each test feeds client bytes and asserts the exact bytes the core queued and the events
it yielded: command framing, literals (RFC 9051 4.3, 7.6; RFC 7888), streamed APPEND
(RFC 9051 6.3.12), AUTHENTICATE (6.2.2), IDLE (6.3.13), STARTTLS (6.2.1), the state
table (RFC 9051 6.1-6.4) and the bad-command limit. Properties in test_imap_fuzz.py.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

import pytest

from mailward.proto.imap import (
    COMMAND_TABLE,
    AppendAborted,
    AppendChunk,
    AppendEnd,
    AppendStart,
    AuthenticateResponse,
    CommandError,
    CommandReceived,
    ConnectionClosed,
    IdleDone,
    ImapEvent,
    ImapProtocolError,
    ImapServer,
    ImapSettings,
    ImapState,
    NeedData,
)
from mailward.proto.imap_commands import (
    COMMAND_NAMES,
    Authenticate,
    Command,
    Idle,
    Login,
    Noop,
    Search,
    SearchAll,
    StartTls,
)

CONTINUE = b"+ Ready for literal data\r\n"
NA, AU, SE = ImapState.NOT_AUTHENTICATED, ImapState.AUTHENTICATED, ImapState.SELECTED


class Client:
    """Drives one ImapServer like the session does. `append_answer` decides APPENDs:
    None accepts, bytes is the refusal line."""

    def __init__(self, state: ImapState = NA, **settings: Any) -> None:
        self.srv = ImapServer(ImapSettings(**settings))
        self.srv.set_state(state)
        self.append_answer: Callable[[AppendStart], bytes | None] = lambda e: None

    def drain(self) -> list[ImapEvent]:
        events: list[ImapEvent] = []
        while True:
            event = self.srv.next_event()
            if isinstance(event, NeedData):
                return events
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
            if isinstance(event, AppendStart):
                answer = self.append_answer(event)
                if answer is None:
                    self.srv.accept_literal()
                else:
                    self.srv.reject_literal(answer)

    def feed(self, data: bytes) -> tuple[list[ImapEvent], bytes]:
        self.srv.receive_data(data)
        events = self.drain()
        return events, self.srv.data_to_send()

    def feed_bytewise(self, data: bytes) -> tuple[list[ImapEvent], bytes]:
        events: list[ImapEvent] = []
        for i in range(len(data)):
            self.srv.receive_data(data[i : i + 1])
            events += self.drain()
        return events, self.srv.data_to_send()


def received(*commands: Command) -> list[ImapEvent]:
    return [CommandReceived(c) for c in commands]


def bad(tag: str | None, text: str) -> tuple[list[ImapEvent], bytes]:
    line = (tag or "*").encode() + b" BAD " + text.encode() + b"\r\n"
    return [CommandError(tag, line)], line


LOGIN = Command("a", "LOGIN", False, Login("fred", "secret"))

# --- command lines ---------------------------------------------------------------------------


def test_commands_are_parsed_one_at_a_time() -> None:
    c = Client()
    c.srv.receive_data(b"a NOOP\r\nb NOOP\r\n")
    assert c.srv.next_event() == CommandReceived(Command("a", "NOOP", False, Noop()))
    assert c.srv.pending_input == len(b"b NOOP\r\n")  # never reads ahead of the session
    assert c.srv.next_event() == CommandReceived(Command("b", "NOOP", False, Noop()))
    assert isinstance(c.srv.next_event(), NeedData)
    assert c.srv.data_to_send() == b""  # the core sends no greeting and no answers


def test_pipelined_command_sees_the_state_the_session_set() -> None:
    c = Client()
    c.srv.receive_data(b"a LOGIN fred secret\r\nb SELECT INBOX\r\n")
    assert c.srv.next_event() == CommandReceived(LOGIN)
    c.srv.set_state(AU)
    event = c.srv.next_event()
    assert isinstance(event, CommandReceived) and event.command.name == "SELECT"


def test_bare_lf_ends_a_line() -> None:
    assert Client().feed(b"a LOGIN fred secret\n") == (received(LOGIN), b"")


def test_partial_line_waits() -> None:
    c = Client()
    assert c.feed(b"a LOGIN fred sec") == ([], b"")
    assert c.feed(b"ret\r") == ([], b"")
    assert c.feed(b"\n") == (received(LOGIN), b"")


@pytest.mark.parametrize(
    ("data", "tag", "text"),
    [
        (b"\r\n", None, "Empty command line"),
        (b"+ NOOP\r\n", None, "Invalid or missing tag"),
        (b"a FROB\r\n", "a", "Unknown command"),
        (b"a NOOP x\r\n", "a", "Unexpected characters at end of command"),
        (b"a LOGIN fred\r\n", "a", "Expected a space"),
        (b"a SELECT INBOX\r\n", "a", "Not authenticated"),
        (b"a UID FROB\r\n", "a", "Unknown UID command"),
        (b"a LOGIN fred sec\rret\r\n", "a", "Unexpected characters at end of command"),
        (b"a LOGIN fred \x00\r\n", "a", "Expected a password"),
    ],
)
def test_refused_commands(data: bytes, tag: str | None, text: str) -> None:
    c = Client()
    assert c.feed(data) == bad(tag, text)
    assert c.feed(b"a LOGIN fred secret\r\n") == (received(LOGIN), b"")  # and carries on


def test_bad_charset_is_no_and_not_counted() -> None:
    c = Client(SE, max_bad_commands=2)
    line = b"a NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset\r\n"
    for _ in range(3):
        assert c.feed(b"a SEARCH CHARSET KOI8-R ALL\r\n") == ([CommandError("a", line)], line)
    events, _ = c.feed(b"b SEARCH ALL\r\n")
    assert events == received(Command("b", "SEARCH", False, Search(None, SearchAll())))


def test_line_too_long_is_refused_and_skipped() -> None:
    c = Client(max_line=100)
    data = b"a LOGIN " + b"x" * 200 + b" y\r\n"
    expected = bad("a", "[TOOBIG] Command line too long")
    assert c.feed(data) == expected
    assert c.feed(b"a LOGIN fred secret\r\n") == (received(LOGIN), b"")
    c = Client(max_line=100)
    assert c.feed_bytewise(data + b"a LOGIN fred secret\r\n") == (
        expected[0] + received(LOGIN),
        expected[1],
    )


def test_line_limit_excludes_crlf() -> None:
    line = b"a LOGIN fred " + b"s" * 87
    assert len(line) == 100
    c = Client(max_line=100)
    events, _ = c.feed_bytewise(line + b"\r\n")
    assert events == received(Command("a", "LOGIN", False, Login("fred", "s" * 87)))
    c = Client(max_line=100)
    assert c.feed_bytewise(line + b"s\r\n")[1] == b"a BAD [TOOBIG] Command line too long\r\n"


def test_line_without_end_is_refused_in_bounded_memory() -> None:
    c = Client(max_line=100)
    assert c.feed(b"a NOOP " + b"x" * 93 + b"\r") == ([], b"")  # 100 octets + CR may end
    assert c.srv.pending_input == 101
    assert c.feed(b"x") == bad("a", "[TOOBIG] Command line too long")  # cannot any more
    assert c.srv.pending_input == 0
    for _ in range(100):
        assert c.feed(b"y" * 1000) == ([], b"")
        assert c.srv.pending_input == 0
    events, out = c.feed(b"\r\nb NOOP\r\n")
    assert (events, out) == (received(Command("b", "NOOP", False, Noop())), b"")


def test_overlong_line_without_tag() -> None:
    c = Client(max_line=10)
    assert c.feed(b"(" * 50 + b"\r\n") == bad(None, "[TOOBIG] Command line too long")


def test_overlong_line_tag_does_not_depend_on_reads() -> None:
    # the tag is looked for in the first max_line + 1 octets only, however many arrived
    data = b"x" * 70 + b"c3 LOGOUT\r\n"
    expected = bad(None, "[TOOBIG] Command line too long")
    assert Client(max_line=40).feed(data) == expected
    assert Client(max_line=40).feed_bytewise(data) == expected
    data = b"t" * 40 + b" NOOP " + b"x" * 50 + b"\r\n"
    expected = bad("t" * 40, "[TOOBIG] Command line too long")
    assert Client(max_line=40).feed(data) == expected
    assert Client(max_line=40).feed_bytewise(data) == expected


def test_command_size_limit() -> None:
    c = Client(max_command=60)
    data = b"a LOGIN {10}\r\n"
    assert c.feed(data) == ([], CONTINUE)
    assert c.feed(b"0123456789 " + b"y" * 40 + b"\r\n") == bad("a", "[TOOBIG] Command too long")
    c = Client(max_command=60)
    # the second literal would take the command over max_command: refused before "+"
    events, out = c.feed(b"a LOGIN {10}\r\n0123456789 {40}\r\n")
    error_events, line = bad("a", "[TOOBIG] Literal too large")
    assert (events, out) == (error_events, CONTINUE + line)


def test_nesting_is_bounded() -> None:
    c = Client(SE, max_depth=8)
    assert c.feed(b"a SEARCH " + b"(" * 9 + b"ALL" + b")" * 9 + b"\r\n") == bad(
        "a", "Too deeply nested"
    )


# --- literals --------------------------------------------------------------------------------


def test_synchronizing_literals() -> None:
    c = Client()
    assert c.feed(b"a LOGIN {4}\r\n") == ([], CONTINUE)
    assert c.feed(b"fred {6}\r\n") == ([], CONTINUE)
    assert c.feed(b"secret\r\n") == (received(LOGIN), b"")


def test_literal_split_across_many_reads() -> None:
    c = Client()
    events, out = c.feed_bytewise(b"a LOGIN {4}\r\nfred {6}\r\nsecret\r\n")
    assert (events, out) == (received(LOGIN), CONTINUE * 2)


def test_literal_content_is_opaque() -> None:
    # CRLF, "{5}" and a command inside a literal are just data
    c = Client()
    events, out = c.feed(b"a LOGIN {15}\r\nx\r\nb NOOP {5}\r\n y\r\n")
    assert events == received(Command("a", "LOGIN", False, Login("x\r\nb NOOP {5}\r\n", "y")))
    assert out == CONTINUE


def test_empty_literal() -> None:
    c = Client()
    assert c.feed(b"a LOGIN {0}\r\n {0+}\r\n\r\n") == (
        received(Command("a", "LOGIN", False, Login("", ""))),
        CONTINUE,
    )


def test_non_synchronizing_literal_gets_no_continuation() -> None:
    c = Client()
    assert c.feed(b"a LOGIN {4+}\r\nfred {6+}\r\nsecret\r\n") == (received(LOGIN), b"")


def test_literal_minus_limits_non_synchronizing_literals() -> None:
    # RFC 7888 4: with LITERAL- a {n+} literal over 4096 octets is refused; it is read
    # and dropped (the client sends it anyway) and the next command is served
    c = Client(max_literal=10_000)
    data = b"a LOGIN fred {4097+}\r\n" + b"s" * 4097 + b"\r\n"
    assert c.feed(data) == bad("a", "[TOOBIG] Non-synchronizing literal too large")
    assert c.feed(b"a LOGIN fred secret\r\n") == (received(LOGIN), b"")
    c = Client(max_literal=10_000)
    events, _ = c.feed(b"a LOGIN fred {4096+}\r\n" + b"s" * 4096 + b"\r\n")
    assert events == received(Command("a", "LOGIN", False, Login("fred", "s" * 4096)))


def test_literal_plus_allows_larger_non_synchronizing_literals() -> None:
    c = Client(max_literal=10_000, literal_plus=True)
    events, out = c.feed(b"a LOGIN fred {5000+}\r\n" + b"s" * 5000 + b"\r\n")
    assert events == received(Command("a", "LOGIN", False, Login("fred", "s" * 5000)))
    assert out == b""


def test_synchronizing_literal_over_limit_is_never_read() -> None:
    c = Client(max_literal=10)
    assert c.feed(b"a LOGIN {11}\r\n") == bad("a", "[TOOBIG] Literal too large")
    # the client got no "+": its next line is a new command
    assert c.feed(b"a LOGIN fred secret\r\n") == (received(LOGIN), b"")


def test_non_synchronizing_literal_over_limit_is_dropped() -> None:
    c = Client(max_literal=10, literal_plus=True)
    data = b"a LOGIN {11+}\r\nfredfredfre {3+}\r\nabc\r\nb LOGIN fred secret\r\n"
    events, out = c.feed_bytewise(data)
    error_events, line = bad("a", "[TOOBIG] Literal too large")
    assert events == error_events + received(Command("b", "LOGIN", False, Login("fred", "secret")))
    assert out == line


def test_huge_non_synchronizing_literal_closes() -> None:
    c = Client(max_literal=10, literal_plus=True)
    events, out = c.feed(b"a LOGIN {100000+}\r\n" + b"x" * 1000)
    error_events, line = bad("a", "[TOOBIG] Literal too large")
    assert events == [*error_events, ConnectionClosed("literal too large")]
    assert out == line + b"* BYE Literal too large\r\n"
    assert c.srv.next_event() == ConnectionClosed("literal too large")


def test_absurd_literal_size() -> None:
    c = Client()
    assert c.feed(b"a LOGIN {" + b"9" * 400 + b"}\r\n") == bad("a", "[TOOBIG] Literal too large")


def test_literal_refused_before_continuation_for_wrong_state_or_command() -> None:
    c = Client()
    assert c.feed(b"a SELECT {5}\r\n") == bad("a", "Not authenticated")
    assert c.feed(b"b FROB {5}\r\n") == bad("b", "Unknown command")
    assert c.feed(b"{5}\r\n") == bad(None, "Invalid or missing tag")
    assert c.feed(b"c LOGIN fred ~{3}\r\n") == bad("c", "literal8 is only allowed for APPEND data")


def test_refused_command_with_non_synchronizing_literals_is_skipped_whole() -> None:
    c = Client()
    data = b"a SELECT {3+}\r\nabc {2+}\r\nde (CONDSTORE)\r\nb LOGIN fred secret\r\n"
    events, out = c.feed(data)
    error_events, line = bad("a", "Not authenticated")
    assert events == error_events + received(Command("b", "LOGIN", False, Login("fred", "secret")))
    assert out == line


def test_refused_command_then_synchronizing_literal() -> None:
    c = Client()
    # the refusal goes out when the client waits for "+" for its next literal
    assert c.feed(b"a SELECT {3+}\r\nabc {2}\r\n") == bad("a", "Not authenticated")


# --- APPEND (streamed) -----------------------------------------------------------------------


def test_append_synchronizing() -> None:
    c = Client(AU)
    events, out = c.feed(b'a APPEND INBOX (\\Seen) " 7-Feb-1994 21:52:25 -0800" {5}\r\n')
    assert len(events) == 1 and out == CONTINUE
    start = events[0]
    assert isinstance(start, AppendStart)
    assert (start.tag, start.mailbox, start.flags, start.size) == ("a", "INBOX", ("\\Seen",), 5)
    assert start.internal_date is not None and start.internal_date.day == 7
    assert (start.binary, start.synchronizing) == (False, True)
    assert c.feed(b"hel") == ([AppendChunk(b"hel")], b"")
    assert c.feed(b"lo") == ([AppendChunk(b"lo")], b"")
    assert c.feed(b"\r\n") == ([AppendEnd("a")], b"")


def test_append_non_synchronizing_and_pipelined() -> None:
    c = Client(AU)
    events, out = c.feed(b"a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n")
    assert out == b""
    assert events == [
        AppendStart("a", "INBOX", (), None, 5, False, False),
        AppendChunk(b"hello"),
        AppendEnd("a"),
        CommandReceived(Command("b", "NOOP", False, Noop())),
    ]


def test_append_mailbox_as_literal() -> None:
    c = Client(AU)
    assert c.feed(b"a APPEND {9}\r\n") == ([], CONTINUE)
    events, out = c.feed(b"Sent Mail {2}\r\n")
    assert events == [AppendStart("a", "Sent Mail", (), None, 2, False, True)]
    assert out == CONTINUE


def test_append_literal8() -> None:
    c = Client(AU)
    events, _ = c.feed(b"a APPEND INBOX ~{4}\r\n\x00\x01\r\n\r\n")
    assert events == [
        AppendStart("a", "INBOX", (), None, 4, True, True),
        AppendChunk(b"\x00\x01\r\n"),
        AppendEnd("a"),
    ]


def test_append_empty_message() -> None:
    c = Client(AU)
    events, out = c.feed(b"a APPEND INBOX {0}\r\n\r\n")
    assert events == [AppendStart("a", "INBOX", (), None, 0, False, True), AppendEnd("a")]
    assert out == CONTINUE


def test_append_rejected_synchronizing_literal_is_never_read() -> None:
    c = Client(AU)
    c.append_answer = lambda e: b"a NO [TRYCREATE] No such mailbox\r\n"
    events, out = c.feed(b"a APPEND Nope {5}\r\n")
    assert events == [AppendStart("a", "Nope", (), None, 5, False, True)]
    assert out == b"a NO [TRYCREATE] No such mailbox\r\n"
    events, _ = c.feed(b"b NOOP\r\n")
    assert events == received(Command("b", "NOOP", False, Noop()))


def test_append_rejected_non_synchronizing_literal_is_dropped() -> None:
    c = Client(AU)
    c.append_answer = lambda e: b"a NO [OVERQUOTA] Quota exceeded\r\n"
    events, out = c.feed_bytewise(b"a APPEND INBOX {5+}\r\nhello\r\nb NOOP\r\n")
    assert events == [
        AppendStart("a", "INBOX", (), None, 5, False, False),
        CommandReceived(Command("b", "NOOP", False, Noop())),
    ]
    assert out == b"a NO [OVERQUOTA] Quota exceeded\r\n"


def test_append_rejected_large_non_synchronizing_literal_closes() -> None:
    c = Client(AU, literal_plus=True)
    c.append_answer = lambda e: b"a NO [OVERQUOTA] Quota exceeded\r\n"
    events, out = c.feed(b"a APPEND INBOX {1000000+}\r\n" + b"x" * 1000)
    assert events[1:] == [ConnectionClosed("literal too large")]
    assert out == b"a NO [OVERQUOTA] Quota exceeded\r\n* BYE Literal too large\r\n"


def test_append_over_append_limit_is_refused_by_the_core() -> None:
    c = Client(AU, append_limit=10, max_bad_commands=1)
    line = b"a NO [TOOBIG] Message too large\r\n"
    assert c.feed(b"a APPEND INBOX {11}\r\n") == ([CommandError("a", line)], line)
    # NO does not count as a bad command; the literal was not read
    events, _ = c.feed(b"b APPEND INBOX {10}\r\n")
    assert events == [AppendStart("b", "INBOX", (), None, 10, False, True)]


def test_append_literal_minus_limit() -> None:
    c = Client(AU)
    data = b"a APPEND INBOX {5000+}\r\n" + b"x" * 5000 + b"\r\nb NOOP\r\n"
    events, out = c.feed(data)
    error_events, line = bad("a", "[TOOBIG] Non-synchronizing literal too large")
    assert events == error_events + received(Command("b", "NOOP", False, Noop()))
    assert out == line


def test_append_head_refused_before_continuation() -> None:
    c = Client(AU)
    assert c.feed(b"a APPEND INBOX (\\Bogus) {3}\r\n") == bad(
        "a", "Unknown or read-only system flag"
    )
    assert c.feed(b'a APPEND INBOX "32-Jan-2020 00:00:00 +0000" {3}\r\n') == bad(
        "a", "Invalid date-time"
    )
    c = Client(NA)
    assert c.feed(b"a APPEND INBOX {3}\r\n") == bad("a", "Not authenticated")


def test_append_data_after_the_literal_aborts() -> None:
    c = Client(AU)
    events, out = c.feed(b"a APPEND INBOX {3}\r\nabc x\r\n")
    assert events[-3:] == [
        AppendChunk(b"abc"),
        AppendAborted("a"),
        CommandError("a", b"a BAD Unexpected data after the message\r\n"),
    ]
    assert out == CONTINUE + b"a BAD Unexpected data after the message\r\n"


def test_multiappend_is_refused_without_reading_the_second_message() -> None:
    c = Client(AU)
    events, out = c.feed(b"a APPEND INBOX {3}\r\nabc {3}\r\n")
    assert isinstance(events[-2], AppendAborted)
    assert out == CONTINUE + b"a BAD Unexpected data after the message\r\n"
    assert c.feed(b"b NOOP\r\n")[0] == received(Command("b", "NOOP", False, Noop()))


def test_append_end_of_input_mid_message() -> None:
    c = Client(AU)
    c.feed(b"a APPEND INBOX {10}\r\nabc")
    c.srv.receive_eof()
    assert c.drain() == [ConnectionClosed("end of input")]


def test_append_streams_5_mb_in_bounded_memory() -> None:
    rng = random.Random(20240611)
    message = rng.randbytes(5 * 1024 * 1024)
    c = Client(AU, append_limit=10 * 1024 * 1024)
    events, out = c.feed(b"a APPEND INBOX {%d}\r\n" % len(message))
    assert isinstance(events[0], AppendStart) and out == CONTINUE
    total = bytearray()
    pos = 0
    while pos < len(message):
        size = rng.choice([1, 7, 100, 1500, 16384, 65536, rng.randint(1, 200_000)])
        piece = message[pos : pos + size]
        pos += len(piece)
        c.srv.receive_data(piece)
        assert c.srv.pending_input == len(piece)  # only what the shell just handed over
        for event in c.drain():
            assert isinstance(event, AppendChunk)
            total += event.data
        assert c.srv.pending_input == 0
        assert len(c.srv._cmd) == 0  # nothing of the message is collected
    assert total == message
    assert c.feed(b"\r\n") == ([AppendEnd("a")], b"")


def test_append_decision_is_required() -> None:
    c = Client(AU)
    c.srv.receive_data(b"a APPEND INBOX {3}\r\nabc\r\n")
    assert isinstance(c.srv.next_event(), AppendStart)
    with pytest.raises(ImapProtocolError):
        c.srv.next_event()
    with pytest.raises(ImapProtocolError):
        c.srv.reject_literal(b"a NO no")  # not a CRLF-terminated line
    with pytest.raises(ImapProtocolError):
        c.srv.reject_literal(b"a NO x\r\n* OK injected\r\n")
    c.srv.accept_literal()
    with pytest.raises(ImapProtocolError):
        c.srv.accept_literal()
    with pytest.raises(ImapProtocolError):
        c.srv.reject_literal(b"a NO x\r\n")


# --- AUTHENTICATE (RFC 9051 6.2.2) -----------------------------------------------------------

PLAIN = base64.b64encode(b"\x00fred\x00secret")


def start_authenticate(c: Client) -> None:
    events, _ = c.feed(b"a AUTHENTICATE PLAIN\r\n")
    assert events == received(Command("a", "AUTHENTICATE", False, Authenticate("PLAIN", None)))
    c.srv.send(b"+ \r\n")
    c.srv.expect_authenticate_response()


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (PLAIN + b"\r\n", AuthenticateResponse(b"\x00fred\x00secret")),
        (b"\r\n", AuthenticateResponse(b"")),
        (b"*\r\n", AuthenticateResponse(None)),
        (b"not base64!\r\n", AuthenticateResponse(None, malformed=True)),
        (b"AAA=\r\n", AuthenticateResponse(b"\x00\x00")),
        (b"AA=\r\n", AuthenticateResponse(None, malformed=True)),
        (b"\xffAA\r\n", AuthenticateResponse(None, malformed=True)),
        (b"* \r\n", AuthenticateResponse(None, malformed=True)),
    ],
)
def test_authenticate_response(line: bytes, event: AuthenticateResponse) -> None:
    c = Client()
    start_authenticate(c)
    assert c.feed(line) == ([event], b"+ \r\n")
    assert c.srv.phase == "command"


def test_authenticate_multiple_rounds_and_pipelined_response() -> None:
    c = Client()
    c.srv.receive_data(b"a AUTHENTICATE LOGIN\r\nZnJlZA==\r\nc2VjcmV0\r\n")
    assert isinstance(c.srv.next_event(), CommandReceived)
    c.srv.expect_authenticate_response()
    assert c.srv.next_event() == AuthenticateResponse(b"fred")
    c.srv.expect_authenticate_response()
    assert c.srv.next_event() == AuthenticateResponse(b"secret")
    assert isinstance(c.srv.next_event(), NeedData)


def test_authenticate_response_line_too_long() -> None:
    c = Client(max_line=20)
    start_authenticate(c)
    events, _ = c.feed(b"A" * 100 + b"\r\nb NOOP\r\n")
    assert events == [
        AuthenticateResponse(None, malformed=True),
        CommandReceived(Command("b", "NOOP", False, Noop())),
    ]


def test_authenticate_with_initial_response() -> None:
    events, _ = Client().feed(b"a AUTHENTICATE plain " + PLAIN + b"\r\n")
    assert events == received(
        Command("a", "AUTHENTICATE", False, Authenticate("PLAIN", b"\x00fred\x00secret"))
    )


def test_expect_authenticate_response_only_after_authenticate() -> None:
    c = Client()
    with pytest.raises(ImapProtocolError):
        c.srv.expect_authenticate_response()
    c.feed(b"a NOOP\r\n")
    with pytest.raises(ImapProtocolError):
        c.srv.expect_authenticate_response()


# --- IDLE (RFC 9051 6.3.13, RFC 2177) --------------------------------------------------------


def start_idle(c: Client) -> None:
    events, _ = c.feed(b"a IDLE\r\n")
    assert events == received(Command("a", "IDLE", False, Idle()))
    c.srv.send(b"+ idling\r\n")
    c.srv.expect_idle_done()


@pytest.mark.parametrize("done", [b"DONE\r\n", b"done\n", b"Done\r\n"])
def test_idle_done(done: bytes) -> None:
    c = Client(SE)
    start_idle(c)
    assert c.feed(b"DO") == ([], b"+ idling\r\n")
    c.srv.send(b"* 3 EXISTS\r\n")  # the session may send updates meanwhile
    events, out = c.feed(done[2:] + b"b NOOP\r\n")
    assert events == [IdleDone("a"), CommandReceived(Command("b", "NOOP", False, Noop()))]
    assert out == b"* 3 EXISTS\r\n"


@pytest.mark.parametrize("line", [b"b NOOP\r\n", b"DONE \r\n", b"\r\n", b"x" * 200 + b"\r\n"])
def test_idle_anything_but_done(line: bytes) -> None:
    c = Client(SE, max_line=100)
    start_idle(c)
    c.srv.data_to_send()
    events, out = c.feed(line + b"c NOOP\r\n")
    assert out == b"a BAD Expected DONE\r\n"
    assert events == [
        IdleDone("a", valid=False),
        CommandError("a", b"a BAD Expected DONE\r\n"),
        CommandReceived(Command("c", "NOOP", False, Noop())),
    ]


def test_expect_idle_done_only_after_idle() -> None:
    c = Client(SE)
    with pytest.raises(ImapProtocolError):
        c.srv.expect_idle_done()
    c.srv.receive_data(b"a IDLE\r\nb NOOP\r\n")
    assert isinstance(c.srv.next_event(), CommandReceived)
    assert isinstance(c.srv.next_event(), CommandReceived)  # the session did not idle
    with pytest.raises(ImapProtocolError):
        c.srv.expect_idle_done()
    c.feed(b"c IDLE\r\nd FROB\r\n")
    with pytest.raises(ImapProtocolError):
        c.srv.expect_idle_done()  # a refused command came after the IDLE


# --- STARTTLS (RFC 9051 6.2.1) ---------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext() -> None:
    c = Client()
    events, _ = c.feed(b"a STARTTLS\r\nb LOGIN fred secret\r\n")
    assert events == received(Command("a", "STARTTLS", False, StartTls()))
    assert c.srv.phase == "tls" and c.srv.pending_input == 0
    c.srv.receive_data(b"c LOGIN fred secret\r\n")  # still plaintext: dropped
    assert c.drain() == []
    c.srv.tls_established()
    assert c.srv.tls_active
    events, out = c.feed(b"d NOOP\r\n")
    assert events == received(Command("d", "NOOP", False, Noop()))
    assert out == b""


def test_starttls_refusals() -> None:
    assert Client(tls_active=True).feed(b"a STARTTLS\r\n") == bad("a", "TLS is already active")
    assert Client(starttls=False).feed(b"a STARTTLS\r\n") == bad("a", "STARTTLS is not available")
    assert Client(AU).feed(b"a STARTTLS\r\n") == bad("a", "Already authenticated")
    c = Client()
    c.feed(b"a STARTTLS\r\n")
    c.srv.tls_established()
    assert c.feed(b"b STARTTLS\r\n") == bad("b", "TLS is already active")


def test_tls_established_needs_starttls() -> None:
    with pytest.raises(ImapProtocolError):
        Client().srv.tls_established()


# --- bad commands, closing -------------------------------------------------------------------


def test_too_many_bad_commands_closes() -> None:
    c = Client(max_bad_commands=3)
    c.feed(b"a FROB\r\nb FROB\r\n")
    events, out = c.feed(b"c FROB\r\nd NOOP\r\n")
    assert events == [
        CommandError("c", b"c BAD Unknown command\r\n"),
        ConnectionClosed("too many errors"),
    ]
    assert out == b"c BAD Unknown command\r\n* BYE Too many errors\r\n"
    c.srv.receive_data(b"e NOOP\r\n")
    assert c.srv.next_event() == ConnectionClosed("too many errors")


def test_state_refusals_and_literal_refusals_count() -> None:
    c = Client(max_bad_commands=3, max_literal=1)
    c.feed(b"a SELECT x\r\nb LOGIN {2}\r\n")
    events, _ = c.feed(b"c\r\n")
    assert events[-1] == ConnectionClosed("too many errors")


def test_close_and_logout_state() -> None:
    c = Client()
    c.srv.send(b"* BYE Logging out\r\n")
    c.srv.close()
    assert c.feed(b"a NOOP\r\n") == (
        [ConnectionClosed("closed by server")],
        b"* BYE Logging out\r\n",
    )
    c = Client(AU)
    c.srv.set_state(ImapState.LOGOUT)
    assert c.srv.state is ImapState.LOGOUT
    assert c.feed(b"a NOOP\r\n")[0] == [ConnectionClosed("logout")]


def test_end_of_input() -> None:
    c = Client()
    c.srv.receive_data(b"a LOGIN fred secret\r\nb NOO")
    c.srv.receive_eof()
    assert c.drain() == [CommandReceived(LOGIN), ConnectionClosed("end of input")]


# --- every (state, command) pair (RFC 9051 6.1-6.4) ------------------------------------------

VALID: dict[str, bytes] = {
    "CAPABILITY": b"t CAPABILITY",
    "NOOP": b"t NOOP",
    "LOGOUT": b"t LOGOUT",
    "ID": b't ID ("name" "x")',
    "STARTTLS": b"t STARTTLS",
    "AUTHENTICATE": b"t AUTHENTICATE PLAIN " + PLAIN,
    "LOGIN": b"t LOGIN fred secret",
    "ENABLE": b"t ENABLE CONDSTORE",
    "SELECT": b"t SELECT INBOX",
    "EXAMINE": b"t EXAMINE INBOX",
    "CREATE": b"t CREATE x",
    "DELETE": b"t DELETE x",
    "RENAME": b"t RENAME x y",
    "SUBSCRIBE": b"t SUBSCRIBE x",
    "UNSUBSCRIBE": b"t UNSUBSCRIBE x",
    "LIST": b't LIST "" *',
    "LSUB": b't LSUB "" *',
    "NAMESPACE": b"t NAMESPACE",
    "STATUS": b"t STATUS INBOX (MESSAGES)",
    "APPEND": b"t APPEND INBOX {1}",
    "IDLE": b"t IDLE",
    "GETQUOTA": b't GETQUOTA ""',
    "GETQUOTAROOT": b"t GETQUOTAROOT INBOX",
    "CHECK": b"t CHECK",
    "CLOSE": b"t CLOSE",
    "UNSELECT": b"t UNSELECT",
    "EXPUNGE": b"t EXPUNGE",
    "SEARCH": b"t SEARCH ALL",
    "FETCH": b"t FETCH 1 FLAGS",
    "STORE": b"t STORE 1 +FLAGS (\\Seen)",
    "COPY": b"t COPY 1 x",
    "MOVE": b"t MOVE 1 x",
}
UID_VALID: dict[str, bytes] = {
    "FETCH": b"t UID FETCH 1 FLAGS",
    "SEARCH": b"t UID SEARCH ALL",
    "STORE": b"t UID STORE 1 FLAGS ()",
    "COPY": b"t UID COPY 1 x",
    "MOVE": b"t UID MOVE 1 x",
    "EXPUNGE": b"t UID EXPUNGE 1",
}
STATES = [NA, AU, SE]


def test_table_covers_every_command_and_state() -> None:
    assert set(COMMAND_TABLE) == COMMAND_NAMES == set(VALID)
    assert all(len(row) == len(STATES) for row in COMMAND_TABLE.values())


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", sorted(VALID))
def test_state_command_pair(state: ImapState, name: str) -> None:
    c = Client(state)
    events, out = c.feed(VALID[name] + b"\r\n")
    cell = COMMAND_TABLE[name][STATES.index(state)]
    if cell is not None:
        assert (events, out) == bad("t", cell)
        return
    if name == "APPEND":
        assert events == [AppendStart("t", "INBOX", (), None, 1, False, True)]
        assert out == CONTINUE
        return
    assert len(events) == 1 and out == b""
    event = events[0]
    assert isinstance(event, CommandReceived)
    assert (event.command.tag, event.command.name, event.command.uid) == ("t", name, False)


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", sorted(UID_VALID))
def test_state_uid_command_pair(state: ImapState, name: str) -> None:
    events, out = Client(state).feed(UID_VALID[name] + b"\r\n")
    cell = COMMAND_TABLE[name][STATES.index(state)]
    if cell is not None:
        assert (events, out) == bad("t", cell)
    else:
        assert len(events) == 1 and isinstance(events[0], CommandReceived)
        assert (events[0].command.name, events[0].command.uid) == (name, True)


@pytest.mark.parametrize("state", STATES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", sorted(VALID))
def test_state_is_checked_before_a_literal_is_invited(state: ImapState, name: str) -> None:
    c = Client(state)
    events, out = c.feed(b"t " + name.encode() + b" {3}\r\n")
    cell = COMMAND_TABLE[name][STATES.index(state)]
    if cell is not None:
        assert (events, out) == bad("t", cell)
    elif name == "STARTTLS":
        assert out == CONTINUE  # allowed here; the literal itself is a syntax error later
    else:
        assert (events, out) == ([], CONTINUE)


def test_logout_state_accepts_nothing() -> None:
    c = Client(AU)
    c.srv.set_state(ImapState.LOGOUT)
    for data in VALID.values():
        c.srv.receive_data(data + b"\r\n")
        assert c.srv.next_event() == ConnectionClosed("logout")
    assert c.srv.data_to_send() == b""
