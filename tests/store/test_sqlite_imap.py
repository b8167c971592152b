"""SqliteStore: what only the embedded backend promises for IMAP / POP3 access
(migration 0002, counters kept in step with the rows, blob files removed after the
commit, bounded and indexed statements, change notifications, 100k-message mailboxes).
The backend-agnostic behaviour is in mailward.testing.store_conformance."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailward.store import sqlite as sqlite_mod
from mailward.store.api import (
    AlreadyExists,
    FlagMode,
    LocalTarget,
    NotFound,
    OverQuota,
    StoreError,
)
from mailward.store.sqlite import SqliteStore, _migrations, _statements
from mailward.testing.store_conformance import deliver_bytes, sample_message

T = TypeVar("T")
UID_MAX = 0xFFFFFFFF


def run(data: Path, fn: Callable[[SqliteStore], Awaitable[T]]) -> T:
    async def main() -> T:
        store = await SqliteStore.open(data)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def setup(store: SqliteStore, *addresses: str) -> list[int]:
    await store.add_domain("example.org")
    return [(await store.add_account(a, "h")).id for a in addresses]


async def inbox_id(store: SqliteStore, account_id: int, name: str = "INBOX") -> int:
    mb = await store.get_mailbox(account_id, name)
    assert mb is not None
    return mb.id


async def fill_by_copy(store: SqliteStore, account_id: int, n: int, size: int = 200) -> int:
    """n messages in INBOX (uids 1..n, one shared blob) in a few copies; returns its id."""
    await deliver_bytes(store, b"m" * size, [LocalTarget(account_id)])
    mb = await inbox_id(store, account_id)
    count = 1
    while count < n:
        step = min(count, n - count)
        await store.copy_messages(account_id, mb, range(1, step + 1), "INBOX")
        count += step
    return mb


def check_accounting(db: Path, blob_root: Path | None = None) -> None:
    """Every counter equals what the rows say; tombstones and messages never overlap;
    blob rows and blob files match (when `blob_root` is given)."""
    conn = sqlite3.connect(db)
    try:
        bad = conn.execute(
            "SELECT a.id, a.used_bytes, (SELECT coalesce(sum(m.size), 0) FROM messages m"
            " JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.account_id = a.id) AS s"
            " FROM accounts a WHERE a.used_bytes != s"
        ).fetchall()
        assert bad == [], f"used_bytes out of step: {bad}"
        bad = conn.execute(
            "SELECT id, name FROM mailboxes b WHERE"
            " size_bytes != (SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = b.id)"
            " OR message_count != (SELECT count(*) FROM messages WHERE mailbox_id = b.id)"
            " OR uidnext <= (SELECT coalesce(max(uid), 0) FROM messages WHERE mailbox_id = b.id)"
            " OR uidnext <= (SELECT coalesce(max(uid), 0) FROM expunged WHERE mailbox_id = b.id)"
            " OR highestmodseq < (SELECT coalesce(max(modseq), 0) FROM messages"
            "   WHERE mailbox_id = b.id)"
            " OR highestmodseq < (SELECT coalesce(max(modseq), 0) FROM expunged"
            "   WHERE mailbox_id = b.id)"
            " OR recent_uid >= uidnext"
        ).fetchall()
        assert bad == [], f"mailbox counters out of step: {bad}"
        both = conn.execute(
            "SELECT count(*) FROM messages m JOIN expunged e"
            " ON e.mailbox_id = m.mailbox_id AND e.uid = m.uid"
        ).fetchone()[0]
        assert both == 0
        unreferenced = conn.execute(
            "SELECT id FROM blobs WHERE"
            " NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = blobs.id)"
            " AND NOT EXISTS (SELECT 1 FROM queue WHERE blob_id = blobs.id)"
        ).fetchall()
        assert unreferenced == []
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        if blob_root is not None:
            rows = {r[0] for r in conn.execute("SELECT id FROM blobs")}
            files = {p.name for p in blob_root.rglob("*") if p.is_file()}
            assert rows == files
    finally:
        conn.close()


# ---- migration ---------------------------------------------------------------------


def test_migration_0002_from_version_1(tmp_path: Path) -> None:
    """A version-1 database with mail gets correct counters and \\Seen/\\Deleted."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    conn = sqlite3.connect(data / "mailward.db", isolation_level=None)
    ((_, _, v1),) = [m for m in _migrations() if m[0] == 1]
    conn.execute("BEGIN")
    for stmt in _statements(v1):
        conn.execute(stmt)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO domains (id, name, created) VALUES (1, 'example.org', 0)")
    conn.execute(
        "INSERT INTO accounts (id, address, domain_id, password_hash, created)"
        " VALUES (1, 'alice@example.org', 1, 'h', 0), (2, 'bob@example.org', 1, 'h', 0)"
    )
    conn.execute(
        "INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, highestmodseq,"
        " message_count) VALUES (1, 1, 'INBOX', 1, 4, 4, 3), (2, 1, 'Sent', 2, 2, 2, 1),"
        " (3, 2, 'INBOX', 3, 1, 1, 0)"
    )
    conn.execute("INSERT INTO blobs (id, size, created) VALUES ('b1', 0, 0)")
    rows = [
        (1, 1, 100, "\\Seen"),
        (1, 2, 200, ""),
        (1, 3, 300, "$Junk \\Deleted \\Seen"),
        (2, 1, 50, "\\Seen"),
    ]
    conn.executemany(
        "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags, modseq)"
        " VALUES (?, ?, 'b1', ?, 0, ?, 2)",
        rows,
    )
    conn.execute("COMMIT")
    conn.close()

    async def go(store: SqliteStore) -> None:
        st = await store.mailbox_status(1, "INBOX")
        assert (st.unseen, st.deleted, st.size, st.recent, st.first_unseen_uid) == (
            1,
            1,
            600,
            3,
            2,
        )
        assert (await store.get_quota(1)).used == 650
        assert (await store.get_quota(2)).used == 0
        assert await store.list_subscriptions(1) == []

    run(data, go)
    check_accounting(data / "mailward.db")
    conn = sqlite3.connect(data / "mailward.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_migrations())
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"expunged", "subscriptions", "messages_unseen", "messages_deleted"} <= tables
    finally:
        conn.close()


