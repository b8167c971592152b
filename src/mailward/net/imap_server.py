"""The asyncio shell around the sans-I/O IMAP core: one `ImapSession` per connection.

RFC 9051 (IMAP4rev2) and RFC 3501 (IMAP4rev1), both advertised, with IDLE (RFC 2177),
UIDPLUS (RFC 4315), MOVE (RFC 6851), SPECIAL-USE / CREATE-SPECIAL-USE (RFC 6154),
CONDSTORE / QRESYNC (RFC 7162), ENABLE (RFC 5161), NAMESPACE (RFC 2342), ID (RFC
2971), LITERAL+ / LITERAL- (RFC 7888), SASL-IR (RFC 4959), UNSELECT (RFC 3691),
CHILDREN (RFC 3348), LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), ESEARCH (RFC
4731), SEARCHRES (RFC 5182), STATUS=SIZE (RFC 8438), APPENDLIMIT (RFC 7889), QUOTA
(RFC 9208), UTF8=ACCEPT (RFC 6855), BINARY (RFC 3516).

Invariants:
- No credential in clear: LOGIN and AUTHENTICATE are refused (and LOGINDISABLED is
  advertised, AUTH= is not) until TLS is active (DESIGN.md 3).
- An APPEND is answered OK only after `MailStore.deliver()` made it durable; its
  literal streams into a spool file, so memory does not grow with message size; a
  whole-message FETCH streams from the blob file in chunks for the same reason.
- Every store call carries the authenticated account id; the store refuses another
  account's mailbox ids, so no name, id or uid reaches another account's data.
- Sequence numbers change only when the session is told (`imap.selected`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from mailward.auth import Authenticator
from mailward.config.schema import Config
from mailward.crypto.tls import describe_tls
from mailward.imap import fetch as fetch_mod
from mailward.imap import search as search_mod
from mailward.imap.names import (
    BadName,
    ListQuery,
    check_new_name,
    from_client,
    list_entries,
    parents,
    pattern_regex,
    to_client,
)
from mailward.imap.selected import SelectedMailbox, compress, ranges_of
from mailward.logs import EventLog
from mailward.message.mime import Part
from mailward.net.listener import ListenerSpec, SessionFactory
from mailward.net.smtp_server import MessageSpool
from mailward.net.starttls import discard_buffered_plaintext
from mailward.pipeline.types import SessionInfo
from mailward.proto import imap as core_mod
from mailward.proto import imap_commands as cmd
from mailward.proto.imap_wire import (
    continuation,
    format_datetime,
    list_mailbox_quote,
    response,
)
from mailward.proto.sasl import (
    SaslChallenge,
    SaslCredentials,
    SaslError,
    SaslMechanism,
    encode_challenge,
    new_mechanism,
)
from mailward.store.api import (
    AlreadyExists,
    Delivery,
    FlagMode,
    LocalTarget,
    MailStore,
    MessageInfo,
    NotFound,
    OverQuota,
    SpecialUse,
    StoreError,
)

READ_SIZE = 256 * 1024
STREAM_CHUNK = 256 * 1024
NO_RECENT = 2**32  # recent_above for rev2 sessions: \Recent does not exist there
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
NOT_AUTHENTICATED, AUTHENTICATED, SELECTED, LOGOUT = (
    core_mod.ImapState.NOT_AUTHENTICATED,
    core_mod.ImapState.AUTHENTICATED,
    core_mod.ImapState.SELECTED,
    core_mod.ImapState.LOGOUT,
)
BASE_CAPABILITIES = ("IMAP4rev2", "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE")
AUTHENTICATED_CAPABILITIES = (
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "CHILDREN",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "CONDSTORE",
    "QRESYNC",
    "ESEARCH",
    "SEARCHRES",
    "STATUS=SIZE",
    "BINARY",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "UTF8=ACCEPT",
)
ENABLEABLE = ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT", "IMAP4REV2")
SPECIAL_USES = {u.value.upper(): u for u in SpecialUse if u.value}


@dataclass(frozen=True, slots=True)
class ImapServices:
    """What every IMAP session shares; built once, not per connection."""

    hostname: str
    tls_context: ssl.SSLContext
    store: MailStore
    authenticator: Authenticator
    log: EventLog
    login_timeout: float  # before authentication
    idle_timeout: float  # RFC 9051 5.4: at least 30 minutes once authenticated
    tls_handshake_timeout: float
    append_limit: int
    poll_interval: float = 10.0  # changes made by other processes are seen this late


class Refused(Exception):
    """A command ends with this tagged NO (or BAD); the text is safe to show."""

    def __init__(self, text: str, code: str | None = None, status: str = "NO") -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


class ImapSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        services: ImapServices,
        *,
        implicit_tls: bool,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self.svc = services
        self.store = services.store
        self.log = services.log
        self.tls_active = implicit_tls
        self.core = core_mod.ImapServer(core_mod.ImapSettings(append_limit=services.append_limit))
        self.account_id: int | None = None
        self.selected: SelectedMailbox | None = None
        self.enabled: set[str] = set()
        self.condstore = False  # RFC 7162 3.1: a CONDSTORE-enabling command was seen
        self.saved: list[int] = []  # RFC 5182 $ (uids)
        self.structure_cache: dict[str, Part] = {}
        self.unwatch: object | None = None
        self.changed = asyncio.Event()
        self.last_poll = 0.0
        self.task: asyncio.Task[None] | None = None
        self.interruptible = False
        self.closing = False
        self.busy_idle: str | None = None  # tag of a running IDLE
        self.sasl: tuple[str, SaslMechanism] | None = None
        self.append: _Append | None = None
        self.read_task: asyncio.Task[bytes] | None = None
        if implicit_tls:
            self._note_tls()

    # --- flags ------------------------------------------------------------------

    @property
    def rev2(self) -> bool:
        return "IMAP4REV2" in self.enabled

    @property
    def utf8(self) -> bool:
        return "UTF8=ACCEPT" in self.enabled or self.rev2

    @property
    def qresync(self) -> bool:
        return "QRESYNC" in self.enabled

    # --- lifecycle ----------------------------------------------------------------

    def interrupt(self, *, force: bool) -> None:
        """Shutdown: close with BYE where the session waits for input. An APPEND in
        flight finishes first unless `force` (then its literal is simply dropped,
        never acknowledged)."""
        self.closing = True
        if self.interruptible and (force or self.append is None) and self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            self.core.send(
                response(None, "OK", "ready", "CAPABILITY " + " ".join(self._capabilities()))
            )
            await self._run()
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.log.info("imap.connection_lost", session=self.info.session_id, error=str(exc))
        except asyncio.CancelledError:
            if not self.closing:
                raise
            with contextlib.suppress(Exception):
                self.writer.write(response(None, "BYE", "Server shutting down", "UNAVAILABLE"))
                await asyncio.wait_for(self.writer.drain(), 1.0)
        finally:
            if self.read_task is not None:
                self.read_task.cancel()
            if self.append is not None:
                self.append.spool.discard()
            if callable(self.unwatch):
                self.unwatch()
            with contextlib.suppress(Exception):
                self.writer.close()
            self.log.info("imap.end", session=self.info.session_id, ip=self.info.peer_ip)

    async def flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def _run(self) -> None:
        core = self.core
        while True:
            event = core.next_event()
            if isinstance(event, core_mod.NeedData):
                await self.flush()
                if not await self._receive():
                    return
            elif isinstance(event, core_mod.CommandReceived):
                await self._command(event.command)
            elif isinstance(event, core_mod.AppendChunk):
                if self.append is not None:
                    self.append.spool.write(event.data)
            elif isinstance(event, core_mod.AppendStart):
                self._append_start(event)
            elif isinstance(event, core_mod.AppendEnd):
                await self._append_end(event.tag)
            elif isinstance(event, core_mod.AuthenticateResponse):
                await self._sasl_step(event)
            elif isinstance(event, core_mod.IdleDone):
                await self._idle_done(event)
            elif isinstance(event, core_mod.AppendAborted):
                if self.append is not None:
                    self.append.spool.discard()
                    self.append = None
            elif isinstance(event, core_mod.CommandError):
                self.log.info(
                    "imap.command.refused",
                    session=self.info.session_id,
                    ip=self.info.peer_ip,
                    response=event.response[:200].decode("utf-8", "replace").strip(),
                )
            elif isinstance(event, core_mod.ConnectionClosed):
                await self.flush()
                return

    async def _receive(self) -> bool:
        """Wait for input (and, while idling, for mailbox changes). False = close."""
        timeout = self.svc.idle_timeout if self.account_id else self.svc.login_timeout
        if self.closing and self.append is None:
            self.core.send(response(None, "BYE", "Server shutting down", "UNAVAILABLE"))
            await self.flush()
            return False
        if self.read_task is None:
            self.read_task = asyncio.ensure_future(self.reader.read(READ_SIZE))
        deadline = time.monotonic() + timeout
        self.interruptible = True
        try:
            while True:
                if self.busy_idle is not None:
                    await self._sync(allow_expunge=True)
                    await self.flush()
                    change = asyncio.ensure_future(self.changed.wait())
                    wait_for = min(self.svc.poll_interval, deadline - time.monotonic())
                    done, _ = await asyncio.wait(
                        (self.read_task, change),
                        timeout=max(0.0, wait_for),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    change.cancel()
                    if self.read_task in done:
                        break
                else:
                    done, _ = await asyncio.wait(
                        {self.read_task}, timeout=max(0.0, deadline - time.monotonic())
                    )
                    if done:
                        break
                if time.monotonic() >= deadline:
                    self.log.info("limit.timeout", session=self.info.session_id, phase="imap")
                    self.core.send(response(None, "BYE", "Autologout; idle for too long"))
                    await self.flush()
                    return False
        finally:
            self.interruptible = False
        data = self.read_task.result()
        self.read_task = None
        if data:
            self.core.receive_data(data)
        else:
            self.core.receive_eof()
        return True

    # --- dispatch -------------------------------------------------------------------

    async def _command(self, command: cmd.Command) -> None:
        handler = getattr(self, "_do_" + command.name.lower().replace(" ", "_"), None)
        tag = command.tag
        if handler is None:
            self.core.send(response(tag, "BAD", "Command not supported"))
            return
        try:
            text = await handler(command)
        except Refused as exc:
            self.core.send(response(tag, exc.status, exc.text, exc.code))
            return
        except OverQuota:
            self.core.send(response(tag, "NO", "Quota exceeded", "OVERQUOTA"))
            return
        except NotFound:
            self.core.send(response(tag, "NO", "No such mailbox or message", "NONEXISTENT"))
            return
        except AlreadyExists:
            self.core.send(response(tag, "NO", "Mailbox already exists", "ALREADYEXISTS"))
            return
        except StoreError as exc:
            self.log.error("imap.store_error", session=self.info.session_id, error=str(exc))
            self.core.send(response(tag, "NO", "Temporary server failure", "UNAVAILABLE"))
            return
        if text is None:
            return  # the handler answers later (IDLE, AUTHENTICATE) or already did
        code, message = text
        if command.name not in ("FETCH", "STORE", "SEARCH") or command.uid:
            await self._sync(allow_expunge=True)
        else:
            await self._sync(allow_expunge=False)
        self.core.send(response(tag, "OK", message, code))

    async def _sync(self, *, allow_expunge: bool, force: bool = False) -> None:
        """Tell the session what changed in its selected mailbox (RFC 9051 7.5)."""
        sel = self.selected
        if sel is None or self.account_id is None:
            return
        now = time.monotonic()
        if not (force or self.changed.is_set() or now - self.last_poll >= self.svc.poll_interval):
            if allow_expunge and sel.pending_expunge:
                for line in sel.flush_expunges(qresync=self.qresync):
                    self.core.send(line)
            return
        self.last_poll = now
        self.changed.clear()
        changes = await self.store.changes_since(self.account_id, sel.mailbox_id, sel.highestmodseq)
        for line in sel.apply(
            changes,
            allow_expunge=allow_expunge,
            qresync=self.qresync,
            condstore=self.condstore,
            rev2=self.rev2,
        ):
            self.core.send(line)

    def _on_change(self, mailbox_id: int) -> None:
        if self.selected is not None and self.selected.mailbox_id == mailbox_id:
            self.changed.set()

    # --- any state ------------------------------------------------------------------

    def _capabilities(self) -> list[str]:
        caps = list(BASE_CAPABILITIES)
        if self.account_id is not None:
            caps += AUTHENTICATED_CAPABILITIES
            caps.append(f"APPENDLIMIT={self.svc.append_limit}")
        elif self.tls_active:
            caps.append("AUTH=PLAIN")
        else:
            caps += ["STARTTLS", "LOGINDISABLED"]
        return caps

    async def _do_capability(self, c: cmd.Command) -> tuple[str | None, str]:
        self.core.send(b"* CAPABILITY " + " ".join(self._capabilities()).encode() + b"\r\n")
        return None, "CAPABILITY completed"

    async def _do_noop(self, c: cmd.Command) -> tuple[str | None, str]:
        await self._sync(allow_expunge=True, force=True)
        return None, "NOOP completed"

    async def _do_check(self, c: cmd.Command) -> tuple[str | None, str]:
        await self._sync(allow_expunge=True, force=True)
        return None, "CHECK completed"

    async def _do_logout(self, c: cmd.Command) -> None:
        self.core.send(response(None, "BYE", "Logging out"))
        self.core.send(response(c.tag, "OK", "LOGOUT completed"))
        self.core.set_state(LOGOUT)
        self.core.close()

    async def _do_id(self, c: cmd.Command) -> tuple[str | None, str]:
        self.core.send(b"* ID NIL\r\n")  # say nothing about the software (DESIGN.md 3)
        return None, "ID completed"

    async def _do_enable(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Enable)
        newly = []
        for cap in args.capabilities:
            name = cap.upper()
            if name in ENABLEABLE and name not in self.enabled:
                self.enabled.add(name)
                newly.append(cap)
                if name == "QRESYNC":
                    self.enabled.add("CONDSTORE")
                if name in ("CONDSTORE", "QRESYNC"):
                    self.condstore = True
        self.core.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in newly) + b"\r\n")
        return None, "ENABLE completed"

    # --- not authenticated ------------------------------------------------------------

    async def _do_starttls(self, c: cmd.Command) -> None:
        if self.tls_active:
            raise Refused("TLS is already active", status="BAD")
        self.core.send(response(c.tag, "OK", "Begin TLS negotiation now"))
        await self.flush()
        if self.read_task is not None:
            self.read_task.cancel()
            self.read_task = None
        dropped = discard_buffered_plaintext(self.reader)
        if dropped:
            self.log.info("imap.starttls.discarded", session=self.info.session_id, octets=dropped)
        try:
            await self.writer.start_tls(
                self.svc.tls_context, ssl_handshake_timeout=self.svc.tls_handshake_timeout
            )
        except (ConnectionError, OSError, TimeoutError) as exc:
            self.log.info("tls.failed", session=self.info.session_id, error=str(exc))
            raise ConnectionResetError("TLS handshake failed") from exc
        self.tls_active = True
        self._note_tls()
        self.core.tls_established()

    def _note_tls(self) -> None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return
        self.info.tls_version, self.info.tls_cipher = describe_tls(ssl_object)
        self.log.info(
            "tls.established",
            session=self.info.session_id,
            version=self.info.tls_version,
            cipher=self.info.tls_cipher,
        )

    def _require_tls(self) -> None:
        if not self.tls_active:
            raise Refused("Use STARTTLS first: no passwords in clear", "PRIVACYREQUIRED")

    async def _do_login(self, c: cmd.Command) -> tuple[str | None, str] | None:
        self._require_tls()
        args = c.args
        assert isinstance(args, cmd.Login)
        return await self._verify(c.tag, "LOGIN", "", args.username, args.password)

    async def _do_authenticate(self, c: cmd.Command) -> tuple[str | None, str] | None:
        self._require_tls()
        args = c.args
        assert isinstance(args, cmd.Authenticate)
        if args.mechanism.upper() != "PLAIN":
            raise Refused("Unsupported authentication mechanism", "CANNOT")
        mech = new_mechanism("PLAIN")
        assert mech is not None
        try:
            step = mech.start(args.initial_response)
        except SaslError:
            raise Refused("Malformed authentication exchange", status="BAD") from None
        return await self._sasl_continue(c.tag, mech, step)

    async def _sasl_continue(
        self, tag: str, mech: SaslMechanism, step: SaslChallenge | SaslCredentials
    ) -> tuple[str | None, str] | None:
        if isinstance(step, SaslChallenge):
            self.sasl = (tag, mech)
            self.core.send(continuation(encode_challenge(step.data)) if step.data else b"+ \r\n")
            self.core.expect_authenticate_response()
            return None
        result = await self._verify(tag, step.mechanism, step.authzid, step.username, step.password)
        return result

    async def _sasl_step(self, event: core_mod.AuthenticateResponse) -> None:
        if self.sasl is None:
            return
        tag, mech = self.sasl
        self.sasl = None
        if event.data is None:
            text = "Malformed base64" if event.malformed else "Authentication cancelled"
            self.core.send(response(tag, "BAD", text))
            return
        try:
            step = mech.step(event.data)
        except SaslError:
            self.core.send(response(tag, "BAD", "Malformed authentication exchange"))
            return
        result = await self._sasl_continue(tag, mech, step)
        if result is not None:
            self.core.send(response(tag, "OK", result[1], result[0]))

    async def _verify(
        self, tag: str, mechanism: str, authzid: str, username: str, password: str
    ) -> tuple[str | None, str] | None:
        if authzid and authzid.lower() != username.lower():
            raise Refused("Authentication failed", "AUTHENTICATIONFAILED")
        outcome = await self.svc.authenticator.authenticate(
            username, password, ip=self.info.peer_ip, protocol="imap", mechanism=mechanism
        )
        if outcome.locked_out:
            raise Refused("Too many failures, try again later", "UNAVAILABLE")
        if outcome.account is None:
            raise Refused("Authentication failed", "AUTHENTICATIONFAILED")
        self.account_id = outcome.account.id
        self.info.account_id = outcome.account.id
        self.info.account_address = outcome.account.address
        self.unwatch = self.store.watch(outcome.account.id, self._on_change)
        self.core.set_state(AUTHENTICATED)
        return "CAPABILITY " + " ".join(self._capabilities()), "Logged in"

    # --- mailboxes ------------------------------------------------------------------

    @property
    def account(self) -> int:
        assert self.account_id is not None
        return self.account_id

    def _name(self, raw: str) -> str:
        try:
            return from_client(raw, utf8=self.utf8)
        except BadName as exc:
            raise Refused(str(exc), status="BAD") from None

    def _wire_name(self, name: str) -> bytes:
        return list_mailbox_quote(to_client(name, utf8=self.utf8))

    async def _do_select(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Select)
        if self.selected is not None:
            self._deselect()
            if self.qresync or self.rev2:
                self.core.send(response(None, "OK", "Previous mailbox closed", "CLOSED"))
        name = self._name(args.mailbox)
        if args.condstore or args.qresync is not None:
            if args.qresync is not None and not self.qresync:
                raise Refused("QRESYNC is not enabled", status="BAD")
            self.condstore = True
        status = await self.store.mailbox_status(self.account, name)
        mb = status.mailbox
        readonly = args.readonly
        if self.rev2:
            recent_above = NO_RECENT
        elif readonly:
            recent_above = mb.uidnext - 1 - status.recent
        else:
            recent_above = await self.store.mark_recent(self.account, mb.id)
        uids = await self.store.list_uids(self.account, mb.id)
        sel = SelectedMailbox(
            mailbox_id=mb.id,
            name=mb.name,
            uidvalidity=mb.uidvalidity,
            readonly=readonly,
            uids=uids,
            highestmodseq=mb.highestmodseq,
            recent_above=recent_above,
            uidnext=mb.uidnext,
        )
        send = self.core.send
        send(b"* %d EXISTS\r\n" % len(uids))
        if not self.rev2:
            send(b"* %d RECENT\r\n" % sum(1 for u in uids if u > recent_above))
        send(b"* FLAGS (" + " ".join(SYSTEM_FLAGS).encode() + b")\r\n")
        permanent = "" if readonly else " ".join(SYSTEM_FLAGS) + " \\*"
        send(response(None, "OK", "Flags permitted", f"PERMANENTFLAGS ({permanent})"))
        if status.first_unseen_uid and not self.rev2:
            seq = sel.seq_of(status.first_unseen_uid)
            if seq:
                send(response(None, "OK", "First unseen", f"UNSEEN {seq}"))
        send(response(None, "OK", "UIDs valid", f"UIDVALIDITY {mb.uidvalidity}"))
        send(response(None, "OK", "Predicted next UID", f"UIDNEXT {mb.uidnext}"))
        send(response(None, "OK", "Highest", f"HIGHESTMODSEQ {mb.highestmodseq}"))
        if self.rev2:
            send(b'* LIST () "/" ' + self._wire_name(mb.name) + b"\r\n")
        if args.qresync is not None and args.qresync.uidvalidity == mb.uidvalidity:
            await self._qresync_select(sel, args.qresync)
        self.selected = sel
        self.last_poll = time.monotonic()
        self.core.set_state(SELECTED)
        return ("READ-ONLY" if readonly else "READ-WRITE"), (
            "EXAMINE completed" if readonly else "SELECT completed"
        )

    async def _qresync_select(self, sel: SelectedMailbox, q: cmd.Qresync) -> None:
        """RFC 7162 3.2.5.2: report what changed since the client's modseq."""
        changes = await self.store.changes_since(self.account, sel.mailbox_id, q.modseq)
        known = q.known_uids
        vanished = [
            u for u in changes.expunged if known is None or known.contains(u, sel.uidnext - 1)
        ]
        if vanished:
            self.core.send(b"* VANISHED (EARLIER) %s\r\n" % compress(vanished).encode())
        for info in changes.changed:
            seq = sel.seq_of(info.uid)
            if seq:
                self.core.send(sel.flags_line(seq, info, qresync=True, condstore=True))

    async def _do_examine(self, c: cmd.Command) -> tuple[str | None, str]:
        return await self._do_select(c)

    def _deselect(self) -> None:
        self.selected = None
        self.saved = []
        self.core.set_state(AUTHENTICATED)

    async def _do_close(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        if not sel.readonly:
            await self.store.expunge(self.account, sel.mailbox_id)
        self._deselect()
        return None, "CLOSE completed"

    async def _do_unselect(self, c: cmd.Command) -> tuple[str | None, str]:
        self._selected()
        self._deselect()
        return None, "UNSELECT completed"

    def _selected(self) -> SelectedMailbox:
        if self.selected is None:
            raise Refused("No mailbox selected", status="BAD")
        return self.selected

    async def _do_create(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Create)
        try:
            name = check_new_name(self._name(args.mailbox))
        except BadName as exc:
            raise Refused(str(exc), "CANNOT") from None
        if name == "INBOX":
            raise Refused("INBOX always exists", "ALREADYEXISTS")
        use = SpecialUse.NONE
        for attr in args.special_use:
            if attr.upper() not in SPECIAL_USES or use is not SpecialUse.NONE:
                raise Refused("Unsupported special-use attribute", "USEATTR")
            use = SPECIAL_USES[attr.upper()]
        existing = {m.name for m in await self.store.list_mailboxes(self.account)}
        if name in existing:
            raise Refused("Mailbox already exists", "ALREADYEXISTS")
        for parent in parents(name):  # RFC 9051 6.3.4: create the superiors too
            if parent not in existing:
                with contextlib.suppress(AlreadyExists):
                    await self.store.create_mailbox(self.account, parent)
        await self.store.create_mailbox(self.account, name, use)
        return None, "CREATE completed"

    async def _do_delete(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Delete)
        name = self._name(args.mailbox)
        if name == "INBOX":
            raise Refused("INBOX cannot be deleted", "CANNOT")
        if self.selected is not None and self.selected.name == name:
            self._deselect()
        await self.store.delete_mailbox(self.account, name)
        return None, "DELETE completed"

    async def _do_rename(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Rename)
        old = self._name(args.old)
        try:
            new = check_new_name(self._name(args.new))
        except BadName as exc:
            raise Refused(str(exc), "CANNOT") from None
        if new == "INBOX":
            raise Refused("Cannot rename to INBOX", "ALREADYEXISTS")
        await self.store.rename_mailbox(self.account, old, new)
        return None, "RENAME completed"

    async def _do_subscribe(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Subscribe)
        await self.store.subscribe(self.account, self._name(args.mailbox))
        return None, "SUBSCRIBE completed"

    async def _do_unsubscribe(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Unsubscribe)
        try:
            await self.store.unsubscribe(self.account, self._name(args.mailbox))
        except NotFound:
            raise Refused("Not subscribed", "NONEXISTENT") from None
        return None, "UNSUBSCRIBE completed"

    async def _do_namespace(self, c: cmd.Command) -> tuple[str | None, str]:
        self.core.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n')
        return None, "NAMESPACE completed"

    async def _do_list(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.List)
        selection = {s.upper() for s in args.selection}
        returns = {r.upper() for r in args.returns if isinstance(r, str)}
        status_items = args.status_items
        reference = self._name(args.reference) if args.reference else ""
        if args.patterns == ("",):
            # RFC 9051 6.3.9: the hierarchy delimiter and root name.
            self.core.send(b'* LIST (\\Noselect) "/" ""\r\n')
            return None, "LIST completed"
        regexes = tuple(pattern_regex(reference, self._name(p) if p else p) for p in args.patterns)
        await self._list(
            "LIST",
            ListQuery(
                patterns=regexes,
                subscribed_only="SUBSCRIBED" in selection,
                special_use_only="SPECIAL-USE" in selection,
                recursive_match="RECURSIVEMATCH" in selection,
                return_subscribed="SUBSCRIBED" in returns,
                rev2=self.rev2 or bool(selection or returns),
            ),
            status_items,
        )
        return None, "LIST completed"

    async def _do_lsub(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Lsub)
        reference = self._name(args.reference) if args.reference else ""
        regex = pattern_regex(reference, self._name(args.pattern) if args.pattern else "")
        query = ListQuery(patterns=(regex,), subscribed_only=True, rev2=False)
        await self._list("LSUB", query, ())
        return None, "LSUB completed"

    async def _list(self, kind: str, query: ListQuery, status_items: Sequence[str]) -> None:
        mailboxes = await self.store.list_mailboxes(self.account)
        subscribed = set(await self.store.list_subscriptions(self.account))
        roles = {m.name: m.special_use.value for m in mailboxes if m.special_use.value}
        entries = list_entries((m.name for m in mailboxes), roles, subscribed, query)
        existing = {m.name for m in mailboxes}
        for entry in entries:
            attrs = entry.attributes
            if kind == "LSUB":
                attrs = tuple(a for a in attrs if a in ("\\Noselect",))
            line = b'* %s (%s) "/" %s' % (
                kind.encode(),
                " ".join(attrs).encode(),
                self._wire_name(entry.name),
            )
            if entry.child_subscribed:
                line += b' ("CHILDINFO" ("SUBSCRIBED"))'
            self.core.send(line + b"\r\n")
            if status_items and entry.name in existing:
                await self._status_line(entry.name, status_items)

    async def _do_status(self, c: cmd.Command) -> tuple[str | None, str]:
        args = c.args
        assert isinstance(args, cmd.Status)
        name = self._name(args.mailbox)
        await self._status_line(name, args.items)
        return None, "STATUS completed"

    async def _status_line(self, name: str, items: Sequence[str]) -> None:
        st = await self.store.mailbox_status(self.account, name)
        mb = st.mailbox
        values = {
            "MESSAGES": mb.message_count,
            "UIDNEXT": mb.uidnext,
            "UIDVALIDITY": mb.uidvalidity,
            "UNSEEN": st.unseen,
            "DELETED": st.deleted,
            "SIZE": st.size,
            "RECENT": 0 if self.rev2 else st.recent,
            "HIGHESTMODSEQ": mb.highestmodseq,
            "APPENDLIMIT": self.svc.append_limit,
        }
        out = [f"{item.upper()} {values[item.upper()]}" for item in items if item.upper() in values]
        if any(item.upper() == "HIGHESTMODSEQ" for item in items):
            self.condstore = True
        self.core.send(
            b"* STATUS " + self._wire_name(mb.name) + b" (" + " ".join(out).encode() + b")\r\n"
        )

    # --- quota (RFC 9208) -------------------------------------------------------------

    async def _quota_lines(self) -> None:
        quota = await self.store.get_quota(self.account)
        if quota.limit:
            used_kib, limit_kib = -(-quota.used // 1024), quota.limit // 1024
            self.core.send(b'* QUOTA "" (STORAGE %d %d)\r\n' % (used_kib, limit_kib))
        else:
            self.core.send(b'* QUOTA "" ()\r\n')

    async def _do_getquotaroot(self, c: cmd.Command) -> tuple[str | None, str]:
        name = self._name(getattr(c.args, "mailbox", ""))
        if await self.store.get_mailbox(self.account, name) is None:
            raise Refused("No such mailbox", "NONEXISTENT")
        self.core.send(b"* QUOTAROOT " + self._wire_name(name) + b' ""\r\n')
        await self._quota_lines()
        return None, "GETQUOTAROOT completed"

    async def _do_getquota(self, c: cmd.Command) -> tuple[str | None, str]:
        if getattr(c.args, "root", "") != "":
            raise Refused("No such quota root", "NONEXISTENT")
        await self._quota_lines()
        return None, "GETQUOTA completed"

    # --- APPEND -------------------------------------------------------------------------

    def _append_start(self, event: core_mod.AppendStart) -> None:
        # Checks that need no I/O run here; the mailbox is checked at the end.
        if self.account_id is None:
            self.core.reject_literal(response(event.tag, "NO", "Not authenticated"))
            return
        if event.size > self.svc.append_limit:
            self.core.reject_literal(
                response(event.tag, "NO", "Message larger than APPENDLIMIT", "TOOBIG")
            )
            return
        try:
            name = self._name(event.mailbox)
        except Refused as exc:
            self.core.reject_literal(response(event.tag, exc.status, exc.text, exc.code))
            return
        self.append = _Append(
            tag=event.tag,
            mailbox=name,
            flags=frozenset(event.flags),
            date=event.internal_date,
            spool=MessageSpool(self.store.new_spool(), b""),
        )
        self.core.accept_literal()

    async def _append_end(self, tag: str) -> None:
        append, self.append = self.append, None
        if append is None:
            return
        try:
            result = await self._append_store(append)
        except Refused as exc:
            self.core.send(response(tag, exc.status, exc.text, exc.code))
            return
        except OverQuota:
            self.core.send(response(tag, "NO", "Quota exceeded", "OVERQUOTA"))
            return
        except StoreError as exc:
            self.log.error("imap.append_failed", session=self.info.session_id, error=str(exc))
            self.core.send(response(tag, "NO", "Temporary server failure", "UNAVAILABLE"))
            return
        await self._sync(allow_expunge=True)
        self.core.send(response(tag, "OK", "APPEND completed", result))

    async def _append_store(self, append: _Append) -> str:
        content = append.spool.finish()
        mailbox = await self.store.get_mailbox(self.account, append.mailbox)
        if mailbox is None:
            append.spool.discard()
            raise Refused("No such mailbox", "TRYCREATE")
        flags = frozenset(f for f in append.flags if f.lower() != "\\recent")
        receipt = await self.store.deliver(
            Delivery(
                spool=append.spool.path,
                sender="",
                local=[LocalTarget(self.account, mailbox.name, flags, enforce_quota=True)],
                outbound=[],
                internal_date=append.date.timestamp() if append.date else None,
                content=content,
            )
        )
        uid = receipt.stored[0][1]
        self.log.info("imap.append", session=self.info.session_id, mailbox_id=mailbox.id, uid=uid)
        return f"APPENDUID {mailbox.uidvalidity} {uid}"

    # --- selected state: IDLE --------------------------------------------------------------

    async def _do_idle(self, c: cmd.Command) -> None:
        self.core.send(b"+ idling\r\n")
        self.busy_idle = c.tag
        self.core.expect_idle_done()

    async def _idle_done(self, event: core_mod.IdleDone) -> None:
        self.busy_idle = None
        if event.valid:  # otherwise the core has answered BAD
            await self._sync(allow_expunge=True)
            self.core.send(response(event.tag, "OK", "IDLE terminated"))

    # --- selected state: messages ----------------------------------------------------------

    def _resolve(
        self, sel: SelectedMailbox, seqset: cmd.SequenceSet, uid: bool
    ) -> list[tuple[int, int]]:
        """(seq, uid) of the messages a set names; out-of-range numbers name nothing."""
        if seqset.saved:
            keep = set(self.saved)
            return [(s, u) for s, u in enumerate(sel.uids, 1) if u in keep]
        if not sel.uids:
            return []
        if uid:
            return sel.by_uid(seqset.resolve(sel.uids[-1]))
        return sel.by_sequence(seqset.resolve(len(sel.uids)))

    async def _infos(
        self, sel: SelectedMailbox, pairs: Sequence[tuple[int, int]]
    ) -> list[tuple[int, MessageInfo]]:
        if not pairs:
            return []
        infos = await self.store.fetch_info(
            self.account, sel.mailbox_id, ranges_of([u for _, u in pairs])
        )
        by_uid = {i.uid: i for i in infos}
        return [(s, by_uid[u]) for s, u in pairs if u in by_uid]

    def _with_recent(self, sel: SelectedMailbox, info: MessageInfo) -> MessageInfo:
        if info.uid > sel.recent_above:
            return replace(info, flags=info.flags | {"\\Recent"})
        return info

    async def _do_fetch(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Fetch)
        pairs = self._resolve(sel, args.set, c.uid)
        if args.changedsince is not None:
            self.condstore = True
        if args.vanished:
            if not c.uid or not self.qresync or args.changedsince is None:
                raise Refused("VANISHED needs UID FETCH, QRESYNC and CHANGEDSINCE", status="BAD")
            changes = await self.store.changes_since(
                self.account, sel.mailbox_id, args.changedsince
            )
            largest = sel.uidnext - 1
            gone = [u for u in changes.expunged if args.set.contains(u, largest)]
            if gone:
                self.core.send(b"* VANISHED (EARLIER) %s\r\n" % compress(gone).encode())
        messages = await self._infos(sel, pairs)
        if args.changedsince is not None:
            messages = [(s, i) for s, i in messages if i.modseq > args.changedsince]
        items = list(args.items)
        flagged: set[int] = set()
        if fetch_mod.sets_seen(items) and not sel.readonly:
            messages, flagged = await self._mark_seen(sel, messages)
        include_modseq = self.condstore
        need_data = fetch_mod.needs_message(items)
        written = 0
        for seq, info in messages:
            data = await self.store.read_blob(info.blob_id) if need_data else None
            try:
                pieces = fetch_mod.render_fetch(
                    seq,
                    self._with_recent(sel, info),
                    items,
                    data,
                    include_uid=c.uid,
                    include_modseq=include_modseq,
                    include_flags=info.uid in flagged,
                    structure_cache=self.structure_cache,
                )
            except fetch_mod.UnknownCte:
                raise Refused("Unknown content-transfer-encoding", "UNKNOWN-CTE") from None
            written += await self._write_pieces(info, pieces)
            if written > STREAM_CHUNK:  # keep the output buffer bounded on big FETCHes
                await self.flush()
                written = 0
        return None, "FETCH completed"

    async def _mark_seen(
        self, sel: SelectedMailbox, messages: list[tuple[int, MessageInfo]]
    ) -> tuple[list[tuple[int, MessageInfo]], set[int]]:
        """RFC 9051 6.4.5: fetching a body part sets \\Seen; returns the messages with
        their new flags and the uids whose flags changed (their FLAGS are sent)."""
        unseen = [i.uid for _, i in messages if "\\Seen" not in i.flags]
        if not unseen:
            return messages, set()
        update = await self.store.store_flags(
            self.account, sel.mailbox_id, unseen, FlagMode.ADD, frozenset({"\\Seen"})
        )
        fresh = {i.uid: i for i in update.changed}
        sel.own_modseqs.update(i.modseq for i in update.changed)
        return [(s, fresh.get(i.uid, i)) for s, i in messages], set(fresh)

    async def _write_pieces(self, info: MessageInfo, pieces: Sequence[object]) -> int:
        """Write a FETCH response; blob ranges stream from the file in chunks."""
        total = 0
        for piece in pieces:
            if isinstance(piece, bytes):
                self.core.send(piece)
                total += len(piece)
                continue
            assert isinstance(piece, fetch_mod.BlobRange)
            await self.flush()
            offset, remaining = piece.offset, piece.length
            while remaining > 0:
                chunk = await self.store.read_blob(
                    info.blob_id, offset, min(STREAM_CHUNK, remaining)
                )
                if not chunk:
                    raise StoreError("message file shorter than its index says")
                self.writer.write(chunk)
                await self.writer.drain()
                offset += len(chunk)
                remaining -= len(chunk)
                total += len(chunk)
        return total

    async def _do_store(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Store)
        if sel.readonly:
            raise Refused("Mailbox is read-only", "READ-ONLY")
        if args.unchangedsince is not None:
            self.condstore = True
        pairs = self._resolve(sel, args.set, c.uid)
        flags = frozenset(f for f in args.flags if f.lower() != "\\recent")
        update = await self.store.store_flags(
            self.account,
            sel.mailbox_id,
            [u for _, u in pairs],
            FlagMode(args.mode),
            flags,
            args.unchangedsince,
        )
        for info in update.changed:
            sel.own_modseqs.add(info.modseq)
        if not args.silent:
            for info in sorted([*update.changed, *update.unchanged], key=lambda i: i.uid):
                seq = sel.seq_of(info.uid)
                if seq:
                    self.core.send(self._store_line(sel, seq, info, c.uid))
        elif self.condstore:
            for info in update.changed:
                seq = sel.seq_of(info.uid)
                if seq:
                    uid_part = b"UID %d " % info.uid if c.uid else b""
                    self.core.send(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_part, info.modseq))
        if update.modified:
            numbers = (
                sorted(update.modified) if c.uid else sorted(sel.seq_of(u) for u in update.modified)
            )
            return f"MODIFIED {compress(numbers)}", "Conditional STORE failed"
        return None, "STORE completed"

    def _store_line(self, sel: SelectedMailbox, seq: int, info: MessageInfo, uid: bool) -> bytes:
        line = sel.flags_line(seq, info, qresync=False, condstore=self.condstore)
        if uid:
            line = line.replace(b"FETCH (", b"FETCH (UID %d " % info.uid, 1)
        return line

    async def _do_copy(self, c: cmd.Command) -> tuple[str | None, str]:
        return await self._copy_or_move(c, move=False)

    async def _do_move(self, c: cmd.Command) -> tuple[str | None, str]:
        return await self._copy_or_move(c, move=True)

    async def _copy_or_move(self, c: cmd.Command, *, move: bool) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Copy | cmd.Move)
        if move and sel.readonly:
            raise Refused("Mailbox is read-only", "READ-ONLY")
        dest = self._name(args.mailbox)
        if await self.store.get_mailbox(self.account, dest) is None:
            raise Refused("No such mailbox", "TRYCREATE")
        pairs = self._resolve(sel, args.set, c.uid)
        verb = "MOVE" if move else "COPY"
        if not pairs:
            return None, f"{verb} completed (nothing to do)"
        uids = [u for _, u in pairs]
        if move:
            result = await self.store.move_messages(self.account, sel.mailbox_id, uids, dest)
        else:
            result = await self.store.copy_messages(self.account, sel.mailbox_id, uids, dest)
        sources = compress([src for src, _ in result.pairs])
        code = f"COPYUID {result.uidvalidity} {sources} {compress([d for _, d in result.pairs])}"
        if not move:
            return code, "COPY completed"
        self.core.send(response(None, "OK", "Moved", code))
        if result.expunge_modseq:
            sel.own_modseqs.add(result.expunge_modseq)
        for line in sel.remove_expunged([s for s, _ in result.pairs], qresync=self.qresync):
            self.core.send(line)
        return None, "MOVE completed"

    async def _do_expunge(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        if sel.readonly:
            raise Refused("Mailbox is read-only", "READ-ONLY")
        uids: list[int] | None = None
        if c.uid:
            assert isinstance(args, cmd.Expunge) and args.uids is not None
            uids = [u for _, u in self._resolve(sel, args.uids, True)]
        gone = await self.store.expunge(self.account, sel.mailbox_id, uids)
        for line in sel.remove_expunged(gone, qresync=self.qresync):
            self.core.send(line)
        if self.condstore:
            mb = await self.store.get_mailbox(self.account, sel.name)
            if mb is not None:
                return f"HIGHESTMODSEQ {mb.highestmodseq}", "EXPUNGE completed"
        return None, "EXPUNGE completed"

    async def _do_search(self, c: cmd.Command) -> tuple[str | None, str]:
        sel = self._selected()
        args = c.args
        assert isinstance(args, cmd.Search)
        pairs = [(s, u) for s, u in enumerate(sel.uids, 1)]
        messages = await self._infos(sel, pairs)

        async def load(info: MessageInfo) -> bytes:
            return await self.store.read_blob(info.blob_id)

        matches = await search_mod.search(
            args.key,
            [(s, self._with_recent(sel, i)) for s, i in messages],
            load,
            recent_above=sel.recent_above,
            saved=self.saved,
        )
        uses_modseq = search_mod.uses_modseq(args.key)
        if uses_modseq:
            self.condstore = True
        modseq = max((i.modseq for _, i in matches), default=0) if uses_modseq else None
        numbers = [i.uid if c.uid else s for s, i in matches]
        returns = args.returns
        if returns is not None and "SAVE" in (r.upper() for r in returns):
            self.saved = [i.uid for _, i in matches]  # RFC 5182
        if returns is not None or self.rev2:
            out = search_mod.esearch_response(
                c.tag, numbers, tuple(returns or ()), uid=c.uid, modseq=modseq or None
            )
            if out:
                self.core.send(out)
        else:
            self.core.send(search_mod.search_response(numbers, modseq or None))
        return None, "SEARCH completed"


@dataclass(slots=True)
class _Append:
    tag: str
    mailbox: str
    flags: frozenset[str]
    date: datetime.datetime | None
    spool: MessageSpool


def imap_services(
    config: Config,
    tls_context: ssl.SSLContext,
    store: MailStore,
    authenticator: Authenticator,
    log: EventLog,
) -> ImapServices:
    return ImapServices(
        hostname=config.server.hostname,
        tls_context=tls_context,
        store=store,
        authenticator=authenticator,
        log=log,
        login_timeout=config.timeouts.command,
        idle_timeout=config.timeouts.imap_idle,
        tls_handshake_timeout=config.timeouts.tls_handshake,
        append_limit=config.limits.message_size,
    )


def imap_session_factory(services: ImapServices) -> SessionFactory:
    def make(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        spec: ListenerSpec,
    ) -> ImapSession:
        return ImapSession(reader, writer, info, services, implicit_tls=spec.implicit_tls)

    return make


__all__ = ["ImapServices", "ImapSession", "format_datetime", "imap_services"]
