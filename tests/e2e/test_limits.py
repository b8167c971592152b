"""Limits and session hygiene, end to end: connections per IP, phase timeouts,
login lockout over the wire, CHUNKING, pipelining, bounded memory for huge messages,
and the structured log of a session. A real `mailward serve` on loopback."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer
from mailward.testing.smtp_raw import (
    Raw,
    auth_plain,
    dot_stuff,
    mbox_messages,
    message,
    split_trace,
)

ALICE = "alice@example.test"
ALICE_PASSWORD = "correct-horse-battery-staple-42"


def stored_bodies(server: RunningServer, address: str = ALICE) -> list[bytes]:
    return [split_trace(m)[1] for m in mbox_messages(server.cli("export", address).stdout)]


@pytest.mark.server_config({"limits.connections_per_ip": "3"})
def test_connections_per_ip_limit(server: RunningServer) -> None:
    sessions = [Raw(server.host, server.smtp_port) for _ in range(3)]
    try:
        for s in sessions:
            assert s.reply()[0] == 220
        with Raw(server.host, server.smtp_port) as extra:
            code, text = extra.reply()
            assert (code, text[4:9]) == (421, b"4.7.0")
            assert extra.closed_by_server()
        sessions.pop().close()
        # A slot freed is a slot usable again (poll: the server notices the close).
        for _ in range(50):
            with Raw(server.host, server.smtp_port) as again:
                if again.reply()[0] == 220:
                    break
        else:
            raise AssertionError("a freed connection slot was never reusable")
    finally:
        for s in sessions:
            s.close()
    server.wait_for_events("limit.connections")


@pytest.mark.server_config({"timeouts.command": "1"})
def test_idle_client_is_closed_with_421(server: RunningServer) -> None:
    with Raw(server.host, server.smtp_port) as s:
        assert s.reply()[0] == 220
        s.ehlo()
        code, text = s.reply()  # sent unprompted when the timer fires
        assert (code, text[4:9]) == (421, b"4.4.2")
        assert s.closed_by_server()


@pytest.mark.server_config({"timeouts.data_block": "1"})
def test_stalled_data_is_not_stored(server: RunningServer) -> None:
    with Raw(server.host, server.smtp_port) as s:
        assert s.reply()[0] == 220
        s.ehlo()
        assert s.cmd("MAIL FROM:<x@remote.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        s.send(b"Subject: half a message\r\n\r\nand then nothing")
        assert s.reply()[0] == 421
        assert s.closed_by_server()
    assert stored_bodies(server) == []


@pytest.mark.server_config({"auth.lockout_failures": "3", "auth.failures_before_delay": "100"})
def test_login_lockout_refuses_even_the_right_password(server: RunningServer) -> None:
    with smtplib.SMTP_SSL(
        server.host, server.submissions_port, context=server.ssl_context(), timeout=15
    ) as smtp:
        smtp.ehlo("client.test")
        for i in range(3):
            code, _ = smtp.docmd(*auth_plain(ALICE, f"wrong-guess-{i}").split(" ", 1))
            assert code == 535
        code, text = smtp.docmd(*auth_plain(ALICE, ALICE_PASSWORD).split(" ", 1))
        assert (code, text[:5]) == (454, b"4.7.0")
    server.wait_for_events("auth.locked_out")
    log = server.log_path.read_text()
    assert "wrong-guess" not in log and ALICE_PASSWORD not in log
    server.wait_for_events("auth.locked_out")


def test_bdat_chunks_store_byte_exact(server: RunningServer) -> None:
    body = message("x@remote.test", ALICE, "chunked") + b"line with a lone dot next\r\n.\r\nend\r\n"
    first, second = body[:50], body[50:]
    with Raw(server.host, server.smtp_port) as s:
        assert s.reply()[0] == 220
        assert b"CHUNKING" in s.ehlo()[1]
        assert s.cmd("MAIL FROM:<x@remote.test>")[0] == 250
        assert s.cmd(f"RCPT TO:<{ALICE}>")[0] == 250
        s.send(f"BDAT {len(first)}\r\n".encode() + first)
        assert s.reply()[0] == 250
        s.send(f"BDAT {len(second)} LAST\r\n".encode() + second)
        assert s.reply()[0] == 250
    assert stored_bodies(server) == [body]


def test_pipelined_transaction_answers_in_order(server: RunningServer) -> None:
    body = message("x@remote.test", ALICE, "pipelined")
    with Raw(server.host, server.smtp_port) as s:
        assert s.reply()[0] == 220
        s.ehlo()
        s.send(
            b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<nobody@example.test>\r\n"
            + f"RCPT TO:<{ALICE}>\r\nDATA\r\n".encode()
        )
        assert [s.reply()[0] for _ in range(4)] == [250, 550, 250, 354]
        s.send(dot_stuff(body) + b".\r\nQUIT\r\n")
        assert [s.reply()[0] for _ in range(2)] == [250, 221]
    assert stored_bodies(server) == [body]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_huge_message_is_streamed_not_buffered(server: RunningServer) -> None:
    """A 40 MB message raises the server's peak memory by far less than its size."""
    assert server.process is not None
    warm = message("x@remote.test", ALICE, "warm-up")
    with smtplib.SMTP(server.host, server.smtp_port, timeout=60) as smtp:
        smtp.sendmail("x@remote.test", [ALICE], warm)
    before = _peak_rss_kib(server.process.pid)
    line = b"x" * 998 + b"\r\n"
    big = message("x@remote.test", ALICE, "big", body=line * 40_000)
    with smtplib.SMTP(server.host, server.smtp_port, timeout=120) as smtp:
        smtp.sendmail("x@remote.test", [ALICE], big)
    growth_kib = _peak_rss_kib(server.process.pid) - before
    assert growth_kib < 16 * 1024, f"peak memory grew by {growth_kib} KiB for a 40 MB message"
    assert stored_bodies(server)[-1] == big


def test_session_is_logged_as_json_events_without_secrets(server: RunningServer) -> None:
    body = message(ALICE, "someone@foreign.test", "logged", body=b"SECRET-BODY-TEXT\r\n")
    with smtplib.SMTP(server.host, server.submission_port, timeout=15) as smtp:
        smtp.starttls(context=server.ssl_context())
        smtp.login(ALICE, ALICE_PASSWORD)
        smtp.sendmail(ALICE, ["someone@foreign.test", ALICE], body)
    with (
        smtplib.SMTP(server.host, server.smtp_port, timeout=15) as smtp,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        smtp.sendmail("x@remote.test", ["victim@foreign.test"], body)
    events = server.wait_for_events(
        "smtp.connect",
        "tls.established",
        "auth.success",
        "smtp.mail",
        "smtp.rcpt",
        "message.stored",
        "smtp.relay.refused",
        "smtp.end",
    )
    text = server.log_path.read_text()
    assert "SECRET-BODY-TEXT" not in text and ALICE_PASSWORD not in text
    stored = next(e for e in events if e["event"] == "message.stored")
    assert stored["queued_recipients"] == 1 and stored["local_recipients"] == 1
    tls = next(e for e in events if e["event"] == "tls.established")
    assert str(tls["version"]).startswith("TLSv1.")
