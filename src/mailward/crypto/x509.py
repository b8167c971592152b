"""X.509 helpers for DANE (RFC 6698, RFC 7671, RFC 7672): the certificate work that
`queue/dane.py` needs, kept here because only `mailward.crypto` parses certificates.

- `spki_der`: the DER SubjectPublicKeyInfo of a certificate (TLSA selector 1).
- `peer_chain`: the certificate chain the TLS peer sent, leaf first, as DER. Python
  3.11 has no public API for it (3.13 adds `get_unverified_chain`); the C object under
  `SSLObject`/`SSLSocket` has had it since 3.10, so we use that and fall back to the
  leaf alone (`getpeercert(binary_form=True)`), which is enough for DANE-EE.
- `verify_chain`: PKIX path validation of a server chain up to one given trust anchor
  with a host name check, for DANE-TA (RFC 7672 3.1.2: the TA's certificate replaces
  the CA store; the name check uses the MX host name, RFC 7672 3.2.2; wildcards only
  as the whole leftmost label, RFC 7672 3.2.3). It is cryptography's verifier (the
  web PKI rules of rustls-webpki: validity dates, basic constraints, key usage).
- `leaf_der_from_pem`: the first certificate of a PEM chain file (for our own TLSA
  record in `mailward dns`).
"""

from __future__ import annotations

import _ssl
import datetime
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError


class CertificateError(ValueError):
    """Bytes that are not a usable X.509 certificate, or an unreadable file."""


def _load_der(cert_der: bytes) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(cert_der)
    except ValueError:
        raise CertificateError("not a DER X.509 certificate") from None


def spki_der(cert_der: bytes) -> bytes:
    """The DER SubjectPublicKeyInfo of a DER certificate (RFC 6698 2.1.2, selector 1)."""
    cert = _load_der(cert_der)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def leaf_der_from_pem(path: Path) -> bytes:
    """The first certificate of a PEM file (the server's own, in a chain file), as DER."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CertificateError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path}: not a PEM certificate chain") from None
    return certs[0].public_bytes(serialization.Encoding.DER)


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The chain the peer presented (leaf first) as DER; [] if it sent no certificate."""
    inner = getattr(ssl_object, "_sslobj", None)
    get_chain = getattr(inner, "get_unverified_chain", None)
    if get_chain is not None:
        chain = get_chain() or []
        out = [bytes(cert.public_bytes(_ssl.ENCODING_DER)) for cert in chain]
        if out:
            return out
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def verify_chain(
    chain: Sequence[bytes],
    anchor: bytes,
    hostname: str,
    *,
    now: datetime.datetime | None = None,
) -> str | None:
    """Validate `chain` (DER, leaf first) up to the trust anchor `anchor` (DER) for
    `hostname`. Returns None if valid, else a short reason safe to log."""
    if not chain:
        return "no server certificate"
    try:
        leaf = _load_der(chain[0])
        intermediates = [_load_der(c) for c in chain[1:]]
        trust_anchor = _load_der(anchor)
    except CertificateError as e:
        return str(e)
    try:
        name = DNSName(hostname.rstrip(".").lower())
    except ValueError:
        return f"{hostname!r} is not a DNS name"
    when = now or datetime.datetime.now(datetime.UTC)
    verifier = PolicyBuilder().store(Store([trust_anchor])).time(when).build_server_verifier(name)
    try:
        verifier.verify(leaf, intermediates)
    except VerificationError as e:
        return f"chain does not validate to the TLSA trust anchor: {e}"
    return None


__all__ = ["CertificateError", "leaf_der_from_pem", "peer_chain", "spki_der", "verify_chain"]
