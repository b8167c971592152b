"""A private, offline rspamd (Debian's package) on loopback, for tests.

    with TestDns() as dns, TestRspamd(dns=dns.address) as rspamd:
        client = RspamdClient(rspamd.url, timeout=30)
        result = await client.check(message, ip="192.0.2.1", sender="a@example.test")
        assert result.action == "no action"

The instance is private: a temp dir holds its local config (`local.d/`,
`override.d/`), database, run and log directories, passed to the packaged
`/etc/rspamd/rspamd.conf` as `--var LOCAL_CONFDIR=... --var DBDIR=... --var
RUNDIR=... --var LOGDIR=...` (so the packaged rules and scores are the ones used).
Only the normal (scanner) worker runs, on 127.0.0.1 on a free port (`url` is
"http://127.0.0.1:PORT"); the proxy (milter) and controller workers are disabled.
Nothing reaches the Internet: every DNS query (SPF, DKIM, DMARC, RBLs, ASN, the
`maps.rspamd.com` maps' host names) goes to `dns` ("127.0.0.1:PORT", e.g. a
`mailward.testing.dns_server.TestDns`), or, by default, to a loopback port where
nothing listens, with a short timeout so lookups fail fast. The fuzzy check (UDP to
rspamd.com's servers) and DNSBL monitoring are off. There is no Redis, so Bayes,
greylisting, rate limits, history and neural networks are off (rspamd logs a
warning for each and goes on).

Start time: the first start compiles hyperscan databases (the TLD list and the
regexp rules), ~10-20 s; `START_TIMEOUT` allows 120 s. The compiled files are kept
in a per-user cache (`hs_cache`, default `~/.cache/mailward-test/rspamd-hs`, or
under `$XDG_CACHE_HOME`): copied into the instance's database directory before it
starts and the new ones copied back when it stops, so later starts take about a
second. An empty, missing or unwritable cache only makes the start slow. rspamd
checks each cached file against the rules and the hyperscan version and compiles
again when they do not match.

As root, rspamd refuses to run its workers as root: the harness passes `-u _rspamd
-g _rspamd` (the package's user) and gives the temp dir to that user; as any other
user rspamd runs as that user. It runs in the foreground as a child process and is
stopped (SIGTERM, then SIGKILL, then its workers) and waited for when the context
exits, whatever happened, and as a last resort at interpreter exit or when the
starting thread dies (the lifecycle is `testing.daemon.PrivateDaemon`'s). A failed
start raises `RspamdHarnessError` with the tail of rspamd's log.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from mailward.testing.daemon import HOST, DaemonHarnessError, PrivateDaemon

__all__ = [
    "RSPAMD",
    "RspamdHarnessError",
    "TestRspamd",
    "default_hs_cache",
    "gtube",
    "rspamd_available",
]

RSPAMD = "/usr/bin/rspamd"
CONFIG = "/etc/rspamd/rspamd.conf"
RSPAMD_USER = "_rspamd"  # the Debian package's user (workers may not run as root)
START_TIMEOUT = 120.0  # seconds for rspamd to answer /ping (the first start compiles)
LOG_TAIL = 60  # lines of rspamd's log in a start failure
# Compiled hyperscan databases (regexp classes, multipattern TLD list, ...): the
# only files worth keeping between runs. rspamd writes them to a temporary name and
# renames, so a file with one of these names is complete.
_HS_FILE = re.compile(r"[0-9a-f]{64}\.(?:hs|hsmp|hsmc)")
_BIND_ERROR = re.compile(r"cannot bind|cannot listen|address already in use", re.IGNORECASE)


def gtube() -> bytes:
    """The GTUBE spam test string (https://spamassassin.apache.org/gtube/), which
    rspamd rejects with score 15, made at run time from pieces so that this source
    file does not contain it."""
    head = "XJS*C4JDBQADN1.NSBN3*2IDNEN*"
    middle = "GTUBE-STANDARD-ANTI-UBE-"
    tail = "TEST-EMAIL*C.34X"
    return (head + middle + tail).encode("ascii")


def rspamd_available() -> bool:
    """Whether rspamd is installed (Debian package `rspamd`, see
    scripts/install-test-deps)."""
    return os.access(RSPAMD, os.X_OK) and os.path.exists(CONFIG)


def default_hs_cache() -> Path:
    """The per-user cache of compiled hyperscan databases."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mailward-test" / "rspamd-hs"


class RspamdHarnessError(DaemonHarnessError):
    """rspamd would not start (bad config, no free port): the message has its log."""


class TestRspamd(PrivateDaemon):
    """An offline rspamd scanner on 127.0.0.1 (see the module docstring); `start()`
    returns once its normal worker answers /ping."""

    __test__ = False  # (not a pytest test class)

    program = "rspamd"
    error = RspamdHarnessError
    start_timeout = START_TIMEOUT
    awaited = "answer /ping"
    log_tail_lines = LOG_TAIL
    kill_group = True  # workers orphaned by a SIGKILLed main process

    def __init__(
        self,
        *,
        dns: str | None = None,
        dns_timeout: float = 0.2,
        hs_cache: str | os.PathLike[str] | bool = True,
        local_config: Mapping[str, str] | None = None,
    ) -> None:
        """`dns`: "127.0.0.1:PORT" of the DNS server for every rspamd lookup (default:
        a loopback port where nothing answers). `dns_timeout`: seconds per DNS try.
        `hs_cache`: True for `default_hs_cache()`, a directory, or False for none.
        `local_config`: more `local.d/` files, name -> UCL text (e.g.
        {"actions.conf": "reject = 10;"})."""
        if not dns_timeout > 0:
            raise ValueError("dns_timeout must be greater than 0")
        super().__init__()
        self.dns = dns
        self.dns_timeout = dns_timeout
        if hs_cache is True:
            self.hs_cache: Path | None = default_hs_cache()
        elif hs_cache is False:
            self.hs_cache = None
        else:
            self.hs_cache = Path(hs_cache)
        self.local_config = dict(local_config or {})

    # -- what tests use -------------------------------------------------------------

    @property
    def url(self) -> str:
        """For `RspamdClient`: "http://127.0.0.1:PORT" (the normal worker)."""
        assert self.port, "not started"
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        """log/rspamd.log: each scanned message is logged with its symbols
        (`log_text()`)."""
        assert self.directory is not None, "not started"
        return self.directory / "log" / "rspamd.log"

    def stop(self) -> None:
        """Stop rspamd (SIGTERM, then SIGKILL) and wait for it; keep its compiled
        hyperscan databases in the cache; remove the temp dir."""
        self._kill()
        self._save_hs_cache()
        super().stop()

    # -- hooks of PrivateDaemon -----------------------------------------------------

    def _installed(self) -> bool:
        return rspamd_available()

    def _prepare(self) -> None:
        """The config, database, run and log directories; the cached hyperscan
        databases."""
        assert self.directory is not None
        for name in ("local.d", "override.d", "db", "run", "log"):
            (self.directory / name).mkdir()
        self._restore_hs_cache()

    def _bind_failed(self, logs: str) -> bool:
        return _BIND_ERROR.search(logs) is not None

    def _write_config(self) -> None:
        assert self.directory is not None
        # After a bind failure: a new log, so the next attempt is judged by its own.
        self.log_path.unlink(missing_ok=True)
        dns = self.dns or f"{HOST}:{_dead_udp_port()}"
        timeout_ms = max(1, round(self.dns_timeout * 1000))
        files = {
            # Only the scanner; count = 1 keeps memory (~250 MB) and start time down.
            "local.d/worker-normal.inc": f'bind_socket = "{HOST}:{self.port}";\ncount = 1;\n',
            "override.d/worker-proxy.inc": "enabled = false;\n",
            "override.d/worker-controller.inc": "enabled = false;\n",
            "local.d/options.inc": (
                f'dns {{\n  nameserver = ["{dns}"];\n  timeout = {timeout_ms}ms;\n'
                "  retransmits = 1;\n}\n"
                "disable_monitoring = true;\n"
            ),
            "local.d/logging.inc": 'type = "file";\nlevel = "info";\n',
            # UDP to rspamd.com's fuzzy storage: the Internet.
            "local.d/fuzzy_check.conf": "enabled = false;\n",
        }
        files.update({f"local.d/{name}": text for name, text in self.local_config.items()})
        for name, text in files.items():
            (self.directory / name).write_text(text)
        self._give_to_rspamd_user()

    def _command(self) -> list[str]:
        assert self.directory is not None
        directory = self.directory
        command = [
            RSPAMD,
            "-f",
            "-c",
            CONFIG,
            "--var",
            f"LOCAL_CONFDIR={directory}",
            "--var",
            f"DBDIR={directory / 'db'}",
            "--var",
            f"RUNDIR={directory / 'run'}",
            "--var",
            f"LOGDIR={directory / 'log'}",
        ]
        if os.geteuid() == 0:
            command += ["-u", RSPAMD_USER, "-g", RSPAMD_USER]
        return command

    def _answers(self) -> bool:
        """Whether the normal worker answers `GET /ping` with pong (readiness probe)."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
                reply = b""
                while len(reply) < 4096:
                    more = sock.recv(4096)
                    if not more:
                        break
                    reply += more
        except OSError:
            return False
        head, _, body = reply.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.") and b" 200 " in head[:13] and body.strip() == b"pong"

    def _give_to_rspamd_user(self) -> None:
        """As root: the temp dir (config, database, logs) to the user the workers run
        as, so they can read the config and write their files."""
        if os.geteuid() != 0:
            return
        assert self.directory is not None
        try:
            user = pwd.getpwnam(RSPAMD_USER)
        except KeyError:
            raise RspamdHarnessError(
                f"no user {RSPAMD_USER!r} (installed with the rspamd package)"
            ) from None
        for path in [self.directory, *self.directory.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)

    def _restore_hs_cache(self) -> None:
        """Copy the cached compiled hyperscan databases into the database directory."""
        if self.hs_cache is None or self.directory is None:
            return
        with suppress(OSError):
            for path in self.hs_cache.iterdir():
                if _HS_FILE.fullmatch(path.name):
                    shutil.copyfile(path, self.directory / "db" / path.name)

    def _save_hs_cache(self) -> None:
        """Make the cache hold the databases this rspamd used or compiled (new ones
        copied in, each under a temporary name and renamed; ones rspamd did not keep
        removed). Errors only cost speed next time."""
        if self.hs_cache is None or self.directory is None:
            return
        database = self.directory / "db"
        with suppress(OSError):
            current = {p.name: p for p in database.iterdir() if _HS_FILE.fullmatch(p.name)}
            if not current:
                return
            self.hs_cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            for name, path in current.items():
                target = self.hs_cache / name
                if target.exists() and target.stat().st_size == path.stat().st_size:
                    continue
                partial = self.hs_cache / f".{name}.{os.getpid()}.tmp"
                try:
                    shutil.copyfile(path, partial)
                    os.replace(partial, target)
                finally:
                    partial.unlink(missing_ok=True)
            for old in self.hs_cache.iterdir():
                if _HS_FILE.fullmatch(old.name) and old.name not in current:
                    old.unlink(missing_ok=True)


def _dead_udp_port() -> int:
    """A UDP port on 127.0.0.1 where nothing listens right now (DNS sent there is
    lost: rspamd's lookups time out after `dns_timeout`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((HOST, 0))
        port: int = udp.getsockname()[1]
        return port
