"""SqliteStore: the conformance suite, plus what only the embedded backend promises
(file modes, migrations, group commit, crash durability, reads beside the writer)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from mailward.store.api import (
    Delivery,
    LocalTarget,
    NotFound,
    StoreError,
)
from mailward.store.blobs import SyncMode
from mailward.store.sqlite import SqliteStore, _migrations
from mailward.testing.store_conformance import (
    CHECKS,
    Check,
    deliver_bytes,
    sample_message,
    write_spool,
)

T = TypeVar("T")


def run(data: Path, fn: Callable[[SqliteStore], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        store = await SqliteStore.open(data, **kw)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


async def setup_alice(store: SqliteStore) -> int:
    await store.add_domain("example.org")
    return (await store.add_account("alice@example.org", "h")).id


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_conformance(check: Check, tmp_path: Path) -> None:
    run(tmp_path / "data", check)


@pytest.mark.parametrize("sync_mode", list(SyncMode))
def test_sync_modes_deliver(sync_mode: SyncMode, tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        payloads = [sample_message(i, 2000) for i in range(30)]
        await asyncio.gather(*(deliver_bytes(store, p, [LocalTarget(acct)]) for p in payloads))
        got = [
            await store.read_message(acct, "INBOX", m.uid)
            for m in await store.list_messages(acct, "INBOX")
        ]
        assert sorted(got) == sorted(payloads)
        assert store.stats.sync_calls >= 1

    run(tmp_path / "data", go, sync_mode=sync_mode)


def test_file_modes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)

    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        spool = store.new_spool()
        spool.write_bytes(b"world-readable spool")
        spool.chmod(0o644)
        r = await store.deliver(Delivery(spool, "s@remote.example", [LocalTarget(acct)], []))
        blob = store.blobs.path(r.blob_id)
        assert mode(blob) == 0o600
        assert mode(blob.parent) == 0o700

    run(data, go)
    assert mode(data) == 0o700
    for d in ("blobs", "spool"):
        assert mode(data / d) == 0o700
    for f in ("mailward.db", "mailward.db-wal", "mailward.db-shm"):
        if (data / f).exists():
            assert mode(data / f) == 0o600, f
    assert (data / "mailward.db").exists()
    conn = sqlite3.connect(data / "mailward.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_migrations_idempotent_on_reopen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    acct = run(data, setup_alice)
    run(data, lambda s: deliver_bytes(s, b"kept", [LocalTarget(acct)]))

    async def check(store: SqliteStore) -> None:
        assert await store.read_message(acct, "INBOX", 1) == b"kept"
        assert [a.address for a in await store.list_accounts()] == ["alice@example.org"]

    run(data, check)
    conn = sqlite3.connect(data / "mailward.db")
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_migrations()) >= 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"domains", "accounts", "aliases", "mailboxes", "messages", "blobs", "queue"} <= (
            tables
        )
    finally:
        conn.close()


def test_stale_spool_files_removed_on_open(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run(data, setup_alice)
    old = data / "spool" / "old.msg"
    fresh = data / "spool" / "fresh.msg"
    old.write_bytes(b"abandoned by a crash long ago")
    fresh.write_bytes(b"maybe another process is writing this")
    os.utime(old, (time.time() - 3 * 86400, time.time() - 3 * 86400))
    run(data, lambda s: asyncio.sleep(0))
    assert not old.exists()
    assert fresh.exists()


def test_refuses_newer_schema(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run(data, setup_alice)
    conn = sqlite3.connect(data / "mailward.db")
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        run(data, setup_alice)


def test_group_commit_batches(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        before = store.stats
        await asyncio.gather(
            *(deliver_bytes(store, sample_message(i), [LocalTarget(acct)]) for i in range(50))
        )
        after = store.stats
        commits = after.delivery_commits - before.delivery_commits
        assert after.deliveries - before.deliveries == 50
        assert 1 <= commits < 50, commits
        assert after.batches - before.batches == commits
        assert after.largest_batch > 1
        # One fsync per file plus about one directory fsync per batch (ids of a batch
        # share a fan-out directory), not two per message.
        assert after.sync_calls - before.sync_calls < 50 + 2 * commits + 2
        assert len(await store.list_messages(acct, "INBOX")) == 50

    run(tmp_path / "data", go)


def test_failed_delivery_leaves_no_blob(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        ok = await deliver_bytes(store, b"ok", [LocalTarget(acct)])
        with pytest.raises(NotFound):
            await deliver_bytes(store, b"bad", [LocalTarget(acct, "Missing")])
        with pytest.raises(NotFound):
            await deliver_bytes(store, b"bad", [LocalTarget(acct + 99)])
        files = [p.name for p in store.blobs.root.rglob("*") if p.is_file()]
        assert files == [ok.blob_id]
        assert list(store.spool_dir.iterdir()) == []

    run(tmp_path / "data", go)


def test_deliver_rejects_foreign_spool_and_empty_delivery(tmp_path: Path) -> None:
    outside = tmp_path / "outside.eml"
    outside.write_bytes(b"not yours")

    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        with pytest.raises(StoreError, match="spool"):
            await store.deliver(Delivery(outside, "s@x.example", [LocalTarget(acct)], []))
        sneaky = store.spool_dir / ".." / ".." / "outside.eml"
        with pytest.raises(StoreError, match="spool"):
            await store.deliver(Delivery(sneaky, "s@x.example", [LocalTarget(acct)], []))
        spool = write_spool(store, b"x")
        with pytest.raises(StoreError, match="recipients"):
            await store.deliver(Delivery(spool, "s@x.example", [], []))
        assert not spool.exists(), "the store owns (and removed) the spool file"
        spool = write_spool(store, b"x")
        with pytest.raises(StoreError, match="flags"):
            await store.deliver(
                Delivery(spool, "s@x.example", [LocalTarget(acct, flags=frozenset({"a b"}))], [])
            )
        assert await store.list_messages(acct, "INBOX") == []

    run(tmp_path / "data", go)
    assert outside.read_bytes() == b"not yours"


def test_delete_account_removes_unshared_blob_files(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        alice = await setup_alice(store)
        bob = (await store.add_account("bob@example.org", "h")).id
        only = await deliver_bytes(store, b"only alice", [LocalTarget(alice)])
        shared = await deliver_bytes(store, b"both", [LocalTarget(alice), LocalTarget(bob)])
        queued = await deliver_bytes(store, b"q", [LocalTarget(alice)], ["r@remote.example"])
        await store.delete_account("alice@example.org")
        assert not store.blobs.path(only.blob_id).exists()
        assert store.blobs.path(shared.blob_id).exists()
        assert store.blobs.path(queued.blob_id).exists(), "still referenced by the queue"

    run(tmp_path / "data", go)


def test_remove_orphan_blobs(tmp_path: Path) -> None:
    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        kept = await deliver_bytes(store, b"kept", [LocalTarget(acct)])
        orphan = store.blobs.new_id()
        p = store.blobs.path(orphan)
        p.parent.mkdir(mode=0o700, exist_ok=True)
        p.write_bytes(b"left by a crash")
        assert await store.remove_orphan_blobs() == [orphan]
        assert not p.exists()
        assert await store.read_message(acct, "INBOX", 1) == b"kept"
        assert store.blobs.path(kept.blob_id).exists()

    run(tmp_path / "data", go)


def test_reads_do_not_wait_for_writer(tmp_path: Path) -> None:
    """A long write transaction must not block readers (WAL + separate connections)."""
    release = threading.Event()

    async def go(store: SqliteStore) -> None:
        acct = await setup_alice(store)
        await deliver_bytes(store, b"m", [LocalTarget(acct)])

        def slow(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE accounts SET password_hash = 'x'")
            release.wait(10)

        blocker = asyncio.ensure_future(store._write(slow))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        assert await store.read_message(acct, "INBOX", 1) == b"m"
        acct_row = await store.get_account("alice@example.org")
        elapsed = time.monotonic() - t0
        assert not blocker.done()
        release.set()
        await blocker
        assert elapsed < 2, elapsed
        assert acct_row is not None and acct_row.password_hash == "h", "snapshot isolation"

    run(tmp_path / "data", go)


def test_two_stores_share_one_directory(tmp_path: Path) -> None:
    """Two stores (two write connections, like server + CLI) on one directory keep UIDs
    unique: each write is BEGIN IMMEDIATE, so SQLite's lock serialises them."""
    data = tmp_path / "data"
    acct = run(data, setup_alice)

    async def go() -> None:
        a = await SqliteStore.open(data)
        b = await SqliteStore.open(data)
        try:
            rs = await asyncio.gather(
                *(
                    deliver_bytes(s, sample_message(i), [LocalTarget(acct)])
                    for i in range(40)
                    for s in (a, b)
                )
            )
            uids = [r.stored[0][1] for r in rs]
            assert sorted(uids) == list(range(1, 81))
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from mailward.store.api import Delivery, LocalTarget
    from mailward.store.sqlite import SqliteStore
    from mailward.testing.store_conformance import sample_message, write_spool

    async def main(data, acct):
        store = await SqliteStore.open(Path(data))
        print("ready", flush=True)

        async def worker(w):
            i = w
            while True:
                spool = write_spool(store, sample_message(i, 500 + i % 7000))
                r = await store.deliver(
                    Delivery(spool, "s@remote.example", [LocalTarget(acct)], ["x@r.example"])
                )
                sys.stdout.write(f"{i} {r.blob_id} {r.stored[0][1]} {r.queued[0]}\\n")
                sys.stdout.flush()
                i += 16

        await asyncio.gather(*(worker(w) for w in range(16)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_crash_keeps_every_acknowledged_message(tmp_path: Path) -> None:
    """SIGKILL mid-stream: every message whose deliver() returned is there, byte-exact.
    (Kill, not power loss: the page cache survives; see bench for the fsync side.)"""
    data = tmp_path / "data"
    acct = run(data, setup_alice)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(acct)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr else b""
        while len(lines) < 300:
            line = proc.stdout.readline()
            assert line, (proc.stderr.read() if proc.stderr else b"").decode()
            lines.append(line)
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    lines += rest.splitlines(keepends=True)
    acked = [ln.split() for ln in lines if ln.endswith(b"\n")]
    assert len(acked) >= 300

    async def verify(store: SqliteStore) -> None:
        msgs = {m.uid: m for m in await store.list_messages(acct, "INBOX")}
        queue = {q.id: q for q in await store.list_queue()}
        for i, blob_id, uid, qid in acked:
            m = msgs.get(int(uid))
            assert m is not None, f"acknowledged message {int(i)} lost"
            assert m.blob_id == blob_id.decode()
            expected = sample_message(int(i), 500 + int(i) % 7000)
            assert await store.read_message(acct, "INBOX", int(uid)) == expected
            assert queue[int(qid)].blob_id == m.blob_id
        # Nothing half-stored: every message row's blob is readable.
        for m in msgs.values():
            await store.read_message(acct, "INBOX", m.uid)
        inbox = await store.get_mailbox(acct, "INBOX")
        assert inbox is not None and inbox.message_count == len(msgs)
        assert inbox.uidnext > max(msgs)
        # Delivery continues after recovery with fresh UIDs.
        r = await deliver_bytes(store, b"after", [LocalTarget(acct)])
        assert r.stored[0][1] > max(msgs)
        await store.remove_orphan_blobs()

    run(data, verify)
    conn = sqlite3.connect(data / "mailward.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
