"""Administrative operations: what `mailward init/user/alias/domain/dns/dkim/export/import/spam` do.

The CLI (`cli/main.py`) only parses arguments, calls one function here and renders the
result; everything with a rule in it lives here, over the `MailStore` Protocol, so the
same operations can back an admin API later.

Rules kept here:

- A data directory is 0700 and its secrets 0600 (DESIGN.md 3); `init` writes the
  config file last, so an interrupted `init` can simply be run again.
- Every domain needs a postmaster (RFC 5321 4.5.1): the first user added to a domain
  without one gets postmaster@ as an alias.
- Passwords follow `crypto.passwords.password_problem` (NIST SP 800-63B 5.1.1); a
  password is never logged or stored, only its argon2id hash.
- Import goes through `store.new_spool()` + `store.deliver()`, the same durable path
  SMTP uses ("nothing acknowledged is lost"). LF-only input is converted to CRLF, the
  store's canonical form (RFC 5322 2.1); anything else is stored byte for byte, so
  export -> import -> export is byte-identical (message/mbox.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol

from mailward.config.schema import CONFIG_FILE, PORTS, Config
from mailward.files import atomic_write, private_directory
from mailward.message import mbox
from mailward.spam.bayes import BayesFilter
from mailward.spam.tokens import message_tokens
from mailward.spam.training import JUNK_KEYWORD, NOT_JUNK_KEYWORD, is_junk
from mailward.spam.training import READ_LIMIT as SPAM_READ_LIMIT
from mailward.store.api import (
    AlreadyExists,
    Delivery,
    DeliveryReceipt,
    LocalTarget,
    MailStore,
    NotFound,
    QuarantinedMessage,
    QueueEntry,
    SpecialUse,
    StoreError,
    canonical_address,
)

KEY_MODE = 0o600
CERT_MODE = 0o644
# Deliveries in flight during an import: lets the store group-commit many messages per
# fsync while keeping UIDs in file order (each deliver() queues before it awaits).
IMPORT_WINDOW = 32

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")


class AdminError(Exception):
    """A request the administrator must change; the message is safe to show."""


class OperationFailed(Exception):
    """Something outside the request went wrong (a damaged key file, ...); safe to show."""


class Hasher(Protocol):
    async def hash(self, password: str) -> str: ...


# --------------------------------------------------------------------------- validation


def check_domain(name: str) -> str:
    """A domain name in canonical (lower-case, no final dot) form, or AdminError."""
    dom = name.strip().lower().rstrip(".")
    if not dom or len(dom) > 253 or not all(_LABEL.fullmatch(p) for p in dom.split(".")):
        hint = "" if dom.isascii() else " (give an internationalised name in its xn-- form)"
        raise AdminError(f"invalid domain name {name!r}{hint}")
    return dom


def check_address(address: str) -> str:
    """An RFC 5321 4.1.2 mailbox (dot-atom local part) in canonical form."""
    addr = canonical_address(address)
    local, at, domain = addr.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL_PART.fullmatch(local):
        raise AdminError(f"invalid address {address!r} (expected local-part@domain)")
    return f"{local}@{check_domain(domain)}"


def _check_password(password: str, address: str) -> None:
    from mailward.crypto.passwords import password_problem

    problem = password_problem(password, address=address)
    if problem is not None:
        raise AdminError(f"password refused: it {problem}")


# --------------------------------------------------------------------------- files


def _make_private_dir(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise AdminError(f"{path} is not a directory")
    private_directory(path)


def _install_file(source: Path, target: Path, mode: int) -> None:
    """Copy `source` to `target` atomically with `mode` from the first byte."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise AdminError(f"{source}: cannot read: {exc.strerror or exc}") from None
    atomic_write(target, data, mode=mode)


def config_path(data_dir: Path) -> Path:
    return data_dir / CONFIG_FILE


def require_data_dir(data_dir: Path) -> Path:
    """`data_dir/mailward.toml`, or AdminError if `data_dir` was never initialised."""
    path = config_path(data_dir)
    if not path.is_file():
        raise AdminError(f"{data_dir} is not a mailward data directory (run: mailward init)")
    return path


@contextlib.asynccontextmanager
async def opened_store(data_dir: Path) -> AsyncIterator[MailStore]:
    """The data directory's store, closed on the way out."""
    from mailward.app import open_store

    store = await open_store(data_dir)
    try:
        yield store
    finally:
        await store.close()


