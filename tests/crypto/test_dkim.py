"""DKIM keys (crypto/dkim.py): files, DNS records, and dkimpy sign/verify round trips."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from mailward.crypto.dkim import (
    DkimKey,
    DkimKeyError,
    dns_records,
    generate_domain_keys,
    load_domain_keys,
    sign_message,
)

DOMAIN = "example.test"
MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: DKIM round trip\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <dkim-test@example.test>\r\n"
    b"\r\n"
    b"Hello, Bob.\r\n"
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[DkimKey]]:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, generate_domain_keys(data_dir, DOMAIN, selector_date="202401")


def dnsfunc_for(records: list[tuple[str, str, str]]) -> Callable[..., bytes | None]:
    txt = {f"{name}.".encode(): value.encode() for name, rtype, value in records if rtype == "TXT"}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return txt.get(name)

    return dnsfunc


def test_generated_keys_shape(keys: tuple[Path, list[DkimKey]]) -> None:
    data_dir, generated = keys
    assert [(k.selector, k.algorithm) for k in generated] == [
        ("202401e", "ed25519"),
        ("202401r", "rsa"),
    ]
    assert generated[0].public_record.startswith("v=DKIM1; k=ed25519; p=")
    assert generated[1].public_record.startswith("v=DKIM1; k=rsa; p=MIIBIjAN")  # 2048-bit SPKI
    for k in generated:
        assert k.private_key_path == data_dir / "dkim" / DOMAIN / f"{k.selector}.key"
        assert stat.S_IMODE(k.private_key_path.stat().st_mode) == 0o600
        assert k.private_key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert stat.S_IMODE((data_dir / "dkim").stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "dkim" / DOMAIN).stat().st_mode) == 0o700
    assert not list((data_dir / "dkim" / DOMAIN).glob(".*"))


def test_load_returns_the_same_keys(keys: tuple[Path, list[DkimKey]]) -> None:
    data_dir, generated = keys
    assert load_domain_keys(data_dir, DOMAIN) == generated
    assert load_domain_keys(data_dir, "other.test") == []


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_sign_and_verify_with_dkimpy(keys: tuple[Path, list[DkimKey]], algorithm: str) -> None:
    data_dir, _ = keys
    loaded = load_domain_keys(data_dir, DOMAIN)
    key = next(k for k in loaded if k.algorithm == algorithm)
    dnsfunc = dnsfunc_for(dns_records(DOMAIN, "mail.example.test", loaded))
    signature = sign_message(MESSAGE, key)
    assert signature.startswith(b"DKIM-Signature:") and signature.endswith(b"\r\n")
    a_tag = {"ed25519": b"a=ed25519-sha256", "rsa": b"a=rsa-sha256"}[algorithm]
    assert a_tag in signature and f"s={key.selector}".encode() in signature
    assert dkim.verify(signature + MESSAGE, dnsfunc=dnsfunc)
    # A changed body must fail: the test above is not vacuous.
    assert not dkim.verify(signature + MESSAGE.replace(b"Bob", b"Eve"), dnsfunc=dnsfunc)


def test_raw_dkimpy_sign_with_the_seed_format(keys: tuple[Path, list[DkimKey]]) -> None:
    """dkimpy's own ed25519 key format (base64 raw seed) agrees with our PEM file."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    _, generated = keys
    pem = generated[0].private_key_path.read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    sig = dkim.sign(
        MESSAGE, b"202401e", DOMAIN.encode(), base64.b64encode(seed),
        signature_algorithm=b"ed25519-sha256",
    )  # fmt: skip
    dnsfunc = dnsfunc_for(dns_records(DOMAIN, "mail.example.test", generated))
    assert dkim.verify(sig + MESSAGE, dnsfunc=dnsfunc)
    # The RSA PKCS#8 PEM is accepted by dkimpy as-is.
    rsa_sig = dkim.sign(
        MESSAGE, b"202401r", DOMAIN.encode(), generated[1].private_key_path.read_bytes()
    )
    assert dkim.verify(rsa_sig + MESSAGE, dnsfunc=dnsfunc)


