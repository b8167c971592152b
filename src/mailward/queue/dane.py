"""DANE for SMTP: which TLSA records count and whether a server's chain matches them
(RFC 7672, RFC 7671, RFC 6698).

Usable records (RFC 7672 3.1):

- certificate usage 3, DANE-EE: the server's own certificate (selector 0) or its
  public key (selector 1) must match. No name check and no expiry check: the DNS
  record is the binding (RFC 7672 3.1.1).
- certificate usage 2, DANE-TA: some certificate the server sent above the leaf must
  match; the leaf must then chain to it under PKIX rules and carry the MX host name
  (RFC 7672 3.1.2, 3.2.2). We need the trust anchor's certificate in the server's
  chain, which RFC 7672 3.1.2 asks servers to send; a bare-key "2 1 0" for a TA the
  server omits cannot match here.
- usages 0 (PKIX-TA) and 1 (PKIX-EE) are unusable for SMTP (RFC 7672 3.1.3), as are
  unknown selectors or matching types and digests of the wrong length (RFC 7671 4).
- selector 0 (full certificate) and 1 (SubjectPublicKeyInfo); matching type 0 (exact),
  1 (SHA-256), 2 (SHA-512) (RFC 6698 2.1.2, 2.1.3).

One matching usable record is enough (RFC 7671 5). Certificate parsing is in
`mailward.crypto.x509`; this module only decides.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from mailward.crypto import x509
from mailward.resolver import TlsaRecord

DANE_TA = 2
DANE_EE = 3
_DIGEST_SIZE = {0: None, 1: 32, 2: 64}  # matching type -> digest length (None: any)
_NAMES = {0: "PKIX-TA", 1: "PKIX-EE", 2: "DANE-TA", 3: "DANE-EE"}


def usable(record: TlsaRecord) -> bool:
    """Whether an SMTP client may use `record` (RFC 7672 3.1.3, RFC 7671 4)."""
    if record.usage not in (DANE_TA, DANE_EE) or record.selector not in (0, 1):
        return False
    if record.mtype not in _DIGEST_SIZE or not record.data:
        return False
    size = _DIGEST_SIZE[record.mtype]
    return size is None or len(record.data) == size


def usable_records(records: Iterable[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    return tuple(r for r in records if usable(r))


def describe(record: TlsaRecord) -> str:
    """`3 1 1 ab12...` with the usage name, for logs."""
    usage = _NAMES.get(record.usage, "unknown")
    return f"{record.usage} {record.selector} {record.mtype} {record.data.hex()[:16]}... ({usage})"


def association(cert_der: bytes, selector: int, mtype: int) -> bytes:
    """The certificate association data of `cert_der` for (selector, matching type)."""
    selected = cert_der if selector == 0 else x509.spki_der(cert_der)
    if mtype == 0:
        return selected
    if mtype == 1:
        return hashlib.sha256(selected).digest()
    if mtype == 2:
        return hashlib.sha512(selected).digest()
    raise ValueError(f"unknown TLSA matching type {mtype}")


def _matches(record: TlsaRecord, cert_der: bytes) -> bool:
    try:
        return association(cert_der, record.selector, record.mtype) == record.data
    except (x509.CertificateError, ValueError):
        return False


def match(records: Sequence[TlsaRecord], chain: Sequence[bytes], host: str) -> str | None:
    """Authenticate a server chain (DER, leaf first) against the TLSA records of `host`.

    Returns None when a usable record matches, else the reason to defer (safe to log).
    Unusable records are skipped; with no usable record at all, there is nothing to
    authenticate against, so this returns a reason (the caller decides what that
    means: see `tls_policy`, RFC 7672 2.2).
    """
    candidates = usable_records(records)
    if not candidates:
        return "no usable TLSA record (RFC 7672 3.1.3)"
    if not chain:
        return "the server sent no certificate"
    leaf = chain[0]
    problems = []
    for record in candidates:
        if record.usage == DANE_EE:
            if _matches(record, leaf):
                return None  # RFC 7672 3.1.1: no name or date checks
            continue
        for anchor in chain[1:]:
            if not _matches(record, anchor):
                continue
            problem = x509.verify_chain(chain, anchor, host)
            if problem is None:
                return None
            problems.append(problem)
    if problems:
        return f"DANE-TA matched but {problems[0]}"
    return "no TLSA record matches the server's certificate chain"


__all__ = ["DANE_EE", "DANE_TA", "association", "describe", "match", "usable", "usable_records"]
