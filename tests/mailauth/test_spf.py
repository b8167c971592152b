"""SPF check_host() (RFC 7208) over the in-memory resolver: the RFC's Appendix A zone
and examples, the 7.4 macro table, the processing limits, and DNS failures."""

from __future__ import annotations

import asyncio

import pytest

from mailward.mailauth.spf import (
    SpfResult,
    check_helo,
    check_host,
    check_mailfrom,
    expand_macros,
)
from mailward.testing.fake_dns import FakeResolver


def appendix_a_zone() -> FakeResolver:
    """RFC 7208 A. (the zone shared by all Appendix A examples)."""
    dns = FakeResolver(
        {
            "example.com": {
                "MX": ["10 mail-a.example.com.", "20 mail-b.example.com."],
                "A": ["192.0.2.10", "192.0.2.11"],
            },
            "amy.example.com": {"A": ["192.0.2.65"]},
            "bob.example.com": {"A": ["192.0.2.66"]},
            "mail-a.example.com": {"A": ["192.0.2.129"]},
            "mail-b.example.com": {"A": ["192.0.2.130"]},
            "www.example.com": {"A": ["192.0.2.10", "192.0.2.11"]},  # the CNAME, flattened
            "example.org": {"MX": ["10 mail-c.example.org."]},
            "mail-c.example.org": {"A": ["192.0.2.140"]},
        }
    )
    for ip, name in [
        ("192.0.2.10", "example.com."),
        ("192.0.2.11", "example.com."),
        ("192.0.2.65", "amy.example.com."),
        ("192.0.2.66", "bob.example.com."),
        ("192.0.2.129", "mail-a.example.com."),
        ("192.0.2.130", "mail-b.example.com."),
        ("192.0.2.140", "mail-c.example.org."),
        ("10.0.0.4", "bob.example.com."),  # not valid: bob's A record says .66
    ]:
        dns.add_ptr(ip, name)
    return dns


def spf(dns: FakeResolver, ip: str, domain: str = "example.com", sender: str = "") -> SpfResult:
    result, _reason, _exp = asyncio.run(
        check_host(dns, ip, domain, sender or f"user@{domain}", helo="mx.client.test")
    )
    return result


# RFC 7208 A.1: (record for example.com, {client ip: result})
APPENDIX_A1 = [
    ("v=spf1 +all", {"192.0.2.10": "pass", "198.51.100.1": "pass"}),
    ("v=spf1 a -all", {"192.0.2.10": "pass", "192.0.2.11": "pass", "192.0.2.65": "fail"}),
    ("v=spf1 a:example.org -all", {"192.0.2.10": "fail", "192.0.2.140": "fail"}),
    (
        "v=spf1 mx -all",
        {"192.0.2.129": "pass", "192.0.2.130": "pass", "192.0.2.10": "fail"},
    ),
    ("v=spf1 mx:example.org -all", {"192.0.2.140": "pass", "192.0.2.129": "fail"}),
    (
        "v=spf1 mx mx:example.org -all",
        {"192.0.2.129": "pass", "192.0.2.130": "pass", "192.0.2.140": "pass", "192.0.2.10": "fail"},
    ),
    (
        "v=spf1 mx/30 mx:example.org/30 -all",
        {
            "192.0.2.128": "pass",
            "192.0.2.131": "pass",
            "192.0.2.141": "pass",
            "192.0.2.143": "pass",
            "192.0.2.132": "fail",
        },
    ),
    ("v=spf1 ptr -all", {"192.0.2.65": "pass", "192.0.2.140": "fail", "10.0.0.4": "fail"}),
    ("v=spf1 ip4:192.0.2.128/28 -all", {"192.0.2.65": "fail", "192.0.2.129": "pass"}),
]


@pytest.mark.parametrize(("record", "expected"), APPENDIX_A1, ids=[r for r, _ in APPENDIX_A1])
def test_appendix_a1_simple_examples(record: str, expected: dict[str, str]) -> None:
    dns = appendix_a_zone()
    dns.add("example.com", "TXT", record)
    assert {ip: spf(dns, ip).value for ip in expected} == expected


