"""An in-memory `Resolver` (mailward.resolver) for unit tests: zone data from a dict.

    dns = FakeResolver({"example.test": {"TXT": ["v=spf1 -all"], "A": ["192.0.2.1"]}})
    dns.add("mail.example.test", "A", "192.0.2.2")
    dns.fail("_dmarc.example.test", "TXT")   # SERVFAIL: DnsTemporaryError

Names are compared case-insensitively and without the trailing dot. A missing name
or type is an empty answer (NXDOMAIN and NODATA look alike, as with `DnsResolver`).
Record values use the presentation form `DnsResolver` returns: TXT as one joined
string per record, MX as "10 mx.example.test.", PTR as "host.example.test.", TLSA as
"3 1 1 <hex>". PTR records live at the reverse name ("1.2.0.192.in-addr.arpa"); use
`add_ptr(ip, name)` to get it right. Every query is appended to `queries`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from mailward.resolver import Answer, DnsTemporaryError, TlsaRecord


def _key(name: str) -> str:
    return name.rstrip(".").lower()


class FakeResolver:
    def __init__(self, zone: Mapping[str, Mapping[str, Iterable[str]]] | None = None) -> None:
        self.records: dict[tuple[str, str], list[str]] = {}
        self.failing: set[tuple[str, str]] = set()
        self.authenticated: set[tuple[str, str]] = set()
        self.queries: list[tuple[str, str]] = []
        for name, types in (zone or {}).items():
            for rdtype, values in types.items():
                for value in values:
                    self.add(name, rdtype, value)

    # --- building the zone ---------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str) -> None:
        self.records.setdefault((_key(name), rdtype.upper()), []).append(value)

    def add_ptr(self, ip: str, name: str) -> None:
        self.add(ipaddress.ip_address(ip).reverse_pointer, "PTR", name)

    def fail(self, name: str, rdtype: str) -> None:
        """Make queries for (name, type) raise DnsTemporaryError, like a SERVFAIL."""
        self.failing.add((_key(name), rdtype.upper()))

    def clear(self, name: str, rdtype: str) -> None:
        self.records.pop((_key(name), rdtype.upper()), None)
        self.failing.discard((_key(name), rdtype.upper()))

    # --- the Resolver protocol -----------------------------------------------------

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (_key(name), rdtype.upper())
        self.queries.append(key)
        if key in self.failing:
            raise DnsTemporaryError(f"{name}/{rdtype}: SERVFAIL (fake)")
        return Answer(tuple(self.records.get(key, ())), key in self.authenticated)

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
        name = ipaddress.ip_address(ip).reverse_pointer
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


__all__ = ["FakeResolver"]
