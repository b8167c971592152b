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
    Account,
    AlreadyExists,
    Delivery,
    DeliveryReceipt,
    LocalTarget,
    MailStore,
    NotFound,
    QueueState,
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
