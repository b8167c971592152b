"""Content checks: what the gateway looks at in a message body (NIST SP 800-45 5.x).

Malware scanning, the attachment policy, data-loss prevention and spam scoring are each
a `ContentCheck`: given a `MessageView` they return a `CheckResult` whose decision is
accept, reject (5xx), tempfail (4xx: nothing is lost, the sender retries) or
quarantine (held for review), with the reason for the log (never shown to the
client) and headers to add. The runner (`pipeline.runner`) calls them in order after
the header checks; the first refusal ends the transaction, a quarantine holds the
message instead of delivering it. A check never mutates the message or the session
(DESIGN.md 2.3).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mailward.pipeline.authentication import AuthenticationReport
from mailward.pipeline.types import CheckResult, Envelope, SessionInfo


@dataclass(slots=True)
class MessageView:
    """One message as the client sent it (our trace fields excluded).

    `content[offset:]` when the message is in memory, else the spool file's bytes from
    `offset`; `read()` returns the bytes (once, cached). Checks that can stream (clamd's
    INSTREAM) use `chunks()` so a large message is never held twice."""

    session: SessionInfo
    envelope: Envelope
    header_section: bytes
    content: bytes | None
    spool: Path
    offset: int
    size: int
    # SPF/DKIM/DMARC/ARC results when they were checked (inbound on the MX port).
    auth: AuthenticationReport | None = None
    _data: bytes | None = field(default=None, repr=False)

    async def read(self) -> bytes:
        if self._data is None:
            if self.content is not None:
                self._data = self.content[self.offset :]
            else:
                self._data = await asyncio.to_thread(self._read_spool)
        return self._data

    def _read_spool(self, limit: int = -1) -> bytes:
        with open(self.spool, "rb") as f:
            f.seek(self.offset)
            return f.read(limit)

    async def head(self, limit: int) -> bytes:
        """The first `limit` octets of the message (all of it if smaller), without
        reading the rest of a spooled message."""
        if self._data is not None:
            return self._data[:limit]
        if self.content is not None:
            return self.content[self.offset : self.offset + limit]
        if self.size <= limit:
            return await self.read()
        return await asyncio.to_thread(self._read_spool, limit)

    async def chunks(self, size: int = 256 * 1024) -> list[bytes]:
        """The message in pieces of at most `size` octets (for streaming scanners)."""
        data = await self.read()
        return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class ContentCheck(Protocol):
    name: str  # for the log and the per-check timing ("malware", "attachments", ...)

    def applies(self, session: SessionInfo) -> bool:
        """Whether this check runs for mail entering through this session (inbound on
        the MX port, outbound from submission, or both)."""
        ...

    async def check(self, message: MessageView) -> CheckResult: ...