def test_appendix_a2_multiple_domains() -> None:
    # RFC 7208 A.2: example.org includes example.com's policy and its own.
    dns = appendix_a_zone()
    dns.add("example.org", "TXT", "v=spf1 include:example.com include:example.net -all")
    dns.add("la.example.org", "TXT", "v=spf1 redirect=example.org")
    dns.add("example.com", "TXT", "v=spf1 a -all")
    dns.add("example.net", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    assert spf(dns, "192.0.2.10", "example.org") == SpfResult.PASS  # via example.com
    assert spf(dns, "198.51.100.7", "example.org") == SpfResult.PASS  # via example.net
    assert spf(dns, "192.0.2.140", "example.org") == SpfResult.FAIL
    assert spf(dns, "198.51.100.7", "la.example.org") == SpfResult.PASS
    assert spf(dns, "203.0.113.1", "la.example.org") == SpfResult.FAIL


def test_appendix_a3_dnsbl_style_with_macros() -> None:
    # RFC 7208 A.3: mobile users listed by local part, remote users by IP + local part.
    dns = appendix_a_zone()
    dns.add(
        "example.com",
        "TXT",
        "v=spf1 mx include:mobile-users._spf.%{d} include:remote-users._spf.%{d} -all",
    )
    dns.add("mobile-users._spf.example.com", "TXT", "v=spf1 exists:%{l1r+}.%{d}")
    dns.add("remote-users._spf.example.com", "TXT", "v=spf1 exists:%{ir}.%{l1r+}.%{d}")
    dns.add("mary.mobile-users._spf.example.com", "A", "127.0.0.2")
    dns.add("fred.mobile-users._spf.example.com", "A", "127.0.0.2")
    dns.add("15.15.168.192.joel.remote-users._spf.example.com", "A", "127.0.0.2")
    dns.add("16.15.168.192.joel.remote-users._spf.example.com", "A", "127.0.0.2")
    assert spf(dns, "203.0.113.9", sender="mary@example.com") == SpfResult.PASS
    assert spf(dns, "203.0.113.9", sender="fred+news@example.com") == SpfResult.PASS
    assert spf(dns, "203.0.113.9", sender="joel@example.com") == SpfResult.FAIL
    assert spf(dns, "192.168.15.15", sender="joel@example.com") == SpfResult.PASS
    assert spf(dns, "192.168.15.16", sender="joel@example.com") == SpfResult.PASS
    assert spf(dns, "192.168.15.17", sender="joel@example.com") == SpfResult.FAIL
    assert spf(dns, "192.0.2.129", sender="anyone@example.com") == SpfResult.PASS  # mx


def test_appendix_a4_dnsbl_style_exists() -> None:
    # RFC 7208 A.4: refuse clients listed in a DNSBL-like zone, allow everyone else.
    dns = appendix_a_zone()
    dns.add("example.com", "TXT", "v=spf1 -exists:%{ir}.bl.example.org +all")
    dns.add("4.3.2.1.bl.example.org", "A", "127.0.0.2")
    assert spf(dns, "1.2.3.4") == SpfResult.FAIL
    assert spf(dns, "1.2.3.5") == SpfResult.PASS


def test_appendix_a5_multiple_requirements() -> None:
    # RFC 7208 A.5: pass only a host both in 192.0.2.0/24 and with valid reverse DNS
    # in example.com; the negated includes invert the sub-policies.
    dns = appendix_a_zone()
    dns.add(
        "example.com",
        "TXT",
        "v=spf1 -include:ip4._spf.%{d} -include:ptr._spf.%{d} +all",
    )
    dns.add("ip4._spf.example.com", "TXT", "v=spf1 -ip4:192.0.2.0/24 +all")
    dns.add("ptr._spf.example.com", "TXT", "v=spf1 -ptr:example.com +all")
    assert spf(dns, "192.0.2.65") == SpfResult.PASS  # in range, amy.example.com
    assert spf(dns, "192.0.2.140") == SpfResult.FAIL  # in range, wrong reverse name
    assert spf(dns, "198.51.100.1") == SpfResult.FAIL  # out of range


# RFC 7208 7.4: sender strong-bad@email.example.com, client 192.0.2.3 / 2001:db8::cb01,
# validated PTR name mx.example.org.
MACRO_TABLE = {
    "%{s}": "strong-bad@email.example.com",
    "%{o}": "email.example.com",
    "%{d}": "email.example.com",
    "%{d4}": "email.example.com",
    "%{d3}": "email.example.com",
    "%{d2}": "example.com",
    "%{d1}": "com",
    "%{dr}": "com.example.email",
    "%{d2r}": "example.email",
    "%{l}": "strong-bad",
    "%{l-}": "strong.bad",
    "%{lr}": "strong-bad",
    "%{lr-}": "bad.strong",
    "%{l1r-}": "strong",
    "%{ir}.%{v}._spf.%{d2}": "3.2.0.192.in-addr._spf.example.com",
    "%{lr-}.lp._spf.%{d2}": "bad.strong.lp._spf.example.com",
    "%{lr-}.lp.%{ir}.%{v}._spf.%{d2}": "bad.strong.lp.3.2.0.192.in-addr._spf.example.com",
    "%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}": "3.2.0.192.in-addr.strong.lp._spf.example.com",
    "%{d2}.trusted-domains.example.net": "example.com.trusted-domains.example.net",
    "%{p}": "mx.example.org",
    "%%%_%-": "% %20",
    "%{S}": "strong-bad%40email.example.com",
}


def macro_zone() -> FakeResolver:
    dns = FakeResolver({"mx.example.org": {"A": ["192.0.2.3"], "AAAA": ["2001:db8::cb01"]}})
    dns.add_ptr("192.0.2.3", "mx.example.org.")
    dns.add_ptr("2001:db8::cb01", "mx.example.org.")
    return dns


@pytest.mark.parametrize(("macro", "expected"), MACRO_TABLE.items(), ids=list(MACRO_TABLE))
def test_rfc_7208_7_4_macro_examples(macro: str, expected: str) -> None:
    value = asyncio.run(
        expand_macros(
            macro_zone(),
            macro,
            ip="192.0.2.3",
            sender="strong-bad@email.example.com",
            domain="email.example.com",
        )
    )
    assert value == expected


def test_rfc_7208_7_4_ipv6_macro_example() -> None:
    value = asyncio.run(
        expand_macros(
            macro_zone(),
            "%{ir}.%{v}._spf.%{d2}",
            ip="2001:db8::cb01",
            sender="strong-bad@email.example.com",
            domain="email.example.com",
        )
    )
    assert value == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
    )