def test_wrong_public_record_fails(keys: tuple[Path, list[DkimKey]], tmp_path: Path) -> None:
    _, generated = keys
    others = generate_domain_keys(tmp_path, DOMAIN, selector_date="202401")
    signature = sign_message(MESSAGE, generated[0])
    assert not dkim.verify(
        signature + MESSAGE, dnsfunc=dnsfunc_for(dns_records(DOMAIN, "mx", others))
    )


def test_dns_records(keys: tuple[Path, list[DkimKey]]) -> None:
    _, generated = keys
    records = dns_records(DOMAIN, "mail.example.test", generated)
    assert records[0] == (DOMAIN, "MX", "10 mail.example.test.")
    assert (DOMAIN, "TXT", "v=spf1 mx -all") in records
    for k in generated:
        assert (f"{k.selector}._domainkey.{DOMAIN}", "TXT", k.public_record) in records
    dmarc = [r for r in records if r[0] == f"_dmarc.{DOMAIN}"]
    assert dmarc == [
        (
            f"_dmarc.{DOMAIN}",
            "TXT",
            f"v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:postmaster@{DOMAIN}",
        )
    ]
    assert dns_records(DOMAIN, "mail.example.test.", [])[0][2] == "10 mail.example.test."


def test_existing_keys_never_overwritten(keys: tuple[Path, list[DkimKey]]) -> None:
    data_dir, generated = keys
    before = generated[0].private_key_path.read_bytes()
    with pytest.raises(DkimKeyError):
        generate_domain_keys(data_dir, DOMAIN, selector_date="202401")
    assert generated[0].private_key_path.read_bytes() == before


def test_rotation_orders_newest_first(tmp_path: Path) -> None:
    generate_domain_keys(tmp_path, DOMAIN, selector_date="202401")
    generate_domain_keys(tmp_path, DOMAIN, selector_date="202502")
    assert [k.selector for k in load_domain_keys(tmp_path, DOMAIN)] == [
        "202502e",
        "202502r",
        "202401e",
        "202401r",
    ]


def test_default_selector_is_this_month(tmp_path: Path) -> None:
    generated = generate_domain_keys(tmp_path, DOMAIN)
    stem = generated[0].selector[:-1]
    assert len(stem) == 6 and stem.isdigit()


@pytest.mark.parametrize("bad", ["../evil", "a/b", "", "-x.test", "x..test"])
def test_domain_is_validated(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        generate_domain_keys(tmp_path, bad)
    with pytest.raises(ValueError):
        load_domain_keys(tmp_path, bad)
    assert not (tmp_path / "dkim").exists() or not any((tmp_path / "dkim").iterdir())


def test_unsafe_or_corrupt_key_file_refused(tmp_path: Path) -> None:
    generated = generate_domain_keys(tmp_path, DOMAIN, selector_date="202401")
    path = generated[0].private_key_path
    path.chmod(0o644)
    with pytest.raises(DkimKeyError, match="chmod 600"):
        load_domain_keys(tmp_path, DOMAIN)
    path.chmod(0o600)
    path.write_bytes(b"junk")
    with pytest.raises(DkimKeyError, match=str(path)):
        load_domain_keys(tmp_path, DOMAIN)


def test_signing_sees_a_replaced_or_loosened_key_file_at_once(tmp_path: Path) -> None:
    """Signing keys are cached by the file's identity: a key file replaced (rotation by
    hand) or made readable to others after a first signature is noticed at once."""
    first = generate_domain_keys(tmp_path / "a", DOMAIN, selector_date="202401")
    other = generate_domain_keys(tmp_path / "b", DOMAIN, selector_date="202401")
    key = next(k for k in first if k.algorithm == "rsa")
    replacement = next(k for k in other if k.algorithm == "rsa")
    sign_message(MESSAGE, key)  # loaded and cached
    dnsfunc_new = dnsfunc_for(dns_records(DOMAIN, "mail.example.test", other))
    key.private_key_path.write_bytes(replacement.private_key_path.read_bytes())
    signature = sign_message(MESSAGE, key)
    assert dkim.verify(signature + MESSAGE, dnsfunc=dnsfunc_new)  # the new key signed it
    key.private_key_path.chmod(0o644)
    with pytest.raises(DkimKeyError, match="chmod 600"):
        sign_message(MESSAGE, key)
