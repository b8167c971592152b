"""Benchmark: group commit in SqliteStore.deliver() vs a naive durable loop.

Prints one JSON line. For N messages of SIZE bytes it measures messages/s of

- ``naive``: the reference, in the same run and on the same filesystem: per message,
  write the file, fsync it, rename it, fsync its directory, INSERT one row and COMMIT
  (WAL, synchronous=FULL);
- ``store_c1`` / ``store_c50``: SqliteStore.deliver() with 1 / 50 concurrent callers
  (default sync mode), each caller writing its spool file first as SMTP DATA would;
- ``store_c50_<mode>``: the other blob sync modes at concurrency 50, for comparison;

and, per message, the blob fsync/syncfs calls and the SQLite commits (each commit is
one WAL fsync with synchronous=FULL). Usage:

    .venv/bin/python bench/store_group_commit.py [--n 2000] [--size 10240] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from mailward.store.api import Delivery, LocalTarget
from mailward.store.blobs import SyncMode
from mailward.store.sqlite import SqliteStore


def naive(root: Path, n: int, payload: bytes) -> dict[str, Any]:
    spool = root / "spool"
    blobs = root / "blobs"
    spool.mkdir(mode=0o700, parents=True)
    blobs.mkdir(mode=0o700)
    conn = sqlite3.connect(root / "naive.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, blob TEXT, size INTEGER)")
    fsyncs = 0
    t0 = time.perf_counter()
    for _ in range(n):
        blob_id = secrets.token_hex(16)
        src = spool / blob_id
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, payload)
        os.fsync(fd)
        os.close(fd)
        d = blobs / blob_id[:2]
        if not d.exists():
            d.mkdir(mode=0o700)
            _fsync_dir(blobs)
            fsyncs += 1
        os.rename(src, d / blob_id)
        _fsync_dir(d)
        fsyncs += 2
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO m (blob, size) VALUES (?, ?)", (blob_id, len(payload)))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return {
        "msgs_per_s": round(n / elapsed, 1),
        "seconds": round(elapsed, 3),
        "blob_syncs_per_msg": round(fsyncs / n, 3),
        "commits_per_msg": 1.0,
    }


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def store_run(
    root: Path, n: int, payload: bytes, concurrency: int, sync_mode: SyncMode
) -> dict[str, Any]:
    store = await SqliteStore.open(root, sync_mode=sync_mode)
    try:
        await store.add_domain("example.org")
        acct = (await store.add_account("bench@example.org", "x")).id
        base = store.stats
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                spool = store.new_spool()
                fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, payload)
                os.close(fd)
                await store.deliver(Delivery(spool, "s@remote.example", [LocalTarget(acct)], []))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        st = store.stats
        assert st.deliveries - base.deliveries == n
        batches = st.delivery_commits - base.delivery_commits
        return {
            "msgs_per_s": round(n / elapsed, 1),
            "seconds": round(elapsed, 3),
            "blob_syncs_per_msg": round((st.sync_calls - base.sync_calls) / n, 3),
            "commits_per_msg": round(batches / n, 4),
            "mean_batch": round(n / batches, 1),
            "largest_batch": st.largest_batch,
        }
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=10 * 1024)
    ap.add_argument("--dir", type=Path, default=None, help="where to put temp data")
    args = ap.parse_args()
    payload = os.urandom(args.size)
    out: dict[str, Any] = {"n": args.n, "size": args.size}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        out["naive"] = naive(base / "naive", args.n, payload)
        runs = [
            ("store_c1", 1, SyncMode.FSYNC_POOL),
            ("store_c50", 50, SyncMode.FSYNC_POOL),
            ("store_c50_fsync-serial", 50, SyncMode.FSYNC_SERIAL),
            ("store_c50_syncfs", 50, SyncMode.SYNCFS),
        ]
        for name, conc, sync_mode in runs:
            out[name] = asyncio.run(store_run(base / name, args.n, payload, conc, sync_mode))
            out[name]["sync_mode"] = sync_mode.value
    ref = out["naive"]["msgs_per_s"]
    out["speedup_vs_naive"] = {k: round(out[k]["msgs_per_s"] / ref, 2) for k, *_ in runs}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
