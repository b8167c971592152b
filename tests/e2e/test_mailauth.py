"""Inbound authentication end to end: a real `mailward serve` whose resolver is a DNS
server on loopback (`TestDns`), mail sent with smtplib to the MX port from 127.0.0.1,
results read back with `mailward export`.

The zone: sender.test publishes SPF (127.0.0.1), Ed25519 + RSA DKIM keys and DMARC
p=reject; quarantine.test publishes p=quarantine; flaky.test's DMARC lookup fails
(SERVFAIL); fwd.test is a forwarder that ARC-seals what it passes on.
"""

from __future__ import annotations

import smtplib
import uuid
from collections.abc import Iterator

import dkim
import pytest

from mailward.crypto.dkim import DkimKey, dns_records, generate_domain_keys, sign_message
from mailward.testing.dns_server import TestDns
from mailward.testing.server import TLS_NAME, RunningServer, mail_server
from mailward.testing.smtp_raw import mbox_messages

ALICE = "alice@example.test"
PASSWORD = "correct-horse-battery-staple-42"
TIMEOUT = 15.0
AUTHSERV_ID = TLS_NAME  # the server's hostname (`init --hostname localhost`)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[DkimKey]]:
    data_dir = tmp_path_factory.mktemp("dkim-keys")
    return {
        d: generate_domain_keys(data_dir, d, selector_date="202401")
        for d in ("sender.test", "fwd.test")
    }


@pytest.fixture(scope="module")
def dns(keys: dict[str, list[DkimKey]]) -> Iterator[TestDns]:
    with TestDns() as server:
        for domain, domain_keys in keys.items():
            for name, rtype, value in dns_records(domain, f"mail.{domain}", domain_keys):
                if rtype == "TXT" and name == domain:
                    value = "v=spf1 ip4:127.0.0.1 -all"
                if name != f"_dmarc.{domain}":
                    server.add(name, rtype, value)
        server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
        server.add("_dmarc.fwd.test", "TXT", "v=DMARC1; p=none")
        server.add("_dmarc.quarantine.test", "TXT", "v=DMARC1; p=quarantine")
        server.add("_dmarc.flaky.test", "TXT", "v=DMARC1; p=reject")
        server.fail("_dmarc.flaky.test", "TXT")
        for zone in ("spoofer.test", "client.test", "localhost.test"):
            server.add_zone(zone)
        yield server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, dns: TestDns) -> Iterator[RunningServer]:
    with mail_server(
        tmp_path_factory.mktemp("mailauth"),
        users={ALICE: PASSWORD},
        config={"dns.resolvers": f'["{dns.address}"]', "dns.timeout": "3"},
    ) as server:
        yield server


def message(sender: str, marker: str, *, extra: bytes = b"") -> bytes:
    return (
        extra
        + (
            f"From: {sender}\r\nTo: {ALICE}\r\nSubject: mailauth {marker}\r\n"
            f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <{marker}@client.test>\r\n"
            f"\r\nHello from {marker}.\r\n"
        ).encode()
    )


def dkim_signed(keys: dict[str, list[DkimKey]], msg: bytes) -> bytes:
    ed, rsa = keys["sender.test"]
    return sign_message(msg, ed) + sign_message(msg, rsa) + msg


def send(srv: RunningServer, mail_from: str, msg: bytes) -> None:
    with smtplib.SMTP(srv.host, srv.smtp_port, "mail.client.test", TIMEOUT) as smtp:
        smtp.sendmail(mail_from, [ALICE], msg)


def stored(srv: RunningServer, marker: str, mailbox: str = "INBOX") -> list[bytes]:
    out = srv.cli("export", ALICE, "--mailbox", mailbox).stdout
    return [m for m in mbox_messages(out) if marker.encode() in m]


def results(stored_message: bytes) -> list[str]:
    """The unfolded Authentication-Results values of a stored message's header."""
    head = stored_message.split(b"\r\n\r\n", 1)[0].decode()
    unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ")
    prefix = "authentication-results:"
    return [
        line[len(prefix) :].strip()
        for line in unfolded.split("\r\n")
        if line.lower().startswith(prefix)
    ]


def new_marker() -> str:
    return uuid.uuid4().hex