# --------------------------------------------------------------------------- init


@dataclass(frozen=True)
class InitResult:
    data_dir: Path
    config: Config
    cert_generated: bool
    records: list[tuple[str, str, str]]  # (name, type, value) to publish in DNS
    ports: list[tuple[str, int]]


def listener_ports(config: Config) -> list[tuple[str, int]]:
    """(listener, port) for every enabled listener."""
    return [
        (name, config.listen.port_offset + port)
        for name, port in PORTS.items()
        if getattr(config.listen, name, True)
    ]


async def _domain_records(data_dir: Path, domain: str, hostname: str) -> list[tuple[str, str, str]]:
    """DNS records for `domain`, generating its DKIM keys if it has none yet."""
    from mailward.crypto import dkim

    try:
        keys = await asyncio.to_thread(dkim.load_domain_keys, data_dir, domain)
        if not keys:
            keys = await asyncio.to_thread(dkim.generate_domain_keys, data_dir, domain)
    except dkim.DkimKeyError as exc:
        raise OperationFailed(f"DKIM key: {exc}") from None
    return dkim.dns_records(domain, hostname, keys)


async def init_data_dir(
    data_dir: Path,
    domain: str,
    *,
    hostname: str | None = None,
    port_offset: int = 0,
    listen: str = "",
    cert: Path | None = None,
    key: Path | None = None,
) -> InitResult:
    """Create a data directory serving `domain` (see `mailward init --help`)."""
    from mailward.config.load import ConfigError, load_config, write_config
    from mailward.crypto import tls

    domain = check_domain(domain)
    host = check_domain(hostname) if hostname else f"mail.{domain}"
    if (cert is None) != (key is None):
        raise AdminError("give both --cert and --key, or neither")
    highest = max(PORTS.values())
    if not 0 <= port_offset <= 65535 - highest:
        raise AdminError(f"port offset must be between 0 and {65535 - highest}")
    if listen:
        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise AdminError(f"listen address {listen!r} is not an IP address") from None
    if config_path(data_dir).exists():
        raise AdminError(f"{config_path(data_dir)} already exists; {data_dir} is initialised")

    _make_private_dir(data_dir)
    base = Config()
    config = replace(
        base,
        server=replace(base.server, hostname=host),
        listen=replace(base.listen, port_offset=port_offset, address=listen),
    )

    tls_cert, tls_key = data_dir / config.tls.cert, data_dir / config.tls.key
    _make_private_dir(tls_cert.parent)
    _make_private_dir(tls_key.parent)
    if cert is not None and key is not None:
        _install_file(key, tls_key, KEY_MODE)
        _install_file(cert, tls_cert, CERT_MODE)
        try:
            tls.server_context(tls_cert, tls_key)
        except tls.TlsConfigError as exc:
            tls_cert.unlink(missing_ok=True)
            tls_key.unlink(missing_ok=True)
            raise AdminError(f"unusable certificate or key: {exc.message}") from None
    else:
        names = [host] if host == "localhost" else [host, "localhost"]
        await asyncio.to_thread(tls.generate_self_signed, names, tls_cert, tls_key)

    async with opened_store(data_dir) as store:
        with contextlib.suppress(AlreadyExists):  # a re-run after an interrupted init
            await store.add_domain(domain)
    records = await _domain_records(data_dir, domain, host)

    # Last: written beside its final name, checked by the real loader, then renamed.
    staging = data_dir / f".{CONFIG_FILE}.new"
    write_config(staging, config)
    try:
        config = load_config(staging)
    except ConfigError as exc:
        staging.unlink(missing_ok=True)
        raise AdminError(exc.message) from None
    os.replace(staging, config_path(data_dir))
    return InitResult(data_dir, config, cert is None, records, listener_ports(config))


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class UserInfo:
    address: str
    created: float
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AddUserResult:
    address: str
    generated_password: str | None  # shown once, when we made it up
    postmaster_alias: str | None  # postmaster@domain, when we made it an alias


async def _require_local_domain(store: MailStore, address: str) -> str:
    domain = address.rpartition("@")[2]
    if not await store.is_local_domain(domain):
        raise AdminError(
            f"{domain} is not a local domain (add it first: mailward domain add {domain})"
        )
    return domain


