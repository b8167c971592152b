"""Spam scoring end to end: a real `mailward serve` whose resolver is a DNS server on
loopback (`TestDns`) serving a test DNSBL zone and the clients' reverse DNS, and a
real rspamd (Debian's, offline) as the extra scorer. Clients connect from
127.0.0.1 (clean, with matching reverse DNS) or from 127.0.0.2, the address every
DNSBL lists as its test entry (RFC 5782 5). Results are read back with
`mailward export`.
"""

from __future__ import annotations

import random
import smtplib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.testing.dns_server import TestDns
from mailward.testing.rspamd import TestRspamd, gtube, rspamd_available
from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import mbox_messages

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "correct-horse-battery-staple-42"
TIMEOUT = 30.0
LISTED = "127.0.0.2"


@pytest.fixture(scope="module")
def dns() -> Iterator[TestDns]:
    with TestDns() as server:
        server.add_zone("bl.test")
        server.add("2.0.0.127.bl.test", "A", "127.0.0.2")
        server.add_zone("127.in-addr.arpa")
        server.add("1.0.0.127.in-addr.arpa", "PTR", "mail.client.test.")
        server.add_zone("client.test")
        server.add("mail.client.test", "A", "127.0.0.1")
        server.add("client.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        yield server


@pytest.fixture(scope="module")
def rspamd(dns: TestDns) -> Iterator[TestRspamd]:
    assert rspamd_available(), "rspamd is not installed: run scripts/install-test-deps"
    with TestRspamd(dns=dns.address) as server:
        yield server


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, dns: TestDns, rspamd: TestRspamd
) -> Iterator[RunningServer]:
    with mail_server(
        tmp_path_factory.mktemp("spam"),
        users={ALICE: PASSWORD, BOB: PASSWORD},
        config={
            "dns.resolvers": f'["{dns.address}"]',
            "dns.timeout": "3",
            "spam.dnsbl": '["bl.test=6"]',
            "spam.rspamd": rspamd.url,
            "spam.bayes_min_trained": "5",
            "dns.cache_max_ttl": "300",  # the zone does not change: the product's cache
        },
    ) as server:
        yield server


def message(
    marker: str, body: str = "", *, extra: str = "", author: str = "Carol <carol@client.test>"
) -> bytes:
    return (
        f"{extra}From: {author}\r\nTo: {ALICE}\r\n"
        f"Subject: spam test {marker}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{marker}@client.test>\r\n\r\n"
        f"{body or 'Hello Alice, the meeting moved to Thursday.'}\r\n"
    ).encode()


