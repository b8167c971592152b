"""The runner and content checks: a refusal ends the transaction, a quarantine holds
the message durably instead of delivering it, added headers land in the stored copy,
and a held message comes back out through `mailward quarantine`.

The checks here are test doubles with a fixed verdict: what is under test is the
runner's handling of verdicts; the real checks (clamd, attachments, DLP) have their own
tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.admin import init_data_dir
from mailward.app import open_store
from mailward.cli.main import main
from mailward.logs import EventLog
from mailward.pipeline.content import MessageView
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.types import (
    ACCEPT,
    CheckResult,
    Decision,
    Envelope,
    LocalRecipient,
    RemoteRecipient,
    SessionInfo,
    reject,
)
from mailward.proto.replies import Reply
from mailward.testing.fake_dns import FakeResolver

MESSAGE = b"From: <alice@example.org>\r\nSubject: report\r\n\r\nquarterly numbers\r\n"


class Verdict:
    """A content check that answers `result` (and remembers what it saw)."""

    def __init__(self, result: CheckResult, *, name: str = "test", applies: bool = True):
        self.name = name
        self.result = result
        self._applies = applies
        self.seen: list[bytes] = []

    def applies(self, session: SessionInfo) -> bool:
        return self._applies

    async def check(self, message: MessageView) -> CheckResult:
        self.seen.append(await message.read())
        return self.result


def run_pipeline(data_dir: Path, *checks: Verdict) -> tuple[Reply, list[bytes], int]:
    """Submit MESSAGE from alice to alice and bob@remote.example through a pipeline with
    `checks`; returns the reply, alice's INBOX and how many entries were queued."""

    async def go() -> tuple[Reply, list[bytes], int]:
        store = await open_store(data_dir)
        try:
            alice = await store.get_account("alice@example.org")
            assert alice is not None
            pipeline = Pipeline(
                store, EventLog(io.StringIO()), resolver=FakeResolver({}), hostname="mx.test"
            )
            pipeline.content_checks = list(checks)
            session = SessionInfo("submission", "192.0.2.1", 4000, "s1")
            session.account_id, session.account_address = alice.id, alice.address
            envelope = Envelope("alice@example.org")
            envelope.recipients.append(LocalRecipient("alice@example.org", alice.id, alice.address))
            envelope.recipients.append(RemoteRecipient("bob@remote.example"))
            reply = await pipeline.end_of_data(
                session, envelope, store.new_spool(), MESSAGE, 0, len(MESSAGE)
            )
            inbox = [
                await store.read_message(alice.id, "INBOX", m.uid)
                for m in await store.list_messages(alice.id, "INBOX")
            ]
            return reply, inbox, len(await store.list_queue())
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "data"

    async def setup() -> None:
        await init_data_dir(directory, "example.org", hostname="mx.example.org")
        store = await open_store(directory)
        try:
            await store.add_account("alice@example.org", "$argon2id$not-used")
        finally:
            await store.close()

    asyncio.run(setup())
    yield directory


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(args))
    return rc, out.getvalue()


def test_a_clean_verdict_delivers_and_adds_its_headers(data_dir: Path) -> None:
    check = Verdict(CheckResult(Decision.ACCEPT, headers=(("X-Scanned", "clean"),)))
    reply, inbox, queued = run_pipeline(data_dir, check)
    assert reply.code == 250 and queued == 1
    assert check.seen == [MESSAGE]  # the check sees the message as the client sent it
    (stored,) = inbox
    assert b"X-Scanned: clean\r\n" in stored and stored.endswith(MESSAGE)


def test_a_refusal_stores_nothing(data_dir: Path) -> None:
    refused = reject(Reply(554, "5.7.1", "Message refused: it contains malware"), "Eicar FOUND")
    later = Verdict(ACCEPT, name="later")
    reply, inbox, queued = run_pipeline(data_dir, Verdict(refused), later)
    assert (reply.code, reply.enhanced) == (554, "5.7.1") and "Eicar" not in reply.text
    assert inbox == [] and queued == 0
    assert later.seen == []  # the first refusal ends the transaction


def test_a_check_that_does_not_apply_is_skipped(data_dir: Path) -> None:
    refused = reject(Reply(554, "5.7.1", "no"), "would refuse")
    reply, inbox, _ = run_pipeline(data_dir, Verdict(refused, applies=False))
    assert reply.code == 250 and len(inbox) == 1