def _password_or_generated(password: str | None, address: str) -> tuple[str, str | None]:
    from mailward.crypto.passwords import generate_password

    if password is None:
        made = generate_password()
        return made, made
    _check_password(password, address)
    return password, None


async def add_user(
    store: MailStore, hasher: Hasher, address: str, password: str | None = None
) -> AddUserResult:
    """Add an account; `password` None means generate one (returned once)."""
    addr = check_address(address)
    domain = await _require_local_domain(store, addr)
    if await store.resolve_recipient(addr) is not None:
        raise AdminError(f"{addr} is already in use")
    secret, generated = _password_or_generated(password, addr)
    await store.add_account(addr, await hasher.hash(secret))
    postmaster = f"postmaster@{domain}"
    alias: str | None = None
    if addr != postmaster and await store.resolve_recipient(postmaster) is None:
        await store.add_alias(postmaster, addr)  # RFC 5321 4.5.1
        alias = postmaster
    return AddUserResult(addr, generated, alias)


async def delete_user(store: MailStore, address: str) -> list[str]:
    """Delete an account, its mail and its aliases; returns the aliases removed."""
    addr = check_address(address)
    if await store.get_account(addr) is None:
        raise AdminError(f"no user {addr}")
    aliases = sorted(a.address for a in await store.list_aliases() if a.target == addr)
    await store.delete_account(addr)  # aliases go with it (ON DELETE CASCADE)
    return aliases


async def set_password(
    store: MailStore, hasher: Hasher, address: str, password: str | None = None
) -> str | None:
    """Replace a user's password; returns the generated one when `password` is None."""
    addr = check_address(address)
    if await store.get_account(addr) is None:
        raise AdminError(f"no user {addr}")
    secret, generated = _password_or_generated(password, addr)
    await store.set_password_hash(addr, await hasher.hash(secret))
    return generated


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """ "500M" -> bytes; K/M/G/T are powers of 1024, a trailing "B" is allowed."""
    value = text.strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in _SIZE_UNITS else ""
    number = value[: len(value) - len(unit)]
    if not number.isdigit():
        raise AdminError(f"not a size: {text!r} (examples: 0, 750M, 2G)")
    return int(number) * _SIZE_UNITS[unit]


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return f"{size}B" if size < 1024 else f"{size / 1024:.1f}K"


async def user_quota(store: MailStore, address: str, limit: int | None) -> tuple[int, int]:
    """Set the quota when `limit` is given; returns (bytes used, quota; 0 = none)."""
    addr = check_address(address)
    account = await store.get_account(addr)
    if account is None:
        raise AdminError(f"no user {addr}")
    if limit is not None:
        await store.set_quota(addr, limit)
    quota = await store.get_quota(account.id)
    return quota.used, quota.limit


async def list_users(store: MailStore) -> list[UserInfo]:
    aliases: dict[str, list[str]] = {}
    for alias in await store.list_aliases():
        aliases.setdefault(alias.target, []).append(alias.address)
    return [
        UserInfo(a.address, a.created, sorted(aliases.get(a.address, [])))
        for a in sorted(await store.list_accounts(), key=lambda a: a.address)
    ]


# --------------------------------------------------------------------------- aliases


async def add_alias(store: MailStore, alias: str, target: str) -> str:
    """Make `alias` deliver to the account `target`; returns the canonical alias."""
    addr, tgt = check_address(alias), check_address(target)
    await _require_local_domain(store, addr)
    if await store.get_account(tgt) is None:
        raise AdminError(f"no user {tgt} (an alias must point at an existing user)")
    if await store.resolve_recipient(addr) is not None:
        raise AdminError(f"{addr} is already in use")
    await store.add_alias(addr, tgt)
    return addr


async def delete_alias(store: MailStore, alias: str) -> None:
    addr = check_address(alias)
    try:
        await store.delete_alias(addr)
    except NotFound:
        raise AdminError(f"no alias {addr}") from None


async def list_aliases(store: MailStore) -> list[tuple[str, str]]:
    return sorted((a.address, a.target) for a in await store.list_aliases())


# --------------------------------------------------------------------------- domains


