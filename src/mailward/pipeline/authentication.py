"""Inbound message authentication on the MX listener: SPF, DKIM, DMARC, ARC, recorded
in one Authentication-Results field (RFC 7208, RFC 6376, RFC 7489, RFC 8617,
RFC 8601). NIST SP 800-177r1 4.4-4.6 recommends all of them for receivers.

Who is checked: only mail arriving on the "mx" listener from a session that is
neither authenticated nor from a trusted network (mail from our own users and
networks is ours to vouch for). Every message, whatever its way in, has the
Authentication-Results fields that carry our authserv-id removed (RFC 8601 5), so
nobody can hand us our own verdict: that part is `strip_forged_results`, applied by
the runner to all listeners.

What is decided (DMARC is the only policy applied; SPF and DKIM failures alone are
recorded, not acted on, as RFC 7489 intends):
- the strictest DMARC disposition over the message's From: domains (RFC 7489 6.6.1)
  is reject -> 550 5.7.1; quarantine -> delivered to the recipients' Junk mailbox;
- a temporary DNS failure that leaves a DMARC outcome open (the DMARC record itself,
  or the SPF/DKIM result of an aligned identifier when nothing else passed), for a
  domain whose policy is not p=none -> 451 4.4.3, so the sender retries: a DNS
  problem never turns into a pass (nor into a rejection);
- otherwise the message is accepted with the header field added.

Evaluation order: everything runs concurrently (SPF for MAIL FROM and HELO, DMARC
policy discovery, DKIM and ARC verification in worker threads), then DMARC is
evaluated over the results. The DKIM/ARC verifiers need the whole message as the
client sent it (without our trace fields); messages big enough to have gone to a
spool file are read into memory for that only if they carry signatures, and at
most `LARGE_VERIFICATIONS` such messages at a time, which bounds the memory this
costs whatever the message size (dkimpy needs the body in memory).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random as random_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailward.crypto.dkim_verify import ArcResult, DkimResult, verify_arc, verify_signatures
from mailward.logs import EventLog
from mailward.mailauth.dmarc import (
    DkimIdentifier,
    DmarcOutcome,
    DmarcResult,
    PolicyLookup,
    discover_policy,
    evaluate,
    strictest,
)
from mailward.mailauth.results import HEADER_B_LENGTH, Resinfo, header_field
from mailward.mailauth.spf import SpfOutcome, check_helo, check_mailfrom
from mailward.message.headers import header_values, mailbox_addresses
from mailward.pipeline.types import ACCEPT, CheckResult, Decision, Envelope, SessionInfo, reject
from mailward.proto.replies import Reply
from mailward.resolver import Resolver

DMARC_REJECTED = Reply(550, "5.7.1", "Rejected by the sender domain's DMARC policy")
DNS_TEMPFAIL = Reply(451, "4.4.3", "Temporary DNS failure, try again later")

# Messages larger than this held in memory for DKIM/ARC verification count against
# LARGE_VERIFICATIONS (in-memory messages are at most the SMTP spool's 64 KiB).
LARGE_MESSAGE = 1024 * 1024
LARGE_VERIFICATIONS = 2
# All checks of one message together (each DNS lookup has its own, shorter timeout).
TIME_LIMIT = 60.0


@dataclass(frozen=True, slots=True)
class MessageSource:
    """Where the message is, as the client sent it: `content[offset:]` if it is in
    memory, else the spool file's bytes from `offset` (after our trace fields)."""

    content: bytes | None
    spool: Path
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class AuthenticationReport:
    spf: SpfOutcome
    helo: SpfOutcome | None  # the HELO identity, when MAIL FROM was not null
    dkim: Sequence[DkimResult]
    arc: ArcResult
    dmarc: Sequence[DmarcOutcome]
    action: str  # "accept" | "quarantine" | "reject" | "tempfail"
    header: bytes = b""  # the Authentication-Results field, CRLF-terminated


def _author_domains(header_section: bytes) -> list[str]:
    addresses = mailbox_addresses(header_values(header_section, "From"))
    return [a.rpartition("@")[2].strip().rstrip(".").lower() for a in addresses if "@" in a]


