"""bench/imap_bench: IMAP latency, memory and mixed load, mailward vs Dovecot, in one run.

Not a test. Run as root from the repository root (Dovecot's master starts as root; the
machine's /etc/dovecot and system service are never used):

    .venv/bin/python bench/imap_bench.py [--messages 100000] [--repeat 15]
                                         [--duration 30] [--idle-connections 2000]
    .venv/bin/python bench/imap_bench.py --quick          # ~2,000 msgs, < 2 minutes

One run, everything on 127.0.0.1, both servers up side by side:

* A deterministic corpus (`bench/imap_corpus.py`, --seed) of --messages messages is
  written once as a Maildir; Dovecot gets hard links to the same files (then chown to
  the mail uid), mailward gets the same bytes, flags and internal dates through its store
  (`mailward.app.open_store(data_dir).deliver(...)`, batches of 500 concurrent
  deliveries) before `mailward serve` starts. A 25 MB message goes into a second
  mailbox ("Big") of both.
* mailward: `mailward init` / `config set` / `user add` through its CLI in a temp dir,
  then `mailward serve` (`mailward.testing.server.RunningServer`), IMAP over implicit TLS
  at port_offset+993, limits.connections(_per_ip) raised for the idle-memory test.
* Dovecot: a private instance, `dovecot -c <tmp>/dovecot.conf` (own base_dir, state_dir,
  log, Maildir, one imaps listener on a free loopback port), as in research/peers.md
  section 4, first in Debian's default "high-security" process model (service_count=1:
  a fresh imap-login and imap process per connection), then restarted in the
  "high-performance" model (imap-login service_count=0, imap service_count=100, with
  process_min_avail) for a second set of rows.
* Same certificate (ECDSA P-256, self-signed) and same password hash for both: the
  account's password is an argon2id PHC string with mailward's parameters (t=3, m=64 MiB,
  p=4), which Dovecot verifies as {ARGON2ID} (--dovecot-password plain for {PLAIN}).
* Clients: Python imaplib over IMAP4_SSL (unverified context) for the timed operations
  and the mixed load (one process per client); raw asyncio TLS sockets for the 2,000
  idle connections. The client code is identical for both servers.

Dovecot builds its index and cache on first access, so one unmeasured warm-up pass of
every timed operation is run against each server first. Timed operations then alternate
between the servers, --repeat times, and the median is reported. Every line printed on
stdout is one JSON object with mailward's figure, Dovecot's figure, the ratio
(mailward / Dovecot) and the number of messages; a failed operation prints
{"error": {...}} with the command and response instead of a figure. Progress goes to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import imaplib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imap_corpus

DOMAIN = "example.test"
USER = f"bench@{DOMAIN}"
PASSWORD = "correct-horse-battery-staple-42"
MAIL_UID = 65534  # nobody: Dovecot's mail user, no system user is created
MAIL_GID = 65534
BIG_MAILBOX = "Big"
HOST = "127.0.0.1"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
IMAP_TIMEOUT = 900.0
DOVECOT_PROCS = ("imap", "imap-login")


class BenchError(RuntimeError):
    pass


def progress(msg: str) -> None:
    print(f"[imap_bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def poll_until(pred: Callable[[], bool], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not pred():
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "7",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    key.chmod(0o600)
    return cert, key


def argon2id_hash(password: str) -> str:
    import argon2  # mailward's own dependency: same defaults as its PasswordHasher

    return argon2.PasswordHasher(type=argon2.Type.ID).hash(password)


def short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 1500 else text[:1500] + "..."


# --------------------------------------------------------------------------- /proc


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) of every process."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        table[int(entry.name)] = (ppid, comm)
    return table


def descendants(root: int, table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    table = table if table is not None else proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _comm) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def status_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples the summed VmRSS of `pids()` every `interval` s in a thread."""

    def __init__(self, pids: Callable[[], list[int]], interval: float = 0.01) -> None:
        self.pids = pids
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids = self.pids()
        last_scan = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_scan > 0.2:  # pick up new processes
                pids, last_scan = self.pids(), time.monotonic()
            self.peak = max(self.peak, sum(status_kib(p) for p in pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- servers


class Side:
    """One server under test: how to reach it and which processes are its memory."""

    name = "?"
    port = 0
    error: str | None = None

    def pids(self) -> list[int]:
        raise NotImplementedError

    def rss_kib(self) -> int:
        return sum(status_kib(p) for p in self.pids())

    def pss_kib(self) -> int:
        return sum(pss_kib(p) for p in self.pids())

    def stop(self) -> None:
        raise NotImplementedError


class MailwardSide(Side):
    name = "mailward"

    def __init__(self, root: Path, cert: Path, key: Path, max_connections: int) -> None:
        from mailward.testing.server import RunningServer, free_port_offset

        self.root = root
        offset = free_port_offset(HOST)
        self.srv = RunningServer(
            data_dir=root / "mailward-data",
            host=HOST,
            port_offset=offset,
            cert_path=root / "mailward-data" / "tls" / "cert.pem",
            process=None,
            log_path=root / "mailward-server.log",
        )
        self.cert, self.key = cert, key
        self.max_connections = max_connections

    @property
    def port(self) -> int:  # type: ignore[override]
        return self.srv.port_offset + 993

    def init(self) -> None:
        srv = self.srv
        srv.cli(
            "init",
            "--domain",
            DOMAIN,
            "--hostname",
            "localhost",
            "--port-offset",
            str(srv.port_offset),
            "--listen",
            HOST,
            "--cert",
            str(self.cert),
            "--key",
            str(self.key),
        )
        for key, value in (
            ("limits.connections_per_ip", str(self.max_connections)),
            ("limits.connections", str(self.max_connections + 100)),
        ):
            srv.cli("config", "set", key, value)
        srv.add_user(USER, PASSWORD)

    def load(self, maildir: Path, big: bytes, batch: int = 500) -> float:
        """Deliver the corpus (and the big message into BIG_MAILBOX) through the store."""
        from mailward.app import open_store
        from mailward.store.api import Delivery, LocalTarget

        async def go() -> float:
            store = await open_store(self.srv.data_dir)
            try:
                account = await store.get_account(USER)
                assert account is not None, f"no account {USER}"
                aid = account.id
                t0 = time.perf_counter()
                pending: list[asyncio.Future[Any]] = []

                async def flush() -> None:
                    await asyncio.gather(*pending)
                    pending.clear()

                for i, path, flags, idate in imap_corpus.read_maildir(maildir):
                    delivery = Delivery(
                        spool=store.new_spool(),
                        sender="",
                        local=[LocalTarget(aid, "INBOX", flags)],
                        outbound=[],
                        internal_date=idate,
                        content=path.read_bytes(),
                    )
                    pending.append(asyncio.ensure_future(store.deliver(delivery)))
                    await asyncio.sleep(0)  # reach the store's queue in corpus order
                    if len(pending) >= batch:
                        await flush()
                        if (i + 1) % 10000 < batch:
                            progress(f"mailward: loaded {i + 1} messages")
                await flush()
                elapsed = time.perf_counter() - t0
                if await store.get_mailbox(aid, BIG_MAILBOX) is None:
                    await store.create_mailbox(aid, BIG_MAILBOX)
                await store.deliver(
                    Delivery(
                        spool=store.new_spool(),
                        sender="",
                        local=[LocalTarget(aid, BIG_MAILBOX)],
                        outbound=[],
                        internal_date=imap_corpus.internal_date(0),
                        content=big,
                    )
                )
                return elapsed
            finally:
                await store.close()

        return asyncio.run(go())

    def start(self) -> None:
        self.srv.start(timeout=120)
        try:
            poll_until(lambda: accepts(self.port), 30, f"mailward IMAPS on port {self.port}")
        except BenchError as e:
            raise BenchError(f"{e}\n{self.srv.log_tail()}") from e

    def pids(self) -> list[int]:
        proc = self.srv.process
        if proc is None or proc.poll() is not None:
            return []
        return descendants(proc.pid)

    def alive(self) -> bool:
        return self.srv.process is not None and self.srv.process.poll() is None

    def stop(self) -> None:
        if self.srv.process is None:
            return
        try:
            self.srv.stop(timeout=60)
        except subprocess.TimeoutExpired:
            self.srv.kill()


DOVECOT_CONF = """\
# mailward bench: private Dovecot instance (research/peers.md section 4)
protocols = imap
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
instance_name = mwbench-dovecot
log_path = {root}/dovecot.log
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = {uid}
first_valid_gid = {gid}
default_process_limit = {procs}
default_client_limit = {clients}
default_vsz_limit = 1G
protocol imap {{
  mail_max_userip_connections = {procs}
}}
passdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
  default_fields = uid={uid} gid={gid} home={root}/mail/bench
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = {host}
    port = {port}
    ssl = yes
  }}
  process_limit = {procs}
{login_extra}}}
service imap {{
  process_limit = {procs}
{imap_extra}}}
service auth {{
  client_limit = {clients}
}}
service anvil {{
  client_limit = {clients}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""

DOVECOT_MODES = {
    # Debian's defaults: service_count = 1 for imap-login and imap.
    "high-security": ("", ""),
    # research/peers.md's "high-performance" variant (processes reused).
    "high-performance": (
        "  service_count = 0\n  process_min_avail = {ncpu}\n",
        "  service_count = 100\n  process_min_avail = 4\n",
    ),
}


class DovecotSide(Side):
    name = "dovecot"

    def __init__(
        self, root: Path, cert: Path, key: Path, password_scheme: str, max_connections: int
    ) -> None:
        self.root = root
        self.cert, self.key = cert, key
        self.port = free_port()
        self.conf = root / "dovecot.conf"
        self.maildir = root / "mail" / "bench" / "Maildir"
        self.password_scheme = password_scheme
        self.max_connections = max_connections
        self.mode = "high-security"
        self.running = False

    def prepare(self, corpus: Path, big: bytes) -> None:
        """Hard-link the corpus files into the Maildir, add the Big folder, chown."""
        for d in ("run", "state", "mail"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
            (self.maildir / f".{BIG_MAILBOX}" / sub).mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(corpus / "cur"):
            os.link(entry.path, self.maildir / "cur" / entry.name)
        big_name = imap_corpus.maildir_name(0, len(big), frozenset())
        big_path = self.maildir / f".{BIG_MAILBOX}" / "cur" / big_name
        big_path.write_bytes(big)
        idate = imap_corpus.internal_date(0)
        os.utime(big_path, (idate, idate))
        (self.maildir / "subscriptions").write_text(f"{BIG_MAILBOX}\n")
        for dirpath, _dirnames, filenames in os.walk(self.root / "mail"):
            os.chown(dirpath, MAIL_UID, MAIL_GID)
            for name in filenames:
                os.chown(os.path.join(dirpath, name), MAIL_UID, MAIL_GID)
        if self.password_scheme == "argon2id":
            secret = "{ARGON2ID}" + argon2id_hash(PASSWORD)
        else:
            secret = "{PLAIN}" + PASSWORD
        users = self.root / "users"
        users.write_text(f"{USER}:{secret}::::::\n")
        users.chmod(0o640)  # read by the auth process (user dovecot)
        shutil.chown(users, group="dovecot")

    def configure(self, mode: str) -> None:
        login_extra, imap_extra = DOVECOT_MODES[mode]
        ncpu = os.cpu_count() or 1
        self.conf.write_text(
            DOVECOT_CONF.format(
                host=HOST,
                root=self.root,
                cert=self.cert,
                key=self.key,
                uid=MAIL_UID,
                gid=MAIL_GID,
                port=self.port,
                procs=self.max_connections + 200,
                clients=4 * self.max_connections + 2000,
                login_extra=login_extra.format(ncpu=ncpu),
                imap_extra=imap_extra,
            )
        )
        self.mode = mode

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.root / "dovecot.log").read_text(errors="replace")
        except OSError:
            return "(no dovecot log)"
        return "\n".join(text.splitlines()[-lines:])

    def master_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        check = subprocess.run(
            [DOVECOT, "-c", str(self.conf), "-n"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check.returncode != 0:
            raise BenchError(f"doveconf -n failed: {check.stderr.strip()}")
        # The master daemonizes and its children inherit stdio: no pipes here, or
        # subprocess would wait for them to close.
        self.running = True  # from now on stop() is needed, whatever happens
        errfile = self.root / "dovecot-start.err"
        with open(errfile, "wb") as err:
            proc = subprocess.run(
                [DOVECOT, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=60,
                check=False,
            )
        if proc.returncode != 0:
            raise BenchError(
                f"dovecot failed to start: {errfile.read_text(errors='replace').strip()}\n"
                f"{self.log_tail()}"
            )
        try:
            poll_until(lambda: accepts(self.port), 30, f"Dovecot IMAPS on port {self.port}")
        except BenchError as e:
            raise BenchError(f"{e}\n{self.log_tail()}") from e

    def stop(self) -> None:
        if not self.running:
            return
        pid = self.master_pid()
        subprocess.run(
            [DOVEADM, "-c", str(self.conf), "stop"], capture_output=True, timeout=60, check=False
        )
        if pid is not None:

            def gone() -> bool:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                return False

            try:
                poll_until(gone, 30, "Dovecot master to exit")
            except BenchError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # Its children (imap, imap-login, auth...) exit once the master is gone.
        self.running = False

    def pids(self) -> list[int]:
        master = self.master_pid()
        if master is None:
            return []
        table = proc_table()
        return [
            p for p in descendants(master, table) if p in table and table[p][1] in DOVECOT_PROCS
        ]

    def all_pids(self) -> list[int]:
        master = self.master_pid()
        return [] if master is None else descendants(master)


# --------------------------------------------------------------------------- timed ops


def connect(port: int) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL(HOST, port, ssl_context=client_context(), timeout=IMAP_TIMEOUT)


def check(typ: str, data: Any, what: str) -> Any:
    if typ != "OK":
        raise BenchError(f"{what} -> {typ} {data!r}"[:1500])
    return data


def login_select(port: int, mailbox: str = "INBOX") -> tuple[imaplib.IMAP4_SSL, int]:
    c = connect(port)
    try:
        check(*c.login(USER, PASSWORD), "LOGIN")
        data = check(*c.select(mailbox), f"SELECT {mailbox}")
        return c, int(data[0])
    except BaseException:
        with contextlib.suppress(Exception):
            c.shutdown()
        raise


def close(c: imaplib.IMAP4_SSL) -> None:
    with contextlib.suppress(Exception):
        c.logout()


class Session:
    """A logged-in, INBOX-selected imaplib connection reused for the per-command ops."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: imaplib.IMAP4_SSL | None = None
        self.exists = 0

    def get(self) -> imaplib.IMAP4_SSL:
        if self.conn is None:
            self.conn, self.exists = login_select(self.port)
        return self.conn

    def drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.shutdown()
            self.conn = None


def op_login_select(session: Session) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    c, n = login_select(session.port)
    elapsed = time.perf_counter() - t0
    close(c)
    return elapsed, {"exists": n}


def op_fetch_envelopes(session: Session) -> tuple[float, dict[str, Any]]:
    c = session.get()
    n = session.exists
    t0 = time.perf_counter()
    data = check(*c.fetch(f"{n - 49}:{n}", "(ENVELOPE)"), f"FETCH {n - 49}:{n} ENVELOPE")
    elapsed = time.perf_counter() - t0
    got = sum(
        1 for d in data if d is not None and b"ENVELOPE" in (d[0] if isinstance(d, tuple) else d)
    )
    if got != 50:
        raise BenchError(f"FETCH {n - 49}:{n} ENVELOPE returned {got} envelopes, not 50")
    return elapsed, {}


def op_search_subject(session: Session) -> tuple[float, dict[str, Any]]:
    c = session.get()
    t0 = time.perf_counter()
    data = check(
        *c.search(None, "HEADER", "Subject", imap_corpus.SEARCH_WORD),
        f"SEARCH HEADER Subject {imap_corpus.SEARCH_WORD}",
    )
    elapsed = time.perf_counter() - t0
    return elapsed, {"matches": len(data[0].split()) if data and data[0] else 0}


def op_uid_fetch_flags(session: Session) -> tuple[float, dict[str, Any]]:
    c = session.get()
    t0 = time.perf_counter()
    data = check(*c.uid("FETCH", "1:*", "(FLAGS)"), "UID FETCH 1:* (FLAGS)")
    elapsed = time.perf_counter() - t0
    got = sum(1 for d in data if d)
    if got != session.exists:
        raise BenchError(
            f"UID FETCH 1:* (FLAGS) returned {got} responses, EXISTS was {session.exists}"
        )
    return elapsed, {}


TIMED_OPS: list[tuple[str, str, Callable[[Session], tuple[float, dict[str, Any]]]]] = [
    (
        "login_select",
        "connect+TLS, LOGIN, SELECT INBOX (new connection each time)",
        op_login_select,
    ),
    ("fetch_envelope_50", "FETCH n-49:n ENVELOPE", op_fetch_envelopes),
    (
        "search_header_subject",
        f"SEARCH HEADER Subject {imap_corpus.SEARCH_WORD} (~1 % match)",
        op_search_subject,
    ),
    ("uid_fetch_flags_all", "UID FETCH 1:* (FLAGS)", op_uid_fetch_flags),
]


def run_timed_ops(
    sides: list[Side],
    ops: list[str],
    repeat: int,
    messages: int,
    dovecot_mode: str,
    warm: bool,
    budget: float,
) -> None:
    """Warm up (optional), then run each op `repeat` times per server, alternating; an
    op whose warm-up shows it would take more than `budget` seconds in all is repeated
    fewer times (at least 3)."""
    sessions = {s.name: Session(s.port) for s in sides if s.error is None}
    chosen = [op for op in TIMED_OPS if op[0] in ops]
    warm_s: dict[str, float] = {}
    if warm:
        for side in sides:
            if side.error is not None:
                continue
            progress(f"{side.name}: warm-up pass (index/cache build on first access)")
            for name, _desc, fn in chosen:
                t0 = time.perf_counter()
                try:
                    fn(sessions[side.name])
                except Exception as e:
                    progress(f"{side.name}: warm-up {name} failed: {short_error(e)}")
                    sessions[side.name].drop()
                else:
                    secs = time.perf_counter() - t0
                    warm_s[name] = warm_s.get(name, 0.0) + secs
                    progress(f"{side.name}: warm-up {name} {secs:.3f}s")
    for name, desc, fn in chosen:
        runs: dict[str, list[float]] = {s.name: [] for s in sides}
        info: dict[str, dict[str, Any]] = {}
        errors: dict[str, str] = {}
        reps = repeat
        if warm_s.get(name, 0.0) * repeat > budget:
            reps = min(repeat, max(3, int(budget / warm_s[name])))
            progress(f"{name}: {reps} repeats instead of {repeat} (--op-budget {budget:.0f}s)")
        for _ in range(reps):
            for side in sides:
                if side.error is not None:
                    errors.setdefault(side.name, f"server not available: {side.error}")
                    continue
                if side.name in errors:
                    continue
                try:
                    secs, extra = fn(sessions[side.name])
                except Exception as e:
                    errors[side.name] = short_error(e)
                    sessions[side.name].drop()
                    continue
                runs[side.name].append(secs)
                info[side.name] = extra
        med = {k: (statistics.median(v) if v else None) for k, v in runs.items()}
        line: dict[str, Any] = {
            "bench": "imap",
            "op": name,
            "command": desc,
            "messages": messages,
            "mailward_s": rounded(med.get("mailward"), 6),
            "dovecot_s": rounded(med.get("dovecot"), 6),
            "ratio": ratio(med.get("mailward"), med.get("dovecot")),
            "repeat": reps,
            "dovecot_config": dovecot_mode,
            "warmup": "one unmeasured pass per server before measuring"
            if warm
            else "none (indexes already built)",
            "mailward_runs": [round(x, 5) for x in runs.get("mailward", [])],
            "dovecot_runs": [round(x, 5) for x in runs.get("dovecot", [])],
        }
        if name == "search_header_subject":
            line["matches"] = {k: v.get("matches") for k, v in info.items()}
        if errors:
            line["error"] = errors
        emit(line)
    for s in sessions.values():
        if s.conn is not None:
            close(s.conn)


# --------------------------------------------------------------------------- 25 MB


def big_fetch(sides: list[Side], big: bytes, messages: int, repeat: int, dovecot_mode: str) -> None:
    """FETCH 1 BODY.PEEK[] of the 25 MB message in Big (RSS sampled every 10 ms), then
    APPEND another 25 MB message to Big (same sampling)."""
    results: dict[str, dict[str, Any]] = {}
    for side in sides:
        if side.error is not None:
            results[side.name] = {"error": f"server not available: {side.error}"}
            continue
        res: dict[str, Any] = {"fetch_s": [], "append_s": []}
        try:
            c, n = login_select(side.port, BIG_MAILBOX)
            if n < 1:
                raise BenchError(f"SELECT {BIG_MAILBOX} shows {n} messages, expected 1")
            for _ in range(repeat):
                time.sleep(0.3)
                before = side.rss_kib()
                with RssSampler(side.pids) as sampler:
                    t0 = time.perf_counter()
                    data = check(*c.fetch("1", "(BODY.PEEK[])"), "FETCH 1 (BODY.PEEK[])")
                    res["fetch_s"].append(time.perf_counter() - t0)
                got = data[0][1] if data and isinstance(data[0], tuple) else b""
                if got != big:
                    raise BenchError(
                        f"FETCH 1 (BODY.PEEK[]) returned {len(got)} bytes, "
                        f"expected the {len(big)}-byte message unchanged"
                    )
                del data, got
                time.sleep(0.3)
                after = side.rss_kib()
                res.setdefault("fetch_rss_kib", []).append(
                    {
                        "before": before,
                        "peak": max(sampler.peak, before, after),
                        "after": after,
                        "samples": sampler.samples,
                    }
                )
            time.sleep(0.3)
            before = side.rss_kib()
            with RssSampler(side.pids) as sampler:
                t0 = time.perf_counter()
                check(*c.append(BIG_MAILBOX, None, None, big), "APPEND Big {25MB}")
                res["append_s"].append(time.perf_counter() - t0)
            time.sleep(0.3)
            after = side.rss_kib()
            res["append_rss_kib"] = {
                "before": before,
                "peak": max(sampler.peak, before, after),
                "after": after,
                "samples": sampler.samples,
            }
            close(c)
        except Exception as e:
            res["error"] = short_error(e)
        results[side.name] = res

    def med(side: str, key: str) -> float | None:
        v = results.get(side, {}).get(key) or []
        return round(statistics.median(v), 4) if v else None

    for op, key, rss_key, desc in (
        ("fetch_25mb", "fetch_s", "fetch_rss_kib", "FETCH 1 (BODY.PEEK[]) of a 25 MB message"),
        ("append_25mb", "append_s", "append_rss_kib", "APPEND of a 25 MB message"),
    ):
        line: dict[str, Any] = {
            "bench": "imap",
            "op": op,
            "command": desc,
            "messages": messages,
            "size": len(big),
            "mailward_s": med("mailward", key),
            "dovecot_s": med("dovecot", key),
            "ratio": ratio(med("mailward", key), med("dovecot", key)),
            "dovecot_config": dovecot_mode,
            "mailward_rss_kib": results.get("mailward", {}).get(rss_key),
            "dovecot_rss_kib": results.get("dovecot", {}).get(rss_key),
            "rss_note": "server RSS before / peak (sampled every 10 ms) / after; "
            "dovecot = sum of imap + imap-login processes",
        }
        if op == "fetch_25mb":
            line["repeat"] = repeat
            rss = results.get("mailward", {}).get(rss_key)
            if rss:
                line["mailward_peak_growth_kib"] = max(r["peak"] - r["before"] for r in rss)
        else:
            rss = results.get("mailward", {}).get(rss_key)
            if rss:
                line["mailward_peak_growth_kib"] = rss["peak"] - rss["before"]
        errors = {k: v["error"] for k, v in results.items() if "error" in v}
        if errors:
            line["error"] = errors
        emit(line)


# --------------------------------------------------------------------------- idle


async def _read_tagged(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError(f"connection closed waiting for {tag.decode()}")
        if line.startswith(tag + b" "):
            return line


async def _open_idle(
    port: int, ctx: ssl.SSLContext, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port, ssl=ctx), timeout)
    try:

        async def dialogue() -> None:
            greeting = await reader.readline()
            if not greeting.startswith(b"* OK"):
                raise BenchError(f"greeting {greeting!r}")
            for tag, cmd in (
                (b"a1", f'LOGIN "{USER}" "{PASSWORD}"'.encode()),
                (b"a2", b"SELECT INBOX"),
            ):
                writer.write(tag + b" " + cmd + b"\r\n")
                line = await _read_tagged(reader, tag)
                if not line.startswith(tag + b" OK"):
                    raise BenchError(f"{cmd.split()[0].decode()} -> {line!r}")
            writer.write(b"a3 IDLE\r\n")
            while True:
                line = await reader.readline()
                if line.startswith(b"+"):
                    return
                if not line or line.startswith(b"a3 "):
                    raise BenchError(f"IDLE -> {line!r}")

        await asyncio.wait_for(dialogue(), timeout)
    except BaseException:
        writer.close()
        raise
    return reader, writer


async def _idle_run(side: Side, count: int, concurrency: int, floor_kib: int) -> dict[str, Any]:
    ctx = client_context()
    sem = asyncio.Semaphore(concurrency)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def one() -> None:
        async with sem:
            if stop.is_set():
                return
            try:
                conns.append(await _open_idle(side.port, ctx, 120))
            except Exception as e:
                failures.append(short_error(e))
                if len(failures) >= 20 and len(failures) > len(conns):
                    stop.set()  # the server refuses: do not hammer it 2,000 times
                return
            if len(conns) % 100 == 0:
                if mem_available_kib() < floor_kib:  # stop before the box runs out
                    stop.set()
                if len(conns) % 500 == 0:
                    progress(f"{side.name}: {len(conns)} idle connections open")

    await asyncio.sleep(1.0)
    before_rss, before_pss = side.rss_kib(), side.pss_kib()
    before_procs = len(side.pids())
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    open_s = time.perf_counter() - t0
    await asyncio.sleep(2.0)  # let the server settle
    after_rss, after_pss = side.rss_kib(), side.pss_kib()
    after_procs = len(side.pids())
    n = len(conns)
    for _reader, writer in conns:
        with contextlib.suppress(Exception):
            writer.write(b"DONE\r\na4 LOGOUT\r\n")
            writer.close()
    for _reader, writer in conns:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 5)
    return {
        "opened": n,
        "failed": len(failures),
        "first_failure": failures[0] if failures else None,
        "stopped_early": stop.is_set(),
        "rss_kib_before": before_rss,
        "rss_kib_after": after_rss,
        "pss_kib_before": before_pss,
        "pss_kib_after": after_pss,
        "processes_before": before_procs,
        "processes_after": after_procs,
        "kib_per_conn": round((after_rss - before_rss) / n, 1) if n else None,
        "pss_kib_per_conn": round((after_pss - before_pss) / n, 1) if n else None,
        "open_s": round(open_s, 1),
    }


def idle_memory(side: Side, count: int, concurrency: int) -> dict[str, Any]:
    if side.error is not None:
        return {"error": f"server not available: {side.error}"}
    # Summed RSS overcounts shared pages (Dovecot), so guard on the machine's
    # MemAvailable instead: keep at least 15 % of it (and 1 GiB).
    floor = max(1 << 20, int(mem_available_kib() * 0.15))
    progress(f"{side.name}: opening {count} idle connections (LOGIN, SELECT INBOX, IDLE)")
    try:
        res = asyncio.run(_idle_run(side, count, concurrency, floor))
    except Exception as e:
        return {"error": short_error(e)}
    progress(f"{side.name}: idle result {res}")
    if res["opened"] == 0:
        res["error"] = f"no connection could be opened: {res['first_failure']}"
    return res


def emit_idle(
    mw: dict[str, Any], dv: dict[str, Any], count: int, messages: int, dovecot_mode: str
) -> None:
    line: dict[str, Any] = {
        "bench": "imap",
        "op": "idle_connection_memory",
        "command": "per connection: TLS, LOGIN, SELECT INBOX, IDLE; RSS growth / connections",
        "messages": messages,
        "connections": count,
        "mailward_kib_per_conn": mw.get("kib_per_conn"),
        "dovecot_kib_per_conn": dv.get("kib_per_conn"),
        "ratio": ratio(mw.get("kib_per_conn"), dv.get("kib_per_conn")),
        "mailward_pss_kib_per_conn": mw.get("pss_kib_per_conn"),
        "dovecot_pss_kib_per_conn": dv.get("pss_kib_per_conn"),
        "ratio_pss": ratio(mw.get("pss_kib_per_conn"), dv.get("pss_kib_per_conn")),
        "dovecot_config": dovecot_mode,
        "note": "VmRSS growth of the mailward process; for Dovecot the summed VmRSS (and "
        "PSS, which does not count shared pages once per process) of all imap and "
        "imap-login processes",
        "mailward": {k: v for k, v in mw.items() if k not in ("error",)},
        "dovecot": {k: v for k, v in dv.items() if k not in ("error",)},
    }
    errors = {k: v["error"] for k, v in (("mailward", mw), ("dovecot", dv)) if "error" in v}
    if errors:
        line["error"] = errors
    emit(line)


# --------------------------------------------------------------------------- mixed load


def mixed_worker(port: int, start_at: float, duration: float, seed: int) -> dict[str, Any]:
    """One client: loop login, select, fetch, store, append, expunge, logout until the
    deadline. Returns counts; runs in its own process."""
    rng = random.Random(seed)
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    t0 = time.perf_counter()
    deadline = t0 + duration
    commands = sessions = errors = 0
    first_error: str | None = None
    k = 0
    while time.perf_counter() < deadline:
        c: imaplib.IMAP4_SSL | None = None
        last = "connect"
        try:
            c = connect(port)
            last = "LOGIN"
            check(*c.login(USER, PASSWORD), last)
            commands += 1
            last = "SELECT INBOX"
            n = int(check(*c.select("INBOX"), last)[0])
            commands += 1
            top = max(1, n - 20)  # stay below messages other clients may expunge
            lo = rng.randint(1, max(1, top - 5))
            last = f"FETCH {lo}:{lo + 4} (ENVELOPE)"
            check(*c.fetch(f"{lo}:{lo + 4}", "(ENVELOPE)"), last)
            commands += 1
            for _ in range(2):
                s = rng.randint(1, top)
                last = f"FETCH {s} (BODY.PEEK[])"
                check(*c.fetch(str(s), "(BODY.PEEK[])"), last)
                commands += 1
            s = rng.randint(1, top)
            op = rng.choice(["+FLAGS", "-FLAGS"])
            last = f"STORE {s} {op} (\\Flagged)"
            check(*c.store(str(s), op, "(\\Flagged)"), last)
            commands += 1
            k += 1
            last = "APPEND INBOX"
            data = check(
                *c.append("INBOX", None, None, imap_corpus.small_message(seed * 1_000_000 + k)),
                last,
            )
            commands += 1
            m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            if m is None:
                raise BenchError(f"APPEND: no APPENDUID in {data!r}")
            uid = m.group(1).decode()
            last = f"UID STORE {uid} +FLAGS.SILENT (\\Deleted)"
            check(*c.uid("STORE", uid, "+FLAGS.SILENT", "(\\Deleted)"), last)
            commands += 1
            last = f"UID EXPUNGE {uid}"
            check(*c.uid("EXPUNGE", uid), last)
            commands += 1
            last = "LOGOUT"
            c.logout()
            c = None
            commands += 1
            sessions += 1
        except Exception as e:
            errors += 1
            if first_error is None:
                first_error = f"{last}: {short_error(e)}"
            if c is not None:
                with contextlib.suppress(Exception):
                    c.shutdown()
            time.sleep(0.05)
    return {
        "commands": commands,
        "sessions": sessions,
        "errors": errors,
        "first_error": first_error,
        "elapsed": time.perf_counter() - t0,
    }


def mixed_load(side: Side, clients: int, duration: float) -> dict[str, Any]:
    if side.error is not None:
        return {"error": f"server not available: {side.error}"}
    progress(f"{side.name}: mixed load, {clients} clients for {duration:.0f}s")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=clients, mp_context=ctx) as pool:
        # Warm the worker processes up (spawn + imports) before the clock starts.
        list(pool.map(time.sleep, [0.2] * clients))
        start_at = time.time() + 1.0
        futures = [
            pool.submit(mixed_worker, side.port, start_at, duration, 1000 + w)
            for w in range(clients)
        ]
        results = [f.result() for f in futures]
    elapsed = max(r["elapsed"] for r in results)
    commands = sum(r["commands"] for r in results)
    sessions = sum(r["sessions"] for r in results)
    errors = sum(r["errors"] for r in results)
    first = next((r["first_error"] for r in results if r["first_error"]), None)
    res: dict[str, Any] = {
        "ops_per_s": round(commands / elapsed, 1),
        "sessions_per_s": round(sessions / elapsed, 2),
        "commands": commands,
        "sessions": sessions,
        "errors": errors,
        "elapsed_s": round(elapsed, 2),
    }
    if first:
        res["first_error"] = first
    if commands == 0:
        res["error"] = f"no command completed: {first}"
    progress(f"{side.name}: mixed load result {res}")
    return res


