"""The outbound delivery worker: takes due queue entries and delivers them.

RFC 5321 4.5.4 (retries) and 5 (MX), RFC 3464 (DSN), RFC 7505 (null MX), RFC 6376 /
RFC 8463 (DKIM signing), RFC 3207 + `queue.tls_policy` (STARTTLS, MTA-STS, DANE).

How it works
- Claims: `MailStore.claim_queue` takes due entries durably (state 'delivering',
  owner = this process, a lease renewed every LEASE/3 while it runs). A process that
  dies leaves its entries held until the lease ends; a restart of the same node
  (same host name and data directory) takes them back at once (`requeue_claims`).
- Jobs: claimed entries are grouped by recipient domain (one job per domain, one
  connection at a time per domain, `delivery.workers` jobs at once) and, within a
  domain, by message: one transaction per (message, domain) with one RCPT per
  recipient. Entries claimed while a job for their domain runs join its list, so the
  open connection is reused (RSET between transactions).
- Route: `delivery.smarthost` if set (implicit TLS on 465, else STARTTLS required;
  the certificate verified; AUTH PLAIN with the configured user), else the MX hosts
  (`queue.routing`), each address in turn. The TLS policy (`tls_policy.select_policy`)
  decides per host whether TLS is optional (opportunistic: STARTTLS when offered, not
  verified, cleartext if the handshake fails) or required and how it is checked
  (`check_peer`); a policy failure defers (4.7.5), never downgrades.
- Message: the stored blob minus any Return-Path field (RFC 5321 4.4: added at final
  delivery only), line endings made CRLF, then DKIM-signed (Ed25519 and RSA,
  relaxed/relaxed) when the From: domain, else the MAIL FROM domain, is one of ours.
  MAIL carries SIZE, BODY=8BITMIME (8-bit content) and SMTPUTF8 (non-ASCII envelope
  or UTF-8 header fields) as offered; a message over the server's SIZE fails 5.3.4,
  one needing SMTPUTF8 where it is not offered fails 5.6.7 (RFC 6531 3.2).
- Outcomes per recipient: 2xx to the final "." delivers; a 5xx (to MAIL, RCPT, DATA
  or the message) fails that recipient for good; a 4xx, a refused or broken
  connection, a timeout or a TLS policy failure defers it to the next retry of
  `delivery.retry_schedule`, until `delivery.max_age`, when it fails (4.4.7).
  Connection-level failures before the message was sent move on to the next MX host
  or address at once.
- DSNs (`queue.dsn`): a failure sends one DSN per message to its sender (Action:
  failed), the first deferral after `delivery.delay_warning` one delay warning; never
  for the null sender, and DSNs go out from the null sender. A local sender gets it in
  their INBOX (`store.deliver`), a remote one through this queue.

Invariants
- "Nothing acknowledged is delivered twice": recipients are marked delivered (removed
  from the queue, committed) right after the destination's 250 to the message, before
  anything else happens on the connection. The only window for a duplicate is a crash
  between that 250 and the commit, or a connection lost after the final "." before the
  reply (RFC 5321 6.1: a rare duplicate rather than a loss).
- "Nothing lost": an entry leaves the queue only as delivered, or as failed after its
  DSN is durable (or with the null sender, which gets none).
- Every attempt is logged as `queue.attempt` (ids, domain, MX, TLS, policy, reply code,
  next attempt); never a message body and never the smarthost password.
- The clock and sleep are injected (tests run retry schedules in milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import secrets
import socket
import stat
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailward.config.schema import Config
from mailward.crypto import dkim
from mailward.logs import EventLog
from mailward.message.headers import (
    MAX_HEADER_SECTION,
    HeaderSectionTooLarge,
    header_section,
    header_values,
    mailbox_addresses,
)
from mailward.proto.replies import Reply
from mailward.queue import tls_policy
from mailward.queue.dsn import RecipientReport, build_dsn
from mailward.queue.mta_sts import MtaStsCache
from mailward.queue.routing import (
    MxHost,
    Route,
    RouteError,
    find_route,
    host_addresses,
    smarthost_route,
)
from mailward.queue.schedule import RetrySchedule
from mailward.queue.tls_policy import PolicyError, TlsPolicy
from mailward.queue.transport import (
    SmtpConnection,
    Timeouts,
    TransactionResult,
    TransportError,
    reply_text,
)
from mailward.resolver import DnsTemporaryError, Resolver
from mailward.store.api import (
    Delivery,
    LocalTarget,
    MailStore,
    QueueEntry,
    QueueState,
    QueueUpdate,
    StoreError,
)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

LEASE = 300.0  # seconds a claim lasts without renewal
POLL_INTERVAL = 1.0  # seconds between looks at the queue when it is idle
MAX_HELD = 2000  # entries claimed and not yet finished, at most
DSN_RETRY = 300.0  # a failure whose DSN could not be stored is tried again this soon
SMTP_PORT = 25  # RFC 5321 4.5.4.2 / 5.1: the MX's port, not configurable

_LINE_END = re.compile(rb"\r\n|\r|\n")


class WorkerConfigError(Exception):
    """The [delivery] settings cannot be used (e.g. an unsafe password file)."""


@dataclass(frozen=True)
class WorkerSettings:
    hostname: str  # EHLO name, Reporting-MTA
    data_dir: Path  # DKIM keys live under it
    schedule: RetrySchedule
    workers: int = 8
    require_tls: frozenset[str] = frozenset()
    dane_trusted: bool = False
    smarthost: tuple[str, int] | None = None
    smarthost_user: str = ""
    smarthost_password: str = field(default="", repr=False)
    timeouts: Timeouts = field(default_factory=Timeouts)
    lease: float = LEASE
    poll_interval: float = POLL_INTERVAL
    tls_cafile: Path | None = None  # extra trust anchor for verified TLS (tests)
    source_address: str | None = None  # listen.address when it is one IP of this family

    @classmethod
    def from_config(cls, config: Config, data_dir: Path) -> WorkerSettings:
        d = config.delivery
        smarthost = None
        password = ""
        if d.smarthost:
            try:
                smarthost = smarthost_route(d.smarthost)
            except ValueError as exc:
                raise WorkerConfigError(f"delivery.smarthost: {exc}") from None
            if d.smarthost_password_file:
                password = _read_password_file(data_dir, d.smarthost_password_file)
            if d.smarthost_user and not password:
                raise WorkerConfigError(
                    "delivery.smarthost_user is set but delivery.smarthost_password_file is not"
                )
        return cls(
            hostname=config.server.hostname,
            data_dir=data_dir,
            schedule=RetrySchedule.from_config(d),
            workers=max(1, d.workers),
            require_tls=frozenset(x.strip().lower().rstrip(".") for x in d.require_tls),
            dane_trusted=config.dns.trusted,
            smarthost=smarthost,
            smarthost_user=d.smarthost_user,
            smarthost_password=password,
            source_address=_source_address(config.listen.address),
        )


def _read_password_file(data_dir: Path, name: str) -> str:
    path = Path(name) if Path(name).is_absolute() else data_dir / name
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkerConfigError(f"delivery.smarthost_password_file: cannot read {path}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WorkerConfigError(
            f"delivery.smarthost_password_file: {path} is readable by others "
            f"(mode {st.st_mode & 0o777:o}); chmod 600 it"
        )
    return text.strip("\r\n")


def node_name(data_dir: Path) -> str:
    """What identifies this node's processes in queue claims: the machine and the data
    directory (two servers on one machine have two data directories)."""
    return f"{socket.gethostname()}:{os.path.abspath(data_dir)}"


# --- the message as sent ------------------------------------------------------------------


def outgoing_message(stored: bytes) -> bytes:
    """The stored message as it goes out: no Return-Path field in its header section
    (RFC 5321 4.4), CRLF line endings (RFC 5321 2.3.8)."""
    if stored.count(b"\r\n") * 2 != stored.count(b"\r") + stored.count(b"\n"):
        stored = _LINE_END.sub(b"\r\n", stored)
    end = stored.find(b"\r\n\r\n")
    head_end = len(stored) if end < 0 else end + 2
    head = stored[:head_end]
    if b"return-path:" not in head.lower():
        return stored
    kept: list[bytes] = []
    dropping = False
    for line in head.split(b"\r\n")[:-1]:
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(b"return-path:")
        if not dropping:
            kept.append(line)
    rebuilt = b"".join(line + b"\r\n" for line in kept)
    return rebuilt + stored[head_end:]


def needs_smtputf8(sender: str, recipients: Sequence[str], message: bytes) -> bool:
    """RFC 6531 / 6532: a non-ASCII envelope address, or UTF-8 in the header section
    (legacy 8-bit headers that are not UTF-8 do not count: they need no SMTPUTF8)."""
    if not sender.isascii() or not all(r.isascii() for r in recipients):
        return True
    try:
        head = header_section(message[: MAX_HEADER_SECTION + 4], complete=True)
    except HeaderSectionTooLarge:
        head = message[:MAX_HEADER_SECTION]
    if head.isascii():
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


# --- attempt bookkeeping -------------------------------------------------------------------


@dataclass
class _Message:
    """The entries of one stored message for one destination domain."""

    blob_id: str
    sender: str
    entries: list[QueueEntry]

    @property
    def recipients(self) -> list[str]:
        return list(dict.fromkeys(e.recipient for e in self.entries))


@dataclass
class _Job:
    domain: str
    messages: deque[_Message]
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class _Skip:
    """An MX host passed over, and why (the reason to defer if nothing else works)."""

    status: str
    reason: str


_Candidate = tuple[MxHost, str] | _Skip


@dataclass
class _Where:
    """Where an attempt went, for the log and the DSN."""

    mx: str = ""
    ip: str = ""
    tls: str = ""
    policy: str = ""


@dataclass
class _Outcome:
    entry: QueueEntry
    kind: str  # "delivered" | "failed" | "deferred"
    status: str  # RFC 3463
    diagnostic: str  # reply text or our reason (for last_error and the DSN)
    code: int = 0  # the SMTP reply code, 0 if none


def _status(reply: Reply) -> str:
    if reply.enhanced:
        return reply.enhanced
    return f"{str(reply.code)[0]}.0.0" if str(reply.code)[0] in "245" else "4.0.0"


def _connect_status(exc: TransportError) -> str:
    if exc.stage in ("tls", "auth"):
        return "4.7.5"
    if exc.stage in ("greeting", "ehlo") and exc.reply is not None and exc.reply.enhanced:
        return "4." + exc.reply.enhanced[2:]  # a refusal of one host is not final
    return "4.4.1" if exc.stage == "connect" else "4.4.2"


def _by_reply(entry: QueueEntry, reply: Reply) -> _Outcome:
    if 200 <= reply.code < 300:
        kind = "delivered"
    elif 500 <= reply.code < 600:
        kind = "failed"
    else:
        kind = "deferred"
    return _Outcome(entry, kind, _status(reply), reply_text(reply), reply.code)


# --- the worker ------------------------------------------------------------------------------


class QueueWorker:
    def __init__(
        self,
        store: MailStore,
        resolver: Resolver,
        log: EventLog,
        settings: WorkerSettings,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        sts: MtaStsCache | None = None,
        node: str | None = None,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.log = log
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.sts = sts
        self.node = node if node is not None else node_name(settings.data_dir)
        self.owner = f"{self.node}/{os.getpid()}.{secrets.token_hex(4)}"
        self._jobs: dict[str, _Job] = {}
        self._slots = asyncio.Semaphore(settings.workers)
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_renewal = 0.0

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Take back what a previous process of this node held, then run."""
        taken = await self.store.requeue_claims(self.node + "/", keep=self.owner)
        if taken:
            self.log.info("queue.recovered", entries=taken)
        self._task = asyncio.create_task(self._run(), name="mailward-queue")

    def wake(self) -> None:
        """Look at the queue now (e.g. right after something was queued)."""
        self._wake.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Finish the messages being sent (up to `grace` seconds), give back the rest."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        with contextlib.suppress(StoreError):
            released = await self.store.requeue_claims(self.owner, keep="")
            if released:
                self.log.info("queue.released", entries=released)

    async def run_once(self) -> int:
        """Claim what is due now, deliver it, and return how many entries were claimed
        (tests drive the worker with this and an injected clock)."""
        claimed = await self._claim()
        while self._jobs:
            tasks = [j.task for j in self._jobs.values() if j.task is not None]
            await asyncio.gather(*tasks, return_exceptions=True)
        return claimed

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            claimed = 0
            due: float | None = None
            try:
                claimed = await self._claim()
                await self._renew()
                due = await self.store.next_queue_due()
            except StoreError as exc:
                self.log.error("queue.store_error", error=str(exc))
            except Exception as exc:  # a bug: log it, keep the queue running
                self.log.error("queue.loop_failed", error=repr(exc))
            delay = self.settings.poll_interval
            if due is not None and (claimed or due > self.clock()):
                delay = max(0.0, min(delay, due - self.clock()))
            await self._idle(delay)

    async def _idle(self, delay: float) -> None:
        """Wait `delay` (with the injected sleep) or until `wake()`."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        sleeper = asyncio.ensure_future(self.sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _renew(self) -> None:
        now = self.clock()
        if self._jobs and now - self._last_renewal >= self.settings.lease / 3:
            await self.store.renew_queue_claims(self.owner, now + self.settings.lease)
            self._last_renewal = now

    def _held(self) -> int:
        return sum(len(m.entries) for j in self._jobs.values() for m in j.messages)

    async def _claim(self) -> int:
        room = MAX_HELD - self._held()
        if room <= 0 or self._stopping:
            return 0
        now = self.clock()
        entries = await self.store.claim_queue(self.owner, now, now + self.settings.lease, room)
        if not entries:
            return 0
        self._last_renewal = now
        grouped: dict[str, dict[tuple[str, str], list[QueueEntry]]] = {}
        for e in entries:
            grouped.setdefault(_domain(e.recipient), {}).setdefault(
                (e.blob_id, e.sender), []
            ).append(e)
        for domain, messages in grouped.items():
            items = [_Message(blob, sender, es) for (blob, sender), es in messages.items()]
            job = self._jobs.get(domain)
            if job is not None:
                job.messages.extend(items)  # the running job takes them on its connection
                continue
            job = _Job(domain, deque(items))
            self._jobs[domain] = job
            job.task = asyncio.create_task(self._job(job), name=f"mailward-queue-{domain}")
        return len(entries)

    # --- one destination domain ---------------------------------------------------------

    async def _job(self, job: _Job) -> None:
        try:
            # Entries claimed while the job winds down (closing its connection) join
            # `job.messages` too: go round again rather than leave them orphaned. No
            # await lies between the last check and leaving `_jobs`.
            while job.messages and not self._stopping:
                async with self._slots:
                    await self._deliver_domain(job)
        except Exception as exc:  # a bug: give the entries back later, keep serving
            self.log.error("queue.job_failed", domain=job.domain, error=repr(exc))
            await self._give_back(job, delay=self.settings.schedule.delay(1))
        except asyncio.CancelledError:
            await asyncio.shield(self._give_back(job))
            raise
        finally:
            self._jobs.pop(job.domain, None)
        if job.messages:  # stopping
            await self._give_back(job)

    async def _give_back(self, job: _Job, delay: float = 0.0) -> None:
        """Put the job's unfinished entries back in the queue: due at once (shutdown),
        or after `delay` (a failure we did not foresee, so it cannot spin)."""
        now = self.clock()
        state = QueueState.DEFERRED if delay else QueueState.QUEUED
        updates = [
            QueueUpdate(e.id, state, now + delay, "local error" if delay else "")
            for m in job.messages
            for e in m.entries
        ]
        job.messages.clear()
        if updates:
            with contextlib.suppress(StoreError):
                await self.store.update_queue(self.owner, updates)

    async def _deliver_domain(self, job: _Job) -> None:
        where = _Where()
        try:
            route, policy = await self._route(job.domain)
        except RouteError as exc:
            kind = "failed" if exc.permanent else "deferred"
            await self._finish_all(job, kind, exc.status, exc.text, where)
            return
        where.policy = policy.mode
        candidates = self._candidates(route, policy)
        conn: SmtpConnection | None = None
        current: tuple[MxHost, str] | None = None
        last = _Skip("4.4.1", "no MX host could be reached")
        try:
            while job.messages:
                if self._stopping:
                    await self._give_back(job)
                    return
                msg = job.messages[0]
                prepared = await self._prepare(msg)
                if isinstance(prepared, _Outcome):
                    job.messages.popleft()
                    outcomes = [
                        _Outcome(e, prepared.kind, prepared.status, prepared.diagnostic)
                        for e in msg.entries
                    ]
                    await self._finish(msg, outcomes, where)
                    continue
                while True:
                    if conn is None or not conn.usable:
                        reuse = current if conn is not None and conn.transactions > 1 else None
                        if conn is not None:
                            conn.close()
                        conn = None
                        got = await self._reconnect(reuse, policy) or await self._connect(
                            candidates, policy, last
                        )
                        if isinstance(got, _Skip):
                            await self._finish_all(job, "deferred", got.status, got.reason, where)
                            return
                        conn, where, current = got
                    outcomes_or_skip = await self._send(conn, msg, prepared)
                    if isinstance(outcomes_or_skip, _Skip):
                        last = outcomes_or_skip
                        conn.close()  # nothing was delivered: the next host, at once
                        self.log.info(
                            "queue.connection_lost", mx=where.mx, error=outcomes_or_skip.reason
                        )
                        continue
                    job.messages.popleft()
                    await self._finish(msg, outcomes_or_skip, where)
                    break
        finally:
            if conn is not None:
                await conn.quit()

    async def _reconnect(
        self, target: tuple[MxHost, str] | None, policy: TlsPolicy
    ) -> tuple[SmtpConnection, _Where, tuple[MxHost, str]] | None:
        """A fresh connection to the host that just served us well (it may limit
        messages per connection), before moving on to the next one."""
        if target is None:
            return None
        host, address = target
        try:
            conn = await self._open(host, address, policy)
        except TransportError:
            return None
        where = _Where(host.name, address, conn.tls_version, policy.for_host(host.name).mode)
        return conn, where, target

    async def _finish_all(
        self, job: _Job, kind: str, status: str, text: str, where: _Where
    ) -> None:
        while job.messages:
            msg = job.messages.popleft()
            await self._finish(msg, [_Outcome(e, kind, status, text) for e in msg.entries], where)

    async def _route(self, domain: str) -> tuple[Route, TlsPolicy]:
        """The hosts to try and the TLS policy (RouteError: no delivery now)."""
        s = self.settings
        if s.smarthost is not None:
            host, _port = s.smarthost
            # The smarthost gets our credentials: verified TLS, always.
            return Route(domain, (MxHost(host, 0),)), TlsPolicy(
                "required", verify_hostname=True, reason="smarthost"
            )
        route = await find_route(domain, self.resolver)
        try:
            policy = await tls_policy.select_policy(
                domain,
                route.host_names,
                self.resolver,
                require_tls=domain in s.require_tls,
                sts=self.sts,
                dane_trusted=s.dane_trusted,
            )
        except (DnsTemporaryError, PolicyError) as exc:
            raise RouteError("4.7.5", f"TLS policy unavailable: {exc}", permanent=False) from exc
        return route, policy

    async def _candidates(self, route: Route, policy: TlsPolicy) -> AsyncIterator[_Candidate]:
        """(host, address) pairs to try, in order, and the hosts passed over."""
        if self.settings.smarthost is not None:
            yield route.hosts[0], route.hosts[0].name  # resolved by the system resolver
            return
        for host in route.hosts:
            if not policy.mx_allowed(host.name):
                yield _Skip("4.7.5", f"MX {host.name} not allowed by the MTA-STS policy")
                continue
            try:
                addresses = await host_addresses(host, self.resolver)
            except DnsTemporaryError as exc:
                yield _Skip("4.4.3", f"DNS lookup of {host.name} failed: {exc}")
                continue
            if not addresses:
                yield _Skip("4.4.4", f"MX {host.name} has no address")
                continue
            for address in addresses:
                yield host, address

    async def _connect(
        self, candidates: AsyncIterator[_Candidate], policy: TlsPolicy, failure: _Skip
    ) -> tuple[SmtpConnection, _Where, tuple[MxHost, str]] | _Skip:
        """A connection to the next candidate that works, else why none did (the last
        failure seen, `failure` if there is no candidate left to try)."""
        async for item in candidates:
            if isinstance(item, _Skip):
                failure = item
                self.log.info("queue.mx_skipped", reason=item.reason)
                continue
            host, address = item
            try:
                conn = await self._open(host, address, policy)
            except TransportError as exc:
                failure = _Skip(_connect_status(exc), exc.text)
                self.log.info(
                    "queue.connect_failed",
                    mx=host.name,
                    ip=address,
                    stage=exc.stage,
                    error=exc.text,
                )
                continue
            where = _Where(host.name, address, conn.tls_version, policy.for_host(host.name).mode)
            return conn, where, item
        return failure

    async def _open(self, host: MxHost, address: str, policy: TlsPolicy) -> SmtpConnection:
        s = self.settings
        port = s.smarthost[1] if s.smarthost is not None else SMTP_PORT
        sni = None if host.literal else host.name
        implicit = s.smarthost is not None and port == 465
        ctx = (
            tls_policy.client_context(policy, mx_host=host.name, cafile=s.tls_cafile)
            if implicit
            else None
        )
        conn = await SmtpConnection.open(
            host.name,
            address,
            port,
            helo=s.hostname,
            timeouts=s.timeouts,
            implicit_tls=ctx,
            server_hostname=sni,
            source_address=_same_family(s.source_address, address),
        )
        try:
            if not implicit:
                conn = await self._starttls(conn, host, address, port, policy)
            if conn.ssl_object is not None:
                problem = tls_policy.check_peer(policy, host.name, conn.ssl_object)
                if problem is not None:
                    raise TransportError("tls", problem)
            if s.smarthost is not None and s.smarthost_user:
                await conn.auth_plain(s.smarthost_user, s.smarthost_password)
        except BaseException:
            await conn.quit()
            raise
        return conn

    async def _starttls(
        self, conn: SmtpConnection, host: MxHost, address: str, port: int, policy: TlsPolicy
    ) -> SmtpConnection:
        s = self.settings
        own = policy.for_host(host.name)
        if not conn.extensions.starttls:
            if own.tls_required:
                raise TransportError("tls", f"{host.name} does not offer STARTTLS ({own.mode})")
            return conn  # RFC 7435: cleartext is what the peer offers
        ctx = tls_policy.client_context(policy, mx_host=host.name, cafile=s.tls_cafile)
        try:
            await conn.starttls(ctx, None if host.literal else host.name, s.hostname)
        except TransportError as exc:
            if own.tls_required or exc.reply is not None:
                raise
            # Opportunistic: a failed handshake is no reason to keep mail back; try
            # again on a fresh connection without TLS (RFC 7435 3, as Postfix does).
            self.log.info("queue.tls_fallback", mx=host.name, ip=address, error=exc.text)
            conn.close()
            conn = await SmtpConnection.open(
                host.name,
                address,
                port,
                helo=s.hostname,
                timeouts=s.timeouts,
                source_address=_same_family(s.source_address, address),
            )
        return conn

    # --- one message ----------------------------------------------------------------------

    async def _prepare(self, msg: _Message) -> bytes | _Outcome:
        """The bytes to send (signed), or the outcome for every entry if they can't be."""
        placeholder = msg.entries[0]
        try:
            stored = await self.store.read_blob(msg.blob_id)
        except StoreError as exc:
            self.log.error("queue.blob_unreadable", blob=msg.blob_id, error=str(exc))
            return _Outcome(placeholder, "deferred", "4.3.0", "local error reading the message")
        message = outgoing_message(stored)
        try:
            signed = await self._sign(message, msg.sender)
        except dkim.DkimKeyError as exc:
            self.log.error("queue.dkim_key_error", error=str(exc))
            return _Outcome(placeholder, "deferred", "4.7.0", "local DKIM key problem")
        return signed

    async def _signing_domain(self, message: bytes, sender: str) -> str | None:
        try:
            head = header_section(message[: MAX_HEADER_SECTION + 4], complete=True)
        except HeaderSectionTooLarge:
            head = b""
        candidates = [_domain(a) for a in mailbox_addresses(header_values(head, "From"))[:1]]
        if sender:
            candidates.append(_domain(sender))
        for domain in candidates:
            if domain and await self.store.is_local_domain(domain):
                return domain
        return None

    async def _sign(self, message: bytes, sender: str) -> bytes:
        domain = await self._signing_domain(message, sender)
        if domain is None:
            return message
        data_dir = self.settings.data_dir

        def sign() -> bytes:
            try:
                keys = dkim.load_domain_keys(data_dir, domain)
            except ValueError:
                return b""
            newest: dict[str, dkim.DkimKey] = {}
            for key in keys:
                newest.setdefault(key.algorithm, key)
            headers = b"".join(dkim.sign_message(message, k) for k in newest.values())
            return headers

        headers = await asyncio.to_thread(sign)
        if not headers:
            self.log.warning("queue.unsigned", domain=domain, reason="no DKIM key")
        return headers + message

    async def _send(
        self, conn: SmtpConnection, msg: _Message, message: bytes
    ) -> list[_Outcome] | _Skip:
        """One transaction: the outcomes, or a _Skip when the connection failed before
        the message was sent (nothing delivered: try the next host)."""
        ext = conn.extensions
        recipients = msg.recipients
        by_rcpt: dict[str, list[QueueEntry]] = {}
        for e in msg.entries:
            by_rcpt.setdefault(e.recipient, []).append(e)

        def every(kind: str, status: str, text: str, code: int = 0) -> list[_Outcome]:
            return [_Outcome(e, kind, status, text, code) for e in msg.entries]

        utf8 = needs_smtputf8(msg.sender, recipients, message)
        if utf8 and not ext.smtputf8:
            return every("failed", "5.6.7", f"{conn.host} does not support SMTPUTF8 (RFC 6531)")
        limit = ext.size
        if limit and len(message) > limit:
            return every("failed", "5.3.4", f"message too big for {conn.host} (SIZE {limit})")
        try:
            result = await conn.transaction(
                msg.sender,
                recipients,
                message,
                size=limit is not None,
                body_8bitmime=ext.eightbitmime and not message.isascii(),
                smtputf8=utf8,
            )
        except TransportError as exc:
            if exc.stage == "end":
                # The message went out whole; whether it arrived is unknown. Defer: the
                # next attempt may duplicate it, never lose it (RFC 5321 6.1).
                return every("deferred", "4.4.2", exc.text)
            reply = exc.reply
            if reply is not None and reply.code != 421:
                kind = "failed" if exc.permanent else "deferred"
                return every(kind, _status(reply), reply_text(reply), reply.code)
            return _Skip("4.4.2", exc.text)
        return await self._outcomes(by_rcpt, result)

    async def _outcomes(
        self, by_rcpt: dict[str, list[QueueEntry]], result: TransactionResult
    ) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        accepted: list[QueueEntry] = []
        for rcpt, reply in result.rcpts.items():
            if 200 <= reply.code < 300:
                accepted += by_rcpt[rcpt]
            else:
                outcomes += [_by_reply(e, reply) for e in by_rcpt[rcpt]]
        final = result.message if result.message is not None else result.data
        if accepted and final is not None:
            if 200 <= final.code < 300:
                delivered = [_by_reply(e, final) for e in accepted]
                await self._mark_delivered([o.entry for o in delivered])
                outcomes += delivered
            else:
                outcomes += [_by_reply(e, final) for e in accepted]
        elif accepted:
            outcomes += [_Outcome(e, "deferred", "4.4.2", "no reply to DATA") for e in accepted]
        return outcomes

    async def _mark_delivered(self, entries: list[QueueEntry]) -> None:
        """Durably, before anything else happens on the connection (module invariant)."""
        try:
            done = await self.store.update_queue(
                self.owner, [QueueUpdate(e.id, QueueState.DELIVERED) for e in entries]
            )
        except StoreError as exc:
            self.log.error(
                "queue.mark_delivered_failed", ids=[e.id for e in entries], error=str(exc)
            )
            return
        if len(done) != len(entries):
            self.log.warning("queue.claim_lost", ids=sorted({e.id for e in entries} - set(done)))

    def _log_attempt(self, o: _Outcome, where: _Where, next_attempt: float = 0.0) -> None:
        self.log.info(
            "queue.attempt",
            id=o.entry.id,
            domain=_domain(o.entry.recipient),
            mx=where.mx,
            ip=where.ip,
            tls=where.tls,
            policy=where.policy,
            code=o.code,
            status=o.status,
            outcome=o.kind,
            attempt=o.entry.attempts,
            next_attempt=next_attempt or None,
        )

    # --- after an attempt: retry, DSN -------------------------------------------------------

    async def _finish(self, msg: _Message, outcomes: list[_Outcome], where: _Where) -> None:
        """Log every outcome; record failures and deferrals (deliveries are recorded
        already), sending the DSNs they call for first."""
        s = self.settings.schedule
        now = self.clock()
        failed: list[_Outcome] = []
        deferred: list[tuple[_Outcome, float, bool]] = []
        for o in outcomes:
            if o.kind == "delivered":
                self._log_attempt(o, where)
                continue
            if o.kind == "deferred" and s.expired(o.entry.created, now):
                text = f"delivery time expired; last error: {o.diagnostic}"
                o = _Outcome(o.entry, "failed", "4.4.7", text, o.code)
            if o.kind == "failed":
                failed.append(o)
                self._log_attempt(o, where)
            else:
                next_at = s.next_attempt(o.entry.created, o.entry.attempts, now)
                deferred.append((o, next_at, s.warn_now(o.entry.created, now, o.entry.warned)))
                self._log_attempt(o, where, next_at)
        updates: list[QueueUpdate] = []
        if failed:
            stored = await self._dsn(msg, failed, "failed", where, now)
            for o in failed:
                if stored:
                    updates.append(QueueUpdate(o.entry.id, QueueState.FAILED, error=o.diagnostic))
                else:  # keep it until its DSN can be stored
                    updates.append(
                        QueueUpdate(o.entry.id, QueueState.DEFERRED, now + DSN_RETRY, o.diagnostic)
                    )
        to_warn = [o for o, _, warn in deferred if warn]
        warned = bool(to_warn) and await self._dsn(msg, to_warn, "delayed", where, now)
        for o, next_at, warn in deferred:
            updates.append(
                QueueUpdate(o.entry.id, QueueState.DEFERRED, next_at, o.diagnostic, warn and warned)
            )
        if updates:
            try:
                await self.store.update_queue(self.owner, updates)
            except StoreError as exc:
                self.log.error("queue.update_failed", error=str(exc))

    async def _dsn(
        self, msg: _Message, outcomes: list[_Outcome], action: str, where: _Where, now: float
    ) -> bool:
        """Send one DSN about `outcomes`; True once it is durable (or none is due)."""
        if not msg.sender:
            return True  # RFC 3464 2: never a DSN for the null reverse-path
        s = self.settings.schedule
        reports = [
            RecipientReport(
                recipient=o.entry.recipient,
                action=action,
                status=o.status,
                diagnostic=o.diagnostic,
                remote_mta=where.mx if o.code else "",
                last_attempt=o.entry.last_attempt or now,
                will_retry_until=s.expires(o.entry.created) if action == "delayed" else 0.0,
            )
            for o in outcomes
        ]
        try:
            original = await self.store.read_blob(msg.blob_id, 0, MAX_HEADER_SECTION + 4)
        except StoreError:
            original = b""
        created = min(o.entry.created for o in outcomes)
        body = build_dsn(
            reporting_mta=self.settings.hostname,
            original_sender=msg.sender,
            arrival=created,
            now=now,
            reports=reports,
            original=original,
        )
        try:
            where_to = await self._deliver_dsn(msg.sender, body)
        except (StoreError, OSError) as exc:
            self.log.error("queue.dsn_failed", error=str(exc), sender_domain=_domain(msg.sender))
            return False
        self.log.info(
            "queue.dsn",
            action=action,
            ids=[o.entry.id for o in outcomes],
            to=where_to,
        )
        return True

    async def _deliver_dsn(self, sender: str, body: bytes) -> str:
        """Into the sender's INBOX if the sender is ours, else onto this queue from <>."""
        data = b"Return-Path: <>\r\n" + body
        account = None
        if await self.store.is_local_domain(_domain(sender)):
            account = await self.store.resolve_recipient(sender)
            if account is None:
                self.log.warning("queue.dsn_dropped", reason="local sender has no account")
                return "nowhere"
        delivery = Delivery(
            spool=self.store.new_spool(),
            sender="",
            local=[LocalTarget(account.id)] if account is not None else [],
            outbound=[] if account is not None else [sender],
            content=data,
        )
        await self.store.deliver(delivery)
        if account is not None:
            return "local"
        self.wake()
        return "queue"


def _source_address(listen: str) -> str | None:
    """Outbound mail leaves from the address the server listens on when that is one
    specific IP (Postfix's smtp_bind_address): the receiver's SPF and reverse-DNS
    checks then see the address the admin published."""
    if not listen:
        return None
    address = ipaddress.ip_address(listen)
    return None if address.is_unspecified else str(address)


def _same_family(source: str | None, destination: str) -> str | None:
    """`source` only when it can reach `destination` (IPv4 to IPv4, IPv6 to IPv6)."""
    if source is None:
        return None
    try:
        same = ipaddress.ip_address(source).version == ipaddress.ip_address(destination).version
    except ValueError:
        return None
    return source if same else None
