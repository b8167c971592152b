"""DKIM and ARC verification (crypto/dkim_verify.py) with keys from crypto/dkim.py and
the in-memory resolver: RSA and Ed25519, every signature, each failure named."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dkim
import pytest

from mailward.crypto.dkim import DkimKey, dns_records, generate_domain_keys, sign_message
from mailward.crypto.dkim_verify import (
    MAX_SIGNATURES,
    ArcResult,
    DkimResult,
    verify_arc,
    verify_signatures,
)
from mailward.testing.fake_dns import FakeResolver

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@rcpt.test\r\n"
    b"Subject: verify me\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <verify@sender.test>\r\n"
    b"\r\n"
    b"Hello, Bob.\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[DkimKey]]:
    data_dir = tmp_path_factory.mktemp("keys")
    return {
        d: generate_domain_keys(data_dir, d, selector_date="202401")
        for d in ("sender.test", "fwd.test", "list.test")
    }


def zone(keys: dict[str, list[DkimKey]]) -> FakeResolver:
    dns = FakeResolver()
    for domain, domain_keys in keys.items():
        for name, rtype, value in dns_records(domain, f"mx.{domain}", domain_keys):
            dns.add(name, rtype, value)
    return dns


def signed(keys: dict[str, list[DkimKey]], message: bytes = MESSAGE) -> bytes:
    ed, rsa = keys["sender.test"]
    return sign_message(message, ed) + sign_message(message, rsa) + message


def verify(message: bytes, dns: FakeResolver) -> list[DkimResult]:
    return asyncio.run(verify_signatures(message, dns.txt))


def outcomes(results: list[DkimResult]) -> list[tuple[str, str, str]]:
    return [(r.selector, r.algorithm, r.result) for r in results]


def test_ed25519_and_rsa_both_pass(keys: dict[str, list[DkimKey]]) -> None:
    results = verify(signed(keys), zone(keys))
    assert outcomes(results) == [
        ("202401e", "ed25519-sha256", "pass"),
        ("202401r", "rsa-sha256", "pass"),
    ]
    assert all(r.domain == "sender.test" and len(r.signature) > 8 for r in results)


def test_no_signature_is_an_empty_list(keys: dict[str, list[DkimKey]]) -> None:
    assert verify(MESSAGE, zone(keys)) == []


def test_tampered_body_fails(keys: dict[str, list[DkimKey]]) -> None:
    results = verify(signed(keys).replace(b"Hello, Bob.", b"Hello, Eve."), zone(keys))
    assert [r.result for r in results] == ["fail", "fail"]
    assert all("body hash" in r.reason for r in results)


def test_tampered_signed_header_fails(keys: dict[str, list[DkimKey]]) -> None:
    message = signed(keys).replace(b"Subject: verify me", b"Subject: pay me")
    assert [r.result for r in verify(message, zone(keys))] == ["fail", "fail"]


def test_added_unsigned_header_still_passes(keys: dict[str, list[DkimKey]]) -> None:
    message = b"X-Mailing-List: added later\r\n" + signed(keys)
    assert [r.result for r in verify(message, zone(keys))] == ["pass", "pass"]


def test_missing_and_revoked_keys_are_permerror(keys: dict[str, list[DkimKey]]) -> None:
    dns = zone(keys)
    dns.clear("202401e._domainkey.sender.test", "TXT")
    dns.clear("202401r._domainkey.sender.test", "TXT")
    dns.add("202401r._domainkey.sender.test", "TXT", "v=DKIM1; k=rsa; p=")  # revoked
    results = verify(signed(keys), dns)
    assert [r.result for r in results] == ["permerror", "permerror"]
    assert results[0].reason == "no key record"
    assert "key" in results[1].reason


def test_dns_temporary_failure_is_temperror_not_fail(keys: dict[str, list[DkimKey]]) -> None:
    dns = zone(keys)
    dns.fail("202401e._domainkey.sender.test", "TXT")
    results = verify(signed(keys), dns)
    assert [r.result for r in results] == ["temperror", "pass"]


def test_dns_answer_that_never_comes_is_temperror(keys: dict[str, list[DkimKey]]) -> None:
    async def never(name: str) -> list[str]:
        await asyncio.Event().wait()
        return []

    async def main() -> list[DkimResult]:
        return await verify_signatures(signed(keys), never, dns_timeout=0.05)

    assert [r.result for r in asyncio.run(main())] == ["temperror", "temperror"]


def test_malformed_signatures_are_permerror(keys: dict[str, list[DkimKey]]) -> None:
    dns = zone(keys)
    good = signed(keys)
    broken = good.replace(b"a=ed25519-sha256", b"a=md5-nonsense", 1)
    results = verify(broken, dns)
    assert [r.result for r in results] == ["permerror", "pass"]
    garbage = b"DKIM-Signature: this is not a tag list\r\n" + MESSAGE
    [result] = verify(garbage, dns)
    assert result.result == "permerror"


def test_a_foreign_domain_signature_verifies_on_its_own_key(
    keys: dict[str, list[DkimKey]],
) -> None:
    # A list re-signs: both signatures are verified, each against its own d=.
    message = sign_message(signed(keys), keys["list.test"][0]) + signed(keys)
    results = verify(message, zone(keys))
    assert [(r.domain, r.result) for r in results] == [
        ("list.test", "pass"),
        ("sender.test", "pass"),
        ("sender.test", "pass"),
    ]


def test_signatures_beyond_the_limit_are_not_verified(keys: dict[str, list[DkimKey]]) -> None:
    ed = keys["sender.test"][0]
    one = sign_message(MESSAGE, ed)
    message = one * (MAX_SIGNATURES + 2) + MESSAGE
    results = verify(message, zone(keys))
    assert [r.result for r in results] == ["pass"] * MAX_SIGNATURES + ["neutral"] * 2


def test_lf_line_endings_verify(keys: dict[str, list[DkimKey]]) -> None:
    assert [r.result for r in verify(signed(keys).replace(b"\r\n", b"\n"), zone(keys))] == [
        "pass",
        "pass",
    ]


# --------------------------------------------------------------------------- ARC


def arc_seal(message: bytes, key: DkimKey, authserv_id: str) -> bytes:
    """What a forwarder does (RFC 8617 5.1): its own A-R (with the arc= result of the
    chain it received, which dkimpy turns into cv=), then an ARC set over it."""
    arc_result = "; arc=pass" if b"\nARC-Seal:" in b"\n" + message else ""
    with_results = (
        f"Authentication-Results: {authserv_id}; dkim=pass header.d=sender.test{arc_result}\r\n"
    ).encode() + message
    pem = key.private_key_path.read_bytes()
    seal = dkim.arc_sign(
        with_results, key.selector.encode(), key.domain.encode(), pem, authserv_id.encode()
    )
    return b"".join(seal) + with_results


def arc(message: bytes, dns: FakeResolver) -> ArcResult:
    return asyncio.run(verify_arc(message, dns.txt))


def test_arc_chain_sealed_by_a_forwarder_passes(keys: dict[str, list[DkimKey]]) -> None:
    forwarded = arc_seal(signed(keys), keys["fwd.test"][1], "mx.fwd.test")
    result = arc(forwarded, zone(keys))
    assert (result.result, result.instances) == ("pass", 1)


def test_two_hop_arc_chain_passes(keys: dict[str, list[DkimKey]]) -> None:
    once = arc_seal(signed(keys), keys["fwd.test"][1], "mx.fwd.test")
    twice = arc_seal(once, keys["list.test"][1], "mx.list.test")
    result = arc(twice, zone(keys))
    assert (result.result, result.instances) == ("pass", 2)


def test_tampered_arc_chain_fails(keys: dict[str, list[DkimKey]]) -> None:
    forwarded = arc_seal(signed(keys), keys["fwd.test"][1], "mx.fwd.test")
    assert arc(forwarded.replace(b"Hello, Bob.", b"Hello, Eve."), zone(keys)).result == "fail"
    tampered_seal = forwarded.replace(b"cv=none", b"cv=pass", 1)
    assert arc(tampered_seal, zone(keys)).result == "fail"


def test_no_arc_is_none(keys: dict[str, list[DkimKey]]) -> None:
    assert arc(signed(keys), zone(keys)).result == "none"


def test_arc_dns_failure_is_never_a_pass(keys: dict[str, list[DkimKey]]) -> None:
    forwarded = arc_seal(signed(keys), keys["fwd.test"][1], "mx.fwd.test")
    dns = zone(keys)
    dns.fail("202401r._domainkey.fwd.test", "TXT")
    result = arc(forwarded, dns)
    assert result.result == "fail" and "temporary" in result.reason


def test_verification_never_blocks_the_event_loop(
    keys: dict[str, list[DkimKey]], tmp_path: Path
) -> None:
    # The resolver is answered on the loop while dkimpy waits in its thread: a
    # loop-side tick keeps running during verification.
    dns = zone(keys)
    ticks = 0

    async def main() -> None:
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        results = await verify_signatures(signed(keys), dns.txt)
        task.cancel()
        assert [r.result for r in results] == ["pass", "pass"]

    asyncio.run(main())
    assert ticks > 0
