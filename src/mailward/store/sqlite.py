"""The embedded `MailStore`: one SQLite database (WAL) plus immutable blob files.

Files under the data directory: ``mailward.db`` (0600; its -wal/-shm inherit that
mode), ``blobs/`` (0700, see store/blobs.py) and ``spool/`` (0700, where callers write
incoming messages before `deliver()`; same filesystem as ``blobs/`` so a rename moves
them; files abandoned for a day are removed on open). Schema changes are the numbered
files in ``migrations/sqlite``, applied in order and tracked with ``PRAGMA user_version``.

Threading and locking invariants:

- One writer thread owns the only write connection; every write (account changes as
  well as deliveries) is a request on its queue, so writes in this process are
  serialised without locks. Every write transaction is ``BEGIN IMMEDIATE``, so another
  process on the same database (the CLI) serialises with us through SQLite's lock and
  ``busy_timeout``.
- Reads run on read-only connections in a small thread pool (one connection per pool
  thread, each read one deferred transaction = one WAL snapshot); they never wait for
  the writer. The tiny indexed directory lookups made for every RCPT and login
  (domains, accounts, aliases) run inline on the event loop's own read-only connection
  with no busy wait, which saves a thread hop each; if SQLite ever answers "busy" there
  the lookup falls back to the pool, so the loop is never blocked waiting for a lock.

Durability invariant ("nothing acknowledged is lost", DESIGN.md 3): `deliver()` returns
only after (1) the message's blob file and its directory entry are durable
(`BlobArea.ingest`), and (2) the transaction holding its index and queue rows has been
committed with ``synchronous=FULL``. Group commit, in two pipelined stages: a syncer
thread takes every pending delivery at once and does (1) for the whole batch with
coalesced syncs, then hands the batch to the writer, which does (2) for every synced
batch waiting as ONE transaction and only then resolves their futures. While the writer
commits one batch the syncer already syncs the next, so a batch costs about the longer
of the two stages, not their sum. A failing request (missing spool
file, unknown mailbox, ...) is rolled back to its own savepoint and fails alone; its
blob is removed. A blob row is inserted in the same transaction as the rows that
reference it, so the database never references a file that is not durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import os
import queue
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mailward.files import private_directory
from mailward.store.api import (
    DEFAULT_MAILBOXES,
    Account,
    Alias,
    AlreadyExists,
    Delivery,
    DeliveryReceipt,
    Mailbox,
    MessageInfo,
    NotFound,
    QueueEntry,
    QueueState,
    SpecialUse,
    StoreError,
    canonical_address,
)
from mailward.store.blobs import FILE_MODE, BlobArea, SyncMode

__all__ = ["SqliteStore", "StoreStats", "SyncMode"]

T = TypeVar("T")

DB_NAME = "mailward.db"
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 512  # deliveries per group commit (bounds open fds and transaction size)
READ_WORKERS = 4
STALE_SPOOL_SECONDS = 86400  # spool files older than this are removed on open
MAX_NAME = 255  # mailbox names, in characters
MAX_FLAGS = 64  # per message
_UID_MAX = 0xFFFFFFFF
_FLAG = re.compile(r"\\?[!#$&'+\-./0-9:<=>?@A-Z^_`a-z|~]{1,64}")  # RFC 3501 atom chars


@dataclass
class StoreStats:
    """Counters kept by the writer thread (read them, don't write them)."""

    batches: int = 0  # group commits attempted (batches of deliveries)
    commits: int = 0  # successful write transactions, deliveries and other writes
    delivery_commits: int = 0  # successful group-commit transactions
    deliveries: int = 0  # deliveries made durable
    failed_deliveries: int = 0
    largest_batch: int = 0
    sync_calls: int = 0  # fsync/syncfs calls for blobs (SQLite's own are not counted)


@dataclass(eq=False)
class _Write:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future[Any]


@dataclass(eq=False)
class _Deliver:
    delivery: Delivery
    internal_date: float
    flags: list[str]  # serialised flags per local target
    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future[DeliveryReceipt]
    blob_id: str = ""  # assigned by the syncer, per batch
    size: int = 0
    error: StoreError | None = None
    receipt: DeliveryReceipt | None = None


@dataclass(eq=False)
class _Synced:
    """Deliveries whose blobs are durable (or that failed), ready for the commit."""

    reqs: list[_Deliver]


_STOP = object()


def _resolve(
    fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None
) -> None:
    """Runs on the future's loop; the awaiting caller may have been cancelled."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _write_spool(path: Path, content: bytes) -> StoreError | None:
    """Write a message handed over in memory to its (new) spool file, mode 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        return StoreError(f"cannot create spool file: {exc.strerror}")
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return StoreError(f"cannot write spool file: {exc.strerror}")
    finally:
        os.close(fd)
    return None


_Answer = tuple[asyncio.Future[Any], Any, BaseException | None]


def _resolve_all(answers: list[_Answer]) -> None:
    for fut, result, exc in answers:
        _resolve(fut, result, exc)


def _db_error(exc: sqlite3.Error) -> StoreError:
    err = StoreError(f"database error: {exc.__class__.__name__}")
    err.__cause__ = exc
    return err


def _domain_of(address: str) -> str:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise StoreError("invalid address")
    return domain


def _check_address(address: str) -> str:
    addr = canonical_address(address)
    _domain_of(addr)
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in addr) or len(addr) > 320:
        raise StoreError("invalid address")
    return addr