def test_quarantine_holds_then_release_delivers(data_dir: Path) -> None:
    held = CheckResult(Decision.QUARANTINE, reason="card number (Luhn) in body")
    reply, inbox, queued = run_pipeline(data_dir, Verdict(held, name="dlp"))
    assert reply.code == 250  # accepted: the SMTP client is not told it is held
    # Alice, who sent it (to herself and to a remote address), gets a notice instead.
    assert queued == 0
    (notice,) = inbox
    assert b"Subject: Your message was held for review" in notice
    assert b"Luhn" not in notice  # what the check says of the data, not its findings

    rc, out = cli("quarantine", "list", "--data", str(data_dir))
    assert rc == 0 and "dlp" in out and "card number (Luhn) in body" in out
    entry_id = out.split()[0]
    rc, out = cli("quarantine", "show", entry_id, "--data", str(data_dir))
    assert rc == 0 and "Subject: report" in out and "quarterly numbers" not in out
    rc, out = cli("quarantine", "release", entry_id, "--data", str(data_dir))
    assert rc == 0 and "1 local recipient(s), queued for 1 remote" in out
    rc, out = cli("quarantine", "list", "--data", str(data_dir))
    assert "the quarantine is empty" in out

    async def inbox_now() -> list[bytes]:
        store = await open_store(data_dir)
        try:
            alice = await store.get_account("alice@example.org")
            assert alice is not None
            return [
                await store.read_message(alice.id, "INBOX", m.uid)
                for m in await store.list_messages(alice.id, "INBOX")
            ]
        finally:
            await store.close()

    (released,) = [m for m in asyncio.run(inbox_now()) if m != notice]
    assert released.endswith(MESSAGE)


def test_quarantine_delete_and_unknown_ids(data_dir: Path) -> None:
    run_pipeline(data_dir, Verdict(CheckResult(Decision.QUARANTINE, reason="x"), name="malware"))
    rc, out = cli("quarantine", "list", "--json", "--data", str(data_dir))
    assert rc == 0 and '"check": "malware"' in out
    rc, _ = cli("quarantine", "delete", "1", "--data", str(data_dir))
    assert rc == 0
    assert cli("quarantine", "delete", "1", "--data", str(data_dir))[0] == 2
    assert cli("quarantine", "show", "abc", "--data", str(data_dir))[0] == 2


class Crowd:
    """A content check that counts how many messages it is looking at at once."""

    name = "crowd"

    def __init__(self) -> None:
        self.active = 0
        self.most = 0

    def applies(self, session: SessionInfo) -> bool:
        return True

    async def check(self, message: MessageView) -> CheckResult:
        self.active += 1
        self.most = max(self.most, self.active)
        await asyncio.sleep(0.05)
        self.active -= 1
        return ACCEPT


@pytest.mark.parametrize(("size", "most"), [(2 * 1024 * 1024, 4), (2000, 8)])
def test_large_messages_are_checked_a_few_at_a_time(data_dir: Path, size: int, most: int) -> None:
    body = MESSAGE + b"x" * (size - len(MESSAGE) - 2) + b"\r\n"

    async def go() -> int:
        store = await open_store(data_dir)
        try:
            alice = await store.get_account("alice@example.org")
            assert alice is not None
            pipeline = Pipeline(
                store, EventLog(io.StringIO()), resolver=FakeResolver({}), hostname="mx.test"
            )
            crowd = Crowd()
            pipeline.content_checks = [crowd]

            async def one(i: int) -> Reply:
                session = SessionInfo("submission", "192.0.2.1", 4000 + i, f"s{i}")
                session.account_id, session.account_address = alice.id, alice.address
                envelope = Envelope("alice@example.org")
                envelope.recipients.append(
                    LocalRecipient("alice@example.org", alice.id, alice.address)
                )
                return await pipeline.end_of_data(
                    session, envelope, store.new_spool(), body, 0, len(body)
                )

            replies = await asyncio.gather(*(one(i) for i in range(8)))
            assert all(r.code == 250 for r in replies)
            return crowd.most
        finally:
            await store.close()

    assert asyncio.run(go()) == most
