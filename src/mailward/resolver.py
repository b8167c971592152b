"""The one DNS resolver everything goes through (DESIGN.md principle 5: injected).

SPF, DKIM, DMARC, ARC, DNSBL, MX selection, MTA-STS and DANE all ask through a
`Resolver`. The production one (`DnsResolver`) uses dnspython's asyncio resolver
pointed at config `dns.resolvers` ("ip" or "ip:port"; empty: the system's
/etc/resolv.conf); tests point it at a DNS server they start on loopback.

Results are plain values. "No such name" and "no records of that type" are empty
answers (the callers' RFCs treat them alike: RFC 7208 4.3, RFC 6376 6.1.2, RFC 7489
6.6.3), and so is a name that cannot exist in the DNS at all (an empty or over-long
label, over 255 octets: RFC 1035 2.3.4; RFC 7208 4.3 says "none" for it too); a server
failure or a timeout raises `DnsTemporaryError`, which callers turn into a tempfail
(451/4.4.3), never into a silent pass. `authenticated` is the AD bit of the answer,
negative answers included (an authenticated denial, RFC 4035 3.2.3), meaningful only
from a trusted validating resolver (RFC 7672 2.2: DANE needs it; `trusted` in the
config says whether the resolver is one).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

from mailward.config.schema import parse_nameservers

DEFAULT_TIMEOUT = 5.0
CACHE_SIZE = 10_000  # answers kept at most (least recently used dropped first)
# One try waits at most this long before the query is sent again (a lost UDP packet
# must not cost the whole timeout); the whole lookup still ends at the timeout.
TRY_TIMEOUT = 2.0


class DnsTemporaryError(Exception):
    """SERVFAIL, REFUSED, a timeout or no server reachable: try again later."""


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of one (name, type) query, as text (dnspython's presentation form,
    TXT strings joined per RFC 7208 3.3), with the AD bit."""

    records: tuple[str, ...]
    authenticated: bool = False


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    usage: int
    selector: int
    mtype: int
    data: bytes


class Resolver(Protocol):
    async def query(self, name: str, rdtype: str) -> Answer:
        """Any record type; empty records for NXDOMAIN or NODATA."""
        ...

    async def txt(self, name: str) -> list[str]:
        """TXT strings, each record's character-strings concatenated."""
        ...

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """(preference, exchange without the trailing dot), sorted by preference."""
        ...

    async def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of `host`."""
        ...

    async def ptr(self, ip: str) -> list[str]: ...

    async def tlsa(self, name: str) -> tuple[list[TlsaRecord], bool]:
        """TLSA records and whether the answer was DNSSEC-authenticated."""
        ...


class _CappedCache(dns.resolver.LRUCache):
    """dnspython's LRU answer cache (answers, NODATA and NXDOMAIN, each for its TTL:
    RFC 2308 for the negative ones), with every entry kept at most `max_ttl` seconds
    so a changed record (a rotated DKIM key, a new DMARC policy) is seen soon."""

    def __init__(self, max_ttl: float, max_size: int = CACHE_SIZE) -> None:
        super().__init__(max_size)
        self.max_ttl = max_ttl

    def put(self, key: dns.resolver.CacheKey, value: dns.resolver.Answer) -> None:
        value.expiration = min(value.expiration, time.time() + self.max_ttl)
        super().put(key, value)


class DnsResolver:
    """dnspython's asyncio resolver. One per process; safe to share between tasks.

    With `cache_max_ttl` > 0 answers are reused for their TTL, at most that many
    seconds (`_CappedCache`); failures (SERVFAIL, timeouts) are never cached."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_max_ttl: float = 0.0,
    ) -> None:
        if nameservers:
            servers = parse_nameservers(nameservers)
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = [
                dns.nameserver.Do53Nameserver(host, port) for host, port in servers
            ]
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = timeout
        self._resolver.timeout = min(timeout, TRY_TIMEOUT)
        self._resolver.use_edns(0, dns.flags.DO, 1232)  # ask for the AD bit (RFC 6840 5.7)
        self._resolver.flags = dns.flags.RD | dns.flags.AD
        if cache_max_ttl > 0:
            self._resolver.cache = _CappedCache(cache_max_ttl)

    async def query(self, name: str, rdtype: str) -> Answer:
        kind = dns.rdatatype.from_text(rdtype)  # an unknown type is a bug: it raises
        try:
            qname = dns.name.from_text(name, origin=dns.name.root)
        except dns.exception.DNSException:
            return Answer(())  # not a possible DNS name: nothing can be there
        try:
            answer = await self._resolver.resolve(qname, kind, search=False)
        except dns.resolver.NXDOMAIN as exc:
            # (exc.responses() / exc.response(), read from the documented kwargs)
            responses = exc.kwargs.get("responses") or {}
            return Answer((), _authenticated(*responses.values()))
        except dns.resolver.NoAnswer as exc:
            response = exc.kwargs.get("response")
            return Answer((), response is not None and _authenticated(response))
        except dns.resolver.NoNameservers as exc:
            raise DnsTemporaryError(f"{name}/{rdtype}: no server answered") from exc
        except (dns.exception.Timeout, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTemporaryError(f"{name}/{rdtype}: timeout") from exc
        except dns.exception.DNSException as exc:
            raise DnsTemporaryError(f"{name}/{rdtype}: {exc.__class__.__name__}") from exc
        ad = _authenticated(answer.response)
        if kind == dns.rdatatype.TXT:
            records = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in answer)
        else:
            records = tuple(r.to_text() for r in answer)
        return Answer(records, ad)

    async def txt(self, name: str) -> list[str]:
        return list((await self.query(name, "TXT")).records)

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        out = []
        for record in (await self.query(domain, "MX")).records:
            preference, _, exchange = record.partition(" ")
            out.append((int(preference), exchange.rstrip(".").lower()))
        return sorted(out)

    async def addresses(self, host: str) -> list[str]:
        v4 = (await self.query(host, "A")).records
        v6 = (await self.query(host, "AAAA")).records
        return [*v4, *v6]

    async def ptr(self, ip: str) -> list[str]:
        name = dns.reversename.from_address(ip).to_text()
        return [r.rstrip(".").lower() for r in (await self.query(name, "PTR")).records]

    async def tlsa(self, name: str) -> tuple[list[TlsaRecord], bool]:
        answer = await self.query(name, "TLSA")
        records = []
        for text in answer.records:
            usage, selector, mtype, *data = text.split()
            records.append(
                TlsaRecord(int(usage), int(selector), int(mtype), bytes.fromhex("".join(data)))
            )
        return records, answer.authenticated


def _authenticated(*responses: dns.message.Message) -> bool:
    """The AD bit, set on every response the answer came from."""
    return bool(responses) and all(r.flags & dns.flags.AD for r in responses)


__all__ = ["Answer", "DnsResolver", "DnsTemporaryError", "Resolver", "TlsaRecord"]
