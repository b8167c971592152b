"""A private validating resolver (Debian's unbound) in front of a `TestDns`, for tests.

DANE (RFC 7672 2.2) and every other use of `Answer.authenticated` trust the AD bit
(RFC 4035 3.2.3, RFC 6840 5.7-5.8) only from a validating resolver on a trusted
path. `TestUnbound` is that resolver in tests: it validates the zones `TestDns`
signs against their DS as trust anchors (RFC 4033 5, RFC 4035 5), so::

    with TestDns() as server:
        server.add("_25._tcp.mx.example.test", "TLSA", "3 1 1 " + digest.hex())
        server.sign("example.test")
        with TestUnbound(server) as unbound:
            resolver = unbound.resolver()      # DnsResolver -> 127.0.0.1:PORT
            records, authenticated = await resolver.tlsa("_25._tcp.mx.example.test")

gives authenticated True for the signed zone, False for an unsigned one, and
SERVFAIL (`DnsTemporaryError`) for data whose signatures do not verify (bogus,
RFC 4035 5.5): never the data.

The instance is private: its own unbound.conf in a temp dir, 127.0.0.1 on a free
port, no daemon, no syslog, no chroot, no user switch, `/usr/sbin/unbound -d` as a
child process that is killed when the context exits (and, as a last resort, at
interpreter exit or when the starting thread dies: the lifecycle is
`testing.daemon.PrivateDaemon`'s). Every test zone is a stub zone pointing at the `TestDns`; all
other names are refused (`local-zone: "." refuse`), so nothing leaves the machine.
Caching is off (`cache-max-ttl: 0`, `cache-max-negative-ttl: 0`, `val-bogus-ttl: 0`)
so changes in `TestDns` show at once; `flush()` empties what is left.

Zones and trust anchors are read when the resolver starts: after adding or signing
a zone later, call `restart()` (the port stays the same). Changing records, and
re-signing after a change (same keys, same DS), need nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdataclass

from mailward.testing.daemon import DaemonHarnessError, PrivateDaemon, free_port
from mailward.testing.dns_server import HOST, DnsEndpoint, TestDns

__all__ = ["UNBOUND", "TestUnbound", "unbound_available"]

UNBOUND = "/usr/sbin/unbound"
START_TIMEOUT = 30.0  # seconds for unbound to answer after it is started


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    return str(Path(UNBOUND).parent / name)


def unbound_available() -> bool:
    """Whether unbound is installed (Debian package `unbound`, see
    scripts/install-test-deps)."""
    return os.access(_tool("unbound"), os.X_OK)


class UnboundError(DaemonHarnessError):
    """unbound would not start (bad config, no free port): the message has its log."""


class TestUnbound(PrivateDaemon, DnsEndpoint):
    """A validating unbound on 127.0.0.1 whose only data are the zones of `dns`;
    `start()` checks its config with unbound-checkconf and returns once it answers
    a query."""

    __test__ = False  # (not a pytest test class)

    program = "unbound"
    error = UnboundError
    start_timeout = START_TIMEOUT

    def __init__(
        self,
        dns: TestDns,
        *,
        zones: Sequence[str] | None = None,
        trust_anchors: Mapping[str, str] | None = None,
        directory: str | os.PathLike[str] | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        """`zones`: the zones to send to `dns` (default: all it serves when unbound
        starts). `trust_anchors`: zone -> DS text (default: `dns.trust_anchors`, the
        zones it signed, when unbound starts). `directory`: where unbound.conf and
        unbound.log go (default: a temp dir removed on stop). `extra_config`: more
        `server:` lines."""
        super().__init__(directory=directory)
        self.dns = dns
        self._zones = list(zones) if zones is not None else None
        self._anchors = dict(trust_anchors) if trust_anchors is not None else None
        self.extra_config = list(extra_config)

    # -- what tests use -------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "unbound.conf"

    @property
    def log_path(self) -> Path:
        """unbound.log: validation failures are explained there (`val-log-level: 2`,
        `log_text()`)."""
        assert self.directory is not None, "not started"
        return self.directory / "unbound.log"

    def restart(self) -> None:
        """Re-read the zones and trust anchors of `dns` and start again (same port)."""
        port = self.port
        self._kill()
        self.port = port
        self.start()

    def flush(self) -> None:
        """Empty every cache (records, negative answers, bogus data, keys, server
        state) through unbound-control."""
        for command in (
            ["flush_zone", "."],
            ["flush_bogus"],
            ["flush_negative"],
            ["flush_infra", "all"],
        ):
            self._control(*command)

    # -- hooks of PrivateDaemon -----------------------------------------------------

    def _installed(self) -> bool:
        return unbound_available()

    def _check_start(self) -> None:
        if not self.dns.port:
            raise UnboundError("start the TestDns before the TestUnbound in front of it")

    def _port_for(self, attempt: int) -> int:
        """The port kept by `restart()` first, then free ones (UDP and TCP)."""
        return self.port if self.port and attempt == 0 else free_port(udp=True)

    # -- internals ------------------------------------------------------------------

    def _zone_names(self) -> list[str]:
        zones = self._zones if self._zones is not None else self.dns.zones
        return [zone.strip().rstrip(".").lower() for zone in zones]

    def _write_config(self) -> None:
        """unbound.conf for `port`, checked with unbound-checkconf."""
        assert self.directory is not None
        directory = self.directory
        zones = self._zone_names()
        anchors = self._anchors if self._anchors is not None else self.dns.trust_anchors
        anchors = {zone.strip().rstrip(".").lower(): ds for zone, ds in anchors.items()}
        lines = [
            "server:",
            "    verbosity: 1",
            f"    interface: {HOST}@{self.port}",
            f"    port: {self.port}",
            "    do-ip4: yes",
            "    do-ip6: no",
            "    do-udp: yes",
            "    do-tcp: yes",
            "    do-daemonize: no",
            "    use-syslog: no",
            f'    logfile: "{directory / "unbound.log"}"',
            "    log-time-ascii: yes",
            '    chroot: ""',
            '    username: ""',
            f'    directory: "{directory}"',
            f'    pidfile: "{directory / "unbound.pid"}"',
            "    num-threads: 1",
            "    so-reuseport: no",
            "    outgoing-range: 64",
            "    num-queries-per-thread: 32",
            f"    access-control: {HOST}/8 allow",
            "    do-not-query-localhost: no",
            '    module-config: "validator iterator"',
            "    harden-dnssec-stripped: yes",
            "    val-log-level: 2",
            "    val-bogus-ttl: 0",
            "    cache-max-ttl: 0",
            "    cache-max-negative-ttl: 0",
            "    infra-host-ttl: 1",
            "    infra-keep-probing: yes",
            "    qname-minimisation: no",  # (so TestDns.queries shows the real queries)
            "    aggressive-nsec: no",
            "    prefetch: no",
            "    prefetch-key: no",
            "    trust-anchor-signaling: no",  # (no _ta-XXXX queries, RFC 8145)
            "    minimal-responses: yes",
            "    msg-cache-size: 1m",
            "    rrset-cache-size: 1m",
            "    key-cache-size: 1m",
            "    neg-cache-size: 1m",
            "    edns-buffer-size: 1232",
            # Nothing but the test zones resolves: no root priming, no Internet.
            '    local-zone: "." refuse',
        ]
        for zone in zones:
            # transparent: our zone, not one of unbound's default ones ("test.",
            # "invalid.", the reverse zones of RFC 1918 / 5737 networks).
            lines.append(f'    local-zone: "{zone}." transparent')
            if zone in anchors:
                lines.append(f'    trust-anchor: "{anchors[zone]}"')
            else:
                lines.append(f'    domain-insecure: "{zone}."')
        lines += [f"    {line}" for line in self.extra_config]
        lines += [
            "",
            "remote-control:",
            "    control-enable: yes",
            f'    control-interface: "{directory / "control.sock"}"',
            "    control-use-cert: no",
        ]
        for zone in zones:
            lines += [
                "",
                "stub-zone:",
                f'    name: "{zone}."',
                f"    stub-addr: {HOST}@{self.dns.port}",
                "    stub-prime: no",
            ]
        self.config_path.write_text("\n".join(lines) + "\n")
        self._check_config()

    def _check_config(self) -> None:
        result = subprocess.run(  # noqa: S603 - fixed tool, our own config file
            [_tool("unbound-checkconf"), str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise UnboundError(
                f"unbound-checkconf rejected {self.config_path}:\n"
                f"{result.stdout}{result.stderr}\n{self.config_path.read_text()}"
            )

    def _command(self) -> list[str]:
        return [_tool("unbound"), "-d", "-c", str(self.config_path)]

    def _answers(self) -> bool:
        """Whether unbound answers a query (CHAOS version.server, RFC 4892 style)."""
        query = dns.message.make_query("version.server.", "TXT", dns.rdataclass.CH)
        try:
            dns.query.udp(query, HOST, port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def _control(self, *command: str) -> None:
        if self._process is None:
            raise UnboundError("unbound is not running")
        result = subprocess.run(  # noqa: S603 - fixed tool, our own config file
            [_tool("unbound-control"), "-c", str(self.config_path), *command],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise UnboundError(
                f"unbound-control {' '.join(command)}: {result.stdout}{result.stderr}"
            )
