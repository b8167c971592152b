"""Spam scoring at the gateway (NIST SP 800-45 v2 5.x "blocking spam-sending servers"
and content filtering): the `ContentCheck` "spam".

Inbound mail (the MX port, neither authenticated nor from a trusted network) gets a
score: the sum of the rules in `spam.rules` (GTUBE, HELO, reverse DNS, header and
MIME heuristics, the SPF/DKIM/DMARC verdicts), the DNS blocklists (`spam.blocklists`),
rspamd's score when `spam.rspamd` is set, and, per local recipient, that recipient's
own Bayes filter (`spam.bayes`, trained from what they move into and out of Junk).
Per recipient, with their Bayes hit added:

- score >= `reject_score` (default 15) for every recipient: refused at end of DATA,
  `550 5.7.1 Message refused as spam` (the sender learns it bounced; nothing is
  silently dropped);
- score >= `junk_score` (default 5): that recipient's copy goes to their Junk
  mailbox (`CheckResult.junk`); the others get theirs in INBOX;
- always: `X-Spam-Score`, `X-Spam-Status` ("Yes"/"No", score, threshold, the tests
  that fired with their scores) and, over the Junk threshold, `X-Spam-Flag: YES`
  (what SpamAssassin writes and what client-side filters match). With several
  recipients the fields show the highest-scoring one. The same fields in the
  message as received are removed first (`UNTRUSTED_FIELDS`, by the runner) so a
  sender cannot claim "No".

Mail our users send (submission, authenticated, trusted networks) is not scored for
the recipients' benefit (no fields added: they would leak our filter to the world);
GTUBE and rspamd's reject still refuse it, so a compromised account's spam run can
be stopped by the same rules.

A blocklist or rspamd that fails or times out adds nothing and is logged: an
optional scorer being down must not stop mail. The score is computed on the first
`MAX_SCANNED` octets of the message (SpamAssassin's default is 500 KB; spam is small,
and the rest adds little but cost).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailward.logs import EventLog
from mailward.message.headers import header_values, mailbox_addresses
from mailward.pipeline.authentication import AuthenticationReport
from mailward.pipeline.content import MessageView
from mailward.pipeline.types import CheckResult, Decision, LocalRecipient, SessionInfo, reject
from mailward.proto.replies import Reply
from mailward.resolver import DnsTemporaryError, Resolver
from mailward.scan.rspamd import RspamdError
from mailward.spam import rules
from mailward.spam.blocklists import Blocklists, public_address
from mailward.spam.rules import AuthVerdicts, Hit

SPAM_REFUSED = Reply(550, "5.7.1", "Message refused as spam")
MAX_SCANNED = 512 * 1024
UNTRUSTED_FIELDS = ("X-Spam-Score", "X-Spam-Status", "X-Spam-Flag")
RDNS_TIMEOUT = 5.0


class BayesClassifier(Protocol):
    """What the check needs of `spam.bayes.BayesFilter`."""

    async def classify(self, account_id: int, tokens: Sequence[int]) -> float | None: ...


class ExternalScorer(Protocol):
    """What the check needs of `scan.rspamd.RspamdClient` (the result's fields)."""

    async def check(
        self,
        message: bytes,
        *,
        ip: str = "",
        helo: str = "",
        sender: str = "",
        recipients: Sequence[str] = (),
        hostname: str = "",
        user: str = "",
        queue_id: str = "",
    ) -> _ScorerResult: ...


class _ScorerResult(Protocol):
    @property
    def action(self) -> str: ...
    @property
    def score(self) -> float: ...


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    """What was found about one message (for the fields, the log and tests)."""

    hits: tuple[Hit, ...]  # common to every recipient
    per_recipient: dict[int, Hit | None]  # account id -> its Bayes hit (None: untrained)

    @property
    def base_score(self) -> float:
        return sum(h.score for h in self.hits)

    def score_for(self, account_id: int) -> float:
        bayes = self.per_recipient.get(account_id)
        return self.base_score + (bayes.score if bayes is not None else 0.0)


def _verdicts(report: AuthenticationReport) -> AuthVerdicts:
    return AuthVerdicts(
        spf=report.spf.result.value,
        dkim=tuple(str(r.result) for r in report.dkim),
        dmarc=tuple((o.result.value, o.policy) for o in report.dmarc),
    )


def _format(score: float) -> str:
    text = f"{score:.1f}"
    return "0.0" if text == "-0.0" else text


class SpamCheck:
    name = "spam"

    def __init__(
        self,
        *,
        resolver: Resolver,
        log: EventLog,
        hostname: str,
        blocklists: Blocklists,
        junk_score: float = 5.0,
        reject_score: float = 15.0,
        bayes: BayesClassifier | None = None,
        tokenize: Callable[[bytes], list[int]] | None = None,
        rspamd: ExternalScorer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`reject_score` 0 turns refusal off; `bayes` needs `tokenize` (the
        classifier's tokenizer, `spam.tokens.message_tokens`)."""
        self._resolver = resolver
        self._log = log
        self._hostname = hostname
        self._blocklists = blocklists
        self._junk = junk_score
        self._reject = reject_score
        self._bayes = bayes if tokenize is not None else None
        self._tokenize = tokenize
        self._rspamd = rspamd
        self._clock = clock

    @staticmethod
    def applies(session: SessionInfo) -> bool:
        return True

    @staticmethod
    def inbound(session: SessionInfo) -> bool:
        return (
            session.listener == "mx" and not session.authenticated and not session.trusted_network
        )

    async def check(self, message: MessageView) -> CheckResult:
        session = message.session
        data = await message.head(MAX_SCANNED)
        if not self.inbound(session):
            return await self._check_outbound(message, data)
        verdict = await self.evaluate(message, data)
        return self._decide(message, verdict)

    async def evaluate(self, message: MessageView, data: bytes) -> SpamVerdict:
        session = message.session
        hits: list[Hit] = []
        hits += rules.gtube(data)
        hits += rules.helo(session.helo, session.peer_ip, self._hostname)
        hits += rules.headers(message.header_section, self._clock())
        hits += await asyncio.to_thread(rules.mime_structure, data)
        if message.auth is not None:
            hits += rules.authentication(_verdicts(message.auth))
        network, rspamd_hits = await asyncio.gather(
            self._network(message), self._external(message, data)
        )
        hits += network + rspamd_hits
        per_recipient = await self._bayes_hits(message, data)
        return SpamVerdict(tuple(hits), per_recipient)

    async def _network(self, message: MessageView) -> list[Hit]:
        session = message.session
        domains = [message.envelope.sender.rpartition("@")[2]] if message.envelope.sender else []
        domains += [a.rpartition("@")[2] for a in _from_addresses(message.header_section)]
        if session.helo and not session.helo.startswith("["):
            domains.append(session.helo)
        listing_task = self._blocklists.check(session.peer_ip, domains)
        (listings, failures), rdns = await asyncio.gather(listing_task, self._rdns(session))
        for zone, subject in failures:
            self._log.warning(
                "spam.blocklist_failed", session=session.session_id, zone=zone, subject=subject
            )
        hits = [
            Hit(f"RBL_{_symbol(x.zone)}", x.score, f"{x.subject} {','.join(x.codes)}")
            for x in listings
        ]
        return hits + rdns

    async def _rdns(self, session: SessionInfo) -> list[Hit]:
        if public_address(session.peer_ip) is None:
            return []  # a private address: its reverse DNS says nothing
        try:
            async with asyncio.timeout(RDNS_TIMEOUT):
                names = await self._resolver.ptr(session.peer_ip)
                confirmed = False
                for name in names[:3]:
                    if any(
                        rules.same_ip(a, session.peer_ip)
                        for a in await self._resolver.addresses(name)
                    ):
                        confirmed = True
                        break
        except (DnsTemporaryError, TimeoutError):
            return []  # unknown is not "none"
        return rules.reverse_dns(session.peer_ip, names, confirmed)

    async def _external(self, message: MessageView, data: bytes) -> list[Hit]:
        if self._rspamd is None:
            return []
        session = message.session
        try:
            result = await self._rspamd.check(
                data,
                ip=session.peer_ip,
                helo=session.helo,
                sender=message.envelope.sender,
                recipients=[r.address for r in message.envelope.recipients],
                user=session.account_address,
                queue_id=session.session_id,
            )
        except (RspamdError, OSError, ValueError) as exc:
            self._log.warning(
                "spam.rspamd_failed", session=session.session_id, error=type(exc).__name__
            )
            return []
        return [Hit("RSPAMD", round(result.score, 2), result.action)]

    async def _bayes_hits(self, message: MessageView, data: bytes) -> dict[int, Hit | None]:
        accounts = sorted(
            {r.account_id for r in message.envelope.recipients if isinstance(r, LocalRecipient)}
        )
        if self._bayes is None or self._tokenize is None or not accounts:
            return dict.fromkeys(accounts)
        tokens = await asyncio.to_thread(self._tokenize, data)
        out: dict[int, Hit | None] = {}
        for account_id in accounts:
            probability = await self._bayes.classify(account_id, tokens)
            out[account_id] = None if probability is None else rules.bayes(probability)
        return out

    def _decide(self, message: MessageView, verdict: SpamVerdict) -> CheckResult:
        session = message.session
        accounts = list(verdict.per_recipient) or [-1]
        scores = {a: verdict.score_for(a) for a in accounts}
        top = max(accounts, key=lambda a: scores[a])
        top_score = scores[top]
        shown = list(verdict.hits)
        if (bayes := verdict.per_recipient.get(top)) is not None:
            shown.append(bayes)
        tests = ",".join(
            f"{h.name}={_format(h.score)}" for h in sorted(shown, key=lambda h: h.name)
        )
        junk = frozenset(a for a in accounts if a >= 0 and scores[a] >= self._junk)
        rejected = self._reject > 0 and all(s >= self._reject for s in scores.values())
        action = "reject" if rejected else ("junk" if junk else "accept")
        self._log.info(
            "spam.scored",
            session=session.session_id,
            score=round(top_score, 2),
            action=action,
            tests=[h.name for h in shown],
            junk_recipients=len(junk),
        )
        reason = f"spam score {_format(top_score)} ({tests})"
        if rejected:
            return reject(SPAM_REFUSED, reason)
        is_spam = top_score >= self._junk
        status = (
            f"{'Yes' if is_spam else 'No'}, score={_format(top_score)} "
            f"required={_format(self._junk)} tests={tests or 'none'}"
        )
        fields = [("X-Spam-Score", _format(top_score)), ("X-Spam-Status", status)]
        if is_spam:
            fields.append(("X-Spam-Flag", "YES"))
        return CheckResult(Decision.ACCEPT, reason=reason, headers=tuple(fields), junk=junk)

    async def _check_outbound(self, message: MessageView, data: bytes) -> CheckResult:
        hits = rules.gtube(data) + await self._external(message, data)
        score = sum(h.score for h in hits)
        if self._reject > 0 and score >= self._reject:
            names = ",".join(h.name for h in hits)
            self._log.warning(
                "spam.outbound_refused",
                session=message.session.session_id,
                account=message.session.account_address,
                score=round(score, 2),
                tests=names,
            )
            return reject(SPAM_REFUSED, f"outbound spam score {_format(score)} ({names})")
        return CheckResult(Decision.ACCEPT)


def _symbol(zone: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in zone.upper())


def _from_addresses(section: bytes) -> list[str]:
    return mailbox_addresses(header_values(section, "From"))[:5]
