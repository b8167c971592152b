"""Backend-agnostic conformance checks for `mailward.store.api.MailStore`.

Every check is ``async def check_xxx(store) -> None`` that uses only the Protocol and
raises AssertionError on a violation; `CHECKS` lists them all. A backend's test module
runs each check against a fresh, empty store, e.g.::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check, tmp_path):
        async def run():
            store = await MyStore.open(tmp_path)
            try:
                await check(store)
            finally:
                await store.close()
        asyncio.run(run())
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mailward.store.api import (
    DEFAULT_MAILBOXES,
    MAX_BAYES_TOKENS,
    MAX_SENDING_RECIPIENTS,
    Account,
    AlreadyExists,
    Delivery,
    DeliveryReceipt,
    FlagMode,
    GreylistEntry,
    LocalTarget,
    Mailbox,
    MailStore,
    MessageInfo,
    NotFound,
    OverQuota,
    QuarantineHold,
    QueueState,
    QueueUpdate,
    Quota,
    SendingCounts,
    SpecialUse,
    StoreError,
)

FAKE_HASH = "$argon2id$not-a-real-hash"  # test data, never verified
NEW_HASH = "$argon2id$another-fake"

Check = Callable[[MailStore], Awaitable[None]]
CHECKS: list[Check] = []


def _check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def write_spool(store: MailStore, data: bytes) -> Path:
    """Write `data` to a fresh spool file of `store`, as a protocol handler would."""
    path = store.new_spool()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def sample_message(n: int, size: int = 300) -> bytes:
    """A distinctive message (CRLF, 8-bit and NUL bytes included: storage is byte-exact)."""
    head = f"From: a@example.org\r\nSubject: message {n}\r\n\r\n".encode()
    body = bytes((n * 7 + i) % 256 for i in range(size))
    return head + body + b"\r\n"


async def deliver_bytes(
    store: MailStore,
    data: bytes,
    local: Sequence[LocalTarget] = (),
    outbound: Sequence[str] = (),
    sender: str = "sender@remote.example",
    internal_date: float | None = None,
) -> DeliveryReceipt:
    spool = write_spool(store, data)
    return await store.deliver(
        Delivery(
            spool=spool,
            sender=sender,
            local=list(local),
            outbound=list(outbound),
            internal_date=internal_date,
        )
    )


async def _raises(exc_type: type[BaseException], aw: Awaitable[object]) -> None:
    try:
        await aw
    except exc_type:
        return
    raise AssertionError(f"expected {exc_type.__name__}")


async def _setup(store: MailStore, *addresses: str) -> list[Account]:
    domains = {a.rpartition("@")[2].lower() for a in addresses}
    for d in sorted(domains):
        if not await store.is_local_domain(d):
            await store.add_domain(d)
    return [await store.add_account(a, FAKE_HASH) for a in addresses]


@_check
async def check_domains(store: MailStore) -> None:
    assert await store.list_domains() == []
    await store.add_domain("Example.ORG")
    await store.add_domain("example.net")
    assert sorted(await store.list_domains()) == ["example.net", "example.org"]
    assert await store.is_local_domain("example.org")
    assert await store.is_local_domain("EXAMPLE.org")
    assert not await store.is_local_domain("example.com")
    await _raises(AlreadyExists, store.add_domain("example.org"))
    await _raises(AlreadyExists, store.add_domain("EXAMPLE.NET"))


@_check
async def check_account_needs_domain(store: MailStore) -> None:
    await _raises(NotFound, store.add_account("alice@nowhere.example", "h"))
    assert await store.list_accounts() == []


@_check
async def check_account_default_mailboxes(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    assert alice.address == "alice@example.org"
    assert alice.password_hash == FAKE_HASH
    assert alice.created > 0
    boxes = await store.list_mailboxes(alice.id)
    assert [(b.name, b.special_use) for b in boxes] == list(DEFAULT_MAILBOXES)
    assert boxes[0].name == "INBOX"
    for b in boxes:
        assert b.account_id == alice.id
        assert b.uidnext == 1
        assert b.message_count == 0
        assert b.uidvalidity > 0
    assert len({b.uidvalidity for b in boxes}) == len(boxes), "uidvalidity must be unique"
    sent = await store.get_mailbox(alice.id, "Sent")
    assert sent is not None and sent.special_use is SpecialUse.SENT
    inbox = await store.get_mailbox(alice.id, "inbox")
    assert inbox is not None and inbox.name == "INBOX", "INBOX is case-insensitive"
    assert await store.get_mailbox(alice.id, "Nope") is None


@_check
async def check_account_lookup_case_insensitive(store: MailStore) -> None:
    (alice,) = await _setup(store, "Alice@Example.ORG")
    assert alice.address == "alice@example.org"
    for form in ("alice@example.org", "ALICE@EXAMPLE.ORG", " Alice@example.Org "):
        got = await store.get_account(form)
        assert got == alice, form
    assert await store.get_account_by_id(alice.id) == alice
    assert await store.get_account_by_id(alice.id + 1000) is None
    assert await store.get_account("bob@example.org") is None
    await _raises(AlreadyExists, store.add_account("ALICE@example.org", "h2"))
    assert [a.address for a in await store.list_accounts()] == ["alice@example.org"]


@_check
async def check_password_hash(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    await store.set_password_hash("ALICE@example.org", NEW_HASH)
    got = await store.get_account("alice@example.org")
    assert got is not None and got.password_hash == NEW_HASH
    assert got.id == alice.id and got.created == alice.created
    await _raises(NotFound, store.set_password_hash("bob@example.org", "x"))


@_check
async def check_aliases(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await store.add_alias("Postmaster@Example.org", "ALICE@example.org")
    await store.add_alias("abuse@example.org", "alice@example.org")
    assert [(a.address, a.target) for a in await store.list_aliases()] == [
        ("abuse@example.org", "alice@example.org"),
        ("postmaster@example.org", "alice@example.org"),
    ]
    assert await store.owned_addresses(alice.id) == {
        "alice@example.org",
        "postmaster@example.org",
        "abuse@example.org",
    }
    assert await store.owned_addresses(bob.id) == {"bob@example.org"}
    # One address space: an alias can't shadow an account and vice versa.
    await _raises(AlreadyExists, store.add_alias("bob@example.org", "alice@example.org"))
    await _raises(AlreadyExists, store.add_alias("POSTMASTER@example.org", "bob@example.org"))
    await _raises(AlreadyExists, store.add_account("postmaster@example.org", "h"))
    # Targets must exist; alias domains must be local.
    await _raises(NotFound, store.add_alias("x@example.org", "nobody@example.org"))
    await _raises(NotFound, store.add_alias("x@elsewhere.example", "alice@example.org"))
    await store.delete_alias("abuse@EXAMPLE.org")
    await _raises(NotFound, store.delete_alias("abuse@example.org"))
    assert await store.owned_addresses(alice.id) == {
        "alice@example.org",
        "postmaster@example.org",
    }


@_check
async def check_resolve_recipient(store: MailStore) -> None:
    alice, _bob = await _setup(store, "alice@example.org", "bob@example.org")
    await store.add_alias("info@example.org", "alice@example.org")
    assert await store.resolve_recipient("alice@example.org") == alice
    assert await store.resolve_recipient("ALICE@EXAMPLE.ORG") == alice
    assert await store.resolve_recipient("Info@Example.org") == alice
    assert await store.resolve_recipient("nobody@example.org") is None
    assert await store.resolve_recipient("alice@elsewhere.example") is None


@_check
async def check_delete_account(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await store.add_alias("info@example.org", "alice@example.org")
    shared = await deliver_bytes(store, b"shared\r\n", [LocalTarget(alice.id), LocalTarget(bob.id)])
    await deliver_bytes(store, b"alice only\r\n", [LocalTarget(alice.id)])
    await store.delete_account("Alice@example.org")
    assert await store.get_account("alice@example.org") is None
    assert await store.get_account_by_id(alice.id) is None
    assert await store.resolve_recipient("info@example.org") is None
    assert await store.list_aliases() == []
    assert await store.list_mailboxes(alice.id) == []
    await _raises(NotFound, store.delete_account("alice@example.org"))
    # Bob's copy of the shared message survives.
    msgs = await store.list_messages(bob.id, "INBOX")
    assert [m.blob_id for m in msgs] == [shared.blob_id]
    assert await store.read_message(bob.id, "INBOX", msgs[0].uid) == b"shared\r\n"
    # The address can be used again; the new account starts empty.
    (alice2,) = await _setup(store, "alice@example.org")
    assert alice2.id != alice.id
    assert await store.list_messages(alice2.id, "INBOX") == []


@_check
async def check_create_mailbox(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    mb = await store.create_mailbox(alice.id, "Projects/2025", SpecialUse.NONE)
    assert mb.name == "Projects/2025" and mb.account_id == alice.id
    assert mb.uidnext == 1 and mb.message_count == 0
    others = {b.uidvalidity for b in await store.list_mailboxes(alice.id) if b.id != mb.id}
    assert mb.uidvalidity not in others
    assert await store.get_mailbox(alice.id, "Projects/2025") == mb
    assert await store.get_mailbox(bob.id, "Projects/2025") is None, "walled off"
    await _raises(AlreadyExists, store.create_mailbox(alice.id, "Projects/2025"))
    await _raises(AlreadyExists, store.create_mailbox(alice.id, "inbox"))
    await _raises(NotFound, store.create_mailbox(alice.id + bob.id + 1000, "X"))
    await store.create_mailbox(bob.id, "Projects/2025")  # same name, other account: fine


@_check
async def check_deliver_local_and_outbound(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    data = sample_message(1, 5000)
    rcpt = await deliver_bytes(
        store,
        data,
        [LocalTarget(alice.id), LocalTarget(bob.id, "Archive")],
        ["carol@remote.example", "Dave@Remote.example"],
        sender="alice@example.org",
        internal_date=1_700_000_000.0,
    )
    assert len(rcpt.stored) == 2 and len(rcpt.queued) == 2
    a_inbox = await store.get_mailbox(alice.id, "INBOX")
    b_arch = await store.get_mailbox(bob.id, "Archive")
    assert a_inbox is not None and b_arch is not None
    assert rcpt.stored[0] == (a_inbox.id, 1)
    assert rcpt.stored[1] == (b_arch.id, 1)
    assert a_inbox.message_count == 1 and a_inbox.uidnext == 2
    assert await store.read_message(alice.id, "INBOX", 1) == data
    assert await store.read_message(bob.id, "Archive", 1) == data
    (info,) = await store.list_messages(alice.id, "INBOX")
    assert info.size == len(data)
    assert info.blob_id == rcpt.blob_id
    assert info.internal_date == 1_700_000_000.0
    assert info.mailbox_id == a_inbox.id
    queue = await store.list_queue()
    assert [q.id for q in queue] == list(rcpt.queued)
    assert [q.recipient.lower() for q in queue] == ["carol@remote.example", "dave@remote.example"]
    for q in queue:
        assert q.state is QueueState.QUEUED
        assert q.sender == "alice@example.org"
        assert q.blob_id == rcpt.blob_id
        assert q.attempts == 0
        assert q.next_attempt >= q.created - 1
    # Walled off: Bob cannot read Alice's INBOX message through his own account id.
    await _raises(NotFound, store.read_message(bob.id, "INBOX", 1))


@_check
async def check_deliver_in_memory_content(store: MailStore) -> None:
    """A message handed over as `content` is stored like a spooled one, byte-exact,
    also when mixed concurrently with spooled deliveries."""
    (alice,) = await _setup(store, "alice@example.org")
    messages = [sample_message(n, 200 + 37 * n) for n in range(40)]

    async def one(n: int, data: bytes) -> DeliveryReceipt:
        if n % 2:
            return await deliver_bytes(store, data, [LocalTarget(alice.id)])
        delivery = Delivery(
            spool=store.new_spool(),
            sender="s@remote.example",
            local=[LocalTarget(alice.id)],
            outbound=[],
            content=data,
        )
        return await store.deliver(delivery)

    receipts = await asyncio.gather(*(one(n, d) for n, d in enumerate(messages)))
    by_uid = {}
    for data, rcpt in zip(messages, receipts, strict=True):
        ((_mailbox, uid),) = rcpt.stored
        by_uid[uid] = data
    assert sorted(by_uid) == list(range(1, 41))
    for uid, data in by_uid.items():
        assert await store.read_message(alice.id, "INBOX", uid) == data


@_check
async def check_outbound_only(store: MailStore) -> None:
    await _setup(store, "alice@example.org")
    rcpt = await deliver_bytes(store, b"out\r\n", [], ["x@remote.example"])
    assert rcpt.stored == [] or list(rcpt.stored) == []
    (q,) = await store.list_queue()
    assert q.id == rcpt.queued[0] and q.state is QueueState.QUEUED


@_check
async def check_byte_exact(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    payloads = [
        b"",
        b"\x00",
        b"no final newline",
        b"bare\nLF\rCR\r\n.\r\n..dot-stuffed?\r\n",
        bytes(range(256)) * 40,
        os.urandom(300_000),
    ]
    for p in payloads:
        await deliver_bytes(store, p, [LocalTarget(alice.id)])
    msgs = await store.list_messages(alice.id, "INBOX")
    assert [m.size for m in msgs] == [len(p) for p in payloads]
    for m, p in zip(msgs, payloads, strict=True):
        assert await store.read_message(alice.id, "INBOX", m.uid) == p


@_check
async def check_uids_ascending_never_reused(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    before = await store.get_mailbox(alice.id, "INBOX")
    assert before is not None
    uids = []
    for n in range(5):
        r = await deliver_bytes(store, sample_message(n), [LocalTarget(alice.id)])
        uids.append(r.stored[0][1])
    assert uids == sorted(uids) and len(set(uids)) == 5
    assert uids[0] >= before.uidnext
    # A failed delivery (unknown mailbox) must not consume or reuse a UID elsewhere.
    await _raises(NotFound, deliver_bytes(store, b"x", [LocalTarget(alice.id, "No such mailbox")]))
    r = await deliver_bytes(store, b"y", [LocalTarget(alice.id)])
    assert r.stored[0][1] > uids[-1]
    after = await store.get_mailbox(alice.id, "INBOX")
    assert after is not None
    assert after.uidvalidity == before.uidvalidity
    assert after.uidnext == r.stored[0][1] + 1
    assert after.message_count == 6
    # Same message twice into one mailbox: two UIDs.
    r2 = await deliver_bytes(store, b"z", [LocalTarget(alice.id), LocalTarget(alice.id)])
    assert r2.stored[0][1] < r2.stored[1][1]


@_check
async def check_modseq_increasing(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    start = await store.get_mailbox(alice.id, "INBOX")
    assert start is not None
    seen = [start.highestmodseq]
    for n in range(4):
        await deliver_bytes(store, sample_message(n), [LocalTarget(alice.id)])
        mb = await store.get_mailbox(alice.id, "INBOX")
        assert mb is not None
        seen.append(mb.highestmodseq)
    assert all(a < b for a, b in itertools.pairwise(seen)), seen
    msgs = await store.list_messages(alice.id, "INBOX")
    assert [m.modseq for m in msgs] == seen[1:]
    # Another mailbox's counter is independent.
    sent = await store.get_mailbox(alice.id, "Sent")
    assert sent is not None and sent.highestmodseq == start.highestmodseq


@_check
async def check_flags_on_delivery(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    flags = frozenset({"\\Seen", "$Junk", "\\Flagged"})
    await deliver_bytes(store, b"a", [LocalTarget(alice.id, "Sent", flags), LocalTarget(alice.id)])
    (sent,) = await store.list_messages(alice.id, "Sent")
    (inbox,) = await store.list_messages(alice.id, "INBOX")
    assert sent.flags == flags
    assert inbox.flags == frozenset()


@_check
async def check_missing_mailbox_fails_only_that_delivery(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    good = [sample_message(n) for n in range(10)]
    results = await asyncio.gather(
        *(deliver_bytes(store, g, [LocalTarget(alice.id)]) for g in good[:5]),
        deliver_bytes(store, b"bad", [LocalTarget(alice.id, "Missing")], ["r@remote.example"]),
        *(deliver_bytes(store, g, [LocalTarget(alice.id)]) for g in good[5:]),
        return_exceptions=True,
    )
    assert isinstance(results[5], NotFound), results[5]
    ok = [r for i, r in enumerate(results) if i != 5]
    assert all(isinstance(r, DeliveryReceipt) for r in ok), ok
    msgs = await store.list_messages(alice.id, "INBOX")
    assert len(msgs) == 10
    contents = {await store.read_message(alice.id, "INBOX", m.uid) for m in msgs}
    assert contents == set(good)
    assert await store.list_queue() == [], "the failed delivery's queue row is rolled back"


@_check
async def check_missing_spool_fails_only_that_delivery(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    ghost = store.new_spool()  # never written
    results = await asyncio.gather(
        deliver_bytes(store, b"one", [LocalTarget(alice.id)]),
        store.deliver(Delivery(ghost, "s@remote.example", [LocalTarget(alice.id)], [])),
        deliver_bytes(store, b"two", [LocalTarget(alice.id)]),
        return_exceptions=True,
    )
    assert isinstance(results[1], StoreError), results[1]
    assert isinstance(results[0], DeliveryReceipt) and isinstance(results[2], DeliveryReceipt)
    msgs = await store.list_messages(alice.id, "INBOX")
    assert sorted([await store.read_message(alice.id, "INBOX", m.uid) for m in msgs]) == [
        b"one",
        b"two",
    ]


@_check
async def check_concurrent_deliveries(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    n = 200
    payloads = [sample_message(i, 100 + i) for i in range(n)]

    async def one(i: int) -> DeliveryReceipt:
        targets = [LocalTarget(alice.id)] + ([LocalTarget(bob.id)] if i % 3 == 0 else [])
        outbound = ["x@remote.example"] if i % 5 == 0 else []
        return await deliver_bytes(store, payloads[i], targets, outbound)

    receipts = await asyncio.gather(*(one(i) for i in range(n)))
    assert len({r.blob_id for r in receipts}) == n
    msgs = await store.list_messages(alice.id, "INBOX")
    assert len(msgs) == n, "every message stored exactly once"
    uids = [m.uid for m in msgs]
    assert len(set(uids)) == n and uids == sorted(uids)
    assert len({m.modseq for m in msgs}) == n
    by_uid = {r.stored[0][1]: i for i, r in enumerate(receipts)}
    for m in msgs:
        assert await store.read_message(alice.id, "INBOX", m.uid) == payloads[by_uid[m.uid]]
    assert len(await store.list_messages(bob.id, "INBOX")) == len(range(0, n, 3))
    assert len(await store.list_queue()) == len(range(0, n, 5))
    inbox = await store.get_mailbox(alice.id, "INBOX")
    assert inbox is not None and inbox.message_count == n and inbox.uidnext == max(uids) + 1


@_check
async def check_reads_walled_off(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await deliver_bytes(store, b"secret", [LocalTarget(alice.id)])
    assert await store.list_messages(alice.id, "INBOX") != []
    await _raises(NotFound, store.list_messages(alice.id, "Nope"))
    await _raises(NotFound, store.read_message(alice.id, "INBOX", 99))
    assert await store.list_messages(bob.id, "INBOX") == []
    await _raises(NotFound, store.read_message(bob.id, "INBOX", 1))


# ---- IMAP / POP3 access ---------------------------------------------------------------

UID_MAX = 0xFFFFFFFF


async def _box(store: MailStore, account_id: int, name: str = "INBOX") -> Mailbox:
    mb = await store.get_mailbox(account_id, name)
    assert mb is not None, name
    return mb


async def _fill(
    store: MailStore,
    account_id: int,
    payloads: Sequence[bytes],
    mailbox: str = "INBOX",
    flags: Sequence[frozenset[str]] = (),
) -> list[int]:
    """Deliver one after another (so uids follow `payloads`); returns the uids."""
    uids = []
    for i, data in enumerate(payloads):
        fl = flags[i] if i < len(flags) else frozenset()
        r = await deliver_bytes(store, data, [LocalTarget(account_id, mailbox, fl)])
        uids.append(r.stored[0][1])
    return uids


async def _eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for `cond` (a change notification may arrive after the call returned)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "timed out waiting for a notification"
        await asyncio.sleep(0.005)


def _uids(infos: Sequence[MessageInfo]) -> list[int]:
    return [m.uid for m in infos]


@_check
async def check_subscriptions(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    assert await store.list_subscriptions(alice.id) == []
    await store.subscribe(alice.id, "Sent")
    await store.subscribe(alice.id, "Sent")  # idempotent
    await store.subscribe(alice.id, "Not/There/Yet")  # need not exist (RFC 9051 6.3.7)
    await store.subscribe(alice.id, "inbox")
    assert sorted(await store.list_subscriptions(alice.id)) == ["INBOX", "Not/There/Yet", "Sent"]
    assert await store.list_subscriptions(bob.id) == [], "walled off"
    await _raises(NotFound, store.unsubscribe(bob.id, "Sent"))
    await store.unsubscribe(alice.id, "Sent")
    await _raises(NotFound, store.unsubscribe(alice.id, "Sent"))
    await store.unsubscribe(alice.id, "INBOX")
    assert await store.list_subscriptions(alice.id) == ["Not/There/Yet"]
    await _raises(NotFound, store.subscribe(alice.id + bob.id + 1000, "INBOX"))
    await _raises(StoreError, store.subscribe(alice.id, "bad\r\nname"))


@_check
async def check_delete_mailbox(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    work = await store.create_mailbox(alice.id, "Work")
    await store.create_mailbox(alice.id, "Work/2024")
    await store.create_mailbox(bob.id, "Work")
    only = await deliver_bytes(store, b"work only\r\n", [LocalTarget(alice.id, "Work")])
    shared = await deliver_bytes(
        store, b"shared!\r\n", [LocalTarget(alice.id, "Work"), LocalTarget(alice.id)]
    )
    await store.subscribe(alice.id, "Work")
    used = (await store.get_quota(alice.id)).used
    assert used == len(b"work only\r\n") + 2 * len(b"shared!\r\n")
    await _raises(StoreError, store.delete_mailbox(alice.id, "inbox"))
    await _raises(StoreError, store.delete_mailbox(alice.id, "INBOX"))
    assert await store.get_mailbox(alice.id, "INBOX") is not None
    await store.delete_mailbox(alice.id, "Work")
    assert await store.get_mailbox(alice.id, "Work") is None
    assert await store.get_mailbox(alice.id, "Work/2024") is not None, "inferiors stay"
    assert await store.get_mailbox(bob.id, "Work") is not None, "bob's Work is his own"
    assert await store.list_subscriptions(alice.id) == ["Work"], "subscriptions stay"
    assert (await store.get_quota(alice.id)).used == len(b"shared!\r\n")
    await _raises(NotFound, store.read_blob(only.blob_id))
    assert await store.read_blob(shared.blob_id) == b"shared!\r\n", "still in INBOX"
    assert [m.blob_id for m in await store.list_messages(alice.id, "INBOX")] == [shared.blob_id]
    await _raises(NotFound, store.delete_mailbox(alice.id, "Work"))
    await _raises(NotFound, store.list_uids(alice.id, work.id))
    again = await store.create_mailbox(alice.id, "Work")
    assert again.uidvalidity != work.uidvalidity and again.message_count == 0
    await _raises(NotFound, store.delete_mailbox(bob.id, "Work/2024"))


@_check
async def check_rename_mailbox(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    for name in ("a", "a/x", "a/x/y", "ab", "d/x"):
        await store.create_mailbox(alice.id, name)
    a0, ax0 = await _box(store, alice.id, "a"), await _box(store, alice.id, "a/x")
    (uid,) = await _fill(store, alice.id, [b"in a/x\r\n"], "a/x", [frozenset({"\\Seen"})])
    await store.subscribe(alice.id, "a")
    await store.rename_mailbox(alice.id, "a", "c")
    names = {b.name for b in await store.list_mailboxes(alice.id)}
    assert {"c", "c/x", "c/x/y", "ab", "d/x"} <= names
    assert not {"a", "a/x", "a/x/y"} & names
    c, cx = await _box(store, alice.id, "c"), await _box(store, alice.id, "c/x")
    assert (c.id, c.uidvalidity) == (a0.id, a0.uidvalidity), "UIDVALIDITY kept"
    assert (cx.id, cx.uidvalidity, cx.message_count) == (ax0.id, ax0.uidvalidity, 1)
    (m,) = await store.list_messages(alice.id, "c/x")
    assert m.uid == uid and m.flags == frozenset({"\\Seen"})
    assert await store.read_message(alice.id, "c/x", uid) == b"in a/x\r\n"
    assert await store.list_subscriptions(alice.id) == ["a"], "subscriptions not renamed"
    # Conflicts: the new name, or a renamed inferior's, exists; nothing changes then.
    await _raises(AlreadyExists, store.rename_mailbox(alice.id, "ab", "c"))
    await _raises(AlreadyExists, store.rename_mailbox(alice.id, "ab", "inbox"))
    await _raises(AlreadyExists, store.rename_mailbox(alice.id, "c", "d"))  # c/x -> d/x
    assert await store.get_mailbox(alice.id, "c/x") is not None
    assert await store.get_mailbox(alice.id, "d") is None
    await _raises(NotFound, store.rename_mailbox(alice.id, "nope", "x"))
    await _raises(NotFound, store.rename_mailbox(bob.id, "c", "x"))  # walled off
    assert await store.get_mailbox(bob.id, "x") is None
    # Under itself: every inferior follows.
    await store.rename_mailbox(alice.id, "c", "c/sub")
    names = {b.name for b in await store.list_mailboxes(alice.id)}
    assert {"c/sub", "c/sub/x", "c/sub/x/y"} <= names and "c" not in names
    # Roles stay with their mailbox.
    await store.rename_mailbox(alice.id, "Sent", "Sent Items")
    sent = await _box(store, alice.id, "Sent Items")
    assert sent.special_use is SpecialUse.SENT
    assert await store.get_mailbox(alice.id, "Sent") is None


@_check
async def check_rename_inbox(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    payloads = [sample_message(n) for n in range(3)]
    uids = await _fill(store, alice.id, payloads)
    await store.create_mailbox(alice.id, "INBOX/child")
    inbox0 = await _box(store, alice.id)
    used = (await store.get_quota(alice.id)).used
    await store.rename_mailbox(alice.id, "inbox", "Old mail")
    inbox = await _box(store, alice.id)
    assert (inbox.id, inbox.uidvalidity) == (inbox0.id, inbox0.uidvalidity)
    assert inbox.message_count == 0 and await store.list_uids(alice.id, inbox.id) == []
    assert inbox.highestmodseq > inbox0.highestmodseq
    old = await _box(store, alice.id, "Old mail")
    assert old.message_count == 3 and old.id != inbox.id
    got = [
        await store.read_message(alice.id, "Old mail", m.uid)
        for m in await store.list_messages(alice.id, "Old mail")
    ]
    assert got == payloads
    assert await store.get_mailbox(alice.id, "INBOX/child") is not None, "inferiors stay"
    assert await store.get_mailbox(alice.id, "Old mail/child") is None
    changes = await store.changes_since(alice.id, inbox.id, inbox0.highestmodseq)
    assert list(changes.expunged) == uids and list(changes.changed) == []
    assert (await store.get_quota(alice.id)).used == used
    # New mail keeps flowing into INBOX, with uids never used there before.
    r = await deliver_bytes(store, b"new\r\n", [LocalTarget(alice.id)])
    assert r.stored[0] == (inbox.id, uids[-1] + 1)
    await _raises(AlreadyExists, store.rename_mailbox(alice.id, "INBOX", "Old mail"))


@_check
async def check_mailbox_status(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    seen, deleted = frozenset({"\\Seen"}), frozenset({"\\Deleted", "\\Seen"})
    payloads = [b"1" * 10, b"2" * 20, b"3" * 30, b"4" * 40, b"5" * 50]
    uids = await _fill(store, alice.id, payloads, flags=[seen, frozenset(), deleted])
    st = await store.mailbox_status(alice.id, "inbox")
    assert st.mailbox == await _box(store, alice.id)
    assert (st.unseen, st.deleted, st.size, st.recent) == (3, 1, 150, 5)
    assert st.first_unseen_uid == uids[1]
    inbox = st.mailbox
    await store.mark_recent(alice.id, inbox.id)
    await store.store_flags(alice.id, inbox.id, uids, FlagMode.ADD, frozenset({"\\Seen"}))
    st = await store.mailbox_status(alice.id, "INBOX")
    assert (st.unseen, st.first_unseen_uid, st.recent, st.deleted) == (0, 0, 0, 1)
    empty = await store.mailbox_status(alice.id, "Sent")
    assert (empty.unseen, empty.deleted, empty.size, empty.recent) == (0, 0, 0, 0)
    assert empty.first_unseen_uid == 0
    await _raises(NotFound, store.mailbox_status(alice.id, "Nope"))
    other = await store.mailbox_status(bob.id, "INBOX")
    assert other.mailbox.account_id == bob.id and other.size == 0, "walled off"


@_check
async def check_mark_recent(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await _fill(store, alice.id, [b"a", b"b", b"c"])
    inbox = await _box(store, alice.id)
    assert await store.mark_recent(alice.id, inbox.id) == 0
    assert await store.mark_recent(alice.id, inbox.id) == 3, "claimed once"
    assert (await store.mailbox_status(alice.id, "INBOX")).recent == 0
    await _fill(store, alice.id, [b"d", b"e"])
    assert (await store.mailbox_status(alice.id, "INBOX")).recent == 2
    assert await store.mark_recent(alice.id, inbox.id) == 3
    assert (await store.mailbox_status(alice.id, "INBOX")).recent == 0
    await _raises(NotFound, store.mark_recent(bob.id, inbox.id))
    await _raises(NotFound, store.mark_recent(alice.id, inbox.id + 10_000))


@_check
async def check_list_uids_and_fetch_info(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    uids = await _fill(store, alice.id, [sample_message(n) for n in range(10)])
    assert uids == list(range(1, 11))
    inbox = await _box(store, alice.id)
    assert await store.expunge(alice.id, inbox.id, [3, 4], only_deleted=False) == [3, 4]
    left = [1, 2, 5, 6, 7, 8, 9, 10]
    assert await store.list_uids(alice.id, inbox.id) == left
    by_uid = {m.uid: m for m in await store.list_messages(alice.id, "INBOX")}

    async def fetch(*ranges: tuple[int, int]) -> list[int]:
        infos = await store.fetch_info(alice.id, inbox.id, list(ranges))
        for m in infos:
            assert m == by_uid[m.uid]
        return _uids(infos)

    assert await fetch((1, 1)) == [1]
    assert await fetch((2, 6)) == [2, 5, 6]
    assert await fetch((9, UID_MAX)) == [9, 10], "n:*"
    assert await fetch((1, UID_MAX)) == left, "1:*"
    assert await fetch((1, 2), (2, 5), (8, 8)) == [1, 2, 5, 8], "no duplicates"
    assert await fetch((8, 8), (1, 1)) == [1, 8], "by uid, whatever the range order"
    assert await fetch((3, 4)) == []
    assert await fetch((11, 20)) == []
    assert await fetch() == []
    odd = [(u, u) for u in range(1, 2000, 2)]
    assert await fetch(*odd) == [1, 5, 7, 9]
    assert await fetch(*[(u, u + 1) for u in range(1, 3000, 3)]) == [1, 2, 5, 7, 8, 10]


@_check
async def check_read_blob(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    data = sample_message(1, 70_000)
    r = await deliver_bytes(store, data, [LocalTarget(alice.id)])
    assert await store.read_blob(r.blob_id) == data
    assert await store.read_blob(r.blob_id, 10, 100) == data[10:110]
    assert await store.read_blob(r.blob_id, len(data) - 5) == data[-5:]
    assert await store.read_blob(r.blob_id, len(data) - 5, 100) == data[-5:]
    assert await store.read_blob(r.blob_id, len(data) + 10) == b""
    assert await store.read_blob(r.blob_id, 0, 0) == b""
    chunks = [await store.read_blob(r.blob_id, o, 16384) for o in range(0, len(data), 16384)]
    assert b"".join(chunks) == data
    (info,) = await store.list_messages(alice.id, "INBOX")
    assert await store.read_blob(info.blob_id) == data
    for bad in ("0" * 32, "", "../../mailward.db", r.blob_id.upper(), r.blob_id + "0"):
        await _raises(NotFound, store.read_blob(bad))


@_check
async def check_read_blobs(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    crlf = b"Subject: one\r\nX-A: b\r\n\r\nbody one\r\n"
    lf = b"Subject: two\n\nbody two\n"
    no_body = b"Subject: three\r\n"
    ids = [
        (await deliver_bytes(store, m, [LocalTarget(alice.id)])).blob_id
        for m in (crlf, lf, no_body)
    ]
    assert await store.read_blobs(ids) == [crlf, lf, no_body]
    headers = await store.read_blobs([*ids, "0" * 32, "../x"], header_only=True)
    assert headers == [b"Subject: one\r\nX-A: b\r\n\r\n", b"Subject: two\n\n", no_body, b"", b""]
    assert await store.read_blobs([]) == []


@_check
async def check_store_flags(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await _fill(store, alice.id, [sample_message(n) for n in range(4)])
    inbox = await _box(store, alice.id)
    h0 = inbox.highestmodseq
    work = frozenset({"\\Seen", "$Work"})

    up = await store.store_flags(alice.id, inbox.id, [2, 1], FlagMode.ADD, work)
    assert _uids(up.changed) == [1, 2]
    assert all(m.flags == work and m.modseq == h0 + 1 for m in up.changed)
    assert list(up.unchanged) == [] and list(up.modified) == []
    assert (await _box(store, alice.id)).highestmodseq == h0 + 1, "one modseq per STORE"
    by_uid = {m.uid: m for m in await store.list_messages(alice.id, "INBOX")}
    assert by_uid[1] == up.changed[0] and by_uid[2] == up.changed[1]
    assert by_uid[3].flags == frozenset()

    # A STORE that changes nothing takes no modseq; flags are case-insensitive.
    up = await store.store_flags(alice.id, inbox.id, [1, 2], FlagMode.ADD, frozenset({"\\SEEN"}))
    assert list(up.changed) == [] and _uids(up.unchanged) == [1, 2]
    assert up.unchanged[0] == by_uid[1]
    assert (await _box(store, alice.id)).highestmodseq == h0 + 1

    up = await store.store_flags(
        alice.id, inbox.id, [1, 2, 3], FlagMode.REMOVE, frozenset({"$work"})
    )
    assert _uids(up.changed) == [1, 2] and _uids(up.unchanged) == [3]
    assert all(m.flags == frozenset({"\\Seen"}) and m.modseq == h0 + 2 for m in up.changed)

    # \Recent is never stored; system flags keep their canonical spelling.
    up = await store.store_flags(
        alice.id, inbox.id, [3], FlagMode.REPLACE, frozenset({"\\flagged", "\\Recent"})
    )
    assert [m.flags for m in up.changed] == [frozenset({"\\Flagged"})]
    up = await store.store_flags(alice.id, inbox.id, [4], FlagMode.ADD, frozenset({"\\Recent"}))
    assert list(up.changed) == [] and _uids(up.unchanged) == [4]
    up = await store.store_flags(alice.id, inbox.id, [3], FlagMode.REPLACE, frozenset())
    assert [m.flags for m in up.changed] == [frozenset()]
    h = (await _box(store, alice.id)).highestmodseq
    assert h == h0 + 4

    # Uids that do not exist are ignored.
    up = await store.store_flags(alice.id, inbox.id, [99, 100], FlagMode.ADD, work)
    assert (list(up.changed), list(up.unchanged), list(up.modified)) == ([], [], [])

    # UNCHANGEDSINCE (RFC 7162 3.1.3): 1 and 2 last changed at h0 + 2, 3 at h0 + 4.
    up = await store.store_flags(
        alice.id, inbox.id, [1, 3, 4], FlagMode.ADD, frozenset({"$X"}), unchangedsince=h0 + 2
    )
    assert _uids(up.changed) == [1, 4] and list(up.modified) == [3]
    assert all(m.modseq == h + 1 for m in up.changed)
    (three,) = await store.fetch_info(alice.id, inbox.id, [(3, 3)])
    assert three.flags == frozenset() and three.modseq == h0 + 4
    up = await store.store_flags(
        alice.id, inbox.id, [1, 2], FlagMode.ADD, frozenset({"$Y"}), unchangedsince=0
    )
    assert list(up.modified) == [1, 2] and list(up.changed) == []
    # Unchanged flags but a newer modseq is still MODIFIED.
    up = await store.store_flags(
        alice.id, inbox.id, [1], FlagMode.ADD, frozenset({"$X"}), unchangedsince=h0
    )
    assert list(up.modified) == [1] and list(up.unchanged) == []

    await _raises(
        StoreError, store.store_flags(alice.id, inbox.id, [1], FlagMode.ADD, frozenset({"a b"}))
    )
    await _raises(NotFound, store.store_flags(bob.id, inbox.id, [1], FlagMode.ADD, work))
    (one,) = await store.fetch_info(alice.id, inbox.id, [(1, 1)])
    assert one.flags == frozenset({"\\Seen", "$X"})


@_check
async def check_copy_messages(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await store.create_mailbox(alice.id, "Work")
    await store.create_mailbox(bob.id, "BobOnly")
    await _fill(store, alice.id, [b"already there"], "Work")
    payloads = [sample_message(n, 100 * n) for n in range(1, 4)]
    for n, data in enumerate(payloads):
        await deliver_bytes(
            store,
            data,
            [LocalTarget(alice.id, flags=frozenset({"\\Seen"}) if n == 0 else frozenset())],
            internal_date=1_600_000_000.0 + n,
        )
    inbox0, work0 = await _box(store, alice.id), await _box(store, alice.id, "Work")
    used0 = (await store.get_quota(alice.id)).used
    res = await store.copy_messages(alice.id, inbox0.id, [3, 1, 99], "Work")
    assert res.uidvalidity == work0.uidvalidity
    assert list(res.pairs) == [(1, 2), (3, 3)] and res.expunge_modseq == 0
    work = await _box(store, alice.id, "Work")
    assert (work.uidnext, work.message_count) == (4, 3)
    assert work.highestmodseq == work0.highestmodseq + 1
    src = {m.uid: m for m in await store.list_messages(alice.id, "INBOX")}
    dst = {m.uid: m for m in await store.list_messages(alice.id, "Work")}
    for s_uid, d_uid in res.pairs:
        s, d = src[s_uid], dst[d_uid]
        assert (d.flags, d.internal_date, d.size, d.blob_id) == (
            s.flags,
            s.internal_date,
            s.size,
            s.blob_id,
        ), "flags and date kept, blob shared"
        assert d.modseq == work.highestmodseq and d.mailbox_id == work.id
        assert await store.read_message(alice.id, "Work", d_uid) == payloads[s_uid - 1]
    assert await _box(store, alice.id) == inbox0, "the source is untouched"
    assert (await store.get_quota(alice.id)).used == used0 + src[1].size + src[3].size
    # Into the same mailbox: new uids.
    res = await store.copy_messages(alice.id, inbox0.id, [2], "inbox")
    assert list(res.pairs) == [(2, 4)] and res.uidvalidity == inbox0.uidvalidity
    # Nothing to copy: nothing changes.
    res = await store.copy_messages(alice.id, inbox0.id, [99], "Work")
    assert list(res.pairs) == [] and await _box(store, alice.id, "Work") == work
    # The copy survives the expunge of its original (shared blob).
    await store.expunge(alice.id, inbox0.id, [1, 2, 3, 4], only_deleted=False)
    assert await store.read_message(alice.id, "Work", 2) == payloads[0]
    await _raises(NotFound, store.copy_messages(alice.id, inbox0.id, [1], "Nope"))
    await _raises(NotFound, store.copy_messages(alice.id, inbox0.id, [1], "BobOnly"))
    await _raises(NotFound, store.copy_messages(bob.id, work.id, [2], "BobOnly"))
    assert await store.list_messages(bob.id, "BobOnly") == []


@_check
async def check_move_messages(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    flags = [frozenset({"\\Flagged"}), frozenset(), frozenset({"$Later"})]
    payloads = [sample_message(n) for n in range(3)]
    await _fill(store, alice.id, payloads, flags=flags)
    inbox0, arch0 = await _box(store, alice.id), await _box(store, alice.id, "Archive")
    used0 = (await store.get_quota(alice.id)).used
    await _raises(NotFound, store.move_messages(bob.id, inbox0.id, [1], "Archive"))
    res = await store.move_messages(alice.id, inbox0.id, [1, 3], "Archive")
    assert list(res.pairs) == [(1, 1), (3, 2)] and res.uidvalidity == arch0.uidvalidity
    inbox = await _box(store, alice.id)
    assert res.expunge_modseq == inbox.highestmodseq == inbox0.highestmodseq + 1
    assert inbox.message_count == 1 and await store.list_uids(alice.id, inbox.id) == [2]
    ch = await store.changes_since(alice.id, inbox.id, inbox0.highestmodseq)
    assert list(ch.expunged) == [1, 3] and list(ch.changed) == []
    arch = await _box(store, alice.id, "Archive")
    assert arch.message_count == 2 and arch.highestmodseq == arch0.highestmodseq + 1
    moved = await store.list_messages(alice.id, "Archive")
    assert [m.flags for m in moved] == [flags[0], flags[2]]
    assert [await store.read_message(alice.id, "Archive", m.uid) for m in moved] == [
        payloads[0],
        payloads[2],
    ]
    assert (await store.get_quota(alice.id)).used == used0, "a move uses no space"
    res = await store.move_messages(alice.id, inbox.id, [1, 3], "Archive")
    assert list(res.pairs) == [] and await _box(store, alice.id) == inbox
    await _raises(NotFound, store.move_messages(alice.id, inbox.id, [2], "Nope"))
    assert await store.list_uids(alice.id, inbox.id) == [2]


@_check
async def check_expunge(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    dele = frozenset({"\\Deleted"})
    payloads = [sample_message(n, 50 * n) for n in range(1, 6)]
    await _fill(store, alice.id, payloads, flags=[frozenset(), dele, dele, frozenset(), dele])
    inbox0 = await _box(store, alice.id)
    used0 = (await store.get_quota(alice.id)).used
    await _raises(NotFound, store.expunge(bob.id, inbox0.id))
    assert await store.expunge(alice.id, inbox0.id, [4, 3]) == [3], "only \\Deleted ones"
    assert await store.expunge(alice.id, inbox0.id) == [2, 5]
    inbox = await _box(store, alice.id)
    assert inbox.highestmodseq == inbox0.highestmodseq + 2 and inbox.message_count == 2
    assert await store.expunge(alice.id, inbox0.id) == []
    assert (await _box(store, alice.id)).highestmodseq == inbox.highestmodseq
    assert await store.list_uids(alice.id, inbox.id) == [1, 4]
    ch = await store.changes_since(alice.id, inbox.id, inbox0.highestmodseq)
    assert list(ch.expunged) == [2, 3, 5] and list(ch.changed) == []
    ch = await store.changes_since(alice.id, inbox.id, inbox0.highestmodseq + 1)
    assert list(ch.expunged) == [2, 5]
    freed = sum(len(payloads[u - 1]) for u in (2, 3, 5))
    assert (await store.get_quota(alice.id)).used == used0 - freed
    # POP3: exactly the listed uids, flagged or not.
    (one,) = await store.fetch_info(alice.id, inbox.id, [(1, 1)])
    assert await store.expunge(alice.id, inbox.id, [1, 99], only_deleted=False) == [1]
    await _raises(NotFound, store.read_blob(one.blob_id))
    await _raises(NotFound, store.read_message(alice.id, "INBOX", 1))
    assert await store.read_message(alice.id, "INBOX", 4) == payloads[3]


@_check
async def check_changes_since(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await _fill(store, alice.id, [b"a", b"b", b"c"])
    inbox = await _box(store, alice.id)
    h = inbox.highestmodseq
    ch = await store.changes_since(alice.id, inbox.id, 0)
    assert _uids(ch.changed) == [1, 2, 3] and list(ch.expunged) == []
    assert (ch.highestmodseq, ch.uidnext) == (h, 4)
    assert list(ch.changed) == await store.list_messages(alice.id, "INBOX")
    await store.store_flags(alice.id, inbox.id, [2], FlagMode.ADD, frozenset({"\\Seen"}))
    await _fill(store, alice.id, [b"d"])
    await store.expunge(alice.id, inbox.id, [1], only_deleted=False)
    ch = await store.changes_since(alice.id, inbox.id, h)
    assert _uids(ch.changed) == [2, 4] and list(ch.expunged) == [1]
    assert ch.changed[0].flags == frozenset({"\\Seen"})
    assert (ch.highestmodseq, ch.uidnext) == (h + 3, 5)
    ch = await store.changes_since(alice.id, inbox.id, ch.highestmodseq)
    assert (list(ch.changed), list(ch.expunged)) == ([], [])
    await _raises(NotFound, store.changes_since(bob.id, inbox.id, 0))


@_check
async def check_quota(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    assert await store.get_quota(alice.id) == Quota(used=0, limit=0)
    await deliver_bytes(store, b"x" * 1000, [LocalTarget(alice.id), LocalTarget(bob.id)])
    await store.set_quota("ALICE@example.org", 2500)
    assert await store.get_quota(alice.id) == Quota(used=1000, limit=2500)
    assert await store.get_quota(bob.id) == Quota(used=1000, limit=0)
    append = [LocalTarget(alice.id, "Drafts", enforce_quota=True)]
    await deliver_bytes(store, b"y" * 1000, append)
    drafts0 = await _box(store, alice.id, "Drafts")
    await _raises(OverQuota, deliver_bytes(store, b"z" * 1000, append))
    assert await _box(store, alice.id, "Drafts") == drafts0, "nothing stored, no uid used"
    assert (await store.get_quota(alice.id)).used == 2000
    # Exactly up to the limit is allowed.
    await deliver_bytes(store, b"w" * 500, append)
    assert (await store.get_quota(alice.id)).used == 2500
    # SMTP delivery (checked at RCPT time instead) is not refused here.
    await deliver_bytes(store, b"s" * 100, [LocalTarget(alice.id)])
    assert (await store.get_quota(alice.id)).used == 2600
    inbox = await _box(store, alice.id)
    await _raises(OverQuota, store.copy_messages(alice.id, inbox.id, [1], "Archive"))
    assert (await _box(store, alice.id, "Archive")).message_count == 0
    await store.move_messages(alice.id, inbox.id, [1], "Archive")  # no new space
    await store.set_quota("alice@example.org", 0)  # unlimited
    await store.copy_messages(alice.id, inbox.id, [2], "Archive")
    assert (await store.get_quota(alice.id)).used == 2700
    await store.expunge(alice.id, inbox.id, [2], only_deleted=False)
    assert (await store.get_quota(alice.id)).used == 2600
    await store.delete_mailbox(alice.id, "Drafts")
    assert (await store.get_quota(alice.id)).used == 1100
    assert await store.get_quota(bob.id) == Quota(used=1000, limit=0)
    await _raises(NotFound, store.set_quota("nobody@example.org", 10))
    await _raises(NotFound, store.get_quota(alice.id + bob.id + 1000))
    await _raises(StoreError, store.set_quota("alice@example.org", -1))


@_check
async def check_over_quota_fails_only_that_delivery(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    await store.set_quota("alice@example.org", 1000)
    await deliver_bytes(store, b"x" * 900, [LocalTarget(alice.id)])
    results = await asyncio.gather(
        *(deliver_bytes(store, b"b%d" % n, [LocalTarget(bob.id)]) for n in range(5)),
        deliver_bytes(store, b"y" * 200, [LocalTarget(alice.id, enforce_quota=True)]),
        *(deliver_bytes(store, b"c%d" % n, [LocalTarget(bob.id)]) for n in range(5)),
        return_exceptions=True,
    )
    assert isinstance(results[5], OverQuota), results[5]
    assert all(isinstance(r, DeliveryReceipt) for i, r in enumerate(results) if i != 5)
    assert len(await store.list_messages(bob.id, "INBOX")) == 10
    assert len(await store.list_messages(alice.id, "INBOX")) == 1
    assert (await store.get_quota(alice.id)).used == 900


@_check
async def check_watch(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    inbox = await _box(store, alice.id)
    archive = await _box(store, alice.id, "Archive")
    work = await store.create_mailbox(alice.id, "Work")
    seen_a: list[int] = []
    seen_b: list[int] = []
    stop_a = store.watch(alice.id, seen_a.append)
    stop_b = store.watch(bob.id, seen_b.append)

    async def expect(mailbox_id: int, aw: Awaitable[object]) -> None:
        seen_a.clear()
        await aw
        await _eventually(lambda: mailbox_id in seen_a)

    await expect(inbox.id, deliver_bytes(store, b"1", [LocalTarget(alice.id)]))
    await expect(
        inbox.id, store.store_flags(alice.id, inbox.id, [1], FlagMode.ADD, frozenset({"$A"}))
    )
    await expect(archive.id, store.copy_messages(alice.id, inbox.id, [1], "Archive"))
    await expect(work.id, store.move_messages(alice.id, archive.id, [1], "Work"))
    assert archive.id in seen_a
    await expect(inbox.id, store.expunge(alice.id, inbox.id, [1], only_deleted=False))
    await expect(work.id, store.rename_mailbox(alice.id, "Work", "Play"))
    await expect(work.id, store.delete_mailbox(alice.id, "Play"))
    assert seen_b == [], "another account's changes are not told"
    b_inbox = await _box(store, bob.id)
    await deliver_bytes(store, b"2", [LocalTarget(bob.id)])
    await _eventually(lambda: b_inbox.id in seen_b)
    stop_a()
    stop_a()  # idempotent
    seen_a.clear()
    await deliver_bytes(store, b"3", [LocalTarget(alice.id)])
    await store.expunge(alice.id, inbox.id, [2], only_deleted=False)
    await asyncio.sleep(0.05)
    assert seen_a == [], "no callback after unregistering"
    stop_b()


@_check
async def check_imap_walled_off(store: MailStore) -> None:
    """Account B using A's mailbox ids, uids and names gets NotFound (or its own, empty
    data), from every call, and A's data is untouched."""
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    r = await deliver_bytes(store, b"alice's secret\r\n", [LocalTarget(alice.id)])
    await store.create_mailbox(alice.id, "Private")
    await store.subscribe(alice.id, "Private")
    a_inbox, a_private = await _box(store, alice.id), await _box(store, alice.id, "Private")
    b_inbox = await _box(store, bob.id)
    before = await store.list_messages(alice.id, "INBOX")
    (uid,) = [m.uid for m in before]
    for mb in (a_inbox, a_private):
        await _raises(NotFound, store.mark_recent(bob.id, mb.id))
        await _raises(NotFound, store.list_uids(bob.id, mb.id))
        await _raises(NotFound, store.fetch_info(bob.id, mb.id, [(1, UID_MAX)]))
        await _raises(
            NotFound,
            store.store_flags(bob.id, mb.id, [uid], FlagMode.ADD, frozenset({"\\Deleted"})),
        )
        await _raises(NotFound, store.copy_messages(bob.id, mb.id, [uid], "INBOX"))
        await _raises(NotFound, store.move_messages(bob.id, mb.id, [uid], "INBOX"))
        await _raises(NotFound, store.expunge(bob.id, mb.id))
        await _raises(NotFound, store.expunge(bob.id, mb.id, [uid], only_deleted=False))
        await _raises(NotFound, store.changes_since(bob.id, mb.id, 0))
    # Names resolve in the caller's own account only.
    await _raises(NotFound, store.mailbox_status(bob.id, "Private"))
    await _raises(NotFound, store.delete_mailbox(bob.id, "Private"))
    await _raises(NotFound, store.rename_mailbox(bob.id, "Private", "Mine"))
    await _raises(NotFound, store.copy_messages(bob.id, b_inbox.id, [uid], "Private"))
    await _raises(NotFound, store.copy_messages(alice.id, a_inbox.id, [uid], "Bobs"))
    b_status = await store.mailbox_status(bob.id, "INBOX")
    assert b_status.mailbox == b_inbox and b_status.size == 0
    assert await store.list_uids(bob.id, b_inbox.id) == []
    assert await store.fetch_info(bob.id, b_inbox.id, [(1, UID_MAX)]) == []
    assert list((await store.changes_since(bob.id, b_inbox.id, 0)).changed) == []
    await _raises(NotFound, store.unsubscribe(bob.id, "Private"))
    assert await store.list_subscriptions(bob.id) == []
    assert await store.get_quota(bob.id) == Quota(used=0, limit=0)
    # Alice's data is as it was.
    assert await store.list_messages(alice.id, "INBOX") == before
    assert await _box(store, alice.id) == a_inbox
    assert await _box(store, alice.id, "Private") == a_private
    assert await store.list_subscriptions(alice.id) == ["Private"]
    assert await store.read_message(alice.id, "INBOX", uid) == b"alice's secret\r\n"
    assert await store.read_blob(r.blob_id) == b"alice's secret\r\n"
    assert (await store.get_quota(alice.id)).used == len(b"alice's secret\r\n")


