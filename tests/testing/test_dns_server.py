"""mailward.testing.dns_server.TestDns at the protocol level (raw dnspython queries).

The answers must be what a real authoritative server gives (RFC 1034 4.3.2, RFC 2308,
RFC 4035 3.1), or the SPF/DKIM/DMARC/DANE tests built on it prove nothing.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator

import dns.dnssec
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from mailward.testing.dns_server import MAX_UDP_PAYLOAD, TestDns

N = dns.name.from_text
TIMEOUT = 5.0


@pytest.fixture
def testdns() -> Iterator[TestDns]:
    with TestDns() as server:
        yield server


def ask(
    server: TestDns,
    name: str,
    rdtype: str,
    *,
    dnssec: bool = False,
    tcp: bool = False,
    edns: bool = True,
) -> dns.message.Message:
    query = dns.message.make_query(
        name, rdtype, use_edns=0 if edns else False, want_dnssec=dnssec, payload=4096
    )
    if tcp:
        return dns.query.tcp(query, server.host, port=server.port, timeout=TIMEOUT)
    return dns.query.udp(query, server.host, port=server.port, timeout=TIMEOUT)


def section_types(section: list[dns.rrset.RRset]) -> set[tuple[str, str]]:
    return {(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in section}


# -- serving ------------------------------------------------------------------------------


def test_address_and_port(testdns: TestDns) -> None:
    assert testdns.address == f"127.0.0.1:{testdns.port}"
    assert testdns.port > 0


def test_udp_and_tcp_on_the_same_port(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    for tcp in (False, True):
        response = ask(testdns, "example.test", "A", tcp=tcp)
        assert response.rcode() == dns.rcode.NOERROR
        assert [r.to_text() for r in response.answer[0]] == ["192.0.2.1"]


def test_answers_are_authoritative_and_not_recursive(testdns: TestDns) -> None:
    testdns.add("example.test", "MX", "10 mx.example.test.")
    response = ask(testdns, "example.test", "MX")
    assert response.flags & dns.flags.AA
    assert not response.flags & dns.flags.RA
    assert not response.flags & dns.flags.AD
    assert response.answer[0].ttl == 60


def test_ttl_per_record(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1", ttl=5)
    assert ask(testdns, "example.test", "A").answer[0].ttl == 5


def test_nxdomain_has_the_soa(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    response = ask(testdns, "nothing.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert response.answer == []
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == N("example.test")
    assert soa.ttl == min(soa.ttl, soa[0].minimum)  # RFC 2308 3


def test_nodata_is_noerror_with_the_soa(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    response = ask(testdns, "example.test", "TXT")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert section_types(response.authority) == {("example.test.", "SOA")}


def test_empty_non_terminal_is_nodata(testdns: TestDns) -> None:
    testdns.add("_25._tcp.mx.example.test", "TLSA", "3 1 1 " + "00" * 32)
    for name in ("_tcp.mx.example.test", "mx.example.test"):
        response = ask(testdns, name, "A")
        assert response.rcode() == dns.rcode.NOERROR, name  # RFC 8020
        assert response.answer == []


def test_cname_chain_is_followed(testdns: TestDns) -> None:
    testdns.add("www.example.test", "CNAME", "web.example.test.")
    testdns.add("web.example.test", "CNAME", "host.other.test.")
    testdns.add("host.other.test", "A", "192.0.2.7")
    response = ask(testdns, "www.example.test", "A")
    assert [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)) for r in response.answer] == [
        ("www.example.test.", "CNAME"),
        ("web.example.test.", "CNAME"),
        ("host.other.test.", "A"),
    ]
    # Asking for the CNAME itself does not follow it.
    response = ask(testdns, "www.example.test", "CNAME")
    assert section_types(response.answer) == {("www.example.test.", "CNAME")}


def test_cname_to_a_missing_name_is_nxdomain(testdns: TestDns) -> None:
    testdns.add("www.example.test", "CNAME", "gone.example.test.")
    response = ask(testdns, "www.example.test", "A")
    assert response.rcode() == dns.rcode.NXDOMAIN  # RFC 6604: of the last name
    assert section_types(response.answer) == {("www.example.test.", "CNAME")}


def test_cname_loop_ends(testdns: TestDns) -> None:
    testdns.add("a.example.test", "CNAME", "b.example.test.")
    testdns.add("b.example.test", "CNAME", "a.example.test.")
    response = ask(testdns, "a.example.test", "A")
    assert len(response.answer) == 2


def test_cname_out_of_the_served_data_is_left_to_the_client(testdns: TestDns) -> None:
    testdns.add("www.example.test", "CNAME", "elsewhere.example.org.")
    response = ask(testdns, "www.example.test", "A")
    assert response.rcode() == dns.rcode.NOERROR
    assert section_types(response.answer) == {("www.example.test.", "CNAME")}


def test_names_outside_every_zone_are_refused(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    assert ask(testdns, "example.org", "A").rcode() == dns.rcode.REFUSED


def test_names_are_case_insensitive(testdns: TestDns) -> None:
    testdns.add("Example.TEST.", "A", "192.0.2.1")
    response = ask(testdns, "EXAMPLE.test", "A")
    assert [r.to_text() for r in response.answer[0]] == ["192.0.2.1"]


def test_any_returns_every_rrset(testdns: TestDns) -> None:
    testdns.add("example.test", "MX", "10 mx.example.test.")
    testdns.add("example.test", "TXT", "hello")
    types = {t for _, t in section_types(ask(testdns, "example.test", "ANY", tcp=True).answer)}
    assert {"SOA", "NS", "MX", "TXT"} <= types


# -- truncation ---------------------------------------------------------------------------


def big_txt(testdns: TestDns) -> list[str]:
    values = [f"{i:02d}" + "y" * 250 for i in range(8)]
    testdns.add("big.example.test", "TXT", *values)
    return values


def test_large_udp_answer_is_truncated_and_complete_over_tcp(testdns: TestDns) -> None:
    values = big_txt(testdns)
    udp = ask(testdns, "big.example.test", "TXT")  # the client offers 4096
    assert udp.flags & dns.flags.TC
    assert udp.answer == []
    assert len(udp.to_wire()) <= MAX_UDP_PAYLOAD
    tcp = ask(testdns, "big.example.test", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert sorted(b"".join(r.strings).decode() for r in tcp.answer[0]) == values


def test_without_edns_the_udp_limit_is_512(testdns: TestDns) -> None:
    testdns.add("mid.example.test", "TXT", "z" * 600)  # ~650 octets: fits 1232, not 512
    assert not ask(testdns, "mid.example.test", "TXT").flags & dns.flags.TC
    assert ask(testdns, "mid.example.test", "TXT", edns=False).flags & dns.flags.TC


def test_udp_limit_is_configurable() -> None:
    with TestDns(udp_limit=512) as small:
        small.add("mid.example.test", "TXT", "z" * 600)
        assert ask(small, "mid.example.test", "TXT").flags & dns.flags.TC


def test_tcp_connection_serves_several_queries(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    with socket.create_connection((testdns.host, testdns.port), timeout=TIMEOUT) as conn:
        for _ in range(3):
            wire = dns.message.make_query("example.test", "A").to_wire()
            conn.sendall(struct.pack("!H", len(wire)) + wire)
            (size,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
            response = dns.message.from_wire(conn.recv(size, socket.MSG_WAITALL))
            assert response.answer[0][0].to_text() == "192.0.2.1"


def test_garbage_gets_formerr_or_nothing_and_the_server_keeps_serving(
    testdns: TestDns,
) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.settimeout(TIMEOUT)
        udp.sendto(
            b"\x12\x34" + b"\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\xff",
            (testdns.host, testdns.port),
        )
        reply = udp.recv(512)
        assert reply[:2] == b"\x12\x34"
        assert reply[3] & 0x0F == dns.rcode.FORMERR
        udp.sendto(b"\x00", (testdns.host, testdns.port))  # no header: no answer
    assert ask(testdns, "example.test", "A").answer


# -- zone data ----------------------------------------------------------------------------


def test_default_origins(testdns: TestDns) -> None:
    testdns.add("mx.example.test", "A", "192.0.2.1")
    testdns.add("_dmarc.example.test", "TXT", "v=DMARC1; p=none")
    testdns.add("a.b.c.other.test", "A", "192.0.2.2")
    testdns.add("4.2.0.192.in-addr.arpa", "PTR", "mx.example.test.")
    testdns.add("1.0.0.127.in-addr.arpa", "PTR", "localhost.")
    testdns.add("single", "A", "192.0.2.3")
    assert testdns.zones == [
        "0.0.127.in-addr.arpa",
        "2.0.192.in-addr.arpa",
        "example.test",
        "other.test",
        "single",
    ]


def test_add_zone_chooses_the_origin(testdns: TestDns) -> None:
    testdns.add_zone("mail.example.test")
    testdns.add("mx.mail.example.test", "A", "192.0.2.1")
    testdns.add("example.test", "A", "192.0.2.2")
    assert testdns.zones == ["example.test", "mail.example.test"]
    response = ask(testdns, "nothing.mail.example.test", "A")
    assert section_types(response.authority) == {("mail.example.test.", "SOA")}


def test_values_are_absolute_names(testdns: TestDns) -> None:
    testdns.add("example.test", "MX", "10 mx.example.test")  # no trailing dot
    assert testdns.records("example.test", "MX") == ["10 mx.example.test."]


def test_txt_values(testdns: TestDns) -> None:
    testdns.add("a.example.test", "TXT", 'quote " and ; semicolon')
    testdns.add("b.example.test", "TXT", ("one", "two"))
    testdns.add("c.example.test", "TXT", "x" * 300)
    testdns.add("d.example.test", "TXT", "")
    testdns.add("e.example.test", "TXT", '"zone " "file\\"s form"')
    got = {
        name: [list(r.strings) for r in ask(testdns, f"{name}.example.test", "TXT").answer[0]]
        for name in "abcde"
    }
    assert got == {
        "a": [[b'quote " and ; semicolon']],
        "b": [[b"one", b"two"]],
        "c": [[b"x" * 255, b"x" * 45]],
        "d": [[b""]],
        "e": [[b"zone ", b'file"s form']],
    }


def test_add_keeps_and_set_replaces(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    testdns.add("example.test", "A", "192.0.2.2")
    assert sorted(testdns.records("example.test", "A")) == ["192.0.2.1", "192.0.2.2"]
    testdns.set("example.test", "A", "192.0.2.3")
    assert testdns.records("example.test", "A") == ["192.0.2.3"]


def test_remove(testdns: TestDns) -> None:
    testdns.add("host.example.test", "A", "192.0.2.1")
    testdns.add("host.example.test", "AAAA", "2001:db8::1")
    testdns.remove("host.example.test", "A")
    assert ask(testdns, "host.example.test", "A").rcode() == dns.rcode.NOERROR
    testdns.remove("host.example.test")
    assert ask(testdns, "host.example.test", "AAAA").rcode() == dns.rcode.NXDOMAIN
    testdns.remove("never.example.test")  # a no-op
    testdns.remove("example.test")  # the apex keeps SOA and NS
    assert ask(testdns, "example.test", "SOA").answer


def test_changes_bump_the_serial(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    before = ask(testdns, "example.test", "SOA").answer[0][0].serial
    testdns.add("example.test", "A", "192.0.2.2")
    assert ask(testdns, "example.test", "SOA").answer[0][0].serial == before + 1


def test_zone_text_round_trip(testdns: TestDns) -> None:
    testdns.add("example.test", "MX", "10 mx.example.test.")
    testdns.add("mx.example.test", "A", "192.0.2.1")
    text = testdns.zone_text("example.test")
    assert "mx.example.test. 60 IN A 192.0.2.1" in text
    with TestDns() as other:
        other.load_zone("example.test", text)
        assert other.records("example.test", "MX") == ["10 mx.example.test."]
        assert other.records("mx.example.test", "A") == ["192.0.2.1"]


def test_load_zone_with_relative_names_and_no_soa(testdns: TestDns) -> None:
    testdns.load_zone(
        "example.test",
        '@ 300 IN MX 10 mx\nmx 300 IN A 192.0.2.1\n_dmarc 300 IN TXT "v=DMARC1; p=reject"\n',
    )
    assert testdns.records("example.test", "MX") == ["10 mx.example.test."]
    assert testdns.records("example.test", "SOA")  # added
    assert ask(testdns, "_dmarc.example.test", "TXT").answer[0].ttl == 300


# -- faults and the query log -------------------------------------------------------------


def test_fail_with_any_rcode(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    testdns.fail("example.test", "A")
    assert ask(testdns, "example.test", "A").rcode() == dns.rcode.SERVFAIL
    assert ask(testdns, "example.test", "SOA").rcode() == dns.rcode.NOERROR
    testdns.fail("example.test", rcode="REFUSED")
    assert ask(testdns, "example.test", "SOA").rcode() == dns.rcode.REFUSED
    testdns.clear_faults()
    assert ask(testdns, "example.test", "A").rcode() == dns.rcode.NOERROR


def test_fail_a_name_that_has_no_records(testdns: TestDns) -> None:
    testdns.fail("nowhere.example.org")
    assert ask(testdns, "nowhere.example.org", "A").rcode() == dns.rcode.SERVFAIL


def test_drop_never_answers(testdns: TestDns) -> None:
    testdns.add("slow.example.test", "A", "192.0.2.1")
    testdns.drop("slow.example.test")
    query = dns.message.make_query("slow.example.test", "A")
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(query, testdns.host, port=testdns.port, timeout=0.5)
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(query, testdns.host, port=testdns.port, timeout=0.5)
    testdns.clear_faults("slow.example.test")
    assert ask(testdns, "slow.example.test", "A").answer


def test_query_log(testdns: TestDns) -> None:
    testdns.add("example.test", "MX", "10 mx.example.test.")
    ask(testdns, "Example.Test.", "MX")
    ask(testdns, "nothing.example.test", "TXT")
    ask(testdns, "example.test", "MX", tcp=True)
    assert testdns.queries == [
        ("example.test", "MX"),
        ("nothing.example.test", "TXT"),
        ("example.test", "MX"),
    ]
    assert testdns.count("example.test", "MX") == 2
    assert testdns.count("example.test") == 2
    assert testdns.count("nothing.example.test", "MX") == 0
    testdns.clear_queries()
    assert testdns.queries == []


def test_mutation_while_serving(testdns: TestDns) -> None:
    testdns.add("example.test", "A", "192.0.2.1")
    testdns.sign("example.test")
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                testdns.set(f"h{i % 20}.example.test", "A", f"192.0.2.{i % 250 + 1}")
                testdns.remove(f"h{(i + 10) % 20}.example.test")
                i += 1
                stop.wait(0.001)  # (let the server thread have the GIL too)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for i in range(100):
            response = ask(testdns, f"h{i % 20}.example.test", "A", dnssec=True, tcp=i % 2 == 0)
            assert response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    finally:
        stop.set()
        thread.join()
    assert errors == []


def test_usable_from_asyncio() -> None:
    async def main() -> str:
        with TestDns() as server:
            server.add("example.test", "TXT", "from async")
            return (await server.resolver().txt("example.test"))[0]

    assert asyncio.run(main()) == "from async"


def test_sync_resolver(testdns: TestDns) -> None:
    testdns.add("example.test", "TXT", "v=spf1 -all")
    answer = testdns.sync_resolver().resolve("example.test", "TXT")
    assert [b"".join(r.strings) for r in answer] == [b"v=spf1 -all"]


def test_stop_closes_the_port_and_is_idempotent() -> None:
    server = TestDns().start()
    assert server.start() is server
    port = server.port
    server.stop()
    server.stop()
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", port))  # free again


def test_not_running_has_no_address() -> None:
    with pytest.raises(RuntimeError):
        _ = TestDns().address


# -- DNSSEC -------------------------------------------------------------------------------


def dnskeys(server: TestDns, origin: str) -> dict[dns.name.Name, dns.rrset.RRset]:
    response = ask(server, origin, "DNSKEY", dnssec=True)
    (keys,) = (r for r in response.answer if r.rdtype == dns.rdatatype.DNSKEY)
    return {N(origin): keys}


def validate_answer(server: TestDns, response: dns.message.Message, origin: str) -> int:
    """Validate every RRset in answer and authority against the zone's DNSKEYs;
    returns how many were validated."""
    keys = dnskeys(server, origin)
    count = 0
    for section in (response.answer, response.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            sigs = next(
                r
                for r in section
                if r.rdtype == dns.rdatatype.RRSIG and r.covers == rrset.rdtype
                if r.name == rrset.name
            )
            dns.dnssec.validate(rrset, sigs, keys)
            count += 1
    return count


@pytest.fixture
def signed(testdns: TestDns) -> TestDns:
    testdns.add("example.test", "MX", "10 mx.example.test.")
    testdns.add("mx.example.test", "A", "192.0.2.1")
    testdns.add("_25._tcp.mx.example.test", "TLSA", "3 1 1 " + "ab" * 32)
    testdns.add("www.example.test", "CNAME", "mx.example.test.")
    testdns.sign("example.test")
    return testdns


def test_sign_returns_the_ds_of_the_ksk(signed: TestDns) -> None:
    anchor = signed.sign("example.test")  # again: same keys, same DS
    assert anchor == signed.trust_anchors["example.test"]
    owner, kind, ds_text = anchor.split(" ", 2)
    assert (owner, kind) == ("example.test.", "DS")
    keys = dnskeys(signed, "example.test")[N("example.test")]
    ksks = [k for k in keys if k.flags == 257]
    assert len(ksks) == 1 and len(keys) == 2
    assert dns.dnssec.make_ds("example.test.", ksks[0], "SHA256").to_text() == ds_text
    assert signed.is_signed("example.test") and not signed.is_signed("other.test")


def test_signed_answers_validate(signed: TestDns) -> None:
    response = ask(signed, "_25._tcp.mx.example.test", "TLSA", dnssec=True)
    assert section_types(response.answer) == {
        ("_25._tcp.mx.example.test.", "TLSA"),
        ("_25._tcp.mx.example.test.", "RRSIG"),
    }
    assert validate_answer(signed, response, "example.test") == 1
    chained = ask(signed, "www.example.test", "A", dnssec=True)
    assert validate_answer(signed, chained, "example.test") == 2  # CNAME and A


def test_without_do_no_dnssec_records(signed: TestDns) -> None:
    response = ask(signed, "example.test", "MX")
    assert section_types(response.answer) == {("example.test.", "MX")}
    response = ask(signed, "nothing.example.test", "MX")
    assert section_types(response.authority) == {("example.test.", "SOA")}


def test_nxdomain_proof(signed: TestDns) -> None:
    response = ask(signed, "nothing.example.test", "A", dnssec=True)
    assert response.rcode() == dns.rcode.NXDOMAIN
    nsecs = [r for r in response.authority if r.rdtype == dns.rdatatype.NSEC]
    qname, wildcard = N("nothing.example.test"), N("*.example.test")

    def covers(nsec: dns.rrset.RRset, name: dns.name.Name) -> bool:
        nxt = nsec[0].next
        return nsec.name < name and (name < nxt or nxt == N("example.test"))

    assert any(covers(n, qname) for n in nsecs)  # RFC 4035 3.1.3.2
    assert any(covers(n, wildcard) for n in nsecs)
    assert validate_answer(signed, response, "example.test") == 1 + len(nsecs)


def test_nodata_proof(signed: TestDns) -> None:
    response = ask(signed, "mx.example.test", "AAAA", dnssec=True)
    assert response.rcode() == dns.rcode.NOERROR and response.answer == []
    (nsec,) = [r for r in response.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsec.name == N("mx.example.test")  # RFC 4035 3.1.3.1
    types = {t for w, bits in nsec[0].windows for t in _bitmap(w, bits)}
    assert dns.rdatatype.A in types and dns.rdatatype.AAAA not in types
    validate_answer(signed, response, "example.test")


def test_empty_non_terminal_proof(signed: TestDns) -> None:
    response = ask(signed, "_tcp.mx.example.test", "TXT", dnssec=True)
    assert response.rcode() == dns.rcode.NOERROR and response.answer == []
    (nsec,) = [r for r in response.authority if r.rdtype == dns.rdatatype.NSEC]
    assert nsec.name < N("_tcp.mx.example.test")
    assert nsec[0].next.is_subdomain(N("_tcp.mx.example.test"))


def _bitmap(window: int, bits: bytes) -> Iterator[int]:
    for i, byte in enumerate(bits):
        for bit in range(8):
            if byte & (0x80 >> bit):
                yield window * 256 + i * 8 + bit


def test_changes_are_signed_again(signed: TestDns) -> None:
    signed.add("new.example.test", "TXT", "added after signing")
    response = ask(signed, "new.example.test", "TXT", dnssec=True)
    assert validate_answer(signed, response, "example.test") == 1
    signed.remove("www.example.test")
    response = ask(signed, "www.example.test", "A", dnssec=True)
    assert response.rcode() == dns.rcode.NXDOMAIN
    validate_answer(signed, response, "example.test")


def test_tamper_breaks_the_signature(signed: TestDns) -> None:
    signed.tamper("example.test", "MX", "10 evil.example.test.")
    response = ask(signed, "example.test", "MX", dnssec=True)
    assert [r.to_text() for r in response.answer[0]] == ["10 evil.example.test."]
    with pytest.raises(dns.dnssec.ValidationFailure):
        validate_answer(signed, response, "example.test")
    signed.add("other.example.test", "A", "192.0.2.9")  # any change signs again
    response = ask(signed, "example.test", "MX", dnssec=True)
    assert validate_answer(signed, response, "example.test") == 1
    with pytest.raises(ValueError):
        signed.tamper("host.unsigned.test", "A", "192.0.2.1")


def test_ed25519(testdns: TestDns) -> None:
    testdns.add("example.test", "TXT", "signed with ed25519")
    anchor = testdns.sign("example.test", algorithm="ED25519")
    assert anchor.split()[3] == "15"  # the algorithm field of the DS
    response = ask(testdns, "example.test", "TXT", dnssec=True)
    assert validate_answer(testdns, response, "example.test") == 1
    with pytest.raises(ValueError):
        testdns.sign("example.test", algorithm="RSAMD5")


def test_signed_zone_text(signed: TestDns) -> None:
    assert "RRSIG" not in signed.zone_text("example.test")
    text = signed.zone_text("example.test", signed=True)
    assert "DNSKEY" in text and "RRSIG" in text and "NSEC" in text
