"""The asyncio shell around the sans-I/O SMTP core: one `SmtpSession` per connection.

It pumps bytes between the socket and `proto.smtp.SmtpServer`, answers the core's
decision events through the pipeline and the authenticator, streams DATA into a
`MessageSpool` (memory up to 64 KiB, then a spool file: memory per session does not
grow with message size), upgrades to TLS on
STARTTLS, and enforces the per-phase timeouts of RFC 5321 4.5.3.2 and the session
pacing of `net.pacing` (abuse limits): the greeting pause on the MX port, the tarpit
on errors (and on every reply to a client slowed down for recipient probing), the
minimum input rate, and the time allowed until HELO/EHLO.

Invariants:
- The 250 after DATA is queued only after `Pipeline.end_of_data()` returned, which is
  after `MailStore.deliver()` made the message durable (DESIGN.md 3).
- A session is interrupted (shutdown, forced close) only while it waits for input
  (`interruptible`), never while a delivery is in flight, so an acknowledged message
  is always a stored one and an interrupted one was never acknowledged.
- Output is flushed whenever the core needs more input, which gives RFC 2920
  pipelining its batching for free. A tarpit delay is served just before a flush, so
  it holds back the replies due, never what the client has already been told.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mailward.auth import Authenticator
from mailward.config.schema import Config
from mailward.logs import EventLog
from mailward.net.listener import ListenerSpec, SessionFactory
from mailward.net.pacing import GreetingPasses, InputRate, Tarpit, early_input
from mailward.net.starttls import note_tls, start_tls
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.trace import trace_headers
from mailward.pipeline.types import Envelope, SessionInfo
from mailward.proto import smtp_events as ev
from mailward.proto.replies import (
    AUTH_FAILED,
    AUTH_OK,
    AUTH_TEMP_LOCKED,
    LOCAL_ERROR,
    SHUTTING_DOWN,
    TIMEOUT,
    Reply,
)
from mailward.proto.smtp import SmtpServer, SmtpSettings
from mailward.store.api import MailStore

READ_SIZE = 256 * 1024
SPOOL_MEMORY_LIMIT = 64 * 1024
# RFC 5321 4.3.1: the client waits for the greeting. RFC 3463 5.7.1: refused by policy.
EARLY_TALKER = Reply(554, "5.7.1", "Protocol error: talking before the greeting")
TOO_SLOW = Reply(421, "4.4.2", "Connection too slow, closing")
# Events after which the server does work of its own (a decision, TLS, a new message):
# the minimum input rate is measured afresh after each.
_SERVER_WORK = (
    ev.MailFrom,
    ev.RcptTo,
    ev.MessageStart,
    ev.MessageEnd,
    ev.AuthCredentials,
    ev.StartTls,
)


@dataclass(frozen=True, slots=True)
class SmtpServices:
    """What every session of one listener shares; built once, not per connection."""

    hostname: str
    tls_context: ssl.SSLContext
    store: MailStore
    pipeline: Pipeline
    authenticator: Authenticator
    log: EventLog
    command_timeout: float
    data_block_timeout: float
    data_total_timeout: float
    tls_handshake_timeout: float
    # Abuse limits (net.pacing); the defaults here turn each one off.
    greeting_delay: float | None = None  # MX pause before the final "220 " line
    greeting_passes: GreetingPasses | None = None  # clients that waited recently
    hello_timeout: float = 0.0  # seconds from connect until HELO/EHLO
    tarpit_step: float = 0.0
    tarpit_max: float = 0.0
    min_data_rate: float = 0.0  # octets a second
    data_rate_grace: float = 10.0


class SmtpSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        settings: SmtpSettings,
        services: SmtpServices,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self.core = SmtpServer(settings)
        self.svc = services
        self.log = services.log
        self.interruptible = False
        self.interrupt_requested = False
        self.closing_reply: Reply | None = None
        self.task: asyncio.Task[None] | None = None
        self.envelope: Envelope | None = None
        self.spool: MessageSpool | None = None
        self.trace_length = 0
        self.data_started = 0.0
        self.messages = 0
        self.started = time.monotonic()
        self.greeted = False  # HELO/EHLO seen (the hello_timeout bound ends)
        self.tarpit = Tarpit(services.tarpit_step, services.tarpit_max)
        self.tarpit_due = 0.0  # seconds to wait before the next flush
        self.input_rate = InputRate(services.min_data_rate, services.data_rate_grace)

    # --- output -----------------------------------------------------------------

    async def flush(self) -> None:
        out = self.core.data_to_send()
        if out:
            await self._tarpit()
            self.writer.write(out)
            await self.writer.drain()

    def _error(self, code: int) -> None:
        """An error reply (5xx) was queued: it is held back by the tarpit."""
        if code >= 500 and self.tarpit.step > 0:
            self.tarpit_due += self.tarpit.error()

    async def _tarpit(self) -> None:
        due, self.tarpit_due = self.tarpit_due, 0.0
        abuse = self.svc.pipeline.abuse
        probing = abuse.probes.delay(self.info.peer_ip) if abuse is not None else 0.0
        delay = max(due, probing)
        if delay <= 0:
            return
        self.input_rate.stop()  # our own waiting never counts against the client's rate
        self.log.info(
            "abuse.tarpit",
            session=self.info.session_id,
            ip=self.info.peer_ip,
            delay=round(delay, 3),
            errors=self.tarpit.errors,
            reason="probing" if probing > due else "errors",
        )
        await asyncio.sleep(delay)

    # --- the event loop of one session -------------------------------------------

    def interrupt(self, *, force: bool, reply: Reply = SHUTTING_DOWN) -> None:
        """Close the session with `reply` at its next safe point: now if it is waiting
        for a command (or for any input when `force`), else after its current step."""
        self.closing_reply = reply
        phase_ok = force or self.core.phase in ("command", "auth")
        if self.interruptible and phase_ok and self.task is not None:
            self.interrupt_requested = True
            self.task.cancel()

    async def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            await self._run()
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            self.log.info("smtp.connection_lost", session=self.info.session_id, error=str(exc))
        finally:
            self._drop_spool()
            with contextlib.suppress(Exception):
                self.writer.close()
            self.log.info(
                "smtp.end",
                session=self.info.session_id,
                ip=self.info.peer_ip,
                messages=self.messages,
            )

    async def _greet(self) -> None:
        """On the MX port: send "220-", pause, and refuse a client that talks before
        the final "220 " line (RFC 5321 4.3.1; see `net.pacing`)."""
        delay = self.svc.greeting_delay
        if delay is None or self.info.listener != "mx" or self.info.trusted_network:
            return
        greeting = self.core.data_to_send()  # the core's single "220 <host> ESMTP" line
        passes = self.svc.greeting_passes
        if passes is not None and passes.fresh(self.info.peer_ip):
            delay = 0.0  # waited recently: no pause, early input is still caught
        if delay > 0:
            self.writer.write(b"220-" + greeting[4:])
            await self.writer.drain()
        early = await early_input(self.reader, delay, READ_SIZE)
        if early:
            self.log.warning(
                "abuse.pregreet",
                session=self.info.session_id,
                ip=self.info.peer_ip,
                octets=len(early),
                delay=delay,
            )
            self.core.close(EARLY_TALKER)
            return
        if delay > 0 and passes is not None and early is None:
            passes.remember(self.info.peer_ip)
        self.writer.write(greeting)
        if early == b"":
            self.core.receive_eof()

    async def _run(self) -> None:
        core = self.core
        await self._greet()
        while True:
            event = core.next_event()
            if isinstance(event, _SERVER_WORK):
                self.input_rate.stop()  # the client waits for us: a new stretch begins
            if isinstance(event, ev.NeedData):
                await self.flush()
                await self._receive()
            elif isinstance(event, ev.MessageChunk):
                if self.spool is not None:
                    self.spool.write(event.data)
            elif isinstance(event, ev.RcptTo):
                reply = await self._rcpt(event)
                self._error(reply.code)
                core.send_reply(reply)
            elif isinstance(event, ev.MailFrom):
                reply = await self._mail(event)
                self._error(reply.code)
                core.send_reply(reply)
            elif isinstance(event, ev.MessageStart):
                self._open_spool()
            elif isinstance(event, ev.MessageEnd):
                reply = await self._end_of_data(event)
                self._error(reply.code)
                core.send_reply(reply)
            elif isinstance(event, ev.MessageAborted):
                self._error(event.reply_code)
                self.log.info(
                    "smtp.data.refused",
                    session=self.info.session_id,
                    ip=self.info.peer_ip,
                    reason=event.reason,
                    code=event.reply_code,
                )
                self._drop_spool()
            elif isinstance(event, ev.Reset):
                self._drop_spool()
                self.envelope = None
            elif isinstance(event, ev.Hello):
                self.greeted = True
                self.info.helo = event.domain
                self._drop_spool()
                self.envelope = None
            elif isinstance(event, ev.StartTls):
                await self._start_tls()
            elif isinstance(event, ev.AuthCredentials):
                core.send_reply(await self._authenticate(event))
            elif isinstance(event, ev.CommandRefused):
                self._error(event.reply_code)
                self.log.info(
                    "smtp.command.refused",
                    session=self.info.session_id,
                    ip=self.info.peer_ip,
                    command=event.command,
                    code=event.reply_code,
                    reason=event.reason,
                )
            elif isinstance(event, ev.ConnectionClosed):
                await self.flush()
                if event.reason not in ("quit", "eof"):
                    self.log.info("smtp.closed", session=self.info.session_id, reason=event.reason)
                return

    async def _receive(self) -> None:
        core = self.core
        if self.closing_reply is not None and core.phase in ("command", "auth"):
            core.close(self.closing_reply)
            return
        now = time.monotonic()
        if core.phase in ("data", "bdat"):
            remaining = self.svc.data_total_timeout - (now - self.data_started)
            timeout = max(0.0, min(self.svc.data_block_timeout, remaining))
        else:
            timeout = self.svc.command_timeout
        bound = "timeout"
        if not self.greeted and self.svc.hello_timeout > 0:
            hello_left = self.started + self.svc.hello_timeout - now
            if hello_left < timeout:
                timeout, bound = max(0.0, hello_left), "hello"
        slow = self._rate_deadline(now)
        if slow is not None and slow - now < timeout:
            timeout, bound = max(0.0, slow - now), "rate"
        self.interruptible = True
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            self._timed_out(bound)
            return
        except asyncio.CancelledError:
            if not self.interrupt_requested or self.task is None:
                raise
            self.task.uncancel()
            self.interrupt_requested = False
            core.close(self.closing_reply or SHUTTING_DOWN)
            return
        finally:
            self.interruptible = False
        if data:
            self.input_rate.add(len(data))
            core.receive_data(data)
        else:
            core.receive_eof()

    def _rate_deadline(self, now: float) -> float | None:
        """When the client's input would fall below the minimum rate: measured over
        DATA or a BDAT chunk, and over command lines while one is half received."""
        core = self.core
        if core.phase in ("data", "bdat"):
            kind = "data"
        elif core.partial_line:
            kind = "line"
        else:
            kind = ""
        if kind != self.input_rate.kind:
            if kind:
                self.input_rate.start(kind, now)
            else:
                self.input_rate.stop()
        return self.input_rate.deadline()

    def _timed_out(self, bound: str) -> None:
        core = self.core
        fields = {"session": self.info.session_id, "ip": self.info.peer_ip, "phase": core.phase}
        if bound == "rate":
            now = time.monotonic()
            self.log.warning(
                "abuse.slow_client",
                octets=self.input_rate.octets,
                seconds=round(now - self.input_rate.started, 1),
                rate=round(self.input_rate.rate(now), 1),
                limit=self.svc.min_data_rate,
                **fields,
            )
            core.close(TOO_SLOW)
        elif bound == "hello":
            self.log.warning("abuse.hello_timeout", limit=self.svc.hello_timeout, **fields)
            core.close(TIMEOUT)
        else:
            self.log.info("limit.timeout", **fields)
            core.close(TIMEOUT)

    # --- decisions ----------------------------------------------------------------

    async def _mail(self, event: ev.MailFrom) -> Reply:
        if self.closing_reply is not None:
            return self.closing_reply
        reply, envelope = await self.svc.pipeline.mail_from(self.info, event)
        self.envelope = envelope
        return reply

    async def _rcpt(self, event: ev.RcptTo) -> Reply:
        assert self.envelope is not None
        return await self.svc.pipeline.rcpt_to(self.info, self.envelope, event)

    async def _end_of_data(self, event: ev.MessageEnd) -> Reply:
        spool, self.spool = self.spool, None
        if spool is None or self.envelope is None:
            return LOCAL_ERROR
        try:
            content = spool.finish()
        except OSError as exc:
            self.log.error("spool.write_failed", session=self.info.session_id, error=str(exc))
            spool.discard()
            return LOCAL_ERROR
        reply = await self.svc.pipeline.end_of_data(
            self.info, self.envelope, spool.path, content, self.trace_length, event.size
        )
        if reply.is_positive:
            self.messages += 1
            abuse = self.svc.pipeline.abuse
            if abuse is not None and self.info.authenticated:
                await abuse.message_accepted(self.info, self.envelope)
        self.envelope = None
        return reply

    async def _authenticate(self, event: ev.AuthCredentials) -> Reply:
        if event.authzid and event.authzid.lower() != event.username.lower():
            return AUTH_FAILED  # RFC 4616 2: we allow no proxy authorisation
        outcome = await self.svc.authenticator.authenticate(
            event.username,
            event.password,
            ip=self.info.peer_ip,
            protocol="smtp",
            mechanism=event.mechanism,
        )
        if outcome.locked_out:
            return AUTH_TEMP_LOCKED
        if outcome.account is None:
            return AUTH_FAILED
        self.info.account_id = outcome.account.id
        self.info.account_address = outcome.account.address
        return AUTH_OK

    async def _start_tls(self) -> None:
        await self.flush()
        await start_tls(
            self.reader,
            self.writer,
            self.svc.tls_context,
            timeout=self.svc.tls_handshake_timeout,
            info=self.info,
            log=self.log,
            protocol="smtp",
        )
        self.core.tls_established()

    def note_tls(self) -> None:
        note_tls(self.writer, self.info, self.log)

    # --- spool ----------------------------------------------------------------------

    def _open_spool(self) -> None:
        assert self.envelope is not None
        self._drop_spool()
        self.data_started = time.monotonic()
        queue_id = f"{self.info.session_id}.{self.messages}"
        prefix = trace_headers(self.info, self.envelope, self.svc.hostname, queue_id, None)
        self.spool = MessageSpool(self.svc.store.new_spool(), prefix)
        self.trace_length = len(prefix)

    def _drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.discard()
            self.spool = None


class MessageSpool:
    """Where one arriving message goes: memory up to SPOOL_MEMORY_LIMIT (small messages
    are handed to the store as bytes and written off the event loop), beyond that a
    0600 spool file, so memory per session stays bounded whatever the message size."""

    def __init__(self, path: Path, prefix: bytes) -> None:
        self.path = path
        self.buffer = bytearray(prefix)
        self.file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)
            return
        self.buffer += data
        if len(self.buffer) > SPOOL_MEMORY_LIMIT:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.file = open(fd, "wb", buffering=READ_SIZE)  # noqa: SIM115 - closed in finish/discard
            self.file.write(self.buffer)
            self.buffer = bytearray()

    def finish(self) -> bytes | None:
        """The message bytes if they stayed in memory, else None (the file is complete)."""
        if self.file is None:
            return bytes(self.buffer)
        file, self.file = self.file, None
        file.close()
        return None

    def discard(self) -> None:
        self.buffer = bytearray()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def smtp_settings(config: Config, spec: ListenerSpec) -> SmtpSettings:
    limits = config.limits
    return SmtpSettings(
        hostname=config.server.hostname,
        max_message_size=limits.message_size,
        max_recipients=limits.recipients,
        max_bad_commands=limits.bad_commands,
        max_commands=limits.commands_per_session,
        tls_available=True,
        tls_active=spec.implicit_tls,
        auth_enabled=spec.kind == "submission",
        auth_required=spec.kind == "submission",
        bare_line_endings=config.smtp.bare_line_endings,
    )


def smtp_session_factory(config: Config, services: SmtpServices) -> SessionFactory:
    """Sessions for the "mx" and "submission" listeners; settings built once per listener."""
    settings: dict[str, SmtpSettings] = {}

    def make(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        spec: ListenerSpec,
    ) -> SmtpSession:
        if spec.name not in settings:
            settings[spec.name] = smtp_settings(config, spec)
        session = SmtpSession(reader, writer, info, settings[spec.name], services)
        if spec.implicit_tls:
            session.note_tls()
        return session

    return make


def smtp_services(
    config: Config,
    tls_context: ssl.SSLContext,
    store: MailStore,
    pipeline: Pipeline,
    authenticator: Authenticator,
    log: EventLog,
) -> SmtpServices:
    timeouts = config.timeouts
    abuse = config.abuse
    return SmtpServices(
        hostname=config.server.hostname,
        tls_context=tls_context,
        store=store,
        pipeline=pipeline,
        authenticator=authenticator,
        log=log,
        command_timeout=timeouts.command,
        data_block_timeout=timeouts.data_block,
        data_total_timeout=timeouts.data_total,
        tls_handshake_timeout=timeouts.tls_handshake,
        greeting_delay=abuse.greeting_delay,
        greeting_passes=GreetingPasses(abuse.greeting_pass_ttl),
        hello_timeout=abuse.hello_timeout,
        tarpit_step=abuse.tarpit_step,
        tarpit_max=abuse.tarpit_max,
        min_data_rate=abuse.min_data_rate,
        data_rate_grace=abuse.data_rate_grace,
    )
