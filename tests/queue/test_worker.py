"""The delivery worker in process (queue.worker), against scripted SMTP receivers on
127.x.y.z:25 (`Sink`), a real DNS server on loopback (TestDns), a real SqliteStore and
a fake clock, so retry schedules of minutes and days run in milliseconds."""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import dkim as dkimpy
import pytest

from mailward.crypto.dkim import generate_domain_keys
from mailward.logs import EventLog
from mailward.queue.mta_sts import MtaStsCache
from mailward.queue.schedule import RetrySchedule
from mailward.queue.transport import Timeouts
from mailward.queue.worker import QueueWorker, WorkerSettings
from mailward.store.api import Delivery, QueueState
from mailward.store.sqlite import SqliteStore
from mailward.testing.dns_server import TestDns
from tests.queue.smtp_sink import Script, Sink, nothing_listening, sink_tls

T = TypeVar("T")
LOCAL = "example.org"
ALICE = f"alice@{LOCAL}"
START = 1_750_000_000.0
SHORT = Timeouts(
    connect=5, greeting=5, command=5, data_start=5, data_block=5, data_end=5, tls_handshake=5
)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    store: SqliteStore
    dns: TestDns
    clock: FakeClock
    logbuf: io.StringIO
    data_dir: Path
    alice: int
    tmp: Path

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.logbuf.getvalue().splitlines():
            record = json.loads(line)
            if record["event"] == name:
                out.append(record)
        return out

    def worker(
        self, *, sts: MtaStsCache | None = None, resolver: Any = None, **changes: Any
    ) -> QueueWorker:
        settings = WorkerSettings(
            hostname="mail.example.org",
            data_dir=self.data_dir,
            schedule=RetrySchedule.of(["5m", "15m"], max_age=86400.0, delay_warning=3600.0),
            workers=4,
            timeouts=SHORT,
        )
        settings = replace(settings, **changes)
        return QueueWorker(
            self.store,
            resolver if resolver is not None else self.dns.resolver(timeout=2),
            EventLog(self.logbuf, "debug"),
            settings,
            clock=self.clock,
            node="test-node",
            sts=sts,
        )

    async def queue(
        self,
        *recipients: str,
        sender: str = ALICE,
        body: bytes = b"Hello.\r\n.dot line\r\n",
        headers: bytes = b"",
    ) -> list[int]:
        content = (
            f"Return-Path: <{sender}>\r\n".encode()
            + b"Received: from client ([192.0.2.1])\r\n\tby mail.example.org with ESMTPSA id 1;"
            b" Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            + f"From: Alice <{ALICE}>\r\nTo: {', '.join(recipients)}\r\n".encode()
            + b"Subject: test message\r\nMessage-ID: <t1@example.org>\r\n"
            + b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
            + headers
            + b"\r\n"
            + body
        )
        receipt = await self.store.deliver(
            Delivery(
                spool=self.store.new_spool(),
                sender=sender,
                local=[],
                outbound=list(recipients),
                content=content,
            )
        )
        # Queue times are the real clock's; the fake one starts just after them.
        self.clock.now = max(self.clock.now, time.time() + 1)
        return list(receipt.queued)

    async def inbox(self) -> list[bytes]:
        infos = await self.store.list_messages(self.alice, "INBOX")
        return [await self.store.read_message(self.alice, "INBOX", i.uid) for i in infos]

    def mx(self, domain: str, *addresses: str, pref: int = 10) -> None:
        for n, address in enumerate(addresses):
            host = f"mx{pref}-{n}.{domain}"
            self.dns.add(domain, "MX", f"{pref + n} {host}.")
            self.dns.add(host, "A", address)


@asynccontextmanager
async def environment(tmp_path: Path) -> AsyncIterator[Env]:
    data_dir = tmp_path / "data"
    store = await SqliteStore.open(data_dir)
    await store.add_domain(LOCAL)
    alice = await store.add_account(ALICE, "$argon2id$fake")
    keys = generate_domain_keys(data_dir, LOCAL)
    with TestDns() as dns:
        for key in keys:
            dns.add(f"{key.selector}._domainkey.{LOCAL}", "TXT", key.public_record)
        try:
            yield Env(store, dns, FakeClock(), io.StringIO(), data_dir, alice.id, tmp_path)
        finally:
            await store.close()