async def add_domain(
    store: MailStore, data_dir: Path, domain: str, hostname: str
) -> list[tuple[str, str, str]]:
    """Serve `domain` too; generates its DKIM keys and returns the records to publish."""
    dom = check_domain(domain)
    try:
        await store.add_domain(dom)
    except AlreadyExists:
        raise AdminError(f"{dom} is already a local domain") from None
    return await _domain_records(data_dir, dom, hostname)


async def list_domains(store: MailStore) -> list[str]:
    return sorted(await store.list_domains())


# --------------------------------------------------------------------------- DNS, DKIM rotation

MTA_STS_TESTING_MAX_AGE = 86400  # one day while in mode testing; raise it with enforce


@dataclass(frozen=True)
class DnsRecord:
    purpose: str  # MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, DANE
    name: str  # without the final dot
    rtype: str
    value: str  # TXT values whole: split into <=255-octet strings for a zone file


@dataclass(frozen=True)
class DnsPlan:
    """Everything to publish for a domain: `mailward dns`."""

    domain: str
    hostname: str
    records: list[DnsRecord]
    mta_sts_url: str
    mta_sts_policy: str
    notes: list[str]


def mta_sts_policy_text(hostname: str, *, mode: str = "testing", max_age: int = 0) -> str:
    """An RFC 8461 3.2 policy file allowing only `hostname` as MX."""
    age = max_age or MTA_STS_TESTING_MAX_AGE
    return f"version: STSv1\nmode: {mode}\nmx: {hostname}\nmax_age: {age}\n"


def mta_sts_id(policy_text: str) -> str:
    """The `id=` for the `_mta-sts` TXT record: from the policy content, so it changes
    exactly when the policy does (RFC 8461 3.1: 1-32 letters and digits)."""
    return hashlib.sha256(policy_text.encode("utf-8")).hexdigest()[:20]


def _spf_value(config: Config) -> str:
    # RFC 7208: only our MX hosts send for the domain; the listen address too when it
    # is a public one (an "mx" lookup costs the receiver a DNS query, ip4/ip6 none).
    address = config.listen.address
    if address:
        ip = ipaddress.ip_address(address)
        if ip.is_global:
            return f"v=spf1 mx ip{ip.version}:{ip} -all"
    return "v=spf1 mx -all"


def _tlsa_value(cert_path: Path) -> str:
    from mailward.crypto import x509
    from mailward.queue import dane

    digest = dane.association(x509.leaf_der_from_pem(cert_path), 1, 1)
    return f"3 1 1 {digest.hex()}"  # DANE-EE, SPKI, SHA-256: RFC 7671 5.1 recommends it


def _purpose(name: str, rtype: str, value: str) -> str:
    if rtype == "MX":
        return "MX"
    if value.startswith("v=spf1"):
        return "SPF"
    if "._domainkey." in name:
        return "DKIM"
    if name.startswith("_dmarc."):
        return "DMARC"
    return rtype


