"""MTA-STS, the sender side (RFC 8461): discover, fetch, parse and cache a domain's policy.

Discovery (RFC 8461 3.1): the TXT record at `_mta-sts.<domain>`, `v=STSv1; id=...`.
Records not starting `v=STSv1;` are ignored; if not exactly one remains, or it does
not parse, the domain has no (new) policy.

Fetch (RFC 8461 3.3): `https://mta-sts.<domain>/.well-known/mta-sts.txt`, the
certificate validated against the web PKI for that name, status 200 only, 3xx
redirects refused, no HTTP cache, media type text/plain. We also bound the body to
64 KiB and the whole fetch to 10 seconds, so a hostile web server cannot stall or
flood a delivery worker.

Policy (RFC 8461 3.2): `key: value` lines (LF or CRLF): `version: STSv1`, `mode:
enforce|testing|none`, `max_age:` seconds (at most 31557600, one year), `mx:` patterns
(repeatable; a leading `*.` matches exactly one leftmost label, RFC 8461 4.1). Unknown
keys are ignored; for a repeated key other than `mx` the first one counts.

Cache (RFC 8461 5.1): a policy is used until `max_age` after it was fetched; the TXT
`id` changing means "fetch again". When no live policy can be had (no TXT record, a
DNS failure, a failed fetch or a policy that does not parse) but an unexpired cached
one exists, the cached one applies; with nothing cached, delivery proceeds as if the
domain had no MTA-STS. Entries live in memory and, so a restart does not forget them
(which would reopen the first-contact window), as one JSON file per domain under the
cache directory (directory 0700, files 0600, written atomically).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mailward.crypto import tls
from mailward.files import atomic_write, private_directory
from mailward.resolver import DnsTemporaryError, Resolver

MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2
MAX_POLICY_SIZE = 64 * 1024
FETCH_TIMEOUT = 10.0
POLICY_PATH = "/.well-known/mta-sts.txt"
_HEADER_LIMIT = 8192  # bytes in one status or header line
_MAX_HEADERS = 100
_CACHE_FORMAT = 1

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+")
_TXT_VERSION = re.compile(r"v=STSv1[ \t]*;")
_TXT_ID = re.compile(r"id=([A-Za-z0-9]{1,32})")
_TXT_EXTENSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+")
_POLICY_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")

Fetch = Callable[[str], Awaitable[str]]


class MtaStsError(Exception):
    """A TXT record, policy or fetch that cannot be used; the text is safe to log."""


def normalize_domain(domain: str) -> str | None:
    """Lower-case, no final dot, and a syntactically valid A-label name; else None.

    The name comes from a recipient address, so this is also what keeps it safe as a
    cache file name.
    """
    name = domain.strip().lower().rstrip(".")
    return name if _DOMAIN.fullmatch(name) else None


# --------------------------------------------------------------------------- parsing


def parse_txt(records: list[str]) -> str | None:
    """The policy id from the `_mta-sts` TXT records; None if there is no STSv1 record.

    MtaStsError if there are several STSv1 records or the one there is does not parse
    (RFC 8461 3.1: either way the domain is treated as having no policy).
    """
    candidates = [r for r in records if _TXT_VERSION.match(r)]
    if not candidates:
        return None
    if len(candidates) > 1:
        raise MtaStsError(f"{len(candidates)} v=STSv1 TXT records (RFC 8461 3.1 needs one)")
    fields = [f.strip(" \t") for f in candidates[0].split(";")][1:]
    policy_id = None
    for field in fields:
        if not field:
            continue
        found = _TXT_ID.fullmatch(field)
        if found:
            policy_id = policy_id or found.group(1)
        elif not _TXT_EXTENSION.fullmatch(field):
            raise MtaStsError(f"bad field {field[:40]!r} in the MTA-STS TXT record")
    if policy_id is None:
        raise MtaStsError("MTA-STS TXT record has no id")
    return policy_id


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: exact match, or `*.rest` matching one extra leftmost label."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


@dataclass(frozen=True)
class MtaStsPolicy:
    mode: str  # "enforce" | "testing" | "none"
    max_age: int
    mx: tuple[str, ...] = ()

    def mx_allowed(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_policy(text: str) -> MtaStsPolicy:
    """Parse a policy file body (RFC 8461 3.2); MtaStsError names what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for raw in text.split("\n"):
        line = raw.removesuffix("\r").rstrip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon or not _POLICY_KEY.fullmatch(key):
            raise MtaStsError(f"bad policy line {line[:40]!r}")
        value = value.lstrip(" \t")
        if key == "mx":
            mx.append(value)
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise MtaStsError(f"policy version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode")
    if mode not in ("enforce", "testing", "none"):
        raise MtaStsError(f"policy mode is {mode!r}, not enforce, testing or none")
    age_text = fields.get("max_age", "")
    if not (age_text.isascii() and age_text.isdigit() and len(age_text) <= 10):
        raise MtaStsError(f"policy max_age {age_text[:20]!r} is not a number of seconds")
    max_age = int(age_text)
    if max_age > MAX_AGE_LIMIT:
        raise MtaStsError(f"policy max_age {max_age} exceeds {MAX_AGE_LIMIT} (RFC 8461 3.2)")
    for pattern in mx:
        name = pattern.lower().rstrip(".").removeprefix("*.")
        if normalize_domain(name) is None:
            raise MtaStsError(f"bad mx pattern {pattern[:60]!r}")
    if mode != "none" and not mx:
        raise MtaStsError(f"policy mode {mode} without any mx pattern")
    return MtaStsPolicy(mode, max_age, tuple(p.lower().rstrip(".") for p in mx))


