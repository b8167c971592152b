"""DNS blocklists (spam/blocklists.py, RFC 5782) against a real DNS server on loopback
(mailward.testing.dns_server.TestDns) serving test zones: what counts as listed, the
query names for IPv4, IPv6 and domains, failures, and addresses never asked about."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from mailward.config.schema import parse_zone as parse_config_zone
from mailward.spam.blocklists import (
    Blocklists,
    Zone,
    domain_query_name,
    ip_query_name,
    parse_zone,
)
from mailward.testing.dns_server import TestDns


@pytest.fixture(scope="module")
def dns() -> Iterator[TestDns]:
    with TestDns() as server:
        server.add_zone("bl.test")
        server.add_zone("rhs.test")
        server.add("2.0.0.127.bl.test", "A", "127.0.0.2")  # RFC 5782 5 test entry
        server.add("9.69.2.81.bl.test", "A", "127.0.0.4", "127.0.0.10")
        nibbles = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.5.4.1.0.0.a.2"
        server.add(f"{nibbles}.bl.test", "A", "127.0.0.3")
        # Not listings: an advertising address, and Spamhaus's "refused" code.
        server.add("10.69.2.81.bl.test", "A", "198.51.100.1")
        server.add("11.69.2.81.bl.test", "A", "127.255.255.254")
        server.add("spammer.test.rhs.test", "A", "127.0.0.2")
        server.add_zone("broken.test")
        server.fail("9.69.2.81.broken.test", "A")
        yield server


def lists(dns: TestDns, dnsbl: list[str], rhsbl: list[str] = ()) -> Blocklists:  # type: ignore[assignment]
    return Blocklists(
        dns.resolver(timeout=2.0),
        dnsbl=[parse_zone(z, 5.0) for z in dnsbl],
        rhsbl=[parse_zone(z, 4.0) for z in rhsbl],
        timeout=3.0,
    )


def test_query_names() -> None:
    assert ip_query_name("81.2.69.9", "bl.test") == "9.69.2.81.bl.test"
    assert ip_query_name("::ffff:81.2.69.9", "bl.test") == "9.69.2.81.bl.test"
    assert ip_query_name("2001:db8::1", "bl.test") is None  # documentation range: not global
    assert ip_query_name("2a00:1450::1", "bl.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.5.4.1.0.0.a.2.bl.test"
    )
    assert ip_query_name("10.1.2.3", "bl.test") is None
    assert ip_query_name("192.168.1.1", "bl.test") is None
    assert ip_query_name("127.0.0.2", "bl.test") == "2.0.0.127.bl.test"
    assert ip_query_name("not an ip", "bl.test") is None
    assert domain_query_name("Spammer.Test.", "rhs.test") == "spammer.test.rhs.test"
    assert domain_query_name("localhost", "rhs.test") is None
    assert domain_query_name("[192.0.2.1]", "rhs.test") is None
    assert domain_query_name("192.0.2.1", "rhs.test") is None
    assert domain_query_name("a" * 70 + ".test", "rhs.test") is None


def test_zone_specs() -> None:
    assert parse_zone("zen.spamhaus.org", 5.0) == Zone("zen.spamhaus.org", 5.0)
    assert parse_zone(" Bl.Test.=2.5", 5.0) == Zone("bl.test", 2.5)
    for bad in ("", "bl test", "bl..test", "bl.test=lots", "bl.test=inf", "bl.test=nan"):
        with pytest.raises(ValueError):
            parse_config_zone(bad, 1.0)


def test_listed_loopback_test_entry_and_codes(dns: TestDns) -> None:
    found, failed = asyncio.run(lists(dns, ["bl.test=6"]).check("127.0.0.2", []))
    assert failed == []
    assert [(x.zone, x.subject, x.codes, x.score) for x in found] == [
        ("bl.test", "127.0.0.2", ("127.0.0.2",), 6.0)
    ]
    found, _ = asyncio.run(lists(dns, ["bl.test"]).check("81.2.69.9", []))
    assert found[0].codes == ("127.0.0.10", "127.0.0.4")


def test_ipv6_is_looked_up_by_nibbles(dns: TestDns) -> None:
    found, failed = asyncio.run(lists(dns, ["bl.test"]).check("2a00:1450::1", []))
    assert [(x.subject, x.codes) for x in found] == [("2a00:1450::1", ("127.0.0.3",))]
    assert failed == []


def test_not_listed_unlisted_ip_foreign_answers_and_refusals(dns: TestDns) -> None:
    bl = lists(dns, ["bl.test"])
    for ip in ("81.2.69.8", "81.2.69.10", "81.2.69.11", "127.0.0.1"):
        found, failed = asyncio.run(bl.check(ip, []))
        assert (found, failed) == ([], []), ip


def test_private_addresses_are_never_asked_about(dns: TestDns) -> None:
    dns.clear_queries()
    found, _ = asyncio.run(lists(dns, ["bl.test"]).check("10.0.0.5", []))
    assert found == [] and not any("bl.test" in q for q, _t in dns.queries)


def test_domains_in_rhsbl(dns: TestDns) -> None:
    bl = lists(dns, [], ["rhs.test=3"])
    found, _ = asyncio.run(bl.check("81.2.69.8", ["spammer.test", "SPAMMER.test.", "ok.test"]))
    assert [(x.subject, x.score) for x in found] == [("spammer.test", 3.0)]


def test_a_failing_list_is_reported_not_listed(dns: TestDns) -> None:
    found, failed = asyncio.run(lists(dns, ["broken.test", "bl.test"]).check("81.2.69.9", []))
    assert [x.zone for x in found] == ["bl.test"]
    assert failed == [("broken.test", "81.2.69.9")]
