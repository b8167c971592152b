"""How fast one SMTP session may go: the greeting pause, the tarpit, the minimum rate.

- Greeting pause (Postfix postscreen's "pregreet test"): on the MX port the server
  sends the first line of a multi-line greeting ("220-", RFC 5321 4.2.1), waits
  `abuse.greeting_delay` seconds, then sends the final "220 " line. RFC 5321 4.3.1
  says the client waits for the greeting; spambots that talk first are answered
  554 5.7.1 and disconnected. With no pause the single "220 " line is sent, and input
  that arrived before it is still caught (`early_input`). A client that waited is
  remembered (`GreetingPasses`, postscreen's greet TTL) and not paused again for
  `abuse.greeting_pass_ttl` seconds, so a sender that delivers often pays once.
- Tarpit: every error reply (5xx to a command, an unknown recipient...) is held back
  `tarpit_step` seconds times the session's error count, at most `tarpit_max` each;
  the bad-command limit (`limits.bad_commands`) bounds the number of errors, so a
  session's total tarpit time is bounded too.
- Minimum rate (slowloris): while a client is in the middle of something (DATA, a
  BDAT chunk, a command line it has started) it must average `min_data_rate` octets a
  second over that stretch once `grace` seconds have passed; `InputRate.deadline` is
  when its average would fall below that, and the session closes it then with 421.

The clock is the caller's (monotonic seconds): every class here is plain arithmetic.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable

MAX_GREETING_PASSES = 100_000


class Tarpit:
    """Progressive delay of error replies in one session."""

    def __init__(self, step: float, maximum: float) -> None:
        self.step = step
        self.maximum = maximum
        self.errors = 0

    def error(self) -> float:
        """Count one error; returns how long its reply is held back."""
        self.errors += 1
        return min(self.maximum, self.step * self.errors)


class GreetingPasses:
    """Client addresses that waited for the greeting, each for `ttl` seconds; at most
    `limit` are kept (the oldest pass is forgotten first)."""

    def __init__(
        self,
        ttl: float,
        *,
        limit: int = MAX_GREETING_PASSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.limit = limit
        self._clock = clock
        self._passed: OrderedDict[str, float] = OrderedDict()

    def fresh(self, ip: str) -> bool:
        until = self._passed.get(ip)
        if until is None:
            return False
        if until <= self._clock():
            del self._passed[ip]
            return False
        return True

    def remember(self, ip: str) -> None:
        if self.ttl <= 0:
            return
        self._passed.pop(ip, None)
        self._passed[ip] = self._clock() + self.ttl
        while len(self._passed) > self.limit:
            self._passed.popitem(last=False)


class InputRate:
    """Octets received over one stretch of input, against a minimum average rate."""

    def __init__(self, min_rate: float, grace: float) -> None:
        self.min_rate = min_rate
        self.grace = grace
        self.kind = ""  # what is being measured ("data", "line"); "" for nothing
        self.started = 0.0
        self.octets = 0

    def start(self, kind: str, now: float, octets: int = 0) -> None:
        self.kind, self.started, self.octets = kind, now, octets

    def stop(self) -> None:
        self.kind = ""

    def add(self, octets: int) -> None:
        if self.kind:
            self.octets += octets

    def deadline(self) -> float | None:
        """When the average since `started` falls below the minimum (never before the
        grace period ends); None when nothing is measured or there is no minimum."""
        if not self.kind or self.min_rate <= 0:
            return None
        return self.started + max(self.grace, self.octets / self.min_rate)

    def rate(self, now: float) -> float:
        elapsed = now - self.started
        return self.octets / elapsed if elapsed > 0 else float(self.octets)


async def early_input(reader: asyncio.StreamReader, wait: float, size: int) -> bytes | None:
    """Whatever the client sends within `wait` seconds (at most `size` octets): None if
    nothing came, b"" at end of input. With `wait` 0 only what has already arrived
    counts (the event loop gets a few turns to read the socket). Nothing is lost: what
    is not returned stays in `reader`."""
    read = asyncio.ensure_future(reader.read(size))
    try:
        if wait > 0:
            await asyncio.wait({read}, timeout=wait)
        else:
            for _ in range(3):
                if read.done():
                    break
                await asyncio.sleep(0)
    finally:
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # we were cancelled too: do not swallow it
    if read.cancelled():
        return None
    return read.result()
