"""Outbound delivery end to end: real `mailward serve` processes.

The sender (`example.test`, on 127.0.0.1 at a free port offset) relays what alice
submits; the MX of `remote.test` is a second `mailward serve` on port 25 of a loopback
address of its own (or a scripted `Sink` there), found through a real DNS server on
loopback (TestDns) named in both servers' `dns.resolvers`. Shown here: delivery with
STARTTLS and a DKIM signature the receiver's DNS verifies; a 5xx turned into a DSN in
the sender's INBOX; the queue CLI on a deferred entry; SIGKILL of the sender in the
middle of its queue, after which every message arrives exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import dkim as dkimpy
import pytest

from mailward.crypto.dkim import load_domain_keys
from mailward.testing.dns_server import TestDns
from mailward.testing.server import RunningServer, free_loopback_address, mail_server
from mailward.testing.smtp_raw import mbox_messages
from tests.queue.smtp_sink import Accepted, Script, Sink, nothing_listening

T = TypeVar("T")
ALICE = "alice@example.test"
BOB = "bob@remote.test"
PASSWORD = "correct-horse-battery-staple-42"
DEADLINE = 60.0


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = DEADLINE) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def dns() -> Iterator[TestDns]:
    with TestDns() as server:
        yield server


def sender_server(
    tmp_path: Path, dns: TestDns, **config: str
) -> contextlib.AbstractContextManager[RunningServer]:
    settings = {
        "dns.resolvers": dns.address,
        "delivery.retry_schedule": "2s",
        **config,
    }
    return mail_server(tmp_path, name="sender", users={ALICE: PASSWORD}, config=settings)


def publish_dkim(dns: TestDns, srv: RunningServer, domain: str = "example.test") -> None:
    for key in load_domain_keys(srv.data_dir, domain):
        dns.add(f"{key.selector}._domainkey.{domain}", "TXT", key.public_record)


def submit(srv: RunningServer, to: list[str], subject: str, body: str = "Hello.") -> bytes:
    message = (
        f"From: Alice <{ALICE}>\r\nTo: {', '.join(to)}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@example.test>\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()
    with smtplib.SMTP(srv.host, srv.submission_port, "client.test", 30) as smtp:
        smtp.starttls(context=srv.ssl_context())
        smtp.login(ALICE, PASSWORD)
        assert smtp.sendmail(ALICE, to, message) == {}
    return message


def exported(srv: RunningServer, address: str) -> list[bytes]:
    return mbox_messages(srv.cli("export", address).stdout)


def queue_json(srv: RunningServer) -> list[dict[str, object]]:
    data = json.loads(srv.cli("queue", "list", "--json").stdout)
    assert isinstance(data, list)
    return data


def dkim_verifies(message: bytes, dns: TestDns) -> int:
    resolver = dns.sync_resolver()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode(), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    head = message.split(b"\r\n\r\n", 1)[0].lower()
    signatures = head.count(b"\r\ndkim-signature:") + head.startswith(b"dkim-signature:")
    d = dkimpy.DKIM(message)
    for index in range(signatures):
        assert d.verify(idx=index, dnsfunc=dnsfunc), f"DKIM signature {index} does not verify"
    return signatures


def test_delivery_to_another_mailward_with_starttls_and_dkim(tmp_path: Path, dns: TestDns) -> None:
    mx = free_loopback_address()
    dns.add("remote.test", "MX", "10 mx.remote.test.")
    dns.add("mx.remote.test", "A", mx)
    receiver_cm = mail_server(
        tmp_path,
        name="receiver",
        domain="remote.test",
        host=mx,
        port_offset=0,
        users={BOB: "Quartz-lantern-meadow-ferry-97"},
        config={"dns.resolvers": dns.address},
    )
    with receiver_cm as receiver, sender_server(tmp_path, dns) as sender:
        publish_dkim(dns, sender)
        sent = submit(sender, [BOB], "across the wire")
        (got,) = wait_for("delivery", lambda: exported(receiver, BOB))
        # The receiver's own Return-Path; ours was stripped before sending.
        assert got.startswith(f"Return-Path: <{ALICE}>\r\n".encode())
        assert got.count(b"Return-Path:") == 1
        assert b"using TLSv1." in got  # the receiver's Received: notes the STARTTLS
        assert got.endswith(sent.split(b"\r\n\r\n", 1)[1])
        # Both signatures (Ed25519, RSA) verify with the keys published in DNS; the
        # receiver's trace fields added in front are not signed.
        assert dkim_verifies(got, dns) == 2
        attempts = [e for e in sender.log_events() if e.get("event") == "queue.attempt"]
        assert attempts[-1]["outcome"] == "delivered"
        assert attempts[-1]["mx"] == "mx.remote.test" and attempts[-1]["ip"] == mx
        assert str(attempts[-1]["tls"]).startswith("TLSv1.")
        assert queue_json(sender) == []


def test_unknown_recipient_bounces_to_the_senders_inbox(tmp_path: Path, dns: TestDns) -> None:
    mx = free_loopback_address()
    dns.add("remote.test", "MX", "10 mx.remote.test.")
    dns.add("mx.remote.test", "A", mx)
    receiver_cm = mail_server(
        tmp_path,
        name="receiver",
        domain="remote.test",
        host=mx,
        port_offset=0,
        users={BOB: "Quartz-lantern-meadow-ferry-97"},
        config={"dns.resolvers": dns.address},
    )
    with receiver_cm as receiver, sender_server(tmp_path, dns) as sender:
        publish_dkim(dns, sender)  # (also makes example.test a zone: DMARC lookups answer)
        submit(sender, ["nobody@remote.test", BOB], "half of it bounces")
        (dsn,) = wait_for("the DSN", lambda: exported(sender, ALICE))
        assert b"Content-Type: multipart/report; report-type=delivery-status" in dsn
        assert b"Final-Recipient: rfc822; nobody@remote.test" in dsn
        assert b"Action: failed" in dsn and b"Status: 5.1.1" in dsn
        assert b"Diagnostic-Code: smtp; 550 5.1.1" in dsn
        assert b"Subject: half of it bounces" in dsn  # the original's headers
        assert BOB.encode() not in dsn.split(b"message/delivery-status")[1].split(b"--")[0]
        assert len(wait_for("bob's copy", lambda: exported(receiver, BOB))) == 1
        assert queue_json(sender) == []


def test_queue_cli_on_a_deferred_entry(tmp_path: Path, dns: TestDns) -> None:
    with nothing_listening() as dead:
        dns.add("dead.test", "MX", "10 mx.dead.test.")
        dns.add("mx.dead.test", "A", dead)
        with sender_server(tmp_path, dns, **{"delivery.retry_schedule": "1h"}) as sender:
            publish_dkim(dns, sender)
            submit(sender, ["someone@dead.test"], "waiting")
            (entry,) = wait_for(
                "a deferral",
                lambda: [e for e in queue_json(sender) if e["state"] == "deferred"],
            )
            assert entry["attempts"] == 1 and "cannot connect" in str(entry["last_error"])
            entry_id = str(entry["id"])
            listing = sender.cli("queue", "list").stdout.decode()
            assert f"{entry_id}  deferred" in listing and "<someone@dead.test>" in listing
            shown = sender.cli("queue", "show", entry_id).stdout.decode()
            assert "Subject: waiting" in shown and "Hello." not in shown
            assert f"sender:       <{ALICE}>" in shown
            sender.cli("queue", "retry", entry_id)
            wait_for(
                "the retry",
                lambda: [e for e in queue_json(sender) if e["attempts"] == 2],
            )
            missing = sender.cli("queue", "show", "99999", check=False)
            assert missing.returncode == 2 and b"no queue entry 99999" in missing.stderr
            bad = sender.cli("queue", "retry", "x1", check=False)
            assert bad.returncode == 2
            wait_for(
                "no delivery in flight",
                lambda: all(e["state"] != "delivering" for e in queue_json(sender)),
            )
            out = sender.cli("queue", "delete", entry_id).stdout.decode()
            assert "no DSN was sent" in out
            assert queue_json(sender) == []
            assert sender.cli("queue", "list").stdout == b"the outbound queue is empty\n"
            assert exported(sender, ALICE) == []


def test_sigkill_mid_queue_every_message_arrives_exactly_once(tmp_path: Path, dns: TestDns) -> None:
    """The receiver kills the sender (SIGKILL) when message KILL_AT has been sent whole
    but not yet answered, so it is not delivered; every earlier one was answered 250
    and must not come again; after a restart every message arrives exactly once."""
    total, kill_at = 12, 6
    hold = threading.Event()
    state: dict[str, object] = {"ended": 0, "killed": False}
    sender: RunningServer | None = None

    def end(msg: Accepted) -> str | None:
        state["ended"] = int(str(state["ended"])) + 1
        if state["ended"] == kill_at and not state["killed"]:
            assert sender is not None and sender.process is not None
            sender.process.kill()  # SIGKILL, while this message waits for its 250
            state["killed"] = True
            return None
        return "250 2.0.0 queued"

    with Sink(script=Script(hold=hold, end=end)) as sink:
        dns.add("remote.test", "MX", "10 mx.remote.test.")
        dns.add("mx.remote.test", "A", sink.address)
        with sender_server(tmp_path, dns) as started:
            sender = started
            publish_dkim(dns, sender)
            markers = [f"m{n}-{uuid.uuid4().hex[:8]}" for n in range(total)]
            for n, marker in enumerate(markers):
                submit(sender, [f"r{n}@remote.test"], marker, body=f"marker {marker}")
            wait_for("every message queued", lambda: len(queue_json(sender)) == total)
            hold.set()  # the MX answers now
            assert sender.process is not None
            sender.process.wait(timeout=DEADLINE)
            assert state["killed"]
            delivered_before = len(sink.messages)
            assert delivered_before == kill_at - 1
            sender.start()
            wait_for("the rest", lambda: len(sink.messages) >= total)
            wait_for("an empty queue", lambda: queue_json(sender) == [])
            seen = [m.data.split(b"marker ")[1].split(b"\r\n")[0].decode() for m in sink.messages]
            assert sorted(seen) == sorted(markers), "lost or duplicated messages"
            recovered = [e for e in sender.log_events() if e.get("event") == "queue.recovered"]
            assert recovered and int(str(recovered[0]["entries"])) >= 1


# --------------------------------------------------------------------------- Postfix

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
NOBODY_UID = 65534  # owns the Maildir virtual(8) writes

POSTFIX_MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@contextlib.contextmanager
def private_postfix(address: str, relay_to: str | None = None) -> Iterator[Path]:
    """A Postfix instance of its own (config, queue, Maildir under `root`) receiving
    for remote.test on `address`:25 with STARTTLS; nobody@ is refused. Yields the
    Maildir every accepted recipient's mail lands in. With `relay_to` ("ip:port") it
    also relays mail from 127.0.0.1 for other domains there, from `address`, with
    opportunistic STARTTLS (a smarthost set-up: Postfix in front of mailward)."""
    from mailward.crypto import tls as mw_tls

    if os.geteuid() != 0 or not os.path.exists(POSTFIX):
        pytest.skip("a private Postfix needs root and the postfix package")
    # Postfix's daemons (user postfix) must traverse every parent: not under pytest's
    # private (0700) temporary directories.
    top = Path(tempfile.mkdtemp(prefix="mailward-postfix-"))
    top.chmod(0o755)
    root = top / "pf"
    etc, spool, data, vmail = (root / d for d in ("etc", "spool", "data", "vmail"))
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    for d in (etc, spool, data, vmail):
        d.mkdir(mode=0o755)
    shutil.chown(data, user="postfix")
    os.chown(vmail, NOBODY_UID, NOBODY_UID)
    mw_tls.generate_self_signed(["mx.remote.test"], etc / "cert.pem", etc / "key.pem")
    (etc / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = all
inet_protocols = ipv4
myhostname = mx.remote.test
mydestination =
mynetworks = 127.0.0.1/32
alias_maps =
alias_database =
maillog_file_prefixes = {root}
maillog_file = {root}/postfix.log
smtpd_tls_security_level = may
smtpd_tls_cert_file = {etc}/cert.pem
smtpd_tls_key_file = {etc}/key.pem
smtpd_tls_received_header = yes
smtpd_recipient_restrictions =
    check_recipient_access inline:{{ {{ nobody@remote.test = REJECT no such user here }} }},
    permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = remote.test
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = static:remote.test/all/
virtual_uid_maps = static:{NOBODY_UID}
virtual_gid_maps = static:{NOBODY_UID}
"""
    )
    master_cf = POSTFIX_MASTER_CF.format(listen=f"{address}:25")
    if relay_to is not None:
        host, _, port = relay_to.rpartition(":")
        with (etc / "main.cf").open("a") as main_cf:
            main_cf.write(
                f"relayhost = [{host}]:{port}\n"
                f"smtp_bind_address = {address}\n"
                "smtp_tls_security_level = may\n"
                "smtp_tls_loglevel = 1\n"
            )
        master_cf += "smtp      unix  -       -       n       -       -       smtp\n"
        master_cf += "relay     unix  -       -       n       -       -       smtp\n"
    (etc / "master.cf").write_text(master_cf)

    def postfix(*args: str) -> None:
        proc = subprocess.run(
            [POSTFIX, "-c", str(etc), *args], capture_output=True, text=True, timeout=120
        )
        log = (root / "postfix.log").read_text() if (root / "postfix.log").exists() else ""
        assert proc.returncode == 0, f"postfix {args}: {proc.stderr}\n{log[-3000:]}"

    try:
        postfix("check")
        postfix("start")
        try:
            wait_for("Postfix to listen", lambda: _accepts(address, 25), 30)
            yield vmail / "remote.test" / "all"
        finally:
            postfix("stop")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def maildir_messages(maildir: Path) -> list[bytes]:
    files = [p for sub in ("new", "cur") for p in sorted((maildir / sub).glob("*"))]
    return [p.read_bytes() for p in files] if maildir.exists() else []


