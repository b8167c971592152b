"""User authentication for every protocol: password check, throttling and lockout.

SP 800-45 5.x / SP 800-63B 5.2.2 (rate limiting): repeated failures per client IP and
per account are slowed down (a growing delay before the reply) and then refused for a
while, even with the right password, so online guessing gets nowhere. Every check
costs one argon2id verification whether or not the account exists (the hasher runs a
dummy verify for unknown users), so timing does not reveal which accounts exist.

The clock and the sleep are injected so tests run in milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailward.crypto.passwords import PasswordHasher
from mailward.logs import EventLog
from mailward.store.api import Account, MailStore


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    failures_before_delay: int = 3
    lockout_failures: int = 10
    lockout_seconds: float = 900.0
    max_delay: float = 5.0


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

    async def authenticate(
        self, username: str, password: str, *, ip: str, protocol: str, mechanism: str
    ) -> AuthOutcome:
        ip_key, user_key = f"ip:{ip}", f"user:{username.strip().lower()}"
        failures = max(self._tracker.count(ip_key), self._tracker.count(user_key))
        account = await self._store.get_account(username)
        # Verify even when locked out or unknown: equal cost, no oracle.
        valid = await self._hasher.verify(account.password_hash if account else None, password)
        fields = {"user": username, "ip": ip, "protocol": protocol, "mechanism": mechanism}
        if failures >= self._policy.lockout_failures:
            self._log.warning("auth.locked_out", failures=failures, **fields)
            return AuthOutcome(None, locked_out=True)
        if valid and account is not None:
            self._tracker.clear(user_key)
            self._log.info("auth.success", **fields)
            return AuthOutcome(account)
        self._tracker.record(ip_key)
        self._tracker.record(user_key)
        failures += 1
        self._log.warning(
            "auth.failure", failures=failures, known_user=account is not None, **fields
        )
        if failures >= self._policy.failures_before_delay:
            delay = min(
                self._policy.max_delay, 0.5 * 2 ** (failures - self._policy.failures_before_delay)
            )
            self._log.info("auth.throttled", delay=delay, **fields)
            await self._sleep(delay)
        return AuthOutcome(None)