def _check_domain(name: str) -> str:
    dom = name.strip().lower()
    if (
        not dom
        or len(dom) > 253
        or "@" in dom
        or any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in dom)
    ):
        raise StoreError("invalid domain name")
    return dom


def _mailbox_name(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1); other names are stored as given."""
    if name.upper() == "INBOX":
        return "INBOX"
    if not name or len(name) > MAX_NAME or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise StoreError("invalid mailbox name")
    return name


def _flags_text(flags: Iterable[str]) -> str:
    fl = sorted(set(flags))
    if len(fl) > MAX_FLAGS or not all(_FLAG.fullmatch(f) for f in fl):
        raise StoreError("invalid message flags")
    return " ".join(fl)


def _account(row: sqlite3.Row | tuple[Any, ...]) -> Account:
    return Account(id=row[0], address=row[1], password_hash=row[2], created=row[3])


def _mailbox(row: sqlite3.Row | tuple[Any, ...]) -> Mailbox:
    return Mailbox(
        id=row[0],
        account_id=row[1],
        name=row[2],
        special_use=SpecialUse(row[3]),
        uidvalidity=row[4],
        uidnext=row[5],
        highestmodseq=row[6],
        message_count=row[7],
    )


def _migrations() -> list[tuple[int, str, str]]:
    """(number, file name, SQL) of every packaged migration, in order."""
    root = importlib.resources.files("mailward.store") / "migrations" / "sqlite"
    found: list[tuple[int, str, str]] = []
    for entry in root.iterdir():
        m = re.fullmatch(r"(\d{4})_[a-z0-9_]+\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    numbers = [n for n, _, _ in found]
    if numbers != list(range(1, len(found) + 1)):
        raise StoreError("migration files are not numbered 0001, 0002, ... without gaps")
    return found


def _statements(script: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows triggers)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(
        ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()
    ):
        raise StoreError("migration ends with an incomplete statement")
    return out


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than ``user_version``; returns the new version.
    Each migration is one IMMEDIATE transaction (safe against a concurrent opener)."""
    version = 0
    for number, _name, sql in _migrations():
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < number:
                for stmt in _statements(sql):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {int(number)}")
                version = number
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(_migrations()):
        raise StoreError(f"database is newer than this mailward (schema version {version})")
    return int(version)


