"""The asyncio shell around the sans-I/O POP3 core: one `Pop3Session` per connection.

RFC 1939 (POP3), RFC 2449 (CAPA), RFC 2595 4 (STLS), RFC 5034 (AUTH), RFC 8314
(implicit TLS on 995). It pumps bytes between the socket and `proto.pop3.Pop3Server`,
answers the core's decisions through the `Authenticator` and the store, streams
messages from the store in 256 KiB chunks, upgrades to TLS on STLS, and enforces the
autologout timer of RFC 1939 3 between commands.

Invariants:
- Maildrop lock (RFC 1939 4, 8): an account id is in `Pop3Services.maildrop_locks` while
  exactly one session of this process is in TRANSACTION for it; a second login gets
  [IN-USE] (RFC 2449 8.1.2). The session that added the id removes it on every exit path
  (QUIT, disconnect, timeout, error, shutdown), in `run()`'s `finally`, and before it
  sends its last response, so a client that saw "+OK" to QUIT can log in again at once.
- Snapshot: the message list is taken once, at login (INBOX only). Messages delivered
  later are not shown; a message expunged by IMAP meanwhile fails RETR with [SYS/TEMP].
- UPDATE (RFC 1939 6): only QUIT in TRANSACTION removes messages, with one
  `MailStore.expunge()` transaction; if it fails the client gets -ERR [SYS/TEMP] and
  nothing is removed. A dropped connection never removes anything. `interrupt()`
  never cancels a session while its expunge is in flight.
- RETR marks the message \\Seen (best effort, like Dovecot's default), so an IMAP
  client of the same account sees it as read; TOP does not.
- Memory per session does not grow with message size: at most one 256 KiB chunk (and
  its byte-stuffed copy) is held, and each is flushed (drained) before the next read.
- Logs name the session, peer and account, never a password or message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from mailward.auth import Authenticator
from mailward.logs import EventLog
from mailward.net.starttls import note_tls, start_tls
from mailward.pipeline.types import SessionInfo
from mailward.proto.pop3 import (
    SHUTTING_DOWN,
    CommandRefused,
    ConnectionClosed,
    Credentials,
    LoginRefusal,
    NeedData,
    Pop3Message,
    Pop3Server,
    Pop3Settings,
    Retrieve,
    StartTls,
    Update,
)
from mailward.store.api import (
    FlagMode,
    MailStore,
    MessageInfo,
    NotFound,
    StoreError,
    canonical_address,
)

__all__ = ["MESSAGE_CHUNK", "Pop3Services", "Pop3Session"]

READ_SIZE = 64 * 1024  # command input (lines are at most 255 octets)
MESSAGE_CHUNK = 256 * 1024  # message octets read from the store at a time
_SEEN = frozenset({"\\Seen"})


@dataclass(frozen=True, slots=True)
class Pop3Services:
    """What every POP3 session of the process shares; built once, not per connection."""

    hostname: str
    tls_context: ssl.SSLContext
    store: MailStore
    authenticator: Authenticator
    log: EventLog
    command_timeout: float  # RFC 1939 3 autologout: at least 600 s by default
    tls_handshake_timeout: float
    maildrop_locks: set[int]  # account ids with an open TRANSACTION, shared by all sessions


class Pop3Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        services: Pop3Services,
        *,
        implicit_tls: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self.svc = services
        self.log = services.log
        self.implicit_tls = implicit_tls
        self.core = Pop3Server(
            Pop3Settings(hostname=services.hostname, tls_available=True, tls_active=implicit_tls)
        )
        self.task: asyncio.Task[None] | None = None
        self.closing = False  # shutdown requested: close at the next command wait
        self.reading = False  # awaiting the client's next bytes
        self.in_update = False  # the UPDATE expunge is in flight: never cancel
        self.interrupt_requested = False
        self.locked_account: int | None = None
        self.mailbox_id = 0
        self.snapshot: list[MessageInfo] = []
        self.retrieved = 0
        self.removed = 0
        self.end_reason = "error"

    # --- lifecycle ----------------------------------------------------------------------

    def interrupt(self, *, force: bool) -> None:
        """Shutdown: close with "-ERR [SYS/TEMP] Server shutting down" where the session
        next waits for a command; with `force`, cancel whatever it is doing now (a
        message being sent is cut off) - but never the UPDATE state's expunge."""
        self.closing = True
        task = self.task
        if task is None or task.done() or self.in_update or self.interrupt_requested:
            return
        if force or (self.reading and self.core.phase in ("command", "auth")):
            self.interrupt_requested = True
            task.cancel()

    async def run(self) -> None:
        """The whole session. Client errors and lost connections end it quietly."""
        self.task = asyncio.current_task()
        if self.implicit_tls:
            self.note_tls()
        try:
            await self._run()
        except asyncio.CancelledError:
            if not self.interrupt_requested or self.task is None:
                raise
            # forced shutdown outside a command wait (a login, a message being sent)
            self.task.uncancel()
            self.end_reason = "shutdown"
            self._release_lock()
            self.core.close(SHUTTING_DOWN)  # the text only goes out at a command boundary
            with contextlib.suppress(Exception):
                await self._flush(timeout=1.0)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.end_reason = "connection lost"
            self.log.info(
                "pop3.connection_lost",
                session=self.info.session_id,
                error=type(exc).__name__,
                detail=str(exc),
            )
        finally:
            self._release_lock()
            with contextlib.suppress(Exception):
                self.writer.close()
            self.log.info(
                "pop3.end",
                session=self.info.session_id,
                ip=self.info.peer_ip,
                user=self.info.account_address,
                retrieved=self.retrieved,
                removed=self.removed,
                reason=self.end_reason,
            )

    async def _run(self) -> None:
        core = self.core
        while True:
            event = core.next_event()
            if isinstance(event, NeedData):
                await self._flush()
                await self._receive()
            elif isinstance(event, Retrieve):
                await self._retrieve(event)
            elif isinstance(event, Credentials):
                await self._login(event)
            elif isinstance(event, Update):
                await self._update(event)
            elif isinstance(event, StartTls):
                await self._start_tls()
            elif isinstance(event, CommandRefused):
                self.log.info(
                    "pop3.command.refused",
                    session=self.info.session_id,
                    ip=self.info.peer_ip,
                    command=event.command,
                    reason=event.reason,
                )
            elif isinstance(event, ConnectionClosed):
                self.end_reason = event.reason
                self._release_lock()  # before the last response: QUIT's "+OK" means free
                await self._flush()
                return

    # --- input and output ---------------------------------------------------------------

    async def _flush(self, timeout: float | None = None) -> None:
        out = self.core.data_to_send()
        if out:
            self.writer.write(out)
            # a client that stops reading is dropped like an idle one
            async with asyncio.timeout(timeout or self.svc.command_timeout):
                await self.writer.drain()

    async def _receive(self) -> None:
        core = self.core
        if self.closing and core.phase in ("command", "auth"):
            core.close(SHUTTING_DOWN)
            return
        self.reading = True
        try:
            async with asyncio.timeout(self.svc.command_timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            self.log.info(
                "limit.timeout",
                session=self.info.session_id,
                ip=self.info.peer_ip,
                protocol="pop3",
                phase=core.phase,
            )
            core.close()  # RFC 1939 3: autologout sends nothing and skips UPDATE
            return
        except asyncio.CancelledError:
            if not self.interrupt_requested or self.task is None:
                raise
            self.task.uncancel()
            self.interrupt_requested = False
            self.end_reason = "shutdown"
            core.close(SHUTTING_DOWN)
            return
        finally:
            self.reading = False
        if data:
            core.receive_data(data)
        else:
            core.receive_eof()

    async def _start_tls(self) -> None:
        await self._flush()
        await start_tls(
            self.reader,
            self.writer,
            self.svc.tls_context,
            timeout=self.svc.tls_handshake_timeout,
            info=self.info,
            log=self.log,
            protocol="pop3",
        )
        self.core.tls_established()

    def note_tls(self) -> None:
        note_tls(self.writer, self.info, self.log)

    # --- AUTHORIZATION: login, lock, snapshot (RFC 1939 4, 7, 8) --------------------------

    async def _login(self, event: Credentials) -> None:
        core = self.core
        if event.authzid and canonical_address(event.authzid) != canonical_address(event.username):
            core.refuse_login(LoginRefusal.FAILED)  # RFC 4616 2: no proxy authorisation
            return
        outcome = await self.svc.authenticator.authenticate(
            event.username,
            event.password,
            ip=self.info.peer_ip,
            protocol="pop3",
            mechanism=event.mechanism,
        )
        account = outcome.account
        if outcome.locked_out:
            core.refuse_login(LoginRefusal.LOCKED_OUT)
            return
        if account is None:
            core.refuse_login(LoginRefusal.FAILED)
            return
        locks = self.svc.maildrop_locks
        if account.id in locks:  # RFC 1939 4: an exclusive-access lock
            self.log.info(
                "pop3.maildrop_in_use", session=self.info.session_id, user=account.address
            )
            core.refuse_login(LoginRefusal.IN_USE)
            return
        locks.add(account.id)  # no await between the check and this: atomic here
        self.locked_account = account.id
        try:
            messages = await self._open_maildrop(account.id)
        except (StoreError, OSError) as exc:
            self.log.error(
                "pop3.maildrop_failed",
                session=self.info.session_id,
                user=account.address,
                error=str(exc),
            )
            self._release_lock()
            core.refuse_login(LoginRefusal.UNAVAILABLE)
            return
        self.info.account_id = account.id
        self.info.account_address = account.address
        core.accept_login(messages)
        self.log.info(
            "pop3.login",
            session=self.info.session_id,
            user=account.address,
            mechanism=event.mechanism,
            messages=len(messages),
        )

    async def _open_maildrop(self, account_id: int) -> list[Pop3Message]:
        store = self.svc.store
        mailbox = await store.get_mailbox(account_id, "INBOX")
        if mailbox is None:
            raise NotFound("no INBOX")
        uids = await store.list_uids(account_id, mailbox.id)
        infos = (
            await store.fetch_info(account_id, mailbox.id, [(uids[0], uids[-1])]) if uids else []
        )
        listed = set(uids)
        self.mailbox_id = mailbox.id
        self.snapshot = [i for i in infos if i.uid in listed]
        # RFC 1939 7: a unique-id that stays the same across sessions, 0x21-0x7E
        return [Pop3Message(i.size, f"{mailbox.uidvalidity}.{i.uid}") for i in self.snapshot]

    def _release_lock(self) -> None:
        if self.locked_account is not None:
            self.svc.maildrop_locks.discard(self.locked_account)
            self.locked_account = None

    # --- TRANSACTION: RETR / TOP (RFC 1939 5, 7) ------------------------------------------

    async def _retrieve(self, event: Retrieve) -> None:
        info = self.snapshot[event.number - 1]
        store = self.svc.store
        offset = 0
        while True:
            try:
                chunk = await store.read_blob(info.blob_id, offset, MESSAGE_CHUNK)
            except (StoreError, OSError) as exc:
                self.log.error(
                    "pop3.retrieve_failed",
                    session=self.info.session_id,
                    uid=info.uid,
                    offset=offset,
                    error=str(exc),
                )
                self.core.fail_message()
                return
            if not chunk:
                break
            offset += len(chunk)
            more = self.core.send_message_data(chunk)
            await self._flush()
            if not more or (len(chunk) < MESSAGE_CHUNK and offset >= info.size):
                break
        self.core.end_message()
        if event.body_lines is None:
            self.retrieved += 1
            await self._mark_seen(info)

    async def _mark_seen(self, info: MessageInfo) -> None:
        if "\\Seen" in info.flags or self.info.account_id is None:
            return
        try:
            await self.svc.store.store_flags(
                self.info.account_id, self.mailbox_id, [info.uid], FlagMode.ADD, _SEEN
            )
        except (StoreError, OSError) as exc:  # the message was still sent
            self.log.warning(
                "pop3.seen_failed", session=self.info.session_id, uid=info.uid, error=str(exc)
            )

    # --- UPDATE (RFC 1939 6) -----------------------------------------------------------------

    async def _update(self, event: Update) -> None:
        uids = [self.snapshot[n - 1].uid for n in event.deleted]
        ok = True
        if uids and self.info.account_id is not None:
            self.in_update = True
            try:
                removed = await self.svc.store.expunge(
                    self.info.account_id, self.mailbox_id, uids, only_deleted=False
                )
                self.removed = len(removed)
            except (StoreError, OSError) as exc:
                ok = False
                self.log.error(
                    "pop3.update_failed",
                    session=self.info.session_id,
                    user=self.info.account_address,
                    error=str(exc),
                )
            finally:
                self.in_update = False
        self.core.finish_update(ok)
