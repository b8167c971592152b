"""Where mail for a domain goes: MX selection (RFC 5321 5.1, RFC 7505 null MX).

- MX records are tried by preference, lowest first; hosts of equal preference in a
  random order (RFC 5321 5.1, spreading load). Each host's addresses come from A, then
  AAAA, in the order the resolver gives them.
- No MX record: the domain itself is the one host ("implicit MX", RFC 5321 5.1), if it
  has an address. A domain with neither MX nor address cannot receive mail: permanent
  failure 5.1.2 (the resolver shows NXDOMAIN and NODATA alike, both are "no such
  destination" here).
- Null MX (RFC 7505 3): a single MX "0 ." says the domain accepts no mail: permanent
  failure 5.1.10 at once, no A/AAAA fallback. A "." among other MX records is ignored.
- Questionable data, handled as Postfix and Exim do where they agree: an MX whose
  exchange is an IP address (RFC 5321 5.1 forbids it) is used as that address; an MX
  pointing at a CNAME (also forbidden) works because the resolver follows the chain
  when asked for A/AAAA.
- An address literal domain ("[192.0.2.1]", RFC 5321 4.1.3) goes to that address.
- A DNS failure (SERVFAIL, timeout) is temporary: 4.4.3, the entry is retried.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from mailward.resolver import DnsTemporaryError, Resolver


class RouteError(Exception):
    """No route now: `permanent` says whether to give up (5.x.x) or retry (4.x.x)."""

    def __init__(self, status: str, text: str, *, permanent: bool) -> None:
        super().__init__(f"{status} {text}")
        self.status = status
        self.text = text
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # the exchange (the domain itself for an implicit MX, the IP for a literal)
    preference: int
    literal: str = ""  # an IP address to use instead of looking `name` up


@dataclass(frozen=True, slots=True)
class Route:
    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool = False  # no MX record: the domain's own address

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.hosts]


def dns_domain(domain: str) -> str:
    """The ASCII (IDNA) form of a domain for DNS; RouteError if it has none."""
    name = domain.strip().rstrip(".").lower()
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        raise RouteError("5.1.2", "invalid destination domain", permanent=True) from None


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def find_route(domain: str, resolver: Resolver, rng: random.Random | None = None) -> Route:
    """The MX hosts for `domain`, in the order to try them (see the module docstring)."""
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        literal = literal[5:] if literal.lower().startswith("ipv6:") else literal
        ip = _ip(literal)
        if ip is None:
            raise RouteError("5.1.2", "invalid address literal", permanent=True)
        return Route(domain, (MxHost(ip, 0, ip),), implicit=True)
    name = dns_domain(domain)
    try:
        records = await resolver.mx(name)
    except DnsTemporaryError as exc:
        raise RouteError("4.4.3", f"DNS lookup of MX failed: {exc}", permanent=False) from exc
    if len(records) == 1 and records[0][1] in ("", "."):
        raise RouteError("5.1.10", "domain accepts no mail (null MX)", permanent=True)
    records = [(pref, host) for pref, host in records if host not in ("", ".")]
    if not records:
        try:
            addresses = await resolver.addresses(name)
        except DnsTemporaryError as exc:
            raise RouteError("4.4.3", f"DNS lookup failed: {exc}", permanent=False) from exc
        if not addresses:
            raise RouteError("5.1.2", "no MX or address for the domain", permanent=True)
        return Route(domain, (MxHost(name, 0),), implicit=True)
    shuffle = rng or random.Random()  # noqa: S311 - load spreading, not security
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        if host not in by_pref.setdefault(pref, []):
            by_pref[pref].append(host)
    hosts: list[MxHost] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        shuffle.shuffle(group)
        for host in group:
            ip = _ip(host)
            hosts.append(MxHost(host, pref, ip or ""))
    return Route(domain, tuple(hosts))


async def host_addresses(host: MxHost, resolver: Resolver) -> list[str]:
    """The addresses to connect to for one MX host (A first, then AAAA).
    DnsTemporaryError passes through (the caller tries the next host)."""
    if host.literal:
        return [host.literal]
    seen: list[str] = []
    for address in await resolver.addresses(host.name):
        ip = _ip(address)
        if ip is not None and ip not in seen:
            seen.append(ip)
    return seen


def smarthost_route(spec: str) -> tuple[str, int]:
    """ "host:port", "[v6]:port", or "host" (port 25) -> (host, port); ValueError."""
    text = spec.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 25
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = int(port_text)
    else:
        host, port = text, 25
    if not host or not 0 < port < 65536:
        raise ValueError(f"bad smarthost {spec!r} (expected host:port)")
    return host, port
