"""SMTP policy, end to end: a real `mailward serve` on loopback, driven by the stdlib
(smtplib, ssl, raw sockets). These are issue 2's "what must be shown": banner, VRFY,
EXPN, HELP, AUTH only under TLS and only on submission, TLS >= 1.2, no open relay,
sender ownership, limits, SMTP smuggling, byte-exact delivery.

Tests that only probe (and store nothing when the server is right) share one server
per module (`probe`); tests that read the store back get their own (`server`).
"""

from __future__ import annotations

import base64
import contextlib
import smtplib
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from mailward import __version__
from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import (
    Raw,
    auth_plain,
    dot_stuff,
    mbox_messages,
    message,
    split_trace,
)

ALICE = "alice@example.test"
BOB = "bob@example.test"
SALES = "sales@example.test"
PASSWORDS = {
    ALICE: "correct-horse-battery-staple-42",
    BOB: "Quartz-lantern-meadow-ferry-97",
}
TIMEOUT = 15.0
# Words a reply must never contain (DESIGN.md 3, "say nothing").
TELLTALES = (b"mailward", b"python", b"asyncio", b"aiosmtpd", b"traceback", __version__.encode())


# --------------------------------------------------------------------------- helpers


def stored(server: RunningServer, address: str) -> list[bytes]:
    return mbox_messages(server.cli("export", address).stdout)


def assert_stored_exactly(server: RunningServer, address: str, sent: bytes) -> list[bytes]:
    """`address`'s INBOX holds exactly one message: trace fields on top of `sent`."""
    messages = stored(server, address)
    assert len(messages) == 1, messages
    fields, rest = split_trace(messages[0])
    names = [f.split(b":", 1)[0].lower() for f in fields]
    assert names[:1] == [b"return-path"], fields
    assert b"received" in names, fields
    assert rest == sent
    return fields


def client_context(server: RunningServer) -> ssl.SSLContext:
    return server.ssl_context()


def weak_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers only `version` (1.0 or 1.1), with every cipher allowed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.minimum_version = version
    context.maximum_version = version
    return context


def submission(server: RunningServer, port: str = "submission") -> smtplib.SMTP:
    """An smtplib session on a submission port, TLS up, not yet authenticated."""
    if port == "submissions":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            server.host,
            server.submissions_port,
            context=client_context(server),
            timeout=TIMEOUT,
        )
    else:
        smtp = smtplib.SMTP(server.host, server.submission_port, timeout=TIMEOUT)
        smtp.starttls(context=client_context(server))
    smtp.ehlo("client.test")
    return smtp


