"""Byte-level tests of the sans-I/O SMTP client core (proto.smtp_client), and a dialogue
with our own server core (proto.smtp) as the peer."""

from __future__ import annotations

import base64

import pytest

from mailward.proto.replies import MESSAGE_ACCEPTED, RECIPIENT_OK, SENDER_OK, Reply
from mailward.proto.smtp import SmtpServer, SmtpSettings
from mailward.proto.smtp_client import (
    MAX_REPLY_LINE,
    MAX_REPLY_LINES,
    Closed,
    Command,
    NeedData,
    ReplyParser,
    Response,
    SmtpClient,
    SmtpClientError,
    dot_stuff,
    parse_ehlo,
)
from mailward.proto.smtp_events import MailFrom, MessageChunk, MessageEnd, RcptTo

EHLO_PIPELINING = (
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
)
EHLO_PLAIN = b"250-mx.example\r\n250 SIZE\r\n"


def events(client: SmtpClient) -> list[Response | Closed]:
    out: list[Response | Closed] = []
    while True:
        event = client.next_event()
        if isinstance(event, NeedData):
            return out
        out.append(event)
        if isinstance(event, Closed):
            return out


def greeted(ehlo: bytes = EHLO_PIPELINING) -> SmtpClient:
    client = SmtpClient()
    client.receive_data(b"220 mx.example ESMTP\r\n")
    (greeting,) = events(client)
    assert isinstance(greeting, Response) and greeting.command is Command.GREETING
    client.ehlo("client.example")
    assert client.data_to_send() == b"EHLO client.example\r\n"
    client.receive_data(ehlo)
    (resp,) = events(client)
    assert isinstance(resp, Response) and resp.reply.code == 250
    return client


