"""Abuse and denial-of-service limits, end to end (SP 800-45; `[abuse]` config): a real
`mailward serve` on loopback, clients bound to their own 127.x.y.z source addresses
(Linux routes all of 127/8 to lo) so that per-address and per-/24 limits can be shown
without touching the suite's 127.0.0.1.

Tests that only need the limits share one server per module (`guarded`), each with
source addresses of its own; the sending caps (restart) and greylisting get their own.
Every trip is also checked in the server's JSON log.
"""

from __future__ import annotations

import select
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import TIMEOUT, Raw, mbox_messages, message

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORDS = {
    ALICE: "correct-horse-battery-staple-42",
    BOB: "Quartz-lantern-meadow-ferry-97",
}
GUARDED = {
    "abuse.greeting_delay": "1",
    "abuse.connections_per_net": "3",
    "abuse.connection_rate": "20",
    "abuse.min_data_rate": "256",
    "abuse.data_rate_grace": "1",
    "abuse.hello_timeout": "3",
    "abuse.tarpit_step": "0.3",
    "abuse.tarpit_max": "1",
    "abuse.probe_slowdown": "2",
    "abuse.probe_block": "4",
}


class RawFrom(Raw):
    """`Raw`, connected from a source address of our choosing."""

    def __init__(self, host: str, port: int, source: str) -> None:
        self.sock = socket.create_connection(
            (host, port), timeout=TIMEOUT, source_address=(source, 0)
        )
        self.buf = b""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with mail_server(tmp_path_factory.mktemp("guarded"), users=PASSWORDS, config=GUARDED) as srv:
        yield srv