def logged_in(server: RunningServer, user: str = ALICE, port: str = "submission") -> smtplib.SMTP:
    smtp = submission(server, port)
    code, text = smtp.docmd(*auth_plain(user, PASSWORDS[user]).split(" ", 1))
    assert code == 235, text
    return smtp


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for tests that only probe; same accounts as the `server` fixture."""
    with mail_server(tmp_path_factory.mktemp("probe"), users=PASSWORDS) as srv:
        srv.cli("alias", "add", SALES, ALICE)
        yield srv


def assert_says_nothing(text: bytes) -> None:
    for word in TELLTALES:
        assert word not in text.lower(), text


# --------------------------------------------------------------------------- banner


@pytest.mark.parametrize("port", ["smtp", "submission"])
def test_greeting_names_no_software(probe: RunningServer, port: str) -> None:
    with Raw(probe.host, getattr(probe, f"{port}_port")) as s:
        assert s.reply() == (220, b"220 localhost ESMTP\r\n")
        _, ehlo = s.ehlo()
        assert_says_nothing(ehlo)
        assert ehlo.startswith(b"250-localhost"), ehlo


def test_greeting_on_implicit_tls(probe: RunningServer) -> None:
    with Raw(probe.host, probe.submissions_port, client_context(probe)) as s:
        assert s.reply() == (220, b"220 localhost ESMTP\r\n")


def test_vrfy_reveals_nothing(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        replies = {
            arg: s.cmd(f"VRFY {arg}")
            for arg in (ALICE, "alice", SALES, "nobody@example.test", "nobody", "x@foreign.test")
        }
        for arg, (code, text) in replies.items():
            assert code == 252, (arg, text)
            assert b"alice" not in text.lower() and b"nobody" not in text.lower(), text
        assert len({text for _, text in replies.values()}) == 1, replies
        assert s.cmd("NOOP")[0] == 250


def test_expn_refused(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        answers = {s.cmd(f"EXPN {arg}") for arg in (SALES, "nobody@example.test", "postmaster")}
        assert len(answers) == 1, answers
        code, text = answers.pop()
        assert code == 502, text
        assert b"alice" not in text.lower()
        assert s.cmd("NOOP")[0] == 250


def test_help_reveals_nothing(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        for arg in ("HELP", "HELP VRFY", "HELP AUTH", "HELP version"):
            code, text = s.cmd(arg)
            assert code in (211, 214, 502), text
            assert_says_nothing(text)
            assert len(text) < 300, text
        assert s.cmd("NOOP")[0] == 250


def test_error_replies_name_no_software(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        for bad in ("FOO", "EHLO", "RCPT TO:<x@example.test>", "DATA", "MAIL FROM:garbage"):
            code, text = s.cmd(bad)
            assert 500 <= code < 600, (bad, text)
            assert_says_nothing(text)


# --------------------------------------------------------------------------- AUTH / TLS


def features(ehlo: bytes) -> set[str]:
    return {line[4:].decode().strip().upper() for line in ehlo.splitlines()[1:]}


def offers_plain_and_login(offered: set[str]) -> bool:
    return any(f.split()[0] == "AUTH" and {"PLAIN", "LOGIN"} <= set(f.split()[1:]) for f in offered)


def test_mx_plain_ehlo_offers_starttls_not_auth(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        offered = features(s.ehlo()[1])
        names = {f.split()[0] for f in offered}
        assert {"PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "STARTTLS"} <= names
        assert "SIZE" in names, offered
        assert not any(f.startswith("AUTH") for f in offered), offered


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_submission_auth_refused_before_starttls(probe: RunningServer, mechanism: str) -> None:
    with Raw(probe.host, probe.submission_port) as s:
        s.reply()
        offered = features(s.ehlo()[1])
        assert "STARTTLS" in offered
        assert not any(f.startswith("AUTH") for f in offered), offered
        if mechanism == "PLAIN":
            code, text = s.cmd(auth_plain(ALICE, PASSWORDS[ALICE]))
        else:
            code, text = s.cmd("AUTH LOGIN")
        # Refused outright: no 334 prompt that would invite a password in clear.
        assert 500 <= code < 600, text
        code, text = s.cmd(f"MAIL FROM:<{ALICE}>")
        assert code == 530, text
        # The session still works and TLS + AUTH then succeed.
        s.starttls(client_context(probe))
        offered = features(s.ehlo()[1])
        assert offers_plain_and_login(offered), offered
        assert "STARTTLS" not in offered
        assert s.cmd(auth_plain(ALICE, PASSWORDS[ALICE]))[0] == 235


def test_submission_auth_login_after_starttls(probe: RunningServer) -> None:
    with Raw(probe.host, probe.submission_port) as s:
        s.reply()
        s.ehlo()
        s.starttls(client_context(probe))
        s.ehlo()
        assert s.cmd("AUTH LOGIN")[0] == 334
        assert s.cmd(base64.b64encode(BOB.encode()))[0] == 334
        code, text = s.cmd(base64.b64encode(PASSWORDS[BOB].encode()))
        assert code == 235, text


def test_implicit_tls_advertises_auth(probe: RunningServer) -> None:
    with Raw(probe.host, probe.submissions_port, client_context(probe)) as s:
        s.reply()
        offered = features(s.ehlo()[1])
        assert offers_plain_and_login(offered), offered
        assert "STARTTLS" not in offered
        assert s.cmd(auth_plain(BOB, PASSWORDS[BOB]))[0] == 235


def test_mx_never_offers_auth_even_after_starttls(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        code, text = s.cmd(auth_plain(ALICE, PASSWORDS[ALICE]))
        assert 500 <= code < 600, text
        s.starttls(client_context(probe))
        offered = features(s.ehlo()[1])
        assert not any(f.startswith("AUTH") for f in offered), offered
        assert "STARTTLS" not in offered
        for attempt in (auth_plain(ALICE, PASSWORDS[ALICE]), "AUTH LOGIN"):
            code, text = s.cmd(attempt)
            assert 500 <= code < 600, (attempt, text)
        assert s.cmd("NOOP")[0] == 250


def _weak_client_works(server: RunningServer, version: ssl.TLSVersion) -> None:
    """Control: this Python/OpenSSL can itself speak `version` (against a local peer
    that allows it), so a failed handshake against mailward is mailward refusing it."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.set_ciphers("ALL:@SECLEVEL=0")
    server_ctx.minimum_version = version
    server_ctx.maximum_version = version
    server_ctx.load_cert_chain(server.cert_path, server.data_dir / "tls" / "key.pem")
    a, b = socket.socketpair()
    a.settimeout(TIMEOUT)
    b.settimeout(TIMEOUT)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True):
                pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with weak_context(version).wrap_socket(b) as tls:
            assert tls.version() in ("TLSv1", "TLSv1.1")
    finally:
        thread.join(TIMEOUT)
    if errors:
        pytest.skip(f"this OpenSSL cannot speak {version.name} at all: {errors[0]}")