def _has_field(header_section: bytes, name: bytes) -> bool:
    lowered = header_section.lower()
    return lowered.startswith(name + b":") or (b"\n" + name + b":") in lowered


def _decide(outcomes: Sequence[DmarcOutcome]) -> str:
    worst = strictest(outcomes)
    if worst is not None and worst.disposition == "reject":
        return "reject"
    for o in outcomes:
        # An open outcome matters only where a policy would be applied: with the
        # record unknown (policy "") or p=quarantine/reject.
        if o.result == DmarcResult.TEMPERROR and o.policy != "none":
            return "tempfail"
    if worst is not None and worst.disposition == "quarantine":
        return "quarantine"
    return "accept"


def _spf_resinfo(outcome: SpfOutcome) -> Resinfo:
    if outcome.identity == "mailfrom":
        prop = ("smtp.mailfrom", outcome.sender)
    else:
        prop = ("smtp.helo", outcome.domain)
    return Resinfo("spf", outcome.result.value, outcome.reason, (prop,))


def _dkim_resinfos(results: Sequence[DkimResult]) -> list[Resinfo]:
    if not results:
        return [Resinfo("dkim", "none")]
    return [
        Resinfo(
            "dkim",
            r.result,
            "" if r.result == "pass" else r.reason,
            (
                ("header.d", r.domain),
                ("header.s", r.selector),
                ("header.a", r.algorithm),
                ("header.b", r.signature[:HEADER_B_LENGTH]),
            ),
        )
        for r in results
    ]


def _dmarc_resinfos(outcomes: Sequence[DmarcOutcome]) -> list[Resinfo]:
    infos = []
    for o in outcomes:
        note = o.reason if o.result != DmarcResult.PASS else ""
        if o.policy:
            note = f"p={o.policy} dis={o.disposition}" + (" pct" if o.sampled_out else "")
        infos.append(Resinfo("dmarc", o.result.value, note, (("header.from", o.author_domain),)))
    return infos


def build_header(authserv_id: str, report: AuthenticationReport) -> bytes:
    infos = [_spf_resinfo(report.spf)]
    if report.helo is not None:
        infos.append(_spf_resinfo(report.helo))
    infos.extend(_dkim_resinfos(report.dkim))
    infos.extend(_dmarc_resinfos(report.dmarc))
    arc_note = f"i={report.arc.instances}" if report.arc.result == "pass" else ""
    if report.arc.result == "fail":
        arc_note = report.arc.reason
    infos.append(Resinfo("arc", report.arc.result, arc_note))
    return header_field(authserv_id, infos)


