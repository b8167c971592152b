"""DMARC evaluation (RFC 7489) over the injected resolver.

- Policy discovery (RFC 7489 6.6.3): TXT at `_dmarc.<Author Domain>`; if there is no
  DMARC record there, at `_dmarc.<Organizational Domain>`. Records that do not start
  with "v=DMARC1" are ignored; more than one record means DMARC is not applied, which
  we report as permerror (no policy applied). A DNS failure is temperror.
- The Organizational Domain (RFC 7489 3.2) comes from the public suffix list of the
  `publicsuffixlist` package (shipped with it, offline), loaded once per process.
- Record parsing (6.3, 6.4): v first; unknown tags ignored; bad values of optional
  tags fall back to their defaults; an invalid or absent p= makes the record count
  as p=none if it has a valid rua=, else it is ignored (6.6.3 step 6).
- Identifier alignment (3.1): DKIM d= and the SPF domain (MAIL FROM, or HELO for the
  null reverse-path) against the From domain, relaxed (same Organizational Domain)
  or strict (same name), per adkim= / aspf=.
- Result (4.2): pass if SPF or any DKIM signature passes *and* is aligned; if not,
  temperror when an aligned identifier's result was temperror (it might have
  passed), else fail.
- Disposition (6.6.4, 6.3 pct): p= (sp= for a subdomain when the record came from
  the Organizational Domain); for a fail, pct% of messages get it and the rest the
  next weaker policy (reject -> quarantine -> none), decided by an injected random.
- Author Domains (6.6.1): the domains of every From: address. No From: address at
  all is permerror (nothing to evaluate; the message is not refused for it). Several
  addresses (in one field or several) are each evaluated and the strictest
  disposition among them applies, as 6.6.1 prescribes.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import random as random_module
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from mailward.mailauth.spf import SpfOutcome, SpfResult
from mailward.resolver import DnsTemporaryError, Resolver


class DmarcResult(enum.StrEnum):
    NONE = "none"
    PASS = "pass"  # noqa: S105 - a result name, not a password
    FAIL = "fail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


POLICIES = ("none", "quarantine", "reject")
_VERSION = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)")
_STRICTNESS = {p: i for i, p in enumerate(POLICIES)}


@functools.cache
def _psl() -> PublicSuffixList:
    # Building the list costs ~50 ms: once per process (research/deps.md 5, gotcha 1).
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label; a public suffix itself (or a
    name the list does not know as anything longer) is its own organizational domain."""
    name = domain.rstrip(".").lower()
    return _psl().privatesuffix(name) or name


def aligned(identifier: str, author_domain: str, mode: str) -> bool:
    """RFC 7489 3.1.1 / 3.1.2: strict is an exact match, relaxed a shared org domain."""
    a = identifier.rstrip(".").lower()
    b = author_domain.rstrip(".").lower()
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    p: str
    sp: str
    adkim: str = "r"
    aspf: str = "r"
    pct: int = 100
    rua: str = ""


class DmarcRecordError(ValueError):
    """The TXT value is not a usable DMARC record (it is then ignored)."""


def parse_record(text: str) -> DmarcRecord:
    """RFC 7489 6.3/6.4 tag-value list; DmarcRecordError if it must be ignored."""
    if not _VERSION.match(text):
        raise DmarcRecordError("does not start with v=DMARC1")
    tags: dict[str, str] = {}
    for part in text.split(";")[1:]:
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip().lower(), value.strip())
    rua = tags.get("rua", "")
    valid_rua = any(u.strip().lower().startswith("mailto:") for u in rua.split(","))
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        # RFC 7489 6.6.3 step 6: with a valid rua=, act as if p=none; else ignore it.
        if not valid_rua:
            raise DmarcRecordError("no valid p= (or sp=) and no rua=")
        p = sp = "none"
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    return DmarcRecord(
        p=p,
        sp=sp,
        adkim=adkim if adkim in ("r", "s") else "r",
        aspf=aspf if aspf in ("r", "s") else "r",
        pct=pct,
        rua=rua if valid_rua else "",
    )


@dataclass(frozen=True, slots=True)
class PolicyLookup:
    """What discovery found for one Author Domain."""

    author_domain: str
    result: DmarcResult  # NONE (no record), TEMPERROR, PERMERROR, or PASS = found
    record: DmarcRecord | None = None
    record_domain: str = ""  # where the record was found
    reason: str = ""

    @property
    def policy(self) -> str:
        """The policy that applies to the Author Domain ("" if unknown)."""
        if self.record is None:
            return ""
        if self.record_domain != self.author_domain:
            return self.record.sp  # RFC 7489 6.3 sp=: found at the org domain
        return self.record.p


async def _records_at(resolver: Resolver, domain: str) -> list[str]:
    txt = await resolver.txt(f"_dmarc.{domain}")
    return [t for t in txt if _VERSION.match(t)]  # RFC 7489 6.6.3 step 2