@pytest.mark.interop
def test_delivery_to_postfix(tmp_path: Path, dns: TestDns) -> None:
    mx = free_loopback_address((25,))
    dns.add("remote.test", "MX", "10 mx.remote.test.")
    dns.add("mx.remote.test", "A", mx)
    with (
        private_postfix(mx) as maildir,
        sender_server(tmp_path, dns) as sender,
    ):
        publish_dkim(dns, sender)
        submit(sender, [BOB, "nobody@remote.test"], "to postfix", body="line\r\n.dot\r\nend")
        (got,) = wait_for("Postfix delivery", lambda: maildir_messages(maildir))
        got = got.replace(b"\n", b"\r\n")  # Maildir files have LF line ends
        head = got.split(b"\r\n\r\n", 1)[0]
        assert head.count(b"Return-Path:") == 1  # virtual(8)'s, not ours
        assert b"(using TLSv1." in head  # Postfix's Received: notes the STARTTLS
        assert got.endswith(b"\r\n\r\nline\r\n.dot\r\nend\r\n")
        assert dkim_verifies(got, dns) == 2
        (dsn,) = wait_for("the DSN", lambda: exported(sender, ALICE))
        assert b"Final-Recipient: rfc822; nobody@remote.test" in dsn
        assert b"Status: 5.7.1" in dsn or b"Status: 5.1.1" in dsn
        assert b"no such user here" in dsn
        assert queue_json(sender) == []