WEAK = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("version", WEAK, ids=lambda v: v.name)
@pytest.mark.parametrize("port", ["smtp", "submission", "submissions"])
def test_old_tls_refused(probe: RunningServer, port: str, version: ssl.TLSVersion) -> None:
    _weak_client_works(probe, version)
    with Raw(probe.host, getattr(probe, f"{port}_port")) as s:
        if port != "submissions":
            s.reply()
            s.ehlo()
            code, text = s.cmd("STARTTLS")
            assert code == 220, text
        with pytest.raises((ssl.SSLError, ConnectionError)):
            weak_context(version).wrap_socket(s.sock).close()
    # Refusing one client harms nobody else.
    with Raw(probe.host, probe.submissions_port, client_context(probe)) as s:
        assert s.reply()[0] == 220


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=lambda v: v.name
)
@pytest.mark.parametrize("port", ["smtp", "submission", "submissions"])
def test_modern_tls_works(probe: RunningServer, port: str, version: ssl.TLSVersion) -> None:
    context = client_context(probe)
    context.minimum_version = version
    context.maximum_version = version
    if port == "submissions":
        s = Raw(probe.host, probe.submissions_port, context)
        s.reply()
    else:
        s = Raw(probe.host, getattr(probe, f"{port}_port"))
        s.reply()
        s.ehlo()
        s.starttls(context)
    with s:
        assert isinstance(s.sock, ssl.SSLSocket)
        assert s.sock.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        s.ehlo()
        assert s.cmd("NOOP")[0] == 250


# --------------------------------------------------------------------------- relay


RELAY_TRICKS = {
    "foreign-domain": "user@foreign.test",
    "percent-hack": "alice%foreign.test@example.test",
    "source-route": "@example.test:user@foreign.test",
    "quoted-local-with-at": '"user@foreign.test"@example.test',
    "double-at": "alice@foreign.test@example.test",
    "bang-path": "foreign.test!user@example.test",
    "ip-literal": "user@[127.0.0.1]",
    "trailing-dot": "alice@example.test.",
    "uppercase-foreign": "ALICE@FOREIGN.TEST",
    "foreign-subdomain-of-local": "alice@sub.example.test",
    "local-as-subdomain-of-foreign": "alice@example.test.foreign.test",
}


@pytest.mark.parametrize("address", RELAY_TRICKS.values(), ids=RELAY_TRICKS.keys())
def test_mx_refuses_relay(probe: RunningServer, address: str) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        code, text = s.cmd(f"RCPT TO:<{address}>")
        assert 500 <= code < 600, (address, text)
        # The session goes on: a local recipient is still accepted, the refused one
        # never became part of the transaction.
        code, text = s.cmd(f"RCPT TO:<{ALICE}>")
        assert code == 250, text
        assert s.cmd("RSET")[0] == 250