def run(tmp_path: Path, body: Callable[[Env], Awaitable[T]]) -> T:
    async def main() -> T:
        async with environment(tmp_path) as env:
            return await body(env)

    return asyncio.run(main())


@pytest.fixture
def tls_sink(tmp_path: Path) -> Iterator[Sink]:
    context, _cert = sink_tls(tmp_path / "sink", ["mx.sink.test"])
    with Sink(tls_context=context) as sink:
        yield sink


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def dsn_fields(dsn: bytes) -> str:
    status = [p for p in parse(dsn).walk() if p.get_content_type().endswith("delivery-status")]
    assert len(status) == 1
    return status[0].as_bytes().decode()


# --- delivery -------------------------------------------------------------------------------


def test_delivers_with_starttls_signed_without_return_path(tmp_path: Path, tls_sink: Sink) -> None:
    async def go(env: Env) -> None:
        env.mx("remote.test", tls_sink.address)
        extra = (
            b"Cc: dave@remote.test\r\nReply-To: alice@example.org\r\n"
            b"In-Reply-To: <p@remote.test>\r\nReferences: <p@remote.test>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        )
        await env.queue("bob@remote.test", "carol@remote.test", headers=extra)
        worker = env.worker()
        assert await worker.run_once() == 2
        assert await env.store.list_queue() == []
        (msg,) = tls_sink.messages
        assert msg.tls and msg.sender == ALICE
        assert msg.recipients == ["bob@remote.test", "carol@remote.test"]  # one transaction
        assert "SIZE=" in msg.mail_params and "SMTPUTF8" not in msg.mail_params
        assert b"Return-Path" not in msg.data
        assert b"\r\n.dot line\r\n" in msg.data  # dot-stuffing undone by the sink
        # Two DKIM signatures, Ed25519 and RSA, that verify against the published keys.
        sigs = [line for line in msg.data.split(b"\r\n") if line.startswith(b"DKIM-Signature")]
        assert len(sigs) == 2
        resolver = env.dns.sync_resolver()

        def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
            answer = resolver.resolve(name.decode(), "TXT")
            return b"".join(b"".join(r.strings) for r in answer)

        data = msg.data
        for index in range(2):
            assert dkimpy.DKIM(data).verify(idx=index, dnsfunc=dnsfunc)
        header_list = [x.replace(b"\r\n", b"").replace(b" ", b"") for x in _signature_fields(data)]
        for h in header_list:
            assert b"c=relaxed/relaxed" in h
            signed = h.split(b"h=")[1].split(b";")[0].lower().split(b":")
            assert signed.count(b"from") == 2  # oversigned
            assert {
                b"to",
                b"cc",
                b"subject",
                b"date",
                b"message-id",
                b"mime-version",
                b"content-type",
                b"reply-to",
                b"in-reply-to",
                b"references",
            } <= set(signed)
            assert b"received" not in signed and b"return-path" not in signed
        (attempt, *_) = env.events("queue.attempt")
        assert attempt["outcome"] == "delivered" and attempt["code"] == 250
        assert attempt["mx"] == "mx10-0.remote.test" and attempt["tls"].startswith("TLSv1.")
        assert attempt["policy"] == "opportunistic" and attempt["domain"] == "remote.test"
        assert "body" not in json.dumps(env.events("queue.attempt"))

    run(tmp_path, go)


def _signature_fields(data: bytes) -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return [f for f in fields if f.lower().startswith(b"dkim-signature:")]


def test_one_connection_for_several_messages(tmp_path: Path, tls_sink: Sink) -> None:
    async def go(env: Env) -> None:
        env.mx("remote.test", tls_sink.address)
        for n in range(3):
            await env.queue(f"r{n}@remote.test")
        await env.worker().run_once()
        assert len(tls_sink.messages) == 3
        (session,) = tls_sink.sessions
        verbs = [c.split(" ")[0].upper() for c in session.commands]
        assert verbs.count("STARTTLS") == 1 and verbs.count("RSET") == 2
        assert verbs[-1] == "QUIT"

    run(tmp_path, go)


def test_temporary_failure_then_success_is_delivered_once(tmp_path: Path) -> None:
    tries: list[str] = []

    def rcpt(address: str) -> str:
        tries.append(address)
        return "451 4.7.1 greylisted, come back later" if len(tries) == 1 else "250 2.1.5 OK"

    with Sink(script=Script(rcpt=rcpt)) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            (qid,) = await env.queue("bob@remote.test")
            worker = env.worker()
            await worker.run_once()
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED and entry.attempts == 1
            assert entry.next_attempt == env.clock.now + 300
            assert "451 4.7.1 greylisted" in entry.last_error
            assert await worker.run_once() == 0  # not due yet
            env.clock.now += 300
            assert await worker.run_once() == 1
            assert await env.store.list_queue() == []
            assert len(sink.messages) == 1
            assert await env.inbox() == []  # no DSN for a success
            deferred = [e for e in env.events("queue.attempt") if e["outcome"] == "deferred"]
            assert deferred[0]["id"] == qid and deferred[0]["next_attempt"] == entry.next_attempt

        run(tmp_path, go)


def test_permanent_failure_sends_one_dsn_to_the_local_sender(tmp_path: Path) -> None:
    script = Script(rcpt=lambda r: "550 5.1.1 no such user" if r.startswith("x") else "250 OK")
    with Sink(script=script) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("xavier@remote.test", "bob@remote.test", "xena@remote.test")
            await env.worker().run_once()
            assert await env.store.list_queue() == []
            (msg,) = sink.messages
            assert msg.recipients == ["bob@remote.test"]
            (dsn,) = await env.inbox()
            assert dsn.startswith(b"Return-Path: <>\r\n")
            fields = dsn_fields(dsn)
            assert fields.count("Action: failed") == 2
            assert "Final-Recipient: rfc822; xavier@remote.test" in fields
            assert "Final-Recipient: rfc822; xena@remote.test" in fields
            assert "bob@remote.test" not in fields
            assert "Status: 5.1.1" in fields
            assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in fields
            assert "Remote-MTA: dns; mx10-0.remote.test" in fields
            assert b"Subject: test message" in dsn

        run(tmp_path, go)


def test_no_dsn_for_a_null_sender(tmp_path: Path) -> None:
    with Sink(script=Script(rcpt=lambda r: "550 5.1.1 no")) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test", sender="")
            await env.worker().run_once()
            assert await env.store.list_queue() == []
            assert await env.inbox() == []
            assert sink.messages == []

        run(tmp_path, go)


def test_dsn_to_a_remote_sender_is_queued_from_the_null_sender(tmp_path: Path) -> None:
    with Sink(
        script=Script(rcpt=lambda r: "550 5.1.1 no" if r.startswith("b") else "250 OK")
    ) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test", sender="someone@remote.test")
            worker = env.worker()
            await worker.run_once()
            (dsn_entry,) = await env.store.list_queue()
            assert dsn_entry.sender == "" and dsn_entry.recipient == "someone@remote.test"
            await worker.run_once()
            (dsn,) = sink.messages
            assert dsn.sender == "" and dsn.recipients == ["someone@remote.test"]
            assert b"multipart/report" in dsn.data

        run(tmp_path, go)


def test_mixed_replies_to_data_and_message(tmp_path: Path) -> None:
    replies = iter(["554 5.7.1 content refused", "452 4.3.1 out of space"])
    with Sink(script=Script(end=lambda m: next(replies))) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            await env.queue("carol@remote.test")
            await env.worker().run_once()
            (left,) = await env.store.list_queue()
            assert left.recipient == "carol@remote.test" and left.state is QueueState.DEFERRED
            (dsn,) = await env.inbox()
            assert "Status: 5.7.1" in dsn_fields(dsn)
            assert sink.messages == []

        run(tmp_path, go)


def test_null_mx_fails_at_once(tmp_path: Path) -> None:
    async def go(env: Env) -> None:
        env.dns.add("nomail.test", "MX", "0 .")
        await env.queue("bob@nomail.test")
        await env.worker().run_once()
        assert await env.store.list_queue() == []
        (dsn,) = await env.inbox()
        fields = dsn_fields(dsn)
        assert "Status: 5.1.10" in fields and "Action: failed" in fields
        assert "null MX" in fields

    run(tmp_path, go)


def test_expiry_after_max_age_fails_with_a_dsn(tmp_path: Path) -> None:
    with nothing_listening() as dead:

        async def go(env: Env) -> None:
            env.mx("remote.test", dead)
            await env.queue("bob@remote.test")
            worker = env.worker(
                schedule=RetrySchedule.of(["1h", "6h"], max_age=10 * 3600.0, delay_warning=0.0)
            )
            attempts = 0
            while await env.store.list_queue():
                env.clock.now = (await env.store.list_queue())[0].next_attempt
                await worker.run_once()
                attempts += 1
                assert attempts < 10
            # 1h, +6h, then the last one at 10h exactly: 4 attempts in all.
            assert attempts == 4
            (dsn,) = await env.inbox()
            fields = dsn_fields(dsn)
            assert "Action: failed" in fields and "Status: 4.4.7" in fields
            assert "delivery time expired" in fields

        run(tmp_path, go)


def test_delay_warning_is_sent_once(tmp_path: Path) -> None:
    with nothing_listening() as dead:

        async def go(env: Env) -> None:
            env.mx("remote.test", dead)
            await env.queue("bob@remote.test")
            worker = env.worker(
                schedule=RetrySchedule.of(["30m"], max_age=86400.0, delay_warning=3600.0)
            )
            for _ in range(5):  # 0, 30m, 60m (warning), 90m, 120m
                await worker.run_once()
                env.clock.now = (await env.store.list_queue())[0].next_attempt
            (entry,) = await env.store.list_queue()
            assert entry.warned and entry.state is QueueState.DEFERRED
            (warning,) = await env.inbox()
            assert b"Subject: Delayed Mail" in warning
            fields = dsn_fields(warning)
            assert "Action: delayed" in fields and "Will-Retry-Until:" in fields

        run(tmp_path, go)


def test_next_mx_when_the_first_refuses(tmp_path: Path) -> None:
    with nothing_listening() as dead, Sink() as sink:

        async def go(env: Env) -> None:
            env.dns.add("remote.test", "MX", "10 primary.remote.test.", "20 backup.remote.test.")
            env.dns.add("primary.remote.test", "A", dead)
            env.dns.add("backup.remote.test", "A", sink.address)
            await env.queue("bob@remote.test")
            await env.worker().run_once()
            assert len(sink.messages) == 1
            assert env.events("queue.connect_failed")[0]["mx"] == "primary.remote.test"

        run(tmp_path, go)


def test_implicit_mx(tmp_path: Path) -> None:
    with Sink() as sink:

        async def go(env: Env) -> None:
            env.dns.add("plain.test", "A", sink.address)
            await env.queue("bob@plain.test")
            await env.worker().run_once()
            assert len(sink.messages) == 1

        run(tmp_path, go)


def test_dropped_in_data_is_retried_and_delivered_once(tmp_path: Path) -> None:
    script = Script(drop_in_data_after=200)
    with Sink(script=script) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test", body=b"x" * 5000 + b"\r\n")
            worker = env.worker()
            await worker.run_once()
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED
            assert sink.messages == []
            script.drop_in_data_after = None
            env.clock.now = entry.next_attempt
            await worker.run_once()
            assert len(sink.messages) == 1 and await env.store.list_queue() == []

        run(tmp_path, go)


def test_no_reply_after_the_message_defers(tmp_path: Path) -> None:
    script = Script(end=lambda m: None)  # hangs up instead of answering the "."
    with Sink(script=script) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            await env.worker().run_once()
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED
            assert len(sink.sessions) == 1  # not sent again at once elsewhere

        run(tmp_path, go)


def test_smtputf8_needed_but_not_offered_fails(tmp_path: Path) -> None:
    script = Script(extensions=["PIPELINING", "8BITMIME"])
    with Sink(script=script) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bøb@remote.test")
            await env.worker().run_once()
            (dsn,) = await env.inbox()
            assert "Status: 5.6.7" in dsn_fields(dsn)
            assert sink.messages == []

        run(tmp_path, go)


def test_smtputf8_and_8bitmime_when_needed(tmp_path: Path) -> None:
    with Sink() as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bøb@remote.test", body="grüße\r\n".encode())
            await env.worker().run_once()
            (msg,) = sink.messages
            assert "SMTPUTF8" in msg.mail_params and "BODY=8BITMIME" in msg.mail_params

        run(tmp_path, go)


def test_message_over_the_size_limit_fails(tmp_path: Path) -> None:
    with Sink(script=Script(extensions=["SIZE 1000"])) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test", body=b"y" * 2000 + b"\r\n")
            await env.worker().run_once()
            (dsn,) = await env.inbox()
            assert "Status: 5.3.4" in dsn_fields(dsn)
            assert sink.messages == []

        run(tmp_path, go)


def test_required_tls_defers_without_starttls_and_verifies_when_offered(tmp_path: Path) -> None:
    context, cert = sink_tls(tmp_path / "sink", ["mx10-0.remote.test"])
    with Sink(tls_context=context, script=Script(starttls=False)) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            worker = env.worker(require_tls=frozenset({"remote.test"}), tls_cafile=cert)
            await worker.run_once()
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED and "STARTTLS" in entry.last_error
            assert sink.messages == []  # never in cleartext
            sink.script.starttls = True
            env.clock.now = entry.next_attempt
            await worker.run_once()
            (msg,) = sink.messages
            assert msg.tls
            assert env.events("queue.attempt")[-1]["policy"] == "required"

        run(tmp_path, go)


def test_required_tls_defers_on_a_certificate_for_another_name(tmp_path: Path) -> None:
    context, cert = sink_tls(tmp_path / "sink", ["someone-else.test"])
    with Sink(tls_context=context) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            worker = env.worker(require_tls=frozenset({"remote.test"}), tls_cafile=cert)
            await worker.run_once()
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED
            assert sink.messages == []
            assert entry.last_error  # the TLS failure, for the administrator

        run(tmp_path, go)


def test_opportunistic_tls_falls_back_to_cleartext_on_a_broken_handshake(tmp_path: Path) -> None:
    broken = _BrokenTls()
    with Sink(tls_context=broken.context(tmp_path)) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            await env.worker().run_once()
            (msg,) = sink.messages
            assert not msg.tls
            assert env.events("queue.tls_fallback")

        run(tmp_path, go)


class _BrokenTls:
    """A server context only TLS 1.0 clients could talk to: our client (TLS 1.2+)
    fails the handshake."""

    def context(self, tmp_path: Path) -> Any:
        import ssl

        ctx, _ = sink_tls(tmp_path / "broken", ["mx.sink.test"])
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA")  # CBC only: our client refuses them
        return ctx


def test_smarthost_implicit_tls_with_auth(tmp_path: Path) -> None:
    from mailward.testing.server import free_loopback_address

    address = free_loopback_address((465,))
    context, cert = sink_tls(tmp_path / "relay", [address])
    script = Script(auth={"relay-user": "relay pass"})
    with Sink(address, port=465, tls_context=context, implicit_tls=True, script=script) as sink:

        async def go(env: Env) -> None:
            await env.queue("bob@anywhere.test", "carol@elsewhere.test")
            worker = env.worker(
                smarthost=(address, 465),
                smarthost_user="relay-user",
                smarthost_password="relay pass",
                tls_cafile=cert,
            )
            await worker.run_once()
            msgs = sink.messages
            assert sorted(r for m in msgs for r in m.recipients) == [
                "bob@anywhere.test",
                "carol@elsewhere.test",
            ]
            assert all(m.tls and m.authenticated == "relay-user" for m in msgs)
            assert "relay pass" not in env.logbuf.getvalue()
            assert env.dns.queries == [] or all(
                "anywhere" not in q[0] for q in env.dns.queries
            )  # no MX lookups

        run(tmp_path, go)


def test_smarthost_refuses_unverified_tls(tmp_path: Path) -> None:
    from mailward.testing.server import free_loopback_address

    address = free_loopback_address((587,))
    context, _cert = sink_tls(tmp_path / "relay", [address])
    script = Script(auth={"u": "p"})
    with Sink(address, port=587, tls_context=context, script=script) as sink:

        async def go(env: Env) -> None:
            await env.queue("bob@anywhere.test")
            worker = env.worker(
                smarthost=(address, 587), smarthost_user="u", smarthost_password="p"
            )
            await worker.run_once()  # the sink's certificate is not trusted
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED
            assert sink.messages == []
            assert all("AUTH" not in c for s in sink.sessions for c in s.commands)

        run(tmp_path, go)


# --- claims ----------------------------------------------------------------------------------


def test_a_restart_takes_back_the_dead_process_claims(tmp_path: Path) -> None:
    with Sink() as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            now = env.clock.now
            await env.store.claim_queue("test-node/dead-process", now, now + 3600, 10)
            await env.store.claim_queue("other-node/alive", now, now + 3600, 10)
            worker = env.worker()
            assert await worker.run_once() == 0  # held by the dead process
            await worker.start()
            await worker.stop(grace=5)
            (entry,) = await env.store.list_queue()
            assert entry.state is not QueueState.DELIVERING or entry.owner == ""
            assert await env.worker().run_once() == 1
            assert len(sink.messages) == 1

        run(tmp_path, go)


def test_stop_gives_back_unfinished_entries(tmp_path: Path) -> None:
    hold = threading.Event()
    with Sink(script=Script(hold=hold)) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            await env.queue("bob@remote.test")
            worker = env.worker(poll_interval=0.05)
            await worker.start()
            for _ in range(500):
                if sink.sessions:
                    break
                await asyncio.sleep(0.01)
            (held,) = await env.store.list_queue()
            assert held.state is QueueState.DELIVERING and held.owner == worker.owner
            await worker.stop(grace=0.2)  # the greeting never comes: cut short
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.QUEUED and entry.owner == ""
            hold.set()
            assert await env.worker().run_once() == 1
            assert len(sink.messages) == 1

        run(tmp_path, go)


# --- MTA-STS and DANE: a policy failure defers, never downgrades ---------------------------

STS_POLICY = "version: STSv1\r\nmode: enforce\r\nmx: *.remote.test\r\nmax_age: 86400\r\n"


def test_mta_sts_enforce_defers_on_an_untrusted_certificate(tmp_path: Path) -> None:
    context, cert = sink_tls(tmp_path / "sink", ["mx10-0.remote.test"])
    with Sink(tls_context=context) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            env.dns.add("_mta-sts.remote.test", "TXT", "v=STSv1; id=20240101")

            async def fetch(domain: str) -> str:
                assert domain == "remote.test"
                return STS_POLICY

            sts = MtaStsCache(env.tmp / "sts", fetch=fetch, clock=env.clock)
            await env.queue("bob@remote.test")
            await env.worker(sts=sts).run_once()  # the self-signed certificate: not valid
            (entry,) = await env.store.list_queue()
            assert entry.state is QueueState.DEFERRED and entry.last_error
            assert sink.messages == []  # neither in clear nor over unverified TLS
            assert env.events("queue.attempt")[-1]["policy"] == "mta-sts"
            env.clock.now = entry.next_attempt
            await env.worker(sts=sts, tls_cafile=cert).run_once()  # now a valid chain
            (msg,) = sink.messages
            assert msg.tls
            assert await env.store.list_queue() == []

        run(tmp_path, go)


def test_dane_mismatch_defers_and_a_matching_tlsa_delivers(tmp_path: Path) -> None:
    import hashlib

    from mailward.crypto.x509 import leaf_der_from_pem, spki_der
    from mailward.testing.unbound import TestUnbound

    context, cert = sink_tls(tmp_path / "sink", ["mx10-0.remote.test"])
    digest = hashlib.sha256(spki_der(leaf_der_from_pem(cert))).hexdigest()
    with Sink(tls_context=context) as sink:

        async def go(env: Env) -> None:
            env.mx("remote.test", sink.address)
            tlsa = "_25._tcp.mx10-0.remote.test"
            env.dns.add(tlsa, "TLSA", f"3 1 1 {'00' * 32}")  # a key the MX does not have
            env.dns.sign("remote.test")
            with TestUnbound(env.dns) as unbound:
                resolver = unbound.resolver()
                await env.queue("bob@remote.test")
                await env.worker(resolver=resolver, dane_trusted=True).run_once()
                (entry,) = await env.store.list_queue()
                assert entry.state is QueueState.DEFERRED and entry.last_error
                assert sink.messages == []
                assert env.events("queue.attempt")[-1]["policy"] == "dane"
                env.dns.set(tlsa, "TLSA", f"3 1 1 {digest}")
                env.clock.now = entry.next_attempt
                await env.worker(resolver=resolver, dane_trusted=True).run_once()
                (msg,) = sink.messages
                assert msg.tls
                assert env.events("queue.attempt")[-1]["policy"] == "dane"

        run(tmp_path, go)
