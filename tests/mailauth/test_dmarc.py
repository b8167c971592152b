"""DMARC (RFC 7489): record parsing, policy discovery, organizational domains,
alignment, pct sampling, several or no From: domains, temporary errors."""

from __future__ import annotations

import asyncio

import pytest

from mailward.mailauth.dmarc import (
    DkimIdentifier,
    DmarcRecordError,
    DmarcResult,
    PolicyLookup,
    aligned,
    check_dmarc,
    discover_policy,
    evaluate,
    organizational_domain,
    parse_record,
    strictest,
)
from mailward.mailauth.spf import SpfOutcome, SpfResult
from mailward.testing.fake_dns import FakeResolver


def spf_result(domain: str, result: SpfResult = SpfResult.PASS) -> SpfOutcome:
    return SpfOutcome(result, "mailfrom", domain, f"bounce@{domain}", "test")


def lookup(dns: FakeResolver, domain: str) -> PolicyLookup:
    return asyncio.run(discover_policy(dns, domain))


# --------------------------------------------------------------------------- records


def test_parse_record_defaults_and_values() -> None:
    r = parse_record("v=DMARC1; p=reject")
    assert (r.p, r.sp, r.adkim, r.aspf, r.pct) == ("reject", "reject", "r", "r", 100)
    r = parse_record("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20;rua=mailto:d@x.test")
    assert (r.p, r.sp, r.adkim, r.aspf, r.pct, r.rua) == (
        "quarantine",
        "none",
        "s",
        "s",
        20,
        "mailto:d@x.test",
    )
    # Bad optional values fall back to defaults; unknown tags are ignored (6.3).
    r = parse_record("v=DMARC1; p=REJECT; adkim=x; pct=500; foo=bar; fo=1")
    assert (r.p, r.adkim, r.pct) == ("reject", "r", 100)


def test_invalid_policy_is_none_with_rua_else_ignored() -> None:
    # RFC 7489 6.6.3 step 6.
    assert parse_record("v=DMARC1; p=bogus; rua=mailto:r@x.test").p == "none"
    assert parse_record("v=DMARC1; rua=mailto:r@x.test").p == "none"
    for text in ["v=DMARC1; p=bogus", "v=DMARC1", "p=reject; v=DMARC1", "v=DMARC2; p=reject"]:
        with pytest.raises(DmarcRecordError):
            parse_record(text)


# --------------------------------------------------------------------------- discovery


def test_organizational_domain_from_the_public_suffix_list() -> None:
    assert organizational_domain("mail.example.com") == "example.com"
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("Example.COM.") == "example.com"
    assert organizational_domain("co.uk") == "co.uk"  # a public suffix is its own
    assert organizational_domain("mx.sender.test") == "sender.test"  # unknown TLD: "*"


def test_discovery_at_the_author_domain() -> None:
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=none"]}})
    found = lookup(dns, "example.com")
    assert (found.result, found.record_domain, found.policy) == (
        DmarcResult.PASS,
        "example.com",
        "reject",
    )


def test_discovery_falls_back_to_the_organizational_domain_and_uses_sp() -> None:
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject; sp=quarantine"]}})
    found = lookup(dns, "news.mail.example.com")
    assert (found.record_domain, found.policy) == ("example.com", "quarantine")
    assert ("_dmarc.news.mail.example.com", "TXT") in dns.queries
    # Without sp=, p= applies to subdomains too.
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}})
    assert lookup(dns, "news.example.com").policy == "reject"


def test_discovery_ignores_other_txt_and_reports_none_or_permerror() -> None:
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["some verification token"]}})
    assert lookup(dns, "example.com").result == DmarcResult.NONE
    assert lookup(dns, "nothing.test").result == DmarcResult.NONE
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}})
    assert lookup(dns, "example.com").result == DmarcResult.PERMERROR  # 6.6.3 step 2
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=nonsense"]}})
    assert lookup(dns, "example.com").result == DmarcResult.NONE  # ignored record


def test_discovery_dns_failure_is_temperror() -> None:
    dns = FakeResolver({"_dmarc.example.com": {"TXT": ["v=DMARC1; p=reject"]}})
    dns.fail("_dmarc.mail.example.com", "TXT")
    assert lookup(dns, "mail.example.com").result == DmarcResult.TEMPERROR
    dns = FakeResolver()
    dns.fail("_dmarc.example.com", "TXT")
    assert lookup(dns, "mail.example.com").result == DmarcResult.TEMPERROR


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    ("identifier", "author", "mode", "expected"),
    [
        ("example.com", "example.com", "s", True),
        ("EXAMPLE.com.", "example.COM", "s", True),
        ("mail.example.com", "example.com", "s", False),
        ("mail.example.com", "example.com", "r", True),
        ("mail.example.com", "news.example.com", "r", True),
        ("example.net", "example.com", "r", False),
        ("evil-example.com", "example.com", "r", False),
        ("a.example.co.uk", "b.example.co.uk", "r", True),
        ("example.co.uk", "other.co.uk", "r", False),  # public suffix is not a shared org
        ("", "example.com", "r", False),
    ],
)
def test_alignment(identifier: str, author: str, mode: str, expected: bool) -> None:
    assert aligned(identifier, author, mode) is expected