def test_explanation_only_macros_and_syntax_errors() -> None:
    async def expand(text: str, explanation: bool) -> str:
        return await expand_macros(
            FakeResolver(),
            text,
            ip="192.0.2.3",
            sender="a@b.example",
            domain="b.example",
            receiving_host="mx.us.test",
            now=lambda: 1700000000.0,
            explanation=explanation,
        )

    assert asyncio.run(expand("%{c} %{r} %{t}", True)) == "192.0.2.3 mx.us.test 1700000000"
    for bad, explanation in [("%{c}", False), ("%{x}", True), ("%{d0}", True), ("50%", True)]:
        with pytest.raises(ValueError):
            asyncio.run(expand(bad, explanation))


def test_exp_gives_an_explanation_on_fail_only() -> None:
    dns = FakeResolver(
        {
            "example.com": {"TXT": ["v=spf1 ip4:192.0.2.1 -all exp=explain._spf.%{d}"]},
            "explain._spf.example.com": {"TXT": ["%{i} is not one of %{d}'s hosts (%{c})"]},
        }
    )
    result, _reason, exp = asyncio.run(
        check_host(dns, "198.51.100.9", "example.com", "a@example.com")
    )
    assert (result, exp) == (
        SpfResult.FAIL,
        "198.51.100.9 is not one of example.com's hosts (198.51.100.9)",
    )
    result, _reason, exp = asyncio.run(check_host(dns, "192.0.2.1", "example.com", "a@example.com"))
    assert (result, exp) == (SpfResult.PASS, "")
    # A broken explanation never changes the result.
    dns.clear("explain._spf.example.com", "TXT")
    dns.add("explain._spf.example.com", "TXT", "bad %{z}")
    result, _reason, exp = asyncio.run(
        check_host(dns, "198.51.100.9", "example.com", "a@example.com")
    )
    assert (result, exp) == (SpfResult.FAIL, "")


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], SpfResult.NONE),
        (["not spf", "v=spf10 -all"], SpfResult.NONE),
        (["v=spf1 -all", "v=spf1 +all"], SpfResult.PERMERROR),  # RFC 7208 4.5
        (["v=spf1"], SpfResult.NEUTRAL),  # 4.7: nothing matched, no redirect
        (["V=SPF1 ?all"], SpfResult.NEUTRAL),
        (["v=spf1 ~all"], SpfResult.SOFTFAIL),
        (["v=spf1 -all"], SpfResult.FAIL),
        (["v=spf1 ip4:192.0.2.1 -all"], SpfResult.PASS),
        (["v=spf1 IP4:192.0.2.0/24 -ALL"], SpfResult.PASS),
        (["v=spf1 ip6:2001:db8::/32 -all"], SpfResult.FAIL),  # an IPv4 client
        (["v=spf1 ip4:192.0.2.1/33 -all"], SpfResult.PERMERROR),
        (["v=spf1 ip4:192.0.2.1/024 -all"], SpfResult.PERMERROR),
        (["v=spf1 ip4:192.0.2 -all"], SpfResult.PERMERROR),
        (["v=spf1 foo:bar -all"], SpfResult.PERMERROR),  # unknown mechanism
        (["v=spf1 -all foo:bar"], SpfResult.PERMERROR),  # syntax error after the match
        (["v=spf1 include -all"], SpfResult.PERMERROR),
        (["v=spf1 a:foo -all"], SpfResult.PERMERROR),  # domain-end needs a top label
        (["v=spf1 -all moo=bar"], SpfResult.FAIL),  # unknown modifiers are ignored
        (["v=spf1 -all moo=%{"], SpfResult.PERMERROR),
        (["v=spf1 redirect=a.example redirect=b.example"], SpfResult.PERMERROR),
        (["v=spf1 exp=a.example exp=b.example -all"], SpfResult.PERMERROR),
        (["v=spf1 redirect=nothing.example"], SpfResult.PERMERROR),  # 6.1: target has none
        (["v=spf1 include:nothing.example -all"], SpfResult.PERMERROR),  # 5.2: none
        (["v=spf1 ?all redirect=nothing.example"], SpfResult.NEUTRAL),  # 6.1: all wins
        (["v=spf1 ip4:192.0.2.1 -all", "some other TXT"], SpfResult.PASS),
    ],
)
def test_record_selection_and_syntax(records: list[str], expected: SpfResult) -> None:
    dns = FakeResolver({"example.com": {"TXT": records}})
    assert spf(dns, "192.0.2.1") == expected


