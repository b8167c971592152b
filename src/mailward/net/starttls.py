"""What every TLS upgrade (SMTP STARTTLS, IMAP STARTTLS, POP3 STLS) does, in one place.

RFC 3207 4.2 / RFC 9051 6.2.1 / RFC 2595 4, CVE-2011-0411: plaintext the client
pipelined after the upgrade command must never be read as if it had come over TLS.
The protocol cores drop what they were handed; the asyncio StreamReader may hold more,
read from the socket but not yet returned, and it has no public way to drop that,
hence its private buffer. Call this with no await between it and `start_tls`, so
nothing can arrive in between.
"""

from __future__ import annotations

import asyncio
import ssl

from mailward.crypto.tls import describe_tls
from mailward.logs import EventLog
from mailward.pipeline.types import SessionInfo


def discard_buffered_plaintext(reader: asyncio.StreamReader) -> int:
    """Drop bytes the reader buffered but has not returned; returns how many."""
    buffered = getattr(reader, "_buffer", None)
    if isinstance(buffered, bytearray) and buffered:
        count = len(buffered)
        buffered.clear()
        return count
    return 0


async def start_tls(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    *,
    timeout: float,
    info: SessionInfo,
    log: EventLog,
    protocol: str,
) -> None:
    """Upgrade the connection after the server's "go ahead" was flushed; a failed
    handshake ends the session (ConnectionResetError)."""
    dropped = discard_buffered_plaintext(reader)
    if dropped:
        log.info(f"{protocol}.starttls.discarded", session=info.session_id, octets=dropped)
    try:
        await writer.start_tls(context, ssl_handshake_timeout=timeout)
    except (ConnectionError, OSError, TimeoutError) as exc:
        log.info("tls.failed", session=info.session_id, error=str(exc))
        raise ConnectionResetError("TLS handshake failed") from exc
    note_tls(writer, info, log)


def note_tls(writer: asyncio.StreamWriter, info: SessionInfo, log: EventLog) -> None:
    """Record the negotiated version and cipher (Received: headers, the log)."""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None:
        return
    info.tls_version, info.tls_cipher = describe_tls(ssl_object)
    log.info(
        "tls.established",
        session=info.session_id,
        version=info.tls_version,
        cipher=info.tls_cipher,
    )
