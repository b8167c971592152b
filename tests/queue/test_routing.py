"""MX selection (queue.routing) against a real DNS server on loopback (TestDns):
RFC 5321 5.1 preference order, implicit MX, RFC 7505 null MX, odd MX data."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest

from mailward.queue.routing import (
    MxHost,
    RouteError,
    dns_domain,
    find_route,
    host_addresses,
    smarthost_route,
)
from mailward.testing.dns_server import TestDns


@pytest.fixture
def dns() -> Iterator[TestDns]:
    with TestDns() as server:
        yield server


def route(dns: TestDns, domain: str, seed: int = 0) -> list[str]:
    found = asyncio.run(find_route(domain, dns.resolver(timeout=2), random.Random(seed)))
    return [h.name for h in found.hosts]


def test_mx_by_preference_equal_ones_shuffled(dns: TestDns) -> None:
    dns.add("remote.test", "MX", "20 c.remote.test.", "10 b.remote.test.", "10 a.remote.test.")
    dns.add("remote.test", "MX", "30 d.remote.test.")
    orders = {tuple(route(dns, "remote.test", seed)) for seed in range(20)}
    assert orders == {
        ("a.remote.test", "b.remote.test", "c.remote.test", "d.remote.test"),
        ("b.remote.test", "a.remote.test", "c.remote.test", "d.remote.test"),
    }


def test_implicit_mx_when_no_mx_record(dns: TestDns) -> None:
    dns.add("plain.test", "A", "192.0.2.7")
    found = asyncio.run(find_route("Plain.Test", dns.resolver(timeout=2)))
    assert found.implicit and [h.name for h in found.hosts] == ["plain.test"]


def test_null_mx_is_a_permanent_failure(dns: TestDns) -> None:
    dns.add("nomail.test", "MX", "0 .")
    dns.add("nomail.test", "A", "192.0.2.8")  # no fallback to the address (RFC 7505 3)
    with pytest.raises(RouteError) as err:
        route(dns, "nomail.test")
    assert err.value.permanent and err.value.status == "5.1.10"


def test_no_mx_no_address_is_permanent(dns: TestDns) -> None:
    dns.add("other.test", "TXT", "exists")
    with pytest.raises(RouteError) as err:
        route(dns, "nowhere.other.test")
    assert err.value.permanent and err.value.status == "5.1.2"


def test_servfail_is_temporary(dns: TestDns) -> None:
    dns.add("flaky.test", "MX", "10 mx.flaky.test.")
    dns.fail("flaky.test", "MX")
    with pytest.raises(RouteError) as err:
        route(dns, "flaky.test")
    assert not err.value.permanent and err.value.status == "4.4.3"


def test_mx_pointing_at_ip_and_cname(dns: TestDns) -> None:
    dns.add("odd.test", "MX", "10 alias.odd.test.")
    dns.add("alias.odd.test", "CNAME", "real.odd.test.")
    dns.add("real.odd.test", "A", "192.0.2.9")
    resolver = dns.resolver(timeout=2)
    found = asyncio.run(find_route("odd.test", resolver))
    assert asyncio.run(host_addresses(found.hosts[0], resolver)) == ["192.0.2.9"]
    ip_mx = MxHost("192.0.2.10", 10, "192.0.2.10")
    assert asyncio.run(host_addresses(ip_mx, resolver)) == ["192.0.2.10"]


def test_address_literal_domain(dns: TestDns) -> None:
    found = asyncio.run(find_route("[192.0.2.11]", dns.resolver(timeout=2)))
    assert found.hosts[0].literal == "192.0.2.11"
    v6 = asyncio.run(find_route("[IPv6:2001:db8::1]", dns.resolver(timeout=2)))
    assert v6.hosts[0].literal == "2001:db8::1"
    with pytest.raises(RouteError):
        asyncio.run(find_route("[not-an-ip]", dns.resolver(timeout=2)))


def test_idn_domain() -> None:
    assert dns_domain("bücher.example") == "xn--bcher-kva.example"
    assert dns_domain("Example.ORG.") == "example.org"


def test_smarthost_spec() -> None:
    assert smarthost_route("relay.example:587") == ("relay.example", 587)
    assert smarthost_route("relay.example") == ("relay.example", 25)
    assert smarthost_route("[2001:db8::1]:465") == ("2001:db8::1", 465)
    for bad in ("", ":25", "relay:0", "relay:x"):
        with pytest.raises(ValueError):
            smarthost_route(bad)