# --------------------------------------------------------------------------- fetching


class HttpsPolicyFetcher:
    """Fetch `https://mta-sts.<domain>/.well-known/mta-sts.txt` (RFC 8461 3.3).

    Web PKI validation with the system trust store plus `cafile` if given; `port` and
    `connect_host` let tests serve the policy from loopback while the TLS name (SNI
    and certificate check) and the Host header stay `mta-sts.<domain>`.
    """

    def __init__(
        self,
        *,
        cafile: Path | None = None,
        timeout: float = FETCH_TIMEOUT,
        max_size: int = MAX_POLICY_SIZE,
        port: int = 443,
        connect_host: str | None = None,
    ) -> None:
        self._cafile = cafile
        self._timeout = timeout
        self._max_size = max_size
        self._port = port
        self._connect_host = connect_host
        self._context: ssl.SSLContext | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        if self._context is None:
            ctx = tls.client_context()  # CERT_REQUIRED, check_hostname, system CAs
            if self._cafile is not None:
                ctx.load_verify_locations(cafile=self._cafile)
            self._context = ctx
        return self._context

    async def __call__(self, domain: str) -> str:
        host = f"mta-sts.{domain}"
        try:
            async with asyncio.timeout(self._timeout):
                return await self._get(host)
        except TimeoutError:
            raise MtaStsError(f"fetching the policy from {host} timed out") from None
        except ssl.SSLCertVerificationError as e:
            raise MtaStsError(f"{host}: certificate not valid: {e.verify_message}") from None
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            raise MtaStsError(f"{host}: {e.__class__.__name__}: {e}") from None

    async def _get(self, host: str) -> str:
        reader, writer = await asyncio.open_connection(
            self._connect_host or host,
            self._port,
            ssl=self._ssl_context(),
            server_hostname=host,
            limit=_HEADER_LIMIT,
        )
        try:
            authority = host if self._port == 443 else f"{host}:{self._port}"
            writer.write(
                (
                    f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {authority}\r\n"
                    "Accept: text/plain\r\nUser-Agent: mailward\r\nConnection: close\r\n\r\n"
                ).encode("ascii")
            )
            await writer.drain()
            body = await self._read_response(reader)
        finally:
            writer.close()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise MtaStsError(f"{host}: the policy is not UTF-8 text") from None

    async def _line(self, reader: asyncio.StreamReader) -> str:
        try:
            raw = await reader.readuntil(b"\n")
        except ValueError:  # LimitOverrunError on a line longer than the limit
            raise MtaStsError("HTTP header line too long") from None
        return raw.decode("latin-1").rstrip("\r\n")

    async def _read_response(self, reader: asyncio.StreamReader) -> bytes:
        status_line = await self._line(reader)
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise MtaStsError(f"not an HTTP response: {status_line[:40]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = await self._line(reader)
            if not line:
                break
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), value.strip())
        else:
            raise MtaStsError("too many HTTP header fields")
        if 300 <= status < 400:
            raise MtaStsError(f"HTTP {status} redirect refused (RFC 8461 3.3)")
        if status != 200:
            raise MtaStsError(f"HTTP status {status}")
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "text/plain":
            raise MtaStsError(f"content type {media_type or 'missing'!r}, not text/plain")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked(reader)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise MtaStsError("bad Content-Length")
            if int(length) > self._max_size:
                raise MtaStsError(f"policy larger than {self._max_size} bytes")
            return await reader.readexactly(int(length))
        body = b""
        while chunk := await reader.read(self._max_size + 1 - len(body)):
            body += chunk
            if len(body) > self._max_size:
                raise MtaStsError(f"policy larger than {self._max_size} bytes")
        return body

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        body = b""
        while True:
            size_text = (await self._line(reader)).split(";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise MtaStsError("bad chunked encoding") from None
            if size == 0:
                return body
            if len(body) + size > self._max_size:
                raise MtaStsError(f"policy larger than {self._max_size} bytes")
            body += await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after each chunk


# --------------------------------------------------------------------------- cache


@dataclass(frozen=True)
class CachedPolicy:
    policy_id: str
    policy: MtaStsPolicy
    fetched_at: float

    def valid(self, now: float) -> bool:
        return now < self.fetched_at + self.policy.max_age


@dataclass(frozen=True)
class StsLookup:
    """The policy that applies (None: proceed as without MTA-STS) and why."""

    policy: MtaStsPolicy | None
    note: str
    policy_id: str = ""


class MtaStsCache:
    """Policies by domain, in memory and under `cache_dir`; see the module docstring.

    `fetch(domain)` returns the policy text for `domain` or raises; the default is an
    `HttpsPolicyFetcher` trusting the system CAs plus `cafile`. One fetch per domain
    runs at a time; concurrent deliveries to the same domain wait for it.
    """

    def __init__(
        self,
        cache_dir: Path,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.time,
        *,
        cafile: Path | None = None,
    ) -> None:
        self._dir = cache_dir
        self._fetch: Fetch = fetch if fetch is not None else HttpsPolicyFetcher(cafile=cafile)
        self._clock = clock
        self._memory: dict[str, CachedPolicy | None] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # ----------------------------------------------------------------- storage

    def _path(self, domain: str) -> Path:
        return self._dir / f"{domain}.json"

    def _read(self, domain: str) -> CachedPolicy | None:
        try:
            data = json.loads(self._path(domain).read_text(encoding="utf-8"))
            if data.get("format") != _CACHE_FORMAT:
                return None
            return CachedPolicy(
                str(data["id"]), parse_policy(str(data["policy"])), float(data["fetched_at"])
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, MtaStsError):
            return None  # missing or damaged: as if never fetched

    def _write(self, domain: str, entry: CachedPolicy, text: str) -> None:
        private_directory(self._dir)
        data = {
            "format": _CACHE_FORMAT,
            "domain": domain,
            "id": entry.policy_id,
            "fetched_at": entry.fetched_at,
            "policy": text,
        }
        atomic_write(self._path(domain), json.dumps(data).encode("utf-8"), mode=0o600)

    async def cached(self, domain: str) -> CachedPolicy | None:
        """The cached entry for `domain`, expired or not (None if none)."""
        name = normalize_domain(domain)
        if name is None:
            return None
        if name not in self._memory:
            loaded = await asyncio.to_thread(self._read, name)
            # (another task may have fetched a fresh policy meanwhile: it wins)
            self._memory.setdefault(name, loaded)
        return self._memory[name]

    # ----------------------------------------------------------------- lookup

    async def lookup(self, domain: str, resolver: Resolver) -> StsLookup:
        """The MTA-STS policy to apply to mail for `domain` now (RFC 8461 3, 5.1)."""
        name = normalize_domain(domain)
        if name is None:
            return StsLookup(None, f"MTA-STS: {domain[:60]!r} is not a domain name")
        now = self._clock()
        entry = await self.cached(name)
        live = entry if entry is not None and entry.valid(now) else None

        def fallback(problem: str) -> StsLookup:
            if live is not None:
                return StsLookup(
                    live.policy,
                    f"MTA-STS: {problem}; using the cached policy (RFC 8461 5.1)",
                    live.policy_id,
                )
            return StsLookup(None, f"MTA-STS: {problem}; no cached policy")

        try:
            records = await resolver.txt(f"_mta-sts.{name}")
        except DnsTemporaryError as e:
            return fallback(f"TXT lookup failed ({e})")
        try:
            policy_id = parse_txt(records)
        except MtaStsError as e:
            return fallback(str(e))
        if policy_id is None:
            if live is not None:
                return fallback("no TXT record")
            return StsLookup(None, "")
        if live is not None and live.policy_id == policy_id:
            return StsLookup(live.policy, f"MTA-STS: cached policy id {policy_id}", policy_id)

        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._memory.get(name)
            if entry is not None and entry.policy_id == policy_id and entry.valid(self._clock()):
                return StsLookup(entry.policy, f"MTA-STS: policy id {policy_id}", policy_id)
            try:
                text = await self._fetch(name)
                policy = parse_policy(text)
            except Exception as e:  # RFC 8461 5.1: a failed fetch, whatever the cause
                return fallback(f"fetch failed: {e}")
            fresh = CachedPolicy(policy_id, policy, self._clock())
            self._memory[name] = fresh
            try:
                await asyncio.to_thread(self._write, name, fresh, text)
            except OSError as e:  # still usable from memory; only a restart forgets it
                return StsLookup(policy, f"MTA-STS: fetched id {policy_id} (not saved: {e})")
        return StsLookup(policy, f"MTA-STS: fetched policy id {policy_id}", policy_id)


__all__ = [
    "MAX_AGE_LIMIT",
    "MAX_POLICY_SIZE",
    "CachedPolicy",
    "HttpsPolicyFetcher",
    "MtaStsCache",
    "MtaStsError",
    "MtaStsPolicy",
    "StsLookup",
    "mx_matches",
    "normalize_domain",
    "parse_policy",
    "parse_txt",
]