def events_named(
    server: RunningServer, name: str, count: int = 1, **match: object
) -> list[dict[str, object]]:
    """Poll the log until `count` events `name` with the `match` fields are there (the
    server flushes info lines at least every 0.2 s)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            e
            for e in server.log_events()
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {name} event with {match}\n{server.log_tail()}")
        time.sleep(0.05)


def greeted(s: Raw) -> bytes:
    code, text = s.reply()
    assert code == 220, text
    return text


def trickle_until_reply(s: Raw, data: bytes, interval: float, limit: float) -> bytes:
    """Send `data` one octet every `interval` seconds until the server answers (or
    hangs up); returns what it said."""
    s.sock.settimeout(interval)
    deadline = time.monotonic() + limit
    for octet in data:
        try:
            s.sock.sendall(bytes([octet]))
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = s.sock.recv(65536)
        except TimeoutError:
            chunk = None
        except ConnectionResetError:
            break
        if chunk is not None:
            s.buf += chunk
            if b"\r\n" in s.buf or not chunk:
                break
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer within {limit}s")
    s.sock.settimeout(TIMEOUT)
    while b"\r\n" not in s.buf:  # the answer may still be on its way
        try:
            chunk = s.sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        s.buf += chunk
    return s.buf


# --------------------------------------------------------------------------- greeting


def test_early_talker_is_refused(guarded: RunningServer) -> None:
    with RawFrom(guarded.host, guarded.smtp_port, "127.60.0.1") as s:
        s.send(b"EHLO spambot.test\r\n")  # without waiting for the greeting
        code, text = s.reply()
        assert text.startswith(b"220-localhost ESMTP\r\n"), text
        assert (code, text.splitlines()[-1][:9]) == (554, b"554 5.7.1"), text
        assert s.closed_by_server()
    trip = events_named(guarded, "abuse.pregreet", ip="127.60.0.1")[0]
    assert trip["octets"] == len(b"EHLO spambot.test\r\n")


def test_patient_client_gets_the_full_greeting_and_delivers(guarded: RunningServer) -> None:
    with RawFrom(guarded.host, guarded.smtp_port, "127.60.0.2") as s:
        assert greeted(s) == b"220-localhost ESMTP\r\n220 localhost ESMTP\r\n"
    # Having waited once, the client is not paused again (abuse.greeting_pass_ttl).
    with RawFrom(guarded.host, guarded.smtp_port, "127.60.0.2") as s:
        assert greeted(s) == b"220 localhost ESMTP\r\n"
    sent = message("someone@remote.test", BOB, "patient")
    with smtplib.SMTP(guarded.host, guarded.smtp_port, timeout=TIMEOUT) as smtp:
        assert smtp.sendmail("someone@remote.test", [BOB], sent) == {}
    assert sent in mbox_messages(guarded.cli("export", BOB).stdout)[-1]
    # Submission has no pause and a one-line greeting.
    with RawFrom(guarded.host, guarded.submission_port, "127.60.0.3") as s:
        assert greeted(s) == b"220 localhost ESMTP\r\n"


def test_hello_phase_is_bounded(guarded: RunningServer) -> None:
    """Talking (NOOP) without ever saying HELO/EHLO does not keep a session open."""
    with RawFrom(guarded.host, guarded.smtp_port, "127.60.0.4") as s:
        greeted(s)
        started = time.monotonic()
        while True:
            readable, _, _ = select.select([s.sock], [], [], 0.3)
            if readable:  # the server spoke unprompted: the bound
                code, text = s.reply()
                break
            code, text = s.cmd("NOOP")
            if code != 250:
                break
            assert time.monotonic() - started < 15, "the hello bound never came"
        assert (code, text[:9]) == (421, b"421 4.4.2"), text
        assert s.closed_by_server()
    events_named(guarded, "abuse.hello_timeout", ip="127.60.0.4")


# --------------------------------------------------------------------------- connections


def test_connections_per_network_limit(guarded: RunningServer) -> None:
    sessions = [RawFrom(guarded.host, guarded.submission_port, f"127.61.0.{i}") for i in (1, 2, 3)]
    try:
        for s in sessions:
            greeted(s)
        with RawFrom(guarded.host, guarded.submission_port, "127.61.0.4") as extra:
            code, text = extra.reply()
            assert (code, text[:9]) == (421, b"421 4.7.0"), text
            assert extra.closed_by_server()
        # Another /24 (the suite's 127.0.0.1 among them) is not affected.
        with Raw(guarded.host, guarded.submission_port) as other:
            greeted(other)
        with RawFrom(guarded.host, guarded.submission_port, "127.62.0.4") as other:
            greeted(other)
    finally:
        for s in sessions:
            s.close()
    trip = events_named(guarded, "abuse.connections_per_net", ip="127.61.0.4")[0]
    assert (trip["client"], trip["limit"]) == ("127.61.0.0/24", 3)


def test_connection_rate_limit(guarded: RunningServer) -> None:
    for _ in range(20):
        with RawFrom(guarded.host, guarded.submission_port, "127.63.0.1") as s:
            greeted(s)
    with RawFrom(guarded.host, guarded.submission_port, "127.63.0.1") as s:
        code, text = s.reply()
        assert (code, text[:9]) == (421, b"421 4.7.0"), text
        assert s.closed_by_server()
    with RawFrom(guarded.host, guarded.submission_port, "127.63.0.2") as s:
        greeted(s)  # the neighbour has its own rate
    trip = events_named(guarded, "abuse.connection_rate", ip="127.63.0.1")[0]
    assert trip["limit"] == 20


# --------------------------------------------------------------------------- probing


def test_recipient_probing_is_slowed_then_blocked(guarded: RunningServer) -> None:
    prober = "127.64.0.1"
    with RawFrom(guarded.host, guarded.smtp_port, prober) as s:
        greeted(s)
        s.ehlo()
        assert s.cmd("MAIL FROM:<harvester@remote.test>")[0] == 250
        assert s.cmd("RCPT TO:<guess1@example.test>")[0] == 550
        assert s.cmd("RCPT TO:<guess2@example.test>")[0] == 550  # probe_slowdown reached
        # From now on every reply to this client waits, a good one too.
        started = time.monotonic()
        assert s.cmd("NOOP")[0] == 250
        assert time.monotonic() - started >= 0.3  # tarpit_step x 1 probe over the limit
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("RCPT TO:<guess3@example.test>")[0] == 550
        code, text = s.cmd("RCPT TO:<guess4@example.test>")  # probe_block reached
        assert (code, text[:9]) == (421, b"421 4.7.0"), text
        assert s.closed_by_server()
    # Blocked on new connections too; a neighbour address is not.
    with RawFrom(guarded.host, guarded.smtp_port, prober) as s:
        code, text = s.reply()
        assert (code, text[:9]) == (421, b"421 4.7.0"), text
        assert s.closed_by_server()
    with RawFrom(guarded.host, guarded.smtp_port, "127.64.0.2") as s:
        greeted(s)
        s.ehlo()
    events_named(guarded, "abuse.probe_slowdown", ip=prober)
    events_named(guarded, "abuse.probe_block", ip=prober)
    events_named(guarded, "abuse.blocked", ip=prober)
    assert events_named(guarded, "abuse.tarpit", ip=prober, reason="probing")


def test_errors_are_tarpitted_progressively(guarded: RunningServer) -> None:
    with RawFrom(guarded.host, guarded.smtp_port, "127.65.0.1") as s:
        greeted(s)
        s.ehlo()
        for n in range(1, 5):
            started = time.monotonic()
            assert s.cmd(f"BOGUS{n}")[0] == 500
            # 0.3 s a bad command so far, at most 1 s: the delay is the behaviour.
            assert time.monotonic() - started >= min(0.3 * n, 1.0) - 0.01
        assert s.cmd("NOOP")[0] == 250
    tarpits = events_named(guarded, "abuse.tarpit", 4, ip="127.65.0.1")
    assert [e["delay"] for e in tarpits] == [0.3, 0.6, 0.9, 1.0]
    assert {e["reason"] for e in tarpits} == {"errors"}


# --------------------------------------------------------------------------- slow clients


def test_slow_data_sender_is_disconnected(guarded: RunningServer) -> None:
    with RawFrom(guarded.host, guarded.smtp_port, "127.66.0.1") as s:
        greeted(s)
        s.ehlo()
        assert s.cmd("MAIL FROM:<slow@remote.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        said = trickle_until_reply(s, b"Subject: slowloris\r\n\r\n" + b"x" * 500, 0.1, 15)
        assert said.startswith(b"421 4.4.2"), said
        assert s.closed_by_server()
    trip = events_named(guarded, "abuse.slow_client", ip="127.66.0.1")[0]
    assert trip["phase"] == "data" and trip["limit"] == 256
    assert b"slowloris" not in b"".join(mbox_messages(guarded.cli("export", ALICE).stdout) or [b""])


def test_slow_command_line_is_disconnected(guarded: RunningServer) -> None:
    with RawFrom(guarded.host, guarded.smtp_port, "127.66.0.2") as s:
        greeted(s)
        s.ehlo()
        said = trickle_until_reply(s, b"MAIL FROM:<" + b"y" * 200 + b"@remote.test>\r\n", 0.1, 15)
        assert said.startswith(b"421 4.4.2"), said
    trip = events_named(guarded, "abuse.slow_client", ip="127.66.0.2")[0]
    assert trip["phase"] == "command"


# --------------------------------------------------------------------------- sending caps


def submit(server: RunningServer, recipients: list[str], subject: str) -> None:
    with smtplib.SMTP(server.host, server.submission_port, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=server.ssl_context())
        smtp.login(ALICE, PASSWORDS[ALICE])
        smtp.sendmail(ALICE, recipients, message(ALICE, ", ".join(recipients), subject))


def test_submission_caps_hold_across_restart(tmp_path: Path) -> None:
    config = {"abuse.messages_per_day": "3", "abuse.new_recipients_per_day": "2"}
    with mail_server(tmp_path, users=PASSWORDS, config=config) as srv:
        submit(srv, [BOB], "one")  # bob: first-time recipient 1
        submit(srv, [BOB, "carol@foreign.test"], "two")  # carol: 2
        # A third first-time recipient is refused at RCPT; known ones still pass.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            submit(srv, ["dave@foreign.test"], "three")
        code, text = refused.value.recipients["dave@foreign.test"]
        assert (code, text) == (451, b"4.7.1 Sending limit reached, try later")
        submit(srv, [BOB], "three")  # message 3 of 3
        with pytest.raises(smtplib.SMTPSenderRefused) as over:
            submit(srv, [BOB], "four")
        assert (over.value.smtp_code, over.value.smtp_error[:5]) == (451, b"4.7.1")
        assert srv.stop() == 0
        srv.start()
        with pytest.raises(smtplib.SMTPSenderRefused) as still:
            submit(srv, [BOB], "after restart")
        assert still.value.smtp_code == 451
        # The cap is alice's: bob still sends.
        with smtplib.SMTP(srv.host, srv.submission_port, timeout=TIMEOUT) as smtp:
            smtp.starttls(context=srv.ssl_context())
            smtp.login(BOB, PASSWORDS[BOB])
            assert smtp.sendmail(BOB, [ALICE], message(BOB, ALICE, "bob's")) == {}
        limits = {str(e["limit"]) for e in events_named(srv, "abuse.sending_limit")}
        assert limits == {"new_recipients_per_day", "messages_per_day"}
        subjects = b"".join(mbox_messages(srv.cli("export", BOB).stdout))
        assert subjects.count(b"Subject: ") == 3


# --------------------------------------------------------------------------- greylisting


def test_greylisting_tempfails_then_accepts_the_retry(tmp_path: Path) -> None:
    config = {"abuse.greylisting": "true", "abuse.greylist_delay": "1"}
    sent = message("friend@remote.test", ALICE, "greylisted")
    with mail_server(tmp_path, users=PASSWORDS, config=config) as srv:
        first = time.monotonic()
        with (
            smtplib.SMTP(srv.host, srv.smtp_port, timeout=TIMEOUT) as smtp,
            pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        ):
            smtp.sendmail("friend@remote.test", [ALICE], sent)
        code, text = refused.value.recipients[ALICE]
        assert (code, text[:5]) == (451, b"4.7.1")
        # Retry as an MTA would (here every 0.2 s) until the delay has passed.
        deadline = first + 15
        while True:
            with smtplib.SMTP(srv.host, srv.smtp_port, timeout=TIMEOUT) as smtp:
                try:
                    assert smtp.sendmail("friend@remote.test", [ALICE], sent) == {}
                    break
                except smtplib.SMTPRecipientsRefused as exc:
                    assert exc.recipients[ALICE][0] == 451
            assert time.monotonic() < deadline, "the retry was never accepted"
            time.sleep(0.2)
        assert time.monotonic() - first >= 1.0  # not before greylist_delay
        # The passed triplet is remembered: the next message goes straight in.
        with smtplib.SMTP(srv.host, srv.smtp_port, timeout=TIMEOUT) as smtp:
            assert smtp.sendmail("friend@remote.test", [ALICE], sent) == {}
        # Authenticated submission is never greylisted.
        with smtplib.SMTP(srv.host, srv.submission_port, timeout=TIMEOUT) as smtp:
            smtp.starttls(context=srv.ssl_context())
            smtp.login(BOB, PASSWORDS[BOB])
            assert smtp.sendmail(BOB, [ALICE], message(BOB, ALICE, "no grey")) == {}
        assert len(mbox_messages(srv.cli("export", ALICE).stdout)) == 3
        events_named(srv, "abuse.greylisted", ip="127.0.0.1")
        events_named(srv, "abuse.greylist_passed", ip="127.0.0.1")