class MessageAuthenticator:
    """The check; one per process (it holds no per-message state)."""

    def __init__(
        self,
        resolver: Resolver,
        hostname: str,
        log: EventLog,
        *,
        random: Callable[[], float] = random_module.random,
        time_limit: float = TIME_LIMIT,
    ) -> None:
        self._time_limit = time_limit
        self._resolver = resolver
        self._hostname = hostname
        self._log = log
        self._random = random
        self._large = asyncio.Semaphore(LARGE_VERIFICATIONS)

    @staticmethod
    def applies(session: SessionInfo) -> bool:
        return (
            session.listener == "mx" and not session.authenticated and not session.trusted_network
        )

    async def check(
        self,
        session: SessionInfo,
        envelope: Envelope,
        header_section: bytes,
        source: MessageSource,
    ) -> tuple[CheckResult, AuthenticationReport | None]:
        try:
            async with asyncio.timeout(self._time_limit):
                report = await self.evaluate(session, envelope, header_section, source)
        except TimeoutError:
            # Every lookup has its own timeout; this bounds their sum (DESIGN.md 3).
            self._log.info("mailauth.timeout", session=session.session_id, seconds=self._time_limit)
            return reject(DNS_TEMPFAIL, "authentication checks timed out"), None
        self._log.info(
            "mailauth.result",
            session=session.session_id,
            ip=session.peer_ip,
            spf=report.spf.result.value,
            spf_domain=report.spf.domain,
            helo_spf=report.helo.result.value if report.helo else "",
            dkim=[f"{r.domain}/{r.selector}={r.result}" for r in report.dkim],
            dmarc=[
                f"{o.author_domain or '-'}={o.result.value}/{o.policy or '-'}/{o.disposition}"
                for o in report.dmarc
            ],
            arc=report.arc.result,
            action=report.action,
        )
        headers: tuple[tuple[str, str], ...] = ()
        if report.header:
            name, _, value = report.header.decode("ascii").partition(":")
            headers = ((name, value.rstrip("\r\n")),)
        if report.action == "reject":
            return reject(DMARC_REJECTED, "DMARC policy reject"), report
        if report.action == "tempfail":
            return reject(DNS_TEMPFAIL, "DMARC temporary DNS failure"), report
        if report.action == "quarantine":
            return CheckResult(
                Decision.QUARANTINE, None, "DMARC policy quarantine", headers
            ), report
        return CheckResult(ACCEPT.decision, None, "", headers), report

    async def evaluate(
        self,
        session: SessionInfo,
        envelope: Envelope,
        header_section: bytes,
        source: MessageSource,
    ) -> AuthenticationReport:
        resolver = self._resolver
        ip, helo, host = session.peer_ip, session.helo, self._hostname
        domains = list(dict.fromkeys(_author_domains(header_section)))
        signed = _has_field(header_section, b"dkim-signature")
        sealed = _has_field(header_section, b"arc-seal")

        async def helo_check() -> SpfOutcome | None:
            if not envelope.sender:
                return None  # the MAIL FROM check already is the HELO check (RFC 7208 2.4)
            return await check_helo(resolver, ip, helo, receiving_host=host)

        async def signatures() -> tuple[list[DkimResult], ArcResult]:
            if not signed and not sealed:
                return [], ArcResult("none", "no ARC sets")
            large = source.content is None and source.size > LARGE_MESSAGE
            if large:
                await self._large.acquire()
            try:
                message = await _load(source)
                dkim, arc = await asyncio.gather(
                    verify_signatures(message, resolver.txt) if signed else _no_dkim(),
                    verify_arc(message, resolver.txt) if sealed else _no_arc(),
                )
                del message
                return dkim, arc
            finally:
                if large:
                    self._large.release()

        async def policies() -> list[PolicyLookup]:
            return list(await asyncio.gather(*(discover_policy(resolver, d) for d in domains)))

        spf, helo_spf, (dkim, arc), lookups = await asyncio.gather(
            check_mailfrom(resolver, ip, envelope.sender, helo, receiving_host=host),
            helo_check(),
            signatures(),
            policies(),
        )
        identifiers = [DkimIdentifier(r.domain, r.result) for r in dkim]
        if domains:
            outcomes = [
                evaluate(lookup, spf, identifiers, random=self._random) for lookup in lookups
            ]
        else:
            # RFC 7489 6.6.1: no From: domain to evaluate; reported, not refused.
            outcomes = [
                DmarcOutcome("", DmarcResult.PERMERROR, "", "none", reason="no From: domain")
            ]
        report = AuthenticationReport(
            spf=spf,
            helo=helo_spf,
            dkim=dkim,
            arc=arc,
            dmarc=outcomes,
            action=_decide(outcomes),
        )
        return dataclasses.replace(report, header=build_header(self._hostname, report))


async def _no_dkim() -> list[DkimResult]:
    return []


async def _no_arc() -> ArcResult:
    return ArcResult("none", "no ARC sets")


async def _load(source: MessageSource) -> bytes:
    if source.content is not None:
        return source.content[source.offset :]

    def read() -> bytes:
        with open(source.spool, "rb") as f:
            f.seek(source.offset)
            return f.read()

    return await asyncio.to_thread(read)


__all__ = [
    "DMARC_REJECTED",
    "DNS_TEMPFAIL",
    "AuthenticationReport",
    "MessageAuthenticator",
    "MessageSource",
    "build_header",
]
