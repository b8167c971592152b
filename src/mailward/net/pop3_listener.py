"""Builds POP3 sessions for the listeners (`net.listener.MailService`) from the config.

The session itself is `net.pop3_server.Pop3Session` (RFC 1939, 2449, 2595, 5034). The
maildrop locks (RFC 1939 8: one TRANSACTION per account at a time) are shared by every
POP3 session of this process.
"""

from __future__ import annotations

import asyncio
import ssl

from mailward.auth import Authenticator
from mailward.config.schema import Config
from mailward.logs import EventLog
from mailward.net.listener import ListenerSpec, SessionFactory
from mailward.net.pop3_server import Pop3Services, Pop3Session
from mailward.pipeline.types import SessionInfo
from mailward.store.api import MailStore


def pop3_services(
    config: Config,
    tls_context: ssl.SSLContext,
    store: MailStore,
    authenticator: Authenticator,
    log: EventLog,
) -> Pop3Services:
    return Pop3Services(
        hostname=config.server.hostname,
        tls_context=tls_context,
        store=store,
        authenticator=authenticator,
        log=log,
        command_timeout=max(600.0, config.timeouts.command),
        tls_handshake_timeout=config.timeouts.tls_handshake,
        maildrop_locks=set(),
    )


def pop3_session_factory(services: Pop3Services) -> SessionFactory:
    def make(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        spec: ListenerSpec,
    ) -> Pop3Session:
        return Pop3Session(reader, writer, info, services, implicit_tls=spec.implicit_tls)

    return make
