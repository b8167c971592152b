"""Run a real `mailward serve` process for end-to-end tests (shipped with the package).

A `RunningServer` wraps one data directory and, while started, one child process
(`python -m mailward serve --data DIR`) whose JSON-lines log goes to `log_path`.
`mail_server()` builds one from scratch on loopback at a free port offset:

    with mail_server(tmp_path, users={"alice@example.test": "a-long-password"}) as srv:
        with smtplib.SMTP(srv.host, srv.smtp_port) as smtp:
            ...

Everything here waits by polling against a deadline, never by sleeping a fixed time;
a child that dies or does not come up raises with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailward.config.load import set_key

# The name the test certificate is issued for (`init --hostname localhost`).
TLS_NAME = "localhost"

# Standard ports a listener adds to the offset (SMTP, submission, IMAP, POP3).
SERVED_PORTS = (25, 587, 465, 143, 993, 110, 995)
RESERVED_PORTS = SERVED_PORTS

# Config every `mail_server` gets unless the caller sets the key: no greeting pause on
# the MX port and no tarpit (the product defaults, 1 s a connection and 0.5 s more per
# error, would slow every test that connects or errs; early talkers are still refused,
# and tests/e2e/test_abuse.py and test_attack.py run with both), and no DNS answer
# cache (tests change their DNS servers' records while a server runs).
TEST_CONFIG = {"abuse.greeting_delay": "0", "abuse.tarpit_step": "0", "dns.cache_max_ttl": "0"}

_OFFSET_RANGE = (20000, 40000)
_CLI_TIMEOUT = 120.0
_LOG_TAIL = 4000


class CliError(subprocess.CalledProcessError):
    """A `mailward` command failed; str() shows its output so a test failure says why."""

    def __str__(self) -> str:
        def text(data: Any) -> str:
            if isinstance(data, bytes):
                return data.decode("utf-8", "replace")[-_LOG_TAIL:]
            return str(data or "")[-_LOG_TAIL:]

        return (
            f"{' '.join(map(str, self.cmd))!s} exited {self.returncode}\n"
            f"--- stdout ---\n{text(self.stdout)}\n--- stderr ---\n{text(self.stderr)}"
        )


class ServerStartError(RuntimeError):
    """The server process exited (`exited`) or did not open its ports in time."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


class _PinnedNameContext(ssl.SSLContext):
    """A client context that verifies the peer against `TLS_NAME` whatever host name
    the caller connected to (smtplib passes the address it dialled, 127.0.0.1)."""

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=TLS_NAME,
            session=session,
        )

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=TLS_NAME,
            session=session,
        )


@dataclass
class RunningServer:
    data_dir: Path
    host: str
    port_offset: int
    cert_path: Path
    process: subprocess.Popen[bytes] | None
    log_path: Path
    env: dict[str, str] | None = None  # extra environment for `serve` (e.g. SSL_CERT_FILE)

    @property
    def smtp_port(self) -> int:
        return self.port_offset + 25

    @property
    def submission_port(self) -> int:
        return self.port_offset + 587

    @property
    def submissions_port(self) -> int:
        return self.port_offset + 465

    @property
    def imap_port(self) -> int:
        return self.port_offset + 143

    @property
    def imaps_port(self) -> int:
        return self.port_offset + 993

    @property
    def pop3_port(self) -> int:
        return self.port_offset + 110

    @property
    def pop3s_port(self) -> int:
        return self.port_offset + 995

    def cli(
        self, *args: str, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `python -m mailward ARGS... --data DIR` and capture its output."""
        cmd = [sys.executable, "-m", "mailward", *args, "--data", str(self.data_dir)]
        result = subprocess.run(  # noqa: S603 (fixed argv, no shell)
            cmd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=_CLI_TIMEOUT,
            check=False,
        )
        if check and result.returncode != 0:
            raise CliError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def start(self, timeout: float = 20) -> None:
        """Start `mailward serve` and return once every served port accepts TCP."""
        if self.process is not None and self.process.poll() is None:
            raise ServerStartError("server is already running")
        cmd = [sys.executable, "-m", "mailward", "serve", "--data", str(self.data_dir)]
        env = {**os.environ, **self.env} if self.env else None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        deadline = time.monotonic() + timeout
        waiting = [self.port_offset + port for port in SERVED_PORTS]
        while waiting:
            waiting = [port for port in waiting if not self._accepts(port)]
            if not waiting:
                break
            try:
                # Doubles as the poll interval: returns early if the child dies.
                status = self.process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
            else:
                raise ServerStartError(
                    f"mailward serve exited with status {status} before listening\n"
                    + self.log_tail(),
                    exited=True,
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"ports {waiting} not accepting connections after {timeout}s\n"
                    + self.log_tail()
                )

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM the server and wait for it; returns its exit status.

        Raises `subprocess.TimeoutExpired` if it does not exit within `timeout`."""
        if self.process is None:
            raise ServerStartError("server was never started")
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def add_user(self, address: str, password: str) -> None:
        self.cli("user", "add", address, "--password-stdin", input=password.encode() + b"\n")

    def log_events(self) -> list[dict[str, object]]:
        """Every JSON object logged so far (lines that are not JSON objects are skipped)."""
        events: list[dict[str, object]] = []
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return events
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                events.append(record)
        return events

    def wait_for_events(self, *names: str, timeout: float = 10.0) -> list[dict[str, object]]:
        """Poll the log until an event of every name in `names` has been written (the
        server buffers info lines and flushes them at least every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.log_events()
            missing = set(names) - {str(e.get("event")) for e in events}
            if not missing:
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"events {sorted(missing)} never logged\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, size: int = _LOG_TAIL) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "--- no log ---"
        return "--- log tail ---\n" + data[-size:].decode("utf-8", "replace")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts only `cert_path` and checks it names localhost."""
        context = _PinnedNameContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(self.cert_path))
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1):
                return True
        except OSError:
            return False


