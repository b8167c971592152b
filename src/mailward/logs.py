"""Structured event log: one JSON object per line, one line per event.

Every event has `ts` (RFC 3339 UTC), `level` and `event` (a dotted name such as
"smtp.connect"), plus fields. Callers pass facts, never secrets: no password, no
message body, no header value beyond what the event names. Fields whose name looks
like a credential are dropped here as a last line of defence.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_FORBIDDEN = ("password", "passwd", "secret", "body", "credential")


class EventLog:
    def __init__(self, stream: IO[str] | None = None, level: str = "info") -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._min = LEVELS[level]
        self._lock = threading.Lock()

    def emit(self, level: str, event: str, **fields: Any) -> None:
        if LEVELS[level] < self._min:
            return
        record: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{int(time.time() * 1000) % 1000:03d}Z",
            "level": level,
            "event": event,
        }
        for key, value in fields.items():
            if any(word in key.lower() for word in _FORBIDDEN):
                continue
            record[key] = value
        line = json.dumps(record, default=str, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def debug(self, event: str, **fields: Any) -> None:
        self.emit("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self.emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit("error", event, **fields)


def open_log(path: str, level: str) -> EventLog:
    """A log to `path` (appended, mode 0600) or to stderr when `path` is empty."""
    if not path:
        return EventLog(level=level)
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    return EventLog(open(fd, "a", encoding="utf-8", buffering=1), level=level)