async def dns_plan(store: MailStore, data_dir: Path, domain: str, config: Config) -> DnsPlan:
    """The DNS records (and MTA-STS policy file) to publish for a local domain."""
    from mailward.crypto import dkim

    dom = check_domain(domain)
    if not await store.is_local_domain(dom):
        raise AdminError(f"{dom} is not a local domain (add it first: mailward domain add {dom})")
    hostname = config.server.hostname.rstrip(".").lower()
    records: list[DnsRecord] = []
    for name, rtype, value in await _domain_records(data_dir, dom, hostname):
        purpose = _purpose(name, rtype, value)
        if purpose == "SPF":
            value = _spf_value(config)
        records.append(DnsRecord(purpose, name.rstrip("."), rtype, value))
    policy = mta_sts_policy_text(hostname)
    url = f"https://mta-sts.{dom}/.well-known/mta-sts.txt"
    records.append(
        DnsRecord("MTA-STS", f"_mta-sts.{dom}", "TXT", f"v=STSv1; id={mta_sts_id(policy)}")
    )
    records.append(
        DnsRecord("TLS-RPT", f"_smtp._tls.{dom}", "TXT", f"v=TLSRPTv1; rua=mailto:tlsrpt@{dom}")
    )
    notes = [
        "DMARC starts at p=quarantine: mail failing SPF and DKIM goes to spam instead of "
        f"vanishing while the aggregate reports (to postmaster@{dom}) show who sends as "
        f"{dom}; move to p=reject once they list only this server (RFC 7489 6.3).",
        f"MTA-STS: serve the policy below at {url} (HTTPS, a certificate valid for "
        f"mta-sts.{dom}, Content-Type text/plain, no redirect). It starts in mode "
        "testing: once TLS-RPT reports show no failures, change it to mode: enforce and "
        "max_age: 604800 or more, and publish the new id `mailward dns` prints (RFC 8461).",
        f"TLS-RPT reports (RFC 8460) go to tlsrpt@{dom}: make it reach someone, e.g. "
        f"mailward alias add tlsrpt@{dom} you@{dom}",
    ]
    cert_path = data_dir / config.tls.cert
    try:
        tlsa = await asyncio.to_thread(_tlsa_value, cert_path)
    except ValueError as exc:  # x509.CertificateError
        notes.append(f"DANE: no TLSA record: {exc}")
    else:
        records.append(DnsRecord("DANE", f"_25._tcp.{hostname}", "TLSA", tlsa))
        notes.append(
            f"DANE (RFC 7672): the TLSA record counts only if {hostname}'s zone is "
            "DNSSEC-signed. It pins the key of the certificate in "
            f"{config.tls.cert}: keep the key when renewing (certbot --reuse-key), or "
            "publish the new key's record and wait a TTL before switching (RFC 7671 8.1)."
        )
    dkim_keys = [r for r in records if r.purpose == "DKIM"]
    if len(dkim_keys) > 2:
        keys = await asyncio.to_thread(dkim.load_domain_keys, data_dir, dom)
        old = ", ".join(k.selector for k in keys[2:])
        notes.append(
            f"DKIM: retired selectors {old} are listed while their key files remain in "
            f"{data_dir / 'dkim' / dom}; delete the files (and the records) when no mail "
            "signed with them can still be in transit (a week is plenty)."
        )
    return DnsPlan(dom, hostname, records, url, policy, notes)


@dataclass(frozen=True)
class RotateResult:
    domain: str
    selectors: list[str]  # the new signing pair, [Ed25519, RSA]
    records: list[DnsRecord]  # their DKIM records
    retired: list[Path]  # older key files still on disk


async def rotate_dkim(store: MailStore, data_dir: Path, domain: str) -> RotateResult:
    """New DKIM key pair for a local domain, signing from now on; old keys are kept."""
    from mailward.crypto import dkim

    dom = check_domain(domain)
    if not await store.is_local_domain(dom):
        raise AdminError(f"{dom} is not a local domain")
    try:
        keys = await asyncio.to_thread(dkim.rotate_domain_keys, data_dir, dom)
        every = await asyncio.to_thread(dkim.load_domain_keys, data_dir, dom)
    except dkim.DkimKeyError as exc:
        raise OperationFailed(f"DKIM key: {exc}") from None
    selectors = [k.selector for k in keys]
    records = [
        DnsRecord("DKIM", f"{k.selector}._domainkey.{dom}", "TXT", k.public_record) for k in keys
    ]
    retired = sorted(k.private_key_path for k in every if k.selector not in selectors)
    return RotateResult(dom, selectors, records, retired)


# --------------------------------------------------------------------------- export / import


async def _account_id(store: MailStore, address: str) -> int:
    addr = check_address(address)
    account = await store.get_account(addr)
    if account is None:
        raise AdminError(f"no user {addr}")
    return account.id


async def export_mailbox(store: MailStore, address: str, mailbox: str, out: BinaryIO) -> int:
    """Write one mailbox as mboxrd to `out`, oldest UID first; returns the count."""
    account_id = await _account_id(store, address)
    if await store.get_mailbox(account_id, mailbox) is None:
        raise AdminError(f"{address} has no mailbox {mailbox!r}")
    count = 0
    for info in sorted(await store.list_messages(account_id, mailbox), key=lambda m: m.uid):
        data = await store.read_message(account_id, mailbox, info.uid)
        sender = mbox.envelope_sender(data)
        out.write(mbox.mboxrd_entry(data, sender=sender, date=info.internal_date))
        count += 1
    out.flush()
    return count


@dataclass
class ImportResult:
    imported: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (label, problem)


ProgressCallback = Callable[[int, int], None]  # (done, total) in source-specific units
ProblemCallback = Callable[[str, str], None]  # (label, problem)


