"""Tests of the sans-I/O protocol cores, and the helpers they share."""

from __future__ import annotations

from mailward.proto.smtp_events import MessageAborted, MessageChunk, SmtpEvent


def merged(events: list[SmtpEvent]) -> list[SmtpEvent]:
    """Events with adjacent chunks joined, and the chunks of aborted messages dropped
    (how content is cut into chunks depends on how it arrived)."""
    out: list[SmtpEvent] = []
    for e in events:
        if isinstance(e, MessageChunk) and out and isinstance(out[-1], MessageChunk):
            out[-1] = MessageChunk(out[-1].data + e.data)
        elif isinstance(e, MessageAborted) and out and isinstance(out[-1], MessageChunk):
            out[-1] = e
        else:
            out.append(e)
    return out
