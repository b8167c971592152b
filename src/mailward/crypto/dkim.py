"""DKIM signing keys and their DNS records (RFC 6376, RFC 8463 Ed25519, RFC 8301).

Each domain gets two keys at once, because Ed25519 (RFC 8463) is small and fast but
not yet verified everywhere, and RSA is verified everywhere; RFC 8463 3 recommends
signing with both. RFC 8301 3.2 sets 1024 bits as the RSA floor; we use 2048.

Layout: `<data_dir>/dkim/<domain>/<selector>.key`, PEM PKCS#8, mode 0600, directories
0700. Selectors are `<yyyymm>e` (Ed25519) and `<yyyymm>r` (RSA) so a rotation gets new
selectors and old signatures stay verifiable while their records remain published.
The public record is derived from the private key when loading, so there is one
file to protect and nothing to keep in step.

Rotation (`rotate_domain_keys`, `mailward dkim rotate`; NIST SP 800-177r1 and
M3AAWG advise replacing DKIM keys periodically): a new selector pair is created next
to the old one and recorded as the signing pair in
`<data_dir>/dkim/<domain>/current.json` (`{"selectors": ["<stem>e", "<stem>r"]}`,
mode 0600, written atomically). Old keys stay until the administrator removes their
files, so their DNS records can stay published while mail signed with them is still
in transit. A directory without `current.json` (made before rotation existed, or by
`generate_domain_keys` alone) signs with its newest selector pair, as before. The
file is read on every `load_domain_keys`, so a running server picks up a rotation
without a restart.

dkimpy's formats: for RSA it takes the PEM itself (PKCS#1 or PKCS#8); for Ed25519
it takes the base64 of the raw 32-byte seed (`nacl.signing.SigningKey` with a base64
encoder). `sign_message` does that conversion here, so no private key leaves this
package.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailward.files import atomic_write, private_directory

RSA_BITS = 2048
_SUFFIX: dict[str, Literal["ed25519", "rsa"]] = {"e": "ed25519", "r": "rsa"}
_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_SELECTOR = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CURRENT_FILE = "current.json"


class DkimKeyError(Exception):
    """A DKIM key file is missing, unsafe, unreadable or would be overwritten."""


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: Literal["ed25519", "rsa"]
    private_key_path: Path
    public_record: str  # the TXT value, "v=DKIM1; k=ed25519; p=..."


def _check_domain(domain: str) -> str:
    d = domain.lower().rstrip(".")
    # The domain becomes a directory name: this check is also the path-traversal guard.
    if not _DOMAIN.match(d):
        raise ValueError(f"not a valid domain name: {domain!r}")
    return d


def _public_record(private_key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        # RFC 8463 4.2: p= is the base64 of the raw 32-byte public key.
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    # RFC 6376 3.6.1: p= is the base64 of the DER SubjectPublicKeyInfo.
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` (mode 0600) atomically; never replace an existing key."""
    try:
        atomic_write(path, data, exclusive=True)
    except FileExistsError:
        raise DkimKeyError(f"{path}: a key with this selector already exists") from None


def generate_domain_keys(
    data_dir: Path, domain: str, *, selector_date: str | None = None
) -> list[DkimKey]:
    """Create an Ed25519 and an RSA-2048 key for `domain`; returns [ed25519, rsa].

    `selector_date` defaults to this UTC month as "yyyymm". Existing keys are never
    overwritten (DkimKeyError): pass another `selector_date` to rotate within a month.
    """
    domain = _check_domain(domain)
    stem = selector_date or datetime.datetime.now(datetime.UTC).strftime("%Y%m")
    if not _SELECTOR.match(stem + "e"):
        raise ValueError(f"selector_date must be letters and digits, not {stem!r}")
    private_directory(data_dir / "dkim")
    directory = data_dir / "dkim" / domain
    private_directory(directory)
    for suffix in _SUFFIX:
        if (directory / f"{stem}{suffix}.key").exists():
            raise DkimKeyError(f"{directory / (stem + suffix)}.key: already exists")
    private_keys: list[tuple[str, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey]] = [
        ("e", ed25519.Ed25519PrivateKey.generate()),
        ("r", rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)),
    ]
    keys = []
    for suffix, private_key in private_keys:
        selector = stem + suffix
        path = directory / f"{selector}.key"
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(path, pem)
        keys.append(DkimKey(domain, selector, _SUFFIX[suffix], path, _public_record(private_key)))
    return keys


