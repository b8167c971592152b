"""mailward.testing.unbound.TestUnbound: Debian's unbound validating TestDns zones.

What DANE (RFC 7672 2.2) needs shown: AD=1 only for data that validates from a
trust anchor (RFC 4035 5), AD=0 for unsigned zones, and bogus data (RFC 4035 5.5)
never returned: SERVFAIL, which `DnsResolver` turns into `DnsTemporaryError`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from mailward.resolver import Answer, DnsTemporaryError
from mailward.testing.dns_server import TestDns
from mailward.testing.unbound import TestUnbound, UnboundError, unbound_available

pytestmark = pytest.mark.skipif(
    not unbound_available(), reason="unbound is not installed: run scripts/install-test-deps"
)

DIGEST = bytes(range(32))


@pytest.fixture
def testdns() -> Iterator[TestDns]:
    with TestDns() as server:
        server.add("example.test", "MX", "10 mx.example.test.")
        server.add("mx.example.test", "A", "192.0.2.1")
        server.add("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {DIGEST.hex()}")
        server.add("plain.test", "MX", "10 mx.plain.test.")
        server.add("_25._tcp.mx.plain.test", "TLSA", f"3 1 1 {DIGEST.hex()}")
        server.sign("example.test")
        yield server


@pytest.fixture
def unbound(testdns: TestDns) -> Iterator[TestUnbound]:
    with TestUnbound(testdns) as resolver:
        yield resolver


def test_signed_zone_is_authenticated(unbound: TestUnbound) -> None:
    records, authenticated = asyncio.run(unbound.resolver().tlsa("_25._tcp.mx.example.test"))
    assert [(r.usage, r.selector, r.mtype, r.data) for r in records] == [(3, 1, 1, DIGEST)]
    assert authenticated is True


def test_unsigned_zone_is_not_authenticated(unbound: TestUnbound) -> None:
    records, authenticated = asyncio.run(unbound.resolver().tlsa("_25._tcp.mx.plain.test"))
    assert len(records) == 1
    assert authenticated is False


def test_denial_in_a_signed_zone_is_authenticated(unbound: TestUnbound) -> None:
    async def main() -> tuple[Answer, Answer, Answer]:
        resolver = unbound.resolver()
        return (
            await resolver.query("_25._tcp.nothing.example.test", "TLSA"),  # NXDOMAIN
            await resolver.query("mx.example.test", "TLSA"),  # NODATA
            await resolver.query("_25._tcp.nothing.plain.test", "TLSA"),  # unsigned
        )

    assert asyncio.run(main()) == (Answer((), True), Answer((), True), Answer((), False))


def test_tampered_data_is_never_returned(testdns: TestDns, unbound: TestUnbound) -> None:
    testdns.tamper("_25._tcp.mx.example.test", "TLSA", f"3 1 1 {'ee' * 32}")
    with pytest.raises(DnsTemporaryError):
        asyncio.run(unbound.resolver().tlsa("_25._tcp.mx.example.test"))
    assert "validation failure" in unbound.log_text()  # val-log-level: 2 says why
    # Signing again (any change does) makes it good again, at once.
    testdns.add("other.example.test", "A", "192.0.2.2")
    records, authenticated = asyncio.run(unbound.resolver().tlsa("_25._tcp.mx.example.test"))
    assert records[0].data == DIGEST and authenticated


def test_stripped_signatures_are_bogus(testdns: TestDns) -> None:
    """The zone's data served without DNSKEY/RRSIG/NSEC while the resolver holds its
    trust anchor (a downgrade attack) is bogus, not insecure (harden-dnssec-stripped)."""
    with TestDns() as stripped:
        stripped.load_zone("example.test", testdns.zone_text("example.test"))
        anchors = testdns.trust_anchors
        with (
            TestUnbound(stripped, trust_anchors=anchors) as unbound,
            pytest.raises(DnsTemporaryError),
        ):
            asyncio.run(unbound.resolver().mx("example.test"))


def test_wrong_trust_anchor_is_bogus(testdns: TestDns) -> None:
    with TestDns() as other:
        other.add("example.test", "A", "192.0.2.1")
        wrong = other.sign("example.test")  # other keys
    with TestUnbound(testdns, trust_anchors={"example.test": wrong}) as unbound:
        with pytest.raises(DnsTemporaryError):
            asyncio.run(unbound.resolver().mx("example.test"))
        # The unsigned zone is unaffected.
        assert asyncio.run(unbound.resolver().mx("plain.test")) == [(10, "mx.plain.test")]


def test_server_failure_behind_unbound_is_temporary(testdns: TestDns, unbound: TestUnbound) -> None:
    testdns.fail("example.test", "MX")
    with pytest.raises(DnsTemporaryError):
        asyncio.run(unbound.resolver().mx("example.test"))


def test_changes_are_seen_at_once(testdns: TestDns, unbound: TestUnbound) -> None:
    resolver = unbound.resolver()
    assert asyncio.run(resolver.mx("plain.test")) == [(10, "mx.plain.test")]
    assert asyncio.run(resolver.txt("new.plain.test")) == []
    testdns.set("plain.test", "MX", "20 other.plain.test.")
    testdns.add("new.plain.test", "TXT", "now here")
    testdns.add("new.example.test", "TXT", "signed too")
    assert asyncio.run(resolver.mx("plain.test")) == [(20, "other.plain.test")]
    assert asyncio.run(resolver.txt("new.plain.test")) == ["now here"]
    assert asyncio.run(resolver.query("new.example.test", "TXT")) == Answer(("signed too",), True)
    unbound.flush()  # works too


def test_names_outside_the_test_zones_are_refused(unbound: TestUnbound) -> None:
    with pytest.raises(DnsTemporaryError):
        asyncio.run(unbound.resolver(timeout=5.0).addresses("www.example.com"))


def test_zones_added_later_need_a_restart(testdns: TestDns, unbound: TestUnbound) -> None:
    port = unbound.port
    testdns.add("later.test", "TXT", "late")
    testdns.sign("later.test")
    unbound.restart()
    assert unbound.port == port
    answer = asyncio.run(unbound.resolver().query("later.test", "TXT"))
    assert answer == Answer(("late",), True)


def test_reverse_zones_resolve(testdns: TestDns) -> None:
    testdns.add("1.2.0.192.in-addr.arpa", "PTR", "mx.example.test.")
    testdns.add("1.0.0.127.in-addr.arpa", "PTR", "loopback.example.test.")
    with TestUnbound(testdns) as unbound:

        async def main() -> tuple[list[str], list[str]]:
            resolver = unbound.resolver()
            return await resolver.ptr("192.0.2.1"), await resolver.ptr("127.0.0.1")

        # (not unbound's built-in answers for these RFC 5737 / loopback networks)
        assert asyncio.run(main()) == (["mx.example.test"], ["loopback.example.test"])


def test_zones_inside_zones(testdns: TestDns) -> None:
    """A signed parent with an unsigned and a signed zone below it (each its own trust
    anchor or domain-insecure): the MX host of a DANE test may sit in either."""
    testdns.add_zone("insecure.example.test")
    testdns.add("mx.insecure.example.test", "A", "192.0.2.5")
    testdns.add_zone("secure.example.test")
    testdns.add("mx.secure.example.test", "A", "192.0.2.6")
    testdns.sign("secure.example.test")
    with TestUnbound(testdns) as unbound:

        async def main() -> list[Answer]:
            resolver = unbound.resolver()
            return [
                await resolver.query(name, "A")
                for name in (
                    "mx.example.test",
                    "mx.insecure.example.test",
                    "mx.secure.example.test",
                )
            ]

        assert asyncio.run(main()) == [
            Answer(("192.0.2.1",), True),
            Answer(("192.0.2.5",), False),
            Answer(("192.0.2.6",), True),
        ]


def test_only_the_chosen_zones(testdns: TestDns) -> None:
    with TestUnbound(testdns, zones=["example.test"]) as unbound:
        resolver = unbound.resolver()
        assert asyncio.run(resolver.mx("example.test")) == [(10, "mx.example.test")]
        # Not sent to TestDns: unbound answers from its own "test." zone (RFC 6761).
        assert asyncio.run(resolver.mx("plain.test")) == []
        assert testdns.count("plain.test") == 0


def test_no_process_or_directory_left_behind(testdns: TestDns) -> None:
    unbound = TestUnbound(testdns)
    with pytest.raises(RuntimeError, match="boom"), unbound:
        pid = unbound._process.pid if unbound._process else 0
        directory = unbound.directory
        assert pid and directory is not None and directory.exists()
        raise RuntimeError("boom")
    assert unbound._process is None
    assert not directory.exists()
    assert not _alive(pid)


def test_kept_directory(testdns: TestDns, tmp_path: os.PathLike[str]) -> None:
    with TestUnbound(testdns, directory=tmp_path) as unbound:
        assert unbound.config_path.parent == tmp_path
        config = unbound.config_path.read_text()
    assert 'trust-anchor: "example.test. DS ' in config
    assert 'domain-insecure: "plain.test."' in config
    assert (tmp_path / "unbound.log").exists()  # kept for reading after the test


def test_bad_extra_config_is_reported(testdns: TestDns) -> None:
    with pytest.raises(UnboundError, match="checkconf"):
        TestUnbound(testdns, extra_config=["no-such-option: yes"]).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie would still answer kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