# ---- outbound queue -----------------------------------------------------------------


async def _queued(store: MailStore, *recipients: str, sender: str = "a@example.org") -> list[int]:
    rcpt = await deliver_bytes(store, b"Subject: out\r\n\r\nbody\r\n", [], recipients, sender)
    return list(rcpt.queued)


@_check
async def check_queue_claim_and_outcomes(store: MailStore) -> None:
    ids = await _queued(store, "b@remote.example", "c@remote.example", "d@remote.example")
    now = (await store.list_queue())[0].created + 1
    assert await store.next_queue_due() is not None
    got = await store.claim_queue("node/a", now, now + 60, 100)
    assert [e.id for e in got] == ids
    for e in got:
        assert e.state is QueueState.DELIVERING and e.owner == "node/a"
        assert e.attempts == 1 and e.lease_until == now + 60 and e.last_attempt == now
    assert await store.claim_queue("node/b", now, now + 60, 100) == []  # held
    # Only the holder may report outcomes.
    assert await store.update_queue("node/b", [QueueUpdate(ids[0], QueueState.DELIVERED)]) == []
    done = await store.update_queue(
        "node/a",
        [
            QueueUpdate(ids[0], QueueState.DELIVERED),
            QueueUpdate(ids[1], QueueState.DEFERRED, now + 300, "451 4.3.0 try later", True),
            QueueUpdate(ids[2], QueueState.FAILED, error="550 5.1.1 no such user"),
        ],
    )
    assert done == ids
    (left,) = await store.list_queue()
    assert left.id == ids[1] and left.state is QueueState.DEFERRED
    assert left.next_attempt == now + 300 and left.last_error == "451 4.3.0 try later"
    assert left.owner == "" and left.warned and left.attempts == 1
    assert await store.get_queue_entry(ids[1]) == left
    assert await store.get_queue_entry(ids[0]) is None
    assert await store.next_queue_due() == now + 300
    assert await store.claim_queue("node/a", now + 299, now + 400, 100) == []
    (again,) = await store.claim_queue("node/b", now + 300, now + 400, 100)
    assert again.id == ids[1] and again.attempts == 2 and again.warned
    await _raises(
        StoreError,
        store.update_queue("node/b", [QueueUpdate(ids[1], QueueState.DELIVERING)]),
    )
    # The last entry of a message going takes its blob with it.
    blob = again.blob_id
    assert await store.update_queue("node/b", [QueueUpdate(ids[1], QueueState.DELIVERED)])
    assert await store.list_queue() == []
    assert await store.next_queue_due() is None
    await _raises(NotFound, store.read_blob(blob))