def emit_mixed(
    mw: dict[str, Any],
    dv: dict[str, Any],
    clients: int,
    duration: float,
    messages: int,
    dovecot_mode: str,
) -> None:
    line: dict[str, Any] = {
        "bench": "imap",
        "op": "mixed_load",
        "command": "per session: connect+TLS, LOGIN, SELECT, FETCH 5 ENVELOPE, "
        "2x FETCH BODY.PEEK[], "
        "STORE +/-FLAGS, APPEND, UID STORE \\Deleted, UID EXPUNGE, LOGOUT",
        "messages": messages,
        "clients": clients,
        "duration_s": duration,
        "mailward_ops_per_s": mw.get("ops_per_s"),
        "dovecot_ops_per_s": dv.get("ops_per_s"),
        "ratio": ratio(mw.get("ops_per_s"), dv.get("ops_per_s")),
        "mailward_sessions_per_s": mw.get("sessions_per_s"),
        "dovecot_sessions_per_s": dv.get("sessions_per_s"),
        "dovecot_config": dovecot_mode,
        "mailward": {k: v for k, v in mw.items() if k != "error"},
        "dovecot": {k: v for k, v in dv.items() if k != "error"},
    }
    errors = {k: v["error"] for k, v in (("mailward", mw), ("dovecot", dv)) if "error" in v}
    if errors:
        line["error"] = errors
    emit(line)


