"""Sender ownership on submission (RFC 6409 6.1, SP 800-45 5.x anti-spoofing).

An authenticated user may use as envelope sender (MAIL FROM) and in the From: and
Sender: header fields only addresses they own: their account address and the aliases
that deliver to it. The null reverse-path is for bounces, which users do not send.
"""

from __future__ import annotations

from mailward.message.headers import header_values, mailbox_addresses
from mailward.pipeline.types import ACCEPT, CheckResult, SessionInfo, reject
from mailward.proto.replies import FROM_NOT_OWNED, SENDER_NOT_OWNED, Reply
from mailward.store.api import MailStore, canonical_address

FROM_MISSING = Reply(550, "5.6.0", "Message has no From: header")


class SenderPolicy:
    def __init__(self, store: MailStore) -> None:
        self._store = store

    async def check_envelope_sender(self, session: SessionInfo, sender: str) -> CheckResult:
        if session.listener != "submission" or session.account_id is None:
            return ACCEPT
        owned = await self._store.owned_addresses(session.account_id)
        if not sender or canonical_address(sender) not in owned:
            return reject(SENDER_NOT_OWNED, "envelope sender not owned")
        return ACCEPT

    async def check_headers(self, session: SessionInfo, header_section: bytes) -> CheckResult:
        if session.listener != "submission" or session.account_id is None:
            return ACCEPT
        from_addresses = mailbox_addresses(header_values(header_section, "From"))
        if not from_addresses:
            return reject(FROM_MISSING, "no From: header")
        owned = await self._store.owned_addresses(session.account_id)
        claimed = from_addresses + mailbox_addresses(header_values(header_section, "Sender"))
        if any(canonical_address(a) not in owned for a in claimed):
            return reject(FROM_NOT_OWNED, "From:/Sender: address not owned")
        return ACCEPT