@_check
async def check_queue_claim_limit_and_order(store: MailStore) -> None:
    first = await _queued(store, "b@remote.example", "c@remote.example")
    second = await _queued(store, "d@remote.example")
    now = max(e.created for e in await store.list_queue()) + 1
    got = await store.claim_queue("n/a", now, now + 60, 2)
    assert [e.id for e in got] == first
    (rest,) = await store.claim_queue("n/b", now, now + 60, 2)
    assert rest.id == second[0]
    assert await store.claim_queue("n/c", now, now + 60, 0) == []


@_check
async def check_queue_lease_expiry(store: MailStore) -> None:
    (qid,) = await _queued(store, "b@remote.example")
    now = (await store.list_queue())[0].created + 1
    (first,) = await store.claim_queue("n1/a", now, now + 10, 10)
    assert first.id == qid
    assert await store.next_queue_due() == now + 10
    assert await store.renew_queue_claims("n1/a", now + 20) == 1
    assert await store.claim_queue("n2/b", now + 15, now + 60, 10) == []
    (b,) = await store.claim_queue("n2/b", now + 20, now + 60, 10)  # lease ran out
    assert b.id == qid and b.owner == "n2/b" and b.attempts == 2
    # The first worker lost its claim: its outcome is ignored.
    assert await store.update_queue("n1/a", [QueueUpdate(qid, QueueState.DELIVERED)]) == []
    assert await store.renew_queue_claims("n1/a", now + 99) == 0
    assert (await store.list_queue())[0].owner == "n2/b"