def test_malformed_domains_are_none() -> None:
    dns = FakeResolver()
    for domain in ["localhost", "a..example", "x" * 64 + ".example", ""]:
        assert spf(dns, "192.0.2.1", domain) == SpfResult.NONE


def test_ipv6_client_and_ipv4_mapped() -> None:
    dns = FakeResolver(
        {
            "example.com": {"TXT": ["v=spf1 a ip4:192.0.2.0/24 -all"], "AAAA": ["2001:db8::1"]},
        }
    )
    assert spf(dns, "2001:db8::1") == SpfResult.PASS
    assert spf(dns, "2001:db8::2") == SpfResult.FAIL
    assert spf(dns, "::ffff:192.0.2.7") == SpfResult.PASS  # evaluated as 192.0.2.7


def test_dual_cidr_lengths() -> None:
    dns = FakeResolver(
        {
            "example.com": {
                "TXT": ["v=spf1 a/24//64 -all"],
                "A": ["192.0.2.1"],
                "AAAA": ["2001:db8:0:1::1"],
            }
        }
    )
    assert spf(dns, "192.0.2.200") == SpfResult.PASS
    assert spf(dns, "192.0.3.1") == SpfResult.FAIL
    assert spf(dns, "2001:db8:0:1:ffff::9") == SpfResult.PASS
    assert spf(dns, "2001:db8:0:2::1") == SpfResult.FAIL


# --------------------------------------------------------------------------- limits


def test_ten_dns_terms_are_allowed_eleven_are_permerror() -> None:
    # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect count; ip4/all do not.
    def zone(terms: int) -> FakeResolver:
        dns = FakeResolver()
        record = " ".join(f"a:h{i}.example.com" for i in range(terms - 1))
        dns.add(
            "example.com", "TXT", f"v=spf1 ip4:198.51.100.1 {record} include:last.example.com -all"
        )
        dns.add("last.example.com", "TXT", "v=spf1 ip4:192.0.2.1 -all")
        for i in range(terms):
            dns.add(f"h{i}.example.com", "A", "203.0.113.1")  # never void, never a match
        return dns

    assert spf(zone(10), "192.0.2.1") == SpfResult.PASS
    assert spf(zone(11), "192.0.2.1") == SpfResult.PERMERROR
    # Terms that are not reached are not counted.
    assert spf(zone(11), "198.51.100.1") == SpfResult.PASS


def test_lookup_limit_spans_includes_and_stops_loops() -> None:
    dns = FakeResolver(
        {
            "example.com": {"TXT": ["v=spf1 include:loop.example.com -all"]},
            "loop.example.com": {"TXT": ["v=spf1 include:example.com -all"]},
        }
    )
    assert spf(dns, "192.0.2.1") == SpfResult.PERMERROR
    assert len(dns.queries) <= 12


