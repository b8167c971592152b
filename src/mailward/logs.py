"""Structured event log: one JSON object per line, one line per event.

Every event has `ts` (RFC 3339 UTC), `level` and `event` (a dotted name such as
"smtp.connect"), plus fields. Callers pass facts, never secrets: no password, no
message body, no header value beyond what the event names. Fields whose name looks
like a credential are dropped here as a last line of defence.

With a `flush_interval`, info and debug lines are buffered and written out at least
that often (the server runs a flusher task), which keeps one write system call per
event off the hot path; warnings and errors are always flushed at once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_FORBIDDEN = ("password", "passwd", "secret", "body", "credential")


@functools.lru_cache(maxsize=1024)
def _allowed(key: str) -> bool:
    return not any(word in key.lower() for word in _FORBIDDEN)


class EventLog:
    def __init__(
        self, stream: IO[str] | None = None, level: str = "info", *, flush_interval: float = 0.0
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._min = LEVELS[level]
        self._lock = threading.Lock()
        self._flush_interval = flush_interval
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()
            self._last_flush = time.monotonic()

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self._min:
            return
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": level,
            "event": event,
        }
        for key, value in fields.items():
            if _allowed(key):
                record[key] = value
        line = json.dumps(record, default=str, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            now = time.monotonic()
            if LEVELS[level] >= LEVELS["warning"] or now - self._last_flush >= self._flush_interval:
                self._stream.flush()
                self._last_flush = now

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)


def open_log(path: str, level: str, *, flush_interval: float = 0.0) -> EventLog:
    """A log to `path` (appended, mode 0600) or to stderr when `path` is empty."""
    if not path:
        stream: IO[str] = open(  # noqa: SIM115 - lives as long as the process
            sys.stderr.fileno(), "w", encoding="utf-8", buffering=64 * 1024, closefd=False
        )
    else:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        stream = open(fd, "a", encoding="utf-8", buffering=64 * 1024)  # noqa: SIM115
    return EventLog(stream, level=level, flush_interval=flush_interval)
