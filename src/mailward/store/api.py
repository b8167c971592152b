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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# How much of a message `read_blobs(header_only=True)` returns at most.
MAX_HEADER_READ = 1024 * 1024


class StoreError(Exception):
    """Base of every storage error; the message is safe to show to an administrator."""


class AlreadyExists(StoreError):
    pass


class NotFound(StoreError):
    pass


class OverQuota(StoreError):
    """The account's storage quota would be exceeded (IMAP [OVERQUOTA], SMTP 5.2.2)."""


class MailboxNotEmpty(StoreError):
    """Refused because the mailbox still has something (e.g. inferior names)."""


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
class MailboxStatus:
    """Counts for IMAP STATUS / SELECT, computed without reading any message body."""

    mailbox: Mailbox
    unseen: int  # messages without \\Seen
    deleted: int  # messages with \\Deleted
    size: int  # sum of message sizes (RFC 8438 STATUS=SIZE)
    recent: int  # messages with uid > the mailbox's recent mark
    first_unseen_uid: int  # 0 when every message is seen


@dataclass(frozen=True, slots=True)
class MailboxChanges:
    """Everything that changed in a mailbox after `since` (a MODSEQ), RFC 7162.

    `changed` holds every message whose modseq > since, ordered by uid: both new
    messages and flag changes (a session tells them apart by uid). `expunged` holds
    the uids removed with a modseq > since, ascending."""

    highestmodseq: int
    uidnext: int
    changed: Sequence[MessageInfo]
    expunged: Sequence[int]


@dataclass(frozen=True, slots=True)
class Quota:
    used: int  # bytes, every mailbox of the account
    limit: int  # bytes; 0 = unlimited


class FlagMode(enum.StrEnum):
    ADD = "+"
    REMOVE = "-"
    REPLACE = ""


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """Result of `store_flags`: the messages whose flags changed (new modseq) and the
    uids refused by UNCHANGEDSINCE (RFC 7162 3.1.3 MODIFIED)."""

    changed: Sequence[MessageInfo]
    unchanged: Sequence[MessageInfo]  # asked for, no change needed (flags as they are)
    modified: Sequence[int]


@dataclass(frozen=True, slots=True)
class CopyResult:
    """RFC 4315 COPYUID data: destination UIDVALIDITY and the uid pairs, in order."""

    uidvalidity: int
    pairs: Sequence[tuple[int, int]]  # (source uid, destination uid)
    expunge_modseq: int = 0  # MOVE only: the modseq of the source expunge


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
    """One outbound recipient of one message (RFC 5321: one envelope per entry).

    A worker delivers an entry only while it holds it: state DELIVERING, `owner` its
    id, until `lease_until`. DELIVERED and FAILED are outcomes given to `update_queue`,
    which removes the entry; stored entries are QUEUED, DEFERRED or DELIVERING."""

    id: int
    sender: str  # "" for the null reverse-path (DSNs)
    recipient: str
    blob_id: str
    state: QueueState
    attempts: int  # claims so far (an attempt cut short by a crash counts)
    created: float  # Unix time it was queued: delay warnings and max age count from it
    next_attempt: float
    last_error: str  # the last failure, for administrators (never a message body)
    owner: str = ""
    lease_until: float = 0.0
    last_attempt: float = 0.0  # Unix time the last attempt started, 0 if never
    warned: bool = False  # the sender was told of the delay (once, RFC 3464 delayed)


@dataclass(frozen=True, slots=True)
class QueueUpdate:
    """The outcome of an attempt for one claimed entry (`MailStore.update_queue`).

    DELIVERED and FAILED remove the entry (the caller has sent any DSN first);
    DEFERRED puts it back in the queue until `next_attempt`, with `error`; QUEUED puts
    it back due now (a worker giving up its claim at shutdown). `warned` marks that a
    delay DSN was sent."""

    id: int
    state: QueueState
    next_attempt: float = 0.0
    error: str = ""
    warned: bool = False


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """Deliver into this account's mailbox."""

    account_id: int
    mailbox: str = "INBOX"
    flags: frozenset[str] = frozenset()
    # Refuse with OverQuota instead of storing past the account's quota (APPEND).
    # SMTP checks quota at RCPT time instead, so one full mailbox cannot fail a
    # delivery that other recipients share.
    enforce_quota: bool = False