# ---- counters, blobs, statements -----------------------------------------------------


def test_counters_stay_in_step_through_random_operations(tmp_path: Path) -> None:
    """used_bytes, size_bytes, message_count, uidnext and modseqs match the rows after
    a long random mix of every operation that adds or removes messages."""
    data = tmp_path / "data"
    rng = random.Random(20250101)
    names = ["INBOX", "Archive", "Work", "Work/sub", "Trash", "Old", "Other", "Other/deep"]
    done: Counter[int] = Counter()

    async def go(store: SqliteStore) -> None:
        accts = await setup(store, "alice@example.org", "bob@example.org")
        for a in accts:
            await store.create_mailbox(a, "Work")
        await store.set_quota("bob@example.org", 40_000)
        for step in range(400):
            acct = rng.choice(accts)
            name = rng.choice(names)
            mb = await store.get_mailbox(acct, name)
            op = rng.randrange(10)
            if mb is None:  # some names stay free, for renames
                if rng.random() < 0.3:
                    await store.create_mailbox(acct, name)
                continue
            try:
                if op <= 2:
                    flags = frozenset(rng.sample(["\\Seen", "\\Deleted", "$A"], rng.randrange(3)))
                    targets = [LocalTarget(acct, name, flags, enforce_quota=rng.random() < 0.5)]
                    if rng.random() < 0.3:
                        targets.append(LocalTarget(rng.choice(accts)))
                    out = ["r@remote.example"] if rng.random() < 0.1 else []
                    data = sample_message(step, rng.randrange(2000))
                    await deliver_bytes(store, data, targets, out)
                    op = 0
                uids = await store.list_uids(acct, mb.id)
                some = rng.sample(uids, min(len(uids), rng.randrange(1, 6))) if uids else [1]
                if op == 3:
                    await store.copy_messages(acct, mb.id, some, rng.choice(names))
                elif op == 4:
                    await store.move_messages(acct, mb.id, some, rng.choice(names))
                elif op == 5:
                    await store.store_flags(
                        acct, mb.id, some, rng.choice(list(FlagMode)), frozenset({"\\Deleted"})
                    )
                elif op == 6:
                    await store.expunge(acct, mb.id, rng.choice([None, some]))
                elif op == 7:
                    await store.expunge(acct, mb.id, some, only_deleted=False)
                elif op == 8 and name != "INBOX":
                    await store.delete_mailbox(acct, name)
                elif op == 9:
                    target = rng.choice(names)
                    if rng.random() < 0.5:
                        target = f"R{step}" + ("/x" if rng.random() < 0.3 else "")
                        names.append(target)
                    await store.rename_mailbox(acct, name, target)
            except (NotFound, AlreadyExists, OverQuota):
                continue
            done[op] += 1
            if step % 50 == 0:
                check_accounting(store.db_path, store.blobs.root)
        check_accounting(store.db_path, store.blobs.root)
        assert all(done[op] >= 10 for op in range(3, 10)), done  # every kind ran
        await store.delete_account("alice@example.org")
        check_accounting(store.db_path, store.blobs.root)

    run(data, go)
    run(data, lambda s: asyncio.sleep(0))  # reopen: still consistent
    check_accounting(data / "mailward.db", data / "blobs")


