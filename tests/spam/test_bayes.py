"""spam.bayes: Robinson / Fisher combining, per-user training over the real store, and
how well it separates a generated corpus (ham about meetings, invoices and family;
spam about pills, loans and crypto prizes), trained on 30 + 30, tested on 10 + 10."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from mailward.spam.bayes import (
    MAX_CLUES,
    BayesFilter,
    chi2q,
    combine,
    token_probability,
)
from mailward.spam.tokens import message_tokens
from mailward.store.api import MailStore
from mailward.store.sqlite import SqliteStore

T = TypeVar("T")


def vocabulary(text: str) -> list[str]:
    return text.split()


FILLER = vocabulary(
    "the and you your please today now information with this that for our time here more "
    "about will have just what when also from they some there which would could been into "
    "week thanks regards hello hope well next know need"
)
HAM_TOPICS = {
    "meeting": vocabulary(
        "meeting agenda project milestone deadline review sprint schedule minutes team "
        "roadmap release design proposal quarterly status update slides conference room "
        "calendar notes feedback priorities tasks action items stakeholders budget"
    ),
    "invoice": vocabulary(
        "invoice payment due account order purchase receipt amount vat supplier attached "
        "accounting reference balance remittance statement terms net transfer reconcile "
        "ledger bookkeeping quote delivery"
    ),
    "family": vocabulary(
        "mum dad kids dinner weekend birthday party grandma holiday garden school photos "
        "visit cake recipe trip soccer practice vacation cousin picnic lunch sunday "
        "homework bedtime"
    ),
}
SPAM_TOPICS = {
    "pills": vocabulary(
        "viagra cialis pharmacy pills prescription discount meds generic enlargement cheap "
        "order online doctor shipping discreet overnight tablets dosage refill canadian"
    ),
    "loans": vocabulary(
        "loan approved credit mortgage refinance rates lowest cash instant guaranteed debt "
        "lender apply score fast payment unsecured payday eligible consolidate"
    ),
    "crypto": vocabulary(
        "bitcoin crypto winner prize claim wallet congratulations lottery reward million "
        "investment profit jackpot selected exclusive bonus token airdrop guaranteed returns"
    ),
}
HAM_DOMAINS = ("example.org", "partner.example", "family.example.net", "mail.example.com")
SPAM_TLDS = ("top", "biz", "info", "click", "example")


def _words(rng: random.Random, topic: list[str], count: int) -> str:
    return " ".join(
        rng.choice(topic) if rng.random() < 0.45 else rng.choice(FILLER) for _ in range(count)
    )


def ham_message(rng: random.Random, n: int) -> bytes:
    topic = HAM_TOPICS[rng.choice(sorted(HAM_TOPICS))]
    domain = rng.choice(HAM_DOMAINS)
    sender = rng.choice(["anna", "ben", "chris", "dana", "eli", "mum", "dad"])
    subject = " ".join(rng.choice(topic) for _ in range(rng.randint(2, 5))).capitalize()
    body = "\r\n".join(_words(rng, topic, rng.randint(8, 14)) for _ in range(rng.randint(3, 8)))
    return (
        f"From: {sender.title()} <{sender}@{domain}>\r\n"
        f"To: alice@example.org\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, {n % 28 + 1} Nov 2026 10:00:00 +0100\r\n"
        f"Message-ID: <h{n}@{domain}>\r\n"
        f"Received: from mx.{domain} by mail.example.org\r\n"
        f"User-Agent: Thunderbird 128.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hi Alice,\r\n\r\n{body}\r\n\r\n{sender.title()}\r\n"
    ).encode()


def spam_message(rng: random.Random, n: int) -> bytes:
    topic = SPAM_TOPICS[rng.choice(sorted(SPAM_TOPICS))]
    label = "".join(rng.choice("bcdfghklmnprstvz") for _ in range(rng.randint(5, 9)))
    domain = f"{label}.{rng.choice(SPAM_TLDS)}"
    subject = " ".join(rng.choice(topic) for _ in range(rng.randint(2, 5))).upper()
    body = "<br>".join(_words(rng, topic, rng.randint(8, 14)) for _ in range(rng.randint(2, 6)))
    link = f"https://www.{domain}/go?id={rng.randint(1000, 99999)}"
    if rng.random() < 0.5:
        content = (
            f'Content-Type: text/html\r\n\r\n<html><p>{body}</p><a href="{link}">CLICK</a></html>'
        )
    else:
        content = f"Content-Type: text/plain\r\n\r\n{body}\r\nVisit {link} now!!!"
    return (
        f"From: Special Offers <promo{n}@{domain}>\r\n"
        f"Reply-To: claims@{label}-{n}.example\r\n"
        f"To: undisclosed-recipients:;\r\n"
        f"Subject: {subject} !!!\r\n"
        f"Received: from unknown by mail.example.org\r\n"
        f"Received: from bulk by unknown\r\n"
        f"X-Mailer: MassMailer {rng.randint(1, 9)}.0\r\n"
        f"{content}\r\n"
    ).encode()


def corpus(seed: int = 4242) -> tuple[list[bytes], list[bytes]]:
    rng = random.Random(seed)
    return [ham_message(rng, n) for n in range(40)], [spam_message(rng, n) for n in range(40)]


def run(use: Callable[[MailStore], Awaitable[T]], tmp_path: Path) -> T:
    async def go() -> T:
        store = await SqliteStore.open(tmp_path / "data")
        try:
            return await use(store)
        finally:
            await store.close()

    return asyncio.run(go())


async def accounts(store: MailStore, *names: str) -> list[int]:
    await store.add_domain("example.org")
    return [(await store.add_account(f"{n}@example.org", "x")).id for n in names]


async def train_corpus(
    bayes: BayesFilter, account_id: int, ham: list[bytes], spam: list[bytes]
) -> None:
    for i, message in enumerate(ham):
        await bayes.train(account_id, f"ham-{i}", message_tokens(message), spam=False)
    for i, message in enumerate(spam):
        await bayes.train(account_id, f"spam-{i}", message_tokens(message), spam=True)


# ---------------------------------------------------------------------------- the maths


def test_chi2q() -> None:
    assert chi2q(0.0, 2) == 1.0
    for x in (0.5, 3.0, 10.0):
        assert math.isclose(chi2q(x, 2), math.exp(-x / 2))
    # 4 degrees of freedom: e^-m (1 + m), m = x / 2.
    assert math.isclose(chi2q(6.0, 4), math.exp(-3.0) * 4.0)
    assert chi2q(10_000.0, 300) == 0.0  # deep in the tail, no overflow
    assert 0.0 <= chi2q(300.0, 300) <= 1.0


def test_combine() -> None:
    assert combine([]) == 0.5
    assert combine([0.99] * 20) > 0.99
    assert combine([0.01] * 20) < 0.01
    assert math.isclose(combine([0.99, 0.01]), 0.5, abs_tol=1e-9)  # conflicting: unsure
    rng = random.Random(1)
    for _ in range(100):
        ps = [rng.uniform(0.01, 0.99) for _ in range(rng.randint(1, MAX_CLUES))]
        value = combine(ps)
        assert 0.0 <= value <= 1.0
        assert math.isclose(value + combine([1 - p for p in ps]), 1.0, abs_tol=1e-9)


def test_token_probability() -> None:
    # Robinson: a token seen once leans only a little; seen often, it leans hard.
    once = token_probability(1, 0, 10, 10)
    often = token_probability(10, 0, 10, 10)
    assert 0.5 < once < often < 1.0
    assert math.isclose(token_probability(5, 5, 10, 10), 0.5)
    # Ratios, not raw counts: 5 of 50 spam vs 5 of 10 ham is a ham clue.
    assert token_probability(5, 5, 50, 10) < 0.5
    # Counts larger than the totals (a damaged store) are clipped, never > 1.
    assert token_probability(99, 0, 10, 10) < 1.0


# ---------------------------------------------------------------------------- the filter


def test_untrained_and_under_trained_give_no_verdict(tmp_path: Path) -> None:
    ham, spam = corpus()

    async def use(store: MailStore) -> None:
        (alice,) = await accounts(store, "alice")
        bayes = BayesFilter(store, min_trained=10)
        assert await bayes.classify(alice, message_tokens(spam[0])) is None
        assert await bayes.classify(alice + 99, message_tokens(spam[0])) is None
        await train_corpus(bayes, alice, ham[:10], spam[:9])
        assert await bayes.trained(alice) == (9, 10)
        assert not await bayes.active(alice)
        assert await bayes.classify(alice, message_tokens(spam[30])) is None
        await bayes.train(alice, "spam-9", message_tokens(spam[9]), spam=True)
        assert await bayes.active(alice)
        assert await bayes.classify(alice, message_tokens(spam[30])) is not None
        # Nothing in common with anything trained: no clues, unsure.
        assert await bayes.classify(alice, []) == 0.5

    run(use, tmp_path)


def test_held_out_corpus_is_separated(tmp_path: Path) -> None:
    ham, spam = corpus()

    async def use(store: MailStore) -> tuple[list[float], list[float]]:
        (alice,) = await accounts(store, "alice")
        bayes = BayesFilter(store, min_trained=10)
        await train_corpus(bayes, alice, ham[:30], spam[:30])
        ham_scores = [await bayes.classify(alice, message_tokens(m)) for m in ham[30:]]
        spam_scores = [await bayes.classify(alice, message_tokens(m)) for m in spam[30:]]
        assert None not in ham_scores and None not in spam_scores
        return [s for s in ham_scores if s is not None], [s for s in spam_scores if s is not None]

    ham_scores, spam_scores = run(use, tmp_path)
    good_ham = sum(s < 0.1 for s in ham_scores)
    good_spam = sum(s > 0.9 for s in spam_scores)
    print(
        f"held-out: ham < 0.1: {good_ham}/10 {ham_scores}; spam > 0.9: {good_spam}/10 {spam_scores}"
    )
    assert good_ham >= 9 and good_spam >= 9
    assert max(ham_scores) < 0.5 < min(spam_scores)  # none on the wrong side


def test_retrain_is_idempotent_moves_and_forgets(tmp_path: Path) -> None:
    ham, spam = corpus()

    async def use(store: MailStore) -> None:
        (alice,) = await accounts(store, "alice")
        bayes = BayesFilter(store, min_trained=10)
        await train_corpus(bayes, alice, ham[:20], spam[:20])
        probe = message_tokens(spam[35])
        before = await bayes.classify(alice, probe)
        assert not await bayes.train(alice, "spam-3", message_tokens(spam[3]), spam=True)
        assert await bayes.trained(alice) == (20, 20)
        assert await bayes.classify(alice, probe) == before
        # The user changes their mind: the same message is moved, not counted twice.
        assert await bayes.train(alice, "spam-3", message_tokens(spam[3]), spam=False)
        assert await bayes.trained(alice) == (19, 21)
        assert await bayes.train(alice, "spam-3", message_tokens(spam[3]), spam=True)
        assert await bayes.trained(alice) == (20, 20)
        assert await bayes.classify(alice, probe) == before
        assert await bayes.forget(alice, "spam-3")
        assert not await bayes.forget(alice, "spam-3")
        assert await bayes.trained(alice) == (19, 20)

    run(use, tmp_path)


def test_each_user_has_their_own_filter(tmp_path: Path) -> None:
    ham, spam = corpus()

    async def use(store: MailStore) -> None:
        alice, bob, carol = await accounts(store, "alice", "bob", "carol")
        bayes = BayesFilter(store, min_trained=10)
        await train_corpus(bayes, alice, ham[:30], spam[:30])
        probe_spam, probe_ham = message_tokens(spam[31]), message_tokens(ham[31])
        assert await bayes.classify(bob, probe_spam) is None  # Alice's training is hers
        # Bob wants exactly what Alice calls spam (a newsletter reader, say).
        await train_corpus(bayes, bob, spam[:30], ham[:30])
        alice_spam = await bayes.classify(alice, probe_spam)
        bob_spam = await bayes.classify(bob, probe_spam)
        bob_ham = await bayes.classify(bob, probe_ham)
        assert alice_spam is not None and alice_spam > 0.9
        assert bob_spam is not None and bob_spam < 0.1
        assert bob_ham is not None and bob_ham > 0.9
        assert await bayes.classify(carol, probe_spam) is None
        await store.delete_account("bob@example.org")
        assert await bayes.classify(bob, probe_spam) is None
        assert await bayes.classify(alice, probe_spam) == alice_spam

    run(use, tmp_path)


def body_only(message: bytes, n: int) -> bytes:
    """The message's text under one header template shared by both classes, so only
    the words can tell them apart (a harder test than whole messages)."""
    text = message.split(b"\r\n\r\n", 1)[1].replace(b"<br>", b"\r\n")
    for tag in (b"<html><p>", b"</p>", b"</html>", b"<a href=", b">CLICK</a>"):
        text = text.replace(tag, b" ")
    return (
        b"From: someone@mail.example.com\r\nTo: alice@example.org\r\nSubject: hello\r\n"
        b"Message-ID: <%d@mail.example.com>\r\nContent-Type: text/plain\r\n\r\n" % n + text
    )


def test_held_out_corpus_is_separated_by_words_alone(tmp_path: Path) -> None:
    ham, spam = corpus(seed=99)
    ham = [body_only(m, i) for i, m in enumerate(ham)]
    spam = [body_only(m, 100 + i) for i, m in enumerate(spam)]

    async def use(store: MailStore) -> tuple[list[float | None], list[float | None]]:
        (alice,) = await accounts(store, "alice")
        bayes = BayesFilter(store, min_trained=10)
        await train_corpus(bayes, alice, ham[:30], spam[:30])
        return (
            [await bayes.classify(alice, message_tokens(m)) for m in ham[30:]],
            [await bayes.classify(alice, message_tokens(m)) for m in spam[30:]],
        )

    ham_scores, spam_scores = run(use, tmp_path)
    good_ham = sum(s is not None and s < 0.1 for s in ham_scores)
    good_spam = sum(s is not None and s > 0.9 for s in spam_scores)
    print(f"words alone: ham < 0.1: {good_ham}/10; spam > 0.9: {good_spam}/10")
    assert good_ham >= 9 and good_spam >= 9