@dataclass(frozen=True, slots=True)
class QuarantineHold:
    """Hold the message in quarantine instead of delivering it (a content check said
    so); `check` and `reason` are for the administrator, never for the sender."""

    check: str
    reason: str


@dataclass(frozen=True, slots=True)
class QuarantinedMessage:
    id: int
    blob_id: str
    sender: str
    local_accounts: Sequence[int]  # account ids it was for
    outbound: Sequence[str]
    check: str
    reason: str
    size: int
    created: float


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
    hold: QuarantineHold | None = None  # quarantine it: no message, no queue entry yet


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    blob_id: str
    stored: Sequence[tuple[int, int]]  # (mailbox_id, uid) per local target, in order
    queued: Sequence[int]  # queue entry ids per outbound recipient, in order
    held: int = 0  # the quarantine id when the delivery was held


# Bayes spam filter (spam/bayes.py): the most tokens one trained message may add.
MAX_BAYES_TOKENS = 4096


@dataclass(frozen=True, slots=True)
class BayesCounts:
    """An account's Bayes training: how many messages it trained as spam and as ham,
    and for each asked-for token it has seen, in how many of each (spam, ham)."""

    spam_messages: int
    ham_messages: int
    tokens: dict[int, tuple[int, int]]


# Abuse limits (pipeline/abuse): per-account sending history, greylisting triplets.
MAX_SENDING_RECIPIENTS = 1000  # addresses per new_recipients / record_sending call


@dataclass(frozen=True, slots=True)
class SendingCounts:
    """What an account sent in a period: messages, and recipients it had never sent
    to before (pipeline/sending_limits.py)."""

    messages: int
    new_recipients: int