def test_mx_refuses_relay_with_no_recipient_left(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        assert 500 <= s.cmd("RCPT TO:<user@foreign.test>")[0] < 600
        code, text = s.cmd("DATA")
        assert code in (503, 554), text


@pytest.mark.parametrize(
    "address", ["alice@EXAMPLE.TEST", "ALICE@example.test", "Alice@Example.Test"]
)
def test_mx_case_games_go_both_ways(server: RunningServer, address: str) -> None:
    sent = message("someone@foreign.test", address)
    with smtplib.SMTP(server.host, server.smtp_port, timeout=TIMEOUT) as smtp:
        assert smtp.sendmail("someone@foreign.test", [address], sent) == {}
    assert_stored_exactly(server, ALICE, sent)


def test_mx_unknown_local_user(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        code, text = s.cmd("RCPT TO:<nobody@example.test>")
        assert code == 550 and text.startswith(b"550 5.1.1"), text
        assert s.cmd(f"RCPT TO:<{BOB}>")[0] == 250


# --------------------------------------------------------------------------- delivery


@pytest.mark.parametrize("recipient", [ALICE, SALES], ids=["account", "alias"])
def test_mx_delivery_is_byte_exact(server: RunningServer, recipient: str) -> None:
    sent = message("someone@foreign.test", recipient, body=b"Body\r\n.leading dot\r\nend\r\n")
    with smtplib.SMTP(server.host, server.smtp_port, timeout=TIMEOUT) as smtp:
        assert smtp.sendmail("someone@foreign.test", [recipient], sent) == {}
    fields = assert_stored_exactly(server, ALICE, sent)
    assert fields[0] == b"Return-Path: <someone@foreign.test>", fields
    assert stored(server, BOB) == []
    # The log records the delivery but never the message body.
    server.wait_for_events("message.stored")
    assert b".leading dot" not in server.log_path.read_bytes()


def test_submission_stores_local_with_tls_note_and_no_username(server: RunningServer) -> None:
    sent = message(ALICE, BOB)
    with logged_in(server) as smtp:
        assert smtp.sendmail(ALICE, [BOB], sent) == {}
    fields = assert_stored_exactly(server, BOB, sent)
    received = b" ".join(f for f in fields if f.lower().startswith(b"received:"))
    assert b"TLS" in received.upper(), received
    assert b"alice" not in received.lower(), received  # RFC 8314 7.4: no user name
    assert b"authenticated" in received.lower() or b"ESMTPSA" in received, received


def test_implicit_tls_submission_stores(server: RunningServer) -> None:
    sent = message(BOB, ALICE)
    with logged_in(server, BOB, port="submissions") as smtp:
        assert smtp.sendmail(BOB, [ALICE], sent) == {}
    assert_stored_exactly(server, ALICE, sent)


def test_submission_foreign_recipient_is_queued_local_is_stored(server: RunningServer) -> None:
    sent = message(ALICE, "friend@foreign.test")
    with logged_in(server) as smtp:
        assert smtp.sendmail(ALICE, ["friend@foreign.test", BOB], sent) == {}
    assert_stored_exactly(server, BOB, sent)
    # The queue worker may since have bounced it (foreign.test has no MX and no
    # address): then Alice holds that DSN and nothing else.
    for dsn in stored(server, ALICE):
        assert b"report-type=delivery-status" in dsn and b"friend@foreign.test" in dsn
    # The foreign recipient went to the outbound queue (the log says so).
    events = server.wait_for_events("message.stored")
    stored_events = [e for e in events if e.get("event") == "message.stored"]
    assert [(e.get("local_recipients"), e.get("queued_recipients")) for e in stored_events] == [
        (1, 1)
    ], stored_events


# --------------------------------------------------------------------------- submission


def test_submission_mail_before_auth(server: RunningServer) -> None:
    with submission(server) as smtp:
        code, text = smtp.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, text
        code, text = smtp.docmd(*auth_plain(ALICE, PASSWORDS[ALICE]).split(" ", 1))
        assert code == 235, text
        sent = message(ALICE, BOB)
        assert smtp.sendmail(ALICE, [BOB], sent) == {}
    assert_stored_exactly(server, BOB, sent)


def test_submission_wrong_password(server: RunningServer) -> None:
    with submission(server) as smtp:
        code, text = smtp.docmd(*auth_plain(ALICE, "correct-horse-battery-staple-43").split(" ", 1))
        assert code == 535, text
        code, text = smtp.docmd(*auth_plain("nobody@example.test", "whatever-it-is").split(" ", 1))
        assert code == 535, text
        code, text = smtp.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, text
        code, text = smtp.docmd(*auth_plain(ALICE, PASSWORDS[ALICE]).split(" ", 1))
        assert code == 235, text
    assert server.wait_for_events("auth.success", "auth.failure")
    log = server.log_path.read_bytes()
    assert b"correct-horse-battery-staple-4" not in log
    assert b"whatever-it-is" not in log


@pytest.mark.parametrize(
    "sender", ["bob@example.test", "ceo@foreign.test", "alice@example.test.foreign.test"]
)
def test_submission_mail_from_not_owned(server: RunningServer, sender: str) -> None:
    with logged_in(server) as smtp:
        code, text = smtp.docmd("MAIL", f"FROM:<{sender}>")
        assert code == 550 and text.startswith(b"5.7.1"), text
        sent = message(ALICE, BOB)
        assert smtp.sendmail(ALICE, [BOB], sent) == {}
    assert_stored_exactly(server, BOB, sent)


@pytest.mark.parametrize(
    "header_from",
    [
        "bob@example.test",
        "Bob <bob@example.test>",
        "ceo@foreign.test",
        "alice@example.test, bob@example.test",
    ],
    ids=["other-account", "display-name", "foreign", "two-addresses"],
)
def test_submission_from_header_not_owned(server: RunningServer, header_from: str) -> None:
    with logged_in(server) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(ALICE, [BOB], message(header_from, BOB))
        assert refused.value.smtp_code == 550, refused.value
        error = refused.value.smtp_error
        assert (error if isinstance(error, bytes) else error.encode()).startswith(b"5.7.1"), error
        sent = message(ALICE, BOB)
        assert smtp.sendmail(ALICE, [BOB], sent) == {}
    assert_stored_exactly(server, BOB, sent)


def test_submission_may_send_as_own_alias(server: RunningServer) -> None:
    sent = message(f"Sales <{SALES}>", BOB)
    with logged_in(server) as smtp:
        assert smtp.sendmail(SALES, [BOB], sent) == {}
    fields = assert_stored_exactly(server, BOB, sent)
    assert fields[0] == f"Return-Path: <{SALES}>".encode()


def test_bob_may_not_send_as_alices_alias(server: RunningServer) -> None:
    with logged_in(server, BOB) as smtp:
        code, text = smtp.docmd("MAIL", f"FROM:<{SALES}>")
        assert code == 550, text


# --------------------------------------------------------------------------- limits


def test_101st_recipient(server: RunningServer) -> None:
    with logged_in(server) as smtp:
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        for i in range(100):
            code, text = smtp.docmd("RCPT", f"TO:<r{i}@foreign.test>")
            assert code == 250, (i, text)
        code, text = smtp.docmd("RCPT", "TO:<r100@foreign.test>")
        assert code == 452, text
        assert smtp.docmd("RSET")[0] == 250
        sent = message(ALICE, BOB)
        assert smtp.sendmail(ALICE, [BOB], sent) == {}
    assert_stored_exactly(server, BOB, sent)


@pytest.mark.server_config({"limits.message_size": "10000"})
def test_size_limit(server: RunningServer) -> None:
    with Raw(server.host, server.smtp_port) as s:
        s.reply()
        assert "SIZE 10000" in features(s.ehlo()[1])
        code, text = s.cmd("MAIL FROM:<someone@foreign.test> SIZE=10001")
        assert code == 552 and text.startswith(b"552 5.3.4"), text
        # Lying about SIZE (or not giving it) does not get a big message in either.
        assert s.cmd("MAIL FROM:<someone@foreign.test> SIZE=100")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        big = message("someone@foreign.test", ALICE, body=(b"x" * 78 + b"\r\n") * 200)
        code, text = s.cmd(dot_stuff(big) + b".")
        assert code == 552, text
        # And the session goes on.
        sent = message("someone@foreign.test", ALICE, "small")
        assert s.cmd("MAIL FROM:<someone@foreign.test> SIZE=500")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(dot_stuff(sent) + b".")[0] == 250
    assert_stored_exactly(server, ALICE, sent)


def test_data_line_over_1000_octets(server: RunningServer) -> None:
    with Raw(server.host, server.smtp_port) as s:
        s.reply()
        s.ehlo()
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        # 999 octets + CRLF = 1001 > 1000 (RFC 5321 4.5.3.1.6 counts the CRLF).
        long_line = message("someone@foreign.test", ALICE, body=b"y" * 999 + b"\r\n")
        code, text = s.cmd(dot_stuff(long_line) + b".")
        assert 500 <= code < 600, text
        sent = message("someone@foreign.test", ALICE, body=b"z" * 998 + b"\r\n")
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        code, text = s.cmd(dot_stuff(sent) + b".")
        assert code == 250, text
    assert_stored_exactly(server, ALICE, sent)


def test_command_line_too_long(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        code, text = s.cmd("NOOP " + "a" * 5000)  # over any command line limit
        assert 500 <= code < 600, text
        assert s.cmd("NOOP")[0] == 250


def test_ten_bad_commands_close_the_session(probe: RunningServer) -> None:
    with Raw(probe.host, probe.smtp_port) as s:
        s.reply()
        s.ehlo()
        codes = []
        for i in range(10):
            try:
                code, _ = s.cmd(f"BOGUS{i}")
            except (ConnectionError, OSError):
                break
            codes.append(code)
            if code == 421:
                break
        if codes and codes[-1] != 421:
            with contextlib.suppress(ConnectionError, OSError):
                codes.append(s.reply()[0])
        assert len(codes) >= 10, codes
        assert all(500 <= c < 600 for c in codes[:9]), codes
        assert codes[-1] == 421, codes
        assert s.closed_by_server()
    # The server keeps serving everyone else.
    with Raw(probe.host, probe.smtp_port) as s:
        assert s.reply()[0] == 220
        assert s.cmd("NOOP")[0] == 250


# --------------------------------------------------------------------------- smuggling


SMUGGLE_ENDS = {
    "lf-dot-lf": b"\n.\n",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
}


def _smuggle(server: RunningServer, end: bytes) -> list[tuple[int, bytes]]:
    """Send one message whose body hides `end` + a second transaction; return every
    reply the server gave to it, up to the VRFY used as a marker."""
    first = message("someone@foreign.test", ALICE, "first", b"first part\r\n")
    payload = (
        first[:-2]
        + end
        + b"MAIL FROM:<evil@foreign.test>\r\n"
        + f"RCPT TO:<{ALICE}>\r\n".encode()
        + b"DATA\r\n"
        + b"From: evil@foreign.test\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
        + b".\r\n"
        + b"VRFY marker\r\n"
    )
    with Raw(server.host, server.smtp_port) as s:
        s.reply()
        s.ehlo()
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        s.send(payload)
        replies = []
        while True:
            code, text = s.reply()
            if code == 252:
                break
            replies.append((code, text))
            assert len(replies) < 10, replies
        # The same session still delivers a clean message.
        sent = message("someone@foreign.test", ALICE, "clean")
        assert s.cmd("MAIL FROM:<someone@foreign.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        assert s.cmd(dot_stuff(sent) + b".")[0] == 250
    messages = stored(server, ALICE)
    assert messages[-1].endswith(sent), messages
    return replies


@pytest.mark.parametrize("end", SMUGGLE_ENDS.values(), ids=SMUGGLE_ENDS.keys())
def test_smuggling_refused_by_default(server: RunningServer, end: bytes) -> None:
    replies = _smuggle(server, end)
    # One reply, for the whole thing, and a refusal (bare CR/LF rule, the default).
    assert len(replies) == 1, replies
    code, text = replies[0]
    assert 500 <= code < 600, text
    # Only the clean message was stored.
    assert len(stored(server, ALICE)) == 1


@pytest.mark.server_config({"smtp.bare_line_endings": "normalize"})
@pytest.mark.parametrize("end", SMUGGLE_ENDS.values(), ids=SMUGGLE_ENDS.keys())
def test_smuggling_never_splits_when_normalizing(server: RunningServer, end: bytes) -> None:
    replies = _smuggle(server, end)
    assert len(replies) == 1, replies
    code, text = replies[0]
    messages = stored(server, ALICE)
    if code == 250:
        # One message, and the would-be second transaction is inside its body.
        assert len(messages) == 2, messages
        assert b"smuggled" in messages[0] and b"MAIL FROM:<evil@foreign.test>" in messages[0]
    else:
        assert 500 <= code < 600, text
        assert len(messages) == 1, messages
    assert not any(m.count(b"Return-Path:") > 1 for m in messages)
    assert sum(b"Subject: smuggled" in m.split(b"\r\n\r\n", 1)[0] for m in messages) == 0