async def discover_policy(resolver: Resolver, author_domain: str) -> PolicyLookup:
    """RFC 7489 6.6.3 policy discovery for `author_domain`."""
    domain = author_domain.rstrip(".").lower()
    org = organizational_domain(domain)
    candidates = [domain] if org == domain else [domain, org]
    for candidate in candidates:
        try:
            records = await _records_at(resolver, candidate)
        except DnsTemporaryError as exc:
            return PolicyLookup(domain, DmarcResult.TEMPERROR, reason=f"DNS: {exc}")
        if len(records) > 1:
            return PolicyLookup(
                domain,
                DmarcResult.PERMERROR,
                record_domain=candidate,
                reason=f"{len(records)} DMARC records at _dmarc.{candidate}",
            )
        if records:
            try:
                record = parse_record(records[0])
            except DmarcRecordError as exc:
                # RFC 7489 6.6.3 step 6: "applies no DMARC processing to this message".
                return PolicyLookup(domain, DmarcResult.NONE, reason=f"{candidate}: {exc}")
            return PolicyLookup(domain, DmarcResult.PASS, record, candidate)
    return PolicyLookup(domain, DmarcResult.NONE, reason="no DMARC record")


@dataclass(frozen=True, slots=True)
class DkimIdentifier:
    """What DMARC needs of one verified DKIM signature."""

    domain: str  # d=
    result: str  # "pass" | "fail" | "temperror" | "permerror" | "neutral"


@dataclass(frozen=True, slots=True)
class DmarcOutcome:
    author_domain: str
    result: DmarcResult
    policy: str  # the published policy that applies ("" without a record)
    disposition: str  # "none" | "quarantine" | "reject": what we apply
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""
    sampled_out: bool = False  # pct= spared this message the full policy


def _aligned_reason(spf_ok: bool, dkim_ok: bool) -> str:
    return "aligned " + " and ".join(n for n, ok in (("spf", spf_ok), ("dkim", dkim_ok)) if ok)


def evaluate(
    lookup: PolicyLookup,
    spf: SpfOutcome | None,
    dkim: Sequence[DkimIdentifier],
    *,
    random: Callable[[], float] = random_module.random,
) -> DmarcOutcome:
    """RFC 7489 4.2 + 6.6.4 for one Author Domain, after discovery."""
    domain = lookup.author_domain
    if lookup.result != DmarcResult.PASS or lookup.record is None:
        return DmarcOutcome(domain, lookup.result, "", "none", reason=lookup.reason)
    record = lookup.record
    policy = lookup.policy
    spf_ok = (
        spf is not None
        and spf.result == SpfResult.PASS
        and aligned(spf.domain, domain, record.aspf)
    )
    dkim_ok = any(d.result == "pass" and aligned(d.domain, domain, record.adkim) for d in dkim)
    if spf_ok or dkim_ok:
        return DmarcOutcome(
            domain,
            DmarcResult.PASS,
            policy,
            "none",
            spf_aligned=spf_ok,
            dkim_aligned=dkim_ok,
            reason=_aligned_reason(spf_ok, dkim_ok),
        )
    temporary = [
        f"dkim d={d.domain}"
        for d in dkim
        if d.result == "temperror" and aligned(d.domain, domain, record.adkim)
    ]
    if (
        spf is not None
        and spf.result == SpfResult.TEMPERROR
        and aligned(spf.domain, domain, record.aspf)
    ):
        temporary.insert(0, f"spf {spf.domain}")
    if temporary:
        return DmarcOutcome(
            domain,
            DmarcResult.TEMPERROR,
            policy,
            "none",
            reason="temporary error for aligned " + ", ".join(temporary),
        )
    disposition = policy
    sampled_out = False
    if policy != "none" and record.pct < 100 and random() * 100 >= record.pct:
        # RFC 7489 6.6.4: the next least restrictive policy.
        disposition = "quarantine" if policy == "reject" else "none"
        sampled_out = True
    return DmarcOutcome(
        domain,
        DmarcResult.FAIL,
        policy,
        disposition,
        reason="no aligned pass",
        sampled_out=sampled_out,
    )


async def check_dmarc(
    resolver: Resolver,
    author_domains: Sequence[str],
    spf: SpfOutcome | None,
    dkim: Sequence[DkimIdentifier],
    *,
    random: Callable[[], float] = random_module.random,
) -> list[DmarcOutcome]:
    """Discovery and evaluation for each distinct Author Domain (RFC 7489 6.6.1).
    An empty list of domains (no From: address) gives one permerror outcome."""
    domains = list(dict.fromkeys(d.rstrip(".").lower() for d in author_domains if d))
    if not domains:
        return [DmarcOutcome("", DmarcResult.PERMERROR, "", "none", reason="no From: address")]
    lookups = await asyncio.gather(*(discover_policy(resolver, d) for d in domains))
    return [evaluate(lookup, spf, dkim, random=random) for lookup in lookups]


def strictest(outcomes: Sequence[DmarcOutcome]) -> DmarcOutcome | None:
    """The outcome whose disposition is strictest (RFC 7489 6.6.1), None if empty."""
    if not outcomes:
        return None
    return max(outcomes, key=lambda o: _STRICTNESS.get(o.disposition, 0))


__all__ = [
    "DkimIdentifier",
    "DmarcOutcome",
    "DmarcRecord",
    "DmarcRecordError",
    "DmarcResult",
    "PolicyLookup",
    "aligned",
    "check_dmarc",
    "discover_policy",
    "evaluate",
    "organizational_domain",
    "parse_record",
    "strictest",
]
