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

IMAP / POP3 access (migration 0002):

- Counters never computed by summing rows: ``mailboxes.message_count`` /
  ``size_bytes`` and ``accounts.used_bytes`` move in the same statement batch as every
  message insert or delete (deliver, copy, move, expunge, INBOX rename, mailbox delete;
  account delete drops the row). A quota is checked against ``used_bytes``: by COPY,
  and by a delivery to a `LocalTarget` with ``enforce_quota`` (APPEND), where an
  `OverQuota` rolls back that delivery's savepoint only.
- MODSEQ (RFC 7162): an operation that changes a mailbox's messages takes ONE new
  ``highestmodseq`` and stamps it on each changed message and on each tombstone in
  ``expunged`` (QRESYNC VANISHED). A STORE that changes nothing takes none.
- \\Seen / \\Deleted are generated columns over ``flags`` with partial indexes, so
  STATUS / SELECT counts cost the number of such messages, not the mailbox size.
- Blob files are shared by copies and unlinked only after the commit that deleted the
  last row referencing them (a crash in between leaves an orphan for
  `remove_orphan_blobs`, never a row without its file).
- Change notifications (`watch`): a write op records the (account, mailbox) pairs it
  changed; after its commit the writer thread schedules each watcher of those accounts
  on the loop it registered from, one wake-up per loop; the callback is called only if
  still registered when the loop runs it. In-process only.
