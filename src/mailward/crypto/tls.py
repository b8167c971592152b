"""TLS policy: the one place SSL contexts are built (NIST SP 800-52 Rev. 2).

Policy (server and client alike):

- TLS 1.2 is the floor and TLS 1.3 is allowed (SP 800-52r2 3.1; RFC 8996 deprecates
  TLS 1.0 and 1.1).
- TLS 1.2 cipher suites are ECDHE key exchange with an AEAD cipher only: AES-GCM and
  ChaCha20-Poly1305 (RFC 7905). No CBC (Lucky13 and its kin), no static-RSA key
  exchange (no forward secrecy), no SHA-1 MACs, no PSK/anonymous suites. SP 800-52r2
  3.3.1 lists the AES suites; ChaCha20 is kept for clients without AES hardware, and
  every suite kept is an AEAD with forward secrecy. TLS 1.3 suites are OpenSSL's
  defaults, which are all AEAD (RFC 8446 B.4).
- No TLS compression (CRIME, RFC 7457 2.6), no renegotiation (RFC 7457 2.10), server
  cipher preference, fresh ECDH keys per handshake.

Certificates and keys are checked before OpenSSL sees them, so an administrator gets
a `TlsConfigError` naming the file at fault (missing, unreadable, not PEM, encrypted,
world-readable, or key not matching the certificate) instead of "PEM lib".
`generate_self_signed` makes an ECDSA P-256 certificate for first runs and tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailward.files import atomic_write

# TLS 1.2 suites: ECDHE (forward secrecy) + AEAD only, strongest first.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

_OPTIONS = (
    ssl.OP_NO_COMPRESSION
    | ssl.OP_NO_RENEGOTIATION
    | ssl.OP_CIPHER_SERVER_PREFERENCE
    | ssl.OP_SINGLE_ECDH_USE
)


class TlsConfigError(Exception):
    """A certificate or key file cannot be used; `path` names the file at fault."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _apply_policy(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= _OPTIONS


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsConfigError(path, f"cannot read {what}: {e.strerror or e}") from None


def _load_certs(path: Path) -> list[x509.Certificate]:
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(path, "not a PEM certificate chain") from None
    return certs


def _load_key(path: Path) -> PrivateKeyTypes:
    data = _read(path, "private key")
    try:
        st = path.stat()
    except OSError as e:  # pragma: no cover - raced with the read above
        raise TlsConfigError(path, f"cannot stat private key: {e.strerror or e}") from None
    if st.st_mode & (stat.S_IROTH | stat.S_IWOTH):
        raise TlsConfigError(
            path,
            f"private key is accessible to every user (mode {st.st_mode & 0o777:o}); chmod 600 it",
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsConfigError(path, "private key is encrypted; a server key must not be") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsConfigError(path, "not a PEM private key") from None


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _no_password() -> str:
    raise ssl.SSLError("private key is encrypted")


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A server context with the policy above and this certificate chain and key."""
    certs = _load_certs(cert_path)
    key = _load_key(key_path)
    if _public_der(key.public_key()) != _public_der(certs[0].public_key()):
        raise TlsConfigError(key_path, f"private key does not match the certificate in {cert_path}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _apply_policy(ctx)
    try:
        ctx.load_cert_chain(cert_path, key_path, password=_no_password)
    except (ssl.SSLError, OSError) as e:
        raise TlsConfigError(key_path, f"OpenSSL refused the certificate or key: {e}") from None
    return ctx


def client_context(cafile: Path | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context with the same floor and suites.

    With `verify` (the default) the peer's chain and host name are checked against
    `cafile` if given, else the system trust store. `verify=False` is for tests and
    for opportunistic STARTTLS to MX hosts (RFC 7435), never for submission.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _apply_policy(ctx)
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cafile is not None:
            try:
                ctx.load_verify_locations(cafile=cafile)
            except (ssl.SSLError, OSError) as e:
                raise TlsConfigError(cafile, f"cannot load CA certificates: {e}") from None
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def generate_self_signed(
    hostnames: list[str], cert_path: Path, key_path: Path, *, days: int = 825
) -> None:
    """Write a self-signed ECDSA P-256 certificate for exactly `hostnames`.

    Each name becomes a subjectAltName (an IP literal becomes an IP SAN, anything else
    a DNS SAN); the first is also the subject CN. 825 days is the longest lifetime
    browsers and CA/B Forum rules accepted for server certificates. The key is written
    first, mode 0600; both files are replaced atomically.
    """
    if not hostnames:
        raise ValueError("generate_self_signed needs at least one host name")
    if days < 1:
        raise ValueError("days must be at least 1")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(key_path, key_pem, mode=0o600)
    atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def describe_tls(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[str, str]:
    """(protocol version, cipher suite name) of a completed handshake, for logs."""
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    if version is None or cipher is None:
        raise ValueError("TLS handshake has not completed")
    return version, cipher[0]
