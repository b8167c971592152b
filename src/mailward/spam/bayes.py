"""Each user's own statistical spam filter.

The method:

- Paul Graham, "A Plan for Spam" (2002): learn from the mail a person actually gets
  and actually calls spam, token by token; look only at the tokens that say most.
- Gary Robinson, "A Statistical Approach to the Spam Problem" (Linux Journal, 2003):
  for a token seen in `spam_count` of the `n_spam` trained spam and `ham_count` of the
  `n_ham` trained ham,

      p(w) = (spam_count / n_spam) / (spam_count / n_spam + ham_count / n_ham)
      f(w) = (s * x + n * p(w)) / (s + n),   n = spam_count + ham_count

  so a rarely seen token stays near the neutral `x` (0.5) with strength `s` (0.45),
  and the probabilities of the (at most `MAX_CLUES`) tokens furthest from 0.5 are
  combined with Fisher's method: with H = C^-1(-2 sum ln f(w), 2N) and
  S = C^-1(-2 sum ln (1 - f(w)), 2N), where C^-1 is the inverse chi-square, the
  message's spam probability is (1 + H - S) / 2. Tokens closer to 0.5 than
  `MIN_STRENGTH` are ignored. The constants are SpamBayes' defaults (its tests chose
  them on large corpora); the chi-square tail is SpamBayes' chi2Q.
- The result is near 0 for ham, near 1 for spam, and near 0.5 when the evidence is
  thin or points both ways: the caller turns it into a score (`spam.rules.bayes`).

Per-user design: what one person calls spam another subscribed to, and vocabulary
differs more between people than between spam runs. So counts are kept per account
(`MailStore.bayes_counts` / `bayes_train`, walled off like mailboxes: one user's
training never changes another's verdicts, and a user cannot poison anyone else's
filter), trained from what that user does (spam/training.py: moving mail into and
out of Junk, the $Junk / $NotJunk keywords; `mailward spam train`). A filter that
has seen fewer than `min_trained` spam or ham messages says nothing (None) rather
than guess from a handful. Messages are keyed (a blob id, or a digest for files), so
training one twice is a no-op and training it as the other class moves it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mailward.store.api import MailStore

__all__ = [
    "MAX_CLUES",
    "MIN_STRENGTH",
    "UNKNOWN_PROB",
    "UNKNOWN_STRENGTH",
    "BayesFilter",
    "chi2q",
    "combine",
    "token_probability",
]

UNKNOWN_STRENGTH = 0.45  # Robinson's s
UNKNOWN_PROB = 0.5  # Robinson's x
MIN_STRENGTH = 0.1  # ignore tokens with |f(w) - 0.5| below this
MAX_CLUES = 150  # the most interesting tokens combined


def token_probability(spam_count: int, ham_count: int, n_spam: int, n_ham: int) -> float:
    """Robinson's f(w) for one token (module doc). n_spam and n_ham are > 0."""
    spam_ratio = min(spam_count, n_spam) / n_spam
    ham_ratio = min(ham_count, n_ham) / n_ham
    total = spam_ratio + ham_ratio
    p = spam_ratio / total if total else UNKNOWN_PROB
    n = spam_count + ham_count
    return (UNKNOWN_STRENGTH * UNKNOWN_PROB + n * p) / (UNKNOWN_STRENGTH + n)


def chi2q(x2: float, v: int) -> float:
    """P(chi-square with `v` (even) degrees of freedom >= x2) (SpamBayes' chi2Q)."""
    m = x2 / 2.0
    term = math.exp(-m)
    total = term
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)


def combine(probabilities: Sequence[float]) -> float:
    """Fisher-Robinson chi-square combining of token probabilities (module doc)."""
    if not probabilities:
        return 0.5
    # f(w) is strictly between 0 and 1 (s > 0), so the logarithms are finite.
    s_log = math.fsum(math.log(1.0 - p) for p in probabilities)
    h_log = math.fsum(math.log(p) for p in probabilities)
    v = 2 * len(probabilities)
    spamminess = 1.0 - chi2q(-2.0 * s_log, v)
    hamminess = 1.0 - chi2q(-2.0 * h_log, v)
    return (spamminess - hamminess + 1.0) / 2.0


class BayesFilter:
    """Classify and train with one account's counts (module doc)."""

    def __init__(self, store: MailStore, *, min_trained: int = 10) -> None:
        self.store = store
        self.min_trained = max(1, min_trained)

    async def classify(self, account_id: int, tokens: Sequence[int]) -> float | None:
        """The message's spam probability (0..1) for this account, or None while the
        account has trained fewer than `min_trained` spam or ham messages."""
        counts = await self.store.bayes_counts(account_id, tokens)
        n_spam, n_ham = counts.spam_messages, counts.ham_messages
        if n_spam < self.min_trained or n_ham < self.min_trained:
            return None
        clues: list[tuple[float, float]] = []
        for spam_count, ham_count in counts.tokens.values():
            f = token_probability(spam_count, ham_count, n_spam, n_ham)
            strength = abs(f - 0.5)
            if strength >= MIN_STRENGTH:
                clues.append((strength, f))
        # Tokens never seen sit at exactly x = 0.5 (strength 0): never clues.
        clues.sort(reverse=True)
        return combine([f for _, f in clues[:MAX_CLUES]])

    async def train(
        self, account_id: int, message_key: str, tokens: Sequence[int], *, spam: bool
    ) -> bool:
        """Count the message as spam or ham; returns whether any count changed (False
        when it was trained as this class already; the other class: moved)."""
        return await self.store.bayes_train(account_id, message_key, tokens, spam)

    async def forget(self, account_id: int, message_key: str) -> bool:
        """Undo a message's training; returns whether it had been trained."""
        return await self.store.bayes_train(account_id, message_key, (), None)

    async def trained(self, account_id: int) -> tuple[int, int]:
        """(spam, ham) messages the account has trained."""
        counts = await self.store.bayes_counts(account_id, ())
        return counts.spam_messages, counts.ham_messages

    async def active(self, account_id: int) -> bool:
        """Whether `classify` gives this account an answer (enough training)."""
        n_spam, n_ham = await self.trained(account_id)
        return n_spam >= self.min_trained and n_ham >= self.min_trained
