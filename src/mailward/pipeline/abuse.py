"""Abuse limits at the transaction level (SP 800-45 DoS and abuse; the `[abuse]` config).

What the SMTP pipeline adds to MAIL and RCPT, beyond relay and sender policy:

- Recipient probing (directory harvest): unknown-recipient refusals are counted per
  client (an IPv4 address, or an IPv6 /64: one host may own a whole /64) over a sliding
  window. From `probe_slowdown` on, every reply to that client is tarpitted (the SMTP
  session asks `ProbeTracker.delay`); at `probe_block` the client gets 421 4.7.0 and is
  refused, at RCPT, MAIL and on every new SMTP connection, for `block_seconds`.
- Per-account sending caps (`sending_limits`) and greylisting (`greylist`), both kept
  in the store so they hold across restarts.

Authenticated sessions and trusted networks are never counted as probers: they are
known, and the sending caps are what limit them. Memory is bounded: at most
`MAX_CLIENTS` clients are tracked (the least recently added are forgotten first), each
with no more timestamps than it takes to reach the block (or the longest tarpit delay,
when there is no block). Every trip is logged as an `abuse.*` event with
the client, the session and the limit, never a password or a message body.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from mailward.config.schema import AbuseConfig
from mailward.logs import EventLog
from mailward.pipeline.greylist import Greylist
from mailward.pipeline.networks import client_key
from mailward.pipeline.sending_limits import SendingLimits
from mailward.pipeline.types import (
    ACCEPT,
    CheckResult,
    Envelope,
    LocalRecipient,
    Recipient,
    SessionInfo,
    reject,
)
from mailward.proto.replies import NO_SUCH_USER, Reply
from mailward.store.api import MailStore

MAX_CLIENTS = 10_000
# RFC 5321 4.2.3 / RFC 3463 4.7.0: a temporary refusal for policy reasons; 421 closes.
CLIENT_BLOCKED = Reply(421, "4.7.0", "Too many errors from your address, try again later")


class ProbeTracker:
    """Unknown-recipient refusals per client in a sliding window; slowdown and block.

    The clock is injected (monotonic seconds) so tests run without waiting."""

    def __init__(
        self,
        log: EventLog,
        *,
        window: float = 600.0,
        slowdown: int = 5,
        block: int = 20,
        block_seconds: float = 600.0,
        step: float = 0.5,
        maximum: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self._log = log
        self._window = window
        self._slowdown = slowdown
        self._block = block
        self._block_seconds = block_seconds
        self._step = step
        self._maximum = maximum
        self._clock = clock
        self._max_clients = max_clients
        # Timestamps kept per client: enough to reach the block, or the longest delay.
        longest = slowdown + int(maximum / step) + 1 if slowdown and step > 0 else slowdown
        self._keep = max(block, longest)
        self._probes: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}  # client -> monotonic time the block ends

    @classmethod
    def from_config(
        cls, config: AbuseConfig, log: EventLog, clock: Callable[[], float] = time.monotonic
    ) -> ProbeTracker:
        return cls(
            log,
            window=config.probe_window,
            slowdown=config.probe_slowdown,
            block=config.probe_block,
            block_seconds=config.block_seconds,
            step=config.tarpit_step,
            maximum=config.tarpit_max,
            clock=clock,
        )

    def _recent(self, key: str) -> deque[float]:
        times = self._probes.get(key)
        if times is None:
            return deque()
        horizon = self._clock() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._probes[key]
        return times

    def count(self, ip: str) -> int:
        """Unknown-recipient refusals of this client within the window."""
        return len(self._recent(client_key(ip)))

    def blocked_for(self, ip: str) -> float:
        """Seconds this client is still blocked for (0.0: not blocked)."""
        key = client_key(ip)
        until = self._blocked.get(key)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._blocked[key]
            return 0.0
        return left

    def delay(self, ip: str) -> float:
        """How long every reply to this client is held back (0.0 below probe_slowdown)."""
        if not self._slowdown or not self._step:
            return 0.0
        over = self.count(ip) - self._slowdown + 1
        return min(self._maximum, self._step * over) if over > 0 else 0.0

    def record(self, ip: str, session_id: str) -> bool:
        """Count one unknown recipient; True when this one got the client blocked."""
        if not self._keep:
            return False
        key = client_key(ip)
        times = self._recent(key)
        if not times:
            self._bound(self._probes)
            times = self._probes[key] = deque(maxlen=self._keep)
        times.append(self._clock())
        count = len(times)
        if count == self._slowdown:
            self._log.warning(
                "abuse.probe_slowdown",
                ip=ip,
                client=key,
                session=session_id,
                count=count,
                limit=self._slowdown,
                window=self._window,
            )
        if self._block and count >= self._block:
            self._bound(self._blocked)
            self._blocked[key] = self._clock() + self._block_seconds
            self._probes.pop(key, None)
            self._log.warning(
                "abuse.probe_block",
                ip=ip,
                client=key,
                session=session_id,
                count=count,
                limit=self._block,
                seconds=self._block_seconds,
            )
            return True
        return False

    def _bound(self, table: dict[str, deque[float]] | dict[str, float]) -> None:
        if len(table) < self._max_clients:
            return
        now = self._clock()
        if table is self._blocked:
            for key in [k for k, until in self._blocked.items() if until <= now]:
                del self._blocked[key]
        else:
            for key in list(self._probes):
                self._recent(key)
        while len(table) >= self._max_clients:
            table.pop(next(iter(table)))


class TransactionLimits:
    """The abuse checks the pipeline runs at MAIL and RCPT, and what it records once a
    message is accepted (see the module docstring)."""

    def __init__(
        self,
        store: MailStore,
        log: EventLog,
        config: AbuseConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self.probes = ProbeTracker.from_config(config, log, clock)
        self.sending = SendingLimits(
            store,
            log,
            messages_per_day=config.messages_per_day,
            new_recipients_per_day=config.new_recipients_per_day,
            clock=wall_clock,
        )
        self.greylist: Greylist | None = None
        if config.greylisting:
            self.greylist = Greylist(
                store,
                log,
                delay=config.greylist_delay,
                expiry=config.greylist_expiry,
                lifetime=config.greylist_lifetime,
                clock=wall_clock,
            )

    def blocked(self, session: SessionInfo, command: str) -> CheckResult:
        """421 for a client blocked for probing (checked at MAIL and RCPT)."""
        left = self.probes.blocked_for(session.peer_ip)
        if not left:
            return ACCEPT
        self._log.warning(
            "abuse.blocked",
            ip=session.peer_ip,
            session=session.session_id,
            command=command,
            seconds_left=round(left, 1),
        )
        return reject(CLIENT_BLOCKED, "client blocked for recipient probing")

    async def check_mail(self, session: SessionInfo) -> CheckResult:
        result = self.blocked(session, "MAIL")
        if result.refused:
            return result
        return await self.sending.check_message(session)

    async def check_rcpt(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> CheckResult:
        """The sending cap on first-time recipients, then greylisting."""
        result = await self.sending.check_recipient(session, envelope, recipient)
        if result.refused:
            return result
        if (
            self.greylist is not None
            and isinstance(recipient, LocalRecipient)
            and self.greylist.applies(session)
        ):
            return await self.greylist.check(session, envelope, recipient)
        return ACCEPT

    def recipient_refused(self, session: SessionInfo, result: CheckResult) -> CheckResult:
        """After a refused RCPT: count it if the recipient does not exist; the client
        is blocked (421) by the refusal that reaches `probe_block`."""
        if result.reply != NO_SUCH_USER or session.authenticated or session.trusted_network:
            return result
        if self.probes.record(session.peer_ip, session.session_id):
            return reject(CLIENT_BLOCKED, "client blocked for recipient probing")
        return result

    async def message_accepted(self, session: SessionInfo, envelope: Envelope) -> None:
        """Record a message an authenticated account sent (for the sending caps)."""
        await self.sending.record(session, envelope)
