"""User authentication for every protocol: password check, throttling and lockout.

SP 800-45 5.x / SP 800-63B 5.2.2 (rate limiting): repeated failures per client IP and
per account are slowed down (a growing delay before the reply) and then refused for a
while, even with the right password, so online guessing gets nowhere. Every check
costs one argon2id verification whether or not the account exists (the hasher runs a
dummy verify for unknown users), so timing does not reveal which accounts exist. An
attempt made during a lockout costs none (its answer does not depend on the account or
the password), so a brute-force flood cannot tie up the few hash workers that every
legitimate login needs (SP 800-45 DoS). For the same reason failures are also counted
per client network (the IPv4 /24 or IPv6 /64, `net_lockout_failures`), which locks out
a brute force spread over many neighbouring addresses; one network verifies at most
`verifies_per_net` passwords at a time (a burst queues behind itself, and the lockout
is checked again once its turn comes), and clients or networks with recent failures
share a narrow lane (`suspect_verifies` at a time), so the other hash workers stay free
for everyone else. The lockout's start is logged as
`auth.lockout`, every attempt refused by it as `auth.locked_out`.

A lockout per account lets anyone who knows an address lock its owner out. So the
networks an account has logged in from are remembered (`KnownNetworks`, for
`known_network_seconds`, in memory): from those, the account's own failure count does
not lock (the client's and the network's still do). A guesser elsewhere still finds
the account locked; its owner, at home or at work, does not.

The clock and the sleep are injected so tests run in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from mailward.crypto.passwords import PasswordHasher
from mailward.logs import EventLog
from mailward.pipeline.networks import client_network
from mailward.store.api import Account, MailStore


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    failures_before_delay: int = 3
    lockout_failures: int = 10
    lockout_seconds: float = 900.0
    max_delay: float = 5.0
    net_lockout_failures: int = 0  # failures per /24 or /64 before a lockout; 0: none
    suspect_verifies: int = 1  # concurrent verifications for clients with failures
    verifies_per_net: int = 1  # concurrent verifications (and lookups) per /24 or /64
    known_network_seconds: float = 30 * 86400.0  # an account's login networks, remembered


MAX_KNOWN_NETWORKS = 100_000


class KnownNetworks:
    """(account, network) pairs that logged in successfully, each for `ttl` seconds;
    at most `limit` are kept (the oldest is forgotten first)."""

    def __init__(
        self, ttl: float, clock: Callable[[], float], limit: int = MAX_KNOWN_NETWORKS
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._limit = limit
        self._until: OrderedDict[tuple[str, str], float] = OrderedDict()

    def known(self, user_key: str, net_key: str) -> bool:
        until = self._until.get((user_key, net_key))
        if until is None:
            return False
        if until <= self._clock():
            del self._until[(user_key, net_key)]
            return False
        return True

    def remember(self, user_key: str, net_key: str) -> None:
        if self._ttl <= 0:
            return
        self._until.pop((user_key, net_key), None)
        self._until[(user_key, net_key)] = self._clock() + self._ttl
        while len(self._until) > self._limit:
            self._until.popitem(last=False)


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    account: Account | None
    locked_out: bool = False

    @property
    def ok(self) -> bool:
        return self.account is not None


class FailureTracker:
    """Failures per key ("ip:..." / "user:...") inside a sliding lockout window."""

    def __init__(self, policy: AuthPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        horizon = self._clock() - self._policy.lockout_seconds
        times = [t for t in self._failures.get(key, ()) if t > horizon]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def count(self, key: str) -> int:
        return len(self._recent(key))

    def record(self, key: str) -> None:
        self._recent(key)
        self._failures.setdefault(key, []).append(self._clock())
        if len(self._failures) > 100_000:  # bound memory under a distributed attack
            self._failures.pop(next(iter(self._failures)))

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class Lanes:
    """At most `size` holders at once per key; a key takes memory only while in use."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lanes: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lane, users = self._lanes.get(key) or (asyncio.Semaphore(self._size), 0)
        self._lanes[key] = (lane, users + 1)
        try:
            async with lane:
                yield
        finally:
            lane, users = self._lanes[key]
            if users <= 1:
                del self._lanes[key]
            else:
                self._lanes[key] = (lane, users - 1)

    def __len__(self) -> int:
        return len(self._lanes)


