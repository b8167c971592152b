"""An authoritative DNS server on loopback for tests (dnspython only, no root needed).

`TestDns` serves zones held in memory over UDP and TCP on 127.0.0.1, on one free port,
from a background thread, so sync and asyncio tests alike can use it::

    with TestDns() as server:
        server.add("example.test", "MX", "10 mx.example.test.")
        server.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
        resolver = server.resolver()       # a mailward DnsResolver pointed at it
        assert await resolver.mx("example.test") == [(10, "mx.example.test")]
        assert server.count("example.test", "MX") == 1

What it implements (enough for SPF, DKIM, DMARC, MX, MTA-STS and DANE tests):

- RFC 1034 4.3.2 / RFC 1035 authoritative answers: AA set, CNAME chains followed
  within the served data, NXDOMAIN for names that do not exist and NOERROR/NODATA
  for names that exist without the type (empty non-terminals included, RFC 8020),
  both with the zone's SOA in the authority section (RFC 2308 3, TTL = min(SOA TTL,
  SOA MINIMUM)).
- RFC 1035 4.2.1 / RFC 6891 7: UDP answers larger than the client's EDNS payload
  (512 without EDNS; never more than 1232, the DNS Flag Day 2020 size) are sent
  empty with TC=1 so the client retries over TCP (RFC 7766), where they fit.
- RFC 4033-4035 DNSSEC: `sign(origin)` generates a KSK and a ZSK (ECDSAP256SHA256,
  RFC 6605, or Ed25519, RFC 8080) and signs the zone with `dns.dnssec.sign_zone`
  (DNSKEY, RRSIG, an NSEC chain). Queries with DO=1 (RFC 3225, RFC 4035 3.2.1) get
  the RRSIGs of every RRset returned and the NSEC proofs of RFC 4035 3.1.3 (NODATA:
  the NSEC at the name or, for an empty non-terminal, the one covering it; NXDOMAIN:
  the NSEC covering the name and the one covering the wildcard at the closest
  encloser). A zone is signed again, lazily, after any change to it. `sign()`
  returns the DS (RFC 4034 5) to use as a trust anchor, e.g. by
  `mailward.testing.unbound.TestUnbound`. AD is never
  set here: only a validating resolver sets it (RFC 4035 3.2.3, RFC 6840 5.8), so a
  `DnsResolver` asking TestDns directly always gets authenticated=False.
- Faults for error-path tests: `fail(name)` answers SERVFAIL (or any rcode),
  `drop(name)` never answers, `tamper(...)` changes signed data without re-signing
  (a validating resolver must call it bogus).

Zones: a name is served from the longest zone (origin) it belongs to. When no zone
holds it, one is created: for ordinary names at its last two labels
(`mx.example.test` -> `example.test`), for reverse names at the /24
(`4.2.0.192.in-addr.arpa` -> `2.0.192.in-addr.arpa`) or the /64 under ip6.arpa.
`add_zone(origin)` chooses another origin. Each zone gets an SOA and an NS
(`ns.<origin>`, no address: nothing needs to find the server by name).

All methods are thread-safe and may be called while the server is answering.
Names are case-insensitive and taken as absolute ("example.test" == "example.test.").
"""

from __future__ import annotations

import bisect
import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.resolver
import dns.rrset
import dns.zone
from dns.dnssecalgs.ecdsa import PrivateECDSAP256SHA256
from dns.dnssecalgs.eddsa import PrivateED25519
from dns.rdtypes.dnskeybase import Flag as KeyFlag

if TYPE_CHECKING:
    from dns.dnssecalgs.base import GenericPrivateKey
    from dns.rdtypes.ANY.DNSKEY import DNSKEY

    from mailward.resolver import DnsResolver

__all__ = ["MAX_UDP_PAYLOAD", "DnsEndpoint", "RecordValue", "TestDns"]

HOST = "127.0.0.1"
# DNS Flag Day 2020: the largest UDP payload sent; bigger answers go over TCP.
MAX_UDP_PAYLOAD = 1232
DEFAULT_TTL = 60
SIGNATURE_LIFETIME = 30 * 24 * 3600  # seconds; inception is one hour in the past
TCP_IDLE_TIMEOUT = 10.0

