"""Listeners for every protocol: bind, implicit TLS, connection limits, shutdown.

Ports (RFC 6409, RFC 8314, RFC 9051, RFC 1939): offset+25 MX ("mx": no AUTH, local
domains only unless trusted), offset+587 submission with STARTTLS, offset+465
submission over implicit TLS, offset+143 IMAP with STARTTLS, offset+993 IMAP over
implicit TLS, offset+110 POP3 with STLS, offset+995 POP3 over implicit TLS.

The protocols differ only in their session class: `MailService` takes one
`SessionFactory` per listener kind and owns what they share. Per-IP and global
concurrent connection limits (counted over all listeners) are enforced before the
greeting (Postfix's smtpd_client_connection_count_limit analogue, default 50), and so
are the abuse limits of `net.abuse` (connections per /24 or /64, new connections per
minute, clients blocked for recipient probing); a client over a limit gets the
protocol's "try later" line and is disconnected, and the trip is logged.

Shutdown (SIGTERM): stop accepting, ask every session to close at its next safe point
(idle ones at once), let sessions in the middle of a message or a store write finish
for a grace period, then ask again with force: a session closes where it waits for
input, where nothing of its own is unacknowledged; a client that does not even read
its replies has its connection aborted after HARD_STOP seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from mailward.config.schema import PORTS, Config
from mailward.logs import EventLog
from mailward.net.abuse import ConnectionGuard
from mailward.pipeline.abuse import CLIENT_BLOCKED, ProbeTracker
from mailward.pipeline.types import SessionInfo
from mailward.proto.replies import TOO_MANY_CONNECTIONS

HARD_STOP = 10.0

# What a refused connection is told, per protocol (RFC 5321 4.2.3 421, RFC 9051 7.1.5
# BYE, RFC 2449 8 [SYS/TEMP]).
BUSY_LINES = {
    "smtp": TOO_MANY_CONNECTIONS.to_bytes(),
    "imap": b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
}


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    name: str  # config key under [listen] and in PORTS
    kind: str  # "mx" | "submission" | "imap" | "pop3"
    port: int
    implicit_tls: bool

    @property
    def protocol(self) -> str:
        return "smtp" if self.kind in ("mx", "submission") else self.kind


# (config key, kind, implicit TLS) of every listener, in binding order.
LISTENERS: tuple[tuple[str, str, bool], ...] = (
    ("smtp", "mx", False),
    ("submission", "submission", False),
    ("submissions", "submission", True),
    ("imap", "imap", False),
    ("imaps", "imap", True),
    ("pop3", "pop3", False),
    ("pop3s", "pop3", True),
)


def listener_specs(config: Config) -> list[ListenerSpec]:
    offset = config.listen.port_offset
    return [
        ListenerSpec(name, kind, offset + PORTS[name], implicit)
        for name, kind, implicit in LISTENERS
        if getattr(config.listen, name)
    ]


class Session(Protocol):
    writer: asyncio.StreamWriter

    async def run(self) -> None: ...

    def interrupt(self, *, force: bool) -> None:
        """Close at the next safe point (see the module docstring)."""
        ...


SessionFactory = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, SessionInfo, ListenerSpec], Session
]


class MailService:
    def __init__(
        self,
        config: Config,
        tls_context: ssl.SSLContext,
        log: EventLog,
        factories: Mapping[str, SessionFactory],
        *,
        probes: ProbeTracker | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.tls_context = tls_context
        self.log = log
        self.factories = factories
        self.servers: list[asyncio.Server] = []
        self.sessions: set[Session] = set()
        self.per_ip: Counter[str] = Counter()
        # Session ids: unique per process run, no random bytes per connection.
        self.id_prefix = secrets.token_hex(3)
        self.session_numbers = itertools.count(1)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.smtp.trusted_networks]
        self.guard = ConnectionGuard(config.abuse, clock)
        self.probes = probes  # clients blocked for recipient probing (SMTP listeners)

    async def start(self) -> list[ListenerSpec]:
        host = self.config.listen.address or None
        specs = [s for s in listener_specs(self.config) if s.kind in self.factories]
        try:
            for spec in specs:
                server = await asyncio.start_server(
                    lambda r, w, s=spec: self._connection(r, w, s),  # type: ignore[misc]
                    host=host,
                    port=spec.port,
                    ssl=self.tls_context if spec.implicit_tls else None,
                    ssl_handshake_timeout=(
                        self.config.timeouts.tls_handshake if spec.implicit_tls else None
                    ),
                    reuse_address=True,
                    limit=256 * 1024,
                )
                self.servers.append(server)
        except OSError:
            await self._close_servers()
            raise
        return specs

    async def _close_servers(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()

    async def stop(self, grace: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        for server in self.servers:
            server.close()
        deadline = loop.time() + grace
        while True:
            for session in list(self.sessions):
                session.interrupt(force=False)
            if not self.sessions or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        hard_deadline = loop.time() + HARD_STOP
        while self.sessions:
            for session in list(self.sessions):
                session.interrupt(force=True)
                if loop.time() > hard_deadline:
                    session.writer.transport.abort()
            await asyncio.sleep(0.05)
        await self._close_servers()

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: ListenerSpec
    ) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)  # noqa: S104 - a placeholder, not a bind
        ip, port = str(peer[0]), int(peer[1])
        session_id = f"{self.id_prefix}{next(self.session_numbers):x}"
        protocol = spec.protocol
        self.log.info(
            f"{protocol}.connect", session=session_id, ip=ip, port=port, listener=spec.name
        )
        address = ipaddress.ip_address(ip.split("%")[0]) if ip != "0.0.0.0" else None  # noqa: S104
        trusted = address is not None and any(address in n for n in self.trusted)
        fields = {"session": session_id, "ip": ip, "listener": spec.name}
        blocked = self.probes.blocked_for(ip) if self.probes and protocol == "smtp" else 0.0
        if blocked and not trusted:
            self.log.warning("abuse.blocked", seconds_left=round(blocked, 1), **fields)
            await _refuse(writer, CLIENT_BLOCKED.to_bytes())
            return
        refusal = self.guard.admit(ip, exempt=trusted)
        if refusal is not None:
            self.log.warning(refusal.event, client=refusal.key, limit=refusal.limit, **fields)
            await _refuse(writer, BUSY_LINES[protocol])
            return
        limits = self.config.limits
        if self.per_ip[ip] >= limits.connections_per_ip or len(self.sessions) >= limits.connections:
            self.guard.release(ip)
            per_ip = self.per_ip[ip] >= limits.connections_per_ip
            self.log.warning(
                "limit.connections",
                limit=limits.connections_per_ip if per_ip else limits.connections,
                scope="ip" if per_ip else "server",
                **fields,
            )
            await _refuse(writer, BUSY_LINES[protocol])
            return
        info = SessionInfo(
            listener=spec.kind,
            peer_ip=ip,
            peer_port=port,
            session_id=session_id,
            trusted_network=trusted,
        )
        try:
            session = self.factories[spec.kind](reader, writer, info, spec)
        except BaseException:
            self.guard.release(ip)
            raise
        self.per_ip[ip] += 1
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.guard.release(ip)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]


async def _refuse(writer: asyncio.StreamWriter, line: bytes) -> None:
    """Say `line` ("try later") and hang up, before any greeting."""
    writer.write(line)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()