def test_blob_files_removed_after_last_reference(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        alice, bob = await setup(store, "alice@example.org", "bob@example.org")
        inbox = await inbox_id(store, alice)
        only = await deliver_bytes(store, b"only", [LocalTarget(alice)])
        shared = await deliver_bytes(store, b"shared", [LocalTarget(alice), LocalTarget(bob)])
        queued = await deliver_bytes(store, b"queued", [LocalTarget(alice)], ["r@remote.example"])
        copied = await deliver_bytes(store, b"copied", [LocalTarget(alice)])
        moved = await deliver_bytes(store, b"moved", [LocalTarget(alice)])
        await store.copy_messages(alice, inbox, [4], "Archive")
        await store.move_messages(alice, inbox, [5], "Trash")

        def exists(r: Any) -> bool:
            return bool(store.blobs.path(r.blob_id).exists())

        assert exists(moved), "a move keeps the blob"
        assert await store.expunge(alice, inbox, [1, 2, 3, 4], only_deleted=False) == [1, 2, 3, 4]
        assert not exists(only)
        assert exists(shared) and exists(queued) and exists(copied)
        await store.delete_mailbox(alice, "Archive")
        assert not exists(copied)
        await store.delete_mailbox(alice, "Trash")
        assert not exists(moved)
        await store.create_mailbox(alice, "Work")
        work = await deliver_bytes(store, b"work", [LocalTarget(alice, "Work")])
        await store.rename_mailbox(alice, "Work", "Play")
        play = await inbox_id(store, alice, "Play")
        await store.store_flags(alice, play, [1], FlagMode.ADD, frozenset({"\\Deleted"}))
        assert await store.expunge(alice, play) == [1]
        assert not exists(work)
        check_accounting(store.db_path, store.blobs.root)

    run(tmp_path / "data", go)


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement run by read-pool connections and the writer, as executed."""
    seen: list[str] = []
    lock = threading.Lock()

    def record(sql: str) -> None:
        with lock:
            seen.append(sql)

    real_ro, real_rw = sqlite_mod._connect_ro, sqlite_mod._connect_rw

    def ro(*a: Any, **kw: Any) -> sqlite3.Connection:
        conn = real_ro(*a, **kw)
        conn.set_trace_callback(record)
        return conn

    def rw(*a: Any, **kw: Any) -> sqlite3.Connection:
        conn = real_rw(*a, **kw)
        conn.set_trace_callback(record)
        return conn

    monkeypatch.setattr(sqlite_mod, "_connect_ro", ro)
    monkeypatch.setattr(sqlite_mod, "_connect_rw", rw)
    yield seen


def test_large_uid_sets_use_bounded_statements(tmp_path: Path, traced: list[str]) -> None:
    """Thousands of scattered uids: results right, and no statement grows with them."""

    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        mb = await fill_by_copy(store, alice, 3000)
        traced.clear()
        sparse = list(range(1, 3001, 3))  # 1000 uids, 1000 ranges
        up = await store.store_flags(alice, mb, sparse, FlagMode.ADD, frozenset({"\\Seen"}))
        assert [m.uid for m in up.changed] == sparse
        got = await store.fetch_info(alice, mb, [(u, u) for u in sparse])
        assert [m.uid for m in got] == sparse and all("\\Seen" in m.flags for m in got)
        every_other = [(u, u) for u in range(2, 3001, 2)]  # dense: one span query
        got = await store.fetch_info(alice, mb, every_other)
        assert [m.uid for m in got] == list(range(2, 3001, 2))
        tiny = [(u, u) for u in range(1, 100_000, 50)]  # covers little of its span
        got = await store.fetch_info(alice, mb, tiny)
        assert [m.uid for m in got] == list(range(1, 3001, 50))
        res = await store.copy_messages(alice, mb, sparse, "Archive")
        assert [p[0] for p in res.pairs] == sparse
        res = await store.move_messages(alice, mb, sparse[:700], "Trash")
        assert len(res.pairs) == 700
        removed = await store.expunge(alice, mb, list(range(1, 3001)), only_deleted=False)
        assert removed == [u for u in range(1, 3001) if u not in set(sparse[:700])]
        assert await store.list_uids(alice, mb) == []
        longest = max(len(s) for s in traced)
        assert longest < 6000, longest
        check_accounting(store.db_path, store.blobs.root)

    run(tmp_path / "data", go)


def test_imap_reads_are_indexed(tmp_path: Path, traced: list[str]) -> None:
    """No statement behind STATUS, SELECT, FETCH, polling or EXPUNGE scans a table."""

    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        mb = await fill_by_copy(store, alice, 64)
        await store.store_flags(alice, mb, [1, 5], FlagMode.ADD, frozenset({"\\Deleted"}))
        traced.clear()
        await store.mailbox_status(alice, "INBOX")
        await store.list_uids(alice, mb)
        await store.fetch_info(alice, mb, [(1, UID_MAX)])
        await store.fetch_info(alice, mb, [(u, u) for u in range(1, 64, 2)])
        await store.changes_since(alice, mb, 3)
        await store.expunge(alice, mb)
        await store.mark_recent(alice, mb)
        await store.get_quota(alice)
        statements = [s for s in traced if s.lstrip().upper().startswith(("SELECT", "UPDATE"))]
        assert len(statements) > 8
        plans = []
        conn = sqlite3.connect(store.db_path)
        try:
            for sql in statements:
                for row in conn.execute("EXPLAIN QUERY PLAN " + sql):
                    plans.append((row[3], sql))
        finally:
            conn.close()
        scans = [(p, sql) for p, sql in plans if p.startswith("SCAN")]
        assert scans == []
        assert any("messages_unseen" in p for p, _ in plans)
        assert any("messages_deleted" in p for p, _ in plans)
        assert any("expunged_modseq" in p for p, _ in plans)

    run(tmp_path / "data", go)


# ---- behaviour details ---------------------------------------------------------------


def test_flags_normalised(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        flags = frozenset({"$Junk", "$junk", "\\seen", "\\RECENT", "\\Answered"})
        await deliver_bytes(store, b"m", [LocalTarget(alice, flags=flags)])
        (m,) = await store.list_messages(alice, "INBOX")
        assert m.flags == frozenset({"$Junk", "\\Seen", "\\Answered"})
        st = await store.mailbox_status(alice, "INBOX")
        assert st.unseen == 0
        mb = await inbox_id(store, alice)
        up = await store.store_flags(
            alice, mb, [1], FlagMode.REMOVE, frozenset({"$JUNK", "\\SEEN"})
        )
        assert up.changed[0].flags == frozenset({"\\Answered"})
        assert (await store.mailbox_status(alice, "INBOX")).unseen == 1
        many = frozenset(f"k{i}" for i in range(64))
        with pytest.raises(StoreError):
            await store.store_flags(alice, mb, [1], FlagMode.ADD, many)
        up = await store.store_flags(alice, mb, [1], FlagMode.REPLACE, many)
        assert len(up.changed[0].flags) == 64

    run(tmp_path / "data", go)


def test_fetch_info_range_edges(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        mb = await fill_by_copy(store, alice, 10)

        async def uids(*ranges: tuple[int, int]) -> list[int]:
            return [m.uid for m in await store.fetch_info(alice, mb, list(ranges))]

        assert await uids((6, 2)) == [2, 3, 4, 5, 6], "reversed range, as IMAP allows"
        assert await uids((0, 2), (-5, -1)) == [1, 2]
        assert await uids((9, 2**40)) == [9, 10]
        assert await uids((2**40, 2**41)) == []

    run(tmp_path / "data", go)


def test_expunge_without_uids_needs_only_deleted(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        mb = await fill_by_copy(store, alice, 3)
        with pytest.raises(StoreError):
            await store.expunge(alice, mb, None, only_deleted=False)
        assert await store.list_uids(alice, mb) == [1, 2, 3]

    run(tmp_path / "data", go)


def test_move_within_one_mailbox(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        mb = await fill_by_copy(store, alice, 3)
        before = await store.get_mailbox(alice, "INBOX")
        assert before is not None
        res = await store.move_messages(alice, mb, [1, 2], "INBOX")
        assert list(res.pairs) == [(1, 4), (2, 5)]
        after = await store.get_mailbox(alice, "INBOX")
        assert after is not None and after.message_count == 3
        assert res.expunge_modseq == after.highestmodseq == before.highestmodseq + 1
        ch = await store.changes_since(alice, mb, before.highestmodseq)
        assert [m.uid for m in ch.changed] == [4, 5] and list(ch.expunged) == [1, 2]
        check_accounting(store.db_path, store.blobs.root)

    run(tmp_path / "data", go)


def test_delete_account_drops_imap_state(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        alice, bob = await setup(store, "alice@example.org", "bob@example.org")
        await store.subscribe(alice, "Anything")
        mb = await fill_by_copy(store, alice, 3)
        await store.expunge(alice, mb, [1], only_deleted=False)
        await store.delete_account("alice@example.org")
        conn = sqlite3.connect(store.db_path)
        try:
            assert conn.execute("SELECT count(*) FROM subscriptions").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM expunged").fetchone()[0] == 0
        finally:
            conn.close()
        assert (await store.get_quota(bob)).used == 0
        check_accounting(store.db_path, store.blobs.root)

    run(tmp_path / "data", go)


def test_mark_recent_writes_nothing_when_nothing_arrived(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        mb = await fill_by_copy(store, alice, 2)
        assert await store.mark_recent(alice, mb) == 0
        conn = sqlite3.connect(store.db_path)
        try:
            before = conn.execute("PRAGMA data_version").fetchone()[0]
            assert await store.mark_recent(alice, mb) == 2
            assert conn.execute("PRAGMA data_version").fetchone()[0] == before
        finally:
            conn.close()

    run(tmp_path / "data", go)


# ---- change notifications -----------------------------------------------------------


def test_watch_group_commit_notifies_per_batch(tmp_path: Path) -> None:
    """Concurrent deliveries: at most one callback per changed mailbox per commit."""

    async def go(store: SqliteStore) -> None:
        alice, bob = await setup(store, "alice@example.org", "bob@example.org")
        calls: list[int] = []
        stop = store.watch(alice, calls.append)
        before = store.stats.delivery_commits
        await asyncio.gather(
            *(
                deliver_bytes(store, sample_message(i), [LocalTarget(alice), LocalTarget(bob)])
                for i in range(60)
            )
        )
        await asyncio.sleep(0.01)
        commits = store.stats.delivery_commits - before
        inbox = await inbox_id(store, alice)
        assert set(calls) == {inbox}
        assert 1 <= len(calls) <= commits < 60
        stop()

    run(tmp_path / "data", go)


def test_watch_never_calls_after_unregister(tmp_path: Path) -> None:
    """The commit has scheduled the callback, the loop has not run it yet, the session
    unregisters: the callback must not run."""

    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        calls: list[int] = []
        stop = store.watch(alice, calls.append)
        commits = store.stats.delivery_commits
        task = asyncio.ensure_future(deliver_bytes(store, b"m", [LocalTarget(alice)]))
        await asyncio.sleep(0)  # the delivery is queued
        deadline = time.monotonic() + 10
        while store.stats.delivery_commits == commits:  # block the loop on purpose
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(0.05)  # the writer has scheduled the notification by now
        stop()
        await task
        await asyncio.sleep(0.01)
        assert calls == []

    run(tmp_path / "data", go)


def test_watch_callbacks_run_on_their_own_loop(tmp_path: Path) -> None:
    """A watcher registered from another thread's loop is called on that thread; a
    callback that raises is reported to its loop and does not stop the others."""

    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        inbox = await inbox_id(store, alice)
        other_calls: list[tuple[int, str]] = []
        ready = threading.Event()
        done = threading.Event()
        other_loop = asyncio.new_event_loop()

        def thread_main() -> None:
            asyncio.set_event_loop(other_loop)

            async def register() -> None:
                store.watch(
                    alice, lambda mb: other_calls.append((mb, threading.current_thread().name))
                )
                ready.set()

            other_loop.run_until_complete(register())
            other_loop.run_until_complete(asyncio.to_thread(done.wait, 10))

        t = threading.Thread(target=thread_main, name="other-loop")
        t.start()
        ready.wait(5)
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))

        def boom(_mb: int) -> None:
            raise RuntimeError("callback bug")

        calls: list[int] = []
        stop_boom = store.watch(alice, boom)
        stop_ok = store.watch(alice, calls.append)
        await deliver_bytes(store, b"m", [LocalTarget(alice)])
        deadline = time.monotonic() + 5
        while not (other_calls and calls):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        done.set()
        await asyncio.to_thread(t.join, 10)
        other_loop.close()
        assert other_calls == [(inbox, "other-loop")]
        assert calls == [inbox]
        assert len(errors) == 1 and isinstance(errors[0]["exception"], RuntimeError)
        # The other loop is closed now: its watcher is dropped, nothing breaks.
        await deliver_bytes(store, b"n", [LocalTarget(alice)])
        await asyncio.sleep(0.01)
        assert calls == [inbox, inbox]
        stop_boom()
        stop_ok()

    run(tmp_path / "data", go)


# ---- scale ----------------------------------------------------------------------


def test_100k_message_mailbox(tmp_path: Path) -> None:
    """IMAP reads on a 100,000-message mailbox stay fast (generous bounds; the
    measured figures are far lower, see the store report)."""

    async def go(store: SqliteStore) -> None:
        (alice,) = await setup(store, "alice@example.org")
        n = 100_000
        mb = await fill_by_copy(store, alice, n, size=2000)
        await store.store_flags(alice, mb, range(1, n + 1, 2), FlagMode.ADD, frozenset({"\\Seen"}))
        await store.store_flags(
            alice, mb, range(1, n + 1, 100), FlagMode.ADD, frozenset({"\\Deleted"})
        )

        async def timed(aw: Awaitable[T]) -> tuple[T, float]:
            t0 = time.perf_counter()
            res = await aw
            return res, time.perf_counter() - t0

        st, dt = await timed(store.mailbox_status(alice, "INBOX"))
        assert (st.unseen, st.deleted, st.size, st.first_unseen_uid) == (n // 2, 1000, 2000 * n, 2)
        assert dt < 0.25, dt
        uids, dt = await timed(store.list_uids(alice, mb))
        assert len(uids) == n and dt < 1.0, dt
        infos, dt = await timed(store.fetch_info(alice, mb, [(1, UID_MAX)]))
        assert len(infos) == n and dt < 5.0, dt
        high = st.mailbox.highestmodseq
        ch, dt = await timed(store.changes_since(alice, mb, high))
        assert list(ch.changed) == [] and dt < 0.05, dt
        ch, dt = await timed(store.changes_since(alice, mb, high - 1))
        assert len(ch.changed) == 1000 and dt < 0.25, dt
        assert (await store.get_quota(alice)).used == 2000 * n

    run(tmp_path / "data", go)
