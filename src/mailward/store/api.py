"""The narrow, async storage interface every backend implements.

The embedded default is `store.sqlite` (SQLite WAL + blob files); a PostgreSQL backend
implements the same Protocol and must pass `mailward.testing.store_conformance`
unchanged. Nothing above this layer knows which backend it talks to (DESIGN.md 4).

Invariant (DESIGN.md 3, "nothing acknowledged is lost"): when `deliver()` returns, the
message bytes and every index row that references them are on stable storage (blob
file fsync'd, renamed, directory fsync'd; database transaction committed with
synchronous durability). Backends make this fast with group commit, never by
weakening it.

Local addresses (accounts, aliases) are stored and compared in canonical form (see
`canonical_address`: the whole address lower-cased), so lookups are case-insensitive
as users expect. Outbound recipients are kept as given: a remote local part may be
case-sensitive (RFC 5321 2.4).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """Base of every storage error; the message is safe to show to an administrator."""


class AlreadyExists(StoreError):
    pass


class NotFound(StoreError):
    pass


class SpecialUse(enum.StrEnum):
    """RFC 6154 mailbox roles."""

    NONE = ""
    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    JUNK = "\\Junk"
    ARCHIVE = "\\Archive"


# Created for every new account, with their RFC 6154 roles.
DEFAULT_MAILBOXES: tuple[tuple[str, SpecialUse], ...] = (
    ("INBOX", SpecialUse.NONE),
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Junk", SpecialUse.JUNK),
    ("Archive", SpecialUse.ARCHIVE),
)


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    address: str
    password_hash: str
    created: float  # Unix time


@dataclass(frozen=True, slots=True)
class Alias:
    address: str
    target: str  # an account's address


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: SpecialUse
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    message_count: int


@dataclass(frozen=True, slots=True)
class MessageInfo:
    mailbox_id: int
    uid: int
    size: int
    internal_date: float  # Unix time
    flags: frozenset[str]
    modseq: int
    blob_id: str


class QueueState(enum.StrEnum):
    QUEUED = "queued"
    DEFERRED = "deferred"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class QueueEntry:
    id: int
    sender: str
    recipient: str
    blob_id: str
    state: QueueState
    attempts: int
    created: float
    next_attempt: float
    last_error: str


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """Deliver into this account's mailbox."""

    account_id: int
    mailbox: str = "INBOX"
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message to make durable: `spool` holds its final bytes (headers we add
    included). The store takes ownership of the file: it is renamed into the blob
    area (same filesystem) or deleted.

    A small message may instead be handed over as `content`, with `spool` a fresh
    path from `new_spool()` that does not exist yet: the store writes the file itself,
    off the caller's event loop, with the same durability."""

    spool: Path
    sender: str
    local: Sequence[LocalTarget]
    outbound: Sequence[str]
    internal_date: float | None = None
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    blob_id: str
    stored: Sequence[tuple[int, int]]  # (mailbox_id, uid) per local target, in order
    queued: Sequence[int]  # queue entry ids per outbound recipient, in order


def canonical_address(address: str) -> str:
    """Lower-case the whole address: lookups treat local parts case-insensitively,
    as every mainstream server does and users expect (RFC 5321 2.4 permits it)."""
    return address.strip().lower()


class MailStore(Protocol):
    """Accounts, domains, aliases, mailboxes, messages and the outbound queue."""

    async def close(self) -> None: ...

    def new_spool(self) -> Path:
        """A fresh, not yet existing path where a caller writes an incoming message
        before `deliver()`; on the same filesystem as the blob area (mode 0700 dir)."""
        ...

    # Domains
    async def add_domain(self, name: str) -> None: ...
    async def list_domains(self) -> list[str]: ...
    async def is_local_domain(self, name: str) -> bool: ...

    # Accounts; add_account creates DEFAULT_MAILBOXES. The domain must exist.
    async def add_account(self, address: str, password_hash: str) -> Account: ...
    async def get_account(self, address: str) -> Account | None: ...
    async def get_account_by_id(self, account_id: int) -> Account | None: ...
    async def list_accounts(self) -> list[Account]: ...
    async def delete_account(self, address: str) -> None: ...
    async def set_password_hash(self, address: str, password_hash: str) -> None: ...

    # Aliases: an address in a local domain that delivers to an existing account.
    async def add_alias(self, address: str, target: str) -> None: ...
    async def delete_alias(self, address: str) -> None: ...
    async def list_aliases(self) -> list[Alias]: ...

    async def resolve_recipient(self, address: str) -> Account | None:
        """The account an address (an account's own or an alias) delivers to."""
        ...

    async def owned_addresses(self, account_id: int) -> set[str]:
        """The account's address and every alias that targets it (canonical form)."""
        ...

    # Mailboxes
    async def list_mailboxes(self, account_id: int) -> list[Mailbox]: ...
    async def get_mailbox(self, account_id: int, name: str) -> Mailbox | None: ...
    async def create_mailbox(
        self, account_id: int, name: str, special_use: SpecialUse = SpecialUse.NONE
    ) -> Mailbox: ...

    # Messages
    async def deliver(self, delivery: Delivery) -> DeliveryReceipt:
        """Make one message durable for every target; returns only once it is.

        If the caller is cancelled while waiting, the delivery may still complete: a
        cancelled caller must not acknowledge the message (and never learns whether it
        was stored), which is why the SMTP shell never cancels a delivery in flight."""
        ...

    async def list_messages(self, account_id: int, mailbox: str) -> list[MessageInfo]: ...
    async def read_message(self, account_id: int, mailbox: str, uid: int) -> bytes: ...

    # Outbound queue
    async def list_queue(self) -> list[QueueEntry]: ...
