"""Training each user's Bayes filter from what they do over IMAP.

A user's mail client says what is spam in two ways, and both train that user's
filter (spam/bayes.py):

- Moving mail: a message COPYed or MOVEd (RFC 6851) or APPENDed into a Junk mailbox
  (special-use \\Junk, RFC 6154, or named Junk / Spam) is trained as spam; one
  COPYed or MOVEd out of a Junk mailbox into anything but Trash (special-use
  \\Trash, or named Trash) is trained as ham. Deleting spam is not calling it ham.
- Keywords (RFC 5788 registry; Thunderbird and Apple Mail set them): STORE adding
  $Junk trains spam, adding $NotJunk trains ham; so does APPEND with either.

The message key is the blob id (copies share it, so a message trained once is not
trained again for being copied, and moving it back retrains it as the other class).

Invariants:

- Never on the reply path, never failing a command: the IMAP session calls a
  synchronous `on_*` method that only decides and queues; reading (at most
  `READ_LIMIT` octets of each message), tokenizing (in a worker thread) and the store
  write happen in a background task per event. Errors are logged, never raised.
- Bounded: at most `concurrency` events are worked on at once, and at most
  `max_pending` messages wait; beyond that an event's extra messages are dropped and
  logged (`spam.training_dropped`), so a user moving 100,000 messages at once costs a
  bounded amount of memory and store time, never the server.
- In order per account: events of one account are worked on one after another in
  the order the commands ran, so into-Junk-then-out-again ends as ham.
- The log names the account, the class and the count (`spam.trained`), never a
  message's content or subject.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from mailward.logs import EventLog
from mailward.spam.bayes import BayesFilter
from mailward.spam.tokens import message_tokens
from mailward.store.api import (
    FlagMode,
    Mailbox,
    MailStore,
    MessageInfo,
    NotFound,
    SpecialUse,
    StoreError,
)

__all__ = [
    "JUNK_KEYWORD",
    "NOT_JUNK_KEYWORD",
    "READ_LIMIT",
    "JunkTrainer",
    "is_junk",
    "is_trash",
]

READ_LIMIT = 512 * 1024  # octets of a message read for training
JUNK_KEYWORD = "$Junk"
NOT_JUNK_KEYWORD = "$NotJunk"
JUNK_NAMES = frozenset({"junk", "spam", "junk e-mail", "junk email"})
TRASH_NAMES = frozenset({"trash", "deleted items", "deleted messages"})
_FETCH_CHUNK = 500  # uids resolved to blob ids per store call


def is_junk(mailbox: Mailbox) -> bool:
    return mailbox.special_use == SpecialUse.JUNK or mailbox.name.casefold() in JUNK_NAMES


def is_trash(mailbox: Mailbox) -> bool:
    return mailbox.special_use == SpecialUse.TRASH or mailbox.name.casefold() in TRASH_NAMES


@dataclass(frozen=True, slots=True)
class _Event:
    account_id: int
    spam: bool | None  # None: decide once the source mailbox is known (a copy)
    blob_ids: Sequence[str] = ()  # messages known by blob id (STORE, APPEND)
    source_mailbox_id: int = 0  # copy: where the messages came from
    target: Mailbox | None = None  # copy: where they went (their uids there below)
    target_uids: Sequence[int] = ()

    @property
    def size(self) -> int:
        return len(self.blob_ids) + len(self.target_uids)


class JunkTrainer:
    """Turns IMAP commands into Bayes training, in the background (module doc)."""

    def __init__(
        self,
        store: MailStore,
        bayes: BayesFilter,
        log: EventLog,
        *,
        concurrency: int = 2,
        max_pending: int = 10_000,
        read_limit: int = READ_LIMIT,
    ) -> None:
        self.store = store
        self.bayes = bayes
        self.log = log
        self.max_pending = max_pending
        self.read_limit = read_limit
        self.pending = 0  # messages accepted and not yet worked through
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._tasks: set[asyncio.Task[None]] = set()
        self._accounts: dict[int, tuple[asyncio.Lock, int]] = {}  # lock, users
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    # ---- hooks (called by the IMAP session; synchronous, never raise) -----------------

    def on_copy(
        self,
        account_id: int,
        source_mailbox_id: int,
        target: Mailbox,
        target_uids: Sequence[int],
    ) -> None:
        """Messages were COPYed or MOVEd from `source_mailbox_id` into `target`, where
        they now have `target_uids`."""
        with self._guard():
            if not target_uids or source_mailbox_id == target.id:
                return
            if is_junk(target):
                spam: bool | None = True
            elif is_trash(target):
                return  # deleting is not judging
            else:
                spam = None  # ham if the source is a Junk mailbox: looked up later
            self._submit(
                _Event(
                    account_id,
                    spam,
                    source_mailbox_id=source_mailbox_id,
                    target=target,
                    target_uids=list(target_uids),
                )
            )

    def on_append(
        self, account_id: int, target: Mailbox, blob_id: str, flags: Iterable[str] = ()
    ) -> None:
        """A message was APPENDed into `target` with `flags`."""
        with self._guard():
            verdict = _keyword_verdict(flags)
            if verdict is None and is_junk(target):
                verdict = True
            if verdict is not None:
                self._submit(_Event(account_id, verdict, blob_ids=[blob_id]))

    def on_store(
        self,
        account_id: int,
        mode: FlagMode,
        flags: Iterable[str],
        changed: Sequence[MessageInfo],
    ) -> None:
        """A STORE changed the flags of `changed` (their new flags): adding $Junk
        trains spam, adding $NotJunk trains ham."""
        with self._guard():
            if mode == FlagMode.REMOVE or not changed:
                return
            verdict = _keyword_verdict(flags)
            if verdict is None:
                return
            keyword = (JUNK_KEYWORD if verdict else NOT_JUNK_KEYWORD).lower()
            blob_ids = [
                info.blob_id for info in changed if keyword in {f.lower() for f in info.flags}
            ]
            if blob_ids:
                self._submit(_Event(account_id, verdict, blob_ids=list(dict.fromkeys(blob_ids))))

    # ---- lifecycle -------------------------------------------------------------------

    async def wait_idle(self) -> None:
        """Return once every accepted event has been worked through (tests, shutdown)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop: pending training is abandoned (it is only ever an improvement)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.pending = 0  # a task cancelled before it ran never counted itself out
        self._accounts.clear()
        self._idle.set()

    # ---- internals -------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """A hook never fails the IMAP command it is called from."""
        try:
            yield
        except Exception as exc:
            self.log.error("spam.training_failed", error=exc.__class__.__name__)

    def _submit(self, event: _Event) -> None:
        if self._closed:
            return
        room = self.max_pending - self.pending
        size = event.size
        if room <= 0:
            self.log.warning(
                "spam.training_dropped",
                account_id=event.account_id,
                count=size,
                pending=self.pending,
            )
            return
        if size > room:
            self.log.warning(
                "spam.training_dropped",
                account_id=event.account_id,
                count=size - room,
                pending=self.pending,
            )
            event = _Event(
                event.account_id,
                event.spam,
                blob_ids=list(event.blob_ids)[:room],
                source_mailbox_id=event.source_mailbox_id,
                target=event.target,
                target_uids=list(event.target_uids)[: max(0, room - len(event.blob_ids))],
            )
            size = event.size
        self.pending += size
        self._idle.clear()
        lock, users = self._accounts.get(event.account_id, (asyncio.Lock(), 0))
        self._accounts[event.account_id] = (lock, users + 1)
        task = asyncio.get_running_loop().create_task(self._run(event, lock, size))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, event: _Event, lock: asyncio.Lock, size: int) -> None:
        try:
            async with lock, self._slots:
                await self._work(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error(
                "spam.training_failed",
                account_id=event.account_id,
                error=exc.__class__.__name__,
            )
        finally:
            self.pending -= size
            lock_now, users = self._accounts.get(event.account_id, (lock, 1))
            if users <= 1:
                self._accounts.pop(event.account_id, None)
            else:
                self._accounts[event.account_id] = (lock_now, users - 1)
            if self.pending <= 0:
                self.pending = 0
                self._idle.set()

    async def _work(self, event: _Event) -> None:
        spam = event.spam
        blob_ids = list(event.blob_ids)
        if event.target is not None and event.target_uids:
            if spam is None:
                source = await self._mailbox(event.account_id, event.source_mailbox_id)
                if source is None or not is_junk(source):
                    return  # an ordinary move between the user's own folders
                spam = False
            blob_ids += await self._blob_ids(event.account_id, event.target, event.target_uids)
        if spam is None or not blob_ids:
            return
        changed = skipped = 0
        for blob_id in dict.fromkeys(blob_ids):
            try:
                data = await self.store.read_blob(blob_id, 0, self.read_limit)
            except NotFound:
                skipped += 1  # expunged meanwhile
                continue
            tokens = await asyncio.to_thread(message_tokens, data)
            del data
            try:
                if await self.bayes.train(event.account_id, blob_id, tokens, spam=spam):
                    changed += 1
            except NotFound:
                return  # the account was deleted meanwhile
        self.log.info(
            "spam.trained",
            account_id=event.account_id,
            kind="spam" if spam else "ham",
            count=changed,
            unchanged=len(blob_ids) - changed - skipped,
            skipped=skipped,
        )

    async def _mailbox(self, account_id: int, mailbox_id: int) -> Mailbox | None:
        try:
            boxes = await self.store.list_mailboxes(account_id)
        except StoreError:
            return None
        return next((b for b in boxes if b.id == mailbox_id), None)

    async def _blob_ids(self, account_id: int, target: Mailbox, uids: Sequence[int]) -> list[str]:
        ordered = sorted(set(uids))
        out: list[str] = []
        for i in range(0, len(ordered), _FETCH_CHUNK):
            chunk = ordered[i : i + _FETCH_CHUNK]
            try:
                infos = await self.store.fetch_info(account_id, target.id, _ranges(chunk))
            except NotFound:
                break  # the mailbox is gone
            out += [info.blob_id for info in infos]
        return out


def _keyword_verdict(flags: Iterable[str]) -> bool | None:
    lowered = {f.lower() for f in flags}
    junk = JUNK_KEYWORD.lower() in lowered
    not_junk = NOT_JUNK_KEYWORD.lower() in lowered
    if junk == not_junk:
        return None  # neither, or a contradiction
    return junk


def _ranges(sorted_uids: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for uid in sorted_uids:
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out
