"""The authentication check inside the pipeline: a real store, the in-memory resolver,
messages handed to `Pipeline.end_of_data` the way the SMTP session hands them over
(trace fields in front, in memory or in a spool file)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailward.app import open_store
from mailward.crypto.dkim import DkimKey, dns_records, generate_domain_keys, sign_message
from mailward.logs import EventLog
from mailward.pipeline.authentication import MessageAuthenticator, MessageSource
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.trace import trace_headers
from mailward.pipeline.types import Envelope, LocalRecipient, SessionInfo
from mailward.proto.replies import Reply
from mailward.resolver import Answer
from mailward.store.api import MailStore
from mailward.testing.fake_dns import FakeResolver

HOST = "mx.example.test"
CLIENT_IP = "192.0.2.10"
ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> list[DkimKey]:
    return generate_domain_keys(tmp_path_factory.mktemp("k"), "sender.test", selector_date="202401")


def zone(keys: list[DkimKey]) -> FakeResolver:
    dns = FakeResolver()
    for name, rtype, value in dns_records("sender.test", "mail.sender.test", keys):
        if rtype == "TXT" and name == "sender.test":
            value = f"v=spf1 ip4:{CLIENT_IP} -all"
        dns.add(name, rtype, value)
    dns.clear("_dmarc.sender.test", "TXT")
    dns.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject; rua=mailto:d@sender.test")
    dns.add("_dmarc.quarantine.test", "TXT", "v=DMARC1; p=quarantine")
    dns.add("_dmarc.sampled.test", "TXT", "v=DMARC1; p=reject; pct=50")
    dns.add("_dmarc.relaxed.test", "TXT", "v=DMARC1; p=none")
    return dns


def message(sender: str, body: bytes = b"Hello.\r\n", extra: bytes = b"") -> bytes:
    return (
        extra
        + f"From: {sender}\r\nTo: {ALICE}\r\nSubject: test\r\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <m@x.test>\r\n\r\n".encode()
        + body
    )


def dkim_signed(keys: list[DkimKey], msg: bytes) -> bytes:
    return sign_message(msg, keys[0]) + sign_message(msg, keys[1]) + msg


@dataclass
class World:
    store: MailStore
    pipeline: Pipeline
    dns: FakeResolver
    log: io.StringIO
    alice: int

    async def send(
        self,
        msg: bytes,
        *,
        mail_from: str = "bounce@sender.test",
        listener: str = "mx",
        spooled: bool = False,
        trusted: bool = False,
    ) -> Reply:
        session = SessionInfo(listener, CLIENT_IP, 4000, "s1", helo="mail.sender.test")
        session.trusted_network = trusted
        if listener == "submission":
            session.account_id, session.account_address = self.alice, ALICE
        envelope = Envelope(mail_from, recipients=[LocalRecipient(ALICE, self.alice, ALICE)])
        trace = trace_headers(session, envelope, HOST, "s1.0", None)
        spool = self.store.new_spool()
        content: bytes | None = trace + msg
        if spooled:
            fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(trace + msg)
            content = None
        return await self.pipeline.end_of_data(
            session, envelope, spool, content, len(trace), len(msg)
        )

    async def stored(self, mailbox: str = "INBOX") -> list[bytes]:
        infos = await self.store.list_messages(self.alice, mailbox)
        return [await self.store.read_message(self.alice, mailbox, i.uid) for i in infos]

    def events(self, name: str) -> list[dict[str, object]]:
        records = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [r for r in records if r["event"] == name]


def run(
    tmp_path: Path,
    keys: list[DkimKey],
    scenario: Callable[[World], Awaitable[None]],
    *,
    random: float = 0.0,
) -> None:
    async def main() -> None:
        store = await open_store(tmp_path)
        try:
            await store.add_domain("example.test")
            alice = await store.add_account(ALICE, "x")
            out = io.StringIO()
            dns = zone(keys)
            pipeline = Pipeline(
                store, EventLog(out), resolver=dns, hostname=HOST, random=lambda: random
            )
            await scenario(World(store, pipeline, dns, out, alice.id))
        finally:
            await store.close()

    asyncio.run(main())


def fields_of(stored: bytes) -> list[bytes]:
    head = stored.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[0].lower() for line in head.split(b"\r\n") if line[:1] not in b" \t"
    ]


def results_of(stored: bytes) -> str:
    head = stored.split(b"\r\n\r\n", 1)[0].decode()
    start = head.index("Authentication-Results:")
    return " ".join(head[start:].split("\r\n")[0:8]).split("Received:")[0]


def test_authenticated_mail_gets_one_results_field_above_received(
    tmp_path: Path, keys: list[DkimKey]
) -> None:
    sent = dkim_signed(keys, message("Alice <alice@sender.test>"))

    async def scenario(w: World) -> None:
        assert (await w.send(sent)).code == 250
        [stored] = await w.stored()
        names = fields_of(stored)
        assert names[:3] == [b"return-path", b"authentication-results", b"received"]
        assert names.count(b"authentication-results") == 1
        assert stored.endswith(sent)  # the client's bytes, untouched
        ar = results_of(stored)
        assert ar.startswith(f"Authentication-Results: {HOST};")
        for part in [
            "spf=pass",
            "smtp.mailfrom=bounce@sender.test",
            "smtp.helo=mail.sender.test",
            "dkim=pass",
            "header.d=sender.test header.s=202401e header.a=ed25519-sha256",
            "header.s=202401r header.a=rsa-sha256",
            "dmarc=pass (p=reject dis=none) header.from=sender.test",
            "arc=none",
        ]:
            assert part in ar, ar
        [event] = w.events("mailauth.result")
        assert event["spf"] == "pass" and event["action"] == "accept"
        assert event["dmarc"] == ["sender.test=pass/reject/none"]
        assert "Hello" not in json.dumps(event)

    run(tmp_path, keys, scenario)


def test_spoofed_from_of_a_reject_domain_is_refused(tmp_path: Path, keys: list[DkimKey]) -> None:
    async def scenario(w: World) -> None:
        reply = await w.send(message("ceo@sender.test"), mail_from="x@elsewhere.test")
        assert (reply.code, reply.enhanced) == (550, "5.7.1")
        assert await w.stored() == [] and await w.stored("Junk") == []
        assert os.listdir(w.store.new_spool().parent) == []  # nothing left behind
        [event] = w.events("mailauth.result")
        assert event["action"] == "reject"

    run(tmp_path, keys, scenario)


def test_quarantine_goes_to_junk(tmp_path: Path, keys: list[DkimKey]) -> None:
    async def scenario(w: World) -> None:
        assert (await w.send(message("someone@quarantine.test"))).code == 250
        assert await w.stored() == []
        [stored] = await w.stored("Junk")
        assert "dmarc=fail (p=quarantine dis=quarantine)" in results_of(stored)

    run(tmp_path, keys, scenario)


def test_quarantine_without_a_junk_mailbox_flags_it_in_inbox(
    tmp_path: Path, keys: list[DkimKey]
) -> None:
    async def scenario(w: World) -> None:
        await w.store.delete_mailbox(w.alice, "Junk")
        assert (await w.send(message("someone@quarantine.test"))).code == 250
        [info] = await w.store.list_messages(w.alice, "INBOX")
        assert "$Junk" in info.flags

    run(tmp_path, keys, scenario)


def test_pct_sampling_applies_the_next_weaker_policy(tmp_path: Path, keys: list[DkimKey]) -> None:
    async def scenario(w: World) -> None:
        assert (await w.send(message("someone@sampled.test"))).code == 250
        [stored] = await w.stored("Junk")
        assert "dmarc=fail (p=reject dis=quarantine pct)" in results_of(stored)

    run(tmp_path, keys, scenario, random=0.9)  # outside the 50% sample


def test_p_none_failure_is_delivered_and_recorded(tmp_path: Path, keys: list[DkimKey]) -> None:
    async def scenario(w: World) -> None:
        assert (await w.send(message("someone@relaxed.test"))).code == 250
        [stored] = await w.stored()
        assert "dmarc=fail (p=none dis=none) header.from=relaxed.test" in results_of(stored)

    run(tmp_path, keys, scenario)


def test_dmarc_record_servfail_is_451(tmp_path: Path, keys: list[DkimKey]) -> None:
    async def scenario(w: World) -> None:
        w.dns.fail("_dmarc.sender.test", "TXT")
        reply = await w.send(dkim_signed(keys, message("alice@sender.test")))
        assert (reply.code, reply.enhanced) == (451, "4.4.3")
        assert await w.stored() == []

    run(tmp_path, keys, scenario)


def test_aligned_spf_temperror_is_451_only_when_nothing_else_passes(
    tmp_path: Path, keys: list[DkimKey]
) -> None:
    async def scenario(w: World) -> None:
        w.dns.fail("sender.test", "TXT")
        # DKIM passes aligned: DMARC passes whatever SPF says.
        assert (await w.send(dkim_signed(keys, message("alice@sender.test")))).code == 250
        [stored] = await w.stored()
        assert "spf=temperror" in results_of(stored) and "dmarc=pass" in results_of(stored)
        # No signature: SPF could have passed, so the sender must retry.
        reply = await w.send(message("alice@sender.test"))
        assert (reply.code, reply.enhanced) == (451, "4.4.3")

    run(tmp_path, keys, scenario)


def test_forged_results_with_our_id_are_removed_on_mx(tmp_path: Path, keys: list[DkimKey]) -> None:
    forged = (
        f"Authentication-Results: {HOST.upper()}; dkim=pass header.d=bank.test\r\n"
        "Authentication-Results: other.test; spf=pass\r\n"
    ).encode()
    sent = message("x@relaxed.test", extra=forged)

    async def scenario(w: World) -> None:
        assert (await w.send(sent, mail_from="x@relaxed.test")).code == 250
        [stored] = await w.stored()
        assert b"bank.test" not in stored
        assert b"Authentication-Results: other.test; spf=pass\r\n" in stored
        assert stored.endswith(sent[len(forged.split(b"\r\n")[0]) + 2 :])
        assert fields_of(stored).count(b"authentication-results") == 2  # ours + other.test

    run(tmp_path, keys, scenario)


def test_submission_gets_no_results_but_forgeries_are_removed(
    tmp_path: Path, keys: list[DkimKey]
) -> None:
    forged = f"Authentication-Results: {HOST}; dmarc=pass header.from=bank.test\r\n".encode()
    sent = message(ALICE, extra=forged)

    async def scenario(w: World) -> None:
        reply = await w.send(sent, mail_from=ALICE, listener="submission")
        assert reply.code == 250
        [stored] = await w.stored()
        assert b"Authentication-Results" not in stored
        assert stored.endswith(sent[len(forged) :])
        assert w.events("mailauth.result") == []

    run(tmp_path, keys, scenario)


def test_trusted_network_is_not_checked(tmp_path: Path, keys: list[DkimKey]) -> None:
    async def scenario(w: World) -> None:
        sent = message("ceo@sender.test")
        assert (await w.send(sent, mail_from="x@elsewhere.test", trusted=True)).code == 250
        [stored] = await w.stored()
        assert b"Authentication-Results" not in stored and stored.endswith(sent)

    run(tmp_path, keys, scenario)


def test_spooled_message_is_verified_and_rewritten_in_a_new_spool_file(
    tmp_path: Path, keys: list[DkimKey]
) -> None:
    body = b"".join(b"line %06d of a long message\r\n" % i for i in range(20000))  # ~600 KiB
    forged = f"Authentication-Results: {HOST}; dkim=pass\r\n".encode()
    clean = dkim_signed(keys, message("alice@sender.test", body=body))
    sent = forged + clean

    async def scenario(w: World) -> None:
        assert (await w.send(sent, spooled=True)).code == 250
        [stored] = await w.stored()
        assert stored.endswith(clean)  # byte-exact after the forged field was dropped
        assert fields_of(stored)[:3] == [b"return-path", b"authentication-results", b"received"]
        ar = results_of(stored)
        assert "dkim=pass" in ar and "dmarc=pass" in ar
        assert os.listdir(w.store.new_spool().parent) == []

    run(tmp_path, keys, scenario)


def test_spooled_refusal_removes_the_spool_file(tmp_path: Path, keys: list[DkimKey]) -> None:
    body = b"x" * 100 + b"\r\n"

    async def scenario(w: World) -> None:
        sent = message("ceo@sender.test", body=body * 1000)
        reply = await w.send(sent, mail_from="x@elsewhere.test", spooled=True)
        assert reply.code == 550
        assert os.listdir(w.store.new_spool().parent) == []

    run(tmp_path, keys, scenario)


def test_no_from_is_permerror_and_delivered(tmp_path: Path, keys: list[DkimKey]) -> None:
    sent = b"To: alice@example.test\r\nSubject: no from\r\n\r\nbody\r\n"

    async def scenario(w: World) -> None:
        assert (await w.send(sent)).code == 250
        [stored] = await w.stored()
        assert "dmarc=permerror" in results_of(stored)

    run(tmp_path, keys, scenario)


def test_two_from_domains_apply_the_strictest_policy(tmp_path: Path, keys: list[DkimKey]) -> None:
    # RFC 7489 6.6.1: a second From: is a classic way to show one sender and have
    # DMARC check another.
    sent = b"From: x@relaxed.test\r\n" + message("ceo@sender.test")

    async def scenario(w: World) -> None:
        reply = await w.send(sent, mail_from="x@relaxed.test")
        assert (reply.code, reply.enhanced) == (550, "5.7.1")

    run(tmp_path, keys, scenario)


def test_checks_that_take_too_long_are_a_temporary_failure() -> None:
    class Hanging(FakeResolver):
        async def query(self, name: str, rdtype: str) -> Answer:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async def main() -> None:
        check = MessageAuthenticator(Hanging(), HOST, EventLog(io.StringIO()), time_limit=0.05)
        session = SessionInfo("mx", CLIENT_IP, 4000, "s1", helo="mail.sender.test")
        msg = message("alice@sender.test")
        source = MessageSource(msg, Path("/nonexistent"), 0, len(msg))
        result, report = await check.check(
            session, Envelope("bounce@sender.test"), msg.split(b"\r\n\r\n")[0], source
        )
        assert report is None and result.reply is not None
        assert (result.reply.code, result.reply.enhanced) == (451, "4.4.3")

    asyncio.run(main())