def _connect_rw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise StoreError("cannot put the database in WAL mode")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _connect_ro(path: Path, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> sqlite3.Connection:
    uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA query_only = ON")
    return conn


class SqliteStore:
    """`MailStore` on SQLite + blob files. Create with `await SqliteStore.open(dir)`."""

    def __init__(self, data_dir: Path, sync_mode: SyncMode, sync_workers: int) -> None:
        # Use `open()`; this only sets fields and creates files.
        self.data_dir = data_dir
        self.db_path = data_dir / DB_NAME
        self.spool_dir = data_dir / "spool"
        private_directory(data_dir)
        private_directory(self.spool_dir)
        self.blobs = BlobArea(data_dir / "blobs", sync_mode, sync_workers)
        self._stats = StoreStats()
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sync_queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._writer: threading.Thread | None = None
        self._syncer: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._local = threading.local()
        self._read_pool = ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="mailward-read")
        self._inline: sqlite3.Connection | None = None

    # ---- lifecycle -------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        sync_mode: SyncMode = SyncMode.FSYNC_POOL,
        sync_workers: int = 16,
    ) -> SqliteStore:
        data_dir = Path(os.path.abspath(data_dir))
        store = await asyncio.to_thread(cls, data_dir, SyncMode(sync_mode), sync_workers)
        try:
            await asyncio.to_thread(store._open_db)
        except BaseException:
            store._read_pool.shutdown()
            store.blobs.close()
            raise
        store._writer = threading.Thread(
            target=store._writer_main, name="mailward-store-writer", daemon=True
        )
        store._writer.start()
        store._syncer = threading.Thread(
            target=store._syncer_main, name="mailward-store-syncer", daemon=True
        )
        store._syncer.start()
        return store

    def _open_db(self) -> None:
        # Create the file ourselves so it is 0600 from the first byte; SQLite gives the
        # -wal and -shm files the database file's mode.
        fd = os.open(self.db_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
                os.fchmod(fd, FILE_MODE)
        finally:
            os.close(fd)
        try:
            conn = _connect_rw(self.db_path)
        except sqlite3.Error as exc:
            raise _db_error(exc) from exc
        try:
            migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise _db_error(exc) from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._remove_stale_spool()

    def _remove_stale_spool(self) -> None:
        """Spool files never delivered (their writer crashed) are removed once clearly
        abandoned; younger ones may belong to another process using this directory."""
        cutoff = time.time() - STALE_SPOOL_SECONDS
        with os.scandir(self.spool_dir) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._sync_queue.put(_STOP)  # the syncer forwards it to the writer when done
        if self._syncer is not None:
            await asyncio.to_thread(self._syncer.join)
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._read_pool.shutdown, True)
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        self.blobs.close()

    @property
    def stats(self) -> StoreStats:
        """A snapshot of the writer's counters (group-commit effectiveness)."""
        s = dataclasses.replace(self._stats)
        s.sync_calls = self.blobs.sync_calls
        return s

    def new_spool(self) -> Path:
        return self.spool_dir / f"{BlobArea.new_id()}.msg"

    # ---- plumbing ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in its own IMMEDIATE transaction on the writer thread."""
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Write(fn, loop, fut))
        return await fut

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in one read transaction (one snapshot) on a read-only connection."""
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, self._read_in_thread, fn)

    async def _lookup(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A small indexed read on the caller's thread (see the module docstring).

        `fn` must run exactly one SQL statement: in autocommit mode that statement is
        its own consistent snapshot, so no BEGIN/COMMIT round trips are needed."""
        self._check_open()
        try:
            if self._inline is None:
                self._inline = _connect_ro(self.db_path, busy_timeout_ms=0)
            return fn(self._inline)
        except sqlite3.OperationalError:
            return await self._read(fn)

    def _read_in_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = _connect_ro(self.db_path)
                with self._readers_lock:
                    self._readers.append(conn)
                self._local.conn = conn
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _db_error(exc) from exc

    # ---- writer thread ----------------------------------------------------------

    def _writer_main(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            stop = False
            while not stop:
                items = [self._queue.get()]
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                batch: list[_Deliver] = []
                # FIFO: a write request ends the delivery batch collected before it.
                for item in items:
                    if isinstance(item, _Synced):
                        batch.extend(item.reqs)
                        if len(batch) >= MAX_BATCH:
                            self._commit_batch(batch)
                            batch = []
                        continue
                    if batch:
                        self._commit_batch(batch)
                        batch = []
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, _Write):
                        self._run_write(conn, item)
                if batch:
                    self._commit_batch(batch)
            # Anything enqueued after close() started (a race with _check_open).
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Write):
                    item.loop.call_soon_threadsafe(
                        _resolve, item.fut, None, StoreError("store is closed")
                    )
        finally:
            conn.close()

    def _syncer_main(self) -> None:
        """Stage 1 of group commit: make every pending delivery's blob durable."""
        stop = False
        while not stop:
            items = [self._sync_queue.get()]
            while True:
                try:
                    items.append(self._sync_queue.get_nowait())
                except queue.Empty:
                    break
            batch = [item for item in items if isinstance(item, _Deliver)]
            for start in range(0, len(batch), MAX_BATCH):
                chunk = batch[start : start + MAX_BATCH]
                self._sync_batch(chunk)
                self._queue.put(_Synced(chunk))
            stop = any(item is _STOP for item in items)
        # Deliveries that raced with close(): never synced, never acknowledged.
        while True:
            try:
                item = self._sync_queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Deliver):
                item.loop.call_soon_threadsafe(
                    _resolve, item.fut, None, StoreError("store is closed")
                )
        self._queue.put(_STOP)

    def _run_write(self, conn: sqlite3.Connection, req: _Write) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = req.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._stats.commits += 1
        except StoreError as exc:
            req.loop.call_soon_threadsafe(_resolve, req.fut, None, exc)
        except sqlite3.Error as exc:
            req.loop.call_soon_threadsafe(_resolve, req.fut, None, _db_error(exc))
        except Exception as exc:
            req.loop.call_soon_threadsafe(_resolve, req.fut, None, exc)
        else:
            req.loop.call_soon_threadsafe(_resolve, req.fut, result)

    def _sync_batch(self, reqs: list[_Deliver]) -> None:
        """1. Blob files durable (coalesced syncs for the whole batch); failures are
        recorded on each request for the commit stage to report."""
        try:
            for r, blob_id in zip(reqs, BlobArea.new_batch_ids(len(reqs)), strict=True):
                r.blob_id = blob_id
            for r in reqs:
                if r.delivery.content is not None:
                    r.error = _write_spool(r.delivery.spool, r.delivery.content)
            pending = [r for r in reqs if r.error is None]
            results = self.blobs.ingest([(r.delivery.spool, r.blob_id) for r in pending])
            for r, res in zip(pending, results, strict=True):
                if isinstance(res, StoreError):
                    r.error = res
                else:
                    r.size = res
        except Exception as exc:  # an OS failure or a bug: fail the batch, keep serving
            err = StoreError("delivery failed")
            err.__cause__ = exc
            for r in reqs:
                if r.error is None:
                    r.error = err

    def _commit_batch(self, reqs: list[_Deliver]) -> None:
        conn = self._conn
        assert conn is not None
        self._stats.batches += 1
        self._stats.largest_batch = max(self._stats.largest_batch, len(reqs))
        try:
            live = [r for r in reqs if r.error is None]
            # 2. One transaction for every surviving request; each in its own savepoint.
            if live:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for r in live:
                            conn.execute("SAVEPOINT delivery")
                            try:
                                r.receipt = self._insert_delivery(conn, r)
                            except (StoreError, sqlite3.Error) as exc:
                                conn.execute("ROLLBACK TO delivery")
                                r.error = _db_error(exc) if isinstance(exc, sqlite3.Error) else exc
                            conn.execute("RELEASE delivery")
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    self._stats.commits += 1
                    self._stats.delivery_commits += 1
                except sqlite3.Error as exc:
                    for r in live:
                        r.error = _db_error(exc)
                        r.receipt = None
                for r in live:
                    if r.error is not None:
                        self.blobs.remove(r.blob_id)
        except Exception as exc:  # a bug or an OS failure: fail the batch, keep serving
            err = exc if isinstance(exc, StoreError) else StoreError("delivery failed")
            if err is not exc:
                err.__cause__ = exc
            for r in reqs:
                if r.receipt is None and r.error is None:
                    r.error = err
        # 3. Only now answer: one wake-up per event loop for the whole batch.
        answers: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        for r in reqs:
            if r.receipt is not None and r.error is None:
                self._stats.deliveries += 1
                answer: _Answer = (r.fut, r.receipt, None)
            else:
                self._stats.failed_deliveries += 1
                answer = (r.fut, None, r.error or StoreError("delivery failed"))
            answers.setdefault(r.loop, []).append(answer)
        for loop, batch in answers.items():
            loop.call_soon_threadsafe(_resolve_all, batch)

    def _insert_delivery(self, conn: sqlite3.Connection, r: _Deliver) -> DeliveryReceipt:
        d = r.delivery
        now = time.time()
        conn.execute(
            "INSERT INTO blobs (id, size, created) VALUES (?, ?, ?)", (r.blob_id, r.size, now)
        )
        stored: list[tuple[int, int]] = []
        for target, flags in zip(d.local, r.flags, strict=True):
            row = conn.execute(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1,"
                " message_count = message_count + 1"
                " WHERE account_id = ? AND name = ? RETURNING id, uidnext - 1, highestmodseq",
                (target.account_id, _mailbox_name(target.mailbox)),
            ).fetchone()
            if row is None:
                raise NotFound("no such mailbox")
            mailbox_id, uid, modseq = row
            if uid > _UID_MAX:
                raise StoreError("mailbox has run out of UIDs")
            conn.execute(
                "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags,"
                " modseq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, r.blob_id, r.size, r.internal_date, flags, modseq),
            )
            stored.append((mailbox_id, uid))
        queued: list[int] = []
        for rcpt in d.outbound:
            row = conn.execute(
                "INSERT INTO queue (sender, recipient, blob_id, state, attempts, created,"
                " next_attempt, last_error) VALUES (?, ?, ?, ?, 0, ?, ?, '') RETURNING id",
                (d.sender, rcpt.strip(), r.blob_id, QueueState.QUEUED.value, now, now),
            ).fetchone()
            queued.append(int(row[0]))
        return DeliveryReceipt(blob_id=r.blob_id, stored=stored, queued=queued)

    # ---- domains ----------------------------------------------------------------

    async def add_domain(self, name: str) -> None:
        dom = _check_domain(name)

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM domains WHERE name = ?", (dom,)).fetchone():
                raise AlreadyExists(f"domain {dom} already exists")
            conn.execute("INSERT INTO domains (name, created) VALUES (?, ?)", (dom, time.time()))

        await self._write(op)

    async def list_domains(self) -> list[str]:
        def q(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for r in conn.execute("SELECT name FROM domains ORDER BY name")]

        return await self._lookup(q)

    async def is_local_domain(self, name: str) -> bool:
        dom = name.strip().lower()

        def q(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute("SELECT 1 FROM domains WHERE name = ?", (dom,)).fetchone() is not None
            )

        return await self._lookup(q)

    # ---- accounts ---------------------------------------------------------------

    async def add_account(self, address: str, password_hash: str) -> Account:
        addr = _check_address(address)
        domain = _domain_of(addr)

        def op(conn: sqlite3.Connection) -> Account:
            dom = conn.execute("SELECT id FROM domains WHERE name = ?", (domain,)).fetchone()
            if dom is None:
                raise NotFound(f"domain {domain} is not a local domain")
            if _address_taken(conn, addr):
                raise AlreadyExists(f"address {addr} is already in use")
            now = time.time()
            row = conn.execute(
                "INSERT INTO accounts (address, domain_id, password_hash, created)"
                " VALUES (?, ?, ?, ?) RETURNING id, address, password_hash, created",
                (addr, dom[0], password_hash, now),
            ).fetchone()
            acct = _account(row)
            for name, use in DEFAULT_MAILBOXES:
                _insert_mailbox(conn, acct.id, name, use)
            return acct

        return await self._write(op)

    async def get_account(self, address: str) -> Account | None:
        addr = canonical_address(address)

        def q(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                "SELECT id, address, password_hash, created FROM accounts WHERE address = ?",
                (addr,),
            ).fetchone()
            return None if row is None else _account(row)

        return await self._lookup(q)

    async def get_account_by_id(self, account_id: int) -> Account | None:
        def q(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                "SELECT id, address, password_hash, created FROM accounts WHERE id = ?",
                (account_id,),
            ).fetchone()
            return None if row is None else _account(row)

        return await self._read(q)

    async def list_accounts(self) -> list[Account]:
        def q(conn: sqlite3.Connection) -> list[Account]:
            rows = conn.execute(
                "SELECT id, address, password_hash, created FROM accounts ORDER BY address"
            )
            return [_account(r) for r in rows]

        return await self._read(q)

    async def delete_account(self, address: str) -> None:
        addr = canonical_address(address)

        def op(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute("SELECT id FROM accounts WHERE address = ?", (addr,)).fetchone()
            if row is None:
                raise NotFound(f"no account {addr}")
            blob_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT m.blob_id FROM messages m JOIN mailboxes b"
                    " ON b.id = m.mailbox_id WHERE b.account_id = ?",
                    (row[0],),
                )
            ]
            # Mailboxes, messages and aliases go by ON DELETE CASCADE.
            conn.execute("DELETE FROM accounts WHERE id = ?", (row[0],))
            return _drop_unreferenced_blobs(conn, blob_ids)

        gone = await self._write(op)
        # After the commit: a crash before these unlinks only leaves orphan files.
        if gone:

            def unlink_all() -> None:
                for b in gone:
                    self.blobs.remove(b)

            await asyncio.to_thread(unlink_all)

    async def set_password_hash(self, address: str, password_hash: str) -> None:
        addr = canonical_address(address)

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE accounts SET password_hash = ? WHERE address = ?", (password_hash, addr)
            )
            if cur.rowcount != 1:
                raise NotFound(f"no account {addr}")

        await self._write(op)

    # ---- aliases ----------------------------------------------------------------

    async def add_alias(self, address: str, target: str) -> None:
        addr = _check_address(address)
        domain = _domain_of(addr)
        tgt = canonical_address(target)

        def op(conn: sqlite3.Connection) -> None:
            dom = conn.execute("SELECT id FROM domains WHERE name = ?", (domain,)).fetchone()
            if dom is None:
                raise NotFound(f"domain {domain} is not a local domain")
            acct = conn.execute("SELECT id FROM accounts WHERE address = ?", (tgt,)).fetchone()
            if acct is None:
                raise NotFound(f"no account {tgt}")
            if _address_taken(conn, addr):
                raise AlreadyExists(f"address {addr} is already in use")
            conn.execute(
                "INSERT INTO aliases (address, domain_id, account_id, created) VALUES (?, ?, ?, ?)",
                (addr, dom[0], acct[0], time.time()),
            )

        await self._write(op)

    async def delete_alias(self, address: str) -> None:
        addr = canonical_address(address)

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute("DELETE FROM aliases WHERE address = ?", (addr,)).rowcount != 1:
                raise NotFound(f"no alias {addr}")

        await self._write(op)

    async def list_aliases(self) -> list[Alias]:
        def q(conn: sqlite3.Connection) -> list[Alias]:
            rows = conn.execute(
                "SELECT l.address, a.address FROM aliases l JOIN accounts a"
                " ON a.id = l.account_id ORDER BY l.address"
            )
            return [Alias(address=r[0], target=r[1]) for r in rows]

        return await self._read(q)

    async def resolve_recipient(self, address: str) -> Account | None:
        addr = canonical_address(address)

        def q(conn: sqlite3.Connection) -> Account | None:
            row = conn.execute(
                "SELECT id, address, password_hash, created FROM accounts WHERE address = ?"
                " UNION ALL SELECT a.id, a.address, a.password_hash, a.created"
                " FROM aliases l JOIN accounts a ON a.id = l.account_id WHERE l.address = ?"
                " LIMIT 1",
                (addr, addr),
            ).fetchone()
            return None if row is None else _account(row)

        return await self._lookup(q)

    async def owned_addresses(self, account_id: int) -> set[str]:
        def q(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT address FROM accounts WHERE id = ?"
                " UNION SELECT address FROM aliases WHERE account_id = ?",
                (account_id, account_id),
            )
            return {r[0] for r in rows}

        return await self._lookup(q)

    # ---- mailboxes --------------------------------------------------------------

    async def list_mailboxes(self, account_id: int) -> list[Mailbox]:
        def q(conn: sqlite3.Connection) -> list[Mailbox]:
            rows = conn.execute(
                "SELECT id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq,"
                " message_count FROM mailboxes WHERE account_id = ? ORDER BY id",
                (account_id,),
            )
            return [_mailbox(r) for r in rows]

        return await self._read(q)

    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None:
        try:
            mname = _mailbox_name(name)
        except StoreError:
            return None

        def q(conn: sqlite3.Connection) -> Mailbox | None:
            row = conn.execute(
                "SELECT id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq,"
                " message_count FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, mname),
            ).fetchone()
            return None if row is None else _mailbox(row)

        return await self._read(q)

    async def create_mailbox(
        self, account_id: int, name: str, special_use: SpecialUse = SpecialUse.NONE
    ) -> Mailbox:
        mname = _mailbox_name(name)
        use = SpecialUse(special_use)

        def op(conn: sqlite3.Connection) -> Mailbox:
            if not conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise NotFound("no such account")
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, mname)
            ).fetchone():
                raise AlreadyExists(f"mailbox {mname} already exists")
            return _insert_mailbox(conn, account_id, mname, use)

        return await self._write(op)

    # ---- messages ---------------------------------------------------------------

    async def deliver(self, delivery: Delivery) -> DeliveryReceipt:
        self._check_open()
        spool = Path(os.path.abspath(delivery.spool))
        if spool.parent != self.spool_dir or not spool.name:
            # Not ours: never touch a file outside the spool directory.
            raise StoreError("spool file is not in this store's spool directory")
        try:
            if not delivery.local and not delivery.outbound:
                raise StoreError("delivery has no recipients")
            flags = [_flags_text(t.flags) for t in delivery.local]
            for t in delivery.local:
                _mailbox_name(t.mailbox)
        except StoreError:
            with contextlib.suppress(OSError):
                spool.unlink()
            raise
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[DeliveryReceipt] = loop.create_future()
        date = time.time() if delivery.internal_date is None else float(delivery.internal_date)
        req = _Deliver(
            delivery=dataclasses.replace(delivery, spool=spool),
            internal_date=date,
            flags=flags,
            loop=loop,
            fut=fut,
        )
        self._sync_queue.put(req)
        # If the caller is cancelled the delivery still completes (or fails) normally;
        # the caller just never learns the outcome, so it must not acknowledge it.
        return await fut

    async def list_messages(self, account_id: int, mailbox: str) -> list[MessageInfo]:
        mname = _mailbox_name(mailbox)

        def q(conn: sqlite3.Connection) -> list[MessageInfo]:
            mb = _mailbox_id(conn, account_id, mname)
            rows = conn.execute(
                "SELECT uid, size, internal_date, flags, modseq, blob_id FROM messages"
                " WHERE mailbox_id = ? ORDER BY uid",
                (mb,),
            )
            return [
                MessageInfo(
                    mailbox_id=mb,
                    uid=r[0],
                    size=r[1],
                    internal_date=r[2],
                    flags=frozenset(r[3].split()),
                    modseq=r[4],
                    blob_id=r[5],
                )
                for r in rows
            ]

        return await self._read(q)

    async def read_message(self, account_id: int, mailbox: str, uid: int) -> bytes:
        mname = _mailbox_name(mailbox)

        def q(conn: sqlite3.Connection) -> bytes:
            mb = _mailbox_id(conn, account_id, mname)
            row = conn.execute(
                "SELECT blob_id FROM messages WHERE mailbox_id = ? AND uid = ?", (mb, uid)
            ).fetchone()
            if row is None:
                raise NotFound("no such message")
            # Inside the snapshot; only delete_account removes blob files, after its
            # commit, so a racing read of a just-deleted account fails with StoreError.
            return self.blobs.read(row[0])

        return await self._read(q)

    # ---- queue ------------------------------------------------------------------

    async def list_queue(self) -> list[QueueEntry]:
        def q(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                "SELECT id, sender, recipient, blob_id, state, attempts, created,"
                " next_attempt, last_error FROM queue ORDER BY id"
            )
            return [
                QueueEntry(
                    id=r[0],
                    sender=r[1],
                    recipient=r[2],
                    blob_id=r[3],
                    state=QueueState(r[4]),
                    attempts=r[5],
                    created=r[6],
                    next_attempt=r[7],
                    last_error=r[8],
                )
                for r in rows
            ]

        return await self._read(q)

    # ---- maintenance (not in the Protocol) ----------------------------------------

    async def remove_orphan_blobs(self) -> list[str]:
        """Delete blob files no row references (left by a crash between a batch's
        blob sync and its commit, or before a post-delete unlink). Runs on the writer
        thread so no batch is mid-flight; cost grows with the number of blobs."""

        def op(conn: sqlite3.Connection) -> list[str]:
            def referenced(blob_id: str) -> bool:
                return (
                    conn.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone()
                    is not None
                )

            found = list(self.blobs.orphans(referenced))
            for b in found:
                self.blobs.remove(b)
            return found

        return await self._write(op)


