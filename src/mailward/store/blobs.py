"""Immutable message blob files: naming, fan-out layout, batch durability, reads.

Layout: ``<root>/<2 hex>/<32 hex>``. A blob id is 128 random bits in hex (the ids of
one batch share their random 2-hex fan-out prefix, so a batch costs one directory
fsync), never derived from anything a client sends, and validated before it becomes a
path, so no command, name or id can reach a file outside the blob area (DESIGN.md 3).

Durability invariant (DESIGN.md 3/4): `BlobArea.ingest` takes a batch of spool files and
reports, per file, either its size or the error. A file reported ok is durable: its
bytes, its mode (0600) and its directory entry (and, for a fan-out directory created by
this batch, that directory's entry in the root) are on stable storage when `ingest`
returns. Only then may the caller commit index rows that reference it. A file reported
failed has been removed (its spool file or its half-ingested blob), as the store owns
every spool file handed to it.

How one batch is made durable (`SyncMode`, measured by bench/store_group_commit.py):
every spool file is renamed into place first, then

- ``FSYNC_POOL`` (default): fsync every file and every touched directory concurrently
  from a thread pool, so the filesystem journal coalesces them into a few commits;
- ``FSYNC_SERIAL``: the same fsyncs one after another (the reference);
- ``SYNCFS``: one syncfs(2) on the blob filesystem (Linux; its cost grows with
  unrelated dirty data on the same filesystem, hence not the default).

Renaming before syncing is safe because nothing references a blob until the caller's
database commit, which happens only after the sync succeeded; a crash in between
leaves at most an unreferenced file (see `BlobArea.orphans`).

Blob files are never modified after ingest; they are read whole by `read` and removed
by `remove` once no index row references them.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mailward.files import private_directory
from mailward.store.api import StoreError

FILE_MODE = 0o600
DIR_MODE = 0o700

_BLOB_ID = re.compile(r"[0-9a-f]{32}")


class SyncMode(enum.StrEnum):
    FSYNC_POOL = "fsync-pool"
    FSYNC_SERIAL = "fsync-serial"
    SYNCFS = "syncfs"


def _load_syncfs() -> Callable[[int], None]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syncfs  # AttributeError when the C library has no syncfs
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


class BlobArea:
    """The blob directory of one store. `ingest` is called by one thread at a time
    (the store's writer); `read`, `remove` and `path` are safe from any thread."""

    def __init__(
        self, root: Path, sync_mode: SyncMode = SyncMode.FSYNC_POOL, sync_workers: int = 16
    ) -> None:
        self.root = root
        self.sync_mode = SyncMode(sync_mode)
        self.sync_calls = 0  # fsync/syncfs system calls issued by ingest
        private_directory(root)
        self._known_dirs: set[str] = set()  # fan-out dirs whose entry is durable
        self._new_dirs: set[str] = set()  # used by the batch in progress, root not synced
        self._syncfs: Callable[[int], None] | None = None
        if self.sync_mode is SyncMode.SYNCFS:
            try:
                self._syncfs = _load_syncfs()
            except (OSError, AttributeError) as exc:
                raise StoreError("syncfs is not available on this system") from exc
        self._pool: ThreadPoolExecutor | None = None
        if self.sync_mode is SyncMode.FSYNC_POOL:
            self._pool = ThreadPoolExecutor(
                max_workers=max(1, sync_workers), thread_name_prefix="mailward-fsync"
            )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    @staticmethod
    def new_batch_ids(count: int) -> list[str]:
        """`count` fresh ids sharing one random fan-out prefix, so a batch touches a
        single directory and costs one directory fsync (ids keep 120 random bits)."""
        prefix = secrets.token_hex(1)
        return [prefix + secrets.token_hex(15) for _ in range(count)]

    def path(self, blob_id: str) -> Path:
        """The file of `blob_id`; raises StoreError for anything not a blob id."""
        if not _BLOB_ID.fullmatch(blob_id):
            raise StoreError("invalid blob id")
        return self.root / blob_id[:2] / blob_id

    def read(self, blob_id: str) -> bytes:
        path = self.path(blob_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise StoreError(f"blob {blob_id} is missing") from exc
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def remove(self, blob_id: str) -> None:
        """Unlink a blob file (no directory fsync: losing an unlink only leaves an
        orphan, which `orphans` finds)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(blob_id).unlink()

    def orphans(self, referenced: Callable[[str], bool]) -> Iterator[str]:
        """Blob ids whose file exists but for which `referenced(id)` is false, e.g.
        left by a crash between ingest and the database commit."""
        for sub in sorted(self.root.iterdir()):
            if not (sub.is_dir() and re.fullmatch(r"[0-9a-f]{2}", sub.name)):
                continue
            for f in sorted(sub.iterdir()):
                ok = _BLOB_ID.fullmatch(f.name) and f.name[:2] == sub.name
                if ok and not referenced(f.name):
                    yield f.name

    def ingest(self, items: Sequence[tuple[Path, str]]) -> list[int | StoreError]:
        """Move each (spool file, new blob id) into place and make the batch durable.

        Returns, in order, the file's size or the StoreError that failed it; see the
        module docstring for what "ok" guarantees."""
        results: list[int | StoreError] = [StoreError("not processed")] * len(items)
        fds: dict[int, int] = {}  # item index -> open fd of the (renamed) file
        dirs: dict[Path, list[int]] = {}  # touched dir -> item indexes that need it
        try:
            for i, (spool, blob_id) in enumerate(items):
                try:
                    target = self.path(blob_id)
                    fd = os.open(spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    results[i] = StoreError("spool file is missing")
                    continue
                except OSError as exc:
                    results[i] = StoreError(f"cannot open spool file: {exc.strerror}")
                    _unlink_quietly(spool)
                    continue
                except StoreError as exc:
                    results[i] = exc
                    _unlink_quietly(spool)
                    continue
                try:
                    st = os.fstat(fd)
                    if not stat.S_ISREG(st.st_mode):
                        raise StoreError("spool path is not a regular file")
                    if stat.S_IMODE(st.st_mode) != FILE_MODE:
                        os.fchmod(fd, FILE_MODE)
                    for d in self._fanout(target.parent):
                        dirs.setdefault(d, []).append(i)
                    os.rename(spool, target)
                except (OSError, StoreError) as exc:
                    os.close(fd)
                    results[i] = _as_store_error(exc, "cannot move spool file")
                    _unlink_quietly(spool)
                    continue
                fds[i] = fd
                results[i] = st.st_size
                dirs.setdefault(target.parent, []).append(i)
            if fds:
                root_ok = self._make_durable(fds, dirs, results)
                if root_ok:
                    self._known_dirs |= self._new_dirs
            self._new_dirs.clear()
        finally:
            for fd in fds.values():
                os.close(fd)
        for i, res in enumerate(results):
            if isinstance(res, StoreError) and i in fds:
                _unlink_quietly(self.path(items[i][1]))
        return results

    def _fanout(self, d: Path) -> list[Path]:
        """Create fan-out dir `d` if needed; returns the dirs whose entries must be
        fsync'd with this batch. The root is synced on the first use of each fan-out
        dir by this process, even if it already existed: an earlier process may have
        been killed between its mkdir and its fsync of the root."""
        if d.name in self._known_dirs:
            return []
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=DIR_MODE)
        if stat.S_IMODE(d.stat().st_mode) != DIR_MODE:
            d.chmod(DIR_MODE)
        self._new_dirs.add(d.name)
        return [self.root]

    def _make_durable(
        self,
        fds: dict[int, int],
        dirs: dict[Path, list[int]],
        results: list[int | StoreError],
    ) -> bool:
        """Sync the batch; returns whether the root directory is durable too."""
        root_ok = True

        def fail(idxs: Sequence[int], exc: BaseException, d: Path | None = None) -> None:
            nonlocal root_ok
            if d == self.root:
                root_ok = False
            for i in idxs:
                if i in fds:
                    results[i] = _as_store_error(exc, "cannot make message durable")

        if self._syncfs is not None:
            self.sync_calls += 1
            try:
                self._syncfs(next(iter(fds.values())))
            except OSError as exc:
                fail(list(fds), exc, self.root)
            return root_ok

        # Directory fds are opened here (cheap) so the sync jobs are uniform.
        dir_fds: dict[Path, int] = {}
        try:
            for d, idxs in dirs.items():
                try:
                    dir_fds[d] = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    fail(idxs, exc, d)
            jobs: list[tuple[int, list[int], Path | None]] = [
                (fd, [i], None) for i, fd in fds.items()
            ]
            jobs += [(fd, dirs[dp], dp) for dp, fd in dir_fds.items()]
            self.sync_calls += len(jobs)
            if self._pool is not None and len(jobs) > 1:
                futures = [(self._pool.submit(os.fsync, fd), ix, dp) for fd, ix, dp in jobs]
                for fut, idxs, dp in futures:
                    err = fut.exception()
                    if err is not None:
                        fail(idxs, err, dp)
            else:
                for fd, idxs, dp in jobs:
                    try:
                        os.fsync(fd)
                    except OSError as exc:
                        fail(idxs, exc, dp)
        finally:
            for fd in dir_fds.values():
                os.close(fd)
        return root_ok


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _as_store_error(exc: BaseException, what: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, OSError):
        detail = exc.strerror or errno.errorcode.get(exc.errno or 0, "I/O error")
        err = StoreError(f"{what}: {detail}")
    else:
        err = StoreError(what)
    err.__cause__ = exc
    return err
