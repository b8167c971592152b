"""DANE matching (queue/dane.py, crypto/x509.py) against real certificates:
RFC 7672 3.1 (usages), RFC 6698 2.1 (selectors, matching types)."""

from __future__ import annotations

import datetime
import hashlib

import pytest

from mailward.crypto import x509
from mailward.queue import dane
from mailward.resolver import TlsaRecord
from tests.queue.tls_fixtures import NOW, Pki

MX = "mx.example.test"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def record(usage: int, selector: int, mtype: int, data: bytes) -> TlsaRecord:
    return TlsaRecord(usage, selector, mtype, data)


# --------------------------------------------------------------------------- usable


@pytest.mark.parametrize(
    ("usage", "selector", "mtype", "size", "ok"),
    [
        (3, 1, 1, 32, True),
        (3, 0, 1, 32, True),
        (3, 1, 2, 64, True),
        (3, 1, 0, 91, True),
        (2, 1, 1, 32, True),
        (2, 0, 2, 64, True),
        (0, 1, 1, 32, False),  # PKIX-TA: unusable for SMTP (RFC 7672 3.1.3)
        (1, 1, 1, 32, False),  # PKIX-EE: likewise
        (4, 1, 1, 32, False),  # unknown usage
        (3, 2, 1, 32, False),  # unknown selector
        (3, 1, 3, 32, False),  # unknown matching type
        (3, 1, 1, 31, False),  # SHA-256 digest of the wrong length
        (3, 1, 2, 32, False),  # SHA-512 digest of the wrong length
        (3, 1, 0, 0, False),  # empty association data
    ],
)
def test_usable_records(usage: int, selector: int, mtype: int, size: int, ok: bool) -> None:
    assert dane.usable(record(usage, selector, mtype, b"\x01" * size)) is ok


# --------------------------------------------------------------------------- association


def test_association_data(pki: Pki) -> None:
    leaf = pki.issue(MX)
    assert x509.spki_der(leaf.der) == leaf.spki
    assert dane.association(leaf.der, 1, 1) == hashlib.sha256(leaf.spki).digest()
    assert dane.association(leaf.der, 1, 2) == hashlib.sha512(leaf.spki).digest()
    assert dane.association(leaf.der, 0, 1) == hashlib.sha256(leaf.der).digest()
    assert dane.association(leaf.der, 0, 0) == leaf.der
    assert dane.association(leaf.der, 1, 0) == leaf.spki
    with pytest.raises(x509.CertificateError):
        x509.spki_der(b"not a certificate")


# --------------------------------------------------------------------------- DANE-EE


@pytest.mark.parametrize(("selector", "mtype"), [(1, 1), (0, 1), (1, 2), (0, 2), (1, 0), (0, 0)])
def test_dane_ee_matches_the_leaf(pki: Pki, selector: int, mtype: int) -> None:
    leaf = pki.issue(MX)
    tlsa = record(3, selector, mtype, dane.association(leaf.der, selector, mtype))
    assert dane.match([tlsa], [leaf.der], MX) is None


def test_dane_ee_wrong_digest_gives_a_reason(pki: Pki) -> None:
    leaf, other = pki.issue(MX), pki.issue(MX)
    tlsa = record(3, 1, 1, dane.association(other.der, 1, 1))
    reason = dane.match([tlsa], [leaf.der, pki.ca.der], MX)
    assert reason is not None and "no TLSA record matches" in reason


def test_dane_ee_ignores_name_and_expiry(pki: Pki) -> None:
    # RFC 7672 3.1.1: the record is the binding; names and dates do not matter.
    expired = pki.issue(
        "somewhere.else.test",
        not_before=NOW - datetime.timedelta(days=400),
        not_after=NOW - datetime.timedelta(days=30),
    )
    tlsa = record(3, 1, 1, dane.association(expired.der, 1, 1))
    assert dane.match([tlsa], [expired.der], MX) is None


def test_dane_ee_does_not_match_a_chain_certificate(pki: Pki) -> None:
    leaf = pki.issue(MX)
    tlsa = record(3, 1, 1, dane.association(pki.ca.der, 1, 1))  # the CA, not the leaf
    assert dane.match([tlsa], [leaf.der, pki.ca.der], MX) is not None


# --------------------------------------------------------------------------- DANE-TA


