"""The spam check (pipeline/spam.py): how rule hits, blocklists, the authentication
verdicts, each recipient's Bayes filter and rspamd add up to a decision per recipient;
the X-Spam fields; outbound mail; scorers that fail."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from mailward.logs import EventLog
from mailward.pipeline.content import MessageView
from mailward.pipeline.spam import SPAM_REFUSED, SpamCheck
from mailward.pipeline.types import (
    CheckResult,
    Decision,
    Envelope,
    LocalRecipient,
    RemoteRecipient,
    SessionInfo,
)
from mailward.scan.rspamd import RspamdUnavailable
from mailward.spam.blocklists import Blocklists, Zone
from mailward.spam.rules import GTUBE
from mailward.testing.fake_dns import FakeResolver

PEER = "81.2.69.20"  # a global address (blocklists and rDNS are asked about it)
ALICE, BOB = 1, 2


def message(body: str = "Hello Bob,\nsee you at the meeting on Tuesday.\n") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = "Carol <carol@sender.test>"
    msg["To"] = "alice@example.test, bob@example.test"
    msg["Subject"] = "Tuesday"
    msg["Date"] = formatdate(time.time())
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content(body)
    return msg.as_bytes()


def section(data: bytes) -> bytes:
    return data[: data.index(b"\r\n\r\n") + 4]


def view(
    data: bytes,
    *,
    listener: str = "mx",
    account: int | None = None,
    peer: str = PEER,
    helo: str = "mail.sender.test",
    recipients: Sequence[int] = (ALICE, BOB),
) -> MessageView:
    session = SessionInfo(listener, peer, 40000, "S1", helo=helo, account_id=account)
    envelope = Envelope("carol@sender.test")
    for account_id in recipients:
        address = {ALICE: "alice@example.test", BOB: "bob@example.test"}[account_id]
        envelope.recipients.append(LocalRecipient(address, account_id, address))
    if not recipients:
        envelope.recipients.append(RemoteRecipient("dave@remote.test"))
    return MessageView(session, envelope, section(data), data, Path("/nonexistent"), 0, len(data))


def healthy_dns() -> FakeResolver:
    dns = FakeResolver()
    dns.add_ptr(PEER, "mail.sender.test.")
    dns.add("mail.sender.test", "A", PEER)
    return dns


class FakeBayes:
    def __init__(self, probabilities: dict[int, float | None]) -> None:
        self.probabilities = probabilities
        self.asked: list[tuple[int, int]] = []

    async def classify(self, account_id: int, tokens: Sequence[int]) -> float | None:
        self.asked.append((account_id, len(tokens)))
        return self.probabilities.get(account_id)


@dataclass
class FakeRspamdResult:
    action: str
    score: float


class FakeRspamd:
    def __init__(self, score: float = 0.0, error: Exception | None = None) -> None:
        self.score = score
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def check(self, message: bytes, **fields: Any) -> FakeRspamdResult:
        self.calls.append(fields)
        if self.error is not None:
            raise self.error
        return FakeRspamdResult("add header" if self.score >= 6 else "no action", self.score)


class Harness:
    def __init__(self, dns: FakeResolver | None = None, **options: Any) -> None:
        self.stream = io.StringIO()
        self.dns = dns or healthy_dns()
        dnsbl = options.pop("dnsbl", [])
        self.check = SpamCheck(
            resolver=self.dns,
            log=EventLog(self.stream, "debug"),
            hostname="mx.example.test",
            blocklists=Blocklists(self.dns, dnsbl=dnsbl, rhsbl=[], timeout=2.0),
            tokenize=lambda data: [len(data), 1, 2, 3],
            **options,
        )

    def run(self, v: MessageView) -> CheckResult:
        return asyncio.run(self.check.check(v))

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def fields(result: CheckResult) -> dict[str, str]:
    return dict(result.headers)


def test_clean_mail_is_accepted_with_a_no_status() -> None:
    result = Harness().run(view(message()))
    assert result.decision == Decision.ACCEPT and result.junk == frozenset()
    f = fields(result)
    assert f["X-Spam-Score"] == "0.0"
    assert f["X-Spam-Status"].startswith("No, score=0.0 required=5.0 tests=none")
    assert "X-Spam-Flag" not in f


def test_gtube_is_refused() -> None:
    h = Harness()
    result = h.run(view(message("hello " + GTUBE.decode() + "\n")))
    assert result.decision == Decision.REJECT and result.reply == SPAM_REFUSED
    assert "GTUBE" in result.reason
    (event,) = [e for e in h.events() if e["event"] == "spam.scored"]
    assert event["action"] == "reject" and "GTUBE" in event["tests"]


def test_blocklisted_client_and_no_rdns_go_to_junk() -> None:
    dns = FakeResolver()  # no PTR for the peer
    dns.add("20.69.2.81.bl.test", "A", "127.0.0.2")
    h = Harness(dns, dnsbl=[Zone("bl.test", 5.0)])
    result = h.run(view(message()))
    assert result.decision == Decision.ACCEPT
    assert result.junk == {ALICE, BOB}
    f = fields(result)
    assert f["X-Spam-Flag"] == "YES"
    assert f["X-Spam-Score"] == "6.0"
    assert "RBL_BL_TEST=5.0" in f["X-Spam-Status"] and "RDNS_NONE=1.0" in f["X-Spam-Status"]
    assert f["X-Spam-Status"].startswith("Yes, score=6.0 required=5.0")


def test_bayes_decides_per_recipient() -> None:
    bayes = FakeBayes({ALICE: 0.999, BOB: 0.01})
    h = Harness(bayes=bayes)
    result = h.run(view(message()))
    assert result.junk == {ALICE}  # Alice's filter says spam, Bob's says ham
    assert "BAYES_99=5.0" in fields(result)["X-Spam-Status"]  # the highest is shown
    assert sorted(a for a, _ in bayes.asked) == [ALICE, BOB]


def test_an_untrained_filter_adds_nothing() -> None:
    result = Harness(bayes=FakeBayes({})).run(view(message()))
    assert result.junk == frozenset() and "BAYES" not in fields(result)["X-Spam-Status"]


def test_refused_only_when_every_recipient_is_over_the_reject_score() -> None:
    bayes = FakeBayes({ALICE: 0.999, BOB: 0.0})
    h = Harness(bayes=bayes, rspamd=FakeRspamd(score=11.0), reject_score=15.0)
    result = h.run(view(message()))
    # Alice: 11 + 5 = 16 (over), Bob: 11 - 2 = 9: delivered, to both Junk folders.
    assert result.decision == Decision.ACCEPT and result.junk == {ALICE, BOB}
    bayes.probabilities[BOB] = 0.999
    assert h.run(view(message())).decision == Decision.REJECT


def test_reject_score_zero_never_refuses() -> None:
    result = Harness(reject_score=0.0).run(view(message("x " + GTUBE.decode())))
    assert result.decision == Decision.ACCEPT and result.junk == {ALICE, BOB}


def test_rspamd_gets_the_envelope_and_its_score_counts() -> None:
    rspamd = FakeRspamd(score=7.5)
    h = Harness(rspamd=rspamd)
    result = h.run(view(message()))
    assert "RSPAMD=7.5" in fields(result)["X-Spam-Status"] and result.junk == {ALICE, BOB}
    (call,) = rspamd.calls
    assert call["ip"] == PEER and call["helo"] == "mail.sender.test"
    assert call["sender"] == "carol@sender.test"
    assert call["recipients"] == ["alice@example.test", "bob@example.test"]


def test_failing_scorers_add_nothing_and_are_logged() -> None:
    dns = healthy_dns()
    dns.fail("20.69.2.81.bl.test", "A")
    h = Harness(
        dns, dnsbl=[Zone("bl.test", 5.0)], rspamd=FakeRspamd(error=RspamdUnavailable("down"))
    )
    result = h.run(view(message()))
    assert result.decision == Decision.ACCEPT and fields(result)["X-Spam-Score"] == "0.0"
    names = {e["event"] for e in h.events()}
    assert {"spam.blocklist_failed", "spam.rspamd_failed"} <= names


def test_private_clients_are_not_asked_about_in_dns() -> None:
    dns = FakeResolver()
    h = Harness(dns, dnsbl=[Zone("bl.test", 5.0)])
    h.run(view(message(), peer="10.1.2.3"))
    assert dns.queries == []


def test_mail_our_users_send_is_only_checked_for_gtube_and_rspamd() -> None:
    h = Harness(rspamd=FakeRspamd(score=2.0))
    ok = h.run(view(message(), listener="submission", account=ALICE, recipients=()))
    assert ok.decision == Decision.ACCEPT and ok.headers == ()  # nothing added outbound
    bad = h.run(
        view(message("x " + GTUBE.decode()), listener="submission", account=ALICE, recipients=())
    )
    assert bad.decision == Decision.REJECT
    assert any(e["event"] == "spam.outbound_refused" for e in h.events())


def test_the_log_never_carries_the_body() -> None:
    h = Harness()
    h.run(view(message("the secret word is xylophone\n")))
    assert "xylophone" not in h.stream.getvalue()