def _spool(store: MailStore, data: bytes) -> Path:
    path = store.new_spool()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, KEY_MODE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _entries(
    source: Path, max_size: int, progress: ProgressCallback | None
) -> Iterator[mbox.MailEntry]:
    if mbox.is_maildir(source):
        files = mbox.maildir_files(source)
        for done, path in enumerate(files, 1):
            yield mbox.read_maildir_file(path, max_size=max_size)
            if progress is not None:
                progress(done, len(files))
        return
    if source.is_dir():
        raise AdminError(f"{source} is a directory but not a Maildir (no cur/ or new/)")
    try:
        handle = open(source, "rb")  # noqa: SIM115 - closed below, generator-owned
    except OSError as exc:
        raise AdminError(f"{source}: cannot read: {exc.strerror or exc}") from None
    with handle:
        total = os.fstat(handle.fileno()).st_size
        reader = mbox.MboxReader(handle, max_size=max_size)
        for entry in reader:
            yield entry
            if progress is not None:
                progress(reader.position, total)


async def import_messages(
    store: MailStore,
    address: str,
    source: Path,
    mailbox: str = "INBOX",
    *,
    max_size: int = mbox.DEFAULT_MAX_SIZE,
    progress: ProgressCallback | None = None,
    problem: ProblemCallback | None = None,
) -> ImportResult:
    """Deliver every message of an mbox file or a Maildir into one mailbox.

    The mailbox is created if missing. Malformed entries (and ones the store refuses)
    are reported through `problem` and skipped; the rest keep their order.
    """
    account_id = await _account_id(store, address)
    if await store.get_mailbox(account_id, mailbox) is None:
        await store.create_mailbox(account_id, mailbox)
    result = ImportResult()
    pending: list[tuple[str, asyncio.Task[object]]] = []

    async def settle(label: str, task: asyncio.Task[object]) -> None:
        try:
            await task
        except StoreError as exc:
            result.skipped.append((label, str(exc)))
            if problem is not None:
                problem(label, str(exc))
        else:
            result.imported += 1

    try:
        for entry in _entries(source, max_size, progress):
            if entry.problem:
                result.skipped.append((entry.label, entry.problem))
                if problem is not None:
                    problem(entry.label, entry.problem)
                continue
            target = LocalTarget(account_id, mailbox, entry.flags)
            delivery = Delivery(
                spool=_spool(store, mbox.canonical_line_endings(entry.data)),
                sender="",
                local=[target],
                outbound=[],
                internal_date=entry.internal_date,
            )
            pending.append((entry.label, asyncio.ensure_future(store.deliver(delivery))))
            # Let the task reach the store's queue now, so UIDs follow file order.
            await asyncio.sleep(0)
            if len(pending) >= IMPORT_WINDOW:
                await settle(*pending.pop(0))
        while pending:
            await settle(*pending.pop(0))
    finally:
        for _, task in pending:  # interrupted: let queued deliveries finish
            with contextlib.suppress(Exception):
                await task
    return result


# --------------------------------------------------------------------------- outbound queue

QUEUE_SHOWN_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")


@dataclass(frozen=True)
class QueueDetail:
    entry: QueueEntry
    headers: list[tuple[str, str]]  # a few header fields of the message, never its body