@pytest.mark.parametrize(("selector", "mtype"), [(1, 1), (0, 1), (0, 2), (0, 0)])
def test_dane_ta_matches_the_issuer_and_checks_the_name(
    pki: Pki, selector: int, mtype: int
) -> None:
    leaf = pki.issue(MX)
    tlsa = record(2, selector, mtype, dane.association(pki.ca.der, selector, mtype))
    assert dane.match([tlsa], [leaf.der, pki.ca.der], MX) is None
    assert dane.match([tlsa], [leaf.der, pki.ca.der], "MX.Example.Test.") is None
    wrong_name = dane.match([tlsa], [leaf.der, pki.ca.der], "other.example.test")
    assert wrong_name is not None and "DANE-TA matched but" in wrong_name


def test_dane_ta_accepts_a_wildcard_in_the_leftmost_label(pki: Pki) -> None:
    leaf = pki.issue("*.example.test")
    tlsa = record(2, 1, 1, dane.association(pki.ca.der, 1, 1))
    assert dane.match([tlsa], [leaf.der, pki.ca.der], MX) is None
    assert dane.match([tlsa], [leaf.der, pki.ca.der], "a.mx.example.test") is not None


def test_dane_ta_needs_the_anchor_in_the_chain(pki: Pki) -> None:
    leaf = pki.issue(MX)
    tlsa = record(2, 1, 1, dane.association(pki.ca.der, 1, 1))
    reason = dane.match([tlsa], [leaf.der], MX)
    assert reason is not None and "no TLSA record matches" in reason


def test_dane_ta_rejects_a_leaf_another_ca_signed(pki: Pki) -> None:
    # An attacker can send our TA's (public) certificate after their own leaf: the
    # digest matches, the signature path does not.
    forged = Pki("attacker CA").issue(MX)
    tlsa = record(2, 1, 1, dane.association(pki.ca.der, 1, 1))
    reason = dane.match([tlsa], [forged.der, pki.ca.der], MX)
    assert reason is not None and "DANE-TA matched but" in reason


def test_dane_ta_checks_expiry(pki: Pki) -> None:
    expired = pki.issue(
        MX,
        not_before=NOW - datetime.timedelta(days=40),
        not_after=NOW - datetime.timedelta(days=1),
    )
    tlsa = record(2, 1, 1, dane.association(pki.ca.der, 1, 1))
    assert dane.match([tlsa], [expired.der, pki.ca.der], MX) is not None


def test_dane_ta_record_does_not_match_the_leaf_itself(pki: Pki) -> None:
    leaf = pki.issue(MX)
    tlsa = record(2, 1, 1, dane.association(leaf.der, 1, 1))
    assert dane.match([tlsa], [leaf.der, pki.ca.der], MX) is not None


# --------------------------------------------------------------------------- sets of records


def test_unusable_records_are_ignored(pki: Pki) -> None:
    leaf = pki.issue(MX)
    digest = dane.association(leaf.der, 1, 1)
    # PKIX-EE with the right digest does not count (RFC 7672 3.1.3) ...
    reason = dane.match([record(1, 1, 1, digest)], [leaf.der], MX)
    assert reason is not None and "no usable TLSA record" in reason
    # ... and does not spoil a usable record beside it.
    records = [record(1, 1, 1, b"\x00" * 32), record(0, 0, 1, digest), record(3, 1, 1, digest)]
    assert dane.match(records, [leaf.der], MX) is None
    assert dane.usable_records(records) == (record(3, 1, 1, digest),)


def test_any_one_usable_record_is_enough(pki: Pki) -> None:
    leaf, rolled = pki.issue(MX), pki.issue(MX)
    records = [
        record(3, 1, 1, dane.association(rolled.der, 1, 1)),  # the next key, pre-published
        record(3, 1, 1, dane.association(leaf.der, 1, 1)),
    ]
    assert dane.match(records, [leaf.der], MX) is None


def test_no_certificate(pki: Pki) -> None:
    tlsa = record(3, 1, 1, b"\x00" * 32)
    assert dane.match([tlsa], [], MX) == "the server sent no certificate"
    assert dane.match([tlsa], [b"garbage"], MX) is not None


def test_describe() -> None:
    text = dane.describe(record(3, 1, 1, bytes(range(32))))
    assert text.startswith("3 1 1 0001020304") and "DANE-EE" in text