@dataclass(frozen=True, slots=True)
class GreylistEntry:
    """One greylisting triplet (RFC 6647; pipeline/greylist.py): client network,
    envelope sender and recipient (canonical), the account the recipient delivers to,
    when it was first and last seen (Unix time), and whether a retry has passed."""

    network: str
    sender: str
    recipient: str
    account_id: int
    first_seen: float
    last_seen: float
    passed: bool


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

    # IMAP / POP3 access. Every call takes the account id and checks that the mailbox
    # (by id) belongs to it: NotFound otherwise, exactly as for a mailbox that does not
    # exist, so nothing tells one account about another's (DESIGN.md 3, walled off).
    # Names: INBOX is case-insensitive; hierarchy separator "/"; a name is data only.
    async def delete_mailbox(self, account_id: int, name: str) -> None:
        """Delete the mailbox and its messages (RFC 9051 6.3.4). INBOX cannot be
        deleted (StoreError). Inferior names are left in place."""
        ...

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        """RFC 9051 6.3.6: rename, with every inferior name ("old/..." follows). The
        UIDVALIDITY is kept. Renaming INBOX moves all its messages into a new mailbox
        `new` and leaves INBOX empty. AlreadyExists if `new` (or a renamed inferior)
        exists; NotFound if `old` does not.

        Renaming INBOX: `new` gets a fresh UIDVALIDITY (its messages keep their uids),
        INBOX keeps its own and its inferiors, and the moved messages are expunged
        from INBOX (with a modseq, for QRESYNC). Subscriptions are not renamed."""
        ...

    async def subscribe(self, account_id: int, name: str) -> None: ...
    async def unsubscribe(self, account_id: int, name: str) -> None:
        """NotFound when the name is not subscribed."""
        ...

    async def list_subscriptions(self, account_id: int) -> list[str]:
        """Subscribed names, which need not exist (RFC 9051 6.3.7)."""
        ...

    async def mailbox_status(self, account_id: int, name: str) -> MailboxStatus: ...

    async def mark_recent(self, account_id: int, mailbox_id: int) -> int:
        """Claim \\Recent (RFC 3501 2.3.2) for a read-write SELECT: returns the old
        mark; messages with a uid above it are recent for this session only. The
        mark moves to uidnext - 1, so no later session sees them as recent."""
        ...

    async def list_uids(self, account_id: int, mailbox_id: int) -> list[int]:
        """Every uid in the mailbox, ascending (a session's message sequence)."""
        ...

    async def fetch_info(
        self, account_id: int, mailbox_id: int, uid_ranges: Sequence[tuple[int, int]]
    ) -> list[MessageInfo]:
        """The messages whose uid is in one of the inclusive (lo, hi) ranges, by uid."""
        ...

    async def read_blob(self, blob_id: str, offset: int = 0, length: int = -1) -> bytes:
        """Bytes of a message body file; a caller streams a large message in chunks.
        The blob id comes from a MessageInfo this account was given. NotFound when
        there is no such blob (e.g. its last message has been expunged since)."""
        ...

    async def read_blobs(
        self, blob_ids: Sequence[str], *, header_only: bool = False
    ) -> list[bytes]:
        """Several whole messages at once (SEARCH reads thousands: one call, not one
        hop each), in order; with `header_only` just each header section up to and
        including its blank line (or MAX_HEADER_READ octets). A missing blob reads as
        b"" (expunged meanwhile); a search then simply does not match it."""
        ...

    async def store_flags(
        self,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int],
        mode: FlagMode,
        flags: frozenset[str],
        unchangedsince: int | None = None,
    ) -> FlagUpdate:
        """RFC 9051 6.4.6 / RFC 7162 3.1.3: one new modseq for every changed message.

        Flags compare case-insensitively; system flags are stored in their RFC
        spelling; \\Recent is never stored (dropped). Uids that do not exist are
        ignored."""
        ...

    async def copy_messages(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult:
        """Copy (sharing the blob) into `dest`, which must exist (NotFound); keeps flags
        and internal date. Quota enforced (OverQuota)."""
        ...

    async def move_messages(
        self, account_id: int, mailbox_id: int, uids: Sequence[int], dest: str
    ) -> CopyResult:
        """RFC 6851 MOVE: copy and expunge the sources in one transaction."""
        ...

    async def expunge(
        self,
        account_id: int,
        mailbox_id: int,
        uids: Sequence[int] | None = None,
        *,
        only_deleted: bool = True,
    ) -> list[int]:
        """Remove messages flagged \\Deleted (restricted to `uids` when given; every
        listed uid when only_deleted is False, for POP3). Returns the removed uids,
        ascending. Each removal is recorded with a new modseq (QRESYNC VANISHED).
        only_deleted=False needs `uids` (StoreError without)."""
        ...

    async def changes_since(
        self, account_id: int, mailbox_id: int, since: int
    ) -> MailboxChanges: ...

    async def get_quota(self, account_id: int) -> Quota: ...
    async def set_quota(self, address: str, limit: int) -> None: ...

    # Quarantine: held messages stay durable with their reason until released
    # (delivered to the targets they were held from) or deleted.
    async def list_quarantine(self) -> list[QuarantinedMessage]: ...
    async def get_quarantined(self, quarantine_id: int) -> QuarantinedMessage:
        """NotFound if there is no such entry."""
        ...

    async def release_quarantined(self, quarantine_id: int) -> DeliveryReceipt:
        """Deliver a held message to its targets (INBOX of an account whose mailbox is
        gone, accounts that no longer exist skipped) and forget the hold."""
        ...

    async def delete_quarantined(self, quarantine_id: int) -> None: ...

    # Bayes spam filter (spam/bayes.py): per-account token counts, nothing shared
    # between accounts. Tokens are signed 64-bit integers (spam/tokens.py).
    async def bayes_counts(self, account_id: int, tokens: Sequence[int]) -> BayesCounts:
        """The account's trained message totals and the counts of those of `tokens` it
        has seen (tokens never seen are absent). An account without training, or that
        does not exist, has zero totals and no tokens. At most MAX_BAYES_TOKENS
        distinct tokens a call (StoreError beyond, or for one outside int64)."""
        ...

    async def bayes_train(
        self, account_id: int, message_key: str, tokens: Sequence[int], spam: bool | None
    ) -> bool:
        """Train one message (`message_key`: a blob id, or any stable name of its
        content) as spam (True) or ham (False), or forget it (None), in one
        transaction; returns whether any count changed. Training a message again as
        the same class changes nothing; as the other class it is moved (what it added
        is subtracted from the old class, `tokens` added to the new); forgetting
        subtracts what it added (`tokens` is then ignored). Counts never go negative.
        Duplicate tokens count once; more than MAX_BAYES_TOKENS distinct tokens, or
        one outside the signed 64-bit range: StoreError. NotFound if the account does
        not exist (training only)."""
        ...

    # Abuse limits (pipeline/abuse): sending history per account (nothing shared
    # between accounts; dropped with the account) and greylisting triplets.
    async def sending_counts(self, account_id: int, since: float) -> SendingCounts:
        """Messages and first-time recipients the account sent from `since` (Unix
        time) on. Counted in hourly buckets: the hour `since` falls in counts whole.
        Zero for an account that sent nothing or does not exist."""
        ...

    async def new_recipients(self, account_id: int, addresses: Sequence[str]) -> set[str]:
        """The canonical forms of those `addresses` the account never sent to (as
        recorded by `record_sending`). At most MAX_SENDING_RECIPIENTS (StoreError)."""
        ...

    async def record_sending(self, account_id: int, at: float, recipients: Sequence[str]) -> int:
        """Count one message the account sent at `at` to `recipients` (canonicalised,
        duplicates once) in one transaction, and remember them; returns how many were
        first-time recipients. Buckets older than two days are dropped. NotFound if
        the account does not exist; StoreError beyond MAX_SENDING_RECIPIENTS."""
        ...

    async def greylist_entry(
        self, network: str, sender: str, recipient: str
    ) -> GreylistEntry | None: ...

    async def save_greylist_entry(self, entry: GreylistEntry) -> None:
        """Insert or replace the entry of its (network, sender, recipient); NotFound if
        its account does not exist."""
        ...

    async def prune_greylist(self, unpassed_before: float, passed_before: float) -> int:
        """Forget triplets never passed that were first seen before `unpassed_before`
        and passed ones last seen before `passed_before`; returns how many."""
        ...

    def watch(self, account_id: int, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call `callback(mailbox_id)` on the caller's event loop after any commit that
        changes one of the account's mailboxes (delivery, flags, expunge, copy...).
        Returns the function that stops watching. In-process only: sessions also poll
        (cheaply) so changes made by another process are seen too. Call it from the
        running loop the callback belongs to; no call happens once the returned
        function has been called."""
        ...

    # Outbound queue. Claims are leases: a worker (`owner`, unique per process, of the
    # form "<node>/<process>") takes due entries with `claim_queue`, renews the lease
    # while it works and reports each outcome with `update_queue`, which only touches
    # entries it still holds. Several workers, even on several nodes, may claim at once;
    # an entry is never held by two (one UPDATE ... RETURNING; PostgreSQL adds FOR
    # UPDATE SKIP LOCKED to the inner SELECT).
    async def list_queue(self) -> list[QueueEntry]:
        """Every entry, by id."""
        ...

    async def get_queue_entry(self, entry_id: int) -> QueueEntry | None: ...

    async def claim_queue(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[QueueEntry]:
        """Take up to `limit` entries that are due (QUEUED or DEFERRED with
        next_attempt <= now, or DELIVERING with a lease that ended by `now`): they
        become DELIVERING, held by `owner` until `lease_until`, attempts + 1,
        last_attempt = now. Returned by next_attempt, then id."""
        ...

    async def renew_queue_claims(self, owner: str, lease_until: float) -> int:
        """Extend the lease of every entry `owner` holds; returns how many."""
        ...

    async def requeue_claims(self, owner_prefix: str, keep: str) -> int:
        """Put back (QUEUED, due at once) every DELIVERING entry whose owner starts with
        `owner_prefix` but is not `keep`: what a previous process of this node held
        when it died. Returns how many."""
        ...

    async def update_queue(self, owner: str, updates: Sequence[QueueUpdate]) -> list[int]:
        """Apply outcomes to entries `owner` still holds, in one transaction, durably
        (a DELIVERED outcome is committed before this returns: "nothing delivered
        twice"). Returns the ids updated; an entry no longer held is left alone."""
        ...

    async def next_queue_due(self) -> float | None:
        """When the earliest entry becomes claimable (Unix time), None if none."""
        ...

    async def retry_queue_entry(self, entry_id: int, now: float) -> QueueEntry:
        """Make a QUEUED or DEFERRED entry due at `now`. NotFound if there is no such
        entry; StoreError while it is being delivered."""
        ...

    async def delete_queue_entry(self, entry_id: int) -> QueueEntry:
        """Remove an entry that is not being delivered (no DSN is sent); returns it.
        NotFound if there is none; StoreError while it is being delivered."""
        ...
