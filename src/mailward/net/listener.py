"""SMTP listeners: bind, implicit TLS, connection limits, graceful shutdown.

Ports (RFC 6409, RFC 8314): offset+25 MX ("mx": no AUTH, local domains only unless
trusted), offset+587 submission with STARTTLS, offset+465 submission over implicit TLS.
Per-IP and global concurrent connection limits are enforced before the greeting
(Postfix's smtpd_client_connection_count_limit analogue, default 50); a client over
the limit gets 421 4.7.0 and is disconnected.

Shutdown (SIGTERM): stop accepting, close idle sessions with 421, let sessions in the
middle of a message finish for a grace period, then close the rest with 421 at a point
where nothing has been acknowledged; deliveries already in flight always complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import secrets
import ssl
from collections import Counter
from dataclasses import dataclass

from mailward.auth import Authenticator
from mailward.config.schema import PORTS, Config
from mailward.logs import EventLog
from mailward.net.smtp_server import SmtpServices, SmtpSession
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.types import SessionInfo
from mailward.proto.replies import SHUTTING_DOWN, TOO_MANY_CONNECTIONS
from mailward.proto.smtp import SmtpSettings
from mailward.store.api import MailStore

HARD_STOP = 10.0


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    name: str  # config key under [listen] and in PORTS
    kind: str  # "mx" | "submission"
    port: int
    implicit_tls: bool


def listener_specs(config: Config) -> list[ListenerSpec]:
    offset = config.listen.port_offset
    specs = []
    if config.listen.smtp:
        specs.append(ListenerSpec("smtp", "mx", offset + PORTS["smtp"], False))
    if config.listen.submission:
        specs.append(ListenerSpec("submission", "submission", offset + PORTS["submission"], False))
    if config.listen.submissions:
        specs.append(ListenerSpec("submissions", "submission", offset + PORTS["submissions"], True))
    return specs


class SmtpService:
    def __init__(
        self,
        config: Config,
        store: MailStore,
        pipeline: Pipeline,
        authenticator: Authenticator,
        tls_context: ssl.SSLContext,
        log: EventLog,
    ) -> None:
        self.config = config
        self.store = store
        self.pipeline = pipeline
        self.authenticator = authenticator
        self.tls_context = tls_context
        self.log = log
        self.servers: list[asyncio.Server] = []
        self.sessions: set[SmtpSession] = set()
        self.per_ip: Counter[str] = Counter()
        self.settings: dict[str, SmtpSettings] = {}
        # Session ids: unique per process run, no random bytes per connection.
        self.id_prefix = secrets.token_hex(3)
        self.session_numbers = itertools.count(1)
        timeouts = config.timeouts
        self.services = SmtpServices(
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
        )
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.smtp.trusted_networks]

    async def start(self) -> list[ListenerSpec]:
        host = self.config.listen.address or None
        specs = listener_specs(self.config)
        self.settings = {spec.name: self._settings(spec) for spec in specs}
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
        for server in self.servers:
            server.close()
        for session in list(self.sessions):
            session.interrupt(SHUTTING_DOWN, force=False)
        deadline = asyncio.get_running_loop().time() + grace
        while self.sessions and asyncio.get_running_loop().time() < deadline:
            for session in list(self.sessions):
                session.interrupt(SHUTTING_DOWN, force=False)
            await asyncio.sleep(0.05)
        # Sessions still here are mid-message: close them with 421 where they wait for
        # input (nothing of theirs was acknowledged); a client that does not even read
        # its replies has its connection aborted after HARD_STOP seconds.
        hard_deadline = asyncio.get_running_loop().time() + HARD_STOP
        while self.sessions:
            for session in list(self.sessions):
                session.interrupt(SHUTTING_DOWN, force=True)
                if asyncio.get_running_loop().time() > hard_deadline:
                    session.writer.transport.abort()
            await asyncio.sleep(0.05)
        await self._close_servers()

    def _settings(self, spec: ListenerSpec) -> SmtpSettings:
        limits = self.config.limits
        return SmtpSettings(
            hostname=self.config.server.hostname,
            max_message_size=limits.message_size,
            max_recipients=limits.recipients,
            max_bad_commands=limits.bad_commands,
            max_commands=limits.commands_per_session,
            tls_available=True,
            tls_active=spec.implicit_tls,
            auth_enabled=spec.kind == "submission",
            auth_required=spec.kind == "submission",
            bare_line_endings=self.config.smtp.bare_line_endings,
        )

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: ListenerSpec
    ) -> None:
        peer = writer.get_extra_info("peername") or ("0.0.0.0", 0)  # noqa: S104 - a placeholder, not a bind
        ip, port = str(peer[0]), int(peer[1])
        session_id = f"{self.id_prefix}{next(self.session_numbers):x}"
        self.log.info("smtp.connect", session=session_id, ip=ip, port=port, listener=spec.name)
        if (
            self.per_ip[ip] >= self.config.limits.connections_per_ip
            or len(self.sessions) >= self.config.limits.connections
        ):
            self.log.warning("limit.connections", session=session_id, ip=ip, listener=spec.name)
            writer.write(TOO_MANY_CONNECTIONS.to_bytes())
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        address = ipaddress.ip_address(ip.split("%")[0]) if ip != "0.0.0.0" else None  # noqa: S104
        info = SessionInfo(
            listener=spec.kind,
            peer_ip=ip,
            peer_port=port,
            session_id=session_id,
            trusted_network=address is not None and any(address in n for n in self.trusted),
        )
        session = SmtpSession(reader, writer, info, self.settings[spec.name], self.services)
        if spec.implicit_tls:
            session.note_tls()
        self.per_ip[ip] += 1
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
