"""When to try again, and when to give up (RFC 5321 4.5.4.1).

RFC 5321 4.5.4.1: the retry interval SHOULD be at least 30 minutes (we start sooner,
as every current MTA does: greylisting usually clears in minutes) and the give-up time
at least 4-5 days (`delivery.max_age`, default 5 days). The schedule is the config's
`delivery.retry_schedule`: the wait before the 1st, 2nd, ... retry, the last repeating.
A retry never lands after the give-up time: the last one is made at it, so a message
is tried once more at its deadline before it bounces.

Delay warnings (RFC 3464 Action: delayed) go out once, at the first deferral made at
least `delivery.delay_warning` after the message was queued (0 disables them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mailward.config.schema import DeliveryConfig, parse_duration


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    delays: tuple[float, ...]  # seconds before retry 1, 2, ...; the last repeats
    max_age: float  # seconds from queueing to giving up
    delay_warning: float  # seconds from queueing to the delay DSN; 0 = never

    def __post_init__(self) -> None:
        if not self.delays or any(not d > 0 for d in self.delays):
            raise ValueError("a retry schedule needs positive delays")

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> RetrySchedule:
        return cls(
            delays=tuple(parse_duration(d) for d in delivery.retry_schedule),
            max_age=delivery.max_age,
            delay_warning=delivery.delay_warning,
        )

    @classmethod
    def of(cls, delays: Sequence[str], max_age: float, delay_warning: float) -> RetrySchedule:
        return cls(tuple(parse_duration(d) for d in delays), max_age, delay_warning)

    def delay(self, attempts: int) -> float:
        """The wait after the `attempts`-th attempt failed (attempts >= 1)."""
        return self.delays[min(max(attempts, 1), len(self.delays)) - 1]

    def expires(self, created: float) -> float:
        return created + self.max_age

    def expired(self, created: float, now: float) -> bool:
        """True when a temporary failure at `now` is final (the message is too old)."""
        return now >= self.expires(created)

    def next_attempt(self, created: float, attempts: int, now: float) -> float:
        """When to try a deferred entry again (never after its give-up time)."""
        return min(now + self.delay(attempts), self.expires(created))

    def warn_now(self, created: float, now: float, warned: bool) -> bool:
        """Whether this deferral is the one that sends the delay DSN."""
        return (
            not warned
            and self.delay_warning > 0
            and now - created >= self.delay_warning
            and not self.expired(created, now)
        )