def _address_taken(conn: sqlite3.Connection, addr: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM accounts WHERE address = ? UNION ALL"
            " SELECT 1 FROM aliases WHERE address = ? LIMIT 1",
            (addr, addr),
        ).fetchone()
        is not None
    )


def _mailbox_id(conn: sqlite3.Connection, account_id: int, name: str) -> int:
    row = conn.execute(
        "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    return int(row[0])


def _insert_mailbox(
    conn: sqlite3.Connection, account_id: int, name: str, use: SpecialUse
) -> Mailbox:
    """Insert a mailbox with a fresh UIDVALIDITY: the current time, or one more than
    the last one handed out, so it never repeats (RFC 3501 2.3.1.1)."""
    last = conn.execute("SELECT value FROM counters WHERE name = 'uidvalidity'").fetchone()[0]
    uidvalidity = max(int(time.time()), int(last) + 1)
    if uidvalidity > _UID_MAX:
        raise StoreError("UIDVALIDITY space exhausted")
    conn.execute("UPDATE counters SET value = ? WHERE name = 'uidvalidity'", (uidvalidity,))
    row = conn.execute(
        "INSERT INTO mailboxes (account_id, name, special_use, uidvalidity)"
        " VALUES (?, ?, ?, ?) RETURNING id, account_id, name, special_use, uidvalidity,"
        " uidnext, highestmodseq, message_count",
        (account_id, name, use.value, uidvalidity),
    ).fetchone()
    return _mailbox(row)


def _drop_unreferenced_blobs(conn: sqlite3.Connection, candidates: Sequence[str]) -> list[str]:
    """Delete the blob rows among `candidates` no message or queue entry references;
    returns their ids (the caller unlinks the files after the commit)."""
    gone: list[str] = []
    for i in range(0, len(candidates), 500):
        chunk = list(candidates[i : i + 500])
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"DELETE FROM blobs WHERE id IN ({marks})"  # noqa: S608 - only "?" marks
            " AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_id = blobs.id)"
            " AND NOT EXISTS (SELECT 1 FROM queue WHERE blob_id = blobs.id)"
            " RETURNING id",
            chunk,
        ).fetchall()
        gone += [r[0] for r in rows]
    return gone