def send(srv: RunningServer, msg: bytes, *, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP(
        srv.host, srv.smtp_port, "mail.client.test", TIMEOUT, source_address=(source, 0)
    ) as smtp:
        smtp.sendmail("carol@client.test", [ALICE], msg)


def stored(srv: RunningServer, marker: str, mailbox: str = "INBOX") -> list[bytes]:
    out = srv.cli("export", ALICE, "--mailbox", mailbox).stdout
    return [m for m in mbox_messages(out) if marker.encode() in m]


def spam_fields(msg: bytes) -> dict[str, str]:
    head = msg.split(b"\r\n\r\n", 1)[0].decode().replace("\r\n\t", " ").replace("\r\n ", " ")
    out: dict[str, str] = {}
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower().startswith("x-spam-"):
            assert name.lower() not in out, f"{name} twice in {head}"
            out[name.lower()] = value.strip()
    return out


def test_clean_mail_goes_to_the_inbox_with_a_no_status(srv: RunningServer) -> None:
    marker = uuid.uuid4().hex
    send(srv, message(marker))
    [msg] = stored(srv, marker)
    fields = spam_fields(msg)
    assert fields["x-spam-status"].startswith("No, score=")
    assert "RSPAMD=" in fields["x-spam-status"]  # rspamd was asked and counted
    assert "RBL_" not in fields["x-spam-status"] and "RDNS_" not in fields["x-spam-status"]
    assert "x-spam-flag" not in fields
    assert stored(srv, marker, "Junk") == []


def test_a_blocklisted_client_lands_in_junk(srv: RunningServer, dns: TestDns) -> None:
    marker = uuid.uuid4().hex
    send(srv, message(marker), source=LISTED)
    assert stored(srv, marker) == []
    [msg] = stored(srv, marker, "Junk")
    fields = spam_fields(msg)
    assert fields["x-spam-flag"] == "YES"
    assert "RBL_BL_TEST=6.0" in fields["x-spam-status"]
    assert fields["x-spam-status"].startswith("Yes, score=")
    assert dns.count("2.0.0.127.bl.test", "A") >= 1
    events = srv.wait_for_events("spam.scored")
    assert any(e.get("action") == "junk" for e in events if e.get("event") == "spam.scored")


def test_forged_spam_fields_are_removed(srv: RunningServer) -> None:
    marker = uuid.uuid4().hex
    forged = "X-Spam-Status: No, score=-100\r\nX-Spam-Flag: NO\r\nX-Spam-Score: -100\r\n"
    send(srv, message(marker, extra=forged), source=LISTED)
    [msg] = stored(srv, marker, "Junk")
    fields = spam_fields(msg)  # asserts each field appears once
    assert fields["x-spam-flag"] == "YES" and "-100" not in fields["x-spam-score"]


def test_gtube_is_refused_and_nothing_is_stored(srv: RunningServer) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(srv, message(marker, "buy now " + gtube().decode()))
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    assert stored(srv, marker) == [] and stored(srv, marker, "Junk") == []


def test_our_users_cannot_send_gtube(srv: RunningServer) -> None:
    context = srv.ssl_context()
    with smtplib.SMTP_SSL(srv.host, srv.submissions_port, timeout=TIMEOUT, context=context) as s:
        s.login(ALICE, PASSWORD)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            s.sendmail(ALICE, ["dave@remote.test"], message("x", gtube().decode(), author=ALICE))
        assert refused.value.smtp_code == 550
        s.sendmail(ALICE, [BOB], message(uuid.uuid4().hex, author=ALICE))  # ordinary mail goes
    assert srv.wait_for_events("spam.outbound_refused")


def test_rspamd_down_mail_still_flows(
    tmp_path_factory: pytest.TempPathFactory, dns: TestDns
) -> None:
    with mail_server(
        tmp_path_factory.mktemp("spam-down"),
        users={ALICE: PASSWORD},
        config={
            "dns.resolvers": f'["{dns.address}"]',
            "spam.rspamd": "http://127.0.0.1:9",  # nothing listens on the discard port
        },
    ) as server:
        marker = uuid.uuid4().hex
        send(server, message(marker))
        [msg] = stored(server, marker)
        assert "RSPAMD" not in spam_fields(msg)["x-spam-status"]
        assert server.wait_for_events("spam.rspamd_failed")


SPAM_WORDS = [
    "cheap",
    "pills",
    "prize",
    "winner",
    "crypto",
    "casino",
    "loan",
    "approved",
    "urgent",
    "claim",
    "bonus",
    "offer",
]
HAM_WORDS = [
    "meeting",
    "agenda",
    "budget",
    "report",
    "minutes",
    "project",
    "review",
    "draft",
    "schedule",
    "lunch",
]


def corpus(words: list[str], seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(40)) for _ in range(count)]


def test_each_users_bayes_filter_scores_their_mail(srv: RunningServer, tmp_path: Path) -> None:
    files: dict[str, list[str]] = {"--spam": [], "--ham": []}
    for flag, words, seed in (("--spam", SPAM_WORDS, 1), ("--ham", HAM_WORDS, 2)):
        for i, text in enumerate(corpus(words, seed, 6)):
            path = tmp_path / f"{flag[2:]}{i}.eml"
            path.write_bytes(message(f"{flag}{i}", text))
            files[flag].append(str(path))
    for flag, paths in files.items():
        srv.cli("spam", "train", ALICE, flag, *paths)
    status = srv.cli("spam", "status", ALICE).stdout.decode()
    assert "6" in status, status
    spam_marker, ham_marker = uuid.uuid4().hex, uuid.uuid4().hex
    send(srv, message(spam_marker, corpus(SPAM_WORDS, 3, 1)[0]))
    send(srv, message(ham_marker, corpus(HAM_WORDS, 4, 1)[0]))
    [spam] = stored(srv, spam_marker) + stored(srv, spam_marker, "Junk")
    [ham] = stored(srv, ham_marker)
    assert "BAYES_99=" in spam_fields(spam)["x-spam-status"]
    assert "BAYES_00=" in spam_fields(ham)["x-spam-status"]
    # Bob's filter is untrained: the same spam to him carries no Bayes verdict.
    marker = uuid.uuid4().hex
    with smtplib.SMTP(srv.host, srv.smtp_port, "mail.client.test", TIMEOUT) as smtp:
        smtp.sendmail("carol@client.test", [BOB], message(marker, corpus(SPAM_WORDS, 3, 1)[0]))
    out = srv.cli("export", BOB).stdout
    [to_bob] = [m for m in mbox_messages(out) if marker.encode() in m]
    assert "BAYES" not in spam_fields(to_bob)["x-spam-status"]
