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
interpreter exit). Every test zone is a stub zone pointing at the `TestDns`; all
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
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import dns.exception
import dns.message
import dns.query
import dns.rdataclass

from mailward.testing.daemon import terminate
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


class UnboundError(RuntimeError):
    """unbound would not start (bad config, no free port): the message has its log."""


class TestUnbound(DnsEndpoint):
    """A validating unbound on 127.0.0.1 whose only data are the zones of `dns`."""

    __test__ = False  # (not a pytest test class)

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
        self.dns = dns
        self._zones = list(zones) if zones is not None else None
        self._anchors = dict(trust_anchors) if trust_anchors is not None else None
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else None
        self.extra_config = list(extra_config)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], Path | None], TestUnbound] | None
        ) = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "unbound.conf"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "unbound.log"

    def log_text(self) -> str:
        """unbound's log so far (validation failures are explained here,
        `val-log-level: 2`)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def start(self) -> Self:
        """Write and check the config, start unbound, wait until it answers."""
        if self._process is not None:
            return self
        if not unbound_available():
            raise UnboundError("unbound is not installed: run scripts/install-test-deps")
        if not self.dns.port:
            raise UnboundError("start the TestDns before the TestUnbound in front of it")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="mailward-unbound-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        keep_port = self.port
        attempts = 5
        try:
            for attempt in range(attempts):
                self.port = keep_port if keep_port and attempt == 0 else _free_port()
                self._write_config()
                self._check_config()
                try:
                    self._launch()
                    return self
                except UnboundError:
                    self._kill()
                    # A port taken between _free_port() and unbound's bind: another one.
                    if "bind" not in self._logs().lower() or attempt == attempts - 1:
                        raise
        except BaseException:
            self._kill()
            self._cleanup_directory()
            self.port = 0
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop unbound (SIGTERM, then SIGKILL) and wait for it; remove the temp dir."""
        self._kill()
        self._cleanup_directory()
        self.port = 0

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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------

    def _zone_names(self) -> list[str]:
        zones = self._zones if self._zones is not None else self.dns.zones
        return [zone.strip().rstrip(".").lower() for zone in zones]

    def _write_config(self) -> None:
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

    def _launch(self) -> None:
        assert self.directory is not None
        command = [*_die_with_parent(), _tool("unbound"), "-d", "-c", str(self.config_path)]
        with open(self.directory / "unbound.stderr", "ab") as stderr:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our config
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # If the test forgets stop() (or the interpreter exits), unbound still goes.
        self._finalizer = weakref.finalize(
            self, terminate, self._process, self.directory if self._own_directory else None
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise UnboundError(
                    f"unbound exited with {self._process.returncode}:\n{self._logs()}"
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise UnboundError(f"unbound did not answer within {START_TIMEOUT} s:\n{self._logs()}")

    def _answers(self) -> bool:
        """Whether unbound answers a query (CHAOS version.server, RFC 4892 style)."""
        query = dns.message.make_query("version.server.", "TXT", dns.rdataclass.CH)
        try:
            dns.query.udp(query, HOST, port=self.port, timeout=0.2)
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def _logs(self) -> str:
        assert self.directory is not None
        try:
            stderr = (self.directory / "unbound.stderr").read_text(errors="replace")
        except OSError:
            stderr = ""
        return f"{stderr}{self.log_text()}"

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

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._process is not None:
            terminate(self._process)
            self._process = None

    def _cleanup_directory(self) -> None:
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now (unbound binds it
    a moment later; a lost race shows as a bind error and `start` tries again)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP on 127.0.0.1")


def _die_with_parent() -> list[str]:
    """A command prefix asking the kernel to SIGTERM unbound when the thread that
    started it dies (util-linux `setpriv --pdeathsig`, PR_SET_PDEATHSIG): a test run
    killed outright leaves no resolver behind. Only from the main thread, which lives
    as long as the process (the signal follows the starting *thread*)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]