IN = dns.rdataclass.IN
_TXT_TYPES = frozenset({dns.rdatatype.TXT, dns.rdatatype.SPF})
_DNSSEC_TYPES = frozenset({dns.rdatatype.RRSIG, dns.rdatatype.NSEC, dns.rdatatype.NSEC3})
_IN_ADDR = dns.name.from_text("in-addr.arpa.")
_IP6 = dns.name.from_text("ip6.arpa.")
_KEY_CLASSES: dict[str, type[PrivateECDSAP256SHA256] | type[PrivateED25519]] = {
    "ECDSAP256SHA256": PrivateECDSAP256SHA256,  # algorithm 13, RFC 6605
    "ED25519": PrivateED25519,  # algorithm 15, RFC 8080
}

# A record value: presentation text ("10 mx.example.test."), or for TXT/SPF the raw
# text (split into 255-octet strings as needed), an explicit sequence of strings, or
# zone-file text when it starts with a double quote ('"part one" "part two"'); or a
# dnspython Rdata.
RecordValue = str | bytes | Sequence[str | bytes] | dns.rdata.Rdata


def _name(text: str | dns.name.Name) -> dns.name.Name:
    if isinstance(text, dns.name.Name):
        return text if text.is_absolute() else text.concatenate(dns.name.root)
    return dns.name.from_text(text.strip().rstrip(".") + ".")


def _type(rdtype: str | int) -> dns.rdatatype.RdataType:
    return dns.rdatatype.RdataType.make(rdtype.upper() if isinstance(rdtype, str) else rdtype)


