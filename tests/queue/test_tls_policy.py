"""Outbound TLS policy (queue/tls_policy.py): which policy applies (RFC 7672 DANE,
RFC 8461 MTA-STS, require_tls, RFC 7435), and `check_peer` after real TLS handshakes
on loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from mailward.queue import dane
from mailward.queue.mta_sts import MtaStsCache
from mailward.queue.tls_policy import (
    DnsTemporaryError,
    PolicyError,
    TlsPolicy,
    check_peer,
    client_context,
    select_policy,
)
from mailward.resolver import Resolver, TlsaRecord
from mailward.testing.fake_dns import FakeResolver
from tests.queue.tls_fixtures import Issued, Pki, tls_server, write_server_files

DOMAIN = "example.test"
MX1, MX2 = "mx1.example.test", "mx2.example.test"
DIGEST = "ab" * 32
STS_ENFORCE = "version: STSv1\nmode: enforce\nmx: *.example.test\nmax_age: 86400\n"
STS_TESTING = STS_ENFORCE.replace("enforce", "testing")


def zone(*mx: str, secure_mx: bool = True) -> FakeResolver:
    dns = FakeResolver()
    for i, host in enumerate(mx):
        dns.add(DOMAIN, "MX", f"{10 * (i + 1)} {host}.")
    if secure_mx:
        dns.authenticated.add((DOMAIN, "MX"))
    return dns


def tlsa(
    dns: FakeResolver, host: str, value: str = f"3 1 1 {DIGEST}", *, secure: bool = True
) -> None:
    name = f"_25._tcp.{host}"
    dns.add(name, "TLSA", value)
    if secure:
        dns.authenticated.add((name, "TLSA"))


class Sts:
    """An MtaStsCache serving `text` for every domain with an _mta-sts record."""

    def __init__(self, tmp_path: Path, dns: FakeResolver, text: str) -> None:
        self.fetches = 0

        async def fetch(domain: str) -> str:
            self.fetches += 1
            return text

        dns.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=1")
        self.cache = MtaStsCache(tmp_path / "sts", fetch)


def select(
    dns: Resolver,
    mx: list[str],
    *,
    require_tls: bool = False,
    sts: Sts | None = None,
    trusted: bool = True,
    mx_authenticated: bool | None = None,
) -> TlsPolicy:
    return asyncio.run(
        select_policy(
            DOMAIN,
            mx,
            dns,
            require_tls=require_tls,
            sts=sts.cache if sts else None,
            dane_trusted=trusted,
            mx_authenticated=mx_authenticated,
        )
    )


# --------------------------------------------------------------------------- decisions


def test_dane_when_tlsa_is_validated_and_trusted() -> None:
    dns = zone(MX1)
    tlsa(dns, MX1)
    policy = select(dns, [MX1])
    assert policy.mode == "dane" and policy.authenticated and policy.tls_required
    assert policy.tlsa == (TlsaRecord(3, 1, 1, bytes.fromhex(DIGEST)),)
    assert not policy.verify_hostname and policy.mx_allowed("anything.test")


def test_no_dane_without_the_ad_bit() -> None:
    dns = zone(MX1)
    tlsa(dns, MX1, secure=False)
    assert select(dns, [MX1]).mode == "opportunistic"


def test_no_dane_from_an_untrusted_resolver() -> None:
    dns = zone(MX1)
    tlsa(dns, MX1)
    policy = select(dns, [MX1], trusted=False)
    assert policy.mode == "opportunistic"
    assert not any(rdtype == "TLSA" for _, rdtype in dns.queries)  # not even asked


def test_no_dane_through_an_unsigned_mx_answer() -> None:
    dns = zone(MX1, secure_mx=False)
    tlsa(dns, MX1)
    policy = select(dns, [MX1])
    assert policy.mode == "opportunistic" and "RFC 7672 2.2.1" in policy.reason
    assert select(dns, [MX1], mx_authenticated=True).mode == "dane"  # the worker knows better


def test_dane_for_an_implicit_mx() -> None:
    dns = FakeResolver()  # no MX: the domain itself is the host (RFC 5321 5.1)
    tlsa(dns, DOMAIN)
    assert select(dns, [DOMAIN]).mode == "dane"


def test_tlsa_tempfail_defers_never_downgrades(tmp_path: Path) -> None:
    dns = zone(MX1)
    dns.fail(f"_25._tcp.{MX1}", "TLSA")
    with pytest.raises(DnsTemporaryError):
        select(dns, [MX1], require_tls=True, sts=Sts(tmp_path, dns, STS_ENFORCE))


def test_mx_security_lookup_tempfail_defers() -> None:
    dns = zone(MX1)
    dns.fail(DOMAIN, "MX")
    with pytest.raises(DnsTemporaryError):
        select(dns, [MX1])


def test_malformed_tlsa_is_a_policy_error() -> None:
    dns = zone(MX1)
    tlsa(dns, MX1, "3 1 1 not-hex")
    with pytest.raises(PolicyError):
        select(dns, [MX1])


def test_only_unusable_tlsa_means_tls_without_authentication() -> None:
    dns = zone(MX1)
    tlsa(dns, MX1, f"1 1 1 {DIGEST}")  # PKIX-EE: unusable for SMTP (RFC 7672 3.1.3)
    policy = select(dns, [MX1])
    assert policy.mode == "dane" and policy.tlsa == ()
    assert policy.tls_required and not policy.authenticated
    assert "RFC 7672 2.2" in policy.reason
    assert not client_context(policy).check_hostname


def test_unusable_tlsa_yields_to_stronger_verified_policies(tmp_path: Path) -> None:
    dns = zone(MX1)
    tlsa(dns, MX1, f"0 0 1 {DIGEST}")
    assert select(dns, [MX1], require_tls=True).mode == "required"
    assert select(dns, [MX1], sts=Sts(tmp_path, dns, STS_ENFORCE)).mode == "mta-sts"


def test_mta_sts_enforce(tmp_path: Path) -> None:
    dns = zone(MX1)
    policy = select(dns, [MX1], sts=Sts(tmp_path, dns, STS_ENFORCE), require_tls=True)
    assert policy.mode == "mta-sts" and policy.verify_hostname
    assert policy.sts_mx == ("*.example.test",)
    assert policy.mx_allowed(MX1) and not policy.mx_allowed("mx.elsewhere.test")
    assert not policy.mx_allowed(DOMAIN)  # the wildcard needs exactly one label


def test_mta_sts_testing_is_not_enforced(tmp_path: Path) -> None:
    dns = zone(MX1)
    sts = Sts(tmp_path, dns, STS_TESTING)
    policy = select(dns, [MX1], sts=sts)
    assert policy.mode == "opportunistic" and "mode testing" in policy.reason
    assert select(dns, [MX1], sts=sts, require_tls=True).mode == "required"


def test_require_tls_and_default() -> None:
    dns = zone(MX1)
    required = select(dns, [MX1], require_tls=True)
    assert required.mode == "required" and required.verify_hostname
    default = select(dns, [MX1])
    assert default.mode == "opportunistic" and not default.tls_required


def test_dane_wins_over_mta_sts_and_skips_the_fetch(tmp_path: Path) -> None:
    dns = zone(MX1, MX2)
    tlsa(dns, MX1)
    tlsa(dns, MX2, f"2 0 1 {DIGEST}")
    sts = Sts(tmp_path, dns, STS_ENFORCE)
    policy = select(dns, [MX1, MX2], sts=sts)
    assert policy.mode == "dane" and sts.fetches == 0
    assert policy.for_host(MX2).tlsa == (TlsaRecord(2, 0, 1, bytes.fromhex(DIGEST)),)
    assert policy.for_host(MX1).tlsa == (TlsaRecord(3, 1, 1, bytes.fromhex(DIGEST)),)


def test_dane_is_per_mx_host(tmp_path: Path) -> None:
    dns = zone(MX1, "mx.backup.test")
    tlsa(dns, MX1)
    policy = select(dns, [MX1, "mx.backup.test"], sts=Sts(tmp_path, dns, STS_ENFORCE))
    assert policy.mode == "mta-sts"  # the domain's policy, for the host without DANE
    assert policy.for_host(MX1).mode == "dane" and policy.for_host("MX1.example.test.").tlsa
    assert policy.for_host("mx.backup.test") is policy
    assert policy.mx_allowed(MX1) and not policy.mx_allowed("mx.backup.test")
    assert not client_context(policy, mx_host=MX1).check_hostname
    assert client_context(policy, mx_host="mx.backup.test").check_hostname


# --------------------------------------------------------------------------- handshakes


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


async def _connect(port: int, ctx: ssl.SSLContext, host: str, policy: TlsPolicy) -> str | None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        return check_peer(policy, host, ssl_object)
    finally:
        writer.close()
        await writer.wait_closed()


def handshake(
    server: tuple[Path, Path], policy: TlsPolicy, host: str, *, cafile: Path | None = None
) -> str | None:
    """Handshake with a loopback server as the delivery worker would; check_peer's
    verdict. A failed handshake raises (ssl.SSLCertVerificationError, ...)."""
    ctx = client_context(policy, mx_host=host, cafile=cafile)
    with tls_server(*server) as port:
        return asyncio.run(_connect(port, ctx, host, policy))


def ee(cert: Issued) -> TlsaRecord:
    return TlsaRecord(3, 1, 1, dane.association(cert.der, 1, 1))


def test_dane_ee_handshake(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.issue("not-the-mx-name.test")  # DANE-EE: names do not matter
    server = write_server_files(tmp_path, leaf)
    assert handshake(server, TlsPolicy("dane", tlsa=(ee(leaf),)), MX1) is None
    wrong = TlsPolicy("dane", tlsa=(ee(pki.issue(MX1)),))
    reason = handshake(server, wrong, MX1)
    assert reason is not None and reason.startswith("DANE: no TLSA record matches")


def test_dane_ta_handshake(pki: Pki, tmp_path: Path) -> None:
    server = write_server_files(tmp_path, pki.issue(MX1), pki.ca)
    ta = TlsPolicy("dane", tlsa=(TlsaRecord(2, 1, 1, dane.association(pki.ca.der, 1, 1)),))
    assert handshake(server, ta, MX1) is None
    reason = handshake(server, ta, MX2)  # the certificate does not name mx2
    assert reason is not None and "DANE-TA matched but" in reason


def test_dane_without_usable_records_only_needs_tls(pki: Pki, tmp_path: Path) -> None:
    server = write_server_files(tmp_path, pki.issue("whatever.test"))
    assert handshake(server, TlsPolicy("dane"), MX1) is None


def test_mta_sts_handshake(pki: Pki, tmp_path: Path) -> None:
    ca = pki.write_ca(tmp_path / "ca.pem")
    policy = TlsPolicy("mta-sts", sts_mx=("*.example.test",), verify_hostname=True)
    trusted = write_server_files(tmp_path / "trusted", pki.issue(MX1), pki.ca)
    assert handshake(trusted, policy, MX1, cafile=ca) is None
    # Not in the policy's mx patterns: refused even with a good certificate.
    outside = write_server_files(tmp_path / "outside", pki.issue("mx.other.test"), pki.ca)
    reason = handshake(outside, policy, "mx.other.test", cafile=ca)
    assert reason is not None and "matches no mx pattern" in reason
    # An untrusted self-signed certificate, or one for another name: no handshake.
    stranger = write_server_files(tmp_path / "stranger", Pki("stranger").issue(MX1))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(stranger, policy, MX1, cafile=ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(trusted, policy, MX2, cafile=ca)


def test_required_and_opportunistic_handshakes(pki: Pki, tmp_path: Path) -> None:
    ca = pki.write_ca(tmp_path / "ca.pem")
    server = write_server_files(tmp_path, pki.issue(MX1), pki.ca)
    assert handshake(server, TlsPolicy("required", verify_hostname=True), MX1, cafile=ca) is None
    with pytest.raises(ssl.SSLCertVerificationError):  # no test CA: the system store says no
        handshake(server, TlsPolicy("required", verify_hostname=True), MX1)
    assert handshake(server, TlsPolicy("opportunistic"), MX1) is None


def test_check_peer_refuses_an_unverified_context_for_verified_modes(
    pki: Pki, tmp_path: Path
) -> None:
    server = write_server_files(tmp_path, pki.issue(MX1), pki.ca)
    unverified = client_context(TlsPolicy("opportunistic"))
    with tls_server(*server) as port:
        for mode in ("required", "mta-sts"):
            policy = TlsPolicy(mode, sts_mx=(MX1,), verify_hostname=True)
            reason = asyncio.run(_connect(port, unverified, MX1, policy))
            assert reason is not None and "without certificate verification" in reason
        assert asyncio.run(_connect(port, unverified, MX1, TlsPolicy("bogus"))) is not None


def test_check_peer_with_a_blocking_socket(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.issue(MX1)
    server = write_server_files(tmp_path, leaf, pki.ca)
    policy = TlsPolicy("dane", tlsa=(ee(leaf),))
    with tls_server(*server) as port:
        raw = socket.create_connection(("127.0.0.1", port))
        with client_context(policy).wrap_socket(raw, server_hostname=MX1) as conn:
            assert check_peer(policy, MX1, conn) is None


# --------------------------------------------------------------------------- real DNSSEC


def test_dane_through_a_validating_resolver(pki: Pki) -> None:
    unbound = pytest.importorskip("mailward.testing.unbound")
    dns_server = pytest.importorskip("mailward.testing.dns_server")
    if not unbound.unbound_available():
        pytest.skip("unbound is not installed (scripts/install-test-deps)")
    leaf = pki.issue(MX1)
    with dns_server.TestDns() as dns:
        dns.add(DOMAIN, "MX", f"10 {MX1}.")
        dns.add(f"_25._tcp.{MX1}", "TLSA", f"3 1 1 {dane.association(leaf.der, 1, 1).hex()}")
        dns.add("unsigned.example", "MX", "10 mx.unsigned.example.")
        dns.add("_25._tcp.mx.unsigned.example", "TLSA", f"3 1 1 {DIGEST}")
        dns.sign(DOMAIN)
        with unbound.TestUnbound(dns) as validator:
            resolver = validator.resolver()
            policy = select(resolver, [MX1])
            assert policy.mode == "dane" and policy.tlsa == (ee(leaf),)

            async def unsigned() -> TlsPolicy:
                return await select_policy(
                    "unsigned.example",
                    ["mx.unsigned.example"],
                    resolver,
                    require_tls=False,
                    sts=None,
                    dane_trusted=True,
                )

            assert asyncio.run(unsigned()).mode == "opportunistic"
