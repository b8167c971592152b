"""Greylisting (RFC 6647), off by default (`abuse.greylisting`).

A triplet (client network: the IPv4 /24 or IPv6 /64, so a sender's pool of outbound
hosts counts as one; envelope sender; recipient) seen for the first time is refused
at RCPT with 451 4.7.1. A retry of the same triplet after `delay` seconds and within
`expiry` seconds of the first attempt passes, and the triplet is remembered as
passed for `lifetime` seconds after its last use, so later mail from the same
correspondent is not delayed again. A retry that comes too late starts over.
Real MTAs retry (RFC 5321 4.5.4.1); much bulk and botnet software does not.

Only unauthenticated MX sessions from outside the trusted networks are greylisted,
and only for local recipients (anything else is refused or relayed by policy before
this). The state is in the store (`MailStore.greylist_entry`), so it survives a
restart and is shared by every node; expired triplets are pruned at most once a
minute. The clock is injected (Unix seconds).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from mailward.logs import EventLog
from mailward.pipeline.networks import client_network
from mailward.pipeline.types import (
    ACCEPT,
    CheckResult,
    Envelope,
    LocalRecipient,
    SessionInfo,
    reject,
)
from mailward.proto.replies import Reply
from mailward.store.api import GreylistEntry, MailStore, StoreError, canonical_address

GREYLISTED = Reply(451, "4.7.1", "Greylisted, please try again later")
PRUNE_INTERVAL = 60.0


class Greylist:
    def __init__(
        self,
        store: MailStore,
        log: EventLog,
        *,
        delay: float = 60.0,
        expiry: float = 86400.0,
        lifetime: float = 35 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._log = log
        self._delay = delay
        self._expiry = expiry
        self._lifetime = lifetime
        self._clock = clock
        self._last_prune = 0.0

    @staticmethod
    def applies(session: SessionInfo) -> bool:
        return (
            session.listener == "mx" and not session.authenticated and not session.trusted_network
        )

    async def check(
        self, session: SessionInfo, envelope: Envelope, recipient: LocalRecipient
    ) -> CheckResult:
        now = self._clock()
        network = client_network(session.peer_ip)
        sender = canonical_address(envelope.sender)
        address = canonical_address(recipient.address)
        fields = {"ip": session.peer_ip, "session": session.session_id, "network": network}
        try:
            entry = await self._store.greylist_entry(network, sender, address)
            if entry is not None and entry.passed and now - entry.last_seen <= self._lifetime:
                await self._store.save_greylist_entry(dataclasses.replace(entry, last_seen=now))
                return ACCEPT
            fresh = entry is None or entry.passed or now - entry.first_seen > self._expiry
            if entry is None or fresh:
                await self._prune(now)
                await self._store.save_greylist_entry(
                    GreylistEntry(network, sender, address, recipient.account_id, now, now, False)
                )
                self._log.info("abuse.greylisted", first=True, delay=self._delay, **fields)
                return reject(GREYLISTED, "greylisted (first attempt)")
            waited = now - entry.first_seen
            if waited < self._delay:
                self._log.info(
                    "abuse.greylisted",
                    first=False,
                    waited=round(waited, 1),
                    delay=self._delay,
                    **fields,
                )
                return reject(GREYLISTED, "greylisted (retry too early)")
            await self._store.save_greylist_entry(
                dataclasses.replace(entry, last_seen=now, passed=True)
            )
            self._log.info("abuse.greylist_passed", waited=round(waited, 1), **fields)
            return ACCEPT
        except StoreError as exc:
            # Greylisting is a filter, not a gate: a store failure lets the mail through.
            self._log.error("abuse.greylist_failed", session=session.session_id, error=str(exc))
            return ACCEPT

    async def _prune(self, now: float) -> None:
        if now - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = now
        removed = await self._store.prune_greylist(now - self._expiry, now - self._lifetime)
        if removed:
            self._log.info("abuse.greylist_pruned", removed=removed)
