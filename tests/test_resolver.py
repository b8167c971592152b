"""mailward.resolver.DnsResolver against a real DNS server on loopback (TestDns).

What callers rely on: TXT strings joined (RFC 7208 3.3), MX sorted with the trailing
dot gone, NXDOMAIN / NODATA / impossible names as empty answers, SERVFAIL, REFUSED and
silence as DnsTemporaryError (a tempfail, never a pass), truncated UDP answers
retried over TCP (RFC 7766), and `dns.resolvers` parsing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from mailward.config.schema import parse_nameservers
from mailward.resolver import Answer, DnsResolver, DnsTemporaryError, TlsaRecord
from mailward.testing.dns_server import MAX_UDP_PAYLOAD, TestDns

# Generous for a loaded 2-core machine; the point is "it does not hang".
HANG_BOUND = 20.0


@pytest.fixture
def testdns() -> Iterator[TestDns]:
    with TestDns() as server:
        yield server


@pytest.fixture
def resolver(testdns: TestDns) -> DnsResolver:
    return DnsResolver([testdns.address], timeout=5.0)


def test_txt_joins_the_strings_of_each_record(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("example.test", "TXT", ("v=spf1 ip4:192.0.2.1", " -all"))
    testdns.add("example.test", "TXT", "google-site-verification=abc")
    assert sorted(asyncio.run(resolver.txt("example.test"))) == [
        "google-site-verification=abc",
        "v=spf1 ip4:192.0.2.1 -all",
    ]


def test_long_txt_is_split_and_joined_back(testdns: TestDns, resolver: DnsResolver) -> None:
    key = "v=DKIM1; k=rsa; p=" + "A" * 700
    testdns.add("sel._domainkey.example.test", "TXT", key)
    (text,) = testdns.records("sel._domainkey.example.test", "TXT")
    assert text.count('"') == 2 * 3  # three character-strings of <= 255 octets
    assert asyncio.run(resolver.txt("sel._domainkey.example.test")) == [key]


def test_txt_is_utf8_decoded(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("example.test", "TXT", "caf\u00e9")
    assert asyncio.run(resolver.txt("example.test")) == ["caf\u00e9"]


def test_mx_sorted_by_preference_without_the_trailing_dot(
    testdns: TestDns, resolver: DnsResolver
) -> None:
    testdns.add("example.test", "MX", "20 MX2.Example.Test.", "10 mx1.example.test", "30 .")
    assert asyncio.run(resolver.mx("example.test")) == [
        (10, "mx1.example.test"),
        (20, "mx2.example.test"),
        (30, ""),
    ]


def test_addresses_a_then_aaaa(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("host.example.test", "A", "192.0.2.1", "192.0.2.2")
    testdns.add("host.example.test", "AAAA", "2001:db8::1")
    addresses = asyncio.run(resolver.addresses("host.example.test"))
    # The IPv4 ones first; within an RRset the order is the server's (RFC 2181 5).
    assert sorted(addresses[:2]) == ["192.0.2.1", "192.0.2.2"]
    assert addresses[2:] == ["2001:db8::1"]


def test_addresses_follow_a_cname(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("www.example.test", "CNAME", "host.example.test.")
    testdns.add("host.example.test", "A", "192.0.2.1")
    assert asyncio.run(resolver.addresses("www.example.test")) == ["192.0.2.1"]


def test_ptr_v4_and_v6(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("1.2.0.192.in-addr.arpa", "PTR", "Mail.Example.Test.")
    testdns.add(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        "PTR",
        "mail6.example.test.",
    )

    async def main() -> tuple[list[str], list[str], list[str]]:
        return (
            await resolver.ptr("192.0.2.1"),
            await resolver.ptr("2001:db8::1"),
            await resolver.ptr("192.0.2.99"),
        )

    assert asyncio.run(main()) == (["mail.example.test"], ["mail6.example.test"], [])


def test_tlsa_parsed(testdns: TestDns, resolver: DnsResolver) -> None:
    digest = bytes(range(32))
    full = bytes(range(256)) * 2  # long enough to be written in several hex chunks
    testdns.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {digest.hex()}")
    testdns.add("_25._tcp.mx.example.test", "TLSA", f"2 0 0 {full.hex()}")
    records, authenticated = asyncio.run(resolver.tlsa("_25._tcp.mx.example.test"))
    assert sorted(records, key=lambda r: r.usage) == [
        TlsaRecord(2, 0, 0, full),
        TlsaRecord(3, 1, 1, digest),
    ]
    assert authenticated is False  # an authoritative server does not set AD


def test_nxdomain_and_nodata_are_empty(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    testdns.add("x._domainkey.example.test", "TXT", "v=DKIM1; p=")

    async def main() -> list[Answer]:
        return [
            await resolver.query("nothing.example.test", "TXT"),  # NXDOMAIN
            await resolver.query("example.test", "TXT"),  # NODATA
            await resolver.query("_domainkey.example.test", "TXT"),  # empty non-terminal
        ]

    assert asyncio.run(main()) == [Answer(()), Answer(()), Answer(())]
    assert asyncio.run(resolver.mx("nothing.example.test")) == []
    assert asyncio.run(resolver.tlsa("_25._tcp.nothing.example.test")) == ([], False)


@pytest.mark.parametrize(
    "name",
    ["a..example.test", "x" * 64 + ".example.test", ".".join(["abcdefghi"] * 30)],
    ids=["empty-label", "long-label", "long-name"],
)
def test_impossible_names_are_empty_without_asking(
    testdns: TestDns, resolver: DnsResolver, name: str
) -> None:
    assert asyncio.run(resolver.txt(name)) == []
    assert testdns.queries == []


def test_unknown_type_is_a_programming_error(resolver: DnsResolver) -> None:
    with pytest.raises(Exception) as info:
        asyncio.run(resolver.query("example.test", "NOSUCHTYPE"))
    assert not isinstance(info.value, DnsTemporaryError)


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_server_failure_is_temporary(testdns: TestDns, resolver: DnsResolver, rcode: str) -> None:
    testdns.add("example.test", "TXT", "v=spf1 -all")
    testdns.fail("example.test", "TXT", rcode=rcode)
    with pytest.raises(DnsTemporaryError):
        asyncio.run(resolver.txt("example.test"))
    # Only that type fails.
    testdns.add("example.test", "MX", "10 mx.example.test.")
    assert asyncio.run(resolver.mx("example.test")) == [(10, "mx.example.test")]


def test_failure_for_every_type_of_a_name(testdns: TestDns, resolver: DnsResolver) -> None:
    testdns.add("host.example.test", "A", "192.0.2.1")
    testdns.fail("host.example.test")
    with pytest.raises(DnsTemporaryError):
        asyncio.run(resolver.addresses("host.example.test"))
    testdns.clear_faults("host.example.test")
    assert asyncio.run(resolver.addresses("host.example.test")) == ["192.0.2.1"]


def test_a_name_outside_the_servers_zones_is_refused(resolver: DnsResolver) -> None:
    with pytest.raises(DnsTemporaryError):
        asyncio.run(resolver.txt("example.org"))


def test_silence_raises_within_the_timeout(testdns: TestDns) -> None:
    testdns.add("slow.example.test", "TXT", "never seen")
    testdns.drop("slow.example.test")
    resolver = DnsResolver([testdns.address], timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError, match="timeout"):
        asyncio.run(resolver.txt("slow.example.test"))
    assert time.monotonic() - started < HANG_BOUND
    assert testdns.count("slow.example.test", "TXT") >= 1


def test_nobody_listening_is_temporary() -> None:
    with TestDns() as gone:
        address = gone.address
    resolver = DnsResolver([address], timeout=1.0)
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError):
        asyncio.run(resolver.txt("example.test"))
    assert time.monotonic() - started < HANG_BOUND


def test_truncated_udp_answer_is_retried_over_tcp(testdns: TestDns, resolver: DnsResolver) -> None:
    values = [f"record {i:02d} " + "x" * 200 for i in range(12)]
    testdns.add("big.example.test", "TXT", *values)
    assert sum(len(v) for v in values) > MAX_UDP_PAYLOAD
    assert sorted(asyncio.run(resolver.txt("big.example.test"))) == values
    # Asked twice: over UDP (TC=1, empty), then over TCP.
    assert testdns.count("big.example.test", "TXT") == 2


def test_concurrent_queries_share_one_resolver(testdns: TestDns, resolver: DnsResolver) -> None:
    for i in range(50):
        testdns.add(f"h{i}.example.test", "A", f"192.0.2.{i + 1}")

    async def main() -> list[list[str]]:
        return list(
            await asyncio.gather(*(resolver.addresses(f"h{i}.example.test") for i in range(50)))
        )

    assert asyncio.run(main()) == [[f"192.0.2.{i + 1}"] for i in range(50)]


def test_resolver_takes_several_servers(testdns: TestDns) -> None:
    testdns.add("example.test", "TXT", "hello")
    with TestDns() as broken:
        broken.fail("example.test")
        resolver = DnsResolver([broken.address, testdns.address], timeout=5.0)
        assert asyncio.run(resolver.txt("example.test")) == ["hello"]


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("192.0.2.53", ("192.0.2.53", 53)),
        (" 192.0.2.53 ", ("192.0.2.53", 53)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[::1]:53", ("::1", 53)),
        ("[2001:db8::53]:5300", ("2001:db8::53", 5300)),
        ("[::1]", ("::1", 53)),
    ],
)
def test_parse_nameservers(spec: str, parsed: tuple[str, int]) -> None:
    assert parse_nameservers([spec]) == [parsed]


def test_parse_nameservers_keeps_order() -> None:
    assert parse_nameservers(["127.0.0.1:5353", "[::1]:53"]) == [
        ("127.0.0.1", 5353),
        ("::1", 53),
    ]


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "resolver.example.test",
        "resolver.example.test:53",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:dns",
        "127.0.0.1:",
        ":53",
        "256.0.0.1",
        "[::1]:x",
        "[::1]:70000",
    ],
)
def test_parse_nameservers_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_nameservers([spec])
    with pytest.raises(ValueError):
        DnsResolver([spec])


@pytest.mark.parametrize("spec", ["[::1", "[::1]53"])
def test_parse_nameservers_rejects_bad_brackets(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_nameservers([spec])


# --------------------------------------------------------------------------- the cache


def test_cached_answers_nodata_and_nxdomain_are_not_asked_again(testdns: TestDns) -> None:
    testdns.add("example.test", "TXT", "v=spf1 -all")
    cached = DnsResolver([testdns.address], timeout=5.0, cache_max_ttl=300.0)

    async def twice(name: str, rdtype: str) -> list[Answer]:
        return [await cached.query(name, rdtype), await cached.query(name, rdtype)]

    first, second = asyncio.run(twice("example.test", "TXT"))
    assert first == second == Answer(("v=spf1 -all",))
    asyncio.run(twice("example.test", "MX"))  # NODATA
    asyncio.run(twice("nothing.example.test", "TXT"))  # NXDOMAIN
    assert testdns.count("example.test", "TXT") == 1
    assert testdns.count("example.test", "MX") == 1
    assert testdns.count("nothing.example.test", "TXT") == 1
    # Without a cache every query goes out.
    plain = DnsResolver([testdns.address], timeout=5.0)
    asyncio.run(plain.query("example.test", "TXT"))
    asyncio.run(plain.query("example.test", "TXT"))
    assert testdns.count("example.test", "TXT") == 3


def test_cached_answers_expire_at_the_cap(testdns: TestDns) -> None:
    testdns.add("example.test", "TXT", "old")  # TTL 60, capped at 0.2 s
    cached = DnsResolver([testdns.address], timeout=5.0, cache_max_ttl=0.2)
    assert asyncio.run(cached.txt("example.test")) == ["old"]
    testdns.set("example.test", "TXT", "new")
    assert asyncio.run(cached.txt("example.test")) == ["old"]  # still cached
    deadline = time.monotonic() + HANG_BOUND
    while asyncio.run(cached.txt("example.test")) != ["new"]:
        assert time.monotonic() < deadline, "the cached answer never expired"
        time.sleep(0.05)


def test_failures_are_not_cached(testdns: TestDns) -> None:
    testdns.add("example.test", "TXT", "v=spf1 -all")
    testdns.fail("example.test", "TXT")
    cached = DnsResolver([testdns.address], timeout=5.0, cache_max_ttl=300.0)
    with pytest.raises(DnsTemporaryError):
        asyncio.run(cached.txt("example.test"))
    testdns.clear_faults()
    assert asyncio.run(cached.txt("example.test")) == ["v=spf1 -all"]