@_check
async def check_queue_requeue_claims(store: MailStore) -> None:
    ids = await _queued(store, "b@remote.example", "c@remote.example", "d@remote.example")
    now = (await store.list_queue())[0].created + 1
    await store.claim_queue("node1/old", now, now + 3600, 1)
    await store.claim_queue("node1/new", now, now + 3600, 1)
    await store.claim_queue("node2/x", now, now + 3600, 1)
    assert await store.requeue_claims("node1/", keep="node1/new") == 1
    states = {e.id: (e.state, e.owner) for e in await store.list_queue()}
    assert states == {
        ids[0]: (QueueState.QUEUED, ""),
        ids[1]: (QueueState.DELIVERING, "node1/new"),
        ids[2]: (QueueState.DELIVERING, "node2/x"),
    }
    (again,) = await store.claim_queue("node1/new", now, now + 3600, 10)
    assert again.id == ids[0]


@_check
async def check_queue_concurrent_claims(store: MailStore) -> None:
    ids = await _queued(store, *(f"r{n}@remote.example" for n in range(12)))
    now = (await store.list_queue())[0].created + 1
    claims = await asyncio.gather(
        *(store.claim_queue(f"n/{w}", now, now + 60, 3) for w in range(6))
    )
    taken = [e.id for batch in claims for e in batch]
    assert sorted(taken) == ids  # every entry claimed exactly once


