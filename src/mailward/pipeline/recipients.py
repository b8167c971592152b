"""Recipient policy: local delivery, no open relay (DESIGN.md 3; RFC 5321 3.6, 7.1).

Mail for a local domain goes to an existing account or alias (else 550 5.1.1). Mail
for any other destination is relayed only for an authenticated session or a trusted
network; everyone else gets 554 5.7.1, whatever the address looks like. Address forms
that other MTAs have historically interpreted as routing are refused outright rather
than interpreted (RFC 5321 3.6.1 leaves that to policy): "%" hacks, "!" bang paths,
"@" inside a quoted local part, and quoted local parts in general. Source routes are
ignored as RFC 5321 C. requires, so only the final mailbox counts. Comparison is
case-insensitive: `ALICE@EXAMPLE.TEST` is alice's mail, `USER@FOREIGN.TEST` is not.
A local account already at its storage quota gets 452 4.2.2 (checked here, per
recipient, so one full mailbox does not fail a message other recipients share).
"""

from __future__ import annotations

from mailward.pipeline.types import (
    ACCEPT,
    CheckResult,
    Envelope,
    LocalRecipient,
    Recipient,
    RemoteRecipient,
    SessionInfo,
    reject,
)
from mailward.proto.replies import NO_SUCH_USER, RELAY_DENIED, Reply
from mailward.proto.smtp_events import RcptTo
from mailward.store.api import MailStore, canonical_address

ROUTING_CHARACTERS = ("%", "!", "@")
ADDRESS_FORM_REFUSED = Reply(550, "5.7.1", "Address form not accepted here")
DUPLICATE_RECIPIENT = Reply(250, "2.1.5", "Recipient OK (duplicate)")
# RFC 3463 4.2.2: temporary, so the sender retries after the user makes room.
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full, try again later")


class RecipientPolicy:
    def __init__(self, store: MailStore) -> None:
        self._store = store

    async def resolve(
        self, session: SessionInfo, envelope: Envelope, rcpt: RcptTo
    ) -> tuple[CheckResult, Recipient | None]:
        if rcpt.quoted_local or any(c in rcpt.local_part for c in ROUTING_CHARACTERS):
            return reject(ADDRESS_FORM_REFUSED, "routing characters in local part"), None
        domain = rcpt.domain.lower()
        if not domain:
            # RFC 5321 4.5.1: "postmaster" without a domain must be accepted.
            domains = await self._store.list_domains()
            if rcpt.local_part.lower() != "postmaster" or not domains:
                return reject(NO_SUCH_USER, "bare local part"), None
            domain = domains[0]
        address = canonical_address(f"{rcpt.local_part}@{domain}")
        if not domain.startswith("[") and await self._store.is_local_domain(domain):
            account = await self._store.resolve_recipient(address)
            if account is None:
                return reject(NO_SUCH_USER, "unknown local recipient"), None
            quota = await self._store.get_quota(account.id)
            if quota.limit and quota.used >= quota.limit:
                return reject(MAILBOX_FULL, "recipient over quota"), None
            return ACCEPT, LocalRecipient(rcpt.forward_path, account.id, account.address)
        if session.authenticated or session.trusted_network:
            return ACCEPT, RemoteRecipient(f"{rcpt.local_part}@{rcpt.domain}")
        return reject(RELAY_DENIED, "relay denied"), None


def is_duplicate(envelope: Envelope, recipient: Recipient) -> bool:
    """The same mailbox named twice in one transaction is delivered once."""
    if isinstance(recipient, LocalRecipient):
        return any(
            isinstance(r, LocalRecipient) and r.account_id == recipient.account_id
            for r in envelope.recipients
        )
    wanted = recipient.address.lower()
    return any(
        isinstance(r, RemoteRecipient) and r.address.lower() == wanted for r in envelope.recipients
    )
