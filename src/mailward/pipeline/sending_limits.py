"""Per-account sending caps for authenticated submission (SP 800-45: a compromised
account must not turn the server into a spam cannon).

Two caps over the last 24 hours, kept in the store (so they hold across restarts and
are shared by every node): messages sent (`messages_per_day`, checked at MAIL) and
first-time recipients, addresses the account never sent to before
(`new_recipients_per_day`, checked at RCPT, counting the ones already accepted in the
same transaction). The store counts in hourly buckets, so "24 hours" is between 24 and
25 hours. Over a cap the client gets 451 4.7.1 (temporary: a legitimate mailing waits
and resumes) and an `abuse.sending_limit` event is logged. A message counts once it is
accepted (`record`, after the 250 to DATA is decided).

Only authenticated sessions are capped; a cap of 0 is no cap. The clock is injected
(Unix seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mailward.logs import EventLog
from mailward.pipeline.types import (
    ACCEPT,
    CheckResult,
    Envelope,
    Recipient,
    SessionInfo,
    reject,
)
from mailward.proto.replies import Reply
from mailward.store.api import MailStore, StoreError, canonical_address

DAY = 86400.0
SENDING_LIMIT = Reply(451, "4.7.1", "Sending limit reached, try later")


def recipient_key(recipient: Recipient) -> str:
    """How a recipient is remembered: the canonical address (an alias and its target
    are different addresses to the sender)."""
    return canonical_address(recipient.address)


class SendingLimits:
    def __init__(
        self,
        store: MailStore,
        log: EventLog,
        *,
        messages_per_day: int,
        new_recipients_per_day: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._log = log
        self._messages = messages_per_day
        self._new_recipients = new_recipients_per_day
        self._clock = clock

    def _capped(self, session: SessionInfo) -> bool:
        return session.account_id is not None and bool(self._messages or self._new_recipients)

    def _refuse(self, session: SessionInfo, limit: str, count: int, cap: int) -> CheckResult:
        self._log.warning(
            "abuse.sending_limit",
            ip=session.peer_ip,
            session=session.session_id,
            account=session.account_address,
            limit=limit,
            count=count,
            cap=cap,
        )
        return reject(SENDING_LIMIT, f"{limit} reached")

    async def check_message(self, session: SessionInfo) -> CheckResult:
        """At MAIL: may this account start one more message?"""
        if not self._messages or session.account_id is None:
            return ACCEPT
        counts = await self._store.sending_counts(session.account_id, self._clock() - DAY)
        if counts.messages >= self._messages:
            return self._refuse(session, "messages_per_day", counts.messages, self._messages)
        return ACCEPT

    async def check_recipient(
        self, session: SessionInfo, envelope: Envelope, recipient: Recipient
    ) -> CheckResult:
        """At RCPT: a first-time recipient must fit under the cap, together with the
        first-time recipients already accepted in this transaction."""
        if not self._new_recipients or session.account_id is None:
            return ACCEPT
        key = recipient_key(recipient)
        pending = {recipient_key(r) for r in envelope.recipients}
        new = await self._store.new_recipients(session.account_id, sorted(pending | {key}))
        if key not in new:
            return ACCEPT
        counts = await self._store.sending_counts(session.account_id, self._clock() - DAY)
        total = counts.new_recipients + len(new)
        if total > self._new_recipients:
            return self._refuse(session, "new_recipients_per_day", total - 1, self._new_recipients)
        return ACCEPT

    async def record(self, session: SessionInfo, envelope: Envelope) -> None:
        """Count an accepted message of an authenticated session (best effort: a store
        failure is logged, the message is already accepted)."""
        if not self._capped(session) or session.account_id is None:
            return
        recipients = sorted({recipient_key(r) for r in envelope.recipients})
        try:
            await self._store.record_sending(session.account_id, self._clock(), recipients)
        except StoreError as exc:
            self._log.error(
                "abuse.sending_record_failed", session=session.session_id, error=str(exc)
            )