@_check
async def check_queue_retry_and_delete(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    rcpt = await deliver_bytes(
        store, b"shared\r\n", [LocalTarget(alice.id)], ["b@remote.example", "c@remote.example"]
    )
    b, c = rcpt.queued
    now = (await store.list_queue())[0].created + 1
    await store.claim_queue("n/a", now, now + 60, 1)
    await store.update_queue("n/a", [QueueUpdate(b, QueueState.DEFERRED, now + 3600, "timeout")])
    retried = await store.retry_queue_entry(b, now + 5)
    assert retried.state is QueueState.QUEUED and retried.next_attempt == now + 5
    await _raises(NotFound, store.retry_queue_entry(10_000, now))
    (held,) = await store.claim_queue("n/a", now, now + 60, 1)
    await _raises(StoreError, store.retry_queue_entry(held.id, now))
    await _raises(StoreError, store.delete_queue_entry(held.id))
    await store.update_queue("n/a", [QueueUpdate(held.id, QueueState.QUEUED, now)])
    gone = await store.delete_queue_entry(b)
    assert gone.id == b and gone.recipient == "b@remote.example"
    await _raises(NotFound, store.delete_queue_entry(b))
    await store.delete_queue_entry(c)
    assert await store.list_queue() == []
    # The local copy still references the blob: it stays.
    assert await store.read_blob(rcpt.blob_id) == b"shared\r\n"


@_check
async def check_quarantine_hold_release_delete(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    data = sample_message(7)
    held_ids = []
    for _ in range(2):
        receipt = await store.deliver(
            Delivery(
                spool=write_spool(store, data),
                sender="eve@remote.example",
                local=[LocalTarget(alice.id), LocalTarget(bob.id, "Junk")],
                outbound=["carol@remote.example"],
                hold=QuarantineHold("malware", "Eicar-Test-Signature FOUND"),
            )
        )
        assert receipt.held and list(receipt.stored) == [] and list(receipt.queued) == []
        held_ids.append(receipt.held)
    # Held means: no message in any mailbox, nothing queued.
    assert await store.list_messages(alice.id, "INBOX") == []
    assert await store.list_queue() == []
    listed = await store.list_quarantine()
    assert [q.id for q in listed] == held_ids
    first = await store.get_quarantined(held_ids[0])
    assert (first.check, first.reason, first.sender) == (
        "malware",
        "Eicar-Test-Signature FOUND",
        "eve@remote.example",
    )
    assert list(first.local_accounts) == [alice.id, bob.id]
    assert list(first.outbound) == ["carol@remote.example"]
    assert await store.read_blob(first.blob_id) == data

    released = await store.release_quarantined(held_ids[0])
    assert len(released.stored) == 2 and len(released.queued) == 1
    assert await store.read_message(alice.id, "INBOX", 1) == data
    assert len(await store.list_messages(bob.id, "Junk")) == 1
    assert [e.recipient for e in await store.list_queue()] == ["carol@remote.example"]
    await _raises(NotFound, store.release_quarantined(held_ids[0]))  # released once

    second = await store.get_quarantined(held_ids[1])
    await store.delete_quarantined(held_ids[1])
    await _raises(NotFound, store.get_quarantined(held_ids[1]))
    await _raises(NotFound, store.delete_quarantined(held_ids[1]))
    assert await store.list_quarantine() == []
    await _raises(NotFound, store.read_blob(second.blob_id))  # its own blob went with it
    assert await store.read_blob(first.blob_id) == data  # the released one is in use


# ---- Abuse limits (pipeline/abuse): sending history and greylisting ------------------

HOUR = 3600.0


@_check
async def check_sending_counts_per_account(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    t0 = 1_700_000_000.0
    assert await store.sending_counts(alice.id, t0 - 86400) == SendingCounts(0, 0)
    first = await store.record_sending(alice.id, t0, ["X@Remote.example", "y@remote.example"])
    assert first == 2
    # The same recipients again (any case) are not new; a duplicate counts once.
    again = await store.record_sending(
        alice.id, t0 + 60, ["x@remote.example", "z@remote.example", "Z@remote.example"]
    )
    assert again == 1
    assert await store.sending_counts(alice.id, t0 - 86400) == SendingCounts(2, 3)
    # Isolation: bob has sent nothing and knows nobody, even alice's recipients.
    assert await store.sending_counts(bob.id, t0 - 86400) == SendingCounts(0, 0)
    assert await store.new_recipients(bob.id, ["x@remote.example"]) == {"x@remote.example"}
    assert await store.record_sending(bob.id, t0, ["x@remote.example"]) == 1
    assert await store.sending_counts(alice.id, t0 - 86400) == SendingCounts(2, 3)
    assert await store.new_recipients(alice.id, ["X@REMOTE.example", "w@remote.example"]) == {
        "w@remote.example"
    }
    assert await store.new_recipients(alice.id, []) == set()
    # Counts are per period: a day later the window is empty, the recipients known.
    later = t0 + 2 * 86400
    assert await store.sending_counts(alice.id, later - 86400) == SendingCounts(0, 0)
    assert await store.record_sending(alice.id, later, ["x@remote.example"]) == 0
    assert await store.sending_counts(alice.id, later - 86400) == SendingCounts(1, 0)
    await _raises(NotFound, store.record_sending(999_999, t0, ["x@remote.example"]))
    too_many = [f"r{i}@remote.example" for i in range(MAX_SENDING_RECIPIENTS + 1)]
    await _raises(StoreError, store.new_recipients(alice.id, too_many))
    await _raises(StoreError, store.record_sending(alice.id, t0, too_many))


@_check
async def check_sending_history_goes_with_account(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    await store.record_sending(alice.id, 1_700_000_000.0, ["x@remote.example"])
    await store.delete_account("alice@example.org")
    (again,) = await _setup(store, "alice@example.org")
    assert await store.sending_counts(again.id, 0.0) == SendingCounts(0, 0)
    assert await store.new_recipients(again.id, ["x@remote.example"]) == {"x@remote.example"}


@_check
async def check_greylist_entries(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    t0 = 1_700_000_000.0
    net = "192.0.2.0/24"
    assert await store.greylist_entry(net, "s@remote.example", "alice@example.org") is None
    entry = GreylistEntry(net, "s@remote.example", "alice@example.org", alice.id, t0, t0, False)
    await store.save_greylist_entry(entry)
    assert await store.greylist_entry(net, "s@remote.example", "alice@example.org") == entry
    # The triplet is the key: another network, sender or recipient is another entry.
    other_net = "198.51.100.0/24"
    assert await store.greylist_entry(other_net, "s@remote.example", entry.recipient) is None
    assert await store.greylist_entry(net, "t@remote.example", entry.recipient) is None
    assert await store.greylist_entry(net, "s@remote.example", "bob@example.org") is None
    passed = GreylistEntry(net, entry.sender, entry.recipient, alice.id, t0, t0 + 90, True)
    await store.save_greylist_entry(passed)  # replaces
    assert await store.greylist_entry(net, entry.sender, entry.recipient) == passed
    old = GreylistEntry(net, "old@remote.example", "bob@example.org", bob.id, t0, t0, False)
    await store.save_greylist_entry(old)
    await _raises(
        NotFound,
        store.save_greylist_entry(
            GreylistEntry(net, "s@remote.example", "x@example.org", 999_999, t0, t0, False)
        ),
    )
    # Unpassed entries expire by first_seen, passed ones by last_seen.
    assert await store.prune_greylist(t0 + 1, t0 + 1) == 1
    assert await store.greylist_entry(net, "old@remote.example", "bob@example.org") is None
    assert await store.greylist_entry(net, entry.sender, entry.recipient) == passed
    assert await store.prune_greylist(t0 + 1, t0 + 91) == 1
    assert await store.greylist_entry(net, entry.sender, entry.recipient) is None
    # Deleting the account forgets its triplets.
    await store.save_greylist_entry(entry)
    await store.delete_account("alice@example.org")
    assert await store.greylist_entry(net, entry.sender, entry.recipient) is None


# ---- Bayes spam filter (spam/bayes.py) --------------------------------------------------

_INT64_EDGES = (-(1 << 63), (1 << 63) - 1, 0, -1)


@_check
async def check_bayes_counts_round_trip(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    empty = await store.bayes_counts(alice.id, [1, 2, 3])
    assert (empty.spam_messages, empty.ham_messages, empty.tokens) == (0, 0, {})
    assert await store.bayes_train(alice.id, "m1", [1, 2, 3, *_INT64_EDGES], True)
    assert await store.bayes_train(alice.id, "m2", [2, 3, 3, 3], True)  # duplicates count once
    assert await store.bayes_train(alice.id, "m3", [3, 4], False)
    counts = await store.bayes_counts(alice.id, [1, 2, 3, 4, 5, *_INT64_EDGES])
    assert (counts.spam_messages, counts.ham_messages) == (2, 1)
    assert counts.tokens == {
        1: (1, 0),
        2: (2, 0),
        3: (2, 1),
        4: (0, 1),
        **dict.fromkeys(_INT64_EDGES, (1, 0)),
    }
    # More tokens than one IN list holds: every one is found.
    many = list(range(10_000, 10_000 + MAX_BAYES_TOKENS))
    assert await store.bayes_train(alice.id, "big", many, False)
    counts = await store.bayes_counts(alice.id, many)
    assert counts.ham_messages == 2 and len(counts.tokens) == MAX_BAYES_TOKENS
    assert set(counts.tokens.values()) == {(0, 1)}
    await _raises(StoreError, store.bayes_train(alice.id, "m4", [*many, 1], True))
    await _raises(StoreError, store.bayes_counts(alice.id, [*many, 1]))
    await _raises(StoreError, store.bayes_train(alice.id, "m4", [1 << 63], True))
    await _raises(StoreError, store.bayes_train(alice.id, "", [1], True))
    await _raises(NotFound, store.bayes_train(alice.id + 1000, "m1", [1], True))


@_check
async def check_bayes_same_class_retrain_is_a_no_op(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    assert await store.bayes_train(alice.id, "m1", [1, 2], True)
    assert not await store.bayes_train(alice.id, "m1", [1, 2], True)
    assert not await store.bayes_train(alice.id, "m1", [1, 2, 3], True)
    counts = await store.bayes_counts(alice.id, [1, 2, 3])
    assert (counts.spam_messages, counts.ham_messages) == (1, 0)
    assert counts.tokens == {1: (1, 0), 2: (1, 0)}


@_check
async def check_bayes_retrain_moves_class(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    assert await store.bayes_train(alice.id, "m1", [1, 2], True)
    assert await store.bayes_train(alice.id, "m2", [2], True)
    assert await store.bayes_train(alice.id, "m1", [1, 2], False)
    counts = await store.bayes_counts(alice.id, [1, 2])
    assert (counts.spam_messages, counts.ham_messages) == (1, 1)
    assert counts.tokens == {1: (0, 1), 2: (1, 1)}
    # What was added is what is taken back, whatever tokens the move brings.
    assert await store.bayes_train(alice.id, "m1", [7], True)
    counts = await store.bayes_counts(alice.id, [1, 2, 7])
    assert (counts.spam_messages, counts.ham_messages) == (2, 0)
    assert counts.tokens == {2: (1, 0), 7: (1, 0)}


@_check
async def check_bayes_forget(store: MailStore) -> None:
    (alice,) = await _setup(store, "alice@example.org")
    assert not await store.bayes_train(alice.id, "m1", [], None)  # never trained
    assert await store.bayes_train(alice.id, "m1", [1, 2], True)
    assert await store.bayes_train(alice.id, "m2", [2, 3], False)
    assert await store.bayes_train(alice.id, "m1", [], None)
    assert not await store.bayes_train(alice.id, "m1", [], None)
    counts = await store.bayes_counts(alice.id, [1, 2, 3])
    assert (counts.spam_messages, counts.ham_messages) == (0, 1)
    assert counts.tokens == {2: (0, 1), 3: (0, 1)}
    assert await store.bayes_train(alice.id, "m2", [9], None)  # tokens ignored
    counts = await store.bayes_counts(alice.id, [1, 2, 3, 9])
    assert (counts.spam_messages, counts.ham_messages, counts.tokens) == (0, 0, {})
    # Trained again after forgetting: counted again.
    assert await store.bayes_train(alice.id, "m1", [1], True)
    assert (await store.bayes_counts(alice.id, [1])).tokens == {1: (1, 0)}


@_check
async def check_bayes_walled_off(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    assert await store.bayes_train(alice.id, "shared-key", [1, 2], True)
    bob_view = await store.bayes_counts(bob.id, [1, 2])
    assert (bob_view.spam_messages, bob_view.ham_messages, bob_view.tokens) == (0, 0, {})
    # The same key is a different message for each account.
    assert await store.bayes_train(bob.id, "shared-key", [2, 3], False)
    assert not await store.bayes_train(bob.id, "shared-key", [2, 3], False)
    assert not await store.bayes_train(bob.id, "other", [], None)
    alice_view = await store.bayes_counts(alice.id, [1, 2, 3])
    assert (alice_view.spam_messages, alice_view.ham_messages) == (1, 0)
    assert alice_view.tokens == {1: (1, 0), 2: (1, 0)}
    bob_view = await store.bayes_counts(bob.id, [1, 2, 3])
    assert (bob_view.spam_messages, bob_view.ham_messages) == (0, 1)
    assert bob_view.tokens == {2: (0, 1), 3: (0, 1)}
    assert await store.bayes_train(bob.id, "shared-key", [], None)
    assert (await store.bayes_counts(alice.id, [1, 2])).tokens == {1: (1, 0), 2: (1, 0)}


@_check
async def check_bayes_delete_account(store: MailStore) -> None:
    alice, bob = await _setup(store, "alice@example.org", "bob@example.org")
    assert await store.bayes_train(alice.id, "m1", [1, 2], True)
    assert await store.bayes_train(alice.id, "m2", [2], False)
    assert await store.bayes_train(bob.id, "m1", [1], True)
    await store.delete_account("alice@example.org")
    gone = await store.bayes_counts(alice.id, [1, 2])
    assert (gone.spam_messages, gone.ham_messages, gone.tokens) == (0, 0, {})
    await _raises(NotFound, store.bayes_train(alice.id, "m3", [1], True))
    kept = await store.bayes_counts(bob.id, [1, 2])
    assert (kept.spam_messages, kept.ham_messages, kept.tokens) == (1, 0, {1: (1, 0)})
    # A new account (even one that got the old id) starts from nothing.
    (again,) = await _setup(store, "alice@example.org")
    fresh = await store.bayes_counts(again.id, [1, 2])
    assert (fresh.spam_messages, fresh.ham_messages, fresh.tokens) == (0, 0, {})
    assert await store.bayes_train(again.id, "m1", [1], True)
