"""Bayes training end to end: a real `mailward serve`, a user on Python's imaplib over
TLS moving mail into and out of Junk and setting $Junk, and `mailward spam status`
showing what their filter learnt (polled against a deadline, never a fixed sleep)."""

from __future__ import annotations

import imaplib
import json
import time
from collections.abc import Iterator

import pytest

from mailward.testing.server import RunningServer

ALICE = "alice@example.test"
BOB = "bob@example.test"
SUBJECT = "Unrepeatable-subject-words"


def message(n: int) -> bytes:
    return (
        f"From: Promo <deals{n}@offers.example>\r\n"
        f"To: {ALICE}\r\n"
        f"Subject: {SUBJECT} {n}: cheap pills\r\n"
        f"Message-ID: <m{n}@offers.example>\r\n"
        f"\r\n"
        f"Buy cheap pills online today, offer number {n}.\r\n"
    ).encode()


@pytest.fixture
def imap(server: RunningServer, accounts: dict[str, str]) -> Iterator[imaplib.IMAP4_SSL]:
    client = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=server.ssl_context())
    client.login(ALICE, accounts[ALICE])
    for n in range(4):
        status, _ = client.append("INBOX", None, None, message(n))
        assert status == "OK"
    status, _ = client.select("INBOX")
    assert status == "OK"
    yield client
    client.logout()


def status_of(server: RunningServer, address: str) -> dict[str, object]:
    out = server.cli("spam", "status", address, "--json").stdout
    result: dict[str, object] = json.loads(out)
    return result


def wait_for_counts(
    server: RunningServer, address: str, spam: int, ham: int, timeout: float = 20.0
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(server, address)
        if (status["spam"], status["ham"]) == (spam, ham):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {spam} spam, {ham} ham; got {status}")
        time.sleep(0.1)


def uids_in(client: imaplib.IMAP4_SSL, mailbox: str) -> list[bytes]:
    status, _ = client.select(mailbox)
    assert status == "OK"
    status, data = client.uid("SEARCH", "ALL")
    assert status == "OK"
    return data[0].split()


def test_junk_moves_and_keywords_train_the_users_filter(
    server: RunningServer, imap: imaplib.IMAP4_SSL
) -> None:
    # Appending into INBOX trained nothing.
    assert status_of(server, ALICE) == {
        "address": ALICE,
        "spam": 0,
        "ham": 0,
        "min_trained": 10,
        "enabled": True,
        "active": False,
    }

    # The user moves three messages into Junk: spam.
    status, _ = imap.uid("MOVE", "1:3", "Junk")
    assert status == "OK"
    wait_for_counts(server, ALICE, 3, 0)

    # One of them was not spam after all: back to INBOX, retrained as ham (moved).
    junk = uids_in(imap, "Junk")
    assert len(junk) == 3
    status, _ = imap.uid("MOVE", junk[0].decode(), "INBOX")
    assert status == "OK"
    wait_for_counts(server, ALICE, 2, 1)

    # Deleting spam (Junk -> Trash) is not calling it ham.
    status, _ = imap.uid("MOVE", junk[1].decode(), "Trash")
    assert status == "OK"

    # Thunderbird's "mark as junk" on the fourth message, still in INBOX: spam.
    inbox = uids_in(imap, "INBOX")
    status, _ = imap.uid("STORE", inbox[0].decode(), "+FLAGS", "($Junk)")
    assert status == "OK"
    wait_for_counts(server, ALICE, 3, 1)

    # Bob's filter learnt nothing from Alice.
    assert (status_of(server, BOB)["spam"], status_of(server, BOB)["ham"]) == (0, 0)

    events = server.wait_for_events("spam.trained")
    trained = [e for e in events if e["event"] == "spam.trained"]
    assert {e["kind"] for e in trained} == {"spam", "ham"}
    assert sum(int(str(e["count"])) for e in trained if e["kind"] == "spam") == 4
    assert all(e["account_id"] == trained[0]["account_id"] for e in trained)
    log = server.log_path.read_text()
    assert SUBJECT not in log and "pills" not in log  # counts and classes, never content


@pytest.mark.server_config({"spam.bayes": "false"})
def test_no_training_when_bayes_is_off(server: RunningServer, imap: imaplib.IMAP4_SSL) -> None:
    status, _ = imap.uid("MOVE", "1:2", "Junk")
    assert status == "OK"
    # The move is answered at once; give the server a command round trip and look.
    assert imap.noop()[0] == "OK"
    status_now = status_of(server, ALICE)
    assert (status_now["spam"], status_now["ham"], status_now["enabled"]) == (0, 0, False)
    text = server.cli("spam", "status", ALICE).stdout.decode()
    assert "off (spam.bayes = false)" in text
    assert not [e for e in server.log_events() if e.get("event") == "spam.trained"]