def _submit_as(srv: RunningServer, sender: str, password: str, to: str, subject: str) -> bytes:
    message = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@{sender.split('@')[1]}>\r\n"
        f"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nHello from {sender}.\r\n"
    ).encode()
    with smtplib.SMTP(srv.host, srv.submission_port, "client.test", 30) as smtp:
        smtp.starttls(context=srv.ssl_context())
        smtp.login(sender, password)
        assert smtp.sendmail(sender, [to], message) == {}
    return message


def _results_field(message: bytes) -> str:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    fields = head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
    (results,) = [f for f in fields if f.lower().startswith("authentication-results:")]
    return results


def test_two_mailwards_exchange_mail_both_ways_authenticated(tmp_path: Path, dns: TestDns) -> None:
    """Each instance sends from its own address (listen.address), signs with its own
    DKIM keys, and the other verifies SPF, DKIM and DMARC (p=reject) as pass."""
    bob_password = "Quartz-lantern-meadow-ferry-97"
    a_ip, b_ip = free_loopback_address(), free_loopback_address()
    for domain, ip in (("example.test", a_ip), ("remote.test", b_ip)):
        dns.add(domain, "MX", f"10 mx.{domain}.")
        dns.add(f"mx.{domain}", "A", ip)
        dns.add(domain, "TXT", f"v=spf1 ip4:{ip} -all")
        dns.add(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")
    settings = {"dns.resolvers": dns.address, "delivery.retry_schedule": "2s"}
    a_cm = mail_server(
        tmp_path, name="a", host=a_ip, port_offset=0, users={ALICE: PASSWORD}, config=settings
    )
    b_cm = mail_server(
        tmp_path,
        name="b",
        domain="remote.test",
        host=b_ip,
        port_offset=0,
        users={BOB: bob_password},
        config=settings,
    )
    with a_cm as a, b_cm as b:
        publish_dkim(dns, a, "example.test")
        publish_dkim(dns, b, "remote.test")
        _submit_as(a, ALICE, PASSWORD, BOB, "a to b")
        _submit_as(b, BOB, bob_password, ALICE, "b to a")
        (at_b,) = wait_for("a's mail at b", lambda: exported(b, BOB))
        inbox_a = wait_for(
            "b's mail at a", lambda: [m for m in exported(a, ALICE) if b"b to a" in m]
        )
        for got, peer_ip, domain in (
            (at_b, a_ip, "example.test"),
            (inbox_a[0], b_ip, "remote.test"),
        ):
            results = _results_field(got)
            assert "spf=pass" in results and f"matched ip4:{peer_ip}" in results, results
            assert results.count("dkim=pass") == 2, results  # Ed25519 and RSA
            assert "dmarc=pass (p=reject" in results and f"header.from={domain}" in results


@pytest.mark.interop
def test_postfix_relays_to_mailward(tmp_path: Path, dns: TestDns) -> None:
    """Postfix in front (a smarthost) relays to mailward's MX port with STARTTLS; the
    message is stored with its body intact and mailward's checks see Postfix's
    address: SPF passes for the relay domain that publishes it."""
    relay_ip = free_loopback_address((25,))
    dns.add("relay.test", "TXT", f"v=spf1 ip4:{relay_ip} -all")
    with (
        sender_server(tmp_path, dns) as receiver,
        private_postfix(relay_ip, relay_to=f"{receiver.host}:{receiver.smtp_port}"),
    ):
        message = (
            b"From: <news@relay.test>\r\nTo: <alice@example.test>\r\n"
            b"Subject: via postfix\r\nMessage-ID: <pf1@relay.test>\r\n\r\n"
            b"relayed line\r\n.dot line\r\n"
        )
        with smtplib.SMTP(relay_ip, 25, "client.test", 30) as smtp:
            assert smtp.sendmail("news@relay.test", [ALICE], message) == {}
        (got,) = wait_for("the relayed message", lambda: exported(receiver, ALICE))
    assert got.endswith(b"\r\n\r\nrelayed line\r\n.dot line\r\n")
    results = _results_field(got)
    assert f"spf=pass (relay.test: matched ip4:{relay_ip})" in results, results
    head = got.split(b"\r\n\r\n", 1)[0]
    assert b"using TLSv1." in head  # mailward's Received: notes Postfix's STARTTLS