class Authenticator:
    def __init__(
        self,
        store: MailStore,
        hasher: PasswordHasher,
        log: EventLog,
        policy: AuthPolicy = AuthPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._log = log
        self._policy = policy
        self._tracker = FailureTracker(policy, clock)
        self._sleep = sleep
        self._suspects = asyncio.Semaphore(max(1, policy.suspect_verifies))
        self._net_lanes = Lanes(max(1, policy.verifies_per_net))
        self._known = KnownNetworks(policy.known_network_seconds, clock)

    def _counts(self, ip_key: str, user_key: str, net_key: str) -> tuple[int, int]:
        """(failures of this client or account, failures of its network), right now;
        the account's failures do not count from a network it logged in from."""
        client = self._tracker.count(ip_key)
        if not self._known.known(user_key, net_key):
            client = max(client, self._tracker.count(user_key))
        return client, self._tracker.count(net_key)

    def _locked(self, failures: int, net_failures: int) -> bool:
        net_limit = self._policy.net_lockout_failures
        return failures >= self._policy.lockout_failures or 0 < net_limit <= net_failures

    async def authenticate(
        self, username: str, password: str, *, ip: str, protocol: str, mechanism: str
    ) -> AuthOutcome:
        ip_key, user_key = f"ip:{ip}", f"user:{username.strip().lower()}"
        net_key = f"net:{client_network(ip)}"
        fields = {"user": username, "ip": ip, "protocol": protocol, "mechanism": mechanism}
        failures, net_failures = self._counts(ip_key, user_key, net_key)
        account: Account | None = None
        valid = False
        if not self._locked(failures, net_failures):
            # One network verifies `verifies_per_net` at a time: a burst from one
            # place queues behind itself, not in front of everyone else.
            async with self._net_lanes.hold(net_key):
                failures, net_failures = self._counts(ip_key, user_key, net_key)
                if not self._locked(failures, net_failures):
                    account = await self._store.get_account(username)
                    stored = account.password_hash if account else None
                    # Verify even when the account is unknown: equal cost, no oracle.
                    if failures or net_failures:
                        async with self._suspects:
                            valid = await self._hasher.verify(stored, password)
                    else:
                        valid = await self._hasher.verify(stored, password)
        if self._locked(failures, net_failures):
            # The same answer whatever the account and password: no verify, no oracle.
            self._log.warning(
                "auth.locked_out", failures=failures, network_failures=net_failures, **fields
            )
            await self._sleep(self._policy.max_delay)  # costs us nothing, slows them down
            return AuthOutcome(None, locked_out=True)
        if valid and account is not None:
            self._tracker.clear(user_key)
            self._known.remember(user_key, net_key)
            self._log.info("auth.success", **fields)
            return AuthOutcome(account)
        before, net_before = self._counts(ip_key, user_key, net_key)
        self._tracker.record(ip_key)
        self._tracker.record(user_key)
        self._tracker.record(net_key)
        failures, net_failures = self._counts(ip_key, user_key, net_key)
        self._log.warning(
            "auth.failure", failures=failures, known_user=account is not None, **fields
        )
        # Logged once, by the failure that crosses the limit.
        limit, net_limit = self._policy.lockout_failures, self._policy.net_lockout_failures
        if before < limit <= failures:
            self._log.warning(
                "auth.lockout",
                scope="client",
                limit=limit,
                seconds=self._policy.lockout_seconds,
                **fields,
            )
        if net_before < net_limit <= net_failures:
            self._log.warning(
                "auth.lockout",
                scope="network",
                network=net_key[4:],
                limit=net_limit,
                seconds=self._policy.lockout_seconds,
                **fields,
            )
        if failures >= self._policy.failures_before_delay:
            delay = min(
                self._policy.max_delay, 0.5 * 2 ** (failures - self._policy.failures_before_delay)
            )
            self._log.info("auth.throttled", delay=delay, **fields)
            await self._sleep(delay)
        return AuthOutcome(None)