def _read_private_key(path: Path) -> ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey:
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as e:
        raise DkimKeyError(f"{path}: cannot read: {e.strerror or e}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DkimKeyError(f"{path}: private key mode is {st.st_mode & 0o777:o}; chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise DkimKeyError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise DkimKeyError(f"{path}: DKIM keys are Ed25519 or RSA")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 1024:
        raise DkimKeyError(f"{path}: RSA key shorter than 1024 bits (RFC 8301 3.2)")
    return key


def _signing_key(path: Path) -> tuple[bytes, bytes]:
    """(the key as dkimpy takes it, its a= algorithm) for the key file at `path`.

    Loading an RSA key costs ~20 ms (cryptography checks it), once per outbound
    message and key without this cache; the file is still stat'ed every time, so a
    replaced key file or a changed mode takes effect at once."""
    try:
        st = path.stat()
    except OSError as e:
        raise DkimKeyError(f"{path}: cannot read: {e.strerror or e}") from None
    return _loaded_signing_key(str(path), st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


@functools.lru_cache(maxsize=64)
def _loaded_signing_key(
    path: str, inode: int, mtime_ns: int, size: int, mode: int
) -> tuple[bytes, bytes]:
    """`_signing_key`, cached by the file's identity (errors are not cached)."""
    private_key = _read_private_key(Path(path))
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        seed = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return base64.b64encode(seed), b"ed25519-sha256"
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, b"rsa-sha256"


def _current_selectors(directory: Path) -> set[str]:
    """The selectors `current.json` names, if it names any (else the empty set)."""
    try:
        data = json.loads((directory / CURRENT_FILE).read_text(encoding="utf-8"))
        selectors = data["selectors"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()  # none yet (or unreadable): the newest pair signs
    if not isinstance(selectors, list):
        return set()
    return {s for s in selectors if isinstance(s, str) and _SELECTOR.match(s)}


def load_domain_keys(data_dir: Path, domain: str) -> list[DkimKey]:
    """The keys on disk for `domain`: the current (signing) pair first, then the
    others newest selector first; Ed25519 before RSA within a pair.

    Sign with the first Ed25519 and the first RSA key (`signing_keys`); the rest are
    retired keys whose DNS records may still be published. An empty list if there are
    none; DkimKeyError for an unreadable or unsafe file.
    """
    domain = _check_domain(domain)
    directory = data_dir / "dkim" / domain
    if not directory.is_dir():
        return []
    keys = []
    for path in directory.glob("*.key"):
        selector = path.stem
        if not _SELECTOR.match(selector):
            continue
        private_key = _read_private_key(path)
        algorithm: Literal["ed25519", "rsa"] = (
            "ed25519" if isinstance(private_key, ed25519.Ed25519PrivateKey) else "rsa"
        )
        keys.append(DkimKey(domain, selector, algorithm, path, _public_record(private_key)))
    current = _current_selectors(directory) & {k.selector for k in keys}
    keys.sort(
        key=lambda k: (k.selector in current, k.selector[:-1], k.algorithm == "ed25519"),
        reverse=True,
    )
    return keys


def signing_keys(data_dir: Path, domain: str) -> list[DkimKey]:
    """The current pair only: the first key of each algorithm in `load_domain_keys`."""
    keys = load_domain_keys(data_dir, domain)
    firsts = (next((k for k in keys if k.algorithm == a), None) for a in ("ed25519", "rsa"))
    return [k for k in firsts if k is not None]


def rotate_domain_keys(
    data_dir: Path, domain: str, *, now: datetime.datetime | None = None
) -> list[DkimKey]:
    """Create a new Ed25519 + RSA pair for `domain` and make it the signing pair.

    The selector stem is the first free one of "yyyymm", "yyyymmdd", "yyyymmddHHMMSS"
    (UTC), so stems sort by age. Returns the new [ed25519, rsa] keys; the old keys are
    kept. DkimKeyError if every candidate is taken (rotated twice within a second).
    """
    domain = _check_domain(domain)
    when = now or datetime.datetime.now(datetime.UTC)
    directory = data_dir / "dkim" / domain
    for pattern in ("%Y%m", "%Y%m%d", "%Y%m%d%H%M%S"):
        stem = when.strftime(pattern)
        if not any((directory / f"{stem}{suffix}.key").exists() for suffix in _SUFFIX):
            break
    else:
        raise DkimKeyError(f"{directory}: a key pair was just created; try again in a second")
    keys = generate_domain_keys(data_dir, domain, selector_date=stem)
    state = {"selectors": [k.selector for k in keys], "since": when.isoformat()}
    atomic_write(directory / CURRENT_FILE, json.dumps(state).encode("utf-8"), mode=0o600)
    return keys


def sign_message(
    message: bytes, key: DkimKey, *, include_headers: Sequence[bytes] | None = None
) -> bytes:
    """The `DKIM-Signature:` header field (ending CRLF) for `message` with `key`.

    Canonicalization relaxed/relaxed (RFC 6376 3.4), the usual choice because it
    survives the header rewrapping relays do. `include_headers` defaults to dkimpy's
    RFC 6376 5.4.1 list (From, To, Subject, Date, Message-ID, ...).
    """
    privkey, algorithm = _signing_key(key.private_key_path)
    signature: bytes = dkim.sign(
        message,
        key.selector.encode("ascii"),
        key.domain.encode("ascii"),
        privkey,
        signature_algorithm=algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(include_headers) if include_headers is not None else None,
    )
    return signature


def dns_records(domain: str, hostname: str, keys: list[DkimKey]) -> list[tuple[str, str, str]]:
    """(name, type, value) records to publish for `domain` served by `hostname`.

    TXT values are returned whole; a zone file must split values over 255 octets
    into several strings (RFC 7208 3.3, RFC 6376 3.6.2.2) - the RSA record is ~400.
    """
    domain = _check_domain(domain)
    host = hostname.rstrip(".") + "."
    records = [
        (domain, "MX", f"10 {host}"),
        # RFC 7208: only our MX hosts send for the domain; -all (fail) because this
        # server is the domain's only mail system, so anything else is forged.
        (domain, "TXT", "v=spf1 mx -all"),
    ]
    for key in keys:
        records.append((f"{key.selector}._domainkey.{key.domain}", "TXT", key.public_record))
    # RFC 7489: quarantine (not reject) so a forwarding or mailing-list mistake lands in
    # spam rather than vanishing while the owner reads the reports; strict alignment
    # (adkim=s, aspf=s) because we sign and send with exactly this domain; aggregate
    # reports to postmaster, which RFC 5321 4.5.1 requires to exist.
    records.append(
        (
            f"_dmarc.{domain}",
            "TXT",
            f"v=DMARC1; p=quarantine; adkim=s; aspf=s; rua=mailto:postmaster@{domain}",
        )
    )
    return records