def parse_queue_id(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 18:
        raise AdminError(f"not a queue entry id: {text!r} (see: mailward queue list)")
    return int(value)


async def queue_list(store: MailStore) -> list[QueueEntry]:
    """Every outbound entry (one per recipient), oldest first."""
    return await store.list_queue()


async def queue_show(store: MailStore, entry_id: int) -> QueueDetail:
    entry = await store.get_queue_entry(entry_id)
    if entry is None:
        raise AdminError(f"no queue entry {entry_id}")
    return QueueDetail(entry, await _shown_headers(store, entry.blob_id))


async def _shown_headers(store: MailStore, blob_id: str) -> list[tuple[str, str]]:
    """A few header fields of a stored message for an administrator (never the body)."""
    from mailward.message.headers import (
        MAX_HEADER_SECTION,
        HeaderSectionTooLarge,
        header_section,
        header_values,
    )

    try:
        head = await store.read_blob(blob_id, 0, MAX_HEADER_SECTION + 4)
        section = header_section(head, complete=len(head) <= MAX_HEADER_SECTION)
    except (StoreError, HeaderSectionTooLarge):
        section = b""
    headers: list[tuple[str, str]] = []
    for name in QUEUE_SHOWN_HEADERS:
        headers += [(name, value[:200]) for value in header_values(section, name)]
    return headers


async def queue_retry(store: MailStore, entry_id: int) -> QueueEntry:
    """Make a waiting entry due now (a running server tries it within a second)."""
    import time

    try:
        return await store.retry_queue_entry(entry_id, time.time())
    except NotFound:
        raise AdminError(f"no queue entry {entry_id}") from None


async def queue_delete(store: MailStore, entry_id: int) -> QueueEntry:
    """Remove an entry without delivering it; no DSN is sent."""
    try:
        return await store.delete_queue_entry(entry_id)
    except NotFound:
        raise AdminError(f"no queue entry {entry_id}") from None


# --------------------------------------------------------------------------- quarantine


@dataclass(frozen=True)
class QuarantineDetail:
    entry: QuarantinedMessage
    headers: list[tuple[str, str]]  # a few header fields of the message, never its body


def parse_quarantine_id(text: str) -> int:
    value = text.strip()
    if not value.isdigit() or len(value) > 18:
        raise AdminError(f"not a quarantine id: {text!r} (see: mailward quarantine list)")
    return int(value)


async def quarantine_list(store: MailStore) -> list[QuarantinedMessage]:
    """Every held message, oldest first."""
    return await store.list_quarantine()


async def quarantine_show(store: MailStore, entry_id: int) -> QuarantineDetail:
    try:
        entry = await store.get_quarantined(entry_id)
    except NotFound:
        raise AdminError(f"no quarantined message {entry_id}") from None
    return QuarantineDetail(entry, await _shown_headers(store, entry.blob_id))


async def quarantine_message(store: MailStore, entry_id: int) -> bytes:
    """The held message itself, for an administrator who asked to review it."""
    try:
        entry = await store.get_quarantined(entry_id)
    except NotFound:
        raise AdminError(f"no quarantined message {entry_id}") from None
    return await store.read_blob(entry.blob_id)


async def quarantine_release(store: MailStore, entry_id: int) -> DeliveryReceipt:
    """Deliver a held message on its normal way (a running server sends the outbound
    part within seconds)."""
    try:
        return await store.release_quarantined(entry_id)
    except NotFound:
        raise AdminError(f"no quarantined message {entry_id}") from None


async def quarantine_delete(store: MailStore, entry_id: int) -> None:
    try:
        await store.delete_quarantined(entry_id)
    except NotFound:
        raise AdminError(f"no quarantined message {entry_id}") from None


# --------------------------------------------------------------------------- spam (Bayes)

# Newest messages per class `spam train --from-mailboxes` reads (bounded work).
SPAM_TRAIN_LIMIT = 2000


@dataclass
class SpamTrainResult:
    trained: int = 0  # counted now (new, or moved from the other class)
    unchanged: int = 0  # trained as this class already
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (label, problem)


@dataclass(frozen=True)
class SpamStatus:
    address: str
    spam: int  # messages trained as spam
    ham: int
    min_trained: int  # of each, before the filter gives verdicts
    enabled: bool  # spam.bayes in the configuration

    @property
    def active(self) -> bool:
        return self.enabled and min(self.spam, self.ham) >= self.min_trained


def _spam_entries(source: Path, max_size: int) -> Iterator[mbox.MailEntry]:
    """The messages of a file to train from: an mbox (starts with "From "), a Maildir,
    or one RFC 5322 message."""
    if source.is_dir():
        yield from _entries(source, max_size, None)
        return
    try:
        with open(source, "rb") as handle:
            head = handle.read(5)
            if head == b"From ":
                handle.seek(0)
                yield from mbox.MboxReader(handle, max_size=max_size)
                return
            data = head + handle.read(max_size)
    except OSError as exc:
        raise AdminError(f"{source}: cannot read: {exc.strerror or exc}") from None
    if len(data) > max_size:
        yield mbox.MailEntry(str(source), b"", problem=f"larger than {max_size} bytes")
    elif not data.strip() or b":" not in data.split(b"\n", 1)[0]:
        yield mbox.MailEntry(str(source), b"", problem="not an RFC 5322 message or mbox")
    else:
        yield mbox.MailEntry(str(source), data)


async def _train_one(
    bayes: BayesFilter, account_id: int, key: str, data: bytes, *, spam: bool
) -> bool:
    tokens = await asyncio.to_thread(message_tokens, data[:SPAM_READ_LIMIT])
    return await bayes.train(account_id, key, tokens, spam=spam)


async def spam_train_files(
    store: MailStore,
    address: str,
    sources: Sequence[Path],
    *,
    spam: bool,
    max_size: int = mbox.DEFAULT_MAX_SIZE,
    problem: ProblemCallback | None = None,
) -> SpamTrainResult:
    """Train a user's Bayes filter with every message of the files (RFC 5322 messages,
    mbox files, Maildirs) as spam or ham. A message is keyed by the SHA-256 of its
    CRLF form, so training the same file again changes nothing."""
    account_id = await _account_id(store, address)
    bayes = BayesFilter(store)
    result = SpamTrainResult()
    for source in sources:
        if not source.exists():
            raise AdminError(f"{source}: no such file or directory")
        for entry in _spam_entries(source, max_size):
            if entry.problem:
                result.skipped.append((entry.label, entry.problem))
                if problem is not None:
                    problem(entry.label, entry.problem)
                continue
            data = mbox.canonical_line_endings(entry.data)
            key = "sha256:" + hashlib.sha256(data).hexdigest()
            if await _train_one(bayes, account_id, key, data, spam=spam):
                result.trained += 1
            else:
                result.unchanged += 1
    return result


async def spam_train_mailboxes(
    store: MailStore, address: str, *, limit: int = SPAM_TRAIN_LIMIT
) -> tuple[SpamTrainResult, SpamTrainResult]:
    """Train a user's filter from their own mailboxes: the newest `limit` messages of
    the Junk mailbox(es) as spam, of INBOX and Archive as ham (messages the user
    marked $Junk / $NotJunk against their folder are left out). Keyed by blob id, as
    IMAP training is. Returns the (spam, ham) results."""
    if limit < 1:
        raise AdminError("the limit must be at least 1")
    account_id = await _account_id(store, address)
    boxes = await store.list_mailboxes(account_id)
    junk = [b for b in boxes if is_junk(b)]
    ham = [
        b
        for b in boxes
        if not is_junk(b)
        and (b.name == "INBOX" or b.special_use == SpecialUse.ARCHIVE or b.name == "Archive")
    ]
    bayes = BayesFilter(store)
    results: dict[bool, SpamTrainResult] = {}
    # Ham first: a message copied into both Junk and INBOX ends up trained as spam.
    for spam, mailboxes in ((False, ham), (True, junk)):
        against = (NOT_JUNK_KEYWORD if spam else JUNK_KEYWORD).lower()
        newest: list[tuple[float, int, str, str]] = []
        for box in mailboxes:
            for info in await store.list_messages(account_id, box.name):
                if against not in {f.lower() for f in info.flags}:
                    newest.append((info.internal_date, info.uid, info.blob_id, box.name))
        newest.sort(reverse=True)
        chosen: dict[str, tuple[int, str]] = {}  # blob id -> (uid, mailbox): copies once
        for _date, uid, blob_id, name in newest:
            if len(chosen) >= limit:
                break
            chosen.setdefault(blob_id, (uid, name))
        result = results[spam] = SpamTrainResult()
        for blob_id, (uid, name) in chosen.items():
            try:
                data = await store.read_blob(blob_id, 0, SPAM_READ_LIMIT)
            except NotFound:
                result.skipped.append((f"{name} uid {uid}", "expunged meanwhile"))
                continue
            if await _train_one(bayes, account_id, blob_id, data, spam=spam):
                result.trained += 1
            else:
                result.unchanged += 1
    return results[True], results[False]


async def spam_status(
    store: MailStore, address: str, *, enabled: bool, min_trained: int
) -> SpamStatus:
    """How much a user's Bayes filter has learnt, and whether it gives verdicts."""
    account_id = await _account_id(store, address)
    spam, ham = await BayesFilter(store, min_trained=min_trained).trained(account_id)
    return SpamStatus(check_address(address), spam, ham, max(1, min_trained), enabled)