def test_authenticated_mail_arrives_with_spf_dkim_dmarc_pass(
    srv: RunningServer, keys: dict[str, list[DkimKey]], dns: TestDns
) -> None:
    marker = new_marker()
    sent = dkim_signed(keys, message("Sender <news@sender.test>", marker))
    send(srv, "bounce@sender.test", sent)
    [msg] = stored(srv, marker)
    assert msg.endswith(sent)
    [ar] = results(msg)
    assert ar.startswith(f"{AUTHSERV_ID};"), ar
    for part in [
        "spf=pass",
        "smtp.mailfrom=bounce@sender.test",
        "dkim=pass header.d=sender.test header.s=202401e header.a=ed25519-sha256",
        "dkim=pass header.d=sender.test header.s=202401r header.a=rsa-sha256",
        "dmarc=pass (p=reject dis=none) header.from=sender.test",
        "arc=none",
    ]:
        assert part in ar, ar
    events = srv.wait_for_events("mailauth.result")
    assert any(e.get("event") == "mailauth.result" and e.get("action") == "accept" for e in events)
    # The server asked our DNS server (not the system's) for the key and the policy.
    assert dns.count("_dmarc.sender.test", "TXT") >= 1
    assert dns.count("202401e._domainkey.sender.test", "TXT") >= 1


def test_spoofed_from_of_a_reject_domain_is_refused(srv: RunningServer) -> None:
    marker = new_marker()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(srv, "anyone@spoofer.test", message("ceo@sender.test", marker))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1"), refused.value.smtp_error
    assert stored(srv, marker) == [] and stored(srv, marker, "Junk") == []


def test_quarantine_policy_lands_in_junk(srv: RunningServer) -> None:
    marker = new_marker()
    send(srv, "anyone@spoofer.test", message("boss@quarantine.test", marker))
    assert stored(srv, marker) == []
    [msg] = stored(srv, marker, "Junk")
    [ar] = results(msg)
    assert "dmarc=fail (p=quarantine dis=quarantine) header.from=quarantine.test" in ar


def test_dmarc_servfail_is_a_temporary_failure(
    srv: RunningServer, keys: dict[str, list[DkimKey]]
) -> None:
    marker = new_marker()
    with pytest.raises(smtplib.SMTPDataError) as deferred:
        send(srv, "bounce@sender.test", dkim_signed(keys, message("x@flaky.test", marker)))
    assert deferred.value.smtp_code == 451
    assert deferred.value.smtp_error.startswith(b"4.4.3"), deferred.value.smtp_error
    assert stored(srv, marker) == []


def test_forwarded_message_with_a_valid_arc_chain_is_arc_pass(
    srv: RunningServer, keys: dict[str, list[DkimKey]]
) -> None:
    marker = new_marker()
    original = dkim_signed(keys, message("Sender <news@sender.test>", marker))
    # The forwarder checked the original, recorded it, and sealed the result.
    checked = (
        b"Authentication-Results: mail.fwd.test; dkim=pass header.d=sender.test;"
        b" dmarc=pass header.from=sender.test\r\n" + original
    )
    key = keys["fwd.test"][1]
    seal = dkim.arc_sign(
        checked,
        key.selector.encode(),
        b"fwd.test",
        key.private_key_path.read_bytes(),
        b"mail.fwd.test",
    )
    forwarded = b"".join(seal) + checked
    send(srv, "forwarder@fwd.test", forwarded)
    [msg] = stored(srv, marker)
    ours = [r for r in results(msg) if r.startswith(f"{AUTHSERV_ID};")]
    assert len(ours) == 1, results(msg)
    assert "arc=pass" in ours[0], ours[0]
    # The forwarder's own field is someone else's verdict: it stays.
    assert any(r.startswith("mail.fwd.test;") for r in results(msg))


def test_forged_results_with_our_authserv_id_are_removed(
    srv: RunningServer, keys: dict[str, list[DkimKey]]
) -> None:
    marker = new_marker()
    forged = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=bank.test\r\n"
    sent = dkim_signed(keys, message("news@sender.test", marker))
    send(srv, "bounce@sender.test", forged.encode() + sent)
    [msg] = stored(srv, marker)
    assert b"bank.test" not in msg
    [ar] = results(msg)
    assert "dmarc=pass" in ar
    assert msg.endswith(sent)


def test_submitted_mail_gets_no_results_and_loses_forgeries(srv: RunningServer) -> None:
    marker = new_marker()
    forged = f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=bank.test\r\n"
    sent = message(ALICE, marker)
    with smtplib.SMTP(srv.host, srv.submission_port, "mail.client.test", TIMEOUT) as smtp:
        smtp.starttls(context=srv.ssl_context())
        smtp.login(ALICE, PASSWORD)
        smtp.sendmail(ALICE, [ALICE], forged.encode() + sent)
    [msg] = stored(srv, marker)
    assert results(msg) == [] and msg.endswith(sent)
