"""Byte-level transcript tests of the SMTP server core's command handling (proto.smtp).

Each test feeds client bytes and asserts the exact reply bytes and events.
DATA/BDAT content handling is in test_smtp_data.py; properties in test_smtp_fuzz.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from mailward.proto.replies import (
    AUTH_FAILED,
    AUTH_OK,
    MESSAGE_ACCEPTED,
    NO_SUCH_USER,
    RECIPIENT_OK,
    SENDER_OK,
    SHUTTING_DOWN,
    Reply,
)
from mailward.proto.smtp import SmtpProtocolError, SmtpServer, SmtpSettings
from mailward.proto.smtp_events import (
    AuthCredentials,
    CommandRefused,
    ConnectionClosed,
    Hello,
    MailFrom,
    MessageChunk,
    MessageEnd,
    MessageStart,
    NeedData,
    RcptTo,
    Reset,
    SmtpEvent,
    StartTls,
)

HOST = "mx.example.test"
GREETING = b"220 mx.example.test ESMTP\r\n"
EHLO_REPLY = (
    b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 STARTTLS\r\n"
)
OK = b"250 2.0.0 OK\r\n"
SENDER = b"250 2.1.0 Sender OK\r\n"
RCPT_OK = b"250 2.1.5 Recipient OK\r\n"
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
ACCEPTED = b"250 2.0.0 Message accepted\r\n"
NEED_HELO = b"503 5.5.1 Send EHLO or HELO first\r\n"
NEED_MAIL = b"503 5.5.1 Send MAIL first\r\n"

Answer = Reply | Callable[[Any], Reply]


class Session:
    """Drives one SmtpServer like the shell does; answers decisions from `answers`."""

    def __init__(self, *, auto_tls: bool = True, **settings: Any) -> None:
        self.srv = SmtpServer(SmtpSettings(HOST, **settings))
        self.auto_tls = auto_tls
        self.answers: dict[type, Answer] = {
            MailFrom: SENDER_OK,
            RcptTo: RECIPIENT_OK,
            MessageEnd: MESSAGE_ACCEPTED,
            AuthCredentials: AUTH_OK,
        }
        assert self.srv.data_to_send() == GREETING

    def drain(self) -> list[SmtpEvent]:
        events: list[SmtpEvent] = []
        while True:
            event = self.srv.next_event()
            if isinstance(event, NeedData):
                return events
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
            if isinstance(event, StartTls):
                if not self.auto_tls:
                    return events
                self.srv.tls_established()
            answer = self.answers.get(type(event))
            if answer is not None:
                assert self.srv.awaiting_decision
                self.srv.send_reply(answer if isinstance(answer, Reply) else answer(event))

    def feed(self, data: bytes) -> tuple[list[SmtpEvent], bytes]:
        self.srv.receive_data(data)
        events = self.drain()
        return events, self.srv.data_to_send()

    def ehlo(self) -> None:
        self.feed(b"EHLO client.example\r\n")

    def open_transaction(self) -> None:
        self.feed(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n")


def refused(events: list[SmtpEvent]) -> list[tuple[str, int]]:
    return [(e.command, e.reply_code) for e in events if isinstance(e, CommandRefused)]


# --- greeting, EHLO, HELO ---------------------------------------------------------------


def test_greeting_names_no_software() -> None:
    srv = SmtpServer(SmtpSettings("mail.example.org"))
    assert srv.data_to_send() == b"220 mail.example.org ESMTP\r\n"
    assert srv.data_to_send() == b""
    assert isinstance(srv.next_event(), NeedData)
    assert srv.phase == "command"


def test_ehlo_default_extensions() -> None:
    s = Session()
    events, out = s.feed(b"EHLO client.example\r\n")
    assert out == EHLO_REPLY
    assert events == [Hello("client.example", True)]
    assert s.srv.helo_name == "client.example"


def test_ehlo_extensions_follow_settings() -> None:
    s = Session(tls_active=True, auth_enabled=True, chunking=False, max_message_size=1000)
    _, out = s.feed(b"EHLO c.example\r\n")
    assert out == (
        b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n"
    )
    s = Session(tls_available=False, auth_enabled=True)  # AUTH never offered before TLS
    _, out = s.feed(b"EHLO c.example\r\n")
    assert b"AUTH" not in out and b"STARTTLS" not in out


def test_helo() -> None:
    s = Session()
    events, out = s.feed(b"HELO client.example\r\n")
    assert out == b"250 mx.example.test\r\n"
    assert events == [Hello("client.example", False)]


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO", b"ehlo", b"Helo"])
@pytest.mark.parametrize(
    "arg",
    [b"", b" bad_name", b" host.example.", b" a..b", b" [192.0.2.300]", b" a b"],
)
def test_hello_bad_domain(verb: bytes, arg: bytes) -> None:
    s = Session()
    events, out = s.feed(verb + arg + b"\r\n")
    code = b"501 5.5.4 "
    assert out.startswith(code)
    assert refused(events) == [(verb.decode().upper(), 501)]
    assert s.srv.helo_name is None


def test_hello_address_literal() -> None:
    s = Session()
    events, _ = s.feed(b"EHLO [192.0.2.1]\r\n")
    assert events == [Hello("[192.0.2.1]", True)]


def test_ehlo_resets_transaction() -> None:
    s = Session()
    s.open_transaction()
    assert s.srv.in_transaction
    events, out = s.feed(b"EHLO again.example\r\n")
    assert events == [Reset(), Hello("again.example", True)]
    assert out == EHLO_REPLY
    assert not s.srv.in_transaction
    events, out = s.feed(b"RCPT TO:<x@y.example>\r\n")
    assert out == NEED_MAIL


# --- MAIL -----------------------------------------------------------------------------------


def test_mail_before_helo() -> None:
    s = Session()
    events, out = s.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert out == NEED_HELO
    assert refused(events) == [("MAIL", 503)]


def test_mail_auth_required() -> None:
    s = Session(auth_required=True, auth_enabled=True, tls_active=True)
    s.ehlo()
    events, out = s.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert out == b"530 5.7.0 Authentication required\r\n"
    assert refused(events) == [("MAIL", 530)]


def test_mail_event_and_null_sender() -> None:
    s = Session()
    s.ehlo()
    events, out = s.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert events == [MailFrom("a@b.example", {}, None, False, None)]
    assert out == SENDER
    assert s.srv.in_transaction
    s.feed(b"RSET\r\n")
    events, _ = s.feed(b"MAIL FROM:<>\r\n")
    assert events == [MailFrom("", {}, None, False, None)]


def test_mail_params() -> None:
    s = Session()
    s.ehlo()
    events, _ = s.feed(b"MAIL FROM:<a@b.example> size=1000 BODY=8bitmime SMTPUTF8 AUTH=<>\r\n")
    assert events == [
        MailFrom(
            "a@b.example",
            {"SIZE": "1000", "BODY": "8bitmime", "SMTPUTF8": None, "AUTH": "<>"},
            1000,
            True,
            "8BITMIME",
        )
    ]


@pytest.mark.parametrize(
    "params",
    [
        b"FOO=bar",
        b"SIZE",
        b"SIZE=",
        b"SIZE=12x",
        b"SIZE=1 SIZE=2",
        b"BODY=BINARYMIME",
        b"BODY",
        b"SMTPUTF8=yes",
        b"AUTH",
        b"SIZE=1  BODY=7BIT",
        b"X-\xc3\xbc=1",
        b"ENVID=\xc3\xbc",
    ],
)
def test_mail_bad_params(params: bytes) -> None:
    s = Session()
    s.ehlo()
    events, out = s.feed(b"MAIL FROM:<a@b.example> " + params + b"\r\n")
    assert out == b"555 5.5.4 Unsupported or malformed parameter\r\n"
    assert refused(events) == [("MAIL", 555)]
    assert not s.srv.in_transaction


def test_mail_declared_size_over_limit() -> None:
    s = Session(max_message_size=1000)
    s.ehlo()
    _, out = s.feed(b"MAIL FROM:<a@b.example> SIZE=1000\r\n")
    assert out == SENDER
    s.feed(b"RSET\r\n")
    events, out = s.feed(b"MAIL FROM:<a@b.example> SIZE=1001\r\n")
    assert out == b"552 5.3.4 Message size exceeds fixed limit\r\n"
    assert refused(events) == [("MAIL", 552)]


@pytest.mark.parametrize(
    ("line", "reverse_path"),
    [
        (b"MAIL FROM: <a@b.example>", "a@b.example"),  # one space tolerated
        (b"MAIL FROM:a@b.example", "a@b.example"),  # missing <> tolerated
        (b"mail from:<a@b.example>", "a@b.example"),
        (b"MAIL FROM:<a@b.example>  ", "a@b.example"),  # trailing spaces ignored
        (b"MAIL FROM:<@r1.example,@r2.example:a@b.example>", "a@b.example"),
        (b"MAIL FROM:<user%other@b.example>", "user%other@b.example"),
    ],
)
def test_mail_leniency(line: bytes, reverse_path: str) -> None:
    s = Session()
    s.ehlo()
    events, _ = s.feed(line + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], MailFrom)
    assert events[0].reverse_path == reverse_path


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"MAIL FROM:  <a@b.example>", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b.example", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b.example.>", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b@c.example>", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<j\xc3\xb6rg@b.example>", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM:<a@b.example>x", b"501 5.1.7 Bad sender address syntax\r\n"),
        (b"MAIL FROM <a@b.example>", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
        (b"MAIL TO:<a@b.example>", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
        (b"MAIL", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
    ],
)
def test_mail_syntax_errors(line: bytes, reply: bytes) -> None:
    s = Session()
    s.ehlo()
    events, out = s.feed(line + b"\r\n")
    assert out == reply
    assert refused(events) == [("MAIL", 501)]


def test_mail_smtputf8_allows_utf8_paths() -> None:
    s = Session()
    s.ehlo()
    events, _ = s.feed("MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode())
    assert isinstance(events[0], MailFrom) and events[0].reverse_path == "jörg@bücher.example"
    events, _ = s.feed("RCPT TO:<ünï@bücher.example>\r\n".encode())
    assert isinstance(events[0], RcptTo) and events[0].local_part == "ünï"
    s.feed(b"RSET\r\nMAIL FROM:<a@b.example>\r\n")
    events, out = s.feed("RCPT TO:<ünï@bücher.example>\r\n".encode())
    assert out == b"501 5.1.3 Bad recipient address syntax\r\n"


def test_nested_mail() -> None:
    s = Session()
    s.open_transaction()
    events, out = s.feed(b"MAIL FROM:<x@y.example>\r\n")
    assert out == b"503 5.5.1 Nested MAIL command\r\n"
    assert refused(events) == [("MAIL", 503)]


def test_mail_refused_by_shell_keeps_state_and_counts_as_bad() -> None:
    s = Session(max_bad_commands=2)
    s.answers[MailFrom] = Reply(550, "5.7.1", "Sender refused")
    s.ehlo()
    _events, out = s.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert out == b"550 5.7.1 Sender refused\r\n"
    assert not s.srv.in_transaction
    _, out = s.feed(b"RCPT TO:<c@d.example>\r\n")  # second bad command: limit reached
    assert out == NEED_MAIL + b"421 4.7.0 Too many errors, closing connection\r\n"
    assert s.srv.phase == "closed"


def test_temporary_shell_refusal_does_not_count() -> None:
    s = Session(max_bad_commands=1)
    s.answers[MailFrom] = Reply(451, "4.3.0", "Try later")
    s.ehlo()
    for _ in range(3):
        _, out = s.feed(b"MAIL FROM:<a@b.example>\r\n")
        assert out == b"451 4.3.0 Try later\r\n"
    assert s.srv.phase == "command"


# --- RCPT -----------------------------------------------------------------------------------


def test_rcpt_before_mail() -> None:
    s = Session()
    s.ehlo()
    events, out = s.feed(b"RCPT TO:<c@d.example>\r\n")
    assert out == NEED_MAIL
    assert refused(events) == [("RCPT", 503)]


@pytest.mark.parametrize(
    ("path", "event"),
    [
        (b"<c@d.example>", RcptTo("c@d.example", "c", "d.example", False, {}, False)),
        (b"<postmaster>", RcptTo("postmaster", "postmaster", "", False, {}, False)),
        (b"<PostMaster>", RcptTo("PostMaster", "PostMaster", "", False, {}, False)),
        (
            b"<Postmaster@d.example>",
            RcptTo("Postmaster@d.example", "Postmaster", "d.example", False, {}, False),
        ),
        (b'<"x y"@d.example>', RcptTo('"x y"@d.example', "x y", "d.example", True, {}, False)),
        (
            b"<@relay.example:c@d.example>",
            RcptTo("c@d.example", "c", "d.example", False, {}, True),
        ),
        (
            b"<user%other@local>",
            RcptTo("user%other@local", "user%other", "local", False, {}, False),
        ),
        (b"<u@[192.0.2.1]>", RcptTo("u@[192.0.2.1]", "u", "[192.0.2.1]", False, {}, False)),
        (b" <c@d.example>", RcptTo("c@d.example", "c", "d.example", False, {}, False)),
        (b"c@d.example", RcptTo("c@d.example", "c", "d.example", False, {}, False)),
    ],
)
def test_rcpt_event(path: bytes, event: RcptTo) -> None:
    s = Session()
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    events, out = s.feed(b"RCPT TO:" + path + b"\r\n")
    assert events == [event]
    assert out == RCPT_OK


@pytest.mark.parametrize(
    "line",
    [b"RCPT TO:<>", b"RCPT TO:<c@d.example.>", b"RCPT TO:<c>", b"RCPT TO:<a@b@c>", b"RCPT TO:"],
)
def test_rcpt_syntax_error(line: bytes) -> None:
    s = Session()
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    events, out = s.feed(line + b"\r\n")
    assert out == b"501 5.1.3 Bad recipient address syntax\r\n"
    assert refused(events) == [("RCPT", 501)]


def test_rcpt_params_unsupported() -> None:
    s = Session()
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    _, out = s.feed(b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\n")
    assert out == b"555 5.5.4 Unsupported or malformed parameter\r\n"
    _, out = s.feed(b"RCPT FROM:<c@d.example>\r\n")
    assert out == b"501 5.5.4 Syntax error in parameters or arguments\r\n"


def test_max_recipients() -> None:
    s = Session(max_recipients=2, max_bad_commands=2)
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    s.answers[RcptTo] = lambda e: NO_SUCH_USER if e.local_part == "nobody" else RECIPIENT_OK
    s.feed(b"RCPT TO:<nobody@d.example>\r\n")  # refused by the shell: not counted as accepted
    s.feed(b"RCPT TO:<r1@d.example>\r\nRCPT TO:<r2@d.example>\r\n")
    for _ in range(3):  # a 452 is not a bad command: no 421
        events, out = s.feed(b"RCPT TO:<r3@d.example>\r\n")
        assert out == b"452 4.5.3 Too many recipients\r\n"
        assert refused(events) == [("RCPT", 452)]
    assert s.srv.phase == "command"


# --- DATA / BDAT sequence -------------------------------------------------------------------


def test_data_without_recipient() -> None:
    s = Session()
    s.feed(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n")
    events, out = s.feed(b"DATA\r\n")
    assert out == b"503 5.5.1 No valid recipients\r\n"
    assert refused(events) == [("DATA", 503)]
    assert s.srv.phase == "command"


def test_data_with_argument() -> None:
    s = Session()
    s.open_transaction()
    _, out = s.feed(b"DATA x\r\n")
    assert out == b"501 5.5.4 Syntax error in parameters or arguments\r\n"


def test_chunking_disabled() -> None:
    s = Session(chunking=False)
    s.open_transaction()
    events, out = s.feed(b"BDAT 0 LAST\r\n")
    assert out == b"502 5.5.1 Command not implemented\r\n"
    assert refused(events) == [("BDAT", 502)]


# --- simple commands ------------------------------------------------------------------------


def test_simple_commands() -> None:
    s = Session()
    events, out = s.feed(b"NOOP\r\nNOOP anything\r\nHELP\r\nHELP MAIL\r\nVRFY alice\r\n")
    assert events == []
    assert out == (
        OK
        + OK
        + b"214 2.0.0 See RFC 5321\r\n" * 2
        + b"252 2.5.0 Cannot verify the user; send mail to attempt delivery\r\n"
    )
    events, out = s.feed(b"EXPN staff\r\n")
    assert out == b"502 5.5.1 Command not implemented\r\n"
    assert refused(events) == [("EXPN", 502)]
    _, out = s.feed(b"VRFY\r\n")
    assert out == b"501 5.5.4 Syntax error in parameters or arguments\r\n"


def test_rset() -> None:
    s = Session()
    events, out = s.feed(b"RSET\r\n")
    assert (events, out) == ([], OK)
    s.open_transaction()
    events, out = s.feed(b"RSET\r\n")
    assert (events, out) == ([Reset()], OK)
    assert not s.srv.in_transaction
    _, out = s.feed(b"RSET now\r\n")
    assert out.startswith(b"501 5.5.4")


def test_quit() -> None:
    s = Session()
    events, out = s.feed(b"QUIT\r\nNOOP\r\n")
    assert events == [ConnectionClosed("quit")]
    assert out == b"221 2.0.0 Bye\r\n"  # nothing after QUIT is processed
    assert s.srv.phase == "closed"
    assert s.srv.next_event() == ConnectionClosed("quit")  # keeps returning it
    with pytest.raises(SmtpProtocolError):
        s.srv.receive_data(b"NOOP\r\n")
    with pytest.raises(SmtpProtocolError):
        s.srv.send_reply(OK_REPLY)


OK_REPLY = Reply(250, "2.0.0", "OK")


def test_quit_with_argument_refused() -> None:
    s = Session()
    _, out = s.feed(b"QUIT now\r\n")
    assert out.startswith(b"501 5.5.4")
    assert s.srv.phase == "command"


@pytest.mark.parametrize(
    ("line", "reply", "command"),
    [
        (b"FROB\r\n", b"500 5.5.1 Command unrecognized\r\n", "FROB"),
        (b"\r\n", b"500 5.5.1 Command unrecognized\r\n", ""),
        (b"NOOP\xff\r\n", b"500 5.5.2 Syntax error\r\n", ""),
        (b"NOOP\x00\r\n", b"500 5.5.2 Syntax error\r\n", ""),
        (b"NOOP\rx\r\n", b"500 5.5.2 Syntax error\r\n", ""),
        (b"NO\tOP\r\n", b"500 5.5.2 Syntax error\r\n", ""),
        ("NÖÖP\r\n".encode(), b"500 5.5.1 Command unrecognized\r\n", ""),
        (b"MAILFROM:<a@b>\r\n", b"500 5.5.1 Command unrecognized\r\n", ""),
    ],
)
def test_bad_command_lines(line: bytes, reply: bytes, command: str) -> None:
    s = Session()
    events, out = s.feed(line)
    assert out == reply
    assert refused(events) == [(command, 500)]
    _, out = s.feed(b"NOOP\r\n")
    assert out == OK


def test_commands_case_insensitive_and_bare_lf() -> None:
    s = Session()
    events, out = s.feed(b"ehlo c.example\nnoop\nMaIl FrOm:<a@b.example>\n")
    assert out == EHLO_REPLY + OK + SENDER
    assert [type(e) for e in events] == [Hello, MailFrom]


def test_line_length_limit() -> None:
    s = Session()
    fits = b"NOOP " + b"x" * (2048 - 7) + b"\r\n"  # exactly 2048 octets with CRLF
    assert len(fits) == 2048
    _, out = s.feed(fits)
    assert out == OK
    events, out = s.feed(b"NOOP " + b"x" * (2048 - 6) + b"\r\nNOOP\r\n")
    assert out == b"500 5.5.2 Line too long\r\n" + OK
    assert refused(events) == [("", 500)]


def test_line_too_long_split_reads() -> None:
    s = Session()
    events, out = s.feed(b"x" * 5000)
    assert out == b"500 5.5.2 Line too long\r\n"  # refused as soon as the limit is passed
    assert refused(events) == [("", 500)]
    events, out = s.feed(b"y" * 5000)
    assert (events, out) == ([], b"")  # still discarding up to the next LF
    _, out = s.feed(b"zzz\r\nNOOP\r\n")
    assert out == OK


def test_too_many_bad_commands() -> None:
    s = Session(max_bad_commands=3)
    events, out = s.feed(b"A\r\nB\r\nC\r\nNOOP\r\n")
    assert out == (
        b"500 5.5.1 Command unrecognized\r\n" * 3
        + b"421 4.7.0 Too many errors, closing connection\r\n"
    )
    assert [type(e) for e in events] == [CommandRefused] * 3 + [ConnectionClosed]
    assert events[-1] == ConnectionClosed("too many errors")


def test_too_many_commands() -> None:
    s = Session(max_commands=3)
    events, out = s.feed(b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert out == OK * 3 + b"421 4.7.0 Too many commands, closing connection\r\n"
    assert events == [ConnectionClosed("too many commands")]


# --- pipelining and the decision protocol ----------------------------------------------------


def test_pipelined_transaction() -> None:
    s = Session()
    events, out = s.feed(
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
        b"RCPT TO:<e@d.example>\r\nDATA\r\nHi\r\n.\r\nQUIT\r\n"
    )
    assert [type(e) for e in events] == [
        Hello,
        MailFrom,
        RcptTo,
        RcptTo,
        MessageStart,
        MessageChunk,
        MessageEnd,
        ConnectionClosed,
    ]
    assert out == (
        EHLO_REPLY + SENDER + RCPT_OK + RCPT_OK + START_DATA + ACCEPTED + b"221 2.0.0 Bye\r\n"
    )


def test_decision_protocol_misuse() -> None:
    srv = SmtpServer(SmtpSettings(HOST))
    with pytest.raises(SmtpProtocolError):
        srv.send_reply(OK_REPLY)  # nothing pending
    srv.receive_data(b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert isinstance(srv.next_event(), Hello)
    assert not srv.awaiting_decision
    assert isinstance(srv.next_event(), MailFrom)
    assert srv.awaiting_decision
    with pytest.raises(SmtpProtocolError):
        srv.next_event()
    srv.data_to_send()
    for bad in (
        Reply(354, None, "no"),  # 3xx cannot answer MAIL
        Reply(250, "2.0.0", "a\r\n250 injected"),
        Reply(250, "5.0.0", "class mismatch"),
        Reply(99, None, "x"),
    ):
        with pytest.raises(SmtpProtocolError):
            srv.send_reply(bad)
    assert srv.awaiting_decision  # still pending after refused misuse
    srv.send_reply(SENDER_OK)
    assert isinstance(srv.next_event(), NeedData)
    assert srv.data_to_send() == SENDER + OK


def test_421_answer_closes() -> None:
    s = Session()
    s.answers[MailFrom] = SHUTTING_DOWN
    s.ehlo()
    events, out = s.feed(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert out == b"421 4.3.2 Service shutting down, try again later\r\n"
    assert events[-1] == ConnectionClosed("closed by server")


def test_close_by_shell() -> None:
    s = Session()
    s.feed(b"EHLO c.example\r\n")
    s.srv.close(Reply(421, "4.4.2", "Timeout, closing connection"))
    assert s.srv.data_to_send() == b"421 4.4.2 Timeout, closing connection\r\n"
    assert s.srv.next_event() == ConnectionClosed("closed by server")
    assert s.srv.phase == "closed"
    s.srv.close(SHUTTING_DOWN)  # idempotent
    assert s.srv.data_to_send() == b""


def test_eof_processes_buffered_commands_first() -> None:
    srv = SmtpServer(SmtpSettings(HOST))
    srv.data_to_send()
    srv.receive_data(b"NOOP\r\nNOOP\r\nNOO")
    srv.receive_eof()
    assert srv.next_event() == ConnectionClosed("eof")
    assert srv.data_to_send() == OK + OK


# --- STARTTLS ---------------------------------------------------------------------------------


def test_starttls_discards_pipelined_bytes() -> None:
    s = Session(auto_tls=False)
    s.ehlo()
    events, out = s.feed(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n")
    assert events == [StartTls()]
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    with pytest.raises(SmtpProtocolError):
        s.srv.next_event()  # tls_established() first
    s.srv.receive_data(b"RCPT TO:<injected@x.example>\r\n")  # plaintext before the handshake
    s.srv.tls_established()
    assert s.srv.tls_active
    assert s.srv.helo_name is None
    events, out = s.feed(b"NOOP\r\n")
    assert (events, out) == ([], OK)  # nothing injected survived
    _, out = s.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert out == NEED_HELO  # RFC 3207 4.2: EHLO again
    _, out = s.feed(b"EHLO c.example\r\n")
    assert b"STARTTLS" not in out
    events, out = s.feed(b"STARTTLS\r\n")
    assert out == b"503 5.5.1 TLS already active\r\n"
    assert refused(events) == [("STARTTLS", 503)]


def test_tls_established_resets_session() -> None:
    s = Session(auth_enabled=True, auto_tls=False)
    _, out = s.feed(b"EHLO c.example\r\n")
    assert b"AUTH" not in out  # RFC 4954 / DESIGN.md 3: never offered in clear
    with pytest.raises(SmtpProtocolError):
        s.srv.tls_established()  # not without a StartTls
    s.feed(b"STARTTLS\r\n")
    s.srv.tls_established()
    assert (s.srv.helo_name, s.srv.authenticated, s.srv.in_transaction) == (None, False, False)
    _, out = s.feed(b"EHLO c.example\r\n")
    assert out.endswith(b"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 AUTH PLAIN LOGIN\r\n")


@pytest.mark.parametrize(
    ("settings", "lines", "reply"),
    [
        ({"tls_available": False}, b"EHLO c.example\r\nSTARTTLS\r\n", b"502 5.5.1 "),
        ({"tls_active": True}, b"EHLO c.example\r\nSTARTTLS\r\n", b"503 5.5.1 "),
        ({}, b"STARTTLS\r\n", b"503 5.5.1 "),
        ({}, b"EHLO c.example\r\nSTARTTLS now\r\n", b"501 5.5.4 "),
        ({}, b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nSTARTTLS\r\n", b"503 5.5.1 "),
    ],
)
def test_starttls_refusals(settings: dict[str, Any], lines: bytes, reply: bytes) -> None:
    s = Session(**settings)
    events, out = s.feed(lines)
    assert out.split(b"\r\n")[-2].startswith(reply.rstrip(b" "))
    assert StartTls() not in events
    assert refused(events)[-1][0] == "STARTTLS"


# --- AUTH ---------------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def auth_session(**settings: Any) -> Session:
    s = Session(tls_active=True, auth_enabled=True, **settings)
    s.ehlo()
    return s


def test_auth_plain_initial_response() -> None:
    s = auth_session()
    events, out = s.feed(b"AUTH PLAIN " + b64(b"\x00alice@example.test\x00pw") + b"\r\n")
    assert events == [AuthCredentials("PLAIN", "", "alice@example.test", "pw")]
    assert out == b"235 2.7.0 Authentication successful\r\n"
    assert s.srv.authenticated
    _, out = s.feed(b"EHLO c.example\r\n")
    assert b"AUTH" not in out  # not offered again
    events, out = s.feed(b"AUTH PLAIN " + b64(b"\x00a\x00b") + b"\r\n")
    assert out == b"503 5.5.1 Already authenticated\r\n"


def test_auth_plain_continuation() -> None:
    s = auth_session()
    events, out = s.feed(b"auth plain\r\n")
    assert (events, out) == ([], b"334 \r\n")  # RFC 4954 4: "334" SP
    phases = [s.srv.phase]
    events, out = s.feed(b64(b"authz\x00bob\x00secret") + b"\r\n")
    assert events == [AuthCredentials("PLAIN", "authz", "bob", "secret")]
    phases.append(s.srv.phase)
    assert phases == ["auth", "command"]


def test_auth_login() -> None:
    s = auth_session()
    _, out = s.feed(b"AUTH LOGIN\r\n")
    assert out == b"334 VXNlcm5hbWU6\r\n"
    _, out = s.feed(b64(b"bob") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    events, out = s.feed(b64(b"pw") + b"\r\n")
    assert events == [AuthCredentials("LOGIN", "", "bob", "pw")]
    s = auth_session()
    _, out = s.feed(b"AUTH LOGIN " + b64(b"bob") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"


def test_auth_failure_reply() -> None:
    s = auth_session()
    s.answers[AuthCredentials] = AUTH_FAILED
    _, out = s.feed(b"AUTH PLAIN " + b64(b"\x00u\x00wrong") + b"\r\n")
    assert out == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert not s.srv.authenticated
    s.answers[AuthCredentials] = OK_REPLY  # only 235 can be positive
    with pytest.raises(SmtpProtocolError):
        s.feed(b"AUTH PLAIN " + b64(b"\x00u\x00p") + b"\r\n")


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        (b"AUTH PLAIN\r\n*\r\n", b"501 5.7.0 Authentication cancelled\r\n"),
        (b"AUTH LOGIN\r\n*\r\n", b"501 5.7.0 Authentication cancelled\r\n"),
        (b"AUTH PLAIN\r\nnot base64!\r\n", b"501 5.5.2 Cannot decode response\r\n"),
        (b"AUTH PLAIN ###\r\n", b"501 5.5.2 Cannot decode response\r\n"),
        (b"AUTH PLAIN =\r\n", b"501 5.5.2 Cannot decode response\r\n"),
        (b"AUTH PLAIN " + b64(b"no-nuls") + b"\r\n", b"501 5.5.2 Cannot decode response\r\n"),
        (b"AUTH CRAM-MD5\r\n", b"504 5.5.4 Unrecognized authentication mechanism\r\n"),
        (b"AUTH\r\n", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
        (b"AUTH PLAIN a b\r\n", b"501 5.5.4 Syntax error in parameters or arguments\r\n"),
    ],
)
def test_auth_errors(lines: bytes, reply: bytes) -> None:
    s = auth_session()
    events, out = s.feed(lines)
    assert out.endswith(reply)
    assert refused(events) == [("AUTH", int(reply[:3]))]
    assert not s.srv.authenticated
    assert s.srv.phase == "command"
    _, out = s.feed(b"NOOP\r\n")
    assert out == OK


def test_auth_refusals() -> None:
    s = Session(auth_enabled=False, tls_active=True)
    s.ehlo()
    _, out = s.feed(b"AUTH PLAIN\r\n")
    assert out == b"502 5.5.1 Command not implemented\r\n"
    s = Session(auth_enabled=True)  # no TLS
    s.ehlo()
    events, out = s.feed(b"AUTH PLAIN " + b64(b"\x00u\x00p") + b"\r\n")
    assert out == b"538 5.7.11 Encryption required for requested authentication\r\n"
    assert not any(isinstance(e, AuthCredentials) for e in events)
    s = auth_session()
    s.feed(b"MAIL FROM:<a@b.example>\r\n")
    _, out = s.feed(b"AUTH PLAIN\r\n")
    assert out == b"503 5.5.1 Not allowed during a mail transaction\r\n"
    s = Session(auth_enabled=True, tls_active=True)
    _, out = s.feed(b"AUTH PLAIN\r\n")
    assert out == NEED_HELO


def test_auth_then_mail_when_required() -> None:
    s = auth_session(auth_required=True)
    s.feed(b"AUTH PLAIN " + b64(b"\x00u\x00p") + b"\r\n")
    events, out = s.feed(b"MAIL FROM:<u@b.example>\r\n")
    assert isinstance(events[0], MailFrom) and out == SENDER


def test_auth_long_lines_allowed() -> None:
    s = auth_session()
    password = b"p" * 6000
    line = b"AUTH PLAIN " + b64(b"\x00u\x00" + password) + b"\r\n"
    assert 2048 < len(line) <= 12288
    events, _ = s.feed(line)
    assert events == [AuthCredentials("PLAIN", "", "u", password.decode())]
    s = auth_session()
    _, out = s.feed(b"AUTH PLAIN\r\n" + b"A" * 12287 + b"\r\n")
    assert out == b"334 \r\n500 5.5.2 Line too long\r\n"
    assert s.srv.phase == "command"


def test_password_not_logged_in_event_repr() -> None:
    assert "hunter2" not in repr(AuthCredentials("PLAIN", "", "u", "hunter2"))
