"""The gateway's content checks in a real `mailward serve`: clamd (a real one, with a
test signature database) scanning mail on the MX port and on submission; infected mail
refused or held in the quarantine by policy; the scanner down gives 451 and loses
nothing."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.testing.clamd import TestClamd, eicar
from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import mbox_messages

ALICE = "alice@example.test"
PASSWORD = "correct-horse-battery-staple-42"


@pytest.fixture
def clamd() -> Iterator[TestClamd]:
    with TestClamd() as scanner:
        yield scanner


def infected() -> bytes:
    attachment = base64.encodebytes(eicar()).replace(b"\n", b"\r\n")
    return (
        b"From: <mallory@remote.test>\r\nTo: <alice@example.test>\r\nSubject: invoice\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--b1--\r\n"
    )


CLEAN = b"From: <bob@remote.test>\r\nTo: <alice@example.test>\r\nSubject: hi\r\n\r\nhello\r\n"


def send(srv: RunningServer, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP(srv.host, srv.smtp_port, "client.test", 30) as smtp:
        smtp.ehlo()
        smtp.mail("sender@remote.test")
        smtp.rcpt(ALICE)
        return smtp.data(message)


def inbox(srv: RunningServer) -> list[bytes]:
    return mbox_messages(srv.cli("export", ALICE).stdout)


def test_infected_mail_is_refused_and_clean_mail_delivered(
    tmp_path: Path, clamd: TestClamd
) -> None:
    with mail_server(
        tmp_path, users={ALICE: PASSWORD}, config={"malware.clamd": clamd.address}
    ) as srv:
        code, text = send(srv, infected())
        assert code == 554 and b"5.7.1" in text
        assert clamd.signature.encode() not in text  # the virus name stays in the log
        assert send(srv, CLEAN)[0] == 250
        (stored,) = inbox(srv)
        assert stored.endswith(CLEAN)
        found = [e for e in srv.log_events() if e.get("event") == "malware.found"]
        assert found


def test_quarantine_policy_holds_infected_mail_for_review(tmp_path: Path, clamd: TestClamd) -> None:
    config = {"malware.clamd": clamd.address, "malware.action": "quarantine"}
    with mail_server(tmp_path, users={ALICE: PASSWORD}, config=config) as srv:
        assert send(srv, infected())[0] == 250
        listed = srv.cli("quarantine", "list").stdout.decode()
        assert "malware" in listed and clamd.signature in listed
        entry_id = listed.split()[0]
        # Alice is told, not given the message: a notice naming the entry, no virus name.
        (notice,) = inbox(srv)
        assert b"Subject: A message to you was held for review" in notice
        assert f"Quarantine id: {entry_id}".encode() in notice
        assert b"Auto-Submitted: auto-generated" in notice
        assert clamd.signature.encode() not in notice
        srv.cli("quarantine", "delete", entry_id)
        assert "the quarantine is empty" in srv.cli("quarantine", "list").stdout.decode()


def test_scanner_down_is_a_temporary_failure(tmp_path: Path) -> None:
    with TestClamd() as scanner:
        address = scanner.address
    # The scanner is gone: nothing unscanned slips through, and nothing is lost.
    with mail_server(tmp_path, users={ALICE: PASSWORD}, config={"malware.clamd": address}) as srv:
        code, text = send(srv, CLEAN)
        assert code == 451 and b"4.7.1" in text
        assert inbox(srv) == []


def _with_attachment(name: str, payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"From: <bob@remote.test>\r\nTo: <alice@example.test>\r\nSubject: files\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b1\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n"
    )


def test_attachment_policy_refuses_executables_by_name_and_by_content(tmp_path: Path) -> None:
    # A DOS header whose e_lfanew (offset 0x3C) points at a PE signature.
    program = b"MZ" + b"\x00" * 58 + (64).to_bytes(4, "little") + b"PE\x00\x00" + b"\x00" * 200
    with mail_server(tmp_path, users={ALICE: PASSWORD}) as srv:
        code, text = send(srv, _with_attachment("setup.exe", b"harmless bytes"))
        assert code == 554 and b"setup.exe" in text
        code, text = send(srv, _with_attachment("report.pdf", program))  # a PE named .pdf
        assert code == 554, text
        assert send(srv, _with_attachment("report.pdf", b"%PDF-1.4\r\n%%EOF\r\n"))[0] == 250
        assert len(inbox(srv)) == 1


def test_dlp_holds_outgoing_card_numbers(tmp_path: Path) -> None:
    body = (
        b"From: <alice@example.test>\r\nTo: <bob@remote.test>\r\nSubject: order\r\n\r\n"
        b"Card: 4111 1111 1111 1111, expiry 12/29\r\n"
    )
    with mail_server(tmp_path, users={ALICE: PASSWORD}) as srv:
        with smtplib.SMTP(srv.host, srv.submission_port, "client.test", 30) as smtp:
            smtp.starttls(context=srv.ssl_context())
            smtp.login(ALICE, PASSWORD)
            assert smtp.sendmail(ALICE, ["bob@remote.test"], body) == {}
        listed = srv.cli("quarantine", "list").stdout.decode()
        assert "dlp" in listed and "card-number" in listed
        assert "4111" not in listed  # rule names only, never the data
        assert srv.cli("queue", "list", "--json").stdout.strip() == b"[]"
        # Alice is told her message waits for review; Bob (remote) is told nothing.
        (notice,) = inbox(srv)
        assert b"Subject: Your message was held for review" in notice
        assert b"To: bob@remote.test" in notice and b"4111" not in notice
