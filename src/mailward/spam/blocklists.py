"""DNS blocklists: IP-based (DNSBL) and domain-based (RHSBL) lookups, RFC 5782.

A zone is configured as "zone" or "zone=score" (`spam.dnsbl`, `spam.rhsbl`).

- IPv4 address a.b.c.d is looked up as `d.c.b.a.<zone>` A; IPv6 as its 32 nibbles
  reversed (RFC 5782 2.4). A domain is looked up as `<domain>.<zone>` (RFC 5782 3).
- Listed means an A record in 127.0.0.0/8 (RFC 5782 2.3: entries are 127.0.0.2 and
  up); anything else is ignored. That keeps a resolver that answers NXDOMAIN with
  an advertising address, and the "query refused" codes some lists return
  (127.255.255.0/24, e.g. Spamhaus for queries through public resolvers), from
  listing every sender.
- No answer means not listed. A lookup that fails (timeout, SERVFAIL) is not a
  listing either: a blocklist being down must not stop mail, it is logged by the
  caller and the zone is left out of the score.
- Addresses that are never listed are not asked about: private, link-local,
  unspecified and multicast addresses (RFC 1918, RFC 4193...). Loopback is asked:
  RFC 5782 5 requires lists to carry 127.0.0.2 as a test entry.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass

from mailward.config.schema import parse_zone as parse_config_zone
from mailward.pipeline.networks import client_address
from mailward.resolver import DnsTemporaryError, Resolver

DEFAULT_DNSBL_SCORE = 5.0
DEFAULT_RHSBL_SCORE = 4.0
LISTED = ipaddress.ip_network("127.0.0.0/8")
REFUSED_CODES = ipaddress.ip_network("127.255.255.0/24")


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    score: float


@dataclass(frozen=True, slots=True)
class Listing:
    zone: str
    subject: str  # the IP address or domain that is listed
    codes: tuple[str, ...]  # the 127.0.0.x answers (what the list says about it)
    score: float


def parse_zone(spec: str, default_score: float) -> Zone:
    """ "zone" or "zone=score" -> Zone; ValueError if malformed."""
    name, score = parse_config_zone(spec, default_score)
    return Zone(name, score)


def public_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """`ip` if it is an address the Internet's DNS can say something about (global, or
    IPv4 loopback: RFC 5782 5 makes 127.0.0.2 every list's test entry), else None."""
    address = client_address(ip)
    if address is None:
        return None
    if address.is_global or (address.is_loopback and address.version == 4):
        return address
    return None


def ip_query_name(ip: str, zone: str) -> str | None:
    """The name to look up for `ip` in `zone`, or None if the address is never listed."""
    address = public_address(ip)
    if address is None:
        return None
    if address.version == 4:
        reversed_ip = ".".join(reversed(str(address).split(".")))
    else:
        reversed_ip = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{reversed_ip}.{zone}"


def domain_query_name(domain: str, zone: str) -> str | None:
    """The name to look up for `domain` in `zone` (None if it cannot be one)."""
    name = domain.strip().rstrip(".").lower()
    if not name or "." not in name or name.startswith("["):
        return None
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    full = f"{name}.{zone}"
    if len(full) > 253 or any(not 0 < len(label) < 64 for label in full.split(".")):
        return None
    return full


def _listing_codes(records: tuple[str, ...]) -> tuple[str, ...]:
    codes = []
    for record in records:
        try:
            address = ipaddress.ip_address(record)
        except ValueError:
            continue
        if address in LISTED and address not in REFUSED_CODES:
            codes.append(record)
    return tuple(sorted(codes))


class Blocklists:
    """Looks an IP address up in every DNSBL and domains in every RHSBL, concurrently."""

    def __init__(
        self, resolver: Resolver, *, dnsbl: list[Zone], rhsbl: list[Zone], timeout: float
    ) -> None:
        self._resolver = resolver
        self._dnsbl = dnsbl
        self._rhsbl = rhsbl
        self._timeout = timeout

    @property
    def configured(self) -> bool:
        return bool(self._dnsbl or self._rhsbl)

    async def check(
        self, ip: str, domains: list[str]
    ) -> tuple[list[Listing], list[tuple[str, str]]]:
        """(listings, failures): `failures` are (zone, subject) whose lookup failed."""
        lookups: list[tuple[Zone, str, str]] = []
        for zone in self._dnsbl:
            name = ip_query_name(ip, zone.name)
            if name is not None:
                lookups.append((zone, ip, name))
        seen: set[str] = set()
        for domain in domains:
            key = domain.strip().rstrip(".").lower()
            if key in seen:
                continue
            seen.add(key)
            for zone in self._rhsbl:
                name = domain_query_name(key, zone.name)
                if name is not None:
                    lookups.append((zone, key, name))
        results = await asyncio.gather(*(self._lookup(name) for _z, _s, name in lookups))
        listings: list[Listing] = []
        failures: list[tuple[str, str]] = []
        for (zone, subject, _name), codes in zip(lookups, results, strict=True):
            if codes is None:
                failures.append((zone.name, subject))
            elif codes:
                listings.append(Listing(zone.name, subject, codes, zone.score))
        return listings, failures

    async def _lookup(self, name: str) -> tuple[str, ...] | None:
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._resolver.query(name, "A")
        except (DnsTemporaryError, TimeoutError):
            return None
        return _listing_codes(answer.records)
