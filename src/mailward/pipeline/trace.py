"""Trace header fields we prepend to every stored message.

RFC 5321 4.4 (Return-Path, Received), RFC 3848 (ESMTP/ESMTPS/ESMTPA/ESMTPSA "with"
types), RFC 8314 7.4 (TLS noted in Received). The authenticated user is recorded only
as the fact that the session was authenticated, never the account name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

from mailward.pipeline.types import Envelope, SessionInfo


def _protocol(session: SessionInfo) -> str:
    name = "ESMTP"
    if session.tls_version:
        name += "S"
    if session.authenticated:
        name += "A"
    return name


def _clean(text: str) -> str:
    # HELO names are client-chosen: keep them from breaking the header's syntax.
    return "".join(c for c in text if c.isprintable() and c not in "()\\")[:255] or "unknown"


def trace_headers(
    session: SessionInfo, envelope: Envelope, hostname: str, queue_id: str, now: datetime | None
) -> bytes:
    when = format_datetime(now or datetime.now(UTC))
    notes = []
    if session.tls_version:
        notes.append(f"using {session.tls_version} with cipher {session.tls_cipher}")
    if session.authenticated:
        notes.append("authenticated")
    comment = f" ({'; '.join(notes)})" if notes else ""
    single = ""
    if len(envelope.recipients) == 1:
        single = f"\r\n\tfor <{envelope.recipients[0].address}>"
    received = (
        f"Received: from {_clean(session.helo)} ([{session.peer_ip}])\r\n"
        f"\tby {hostname} with {_protocol(session)} id {queue_id}{comment}{single};\r\n"
        f"\t{when}\r\n"
    )
    return_path = f"Return-Path: <{envelope.sender}>\r\n"
    return (return_path + received).encode("utf-8")
