"""DSN messages (queue.dsn, RFC 3464), the retry schedule (queue.schedule) and the
message as it leaves (queue.worker.outgoing_message / needs_smtputf8)."""

from __future__ import annotations

import email
import email.policy

import pytest

from mailward.queue.dsn import RecipientReport, build_dsn
from mailward.queue.schedule import RetrySchedule
from mailward.queue.worker import needs_smtputf8, outgoing_message

ORIGINAL = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from c ([192.0.2.1])\r\n\tby mx; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\nTo: bob@remote.test\r\nSubject: hello\r\n"
    b"Message-ID: <m1@example.org>\r\n\r\nsecret body text\r\n"
)


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def test_failure_dsn_structure() -> None:
    dsn = build_dsn(
        reporting_mta="mail.example.org",
        original_sender="alice@example.org",
        arrival=1_700_000_000.0,
        now=1_700_000_100.0,
        reports=[
            RecipientReport(
                "bob@remote.test",
                "failed",
                "5.1.1",
                "550 5.1.1 no such user\x1b",
                "mx.remote.test",
                1_700_000_050.0,
            )
        ],
        original=ORIGINAL,
    )
    assert dsn.isascii() and b"\r\n" in dsn and b"\n" not in dsn.replace(b"\r\n", b"")
    msg = parse(dsn)
    assert msg["To"].addresses[0].addr_spec == "alice@example.org"
    assert msg["From"].startswith("Mail Delivery System <MAILER-DAEMON@mail.example.org>")
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text, status, headers = msg.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "bob@remote.test" in text.get_content()
    assert status.get_content_type() == "message/delivery-status"
    fields = status.as_bytes().decode()
    for expected in (
        "Reporting-MTA: dns; mail.example.org",
        "Final-Recipient: rfc822; bob@remote.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.remote.test",
        "Diagnostic-Code: smtp; 550 5.1.1 no such user?",
        "Arrival-Date:",
        "Last-Attempt-Date:",
    ):
        assert expected in fields
    assert headers.get_content_type() == "text/rfc822-headers"
    part = headers.as_bytes()
    assert b"Subject: hello" in part and b"Message-ID: <m1@example.org>" in part
    assert b"secret body text" not in dsn  # headers only
    assert b"Return-Path" not in part


def test_delay_dsn() -> None:
    dsn = build_dsn(
        reporting_mta="mx",
        original_sender="alice@example.org",
        arrival=1_700_000_000.0,
        now=1_700_014_400.0,
        reports=[
            RecipientReport(
                "bob@remote.test", "delayed", "4.4.1", "timeout", will_retry_until=1_700_432_000.0
            )
        ],
        original=ORIGINAL,
    )
    assert b"Subject: Delayed Mail" in dsn
    assert b"Action: delayed" in dsn and b"Will-Retry-Until:" in dsn


def test_utf8_addresses_use_global_types() -> None:
    dsn = build_dsn(
        reporting_mta="mx",
        original_sender="ålice@example.org",
        arrival=0.0,
        now=1.0,
        reports=[RecipientReport("bøb@remote.test", "failed", "5.1.1")],
        original=ORIGINAL.replace(b"hello", "héllo".encode()),
    )
    assert b"message/global-delivery-status" in dsn
    assert "Final-Recipient: utf-8; bøb@remote.test".encode() in dsn
    assert b"message/global-headers" in dsn
    assert b"Subject: h??llo" in dsn  # 8-bit octets of the original never pass


def test_no_dsn_for_the_null_sender() -> None:
    with pytest.raises(ValueError):
        build_dsn(
            reporting_mta="mx",
            original_sender="",
            arrival=0,
            now=0,
            reports=[RecipientReport("b@x.test", "failed", "5.1.1")],
            original=b"",
        )


def test_schedule() -> None:
    s = RetrySchedule.of(["5m", "15m", "1h"], max_age=86400.0, delay_warning=3600.0)
    assert [s.delay(n) for n in (1, 2, 3, 4, 9)] == [300, 900, 3600, 3600, 3600]
    assert s.next_attempt(created=0, attempts=1, now=100) == 400
    assert s.next_attempt(created=0, attempts=5, now=85000) == 86400  # never past max age
    assert not s.expired(0, 86399) and s.expired(0, 86400)
    assert not s.warn_now(0, 3599, False)
    assert s.warn_now(0, 3600, False)
    assert not s.warn_now(0, 3600, True)  # once
    assert not RetrySchedule.of(["1m"], 100.0, 0.0).warn_now(0, 50, False)  # 0: never
    with pytest.raises(ValueError):
        RetrySchedule((), 1.0, 0.0)


def test_outgoing_message_strips_return_path_and_fixes_line_endings() -> None:
    out = outgoing_message(ORIGINAL)
    assert out.startswith(b"Received: from c")
    assert b"Return-Path" not in out
    folded = b"Return-Path:\r\n <a@b>\r\nX-A: 1\r\nreturn-path: <c@d>\r\n\r\nReturn-Path: body\r\n"
    assert outgoing_message(folded) == b"X-A: 1\r\n\r\nReturn-Path: body\r\n"
    assert (
        outgoing_message(b"A: 1\nB: 2\n\nbody\rmore\n") == b"A: 1\r\nB: 2\r\n\r\nbody\r\nmore\r\n"
    )
    assert outgoing_message(b"A: 1\r\n\r\nx") == b"A: 1\r\n\r\nx"


def test_needs_smtputf8() -> None:
    plain = b"Subject: hi\r\n\r\nbody \xc3\xa9\r\n"
    assert not needs_smtputf8("a@b.test", ["c@d.test"], plain)  # 8-bit body: 8BITMIME only
    assert needs_smtputf8("å@b.test", ["c@d.test"], plain)
    assert needs_smtputf8("a@b.test", ["ç@d.test"], plain)
    assert needs_smtputf8("a@b.test", ["c@d.test"], "Subject: é\r\n\r\n".encode())
    assert not needs_smtputf8("a@b.test", ["c@d.test"], b"Subject: \xe9\r\n\r\n")  # Latin-1
