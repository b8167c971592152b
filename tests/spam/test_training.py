"""spam.training.JunkTrainer over the real store: what trains as spam or ham, what does
not, bounds, and that a hook never raises or logs content."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailward.logs import EventLog
from mailward.spam.bayes import BayesFilter
from mailward.spam.training import JunkTrainer, is_junk, is_trash
from mailward.store.api import FlagMode, LocalTarget, Mailbox, MailStore, SpecialUse
from mailward.store.sqlite import SqliteStore
from mailward.testing.store_conformance import deliver_bytes

SECRET_SUBJECT = "Subject-words-never-logged"


def message(n: int) -> bytes:
    return (
        f"From: sender{n}@example.net\r\nTo: alice@example.org\r\n"
        f"Subject: {SECRET_SUBJECT} {n}\r\n\r\nbody words number {n} cheap pills\r\n"
    ).encode()


@dataclass
class World:
    store: MailStore
    trainer: JunkTrainer
    bayes: BayesFilter
    log: io.StringIO
    alice: int
    boxes: dict[str, Mailbox]

    async def deliver(self, mailbox: str, n: int) -> int:
        receipt = await deliver_bytes(self.store, message(n), [LocalTarget(self.alice, mailbox)])
        return receipt.stored[0][1]

    async def trained(self) -> tuple[int, int]:
        await self.trainer.wait_idle()
        return await self.bayes.trained(self.alice)

    def events(self, name: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log.getvalue().splitlines()]
        return [r for r in records if r["event"] == name]

    async def copy(self, source: str, target: str, uids: list[int], *, move: bool) -> list[int]:
        src, dst = self.boxes[source], self.boxes[target]
        op = self.store.move_messages if move else self.store.copy_messages
        result = await op(self.alice, src.id, uids, target)
        new = [d for _, d in result.pairs]
        self.trainer.on_copy(self.alice, src.id, dst, new)
        return new


def run(test: Callable[[World], Awaitable[None]], tmp_path: Path, **kwargs: Any) -> None:
    async def go() -> None:
        store = await SqliteStore.open(tmp_path / "data")
        await store.add_domain("example.org")
        alice = (await store.add_account("alice@example.org", "x")).id
        log = io.StringIO()
        bayes = BayesFilter(store, min_trained=1)
        trainer = JunkTrainer(store, bayes, EventLog(log), **kwargs)
        boxes = {b.name: b for b in await store.list_mailboxes(alice)}
        try:
            await test(World(store, trainer, bayes, log, alice, boxes))
        finally:
            await trainer.close()
            await store.close()

    asyncio.run(go())


def test_mailbox_roles() -> None:
    def box(name: str, use: SpecialUse = SpecialUse.NONE) -> Mailbox:
        return Mailbox(1, 1, name, use, 1, 1, 1, 0)

    assert is_junk(box("Junk")) and is_junk(box("spam")) and is_junk(box("X", SpecialUse.JUNK))
    assert not is_junk(box("INBOX")) and not is_junk(box("Junkyard"))
    assert is_trash(box("Trash")) and is_trash(box("Bin", SpecialUse.TRASH))
    assert not is_trash(box("Archive"))


def test_moving_into_junk_trains_spam_and_out_again_ham(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        uids = [await w.deliver("INBOX", n) for n in range(3)]
        junk_uids = await w.copy("INBOX", "Junk", uids, move=True)
        assert await w.trained() == (3, 0)
        inbox_uids = await w.copy("Junk", "INBOX", junk_uids[:1], move=True)
        assert await w.trained() == (2, 1)  # moved, not counted twice
        # Back into Junk from INBOX: spam again; copies share the blob: no-op.
        again = await w.copy("INBOX", "Junk", inbox_uids, move=False)
        assert await w.trained() == (3, 0)
        await w.copy("INBOX", "Junk", inbox_uids, move=False)
        assert await w.trained() == (3, 0)
        assert again
        trained = w.events("spam.trained")
        assert [(e["kind"], e["count"]) for e in trained] == [
            ("spam", 3),
            ("ham", 1),
            ("spam", 1),
            ("spam", 0),
        ]
        assert all(e["account_id"] == w.alice for e in trained)
        assert SECRET_SUBJECT not in w.log.getvalue()
        assert "pills" not in w.log.getvalue()

    run(test, tmp_path)


def test_what_does_not_train(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        inbox = [await w.deliver("INBOX", n) for n in range(2)]
        junk = [await w.deliver("Junk", 10 + n) for n in range(2)]
        await w.copy("INBOX", "Archive", inbox, move=False)  # ordinary filing
        await w.copy("Junk", "Trash", junk[:1], move=True)  # deleting spam is not ham
        await w.copy("INBOX", "Trash", inbox[:1], move=True)
        assert await w.trained() == (0, 0)
        assert w.events("spam.trained") == []
        # Out of Junk into any other folder is ham.
        await w.copy("Junk", "Archive", junk[1:], move=True)
        assert await w.trained() == (0, 1)

    run(test, tmp_path)


def test_keywords_train(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        uids = [await w.deliver("INBOX", n) for n in range(3)]
        inbox = w.boxes["INBOX"]

        async def store(mode: FlagMode, flags: set[str], which: list[int]) -> None:
            update = await w.store.store_flags(w.alice, inbox.id, which, mode, frozenset(flags))
            w.trainer.on_store(w.alice, mode, flags, update.changed)

        await store(FlagMode.ADD, {"$Junk"}, uids[:2])
        assert await w.trained() == (2, 0)
        await store(FlagMode.REMOVE, {"$Junk"}, uids[:1])  # removing alone says nothing
        assert await w.trained() == (2, 0)
        await store(FlagMode.ADD, {"$notjunk"}, uids[:1])  # keywords: any case
        assert await w.trained() == (1, 1)
        await store(FlagMode.REPLACE, {"\\Seen", "$Junk", "$NotJunk"}, uids)  # contradiction
        await store(FlagMode.ADD, {"\\Flagged"}, uids)
        assert await w.trained() == (1, 1)

    run(test, tmp_path)


def test_append(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        junk, inbox = w.boxes["Junk"], w.boxes["INBOX"]
        r1 = await deliver_bytes(w.store, message(1), [LocalTarget(w.alice, "Junk")])
        w.trainer.on_append(w.alice, junk, r1.blob_id, {"\\Seen"})
        r2 = await deliver_bytes(w.store, message(2), [LocalTarget(w.alice, "INBOX")])
        w.trainer.on_append(w.alice, inbox, r2.blob_id, {"$NotJunk"})
        r3 = await deliver_bytes(w.store, message(3), [LocalTarget(w.alice, "INBOX")])
        w.trainer.on_append(w.alice, inbox, r3.blob_id, ())
        assert await w.trained() == (1, 1)

    run(test, tmp_path)


def test_pending_is_bounded_and_excess_dropped(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        uids = [await w.deliver("INBOX", n) for n in range(8)]
        inbox, junk = w.boxes["INBOX"], w.boxes["Junk"]
        first = await w.store.copy_messages(w.alice, inbox.id, uids[:5], "Junk")
        second = await w.store.copy_messages(w.alice, inbox.id, uids[5:], "Junk")
        # Two commands in a row, before any training ran: 3 messages fit, 5 do not.
        w.trainer.on_copy(w.alice, inbox.id, junk, [d for _, d in first.pairs])
        w.trainer.on_copy(w.alice, inbox.id, junk, [d for _, d in second.pairs])
        assert w.trainer.pending == 3
        assert await w.trained() == (3, 0)
        dropped = w.events("spam.training_dropped")
        assert [(e["account_id"], e["count"]) for e in dropped] == [(w.alice, 2), (w.alice, 3)]
        assert w.trainer.pending == 0
        w.trainer.on_copy(w.alice, inbox.id, junk, [d for _, d in second.pairs])  # room again
        assert await w.trained() == (6, 0)

    run(test, tmp_path, max_pending=3)


def test_hooks_never_raise(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        junk = w.boxes["Junk"]
        w.trainer.on_copy(w.alice, 1, None, [1])  # type: ignore[arg-type]
        w.trainer.on_store(w.alice, FlagMode.ADD, None, [object()])  # type: ignore[arg-type]
        # A blob that does not exist, an account that does not exist: logged, skipped.
        w.trainer.on_append(w.alice, junk, "0" * 32, ())
        w.trainer.on_append(w.alice + 100, junk, "not a blob id", ())
        assert await w.trained() == (0, 0)
        assert len(w.events("spam.training_failed")) >= 2

    run(test, tmp_path)


def test_close_abandons_pending_work(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        uids = [await w.deliver("INBOX", n) for n in range(20)]
        await w.copy("INBOX", "Junk", uids, move=False)
        assert w.trainer.pending == 20
        await w.trainer.close()
        assert w.trainer.pending == 0 and not w.trainer._tasks
        await w.trainer.wait_idle()
        await w.copy("INBOX", "Junk", uids, move=False)  # after close: ignored
        assert w.trainer.pending == 0 and not w.trainer._tasks

    run(test, tmp_path)
