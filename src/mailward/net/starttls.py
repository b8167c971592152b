"""What every in-band TLS upgrade (SMTP STARTTLS, IMAP STARTTLS, POP3 STLS) must do.

RFC 3207 4.2 / RFC 9051 6.2.1 / RFC 2595 4, CVE-2011-0411: plaintext the client
pipelined after the upgrade command must never be read as if it had come over TLS.
The protocol cores drop what they were handed; the asyncio StreamReader may hold more,
read from the socket but not yet returned, and it has no public way to drop that,
hence its private buffer. Call this with no await between it and `start_tls`, so
nothing can arrive in between.
"""

from __future__ import annotations

import asyncio


def discard_buffered_plaintext(reader: asyncio.StreamReader) -> int:
    """Drop bytes the reader buffered but has not returned; returns how many."""
    buffered = getattr(reader, "_buffer", None)
    if isinstance(buffered, bytearray) and buffered:
        count = len(buffered)
        buffered.clear()
        return count
    return 0