- Uid sets are read with a few bounded statements: one per range when there are few
  ranges, else ``IN`` lists of at most 500 uids or one span query (`_messages_in`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import importlib.resources
import itertools
import json
import os
import queue
import re
import sqlite3
import stat
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from mailward.files import private_directory
from mailward.store.api import (
    DEFAULT_MAILBOXES,
    MAX_BAYES_TOKENS,
    MAX_HEADER_READ,
    MAX_SENDING_RECIPIENTS,
    Account,
    Alias,
    AlreadyExists,
    BayesCounts,
    CopyResult,
    Delivery,
    DeliveryReceipt,
    FlagMode,
    FlagUpdate,
    GreylistEntry,
    LocalTarget,
    Mailbox,
    MailboxChanges,
    MailboxStatus,
    MessageInfo,
    NotFound,
    OverQuota,
    QuarantinedMessage,
    QueueEntry,
    QueueState,
    QueueUpdate,
    Quota,
    SendingCounts,
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
MAX_SUBSCRIPTIONS = 10_000  # per account
_MAX_QUOTA = 1 << 62
_UID_MAX = 0xFFFFFFFF
_FLAG = re.compile(r"\\?[!#$&'+\-./0-9:<=>?@A-Z^_`a-z|~]{1,64}")  # RFC 3501 atom chars
_SYSTEM_FLAGS = {
    f.lower(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
}
_RECENT = "\\recent"
_SQL_CHUNK = 500  # values per IN (...) list: bounded statements
_FEW_RANGES = 32  # up to this many uid ranges: one indexed query per range


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
_Watcher = Callable[[int], None]


def _resolve_all(answers: list[_Answer]) -> None:
    for fut, result, exc in answers:
        _resolve(fut, result, exc)


def _read_header_section(f: BinaryIO) -> bytes:
    """The header section of an open message file: up to and including the first empty
    line (CRLF or bare LF), or MAX_HEADER_READ octets if there is none that early."""
    data = b""
    step = 16 * 1024
    while len(data) < MAX_HEADER_READ:
        chunk = f.read(step)
        if not chunk:
            return data
        start = max(0, len(data) - 3)
        data += chunk
        for sep in (b"\r\n\r\n", b"\n\n"):
            end = data.find(sep, start)
            if end >= 0:
                return data[: end + len(sep)]
        step = 64 * 1024
    return data[:MAX_HEADER_READ]


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
    if (
        not name
        or len(name) > MAX_NAME
        or any(ord(c) < 0x20 or c == "\x7f" or 0xD800 <= ord(c) <= 0xDFFF for c in name)
    ):
        raise StoreError("invalid mailbox name")
    return name


def _clean_flags(flags: Iterable[str]) -> dict[str, str]:
    """Validated flags keyed by their lower-case form (flags are case-insensitive):
    system flags in their RFC 9051 spelling, \\Recent dropped (it is per session and
    never stored, RFC 3501 2.3.2), of several spellings of one keyword the first in
    sort order."""
    out: dict[str, str] = {}
    for f in flags:
        if not isinstance(f, str) or not _FLAG.fullmatch(f):
            raise StoreError("invalid message flags")
        key = f.lower()
        if key == _RECENT:
            continue
        cand = _SYSTEM_FLAGS.get(key, f)
        cur = out.get(key)
        out[key] = cand if cur is None else min(cur, cand)
    if len(out) > MAX_FLAGS:
        raise StoreError("invalid message flags")
    return out


def _flags_text(flags: Iterable[str]) -> str:
    """The stored form: sorted, space-separated (the `seen` and `deleted` columns of
    migration 0002 look for " \\Seen " and " \\Deleted " in it)."""
    return " ".join(sorted(_clean_flags(flags).values()))


def _flag_keys(text: str) -> dict[str, str]:
    return {f.lower(): f for f in text.split()}


def _uid_ranges(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged, inclusive runs of the valid uids among `uids`."""
    return _merge_ranges((u, u) for u in uids)


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(lo, hi) pairs (either order) clipped to valid uids, sorted and merged."""
    spans = sorted(
        (max(min(a, b), 1), min(max(a, b), _UID_MAX))
        for a, b in ranges
        if max(a, b) >= 1 and min(a, b) <= _UID_MAX
    )
    out: list[tuple[int, int]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _account(row: sqlite3.Row | tuple[Any, ...]) -> Account:
    return Account(id=row[0], address=row[1], password_hash=row[2], created=row[3])


_MAILBOX_COLS = (
    "id, account_id, name, special_use, uidvalidity, uidnext, highestmodseq, message_count"
)
_MSG_COLS = "id, uid, size, internal_date, flags, modseq, blob_id"  # see _info


def _info(mailbox_id: int, r: tuple[Any, ...]) -> MessageInfo:
    """A MessageInfo from a row of _MSG_COLS."""
    return MessageInfo(
        mailbox_id=mailbox_id,
        uid=r[1],
        size=r[2],
        internal_date=r[3],
        flags=frozenset(r[4].split()),
        modseq=r[5],
        blob_id=r[6],
    )


def _by_uid(r: tuple[Any, ...]) -> int:
    return int(r[1])


def _infos(mailbox_id: int, rows: Iterable[tuple[Any, ...]]) -> list[MessageInfo]:
    """`_info` for many rows; messages share few distinct flag sets, so each is parsed
    once (half the cost of FETCH 1:* on a large mailbox)."""
    parsed: dict[str, frozenset[str]] = {}
    out: list[MessageInfo] = []
    for r in rows:
        flags = parsed.get(r[4])
        if flags is None:
            flags = parsed[r[4]] = frozenset(r[4].split())
        out.append(MessageInfo(mailbox_id, r[1], r[2], r[3], flags, r[5], r[6]))
    return out


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
        # watch(): account id -> token -> (loop, callback); read by the writer thread.
        self._watchers: dict[int, dict[int, tuple[asyncio.AbstractEventLoop, _Watcher]]] = {}
        self._watch_lock = threading.Lock()
        self._watch_tokens = itertools.count(1)
        # (account id, mailbox id) changed by the write transaction in progress; only
        # the writer thread touches it (ops call `_changed_mailbox`).
        self._changed: set[tuple[int, int]] = set()

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

    def _changed_mailbox(self, account_id: int, mailbox_id: int) -> None:
        """Called by a write op (writer thread): watchers of the account hear about
        `mailbox_id` once the transaction has committed (not at all if it rolls back)."""
        self._changed.add((account_id, mailbox_id))

    def _notify(self, changed: Iterable[tuple[int, int]]) -> None:
        """Writer thread, after a commit: schedule the watchers of every changed
        mailbox on their own loops, one wake-up per loop. Never raises: the write has
        committed and must be reported as such (watchers also poll)."""
        if not self._watchers:  # racy but harmless: a new watcher misses one commit
            return
        with contextlib.suppress(Exception):
            self._schedule_watchers(changed)

    def _schedule_watchers(self, changed: Iterable[tuple[int, int]]) -> None:
        calls: dict[asyncio.AbstractEventLoop, list[tuple[int, int, _Watcher, int]]] = {}
        with self._watch_lock:
            for account_id, mailbox_id in sorted(set(changed)):
                for token, (loop, cb) in self._watchers.get(account_id, {}).items():
                    calls.setdefault(loop, []).append((account_id, token, cb, mailbox_id))
        for loop, items in calls.items():
            try:
                loop.call_soon_threadsafe(self._fire, loop, items)
            except RuntimeError:  # the loop is closed: its watchers will never run
                with self._watch_lock:
                    for account_id, token, _cb, _mb in items:
                        self._watchers.get(account_id, {}).pop(token, None)

    def _fire(
        self, loop: asyncio.AbstractEventLoop, items: list[tuple[int, int, _Watcher, int]]
    ) -> None:
        """On the watcher's loop: call each callback still registered right now, so
        none runs after its unregister function returned."""
        for account_id, token, cb, mailbox_id in items:
            with self._watch_lock:
                entry = self._watchers.get(account_id, {}).get(token)
            if entry is None or entry[1] is not cb:
                continue
            try:
                cb(mailbox_id)
            except Exception as exc:
                loop.call_exception_handler(
                    {"message": "store watch callback failed", "exception": exc}
                )

    async def _unlink_blobs(self, gone: Sequence[str]) -> None:
        """Remove blob files whose rows a committed transaction deleted. A crash (or a
        cancelled caller) before this only leaves orphans for `remove_orphan_blobs`."""
        if not gone:
            return

        def unlink_all() -> None:
            for b in gone:
                self.blobs.remove(b)

        await asyncio.to_thread(unlink_all)

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
        self._changed = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = req.fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._changed = set()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._stats.commits += 1
            changed, self._changed = self._changed, set()
            self._notify(changed)
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
                    self._notify(
                        (t.account_id, mailbox_id)
                        for r in live
                        if r.receipt is not None and r.error is None
                        for t, (mailbox_id, _uid) in zip(
                            r.delivery.local, r.receipt.stored, strict=True
                        )
                    )
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
        if d.hold is not None:
            targets = {
                "local": [
                    [t.account_id, _mailbox_name(t.mailbox), sorted(t.flags)] for t in d.local
                ],
                "outbound": [rcpt.strip() for rcpt in d.outbound],
                "internal_date": r.internal_date,
            }
            row = conn.execute(
                "INSERT INTO quarantine (blob_id, sender, targets, check_name, reason, size,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    r.blob_id,
                    d.sender,
                    json.dumps(targets),
                    d.hold.check,
                    d.hold.reason,
                    r.size,
                    now,
                ),
            ).fetchone()
            return DeliveryReceipt(blob_id=r.blob_id, stored=[], queued=[], held=int(row[0]))
        return self._insert_targets(
            conn,
            r.blob_id,
            r.size,
            r.internal_date,
            d.sender,
            list(zip(d.local, r.flags, strict=True)),
            d.outbound,
            now,
        )

    def _insert_targets(
        self,
        conn: sqlite3.Connection,
        blob_id: str,
        size: int,
        internal_date: float,
        sender: str,
        local: Sequence[tuple[LocalTarget, str]],
        outbound: Sequence[str],
        now: float,
    ) -> DeliveryReceipt:
        """Messages and queue entries for a blob already in `blobs` (delivery, release)."""
        r_size, r_date, r_blob = size, internal_date, blob_id
        stored: list[tuple[int, int]] = []
        for target, flags in local:
            row = conn.execute(
                "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1,"
                " message_count = message_count + 1, size_bytes = size_bytes + ?"
                " WHERE account_id = ? AND name = ? RETURNING id, uidnext - 1, highestmodseq",
                (r_size, target.account_id, _mailbox_name(target.mailbox)),
            ).fetchone()
            if row is None:
                raise NotFound("no such mailbox")
            mailbox_id, uid, modseq = row
            if uid > _UID_MAX:
                raise StoreError("mailbox has run out of UIDs")
            used, limit = conn.execute(
                "UPDATE accounts SET used_bytes = used_bytes + ? WHERE id = ?"
                " RETURNING used_bytes, quota_bytes",
                (r_size, target.account_id),
            ).fetchone()
            if target.enforce_quota and limit and used > limit:
                # The savepoint of this delivery is rolled back: it fails alone.
                raise OverQuota("mailbox quota exceeded")
            conn.execute(
                "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags,"
                " modseq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, r_blob, r_size, r_date, flags, modseq),
            )
            stored.append((mailbox_id, uid))
        queued: list[int] = []
        for rcpt in outbound:
            row = conn.execute(
                "INSERT INTO queue (sender, recipient, blob_id, state, attempts, created,"
                " next_attempt, last_error) VALUES (?, ?, ?, ?, 0, ?, ?, '') RETURNING id",
                (sender, rcpt.strip(), r_blob, QueueState.QUEUED.value, now, now),
            ).fetchone()
            queued.append(int(row[0]))
        return DeliveryReceipt(blob_id=r_blob, stored=stored, queued=queued)

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
            for (mailbox_id,) in conn.execute(
                "SELECT id FROM mailboxes WHERE account_id = ?", (row[0],)
            ).fetchall():
                self._changed_mailbox(row[0], mailbox_id)
            # Mailboxes, messages, tombstones, subscriptions and aliases go by ON DELETE
            # CASCADE.
            conn.execute("DELETE FROM accounts WHERE id = ?", (row[0],))
            return _drop_unreferenced_blobs(conn, blob_ids)

        # After the commit: a crash before these unlinks only leaves orphan files.
        await self._unlink_blobs(await self._write(op))

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
            # Inside the snapshot; blob files are removed only after the commit that
            # deleted their last row, so a racing read of a just-removed message fails
            # with StoreError.
            return self.blobs.read(row[0])

        return await self._read(q)

    # ---- IMAP / POP3 access -------------------------------------------------------

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        mname = _mailbox_name(name)
        if mname == "INBOX":
            raise StoreError("INBOX cannot be deleted")

        def op(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute(
                "SELECT id, size_bytes FROM mailboxes WHERE account_id = ? AND name = ?",
                (account_id, mname),
            ).fetchone()
            if row is None:
                raise NotFound("no such mailbox")
            mailbox_id, size = row
            blob_ids = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT blob_id FROM messages WHERE mailbox_id = ?", (mailbox_id,)
                )
            ]
            # Messages and tombstones go by ON DELETE CASCADE; subscriptions stay
            # (RFC 9051 6.3.9: the server must not remove them on its own).
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (mailbox_id,))
            _add_used(conn, account_id, -size)
            self._changed_mailbox(account_id, mailbox_id)
            return _drop_unreferenced_blobs(conn, blob_ids)

        await self._unlink_blobs(await self._write(op))

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        src_name = _mailbox_name(old)
        dst_name = _mailbox_name(new)

        def op(conn: sqlite3.Connection) -> None:
            src = conn.execute(
                f"SELECT {_MAILBOX_COLS}, recent_uid, size_bytes FROM mailboxes"  # noqa: S608 - constant column list
                " WHERE account_id = ? AND name = ?",
                (account_id, src_name),
            ).fetchone()
            if src is None:
                raise NotFound("no such mailbox")
            if _mailbox_exists(conn, account_id, dst_name):
                raise AlreadyExists(f"mailbox {dst_name} already exists")
            if src_name == "INBOX":
                new_id = _rename_inbox(conn, _mailbox(src), src[8], src[9], dst_name)
                self._changed_mailbox(account_id, src[0])
                self._changed_mailbox(account_id, new_id)
                return
            # The mailbox and every inferior ("old/..."), matched without LIKE so that
            # no character of a name is a wildcard.
            prefix = src_name + "/"
            rows = conn.execute(
                "SELECT id, name FROM mailboxes WHERE account_id = ?"
                " AND (name = ? OR substr(name, 1, ?) = ?)",
                (account_id, src_name, len(prefix), prefix),
            ).fetchall()
            moving = {int(r[0]) for r in rows}
            renames: list[tuple[int, str]] = []
            for mailbox_id, name in rows:
                target = dst_name + name[len(src_name) :]
                if _mailbox_name(target) != target:  # an inferior renamed to "INBOX"
                    raise AlreadyExists(f"mailbox {target} already exists")
                hit = conn.execute(
                    "SELECT id FROM mailboxes WHERE account_id = ? AND name = ?",
                    (account_id, target),
                ).fetchone()
                if hit is not None and int(hit[0]) not in moving:
                    raise AlreadyExists(f"mailbox {target} already exists")
                renames.append((mailbox_id, target))
            # Two steps, so that names swapping among the renamed mailboxes never
            # collide with UNIQUE (account_id, name); a control character can never be
            # part of a real name.
            conn.executemany(
                "UPDATE mailboxes SET name = ? WHERE id = ?",
                [(f"\x00{mailbox_id}", mailbox_id) for mailbox_id, _ in renames],
            )
            conn.executemany(
                "UPDATE mailboxes SET name = ? WHERE id = ?",
                [(target, mailbox_id) for mailbox_id, target in renames],
            )
            for mailbox_id, _ in renames:
                self._changed_mailbox(account_id, mailbox_id)

        await self._write(op)

    async def subscribe(self, account_id: int, name: str) -> None:
        mname = _mailbox_name(name)

        def op(conn: sqlite3.Connection) -> None:
            if not conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise NotFound("no such account")
            count = conn.execute(
                "SELECT count(*) FROM subscriptions WHERE account_id = ?", (account_id,)
            ).fetchone()[0]
            if count >= MAX_SUBSCRIPTIONS:
                raise StoreError("too many subscriptions")
            conn.execute(
                "INSERT OR IGNORE INTO subscriptions (account_id, name) VALUES (?, ?)",
                (account_id, mname),
            )

        await self._write(op)

    async def unsubscribe(self, account_id: int, name: str) -> None:
        try:
            mname = _mailbox_name(name)
        except StoreError:
            raise NotFound("not subscribed") from None

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM subscriptions WHERE account_id = ? AND name = ?", (account_id, mname)
            )
            if cur.rowcount != 1:
                raise NotFound("not subscribed")

        await self._write(op)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        def q(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM subscriptions WHERE account_id = ? ORDER BY name", (account_id,)
            )
            return [r[0] for r in rows]

        return await self._read(q)

    async def mailbox_status(self, account_id: int, name: str) -> MailboxStatus:
        mname = _mailbox_name(name)

        def q(conn: sqlite3.Connection) -> MailboxStatus:
            row = conn.execute(
                f"SELECT {_MAILBOX_COLS}, recent_uid, size_bytes FROM mailboxes"  # noqa: S608 - constant column list
                " WHERE account_id = ? AND name = ?",
                (account_id, mname),
            ).fetchone()
            if row is None:
                raise NotFound("no such mailbox")
            mb = _mailbox(row)
            # Each count is one indexed search (partial indexes of migration 0002).
            unseen, first_unseen = conn.execute(
                "SELECT count(*), coalesce(min(uid), 0) FROM messages"
                " WHERE mailbox_id = ? AND seen = 0",
                (mb.id,),
            ).fetchone()
            deleted = conn.execute(
                "SELECT count(*) FROM messages WHERE mailbox_id = ? AND deleted = 1", (mb.id,)
            ).fetchone()[0]
            recent = conn.execute(
                "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid > ?", (mb.id, row[8])
            ).fetchone()[0]
            return MailboxStatus(
                mailbox=mb,
                unseen=unseen,
                deleted=deleted,
                size=row[9],
                recent=recent,
                first_unseen_uid=first_unseen,
            )

        return await self._read(q)

    async def mark_recent(self, account_id: int, mailbox_id: int) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT recent_uid, uidnext FROM mailboxes WHERE id = ? AND account_id = ?",
                (mailbox_id, account_id),
            ).fetchone()
            if row is None:
                raise NotFound("no such mailbox")
            old, uidnext = int(row[0]), int(row[1])
            if old != uidnext - 1:  # nothing written (no sync) when nothing arrived
                conn.execute(
                    "UPDATE mailboxes SET recent_uid = ? WHERE id = ?", (uidnext - 1, mailbox_id)
                )
            return old

        return await self._write(op)

    async def list_uids(self, account_id: int, mailbox_id: int) -> list[int]:
        def q(conn: sqlite3.Connection) -> list[int]:
            _owned_mailbox(conn, account_id, mailbox_id)
            rows = conn.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? ORDER BY uid", (mailbox_id,)
            ).fetchall()
            return [r[0] for r in rows]

        return await self._read(q)

    async def fetch_info(
        self, account_id: int, mailbox_id: int, uid_ranges: Sequence[tuple[int, int]]
    ) -> list[MessageInfo]:
        def q(conn: sqlite3.Connection) -> list[MessageInfo]:
            _owned_mailbox(conn, account_id, mailbox_id)
            return _infos(mailbox_id, _messages_in(conn, mailbox_id, _merge_ranges(uid_ranges)))

        return await self._read(q)

    async def read_blob(self, blob_id: str, offset: int = 0, length: int = -1) -> bytes:
        self._check_open()
        if offset < 0 or length < -1:
            raise StoreError("invalid byte range")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._read_pool, self._read_blob_range, blob_id, offset, length
        )

    async def read_blobs(
        self, blob_ids: Sequence[str], *, header_only: bool = False
    ) -> list[bytes]:
        self._check_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._read_pool, self._read_many, list(blob_ids), header_only
        )

    def _read_many(self, blob_ids: list[str], header_only: bool) -> list[bytes]:
        out: list[bytes] = []
        for blob_id in blob_ids:
            try:
                fd = os.open(self.blobs.path(blob_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (StoreError, OSError):
                out.append(b"")
                continue
            with os.fdopen(fd, "rb", buffering=0) as f:
                out.append(_read_header_section(f) if header_only else f.read())
        return out

    def _read_blob_range(self, blob_id: str, offset: int, length: int) -> bytes:
        try:
            path = self.blobs.path(blob_id)
        except StoreError:
            raise NotFound("no such message") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("no such message") from None
        except OSError as exc:
            raise StoreError(f"cannot read message: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            want = max(0, size - offset) if length < 0 else min(length, max(0, size - offset))
            parts: list[bytes] = []
            pos = offset
            while want > 0:
                chunk = os.pread(fd, min(want, 1 << 20), pos)
                if not chunk:
                    break
                parts.append(chunk)
                pos += len(chunk)
                want -= len(chunk)
            return b"".join(parts)
        except OSError as exc:
            raise StoreError(f"cannot read message: {exc.strerror}") from exc
        finally:
            os.close(fd)

    async def store_flags(
        self,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int],
        mode: FlagMode,
        flags: frozenset[str],
        unchangedsince: int | None = None,
    ) -> FlagUpdate:
        fmode = FlagMode(mode)
        wanted = _clean_flags(flags)

        def op(conn: sqlite3.Connection) -> FlagUpdate:
            _owned_mailbox(conn, account_id, mailbox_id)
            rows = _messages_in(conn, mailbox_id, _uid_ranges(uids))
            to_change: list[tuple[tuple[Any, ...], str]] = []
            unchanged: list[MessageInfo] = []
            modified: list[int] = []
            for r in rows:
                if unchangedsince is not None and r[5] > unchangedsince:
                    modified.append(r[1])  # RFC 7162 3.1.3: refused, reported MODIFIED
                    continue
                cur = _flag_keys(r[4])
                if fmode is FlagMode.ADD:
                    new = {**wanted, **cur}
                elif fmode is FlagMode.REMOVE:
                    new = {k: v for k, v in cur.items() if k not in wanted}
                else:
                    new = wanted
                if new.keys() == cur.keys():
                    unchanged.append(_info(mailbox_id, r))
                    continue
                if len(new) > MAX_FLAGS:
                    raise StoreError("too many flags on a message")
                to_change.append((r, " ".join(sorted(new.values()))))
            changed: list[MessageInfo] = []
            if to_change:
                modseq = _bump(conn, mailbox_id)
                conn.executemany(
                    "UPDATE messages SET flags = ?, modseq = ? WHERE id = ?",
                    [(text, modseq, r[0]) for r, text in to_change],
                )
                changed = [
                    dataclasses.replace(
                        _info(mailbox_id, r), flags=frozenset(text.split()), modseq=modseq
                    )
                    for r, text in to_change
                ]
                self._changed_mailbox(account_id, mailbox_id)
            return FlagUpdate(changed=changed, unchanged=unchanged, modified=modified)

        return await self._write(op)

    async def copy_messages(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult:
        dname = _mailbox_name(dest)
        return await self._write(
            lambda conn: self._copy(conn, account_id, mailbox_id, uids, dname, move=False)
        )

    async def move_messages(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult:
        dname = _mailbox_name(dest)
        return await self._write(
            lambda conn: self._copy(conn, account_id, mailbox_id, uids, dname, move=True)
        )

    def _copy(
        self,
        conn: sqlite3.Connection,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int],
        dname: str,
        *,
        move: bool,
    ) -> CopyResult:
        """COPY / MOVE on the writer thread: one transaction, blobs shared."""
        _owned_mailbox(conn, account_id, mailbox_id)
        row = conn.execute(
            f"SELECT {_MAILBOX_COLS} FROM mailboxes"  # noqa: S608 - constant column list
            " WHERE account_id = ? AND name = ?",
            (account_id, dname),
        ).fetchone()
        if row is None:
            raise NotFound("no such mailbox")
        dst = _mailbox(row)
        rows = _messages_in(conn, mailbox_id, _uid_ranges(uids))
        if not rows:
            return CopyResult(uidvalidity=dst.uidvalidity, pairs=[])
        total = sum(r[2] for r in rows)
        if not move:
            used, limit = conn.execute(
                "SELECT used_bytes, quota_bytes FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            if limit and used + total > limit:
                raise OverQuota("mailbox quota exceeded")
            _add_used(conn, account_id, total)
        first = dst.uidnext
        if first + len(rows) - 1 > _UID_MAX:
            raise StoreError("mailbox has run out of UIDs")
        dst_modseq = _bump(conn, dst.id, count=len(rows), size=total, uids=len(rows))
        pairs = [(r[1], first + i) for i, r in enumerate(rows)]
        conn.executemany(
            "INSERT INTO messages (mailbox_id, uid, blob_id, size, internal_date, flags,"
            " modseq) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(dst.id, first + i, r[6], r[2], r[3], r[4], dst_modseq) for i, r in enumerate(rows)],
        )
        self._changed_mailbox(account_id, dst.id)
        src_modseq = 0
        if move:
            # RFC 6851: the sources go in the same transaction, with tombstones.
            src_modseq = _bump(
                conn, mailbox_id, count=-len(rows), size=-total, modseq=int(dst.id != mailbox_id)
            )
            _remove_messages(conn, mailbox_id, rows, src_modseq)
            self._changed_mailbox(account_id, mailbox_id)
        return CopyResult(uidvalidity=dst.uidvalidity, pairs=pairs, expunge_modseq=src_modseq)

    async def expunge(
        self,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int] | None = None,
        *,
        only_deleted: bool = True,
    ) -> list[int]:
        if uids is None and not only_deleted:
            raise StoreError("expunge without only_deleted needs the uids")

        def op(conn: sqlite3.Connection) -> tuple[list[int], list[str]]:
            _owned_mailbox(conn, account_id, mailbox_id)
            if uids is None:
                rows = conn.execute(
                    f"SELECT {_MSG_COLS} FROM messages"  # noqa: S608 - constant column list
                    " WHERE mailbox_id = ? AND deleted = 1 ORDER BY uid",
                    (mailbox_id,),
                ).fetchall()
            else:
                rows = _messages_in(conn, mailbox_id, _uid_ranges(uids))
                if only_deleted:
                    rows = [r for r in rows if "\\Deleted" in r[4].split()]
            if not rows:
                return [], []
            total = sum(r[2] for r in rows)
            modseq = _bump(conn, mailbox_id, count=-len(rows), size=-total)
            _remove_messages(conn, mailbox_id, rows, modseq)
            _add_used(conn, account_id, -total)
            self._changed_mailbox(account_id, mailbox_id)
            gone = _drop_unreferenced_blobs(conn, sorted({r[6] for r in rows}))
            return [r[1] for r in rows], gone

        removed, gone = await self._write(op)
        await self._unlink_blobs(gone)
        return removed

    async def changes_since(self, account_id: int, mailbox_id: int, since: int) -> MailboxChanges:
        def q(conn: sqlite3.Connection) -> MailboxChanges:
            mb = _owned_mailbox(conn, account_id, mailbox_id)
            # Found by the modseq index, sorted here: cheaper than SQLite's temporary
            # b-tree when much changed (a first sync), and nothing when little did.
            rows = conn.execute(
                f"SELECT {_MSG_COLS} FROM messages"  # noqa: S608 - constant column list
                " WHERE mailbox_id = ? AND modseq > ?",
                (mailbox_id, since),
            ).fetchall()
            rows.sort(key=_by_uid)
            gone = sorted(
                r[0]
                for r in conn.execute(
                    "SELECT uid FROM expunged WHERE mailbox_id = ? AND modseq > ?",
                    (mailbox_id, since),
                )
            )
            return MailboxChanges(
                highestmodseq=mb.highestmodseq,
                uidnext=mb.uidnext,
                changed=_infos(mailbox_id, rows),
                expunged=gone,
            )

        return await self._read(q)

    async def get_quota(self, account_id: int) -> Quota:
        def q(conn: sqlite3.Connection) -> Quota:
            row = conn.execute(
                "SELECT used_bytes, quota_bytes FROM accounts WHERE id = ?", (account_id,)
            ).fetchone()
            if row is None:
                raise NotFound("no such account")
            return Quota(used=row[0], limit=row[1])

        return await self._read(q)

    async def set_quota(self, address: str, limit: int) -> None:
        addr = canonical_address(address)
        if not 0 <= limit <= _MAX_QUOTA:
            raise StoreError("invalid quota")

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE accounts SET quota_bytes = ? WHERE address = ?", (int(limit), addr)
            )
            if cur.rowcount != 1:
                raise NotFound(f"no account {addr}")

        await self._write(op)

    def watch(self, account_id: int, callback: Callable[[int], None]) -> Callable[[], None]:
        """Must be called from the event loop the callback is to run on."""
        loop = asyncio.get_running_loop()
        token = next(self._watch_tokens)
        with self._watch_lock:
            self._watchers.setdefault(account_id, {})[token] = (loop, callback)

        def unwatch() -> None:
            with self._watch_lock:
                mine = self._watchers.get(account_id)
                if mine is not None:
                    mine.pop(token, None)
                    if not mine:
                        del self._watchers[account_id]

        return unwatch

    # ---- queue ------------------------------------------------------------------

    async def list_queue(self) -> list[QueueEntry]:
        def q(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                f"SELECT {_QUEUE_COLS} FROM queue ORDER BY id"  # noqa: S608 - constant
            )
            return [_queue_entry(r) for r in rows]

        return await self._read(q)

    async def get_queue_entry(self, entry_id: int) -> QueueEntry | None:
        def q(conn: sqlite3.Connection) -> QueueEntry | None:
            row = conn.execute(
                f"SELECT {_QUEUE_COLS} FROM queue WHERE id = ?",  # noqa: S608 - constant
                (entry_id,),
            ).fetchone()
            return None if row is None else _queue_entry(row)

        return await self._read(q)

    async def claim_queue(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[QueueEntry]:
        if not owner:
            raise StoreError("a queue claim needs an owner")

        def op(conn: sqlite3.Connection) -> list[QueueEntry]:
            # One statement: the inner SELECT picks due entries through the indexes
            # (queue_due for queued/deferred, queue_lease for expired claims).
            rows = conn.execute(
                "UPDATE queue SET state = 'delivering', owner = ?, lease_until = ?,"  # noqa: S608
                " attempts = attempts + 1, last_attempt = ?"
                " WHERE id IN (SELECT id FROM ("
                "  SELECT id, next_attempt AS due FROM queue"
                "   WHERE state = 'queued' AND next_attempt <= ?"
                "  UNION ALL SELECT id, next_attempt FROM queue"
                "   WHERE state = 'deferred' AND next_attempt <= ?"
                "  UNION ALL SELECT id, lease_until FROM queue"
                "   WHERE state = 'delivering' AND lease_until <= ?"
                " ) ORDER BY due, id LIMIT ?)"
                f" RETURNING {_QUEUE_COLS}",
                (owner, lease_until, now, now, now, now, max(0, limit)),
            ).fetchall()
            return sorted((_queue_entry(r) for r in rows), key=lambda e: (e.next_attempt, e.id))

        return await self._write(op)

    async def renew_queue_claims(self, owner: str, lease_until: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE queue SET lease_until = ? WHERE state = 'delivering' AND owner = ?",
                (lease_until, owner),
            )
            return cur.rowcount

        return await self._write(op)

    async def requeue_claims(self, owner_prefix: str, keep: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE queue SET state = 'queued', owner = '', lease_until = 0"
                " WHERE state = 'delivering' AND substr(owner, 1, ?) = ? AND owner != ?",
                (len(owner_prefix), owner_prefix, keep),
            )
            return cur.rowcount

        return await self._write(op)

    async def update_queue(self, owner: str, updates: Sequence[QueueUpdate]) -> list[int]:
        for u in updates:
            if u.state is QueueState.DELIVERING:
                raise StoreError("an outcome cannot be 'delivering'")

        def op(conn: sqlite3.Connection) -> tuple[list[int], list[str]]:
            done: list[int] = []
            blobs: list[str] = []
            for u in updates:
                held = " WHERE id = ? AND state = 'delivering' AND owner = ?"
                if u.state in (QueueState.DELIVERED, QueueState.FAILED):
                    row = conn.execute(
                        "DELETE FROM queue" + held + " RETURNING blob_id",  # noqa: S608
                        (u.id, owner),
                    ).fetchone()
                    if row is not None:
                        blobs.append(row[0])
                else:
                    row = conn.execute(
                        "UPDATE queue SET state = ?, next_attempt = ?, last_error = ?,"  # noqa: S608
                        " warned = max(warned, ?), owner = '', lease_until = 0"
                        + held
                        + " RETURNING id",
                        (u.state.value, u.next_attempt, u.error[:1000], int(u.warned), u.id, owner),
                    ).fetchone()
                if row is not None:
                    done.append(u.id)
            return done, _drop_unreferenced_blobs(conn, sorted(set(blobs)))

        done, gone = await self._write(op)
        await self._unlink_blobs(gone)
        return done

    async def next_queue_due(self) -> float | None:
        def q(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(due) FROM ("
                " SELECT min(next_attempt) AS due FROM queue WHERE state = 'queued'"
                " UNION ALL SELECT min(next_attempt) FROM queue WHERE state = 'deferred'"
                " UNION ALL SELECT min(lease_until) FROM queue WHERE state = 'delivering')"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._lookup(q)

    async def retry_queue_entry(self, entry_id: int, now: float) -> QueueEntry:
        def op(conn: sqlite3.Connection) -> QueueEntry:
            _queue_row_not_delivering(conn, entry_id)
            row = conn.execute(
                "UPDATE queue SET state = 'queued', next_attempt = ? WHERE id = ?"  # noqa: S608
                f" RETURNING {_QUEUE_COLS}",
                (now, entry_id),
            ).fetchone()
            return _queue_entry(row)

        return await self._write(op)

    async def delete_queue_entry(self, entry_id: int) -> QueueEntry:
        def op(conn: sqlite3.Connection) -> tuple[QueueEntry, list[str]]:
            _queue_row_not_delivering(conn, entry_id)
            row = conn.execute(
                f"DELETE FROM queue WHERE id = ? RETURNING {_QUEUE_COLS}",  # noqa: S608
                (entry_id,),
            ).fetchone()
            entry = _queue_entry(row)
            return entry, _drop_unreferenced_blobs(conn, [entry.blob_id])

        entry, gone = await self._write(op)
        await self._unlink_blobs(gone)
        return entry

    # ---- maintenance (not in the Protocol) ----------------------------------------

    # ---- quarantine -------------------------------------------------------------

    async def list_quarantine(self) -> list[QuarantinedMessage]:
        def q(conn: sqlite3.Connection) -> list[QuarantinedMessage]:
            rows = conn.execute(f"SELECT {_QUARANTINE_COLS} FROM quarantine ORDER BY id")  # noqa: S608 - constant column list
            return [_quarantined(r) for r in rows]

        return await self._read(q)

    async def get_quarantined(self, quarantine_id: int) -> QuarantinedMessage:
        def q(conn: sqlite3.Connection) -> QuarantinedMessage:
            row = conn.execute(
                f"SELECT {_QUARANTINE_COLS} FROM quarantine WHERE id = ?",  # noqa: S608 - constant column list
                (quarantine_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no quarantined message {quarantine_id}")
            return _quarantined(row)

        return await self._read(q)

    async def release_quarantined(self, quarantine_id: int) -> DeliveryReceipt:
        def op(conn: sqlite3.Connection) -> DeliveryReceipt:
            row = conn.execute(
                "SELECT blob_id, sender, targets, size FROM quarantine WHERE id = ?",
                (quarantine_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no quarantined message {quarantine_id}")
            blob_id, sender, targets_json, size = row
            targets = json.loads(targets_json)
            local: list[tuple[LocalTarget, str]] = []
            for account_id, mailbox, flags in targets["local"]:
                if not conn.execute(
                    "SELECT 1 FROM accounts WHERE id = ?", (account_id,)
                ).fetchone():
                    continue  # the account was deleted meanwhile
                if not _mailbox_exists(conn, account_id, mailbox):
                    mailbox = "INBOX"
                local.append((LocalTarget(account_id, mailbox), _flags_text(flags)))
            receipt = self._insert_targets(
                conn,
                blob_id,
                size,
                float(targets.get("internal_date") or time.time()),
                sender,
                local,
                targets["outbound"],
                time.time(),
            )
            conn.execute("DELETE FROM quarantine WHERE id = ?", (quarantine_id,))
            for (target, _flags), (mailbox_id, _uid) in zip(local, receipt.stored, strict=True):
                self._changed_mailbox(target.account_id, mailbox_id)
            return receipt

        return await self._write(op)

    async def delete_quarantined(self, quarantine_id: int) -> None:
        def op(conn: sqlite3.Connection) -> list[str]:
            row = conn.execute(
                "DELETE FROM quarantine WHERE id = ? RETURNING blob_id", (quarantine_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no quarantined message {quarantine_id}")
            return _drop_unreferenced_blobs(conn, [row[0]])

        await self._unlink_blobs(await self._write(op))

    # ---- Bayes spam filter (spam/bayes.py; migration 0005) ----------------------------

    async def bayes_counts(self, account_id: int, tokens: Sequence[int]) -> BayesCounts:
        wanted = _bayes_token_list(tokens)

        def q(conn: sqlite3.Connection) -> BayesCounts:
            row = conn.execute(
                "SELECT spam, ham FROM bayes_totals WHERE account_id = ?", (account_id,)
            ).fetchone()
            if row is None:
                return BayesCounts(0, 0, {})
            found: dict[int, tuple[int, int]] = {}
            for i in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[i : i + _SQL_CHUNK]
                marks = ", ".join("?" * len(chunk))
                for token, spam, ham in conn.execute(
                    "SELECT token, spam, ham FROM bayes_tokens"  # noqa: S608 - only "?" marks
                    f" WHERE account_id = ? AND token IN ({marks})",
                    [account_id, *chunk],
                ):
                    found[token] = (spam, ham)
            return BayesCounts(int(row[0]), int(row[1]), found)

        return await self._read(q)

    async def bayes_train(
        self, account_id: int, message_key: str, tokens: Sequence[int], spam: bool | None
    ) -> bool:
        if (
            not isinstance(message_key, str)
            or not 0 < len(message_key) <= 255
            or any(ord(c) < 0x21 or c == "\x7f" for c in message_key)
        ):
            raise StoreError("invalid message key")
        new = [] if spam is None else _bayes_token_list(tokens)

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT id, spam, tokens FROM bayes_trained WHERE account_id = ?"
                " AND message_key = ?",
                (account_id, message_key),
            ).fetchone()
            if row is not None and (spam is None or bool(row[1]) != spam):
                # Forget, or move to the other class: take back exactly what it added.
                _bayes_count(conn, account_id, _bayes_unpack(row[2]), spam=bool(row[1]), add=False)
            if spam is None:
                if row is None:
                    return False
                conn.execute("DELETE FROM bayes_trained WHERE id = ?", (row[0],))
                return True
            if row is not None and bool(row[1]) == spam:
                return False
            if row is None:
                exists = conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,))
                if exists.fetchone() is None:
                    raise NotFound("no such account")
            _bayes_count(conn, account_id, new, spam=spam, add=True)
            conn.execute(
                "INSERT INTO bayes_trained (account_id, message_key, spam, tokens, trained)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account_id, message_key) DO UPDATE"
                " SET spam = excluded.spam, tokens = excluded.tokens, trained = excluded.trained",
                (account_id, message_key, int(spam), _bayes_pack(new), time.time()),
            )
            return True

        return await self._write(op)

    # ---- Abuse limits (pipeline/abuse; migration 0006) --------------------------------

    async def sending_counts(self, account_id: int, since: float) -> SendingCounts:
        def q(conn: sqlite3.Connection) -> SendingCounts:
            row = conn.execute(
                "SELECT coalesce(sum(messages), 0), coalesce(sum(new_recipients), 0)"
                " FROM sending_counts WHERE account_id = ? AND hour >= ?",
                (account_id, _hour(since)),
            ).fetchone()
            return SendingCounts(messages=int(row[0]), new_recipients=int(row[1]))

        return await self._lookup(q)

    async def new_recipients(self, account_id: int, addresses: Sequence[str]) -> set[str]:
        wanted = _sending_recipients(addresses)
        if not wanted:
            return set()

        def q(conn: sqlite3.Connection) -> set[str]:
            marks = ",".join("?" * len(wanted))
            known = {
                r[0]
                for r in conn.execute(
                    "SELECT recipient FROM sent_recipients"  # noqa: S608 - only "?" marks
                    f" WHERE account_id = ? AND recipient IN ({marks})",
                    (account_id, *wanted),
                )
            }
            return set(wanted) - known

        return await self._lookup(q)

    async def record_sending(self, account_id: int, at: float, recipients: Sequence[str]) -> int:
        wanted = _sending_recipients(recipients)

        def op(conn: sqlite3.Connection) -> int:
            if not conn.execute("SELECT 1 FROM accounts WHERE id = ?", (account_id,)).fetchone():
                raise NotFound("no such account")
            new = 0
            for recipient in wanted:
                new += conn.execute(
                    "INSERT OR IGNORE INTO sent_recipients (account_id, recipient, first_sent)"
                    " VALUES (?, ?, ?)",
                    (account_id, recipient, at),
                ).rowcount
            hour = _hour(at)
            conn.execute(
                "INSERT INTO sending_counts (account_id, hour, messages, new_recipients)"
                " VALUES (?, ?, 1, ?) ON CONFLICT (account_id, hour) DO UPDATE SET"
                " messages = messages + 1,"
                " new_recipients = new_recipients + excluded.new_recipients",
                (account_id, hour, new),
            )
            conn.execute(
                "DELETE FROM sending_counts WHERE account_id = ? AND hour < ?",
                (account_id, hour - _SENDING_KEEP_HOURS),
            )
            return new

        return await self._write(op)

    async def greylist_entry(
        self, network: str, sender: str, recipient: str
    ) -> GreylistEntry | None:
        def q(conn: sqlite3.Connection) -> GreylistEntry | None:
            row = conn.execute(
                "SELECT network, sender, recipient, account_id, first_seen, last_seen, passed"
                " FROM greylist WHERE network = ? AND sender = ? AND recipient = ?",
                (network, sender, recipient),
            ).fetchone()
            if row is None:
                return None
            return GreylistEntry(
                network=row[0],
                sender=row[1],
                recipient=row[2],
                account_id=row[3],
                first_seen=row[4],
                last_seen=row[5],
                passed=bool(row[6]),
            )

        return await self._lookup(q)

    async def save_greylist_entry(self, entry: GreylistEntry) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if not conn.execute(
                "SELECT 1 FROM accounts WHERE id = ?", (entry.account_id,)
            ).fetchone():
                raise NotFound("no such account")
            conn.execute(
                "INSERT OR REPLACE INTO greylist (network, sender, recipient, account_id,"
                " first_seen, last_seen, passed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.network,
                    entry.sender,
                    entry.recipient,
                    entry.account_id,
                    float(entry.first_seen),
                    float(entry.last_seen),
                    int(entry.passed),
                ),
            )

        await self._write(op)

    async def prune_greylist(self, unpassed_before: float, passed_before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            removed = conn.execute(
                "DELETE FROM greylist WHERE passed = 0 AND first_seen < ?", (unpassed_before,)
            ).rowcount
            removed += conn.execute(
                "DELETE FROM greylist WHERE passed = 1 AND last_seen < ?", (passed_before,)
            ).rowcount
            return int(removed)

        return await self._write(op)

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


# ---- Abuse limits helpers (pipeline/abuse) ----------------------------------------------

_SENDING_KEEP_HOURS = 48  # sending_counts rows kept per account (the caps look back 24 h)


def _hour(t: float) -> int:
    return int(t // 3600)


def _sending_recipients(addresses: Sequence[str]) -> list[str]:
    wanted = sorted({canonical_address(a) for a in addresses})
    if len(wanted) > MAX_SENDING_RECIPIENTS:
        raise StoreError(f"more than {MAX_SENDING_RECIPIENTS} recipients")
    return wanted


# ---- Bayes spam filter helpers (bayes_counts / bayes_train) ---------------------------

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _bayes_token_list(tokens: Sequence[int]) -> list[int]:
    """The distinct tokens, in order; StoreError for a non-integer, one outside the
    signed 64-bit range, or more than MAX_BAYES_TOKENS of them."""
    out = list(dict.fromkeys(tokens))
    if len(out) > MAX_BAYES_TOKENS:
        raise StoreError(f"more than {MAX_BAYES_TOKENS} Bayes tokens")
    for token in out:
        if type(token) is not int or not _INT64_MIN <= token <= _INT64_MAX:
            raise StoreError("invalid Bayes token")
    return out


def _bayes_pack(tokens: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(tokens)}q", *tokens)


def _bayes_unpack(blob: bytes) -> list[int]:
    usable = len(blob) - len(blob) % 8
    return list(struct.unpack(f"<{usable // 8}q", blob[:usable]))


def _bayes_count(
    conn: sqlite3.Connection, account_id: int, tokens: Sequence[int], *, spam: bool, add: bool
) -> None:
    """Count one message of class `spam` with `tokens` in (add) or out (not add);
    counts stop at 0 and token rows left at 0 / 0 are deleted."""
    column = "spam" if spam else "ham"  # one of two fixed names, never input
    rows = [(account_id, t) for t in tokens]
    if add:
        conn.executemany(
            f"INSERT INTO bayes_tokens (account_id, token, {column}) VALUES (?, ?, 1)"  # noqa: S608
            f" ON CONFLICT (account_id, token) DO UPDATE SET {column} = {column} + 1",
            rows,
        )
        conn.execute(
            f"INSERT INTO bayes_totals (account_id, {column}) VALUES (?, 1)"  # noqa: S608
            f" ON CONFLICT (account_id) DO UPDATE SET {column} = {column} + 1",
            (account_id,),
        )
        return
    conn.executemany(
        f"UPDATE bayes_tokens SET {column} = max({column} - 1, 0)"  # noqa: S608
        " WHERE account_id = ? AND token = ?",
        rows,
    )
    conn.executemany(
        "DELETE FROM bayes_tokens WHERE account_id = ? AND token = ? AND spam = 0 AND ham = 0",
        rows,
    )
    conn.execute(
        f"UPDATE bayes_totals SET {column} = max({column} - 1, 0) WHERE account_id = ?",  # noqa: S608
        (account_id,),
    )


_QUARANTINE_COLS = "id, blob_id, sender, targets, check_name, reason, size, created"


def _quarantined(row: sqlite3.Row | tuple[Any, ...]) -> QuarantinedMessage:
    targets = json.loads(row[3])
    return QuarantinedMessage(
        id=row[0],
        blob_id=row[1],
        sender=row[2],
        local_accounts=[int(t[0]) for t in targets["local"]],
        outbound=list(targets["outbound"]),
        check=row[4],
        reason=row[5],
        size=row[6],
        created=row[7],
    )


_QUEUE_COLS = (
    "id, sender, recipient, blob_id, state, attempts, created, next_attempt, last_error,"
    " owner, lease_until, last_attempt, warned"
)


def _queue_entry(r: tuple[Any, ...]) -> QueueEntry:
    """A QueueEntry from a row of _QUEUE_COLS."""
    return QueueEntry(
        id=r[0],
        sender=r[1],
        recipient=r[2],
        blob_id=r[3],
        state=QueueState(r[4]),
        attempts=r[5],
        created=r[6],
        next_attempt=r[7],
        last_error=r[8],
        owner=r[9],
        lease_until=r[10],
        last_attempt=r[11],
        warned=bool(r[12]),
    )


def _queue_row_not_delivering(conn: sqlite3.Connection, entry_id: int) -> None:
    row = conn.execute("SELECT state FROM queue WHERE id = ?", (entry_id,)).fetchone()
    if row is None:
        raise NotFound(f"no queue entry {entry_id}")
    if row[0] == QueueState.DELIVERING.value:
        raise StoreError(f"queue entry {entry_id} is being delivered; try again shortly")


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


def _mailbox_exists(conn: sqlite3.Connection, account_id: int, name: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM mailboxes WHERE account_id = ? AND name = ?", (account_id, name)
        ).fetchone()
        is not None
    )


def _owned_mailbox(conn: sqlite3.Connection, account_id: int, mailbox_id: int) -> Mailbox:
    """The mailbox `mailbox_id` if it belongs to `account_id`; NotFound otherwise, the
    same answer as for a mailbox that does not exist (DESIGN.md 3, walled off)."""
    row = conn.execute(
        f"SELECT {_MAILBOX_COLS} FROM mailboxes"  # noqa: S608 - constant column list
        " WHERE id = ? AND account_id = ?",
        (mailbox_id, account_id),
    ).fetchone()
    if row is None:
        raise NotFound("no such mailbox")
    return _mailbox(row)


def _messages_in(
    conn: sqlite3.Connection, mailbox_id: int, ranges: Sequence[tuple[int, int]]
) -> list[tuple[Any, ...]]:
    """Rows (_MSG_COLS) of the messages whose uid lies in one of `ranges` (sorted,
    merged: see _merge_ranges), ascending by uid. Few ranges: one indexed query each.
    Many: the uids themselves in bounded IN lists when the ranges cover little of their
    span, else one query over the span filtered here (so 1:* on a large mailbox or a
    long list of uids costs a handful of statements, never one per uid)."""
    if not ranges:
        return []
    by_range = (
        f"SELECT {_MSG_COLS} FROM messages"  # noqa: S608 - constant column list
        " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid"
    )
    if len(ranges) <= _FEW_RANGES:
        out: list[tuple[Any, ...]] = []
        for lo, hi in ranges:
            out += conn.execute(by_range, (mailbox_id, lo, hi)).fetchall()
        return out
    covered = sum(hi - lo + 1 for lo, hi in ranges)
    span = ranges[-1][1] - ranges[0][0] + 1
    if covered * 4 < span and covered <= 100 * _SQL_CHUNK:
        uids = [u for lo, hi in ranges for u in range(lo, hi + 1)]
        out = []
        for i in range(0, len(uids), _SQL_CHUNK):
            chunk = uids[i : i + _SQL_CHUNK]
            marks = ", ".join("?" * len(chunk))
            out += conn.execute(
                f"SELECT {_MSG_COLS} FROM messages"  # noqa: S608 - only "?" marks
                f" WHERE mailbox_id = ? AND uid IN ({marks}) ORDER BY uid",
                [mailbox_id, *chunk],
            ).fetchall()
        return out  # chunks are ascending and disjoint
    los = [lo for lo, _ in ranges]
    rows = conn.execute(by_range, (mailbox_id, ranges[0][0], ranges[-1][1])).fetchall()
    return [r for r in rows if r[1] <= ranges[bisect.bisect_right(los, r[1]) - 1][1]]


def _bump(
    conn: sqlite3.Connection,
    mailbox_id: int,
    *,
    count: int = 0,
    size: int = 0,
    uids: int = 0,
    modseq: int = 1,
) -> int:
    """Take a new modseq for the mailbox (RFC 7162: one per operation) and move its
    counters; returns the new highestmodseq."""
    row = conn.execute(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + ?,"
        " message_count = message_count + ?, size_bytes = size_bytes + ?,"
        " uidnext = uidnext + ? WHERE id = ? RETURNING highestmodseq",
        (modseq, count, size, uids, mailbox_id),
    ).fetchone()
    return int(row[0])


def _add_used(conn: sqlite3.Connection, account_id: int, delta: int) -> None:
    if delta:
        conn.execute(
            "UPDATE accounts SET used_bytes = used_bytes + ? WHERE id = ?", (delta, account_id)
        )


def _remove_messages(
    conn: sqlite3.Connection, mailbox_id: int, rows: Sequence[tuple[Any, ...]], modseq: int
) -> None:
    """Delete message rows (_MSG_COLS) and leave their tombstones (QRESYNC VANISHED).
    The caller moves the mailbox and account counters."""
    conn.executemany("DELETE FROM messages WHERE id = ?", [(r[0],) for r in rows])
    conn.executemany(
        "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES (?, ?, ?)",
        [(mailbox_id, r[1], modseq) for r in rows],
    )


def _rename_inbox(
    conn: sqlite3.Connection, inbox: Mailbox, recent_uid: int, size: int, new_name: str
) -> int:
    """RFC 9051 6.3.6: renaming INBOX moves its messages into a new mailbox (fresh
    UIDVALIDITY, the messages keep their uids) and leaves INBOX empty, with tombstones
    for what left; INBOX's inferiors stay. Returns the new mailbox's id."""
    new = _insert_mailbox(conn, inbox.account_id, new_name, SpecialUse.NONE)
    if inbox.message_count:
        modseq = _bump(conn, inbox.id, count=-inbox.message_count, size=-size)
        conn.execute(
            "INSERT INTO expunged (mailbox_id, uid, modseq)"
            " SELECT mailbox_id, uid, ? FROM messages WHERE mailbox_id = ?",
            (modseq, inbox.id),
        )
        conn.execute("UPDATE messages SET mailbox_id = ? WHERE mailbox_id = ?", (new.id, inbox.id))
        conn.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ?, message_count = ?,"
            " size_bytes = ?, recent_uid = ? WHERE id = ?",
            (inbox.uidnext, modseq, inbox.message_count, size, recent_uid, new.id),
        )
    return new.id


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
            " AND NOT EXISTS (SELECT 1 FROM quarantine WHERE blob_id = blobs.id)"
            " RETURNING id",
            chunk,
        ).fetchall()
        gone += [r[0] for r in rows]
    return gone
