"""Byte-level transcript tests of the POP3 server core (proto.pop3).

Each test feeds client bytes and asserts the exact response bytes and events, state
by state (RFC 1939 3: AUTHORIZATION, TRANSACTION, UPDATE). Properties (any input, any
cutting, every state/command pair, dot-stuffing round trips) are in test_pop3_fuzz.py.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from mailward.proto.pop3 import (
    COMMAND_TABLE,
    MAX_COMMAND_LINE,
    SHUTTING_DOWN,
    CommandRefused,
    ConnectionClosed,
    Credentials,
    LoginRefusal,
    NeedData,
    Pop3Event,
    Pop3Message,
    Pop3ProtocolError,
    Pop3Server,
    Pop3Settings,
    Pop3State,
    Retrieve,
    StartTls,
    Update,
)

HOST = "pop.example.test"
GREETING = b"+OK pop.example.test POP3 ready\r\n"
USER = "alice@example.test"
PASSWORD = "correct horse battery"  # spaces are part of a PASS argument
LOGIN = f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()

MESSAGES = [
    b"Subject: one\r\n\r\nhello\r\n",
    b"Subject: two\r\nX: y\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nend\r\n",
    b"Subject: three\r\n\r\nno final line end",
]
UIDS = ["7.1", "7.2", "7.5"]
SIZES = [len(m) for m in MESSAGES]
TOTAL = sum(SIZES)
LOGGED_IN = f"+OK Logged in, 3 messages ({TOTAL} octets)\r\n".encode()

CAPA_PLAIN = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    b"PIPELINING\r\nSTLS\r\n.\r\n"
)
CAPA_TLS = (
    b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    b"PIPELINING\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
)
USE_STLS = b"-ERR [AUTH] Plaintext authentication disallowed without TLS, send STLS first\r\n"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"


class Session:
    """Drives one Pop3Server like the shell does, answering decisions as configured."""

    def __init__(
        self,
        *,
        tls_active: bool = True,
        messages: list[bytes] | None = None,
        chunk: int = 7,
        **settings: Any,
    ) -> None:
        self.srv = Pop3Server(Pop3Settings(HOST, tls_active=tls_active, **settings))
        self.contents = MESSAGES if messages is None else messages
        self.chunk = chunk
        self.refusals: list[LoginRefusal] = []  # answers to the next Credentials, in order
        self.update_ok = True
        self.events: list[Pop3Event] = []
        assert self.srv.data_to_send() == GREETING

    def snapshot(self) -> list[Pop3Message]:
        uids = UIDS if self.contents is MESSAGES else [f"1.{i}" for i in range(len(self.contents))]
        return [Pop3Message(len(m), u) for m, u in zip(self.contents, uids, strict=True)]

    def drain(self) -> list[Pop3Event]:
        new: list[Pop3Event] = []
        while True:
            event = self.srv.next_event()
            if isinstance(event, NeedData):
                break
            new.append(event)
            if isinstance(event, ConnectionClosed):
                break
            if isinstance(event, StartTls):
                self.srv.tls_established()
            elif isinstance(event, Credentials):
                if self.refusals:
                    self.srv.refuse_login(self.refusals.pop(0))
                else:
                    self.srv.accept_login(self.snapshot())
            elif isinstance(event, Retrieve):
                data = self.contents[event.number - 1]
                for i in range(0, len(data), self.chunk):
                    if not self.srv.send_message_data(data[i : i + self.chunk]):
                        break
                self.srv.end_message()
            elif isinstance(event, Update):
                self.srv.finish_update(self.update_ok)
        self.events += new
        return new

    def send(self, data: bytes) -> bytes:
        self.srv.receive_data(data)
        self.drain()
        return self.srv.data_to_send()

    def login(self) -> None:
        count, octets = len(self.contents), sum(map(len, self.contents))
        logged_in = f"+OK Logged in, {count} messages ({octets} octets)\r\n".encode()
        assert self.send(LOGIN) == b"+OK Send PASS\r\n" + logged_in
        assert self.srv.state is Pop3State.TRANSACTION


def logged_in(**kw: Any) -> Session:
    s = Session(**kw)
    s.login()
    return s


def refused(s: Session) -> list[CommandRefused]:
    return [e for e in s.events if isinstance(e, CommandRefused)]


# --- greeting, CAPA, STLS (RFC 1939 4, RFC 2449 5, RFC 2595 4) -----------------------------------


def test_greeting_names_no_software() -> None:
    srv = Pop3Server(Pop3Settings(HOST))
    assert srv.data_to_send() == GREETING
    assert srv.state is Pop3State.AUTHORIZATION


def test_capa_before_tls_offers_stls_and_no_login() -> None:
    s = Session(tls_active=False)
    assert s.send(b"CAPA\r\n") == CAPA_PLAIN
    assert b"IMPLEMENTATION" not in CAPA_PLAIN


def test_capa_under_tls_offers_user_and_sasl_not_stls() -> None:
    s = Session()
    assert s.send(b"capa\r\n") == CAPA_TLS


def test_capa_without_tls_available_offers_nothing_to_log_in_with() -> None:
    s = Session(tls_active=False, tls_available=False)
    assert s.send(b"CAPA\r\n") == (
        b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
        b"PIPELINING\r\n.\r\n"
    )
    assert s.send(b"USER a@b.example\r\n") == b"-ERR [AUTH] Authentication requires TLS\r\n"
    assert s.send(b"STLS\r\n") == b"-ERR Command not available\r\n"


def test_capa_in_transaction_announces_the_same_list() -> None:
    s = logged_in()
    assert s.send(b"CAPA\r\n") == CAPA_TLS  # RFC 2449 5


def test_login_refused_before_tls() -> None:
    s = Session(tls_active=False)
    out = s.send(b"USER alice@example.test\r\nPASS secret\r\nAUTH PLAIN\r\nAUTH\r\n")
    assert out == USE_STLS * 4
    assert not any(isinstance(e, Credentials) for e in s.events)
    assert [r.command for r in refused(s)] == ["USER", "PASS", "AUTH", "AUTH"]
    assert s.srv.state is Pop3State.AUTHORIZATION


def test_stls_discards_pipelined_input_then_allows_login() -> None:
    s = Session(tls_active=False)
    out = s.send(b"STLS\r\nUSER mallory@example.test\r\nPASS x\r\n")
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert s.events == [StartTls()]
    assert s.srv.tls_active
    assert s.send(b"CAPA\r\n") == CAPA_TLS
    s.login()


def test_bytes_arriving_before_tls_established_are_dropped() -> None:
    srv = Pop3Server(Pop3Settings(HOST))
    srv.data_to_send()
    srv.receive_data(b"STLS\r\n")
    assert srv.next_event() == StartTls()
    assert srv.phase == "tls"
    srv.receive_data(b"USER injected@example.test\r\n")  # plaintext, before the handshake
    with pytest.raises(Pop3ProtocolError):
        srv.next_event()
    srv.tls_established()
    assert srv.next_event() == NeedData()
    assert srv.data_to_send() == b"+OK Begin TLS negotiation\r\n"


def test_stls_forgets_a_pending_user() -> None:
    # USER is refused before TLS anyway; make sure nothing leaks through STLS either
    s = Session(tls_active=False)
    s.send(b"STLS\r\n")
    assert s.send(b"PASS x\r\n") == b"-ERR Send USER first\r\n"


def test_stls_refused_under_tls_and_with_arguments() -> None:
    assert Session().send(b"STLS\r\n") == b"-ERR TLS already active\r\n"
    assert Session(tls_active=False).send(b"STLS now\r\n") == b"-ERR Syntax error in arguments\r\n"
    assert logged_in().send(b"STLS\r\n") == b"-ERR TLS already active\r\n"


# --- USER / PASS (RFC 1939 7) --------------------------------------------------------------------


def test_user_pass_emits_credentials_and_keeps_spaces_in_the_password() -> None:
    s = logged_in()
    assert Credentials("USER", "", USER, PASSWORD) in s.events
    assert "correct" not in repr(s.events)  # never in a repr (logs)


def test_pass_without_user_and_empty_arguments() -> None:
    s = Session()
    assert s.send(b"PASS secret\r\n") == b"-ERR Send USER first\r\n"
    assert s.send(b"USER\r\n") == b"-ERR Syntax error in arguments\r\n"
    assert s.send(b"USER a b\r\n") == b"-ERR Syntax error in arguments\r\n"
    assert s.send(b"USER a@b.example\r\nPASS\r\n") == (
        b"+OK Send PASS\r\n-ERR Syntax error in arguments\r\n"
    )
    assert s.send(b"PASS x\r\n") == b"-ERR Send USER first\r\n"  # USER was used up


def test_user_must_be_followed_directly_by_pass() -> None:
    s = Session()
    assert s.send(b"USER a@b.example\r\nCAPA\r\nPASS secret\r\n") == (
        b"+OK Send PASS\r\n" + CAPA_TLS + b"-ERR Send USER first\r\n"
    )


@pytest.mark.parametrize(
    ("refusal", "text"),
    [
        (LoginRefusal.FAILED, AUTH_FAILED),
        (LoginRefusal.LOCKED_OUT, b"-ERR [SYS/TEMP] Too many failed attempts, try again later\r\n"),
        (LoginRefusal.IN_USE, b"-ERR [IN-USE] Maildrop already locked\r\n"),
        (LoginRefusal.UNAVAILABLE, b"-ERR [SYS/TEMP] Maildrop unavailable, try again later\r\n"),
    ],
)
def test_login_refusals_keep_authorization_state(refusal: LoginRefusal, text: bytes) -> None:
    s = Session()
    s.refusals = [refusal]
    assert s.send(LOGIN) == b"+OK Send PASS\r\n" + text
    assert s.srv.state is Pop3State.AUTHORIZATION
    assert s.srv.phase == "command"
    s.login()  # and a later attempt can succeed


def test_third_failed_login_closes() -> None:
    s = Session()
    s.refusals = [LoginRefusal.FAILED, LoginRefusal.IN_USE, LoginRefusal.LOCKED_OUT]
    s.refusals.append(LoginRefusal.FAILED)
    out = s.send(LOGIN * 4)
    assert out == (
        b"+OK Send PASS\r\n"
        + AUTH_FAILED
        + b"+OK Send PASS\r\n-ERR [IN-USE] Maildrop already locked\r\n"  # not a failure
        + b"+OK Send PASS\r\n-ERR [SYS/TEMP] Too many failed attempts, try again later\r\n"
        + b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed, closing connection\r\n"
    )
    assert s.events[-1] == ConnectionClosed("too many failed logins")


def test_decision_stops_reading_ahead() -> None:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    srv.data_to_send()
    srv.receive_data(LOGIN + b"STAT\r\n")
    assert srv.next_event() == Credentials("USER", "", USER, PASSWORD)
    assert srv.phase == "login"
    with pytest.raises(Pop3ProtocolError):
        srv.next_event()
    assert srv.data_to_send() == b"+OK Send PASS\r\n"
    srv.accept_login([Pop3Message(10, "1.1")])
    assert srv.next_event() == NeedData()
    assert srv.data_to_send() == b"+OK Logged in, 1 messages (10 octets)\r\n+OK 1 10\r\n"


# --- AUTH PLAIN (RFC 5034, RFC 4616) -------------------------------------------------------------


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def test_auth_plain_with_initial_response() -> None:
    s = Session()
    out = s.send(b"AUTH PLAIN " + plain("", USER, "pw") + b"\r\n")
    assert out == LOGGED_IN
    assert Credentials("PLAIN", "", USER, "pw") in s.events


def test_auth_plain_with_continuation_and_authzid() -> None:
    s = Session()
    assert s.send(b"auth plain\r\n") == b"+ \r\n"
    assert s.srv.phase == "auth"
    assert s.send(plain(USER, USER, "pw") + b"\r\n") == LOGGED_IN
    assert Credentials("PLAIN", USER, USER, "pw") in s.events


def test_auth_cancel_and_malformed_responses() -> None:
    s = Session()
    assert s.send(b"AUTH PLAIN\r\n*\r\n") == b"+ \r\n-ERR Authentication cancelled\r\n"
    assert s.send(b"AUTH PLAIN\r\nnot base64!\r\n") == (
        b"+ \r\n-ERR Cannot decode authentication response\r\n"
    )
    bad = b"AUTH PLAIN " + base64.b64encode(b"no separators") + b"\r\n"
    assert s.send(bad) == b"-ERR Cannot decode authentication response\r\n"
    assert s.send(b"AUTH PLAIN =\r\n") == b"-ERR Cannot decode authentication response\r\n"
    assert s.send(b"AUTH PLAIN a b\r\n") == b"-ERR Syntax error in arguments\r\n"
    assert s.srv.state is Pop3State.AUTHORIZATION
    assert all(r.command == "AUTH" for r in refused(s))


def test_auth_other_mechanisms_and_listing() -> None:
    s = Session()
    assert s.send(b"AUTH LOGIN\r\n") == b"-ERR Unrecognized authentication mechanism\r\n"
    assert s.send(b"AUTH CRAM-MD5\r\n") == b"-ERR Unrecognized authentication mechanism\r\n"
    assert s.send(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\n.\r\n"


def test_auth_response_line_may_be_long_but_is_bounded() -> None:
    s = Session()
    long_pw = "p" * 2000
    line = b"AUTH PLAIN " + plain("", USER, long_pw) + b"\r\n"
    assert len(line) > MAX_COMMAND_LINE
    assert s.send(line) == LOGGED_IN
    s = Session()
    assert s.send(b"AUTH PLAIN\r\n" + b"A" * 20000 + b"\r\n") == (b"+ \r\n-ERR Line too long\r\n")
    assert s.srv.phase == "command"


# --- TRANSACTION: STAT, LIST, UIDL (RFC 1939 5, 7) -----------------------------------------------


def test_stat_list_uidl() -> None:
    s = logged_in()
    assert s.send(b"STAT\r\n") == f"+OK 3 {TOTAL}\r\n".encode()
    assert (
        s.send(b"LIST\r\n")
        == (
            f"+OK 3 messages ({TOTAL} octets)\r\n1 {SIZES[0]}\r\n2 {SIZES[1]}\r\n"
            f"3 {SIZES[2]}\r\n.\r\n"
        ).encode()
    )
    assert s.send(b"LIST 2\r\n") == f"+OK 2 {SIZES[1]}\r\n".encode()
    assert s.send(b"UIDL\r\n") == b"+OK\r\n1 7.1\r\n2 7.2\r\n3 7.5\r\n.\r\n"
    assert s.send(b"UIDL 3\r\n") == b"+OK 3 7.5\r\n"
    assert s.send(b"noop\r\n") == b"+OK\r\n"


def test_empty_maildrop() -> None:
    s = Session(messages=[])
    assert s.send(LOGIN) == b"+OK Send PASS\r\n+OK Logged in, 0 messages (0 octets)\r\n"
    assert s.send(b"STAT\r\nLIST\r\nUIDL\r\n") == (
        b"+OK 0 0\r\n+OK 0 messages (0 octets)\r\n.\r\n+OK\r\n.\r\n"
    )
    assert s.send(b"RETR 1\r\n") == b"-ERR No such message\r\n"


@pytest.mark.parametrize("command", [b"RETR", b"LIST", b"UIDL", b"TOP", b"DELE"])
@pytest.mark.parametrize(
    ("arg", "error"),
    [
        (b"0", b"-ERR No such message\r\n"),
        (b"4", b"-ERR No such message\r\n"),
        (b"999", b"-ERR No such message\r\n"),
        (b"abc", b"-ERR Syntax error in arguments\r\n"),
        (b"-1", b"-ERR Syntax error in arguments\r\n"),
        (b"99999999999", b"-ERR Syntax error in arguments\r\n"),
    ],
)
def test_bad_message_numbers_refused_and_session_goes_on(
    command: bytes, arg: bytes, error: bytes
) -> None:
    s = logged_in()
    suffix = b" 0" if command == b"TOP" else b""
    assert s.send(command + b" " + arg + suffix + b"\r\n") == error
    assert s.send(b"STAT\r\n") == f"+OK 3 {TOTAL}\r\n".encode()


@pytest.mark.parametrize(
    "line",
    [b"RETR\r\n", b"RETR 1 2\r\n", b"TOP 1\r\n", b"TOP 1 x\r\n", b"DELE\r\n", b"LIST 1 2\r\n"],
)
def test_wrong_argument_counts(line: bytes) -> None:
    assert logged_in().send(line) == b"-ERR Syntax error in arguments\r\n"


@pytest.mark.parametrize("verb", ["STAT", "LIST", "RETR", "TOP", "DELE", "NOOP", "RSET", "UIDL"])
def test_transaction_commands_need_login(verb: str) -> None:
    s = Session()
    assert s.send(f"{verb} 1\r\n".encode()) == b"-ERR Log in first\r\n"
    assert refused(s) == [CommandRefused(verb, "not valid in this state")]


@pytest.mark.parametrize("line", [b"USER a@b.example\r\n", b"PASS x\r\n", b"AUTH PLAIN\r\n"])
def test_no_second_login(line: bytes) -> None:
    assert logged_in().send(line) == b"-ERR Already logged in\r\n"


# --- RETR and TOP: byte-stuffed multi-line responses (RFC 1939 3, 5, 7) --------------------------

STUFFED_2 = b"Subject: two\r\nX: y\r\n\r\n..starts with a dot\r\n...two dots\r\n..\r\nend\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 10_000])
def test_retr_is_byte_stuffed_whatever_the_chunking(chunk: int) -> None:
    s = logged_in(chunk=chunk)
    assert s.send(b"RETR 1\r\n") == f"+OK {SIZES[0]} octets\r\n".encode() + MESSAGES[0] + b".\r\n"
    assert s.send(b"RETR 2\r\n") == f"+OK {SIZES[1]} octets\r\n".encode() + STUFFED_2 + b".\r\n"
    # RFC 1939 3: the terminator starts a line, so a final CRLF is added if missing
    assert s.send(b"RETR 3\r\n") == (
        f"+OK {SIZES[2]} octets\r\n".encode() + MESSAGES[2] + b"\r\n.\r\n"
    )
    assert s.events.count(Retrieve(2, None)) == 1


def test_retr_message_starting_with_a_dot_and_empty_message() -> None:
    s = logged_in(messages=[b".\r\n", b"", b"..\r\n.", b"x\n.y\r\n"], chunk=1)
    assert s.send(b"RETR 1\r\n") == b"+OK 3 octets\r\n..\r\n.\r\n"
    assert s.send(b"RETR 2\r\n") == b"+OK 0 octets\r\n.\r\n"
    assert s.send(b"RETR 3\r\n") == b"+OK 5 octets\r\n...\r\n..\r\n.\r\n"
    # a dot after a bare LF is stuffed too (clients that split lines on LF)
    assert s.send(b"RETR 4\r\n") == b"+OK 6 octets\r\nx\n..y\r\n.\r\n"


@pytest.mark.parametrize("chunk", [1, 2, 4, 1000])
def test_top(chunk: int) -> None:
    s = logged_in(chunk=chunk)
    head = b"+OK Top of message follows\r\n"
    assert s.send(b"TOP 2 0\r\n") == head + b"Subject: two\r\nX: y\r\n\r\n.\r\n"
    assert (
        s.send(b"TOP 2 1\r\n") == head + b"Subject: two\r\nX: y\r\n\r\n..starts with a dot\r\n.\r\n"
    )
    assert s.send(b"TOP 2 3\r\n") == head + STUFFED_2[:-5] + b".\r\n"
    assert s.send(b"TOP 2 999\r\n") == head + STUFFED_2 + b".\r\n"  # the whole message
    assert s.send(b"TOP 3 5\r\n") == head + MESSAGES[2] + b"\r\n.\r\n"
    assert s.events.count(Retrieve(2, 3)) == 1


def test_top_edge_cases() -> None:
    msgs = [b"No: blank line\r\nAt: all\r\n", b"\r\nbody1\r\nbody2\r\n", b"A: b\n\nbare\nlf\n"]
    s = logged_in(messages=msgs, chunk=1)
    head = b"+OK Top of message follows\r\n"
    assert s.send(b"TOP 1 0\r\n") == head + msgs[0] + b".\r\n"
    assert s.send(b"TOP 2 0\r\n") == head + b"\r\n.\r\n"
    assert s.send(b"TOP 2 1\r\n") == head + b"\r\nbody1\r\n.\r\n"
    assert s.send(b"TOP 3 1\r\n") == head + b"A: b\n\nbare\n\r\n.\r\n"


def test_send_message_data_says_when_top_has_enough() -> None:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    srv.receive_data(LOGIN + b"TOP 1 1\r\n")
    assert isinstance(srv.next_event(), Credentials)
    srv.accept_login([Pop3Message(100, "1.1")])
    assert srv.next_event() == Retrieve(1, 1)
    assert srv.phase == "message"
    assert srv.send_message_data(b"A: b\r\n\r\nline 1\r\n") is False
    assert srv.send_message_data(b"line 2\r\n") is False  # ignored
    srv.end_message()
    assert srv.data_to_send().endswith(b"+OK Top of message follows\r\nA: b\r\n\r\nline 1\r\n.\r\n")


def test_fail_message_before_and_after_the_first_octet() -> None:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    srv.receive_data(LOGIN + b"RETR 1\r\nRETR 1\r\n")
    assert isinstance(srv.next_event(), Credentials)
    srv.accept_login([Pop3Message(100, "1.1")])
    assert srv.next_event() == Retrieve(1, None)
    srv.fail_message()
    assert srv.data_to_send().endswith(b"-ERR [SYS/TEMP] Message unavailable, try again later\r\n")
    assert srv.next_event() == Retrieve(1, None)  # the session goes on
    srv.send_message_data(b"partial")
    srv.fail_message()
    assert srv.next_event() == ConnectionClosed("message failed")
    assert srv.data_to_send() == b"+OK 100 octets\r\npartial"


# --- DELE, RSET, QUIT and the UPDATE state (RFC 1939 5, 6) ---------------------------------------


def test_dele_hides_the_message_and_rset_restores_it() -> None:
    s = logged_in()
    assert s.send(b"DELE 2\r\n") == b"+OK Message 2 deleted\r\n"
    assert s.srv.deleted == {2}
    assert s.send(b"DELE 2\r\n") == b"-ERR Message already deleted\r\n"
    left = SIZES[0] + SIZES[2]
    assert s.send(b"STAT\r\n") == f"+OK 2 {left}\r\n".encode()
    assert (
        s.send(b"LIST\r\n")
        == (f"+OK 2 messages ({left} octets)\r\n1 {SIZES[0]}\r\n3 {SIZES[2]}\r\n.\r\n").encode()
    )
    assert s.send(b"UIDL\r\n") == b"+OK\r\n1 7.1\r\n3 7.5\r\n.\r\n"
    for line in (b"RETR 2\r\n", b"TOP 2 0\r\n", b"LIST 2\r\n", b"UIDL 2\r\n"):
        assert s.send(line) == b"-ERR No such message\r\n"
    assert s.send(b"RSET\r\n") == f"+OK 3 messages ({TOTAL} octets)\r\n".encode()
    assert s.srv.deleted == frozenset()
    assert s.send(b"RETR 2\r\n").startswith(b"+OK")


def test_quit_in_transaction_enters_update() -> None:
    s = logged_in()
    assert s.send(b"DELE 3\r\nDELE 1\r\nQUIT\r\n") == (
        b"+OK Message 3 deleted\r\n+OK Message 1 deleted\r\n+OK Bye\r\n"
    )
    assert s.events[-2:] == [Update((1, 3)), ConnectionClosed("quit")]
    assert s.srv.state is Pop3State.UPDATE


def test_quit_without_deletions_still_passes_update() -> None:
    s = logged_in()
    assert s.send(b"QUIT\r\n") == b"+OK Bye\r\n"
    assert s.events[-2:] == [Update(()), ConnectionClosed("quit")]


def test_failed_update_says_so() -> None:
    s = logged_in()
    s.update_ok = False
    assert s.send(b"DELE 1\r\nQUIT\r\n") == (
        b"+OK Message 1 deleted\r\n"
        b"-ERR [SYS/TEMP] Some deleted messages not removed, try again later\r\n"
    )
    assert s.events[-1] == ConnectionClosed("quit")


def test_update_is_a_decision() -> None:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    srv.receive_data(LOGIN + b"DELE 1\r\nQUIT\r\nNOOP\r\n")
    assert isinstance(srv.next_event(), Credentials)
    srv.accept_login([Pop3Message(1, "1.1")])
    assert srv.next_event() == Update((1,))
    assert srv.phase == "update"
    with pytest.raises(Pop3ProtocolError):
        srv.next_event()
    srv.close(SHUTTING_DOWN)  # no "-ERR" in the middle of UPDATE...
    assert srv.next_event() == ConnectionClosed("closed by server")
    assert srv.data_to_send().endswith(b"+OK Message 1 deleted\r\n")


def test_quit_in_authorization_and_with_argument() -> None:
    s = Session()
    assert s.send(b"QUIT now\r\n") == b"-ERR Syntax error in arguments\r\n"
    assert s.send(b"QUIT\r\n") == b"+OK Bye\r\n"
    assert s.events[-1] == ConnectionClosed("quit")
    assert not any(isinstance(e, Update) for e in s.events)


def test_eof_never_enters_update() -> None:
    s = logged_in()
    s.send(b"DELE 1\r\n")
    s.srv.receive_eof()
    assert s.drain() == [ConnectionClosed("eof")]
    assert not any(isinstance(e, Update) for e in s.events)


def test_eof_processes_buffered_commands_first() -> None:
    s = logged_in()
    s.srv.receive_data(b"STAT\r\nNOOP")  # the unfinished line is dropped
    s.srv.receive_eof()
    assert s.drain() == [ConnectionClosed("eof")]
    assert s.srv.data_to_send() == f"+OK 3 {TOTAL}\r\n".encode()


# --- lines, limits, bad input (RFC 2449 4) -------------------------------------------------------


def test_line_length_limit() -> None:
    s = Session()
    ok_line = b"CAPA" + b" " * (MAX_COMMAND_LINE - 6) + b"\r\n"
    assert len(ok_line) == MAX_COMMAND_LINE
    assert s.send(ok_line) == CAPA_TLS  # trailing spaces ignored
    assert s.send(b"CAPA" + b" " * (MAX_COMMAND_LINE - 5) + b"\r\n") == b"-ERR Line too long\r\n"
    assert s.send(b"X" * 10_000 + b"\r\nCAPA\r\n") == b"-ERR Line too long\r\n" + CAPA_TLS
    assert refused(s) == [CommandRefused("", "line too long")] * 2


def test_overlong_line_in_pieces_is_one_error() -> None:
    s = Session()
    assert s.send(b"Y" * 300) == b"-ERR Line too long\r\n"
    assert s.send(b"Y" * 300) == b""
    assert s.send(b"\r\nCAPA\r\n") == CAPA_TLS


def test_unknown_commands_and_bad_bytes() -> None:
    s = Session()
    assert s.send(b"APOP alice 0123\r\n") == b"-ERR Unknown command\r\n"
    assert s.send(b"HELO\r\n") == b"-ERR Unknown command\r\n"
    assert s.send(b"\r\n") == b"-ERR Unknown command\r\n"
    assert s.send(b"CA\xffPA\r\n") == b"-ERR Syntax error\r\n"
    assert s.send(b"CAPA\x00\r\n") == b"-ERR Syntax error\r\n"
    assert s.send(b"CAPA\n") == CAPA_TLS  # a bare LF ends a line
    assert all(r.command == "" for r in refused(s))


def test_ten_bad_commands_in_a_row_close() -> None:
    s = Session()
    assert s.send(b"BAD\r\n" * 9) == b"-ERR Unknown command\r\n" * 9
    assert s.send(b"CAPA\r\n") == CAPA_TLS  # resets the count
    assert s.send(b"BAD\r\n" * 9) == b"-ERR Unknown command\r\n" * 9
    assert s.send(b"BAD\r\nCAPA\r\n") == b"-ERR Too many bad commands, closing connection\r\n"
    assert s.events[-1] == ConnectionClosed("too many errors")
    with pytest.raises(Pop3ProtocolError):
        s.srv.receive_data(b"CAPA\r\n")


def test_command_limit() -> None:
    s = Session(max_commands=5)
    assert s.send(b"CAPA\r\n" * 5) == CAPA_TLS * 5
    assert s.send(b"CAPA\r\n") == b"-ERR Too many commands, closing connection\r\n"
    assert s.events[-1] == ConnectionClosed("too many commands")


def test_pipelined_commands_answered_in_order() -> None:
    s = Session(chunk=3)
    out = s.send(LOGIN + b"STAT\r\nRETR 1\r\nDELE 1\r\nUIDL\r\nQUIT\r\n")
    assert out == (
        b"+OK Send PASS\r\n"
        + LOGGED_IN
        + f"+OK 3 {TOTAL}\r\n".encode()
        + f"+OK {SIZES[0]} octets\r\n".encode()
        + MESSAGES[0]
        + b".\r\n+OK Message 1 deleted\r\n+OK\r\n2 7.2\r\n3 7.5\r\n.\r\n+OK Bye\r\n"
    )


# --- shell-initiated close, protocol errors ------------------------------------------------------


def test_close_with_text_while_waiting_and_silent_close() -> None:
    s = logged_in()
    s.srv.close(SHUTTING_DOWN)
    assert s.drain() == [ConnectionClosed("closed by server")]
    assert s.srv.data_to_send() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    s.srv.close(SHUTTING_DOWN)  # idempotent
    assert s.srv.data_to_send() == b""
    t = logged_in()
    t.srv.close()  # RFC 1939 3 autologout: no response
    assert t.drain() == [ConnectionClosed("closed by server")]
    assert t.srv.data_to_send() == b""


def test_close_during_a_message_sends_no_error_line() -> None:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    srv.receive_data(LOGIN + b"RETR 1\r\n")
    assert isinstance(srv.next_event(), Credentials)
    srv.accept_login([Pop3Message(100, "1.1")])
    srv.next_event()
    srv.send_message_data(b"half a message")
    srv.close(SHUTTING_DOWN)
    assert srv.next_event() == ConnectionClosed("closed by server")
    assert srv.data_to_send().endswith(b"half a message")


def test_close_text_is_checked() -> None:
    srv = Pop3Server(Pop3Settings(HOST))
    with pytest.raises(Pop3ProtocolError):
        srv.close("two\r\nlines")


def test_shell_misuse_raises_protocol_error() -> None:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    with pytest.raises(Pop3ProtocolError):
        srv.accept_login([])
    with pytest.raises(Pop3ProtocolError):
        srv.refuse_login(LoginRefusal.FAILED)
    with pytest.raises(Pop3ProtocolError):
        srv.send_message_data(b"x")
    with pytest.raises(Pop3ProtocolError):
        srv.end_message()
    with pytest.raises(Pop3ProtocolError):
        srv.finish_update(True)
    with pytest.raises(Pop3ProtocolError):
        srv.tls_established()
    srv.receive_data(LOGIN)
    assert isinstance(srv.next_event(), Credentials)
    for bad_uid in ("", "a b", "x" * 71, "ü"):
        with pytest.raises(Pop3ProtocolError):
            srv.accept_login([Pop3Message(1, bad_uid)])
    with pytest.raises(Pop3ProtocolError):
        srv.accept_login([Pop3Message(-1, "1.1")])
    srv.receive_eof()
    with pytest.raises(Pop3ProtocolError):
        srv.receive_data(b"x")


def test_table_has_both_columns_for_every_command() -> None:
    assert set(COMMAND_TABLE) == {
        "USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT", "STAT", "LIST", "RETR", "TOP",
        "DELE", "NOOP", "RSET", "UIDL",
    }  # fmt: skip
    assert all(len(row) == 2 for row in COMMAND_TABLE.values())