def found(record: str, author: str = "example.com", at: str = "example.com") -> PolicyLookup:
    return PolicyLookup(author, DmarcResult.PASS, parse_record(record), at)


def test_pass_needs_an_aligned_pass() -> None:
    rec = found("v=DMARC1; p=reject")
    assert evaluate(rec, spf_result("example.com"), []).result == DmarcResult.PASS
    assert evaluate(rec, spf_result("bounces.example.com"), []).result == DmarcResult.PASS
    assert evaluate(rec, spf_result("example.net"), []).result == DmarcResult.FAIL
    dkim_ok = [DkimIdentifier("example.com", "pass")]
    out = evaluate(rec, spf_result("example.net"), dkim_ok)
    assert (out.result, out.dkim_aligned, out.spf_aligned) == (DmarcResult.PASS, True, False)
    # A passing but unaligned signature, an aligned but failing one: fail.
    dkim_bad = [DkimIdentifier("example.net", "pass"), DkimIdentifier("example.com", "fail")]
    out = evaluate(rec, spf_result("example.net", SpfResult.FAIL), dkim_bad)
    assert (out.result, out.disposition) == (DmarcResult.FAIL, "reject")


def test_strict_alignment_modes() -> None:
    rec = found("v=DMARC1; p=reject; adkim=s; aspf=s")
    assert evaluate(rec, spf_result("bounces.example.com"), []).result == DmarcResult.FAIL
    dkim = [DkimIdentifier("mail.example.com", "pass")]
    assert evaluate(rec, None, dkim).result == DmarcResult.FAIL
    assert evaluate(rec, None, [DkimIdentifier("example.com", "pass")]).result == DmarcResult.PASS


def test_pct_sampling_with_injected_random() -> None:
    # RFC 7489 6.6.4: outside the pct% sample the next weaker policy applies.
    reject25 = found("v=DMARC1; p=reject; pct=25")
    spf = spf_result("example.net")
    assert evaluate(reject25, spf, [], random=lambda: 0.10).disposition == "reject"
    out = evaluate(reject25, spf, [], random=lambda: 0.80)
    assert (out.result, out.disposition, out.sampled_out) == (
        DmarcResult.FAIL,
        "quarantine",
        True,
    )
    quarantine0 = found("v=DMARC1; p=quarantine; pct=0")
    assert evaluate(quarantine0, spf, [], random=lambda: 0.0).disposition == "none"
    full = found("v=DMARC1; p=reject")
    assert evaluate(full, spf, [], random=lambda: 0.999).disposition == "reject"


def test_p_none_never_disposes() -> None:
    out = evaluate(found("v=DMARC1; p=none"), spf_result("example.net"), [])
    assert (out.result, out.disposition) == (DmarcResult.FAIL, "none")


def test_temperror_of_an_aligned_identifier_when_nothing_passed() -> None:
    rec = found("v=DMARC1; p=reject")
    out = evaluate(rec, spf_result("example.com", SpfResult.TEMPERROR), [])
    assert (out.result, out.disposition) == (DmarcResult.TEMPERROR, "none")
    out = evaluate(rec, spf_result("example.net"), [DkimIdentifier("example.com", "temperror")])
    assert out.result == DmarcResult.TEMPERROR
    # An unaligned temperror cannot change the outcome: fail.
    out = evaluate(rec, spf_result("example.net", SpfResult.TEMPERROR), [])
    assert out.result == DmarcResult.FAIL
    # Another aligned pass decides: pass.
    out = evaluate(
        rec,
        spf_result("example.com", SpfResult.TEMPERROR),
        [DkimIdentifier("example.com", "pass")],
    )
    assert out.result == DmarcResult.PASS


def test_several_author_domains_take_the_strictest_and_none_is_permerror() -> None:
    dns = FakeResolver(
        {
            "_dmarc.a.example": {"TXT": ["v=DMARC1; p=none"]},
            "_dmarc.b.example": {"TXT": ["v=DMARC1; p=reject"]},
        }
    )
    spf = spf_result("a.example")
    outcomes = asyncio.run(check_dmarc(dns, ["a.example", "B.example", "a.example"], spf, []))
    assert [(o.author_domain, o.result) for o in outcomes] == [
        ("a.example", DmarcResult.PASS),
        ("b.example", DmarcResult.FAIL),
    ]
    worst = strictest(outcomes)
    assert worst is not None and worst.disposition == "reject"
    [none] = asyncio.run(check_dmarc(dns, [], spf, []))
    assert (none.result, none.disposition) == (DmarcResult.PERMERROR, "none")
