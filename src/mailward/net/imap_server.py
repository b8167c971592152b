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
import ssl
import time

from mailward.auth import Authenticator
from mailward.config.schema import Config
from mailward.logs import EventLog
from mailward.net.imap_base import (
    AUTHENTICATED,
    LOGOUT,
    ImapServices,
    Refused,
)
from mailward.net.imap_mailboxes import MailboxCommands
from mailward.net.imap_messages import MessageCommands
from mailward.net.listener import ListenerSpec, SessionFactory
from mailward.net.starttls import start_tls
from mailward.pipeline.types import SessionInfo
from mailward.proto import imap as core_mod
from mailward.proto import imap_commands as cmd
from mailward.proto.imap_wire import (
    continuation,
    format_datetime,
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
from mailward.spam.training import JunkTrainer
from mailward.store.api import (
    AlreadyExists,
    MailStore,
    NotFound,
    OverQuota,
    StoreError,
)

READ_SIZE = 256 * 1024
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
# RFC 5161: what ENABLE accepts (upper-cased) -> the name ENABLED echoes.
ENABLEABLE = {
    "CONDSTORE": "CONDSTORE",
    "QRESYNC": "QRESYNC",
    "UTF8=ACCEPT": "UTF8=ACCEPT",
    "IMAP4REV2": "IMAP4rev2",
}


class ImapSession(MailboxCommands, MessageCommands):
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
                newly.append(ENABLEABLE[name])
                if name == "QRESYNC":
                    self.enabled.add("CONDSTORE")
                if name in ("CONDSTORE", "QRESYNC"):
                    self.condstore = True
        self.core.send(b"* ENABLED" + b"".join(b" " + n.encode() for n in newly) + b"\r\n")
        return None, "ENABLE completed"

    async def _do_starttls(self, c: cmd.Command) -> None:
        if self.tls_active:
            raise Refused("TLS is already active", status="BAD")
        self.core.send(response(c.tag, "OK", "Begin TLS negotiation now"))
        await self.flush()
        if self.read_task is not None:
            self.read_task.cancel()
            self.read_task = None
        await start_tls(
            self.reader,
            self.writer,
            self.svc.tls_context,
            timeout=self.svc.tls_handshake_timeout,
            info=self.info,
            log=self.log,
            protocol="imap",
        )
        self.tls_active = True
        self.core.tls_established()

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

    async def _do_idle(self, c: cmd.Command) -> None:
        self.core.send(b"+ idling\r\n")
        self.busy_idle = c.tag
        self.core.expect_idle_done()

    async def _idle_done(self, event: core_mod.IdleDone) -> None:
        self.busy_idle = None
        if event.valid:  # otherwise the core has answered BAD
            await self._sync(allow_expunge=True)
            self.core.send(response(event.tag, "OK", "IDLE terminated"))


def imap_services(
    config: Config,
    tls_context: ssl.SSLContext,
    store: MailStore,
    authenticator: Authenticator,
    log: EventLog,
    *,
    trainer: JunkTrainer | None = None,
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
        trainer=trainer,
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