def _binds(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_offset(host: str = "127.0.0.1") -> int:
    """A random offset in [20000, 40000) at which every standard port binds right now."""
    low, high = _OFFSET_RANGE
    for _ in range(500):
        offset = low + secrets.randbelow(high - low)
        if all(_binds(host, offset + port) for port in RESERVED_PORTS):
            return offset
    raise RuntimeError(f"no free port offset found on {host}")


def free_loopback_address(ports: tuple[int, ...] = SERVED_PORTS) -> str:
    """A random address in 127.0.0.0/8 (all loopback on Linux) where every port in
    `ports` binds right now: for servers on standard ports (offset 0), such as the MX
    a delivery test sends to on port 25 (binding below 1024 needs root)."""
    for _ in range(500):
        a, b, c = 100 + secrets.randbelow(150), secrets.randbelow(256), 2 + secrets.randbelow(250)
        address = f"127.{a}.{b}.{c}"
        if all(_binds(address, port) for port in ports):
            return address
    raise RuntimeError("no free loopback address found")


def _cert_path(data_dir: Path) -> Path:
    """The certificate the config names (tls.cert, relative to the data directory)."""
    cert = "tls/cert.pem"
    try:
        with open(data_dir / "mailward.toml", "rb") as f:
            value = tomllib.load(f).get("tls", {}).get("cert")
    except (OSError, tomllib.TOMLDecodeError):
        value = None
    if isinstance(value, str) and value:
        cert = value
    path = Path(cert)
    return path if path.is_absolute() else data_dir / path


@contextlib.contextmanager
def mail_server(
    tmp_path: Path,
    *,
    domain: str = "example.test",
    users: dict[str, str] | None = None,
    config: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port_offset: int | None = None,
    name: str = "mailward",
    env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """Initialise a data directory under `tmp_path`, apply `config` (dotted keys, on top
    of `TEST_CONFIG`), add `users` (address -> password), start the server on `host`;
    stop it on exit.

    `port_offset` None picks a free one; 0 serves the standard ports (25, 587, ...),
    e.g. as the MX a delivery test sends to, on an address of its own
    (`free_loopback_address()`). Several servers share one `tmp_path` under
    different `name`s (data directory `<name>-data`, log `<name>-server.log`)."""
    data_dir = tmp_path / f"{name}-data"
    offset = free_port_offset(host) if port_offset is None else port_offset
    server = RunningServer(
        data_dir=data_dir,
        host=host,
        port_offset=offset,
        cert_path=data_dir / "tls" / "cert.pem",
        process=None,
        log_path=tmp_path / f"{name}-server.log",
        env=env,
    )
    server.cli(
        "init",
        "--domain",
        domain,
        "--hostname",
        TLS_NAME,
        "--port-offset",
        str(offset),
        "--listen",
        host,
    )
    server.cert_path = _cert_path(data_dir)
    for key, value in TEST_CONFIG.items():
        if key not in (config or {}):
            set_key(data_dir / "mailward.toml", key, value)  # as `config set`, in-process
    for key, value in (config or {}).items():
        server.cli("config", "set", key, value)
    for address, password in (users or {}).items():
        server.add_user(address, password)
    # Another process may take a port between choosing the offset and binding it:
    # then the server exits at once and we try again elsewhere.
    for attempt in range(3):
        try:
            server.start()
            break
        except ServerStartError as exc:
            if attempt == 2 or not exc.exited or port_offset is not None:
                raise
            server.port_offset = free_port_offset(host)
            server.cli("config", "set", "listen.port_offset", str(server.port_offset))
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            server.kill()