def _show(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _default_origin(name: dns.name.Name) -> dns.name.Name:
    """The zone created for `name` when no served zone holds it."""
    if name.is_subdomain(_IN_ADDR):
        keep = 5  # three octets: the /24
    elif name.is_subdomain(_IP6):
        keep = 18  # sixteen nibbles: the /64
    else:
        keep = 2
    keep = min(keep, len(name) - 1)  # (len counts the root label)
    return name.split(keep + 1)[1] if keep + 1 < len(name) else name


def _rdata(rdtype: dns.rdatatype.RdataType, value: RecordValue) -> dns.rdata.Rdata:
    if isinstance(value, dns.rdata.Rdata):
        return value
    if rdtype in _TXT_TYPES and isinstance(value, str) and value.startswith('"'):
        # Zone-file form, as `mailward dns` prints it: '"v=DKIM1; k=rsa; " "p=..."'.
        return dns.rdata.from_text(IN, rdtype, value)
    if rdtype in _TXT_TYPES:
        strings: list[bytes]
        if isinstance(value, str | bytes):
            raw = value.encode("utf-8") if isinstance(value, str) else value
            # RFC 7208 3.3 / RFC 6376 3.6.2.2: long values are split into several
            # character-strings of at most 255 octets, which readers concatenate.
            strings = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        else:
            strings = [s.encode("utf-8") if isinstance(s, str) else s for s in value]
        return dns.rdtypes.ANY.TXT.TXT(IN, rdtype, strings)
    if not isinstance(value, str):
        raise TypeError(f"a {dns.rdatatype.to_text(rdtype)} value must be text")
    return dns.rdata.from_text(IN, rdtype, value, origin=dns.name.root, relativize=False)


class DnsEndpoint:
    """Something on 127.0.0.1:`port` that answers DNS: helpers to point clients at it."""

    host: str = HOST
    port: int = 0

    @property
    def address(self) -> str:
        """ "127.0.0.1:PORT", the form config `dns.resolvers` and `DnsResolver` take."""
        if not self.port:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return f"{self.host}:{self.port}"

    def resolver(self, *, timeout: float = 5.0) -> DnsResolver:
        """A mailward `DnsResolver` that asks only this server."""
        from mailward.resolver import DnsResolver

        return DnsResolver([self.address], timeout=timeout)

    def sync_resolver(self, *, timeout: float = 5.0) -> dns.resolver.Resolver:
        """A blocking dnspython resolver that asks only this server. Libraries that
        use dnspython's module-level resolver (dkimpy, pyspf, authheaders) follow it
        after `dns.resolver.default_resolver = endpoint.sync_resolver()`."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.use_edns(0, dns.flags.DO, MAX_UDP_PAYLOAD)
        return resolver


@dataclass(eq=False)
class _Zone:
    origin: dns.name.Name
    data: dns.zone.Zone  # the records as added: never holds DNSSEC records of ours
    keys: list[tuple[GenericPrivateKey, DNSKEY]] = field(default_factory=list)
    algorithm: str = ""
    signed: dns.zone.Zone | None = None  # the served copy; None: sign again
    names: list[dns.name.Name] = field(default_factory=list)  # of `signed`, canonical order

    def view(self) -> dns.zone.Zone:
        if not self.keys:
            return self.data
        if self.signed is None:
            self._sign()
        assert self.signed is not None
        return self.signed

    def changed(self) -> None:
        soa = self.data.get_rdataset(self.origin, dns.rdatatype.SOA)
        if soa is not None:
            old = soa[0]
            new = old.replace(serial=(old.serial + 1) % 2**32)
            self.data.replace_rdataset(self.origin, dns.rdataset.from_rdata(soa.ttl, new))
        self.signed = None

    def _sign(self) -> None:
        copy = dns.zone.Zone(self.origin, relativize=False)
        for name, node in self.data.nodes.items():
            target = copy.find_node(name, create=True)
            for rdataset in node:
                target.replace_rdataset(_copy(rdataset))
        now = int(time.time())
        dns.dnssec.sign_zone(
            copy,
            keys=list(self.keys),
            inception=now - 3600,
            expiration=now + SIGNATURE_LIFETIME,
        )
        self.signed = copy
        self.names = sorted(copy.nodes)

    def ds(self) -> str:
        ksk = next(dnskey for _, dnskey in self.keys if dnskey.flags & KeyFlag.SEP)
        ds = dns.dnssec.make_ds(self.origin, ksk, "SHA256")
        return f"{self.origin.to_text()} DS {ds.to_text()}"


class TestDns(DnsEndpoint):
    """An authoritative DNS server for tests on 127.0.0.1 (UDP and TCP, one port).

    Use as a context manager, or `TestDns().start()` ... `.stop()`.
    """

    __test__ = False  # (not a pytest test class)

    def __init__(self, *, udp_limit: int = MAX_UDP_PAYLOAD, ttl: int = DEFAULT_TTL) -> None:
        self.udp_limit = udp_limit
        self.default_ttl = ttl
        self.port = 0
        self._lock = threading.RLock()
        self._zones: dict[dns.name.Name, _Zone] = {}
        self._faults: dict[tuple[dns.name.Name, int | None], dns.rcode.Rcode] = {}
        self._dropped: set[dns.name.Name] = set()
        self._queries: list[tuple[str, str]] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Bind UDP and TCP on 127.0.0.1 (the same free port) and serve. Returns self."""
        if self._thread is not None:
            return self
        self._udp, self._tcp = _bind_pair()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping.clear()
        self.port = self._tcp.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, name=f"TestDns:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket; waits for the server threads."""
        if self._thread is None:
            return
        self._stopping.set()
        assert self._wake_w is not None
        self._wake_w.send(b"x")
        self._thread.join(10)
        with self._lock:
            connections = list(self._connections)
            workers = list(self._workers)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for worker in workers:
            worker.join(10)
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = self._wake_r = self._wake_w = None
        self._thread = None
        self.port = 0

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- zone data ------------------------------------------------------------------

    def add_zone(self, origin: str, *, soa_ttl: int | None = None) -> None:
        """Serve an (empty) zone at `origin`; a no-op if it is already served."""
        with self._lock:
            apex = _name(origin)
            if apex not in self._zones:
                self._new_zone(apex, soa_ttl)

    @property
    def zones(self) -> list[str]:
        """The origins served, without the trailing dot."""
        with self._lock:
            return sorted(_show(origin) for origin in self._zones)

    def add(self, name: str, rdtype: str, *values: RecordValue, ttl: int | None = None) -> None:
        """Add records: `add("example.test", "MX", "10 mx.example.test.")`.

        Values are in presentation format (names in them are absolute, trailing dot
        or not), except TXT/SPF: a str is the record's text, split into 255-octet
        character-strings automatically; a list/tuple gives the strings exactly; a
        str starting with '"' is zone-file text ('"v=DKIM1; k=rsa; " "p=..."').
        Adding to an existing RRset keeps its other records (and the lower TTL).
        """
        owner, kind = _name(name), _type(rdtype)
        rdatas = [_rdata(kind, value) for value in values]
        if not rdatas:
            raise ValueError("add() needs at least one value")
        with self._lock:
            zone = self._zone_for(owner)
            node = zone.data.find_node(owner, create=True)
            rdataset = node.find_rdataset(IN, kind, create=True)
            for rdata in rdatas:
                rdataset.add(rdata, self.default_ttl if ttl is None else ttl)
            zone.changed()

    def set(self, name: str, rdtype: str, *values: RecordValue, ttl: int | None = None) -> None:
        """Replace the RRset (name, rdtype) with `values` (see `add`)."""
        with self._lock:
            self.remove(name, rdtype)
            self.add(name, rdtype, *values, ttl=ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove one RRset, or every record of `name` (at a zone's origin its SOA
        and NS stay: the zone itself is still served)."""
        owner = _name(name)
        with self._lock:
            zone = self._zone(owner)
            if zone is None:
                return
            node = zone.data.get_node(owner)
            if node is None:
                return
            if rdtype is not None:
                node.delete_rdataset(IN, _type(rdtype))
            else:
                for rdataset in list(node):
                    if owner != zone.origin or rdataset.rdtype not in (
                        dns.rdatatype.SOA,
                        dns.rdatatype.NS,
                    ):
                        node.delete_rdataset(IN, rdataset.rdtype, rdataset.covers)
            if len(node) == 0:
                zone.data.delete_node(owner)
            zone.changed()

    def records(self, name: str, rdtype: str) -> list[str]:
        """The served records of (name, rdtype) as presentation text."""
        owner = _name(name)
        with self._lock:
            zone = self._zone(owner)
            if zone is None:
                return []
            rdataset = zone.view().get_rdataset(owner, _type(rdtype))
            return [rdata.to_text() for rdata in rdataset] if rdataset else []

    def zone_text(self, origin: str, *, signed: bool = False) -> str:
        """The zone in master-file format (RFC 1035 5); `signed=True`: as served,
        with DNSKEY/RRSIG/NSEC when the zone is signed."""
        with self._lock:
            zone = self._zones[_name(origin)]
            text: str = (zone.view() if signed else zone.data).to_text(relativize=False)
            return text

    def load_zone(self, origin: str, text: str) -> None:
        """Replace (or create) the zone at `origin` with master-file `text` (relative
        names are relative to `origin`; SOA and NS are added when missing). A signed
        zone stays signed, with the same keys."""
        apex = _name(origin)
        loaded = dns.zone.from_text(text, apex, relativize=False, check_origin=False)
        with self._lock:
            zone = self._zones.get(apex) or self._new_zone(apex)
            zone.data = loaded
            _ensure_apex(zone.data, apex, self.default_ttl)
            zone.changed()

    # -- DNSSEC ---------------------------------------------------------------------

    def sign(self, origin: str, *, algorithm: str = "ECDSAP256SHA256") -> str:
        """Sign the zone at `origin` (created if need be) with a fresh KSK + ZSK of
        `algorithm` ("ECDSAP256SHA256" or "ED25519"); it stays signed, and is signed
        again after every change. Returns the DS of the KSK as trust-anchor text:
        "example.test. DS 12345 13 2 ABCD..." (same keys, same DS, on later calls)."""
        apex = _name(origin)
        with self._lock:
            zone = self._zones.get(apex) or self._new_zone(apex)
            if not zone.keys or zone.algorithm != algorithm.upper():
                key_class = _KEY_CLASSES.get(algorithm.upper())
                if key_class is None:
                    raise ValueError(f"algorithm {algorithm!r}: use one of {sorted(_KEY_CLASSES)}")
                zone.keys = []
                for flags in (
                    KeyFlag.ZONE | KeyFlag.SEP,  # KSK (257)
                    KeyFlag.ZONE,  # ZSK (256)
                ):
                    private = key_class.generate()
                    zone.keys.append((private, private.public_key().to_dnskey(flags=flags)))
                zone.algorithm = algorithm.upper()
            zone.signed = None
            zone.view()  # sign now, so errors show here
            return zone.ds()

    @property
    def trust_anchors(self) -> dict[str, str]:
        """origin -> DS trust-anchor text, for every signed zone."""
        with self._lock:
            return {_show(o): z.ds() for o, z in self._zones.items() if z.keys}

    def is_signed(self, origin: str) -> bool:
        with self._lock:
            zone = self._zones.get(_name(origin))
            return bool(zone and zone.keys)

    def tamper(self, name: str, rdtype: str, *values: RecordValue) -> None:
        """Serve `values` for (name, rdtype) in a signed zone while keeping the old
        RRSIGs: the data no longer matches its signatures (a validating resolver
        must find it bogus, RFC 4035 5.5). Lasts until the zone next changes."""
        owner, kind = _name(name), _type(rdtype)
        rdatas = [_rdata(kind, value) for value in values]
        with self._lock:
            zone = self._zone(owner)
            if zone is None or not zone.keys:
                raise ValueError(f"{name} is not in a signed zone")
            served = zone.view()
            old = served.get_rdataset(owner, kind)
            ttl = old.ttl if old is not None else self.default_ttl
            served.replace_rdataset(owner, dns.rdataset.from_rdata_list(ttl, rdatas))

    # -- faults and the query log ---------------------------------------------------

    def fail(self, name: str, rdtype: str | None = None, rcode: str = "SERVFAIL") -> None:
        """Answer queries for `name` (of `rdtype`, or of any type) with `rcode`."""
        with self._lock:
            kind = _type(rdtype) if rdtype is not None else None
            self._faults[(_name(name), kind)] = dns.rcode.from_text(rcode)

    def drop(self, name: str) -> None:
        """Never answer queries for `name` (any type, UDP and TCP): for timeouts."""
        with self._lock:
            self._dropped.add(_name(name))

    def clear_faults(self, name: str | None = None) -> None:
        """Undo `fail` and `drop` for `name`, or for every name."""
        with self._lock:
            if name is None:
                self._faults.clear()
                self._dropped.clear()
            else:
                owner = _name(name)
                self._dropped.discard(owner)
                for key in [k for k in self._faults if k[0] == owner]:
                    del self._faults[key]

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every query received so far as (name, type), e.g. ("example.test", "MX"):
        names lower-case without the trailing dot, in arrival order."""
        with self._lock:
            return list(self._queries)

    def clear_queries(self) -> None:
        with self._lock:
            self._queries.clear()

    def count(self, name: str, rdtype: str | None = None) -> int:
        """How many queries for `name` (of `rdtype`) arrived."""
        owner = _show(_name(name))
        kind = dns.rdatatype.to_text(_type(rdtype)) if rdtype is not None else None
        return sum(1 for n, t in self.queries if n == owner and (kind is None or t == kind))

    # -- internals: zones -------------------------------------------------------------

    def _zone(self, name: dns.name.Name) -> _Zone | None:
        """The served zone holding `name`: the one with the longest origin."""
        for depth in range(len(name), 0, -1):
            zone = self._zones.get(name.split(depth)[1])
            if zone is not None:
                return zone
        return None

    def _zone_for(self, name: dns.name.Name) -> _Zone:
        """The zone holding `name`, created at its default origin if none does."""
        return self._zone(name) or self._new_zone(_default_origin(name))

    def _new_zone(self, origin: dns.name.Name, soa_ttl: int | None = None) -> _Zone:
        data = dns.zone.Zone(origin, relativize=False)
        _ensure_apex(data, origin, self.default_ttl if soa_ttl is None else soa_ttl)
        zone = self._zones[origin] = _Zone(origin, data)
        return zone

    # -- internals: answering ---------------------------------------------------------

    def answer(self, wire: bytes, *, tcp: bool = False) -> bytes | None:
        """The response to one query message (None: no response). Public for tests
        that want to look at answers without a socket."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query, our_payload=MAX_UDP_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(
                dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR
            )
            return response.to_wire()
        question = query.question[0]
        qname, qtype = question.name, dns.rdatatype.RdataType.make(question.rdtype)
        dnssec_ok = query.edns >= 0 and bool(query.ednsflags & dns.flags.DO)
        if dnssec_ok:
            response.want_dnssec(True)
        with self._lock:
            self._queries.append((_show(qname), dns.rdatatype.to_text(qtype)))
            if qname in self._dropped:
                return None
            fault = self._faults.get((qname, qtype), self._faults.get((qname, None)))
            if fault is not None:
                response.set_rcode(fault)
            elif question.rdclass != IN or self._zone(qname) is None:
                response.set_rcode(dns.rcode.REFUSED)
            else:
                response.flags |= dns.flags.AA
                self._resolve(response, qname, qtype, dnssec_ok)
        out = response.to_wire(max_size=65535)
        if not tcp:
            limit = min(self.udp_limit, max(512, query.payload) if query.edns >= 0 else 512)
            if len(out) > limit:
                # RFC 1035 4.2.1 / RFC 2181 9: no partial RRsets; the client uses TCP.
                response.answer.clear()
                response.authority.clear()
                response.additional.clear()
                response.flags |= dns.flags.TC
                out = response.to_wire()
        return out

    def _resolve(
        self,
        response: dns.message.Message,
        qname: dns.name.Name,
        qtype: dns.rdatatype.RdataType,
        dnssec_ok: bool,
    ) -> None:
        """RFC 1034 4.3.2 steps 3a-3c over the served zones (no delegations, no
        wildcards), adding RRSIGs and NSEC proofs when `dnssec_ok`."""
        seen: set[dns.name.Name] = set()
        name = qname
        while True:
            zone = self._zone(name)
            if zone is None:  # a CNAME out of the served data: the client goes on
                return
            view = zone.view()
            signed = bool(zone.keys) and dnssec_ok
            node = view.get_node(name)
            if node is None:
                exists = any(n.is_subdomain(name) for n in view.nodes)  # RFC 8020
                if not exists:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                _negative(response, zone, view, name, exists=exists, signed=signed)
                return
            if qtype == dns.rdatatype.ANY:
                for rdataset in node:
                    if signed or rdataset.rdtype not in _DNSSEC_TYPES:
                        _put(response.answer, name, rdataset)
                return
            rdataset = node.get_rdataset(IN, qtype)
            if rdataset is not None:
                _put(response.answer, name, rdataset, node if signed else None)
                return
            cname = node.get_rdataset(IN, dns.rdatatype.CNAME)
            if cname is not None and qtype != dns.rdatatype.CNAME:
                _put(response.answer, name, cname, node if signed else None)
                seen.add(name)
                name = cname[0].target
                if name in seen:  # a CNAME loop: what is there is the answer
                    return
                continue
            _negative(response, zone, view, name, exists=True, signed=signed)
            return

    # -- internals: sockets -----------------------------------------------------------

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake_r is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._udp, selectors.EVENT_READ, "udp")
            selector.register(self._tcp, selectors.EVENT_READ, "tcp")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping.is_set():
                for key, _ in selector.select():
                    if key.data == "udp":
                        self._serve_udp()
                    elif key.data == "tcp":
                        self._accept_tcp()

    def _serve_udp(self) -> None:
        assert self._udp is not None
        try:
            wire, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        try:
            out = self.answer(wire, tcp=False)
        except Exception:
            out = _servfail(wire)
        if out is not None:
            with contextlib.suppress(OSError):
                self._udp.sendto(out, peer)

    def _accept_tcp(self) -> None:
        assert self._tcp is not None
        try:
            conn, _ = self._tcp.accept()
        except OSError:
            return
        worker = threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True)
        with self._lock:
            self._connections.add(conn)
            self._workers.add(worker)
        worker.start()

    def _serve_tcp(self, conn: socket.socket) -> None:
        """RFC 1035 4.2.2 / RFC 7766: length-prefixed messages, several per connection."""
        conn.settimeout(TCP_IDLE_TIMEOUT)
        try:
            while not self._stopping.is_set():
                header = _recv_exactly(conn, 2)
                if header is None:
                    return
                wire = _recv_exactly(conn, struct.unpack("!H", header)[0])
                if wire is None:
                    return
                try:
                    out = self.answer(wire, tcp=True)
                except Exception:
                    out = _servfail(wire)
                if out is not None:
                    conn.sendall(struct.pack("!H", len(out)) + out)
        except OSError:
            return
        finally:
            conn.close()
            with self._lock:
                self._connections.discard(conn)
                self._workers.discard(threading.current_thread())


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to the same free port on 127.0.0.1."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind((HOST, 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((HOST, port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(64)
        tcp.setblocking(False)
        return udp, tcp
    raise OSError("no free port with both UDP and TCP free on 127.0.0.1")


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _ensure_apex(data: dns.zone.Zone, origin: dns.name.Name, ttl: int) -> None:
    """An SOA (RFC 1035 3.3.13; MINIMUM = the negative-caching TTL, RFC 2308) and an
    NS at the origin, unless the zone has them."""
    if data.get_rdataset(origin, dns.rdatatype.SOA) is None:
        soa = _rdata(dns.rdatatype.SOA, f"ns.{origin} hostmaster.{origin} 1 3600 600 86400 {ttl}")
        data.replace_rdataset(origin, dns.rdataset.from_rdata(ttl, soa))
    if data.get_rdataset(origin, dns.rdatatype.NS) is None:
        ns = _rdata(dns.rdatatype.NS, f"ns.{origin}")
        data.replace_rdataset(origin, dns.rdataset.from_rdata(ttl, ns))


def _copy(rdataset: dns.rdataset.Rdataset, ttl: int | None = None) -> dns.rdataset.Rdataset:
    out = dns.rdataset.Rdataset(rdataset.rdclass, rdataset.rdtype, rdataset.covers)
    for rdata in rdataset:
        out.add(rdata, rdataset.ttl if ttl is None else ttl)
    return out


def _put(
    section: list[dns.rrset.RRset],
    name: dns.name.Name,
    rdataset: dns.rdataset.Rdataset,
    node: dns.node.Node | None = None,
) -> None:
    """Add `rdataset` (and, given the node of a signed zone, its RRSIGs) once."""
    for existing in section:
        if (existing.name, existing.rdtype, existing.covers) == (
            name,
            rdataset.rdtype,
            rdataset.covers,
        ):
            return
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype, rdataset.covers)
    for rdata in rdataset:
        rrset.add(rdata, rdataset.ttl)
    section.append(rrset)
    if node is not None:
        sigs = node.get_rdataset(IN, dns.rdatatype.RRSIG, rdataset.rdtype)
        if sigs is not None:
            _put(section, name, sigs)


def _negative(
    response: dns.message.Message,
    zone: _Zone,
    view: dns.zone.Zone,
    name: dns.name.Name,
    *,
    exists: bool,
    signed: bool,
) -> None:
    """NODATA (`exists`) or NXDOMAIN authority: SOA (RFC 2308 3) and, in a signed zone,
    the NSEC proofs of RFC 4035 3.1.3.1-3.1.3.2."""
    apex = view.get_node(zone.origin)
    assert apex is not None
    soa = apex.get_rdataset(IN, dns.rdatatype.SOA)
    assert soa is not None
    soa = _copy(soa, min(soa.ttl, soa[0].minimum))
    _put(response.authority, zone.origin, soa, apex if signed else None)
    if not signed:
        return
    proofs: list[dns.name.Name] = []
    node = view.get_node(name)
    if node is not None:
        proofs.append(name)  # NODATA at a name that has records: its own NSEC
    else:
        proofs.append(_covering(zone, name))  # no such name, or an empty non-terminal
        if not exists:
            encloser = name.parent()
            while encloser != zone.origin and not any(n.is_subdomain(encloser) for n in view.nodes):
                encloser = encloser.parent()
            proofs.append(_covering(zone, dns.name.Name((b"*", *encloser.labels))))
    for owner in proofs:
        owner_node = view.get_node(owner)
        nsec = owner_node.get_rdataset(IN, dns.rdatatype.NSEC) if owner_node else None
        if owner_node is not None and nsec is not None:
            _put(response.authority, owner, nsec, owner_node)


def _covering(zone: _Zone, name: dns.name.Name) -> dns.name.Name:
    """The owner of the NSEC that covers `name` (the last name before it in
    canonical order, RFC 4034 6.1); the origin when nothing precedes it."""
    index = bisect.bisect_left(zone.names, name) - 1
    return zone.names[index] if index >= 0 else zone.origin


def _servfail(wire: bytes) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
    except dns.exception.DNSException:
        return None
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR with the query's ID (RFC 1035 4.1.1), or nothing if there is no header."""
    if len(wire) < 12:
        return None
    flags = dns.flags.QR | (struct.unpack("!H", wire[2:4])[0] & dns.flags.RD)
    return struct.pack("!HHHHHH", struct.unpack("!H", wire[:2])[0], flags | 1, 0, 0, 0, 0)
