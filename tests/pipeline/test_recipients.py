"""No open relay: the recipient policy over a real store, address tricks by name."""

import asyncio
from pathlib import Path

import pytest

from mailward.app import open_store
from mailward.pipeline.recipients import RecipientPolicy
from mailward.pipeline.types import Envelope, LocalRecipient, RemoteRecipient, SessionInfo
from mailward.proto.address import parse_path
from mailward.proto.smtp_events import RcptTo
from mailward.store.api import Delivery, LocalTarget


def rcpt(text: str) -> RcptTo:
    p = parse_path(text, utf8=False)
    return RcptTo(
        forward_path=p.mailbox,
        local_part=p.local_part,
        domain=p.domain,
        quoted_local=p.quoted_local,
        params={},
        had_source_route=bool(p.source_route),
    )


def decide(tmp_path: Path, address: str, *, authenticated: bool = False):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        store = await open_store(tmp_path)
        try:
            await store.add_domain("example.test")
            alice = await store.add_account("alice@example.test", "x")
            await store.add_alias("sales@example.test", "alice@example.test")
            session = SessionInfo("mx", "192.0.2.9", 4000, "t")
            if authenticated:
                session.listener, session.account_id = "submission", alice.id
            return await RecipientPolicy(store).resolve(
                session, Envelope("x@y.test"), rcpt(address)
            )
        finally:
            await store.close()

    return asyncio.run(main())


RELAY_TRICKS = {
    "foreign": "<user@foreign.test>",
    "percent_hack": "<alice%foreign.test@example.test>",
    "source_route": "<@example.test:user@foreign.test>",
    "quoted_at": '<"user@foreign.test"@example.test>',
    "bang_path": "<foreign.test!user@example.test>",
    "ip_literal": "<user@[127.0.0.1]>",
    "upper_case_foreign": "<ALICE@FOREIGN.TEST>",
    "local_looking_subdomain": "<alice@example.test.foreign.test>",
}


@pytest.mark.parametrize("address", RELAY_TRICKS.values(), ids=RELAY_TRICKS.keys())
def test_relay_tricks_are_refused_unauthenticated(tmp_path: Path, address: str) -> None:
    result, recipient = decide(tmp_path, address)
    assert recipient is None
    assert result.reply is not None and result.reply.code in (550, 554)
    assert result.reply.enhanced in ("5.7.1", "5.1.1")


@pytest.mark.parametrize(
    "address",
    ["<alice@example.test>", "<ALICE@EXAMPLE.TEST>", "<Sales@Example.Test>"],
)
def test_local_recipients_and_aliases_resolve_to_alice(tmp_path: Path, address: str) -> None:
    _result, recipient = decide(tmp_path, address)
    assert (
        isinstance(recipient, LocalRecipient) and recipient.account_address == "alice@example.test"
    )


def test_unknown_local_user_gets_550_511(tmp_path: Path) -> None:
    result, recipient = decide(tmp_path, "<nobody@example.test>")
    assert recipient is None and result.reply is not None
    assert (result.reply.code, result.reply.enhanced) == (550, "5.1.1")


def test_authenticated_user_may_send_to_foreign(tmp_path: Path) -> None:
    _result, recipient = decide(tmp_path, "<bob@foreign.test>", authenticated=True)
    assert isinstance(recipient, RemoteRecipient) and recipient.address == "bob@foreign.test"


def test_even_authenticated_users_cannot_use_routing_forms(tmp_path: Path) -> None:
    result, recipient = decide(tmp_path, "<bob%other.test@foreign.test>", authenticated=True)
    assert recipient is None and result.reply is not None and result.reply.code == 550


def test_recipient_over_quota_gets_452_4_2_2(tmp_path: Path) -> None:
    async def main():  # type: ignore[no-untyped-def]
        store = await open_store(tmp_path)
        try:
            await store.add_domain("example.test")
            alice = await store.add_account("alice@example.test", "x")
            message = b"Subject: filler\r\n\r\n" + b"x" * 500 + b"\r\n"
            await store.deliver(
                Delivery(store.new_spool(), "", [LocalTarget(alice.id)], [], content=message)
            )
            policy = RecipientPolicy(store)
            session = SessionInfo("mx", "192.0.2.9", 4000, "t")
            await store.set_quota("alice@example.test", 10_000)
            roomy = await policy.resolve(
                session, Envelope("x@y.test"), rcpt("<alice@example.test>")
            )
            await store.set_quota("alice@example.test", 100)
            full = await policy.resolve(session, Envelope("x@y.test"), rcpt("<alice@example.test>"))
            return roomy, full
        finally:
            await store.close()

    (roomy, _), (full, recipient) = asyncio.run(main())
    assert not roomy.refused
    assert full.refused and recipient is None
    assert full.reply is not None and (full.reply.code, full.reply.enhanced) == (452, "4.2.2")
