"""Connection-level abuse limits, checked by the listener before any greeting.

Besides the per-IP and global concurrency limits (`limits.*`, in `net.listener`):

- concurrent connections per network, the IPv4 /24 or IPv6 /64
  (`abuse.connections_per_net`), so one host cannot dodge the per-IP limit by using
  its neighbours' addresses (an IPv6 host usually has a whole /64);
- new connections per minute per client, the IPv4 address or IPv6 /64
  (`abuse.connection_rate`): a token bucket of that many tokens, refilled at that
  rate, so a burst the size of the limit passes and a sustained flood is cut to it;
- clients blocked for recipient probing (`pipeline.abuse.ProbeTracker`) are refused
  on the SMTP listeners until their block ends.

A refused client gets its protocol's "try later" line and is disconnected; the
listener logs the trip (`abuse.connection_rate`, `abuse.connections_per_net`,
`abuse.blocked`). Clients in `smtp.trusted_networks` are exempt from the rate and
per-network limits. Memory is bounded: at most `MAX_CLIENTS` buckets are kept (full
ones are forgotten first, then the oldest). The clock is injected.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from mailward.config.schema import AbuseConfig
from mailward.pipeline.networks import client_key, client_network

MAX_CLIENTS = 100_000


class RateLimiter:
    """Token buckets per key: `per_minute` tokens, refilled at `per_minute` a minute."""

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_CLIENTS,
    ) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated)

    def _tokens(self, key: str, now: float) -> float:
        tokens, updated = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - updated) * self.per_minute / 60.0)

    def take(self, key: str) -> bool:
        """Spend one token of `key`'s bucket; False (nothing spent) when it is empty."""
        if self.per_minute <= 0:
            return True
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            self._shrink(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _shrink(self, now: float) -> None:
        full = [k for k in self._buckets if self._tokens(k, now) >= self.per_minute]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) >= self._max_keys:
            self._buckets.pop(next(iter(self._buckets)))

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is refused: the log event and the limit it hit."""

    event: str
    limit: int
    key: str


class ConnectionGuard:
    """The per-network concurrency and per-client rate limits of one listener set.

    `admit()` decides; an admitted connection is counted until `release()`."""

    def __init__(self, config: AbuseConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_net = config.connections_per_net
        self._rate = RateLimiter(config.connection_rate, clock)
        self.per_net: Counter[str] = Counter()

    def admit(self, ip: str, *, exempt: bool = False) -> Refusal | None:
        """None when `ip` may connect (and is now counted), else why not."""
        net = client_network(ip)
        if not exempt:
            key = client_key(ip)
            if not self._rate.take(key):
                return Refusal("abuse.connection_rate", self._rate.per_minute, key)
            if self.per_net[net] >= self._per_net:
                return Refusal("abuse.connections_per_net", self._per_net, net)
        self.per_net[net] += 1
        return None

    def release(self, ip: str) -> None:
        net = client_network(ip)
        self.per_net[net] -= 1
        if self.per_net[net] <= 0:
            del self.per_net[net]