def test_void_lookup_limit() -> None:
    # RFC 7208 4.6.4: more than two lookups returning no records: permerror.
    dns = FakeResolver(
        {"example.com": {"TXT": ["v=spf1 a:v1.example.com a:v2.example.com ip4:192.0.2.1 -all"]}}
    )
    assert spf(dns, "192.0.2.1") == SpfResult.PASS  # two voids are fine
    dns.clear("example.com", "TXT")
    dns.add(
        "example.com",
        "TXT",
        "v=spf1 a:v1.example.com mx:v2.example.com exists:v3.example.com ip4:192.0.2.1 -all",
    )
    assert spf(dns, "192.0.2.1") == SpfResult.PERMERROR


def test_more_than_ten_mx_names_is_permerror() -> None:
    dns = FakeResolver({"example.com": {"TXT": ["v=spf1 mx -all"]}})
    for i in range(11):
        dns.add("example.com", "MX", f"{i} mx{i}.example.com.")
    dns.add("mx0.example.com", "A", "192.0.2.1")
    assert spf(dns, "192.0.2.1") == SpfResult.PERMERROR


def test_ptr_uses_at_most_ten_names() -> None:
    dns = FakeResolver({"example.com": {"TXT": ["v=spf1 ptr -all"]}})
    for i in range(11):
        dns.add_ptr("192.0.2.1", f"h{i}.other.test.")
        dns.add(f"h{i}.other.test", "A", "192.0.2.1")
    dns.add_ptr("192.0.2.1", "mail.example.com.")
    dns.add("mail.example.com", "A", "192.0.2.1")
    assert spf(dns, "192.0.2.1") == SpfResult.FAIL  # the 12th name is never looked at
    assert ("mail.example.com", "A") not in dns.queries


# --------------------------------------------------------------------------- DNS failures


def test_dns_failures_are_temperror_never_pass() -> None:
    dns = FakeResolver({"example.com": {"TXT": ["v=spf1 include:inc.example.com +all"]}})
    dns.fail("example.com", "TXT")
    assert spf(dns, "192.0.2.1") == SpfResult.TEMPERROR
    dns.clear("example.com", "TXT")
    dns.add("example.com", "TXT", "v=spf1 include:inc.example.com +all")
    dns.fail("inc.example.com", "TXT")
    assert spf(dns, "192.0.2.1") == SpfResult.TEMPERROR  # include's temperror propagates
    dns = FakeResolver({"example.com": {"TXT": ["v=spf1 mx a exists:x.example.com -all"]}})
    dns.fail("example.com", "MX")
    assert spf(dns, "192.0.2.1") == SpfResult.TEMPERROR


def test_ptr_dns_errors_are_no_match() -> None:
    # RFC 7208 5.5: a DNS error in the PTR lookup makes ptr not match.
    dns = FakeResolver({"example.com": {"TXT": ["v=spf1 ptr ?all"]}})
    dns.fail("1.2.0.192.in-addr.arpa", "PTR")
    assert spf(dns, "192.0.2.1") == SpfResult.NEUTRAL


# --------------------------------------------------------------------------- identities


def test_mailfrom_and_helo_identities() -> None:
    dns = FakeResolver(
        {
            "example.com": {"TXT": ["v=spf1 ip4:192.0.2.1 -all"]},
            "mx.example.com": {"TXT": ["v=spf1 a -all"], "A": ["192.0.2.1"]},
        }
    )
    out = asyncio.run(check_mailfrom(dns, "192.0.2.1", "Alice@Example.COM", "mx.example.com"))
    assert (out.result, out.identity, out.domain) == (SpfResult.PASS, "mailfrom", "example.com")
    # RFC 7208 2.4: the null reverse-path is checked as postmaster@<HELO>.
    out = asyncio.run(check_mailfrom(dns, "192.0.2.1", "", "mx.example.com"))
    assert (out.result, out.identity, out.sender) == (
        SpfResult.PASS,
        "helo",
        "postmaster@mx.example.com",
    )
    out = asyncio.run(check_helo(dns, "198.51.100.1", "mx.example.com"))
    assert (out.result, out.domain) == (SpfResult.FAIL, "mx.example.com")
    for helo in ["[192.0.2.1]", "192.0.2.1", "localhost", ""]:
        assert asyncio.run(check_helo(dns, "192.0.2.1", helo)).result == SpfResult.NONE