# --- replies ---------------------------------------------------------------------------


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    out = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def test_single_and_multiline_replies() -> None:
    (a, b, c) = parse_all(
        b"250 OK\r\n250-first\r\n250-second\r\n250 last\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    assert (a.code, a.enhanced, a.lines) == (250, None, ("OK",))
    assert b.lines == ("first", "second", "last")
    assert c.code == 354


def test_bare_code_and_empty_continuation_lines() -> None:
    (a, b) = parse_all(b"250\r\n221-\r\n221\r\n")
    assert (a.code, a.lines) == (250, ("",))
    assert (b.code, b.lines) == (221, ("", ""))


def test_enhanced_status_codes() -> None:
    (a, b, c, d) = parse_all(
        b"550-5.1.1 No such user\r\n550 5.1.1 here\r\n"
        b"250 2.1.5\r\n"
        b"451 5.0.0 class mismatch is not an enhanced code\r\n"
        b"250 2.0.0x not a code\r\n"
    )
    assert (a.code, a.enhanced, a.lines) == (550, "5.1.1", ("No such user", "here"))
    assert (b.enhanced, b.lines) == ("2.1.5", ("",))
    assert c.enhanced is None and c.lines[0].startswith("5.0.0")
    assert d.enhanced is None


def test_bare_lf_line_endings_are_accepted() -> None:
    (a,) = parse_all(b"250-a\n250 b\n")
    assert a.lines == ("a", "b")


def test_control_characters_and_bad_utf8_are_made_safe() -> None:
    (a,) = parse_all(b"550 bad\x1b[31m \xff text\r\n")
    assert a.lines == ("bad?[31m \ufffd text",)


@pytest.mark.parametrize(
    "data",
    [
        b"25 short\r\n",
        b"650 bad class\r\n",
        b"260 bad second digit\r\n",
        b"250x no separator\r\n",
        b"abc text\r\n",
        b"250-one\r\n251 other code\r\n",
        b"\r\n",
    ],
)
def test_malformed_replies_raise_the_one_error(data: bytes) -> None:
    with pytest.raises(SmtpClientError):
        parse_all(data)


def test_reply_line_is_bounded_before_it_ends() -> None:
    parser = ReplyParser()
    parser.feed(b"250 " + b"x" * (MAX_REPLY_LINE - 4))
    with pytest.raises(SmtpClientError, match="too long"):
        parser.next_reply()
    ok = ReplyParser()
    ok.feed(b"250 " + b"x" * (MAX_REPLY_LINE - 6) + b"\r\n")
    assert ok.next_reply() is not None


def test_reply_lines_are_bounded() -> None:
    parser = ReplyParser()
    parser.feed(b"250-x\r\n" * MAX_REPLY_LINES + b"250 x\r\n")
    with pytest.raises(SmtpClientError, match="too many lines"):
        parser.next_reply()


# --- EHLO ------------------------------------------------------------------------------


def test_ehlo_keywords() -> None:
    ext = parse_ehlo(
        Reply(
            250,
            None,
            (
                "mx.example greets you",
                "pipelining",
                "SIZE 35882577",
                "8BITMIME",
                "AUTH PLAIN LOGIN",
                "AUTH=CRAM-MD5",
                "SMTPUTF8",
                "X-ODD params here",
                "??? not a keyword",
            ),
        )
    )
    assert ext.pipelining and ext.eightbitmime and ext.smtputf8 and not ext.starttls
    assert ext.size == 35882577
    assert ext.auth_mechanisms == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert ext.keywords["X-ODD"] == "params here"
    assert "???" not in ext.keywords
    assert parse_ehlo(Reply(250, None, ("x", "SIZE"))).size == 0
    assert parse_ehlo(Reply(250, None, ("x", "SIZE lots"))).size == 0
    assert parse_ehlo(Reply(250, None, ("x",))).size is None


# --- batching (RFC 2920) -------------------------------------------------------------------


def test_pipelining_sends_mail_rcpts_and_data_in_one_write() -> None:
    client = greeted()
    client.mail("a@example.org", size=120, body_8bitmime=True)
    client.rcpt("b@example.net")
    client.rcpt("c@example.net")
    client.data()
    client.rcpt("never@example.net")  # after a group end: waits for the replies
    assert client.data_to_send() == (
        b"MAIL FROM:<a@example.org> SIZE=120 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    client.receive_data(b"250 2.1.0 OK\r\n550 5.1.1 no\r\n250 2.1.5 OK\r\n354 go\r\n")
    got = events(client)
    assert [(e.command, e.argument, e.reply.code) for e in got if isinstance(e, Response)] == [
        (Command.MAIL, "", 250),
        (Command.RCPT, "b@example.net", 550),
        (Command.RCPT, "c@example.net", 250),
        (Command.DATA, "", 354),
    ]
    assert client.in_message


def test_without_pipelining_one_command_per_reply() -> None:
    client = greeted(EHLO_PLAIN)
    client.mail("")
    client.rcpt("b@example.net")
    client.data()
    assert client.data_to_send() == b"MAIL FROM:<>\r\n"
    assert client.data_to_send() == b""
    client.receive_data(b"250 OK\r\n")
    events(client)
    assert client.data_to_send() == b"RCPT TO:<b@example.net>\r\n"
    client.receive_data(b"250 OK\r\n")
    events(client)
    assert client.data_to_send() == b"DATA\r\n"


def test_message_data_is_dot_stuffed_and_terminated() -> None:
    client = greeted()
    client.mail("a@example.org")
    client.rcpt("b@example.net")
    client.data()
    client.data_to_send()
    client.receive_data(b"250 OK\r\n250 OK\r\n354 go\r\n")
    events(client)
    for piece in (b".leading\r\nmiddle\r", b"\n.", b"dot\r\n..two\nbare lf\r", b"", b"x"):
        client.message(piece)
    client.end_message()
    assert client.data_to_send() == (
        b"..leading\r\nmiddle\r\n..dot\r\n...two\r\nbare lf\r\nx\r\n.\r\n"
    )
    client.receive_data(b"250 2.0.0 queued\r\n")
    (resp,) = events(client)
    assert isinstance(resp, Response) and resp.command is Command.MESSAGE


@pytest.mark.parametrize(
    ("data", "bol", "expected"),
    [
        (b"abc", True, b"abc"),
        (b".abc", True, b"..abc"),
        (b".abc", False, b".abc"),
        (b"a\r\n.b\r\n", True, b"a\r\n..b\r\n"),
        (b"a\n.b\rc", True, b"a\r\n..b\r\nc"),
    ],
)
def test_dot_stuff(data: bytes, bol: bool, expected: bytes) -> None:
    assert dot_stuff(data, bol) == expected


def test_message_data_only_after_354() -> None:
    client = greeted()
    with pytest.raises(SmtpClientError):
        client.message(b"x")
    client.mail("a@example.org")
    client.rcpt("b@example.net")
    client.data()
    client.data_to_send()
    client.receive_data(b"250 OK\r\n550 no\r\n554 no valid recipients\r\n")
    events(client)
    assert not client.in_message
    with pytest.raises(SmtpClientError):
        client.end_message()


def test_command_injection_is_refused() -> None:
    client = greeted()
    for bad in ("a@b\r\nRSET", "a b@c", "<a@b>"):
        with pytest.raises(SmtpClientError):
            client.rcpt(bad)
    with pytest.raises(SmtpClientError):
        client.ehlo("x\nQUIT")


def test_starttls_discards_injected_replies_and_forgets_extensions() -> None:
    client = greeted()
    client.starttls()
    client.mail("a@example.org")  # waits for TLS
    assert client.data_to_send() == b"STARTTLS\r\n"
    client.receive_data(b"220 2.0.0 go ahead\r\n250 injected\r\n")
    (resp,) = [e for e in [client.next_event()] if isinstance(e, Response)]
    assert resp.command is Command.STARTTLS
    client.receive_data(b"250 more plaintext\r\n")
    with pytest.raises(SmtpClientError):
        client.next_event()
    assert client.data_to_send() == b""
    client.tls_established()
    assert client.tls_active and not client.extensions.pipelining
    assert client.discarded_after_starttls == len(b"250 injected\r\n250 more plaintext\r\n")
    assert isinstance(client.next_event(), NeedData)
    assert client.data_to_send() == b"MAIL FROM:<a@example.org>\r\n"


def test_auth_plain_initial_response_and_cancel_on_334() -> None:
    client = greeted()
    client.auth_plain("user", "pass word")
    line = client.data_to_send()
    assert line.startswith(b"AUTH PLAIN ")
    assert base64.b64decode(line[11:].strip()) == b"\x00user\x00pass word"
    client.receive_data(b"334 \r\n")
    assert isinstance(client.next_event(), NeedData)
    assert client.data_to_send() == b"*\r\n"
    client.receive_data(b"501 5.7.0 cancelled\r\n")
    (resp,) = events(client)
    assert isinstance(resp, Response) and resp.command is Command.AUTH
    assert resp.reply.code == 501


def test_421_closes_and_lists_unanswered_commands() -> None:
    client = greeted()
    client.mail("a@example.org")
    client.rcpt("b@example.net")
    client.data()
    client.data_to_send()
    client.receive_data(b"421 4.3.2 shutting down\r\n")
    got = events(client)
    assert isinstance(got[0], Response) and got[0].command is Command.MAIL
    assert isinstance(got[1], Closed)
    assert [c for c, _ in got[1].unanswered] == [Command.RCPT, Command.DATA]
    with pytest.raises(SmtpClientError):
        client.rset()


def test_unsolicited_421_and_eof() -> None:
    client = greeted()
    client.receive_data(b"421 idle timeout\r\n")
    assert isinstance(client.next_event(), Closed)
    other = greeted()
    other.noop()
    other.data_to_send()
    other.receive_data(b"250 O")
    other.receive_eof()
    closed = other.next_event()
    assert isinstance(closed, Closed) and "inside a reply" in closed.reason


def test_unsolicited_reply_is_an_error() -> None:
    client = greeted()
    client.receive_data(b"250 nobody asked\r\n")
    with pytest.raises(SmtpClientError):
        client.next_event()


def test_reply_during_message_data_answers_the_message() -> None:
    client = greeted()
    client.mail("a@example.org")
    client.rcpt("b@example.net")
    client.data()
    client.data_to_send()
    client.receive_data(b"250 OK\r\n250 OK\r\n354 go\r\n")
    events(client)
    client.message(b"Subject: x\r\n\r\nbody")
    client.receive_data(b"552 5.3.4 too big\r\n")
    got = events(client)
    assert isinstance(got[0], Response) and got[0].command is Command.MESSAGE
    assert got[0].reply.code == 552 and isinstance(got[1], Closed)


def test_quit_closes() -> None:
    client = greeted()
    client.quit()
    client.data_to_send()
    client.receive_data(b"221 2.0.0 Bye\r\n")
    got = events(client)
    assert isinstance(got[0], Response) and isinstance(got[1], Closed)
    assert got[1].reason == "quit"


# --- against our own server core -----------------------------------------------------------


def test_dialogue_with_the_server_core() -> None:
    server = SmtpServer(SmtpSettings(hostname="mx.example", tls_available=False))
    client = SmtpClient()
    received = b""

    def pump() -> list[Response | Closed]:
        nonlocal received
        got: list[Response | Closed] = []
        for _ in range(50):
            server.receive_data(client.data_to_send())
            while True:
                ev = server.next_event()
                if isinstance(ev, MailFrom):
                    server.send_reply(SENDER_OK)
                elif isinstance(ev, RcptTo):
                    server.send_reply(RECIPIENT_OK)
                elif isinstance(ev, MessageChunk):
                    received += ev.data
                elif isinstance(ev, MessageEnd):
                    server.send_reply(MESSAGE_ACCEPTED)
                elif type(ev).__name__ in ("NeedData", "ConnectionClosed"):
                    break
            client.receive_data(server.data_to_send())
            got += events(client)
            if client.in_message or client.closed or not client.waiting:
                return got
        raise AssertionError("no progress")

    assert pump()[0].command is Command.GREETING  # type: ignore[union-attr]
    client.ehlo("client.example")
    pump()
    assert client.extensions.pipelining and client.extensions.size == 50 * 1024 * 1024
    client.mail("a@example.org", size=40)
    client.rcpt("b@example.net")
    client.data()
    pump()
    assert client.in_message
    message = b"Subject: hi\r\n\r\n.dot line\r\nlast line without CRLF"
    client.message(message)
    client.end_message()
    (done,) = pump()
    assert isinstance(done, Response) and done.reply.code == 250
    assert received == message + b"\r\n"
    client.quit()
    assert isinstance(pump()[-1], Closed)