# --------------------------------------------------------------------------- main


def ensure_corpus(directory: Path, messages: int, seed: int) -> Path:
    manifest = imap_corpus.maildir_manifest(directory)
    want = {"version": imap_corpus.CORPUS_VERSION, "messages": messages, "seed": seed}
    if manifest and all(manifest.get(k) == v for k, v in want.items()):
        progress(f"reusing corpus in {directory} ({manifest['bytes'] / 1e6:.0f} MB)")
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    progress(f"generating {messages} messages (seed {seed}) into {directory}")
    t0 = time.perf_counter()
    manifest = imap_corpus.write_maildir(directory, messages, seed)
    progress(f"corpus: {manifest['bytes'] / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s")
    return directory


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=15, help="runs per timed operation")
    ap.add_argument("--duration", type=float, default=30.0, help="mixed-load seconds")
    ap.add_argument("--clients", type=int, default=10, help="mixed-load clients")
    ap.add_argument("--idle-connections", type=int, default=2000)
    ap.add_argument(
        "--idle-concurrency", type=int, default=20, help="connections being opened at once"
    )
    ap.add_argument(
        "--op-budget",
        type=float,
        default=150.0,
        help="seconds per timed op (both servers); slow ops get fewer repeats",
    )
    ap.add_argument("--big-repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="2,000 messages, 5 s mixed load, 200 idle connections, 5 repeats",
    )
    ap.add_argument("--only", choices=["mailward", "dovecot"])
    ap.add_argument(
        "--dovecot-configs",
        choices=["both", "high-security", "high-performance"],
        help="Dovecot process models to measure (default: both; --quick: high-performance)",
    )
    ap.add_argument("--dovecot-password", choices=["argon2id", "plain"], default="argon2id")
    ap.add_argument("--skip", default="", help="comma list of: ops,big,idle,mixed")
    ap.add_argument(
        "--corpus-dir",
        type=Path,
        help="keep/reuse the generated corpus here (default: inside the temp dir)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    args = ap.parse_args(argv)
    if args.quick:
        args.messages, args.duration, args.idle_connections = 2000, 5.0, 200
        args.repeat, args.big_repeat = 5, 1
        args.dovecot_configs = args.dovecot_configs or "high-performance"
    args.dovecot_configs = args.dovecot_configs or "both"
    skip = {s for s in args.skip.split(",") if s}
    if args.messages < 100:
        ap.error("--messages must be at least 100")
    if os.geteuid() != 0 and args.only != "mailward":
        print("imap_bench: the Dovecot half needs root (use --only mailward)", file=sys.stderr)
        return 2
    nofile = raise_nofile(4 * args.idle_connections + 4096)
    progress(f"RLIMIT_NOFILE {nofile}")
    want = [n for n in ("mailward", "dovecot") if args.only in (None, n)]
    modes = (
        ["high-security", "high-performance"]
        if args.dovecot_configs == "both"
        else [args.dovecot_configs]
    )
    t_start = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="mw-imap-bench-"))
    tmp.chmod(0o755)  # Dovecot's mail uid must traverse it
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        else:
            stack.callback(progress, f"kept {tmp}")
        cert, key = make_cert(tmp)
        corpus = ensure_corpus(args.corpus_dir or tmp / "corpus", args.messages, args.seed)
        big = imap_corpus.big_message(seed=args.seed)
        conn_cap = args.idle_connections + 2 * args.clients + 50

        mw: MailwardSide | None = None
        dv: DovecotSide | None = None
        sides: list[Side] = []
        if "mailward" in want:
            (tmp / "mailward").mkdir(mode=0o700)
            try:
                mw = MailwardSide(tmp / "mailward", cert, key, conn_cap)
                mw.init()
                progress("mailward: loading the corpus through the store")
                secs = mw.load(corpus, big)
                progress(
                    f"mailward: loaded {args.messages} messages in {secs:.1f}s "
                    f"({args.messages / secs:.0f} msgs/s)"
                )
                stack.callback(mw.stop)
                mw.start()
                progress(f"mailward: serving IMAPS on {HOST}:{mw.port}")
            except Exception as e:
                traceback.print_exc()
                if mw is None:
                    mw = MailwardSide.__new__(MailwardSide)
                mw.error = short_error(e)
                progress(f"mailward unavailable: {mw.error}")
            sides.append(mw)
        if "dovecot" in want:
            (tmp / "dovecot").mkdir(mode=0o755)
            dv = DovecotSide(tmp / "dovecot", cert, key, args.dovecot_password, conn_cap)
            try:
                dv.prepare(corpus, big)
                dv.configure(modes[0])
                stack.callback(dv.stop)
                dv.start()
                progress(f"dovecot ({modes[0]}): serving IMAPS on {HOST}:{dv.port}")
            except Exception as e:
                dv.error = short_error(e)
                progress(f"dovecot unavailable: {dv.error}")
            sides.append(dv)
        mw_res: dict[str, dict[str, Any]] = {}
        empty: dict[str, Any] = {"error": "not run (--only)"}

        # Phase 1: Dovecot in its first configuration (default: Debian's high-security).
        mode = modes[0]
        if "ops" not in skip:
            run_timed_ops(
                sides,
                [o[0] for o in TIMED_OPS],
                args.repeat,
                args.messages,
                mode,
                warm=True,
                budget=args.op_budget,
            )
        if "big" not in skip:
            big_fetch(sides, big, args.messages, args.big_repeat, mode)
        if "idle" not in skip:
            mw_res["idle"] = (
                idle_memory(mw, args.idle_connections, args.idle_concurrency) if mw else empty
            )
            dv_idle = idle_memory(dv, args.idle_connections, args.idle_concurrency) if dv else empty
            emit_idle(mw_res["idle"], dv_idle, args.idle_connections, args.messages, mode)
        if "mixed" not in skip:
            mw_res["mixed"] = mixed_load(mw, args.clients, args.duration) if mw else empty
            dv_mixed = mixed_load(dv, args.clients, args.duration) if dv else empty
            emit_mixed(mw_res["mixed"], dv_mixed, args.clients, args.duration, args.messages, mode)

        # Phase 2: Dovecot restarted in the other configuration; mailward's figures of
        # phase 1 are repeated on these rows (login_select is re-measured for both).
        for mode in modes[1:]:
            if dv is None or dv.error is not None:
                break
            progress(f"dovecot: restarting in the {mode} configuration")
            dv.stop()
            dv.configure(mode)
            try:
                dv.start()
            except Exception as e:
                dv.error = short_error(e)
            time.sleep(1.0)  # process_min_avail processes
            if "ops" not in skip:
                run_timed_ops(
                    sides,
                    ["login_select"],
                    args.repeat,
                    args.messages,
                    mode,
                    warm=False,
                    budget=args.op_budget,
                )
            if "idle" not in skip:
                dv_idle = idle_memory(dv, args.idle_connections, args.idle_concurrency)
                emit_idle(
                    mw_res.get("idle", empty), dv_idle, args.idle_connections, args.messages, mode
                )
            if "mixed" not in skip:
                dv_mixed = mixed_load(dv, args.clients, args.duration)
                emit_mixed(
                    mw_res.get("mixed", empty),
                    dv_mixed,
                    args.clients,
                    args.duration,
                    args.messages,
                    mode,
                )
        if mw is not None and mw.error is None and not mw.alive():
            progress(f"mailward serve exited during the run!\n{mw.srv.log_tail()}")
        if dv is not None and dv.error is not None:
            progress(f"dovecot log tail:\n{dv.log_tail()}")
    progress(f"done in {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
