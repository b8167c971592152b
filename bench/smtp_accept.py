"""bench/smtp_accept: durable SMTP accept rate, mailward vs Postfix, in one run.

Not a test. Run as root (Postfix's master must start as root) on a machine with the
Debian `postfix` package installed (only its programs are used; the machine's
/etc/postfix is never touched):

    .venv/bin/python bench/smtp_accept.py [--messages 5000] [--sessions 20]
                                          [--size 10240] [--repeat 3]

Load: Postfix's `smtp-source -s SESSIONS -m MESSAGES -l SIZE` (a new connection per
message, no pipelining), timed from outside, against

* mailward's MX listener (started with `mailward.testing.server.mail_server` in a temp
  dir, one user as recipient; its 250 after DATA means "durable in the store"), and
* a private Postfix instance (`postfix -c <tmpdir>/etc`, own queue and data
  directories, no chroot, one smtpd on a free loopback port) with its default durable
  queue, delivering with virtual(8) into a Maildir, as in research/peers.md section 1.

After every run the stored / delivered count is checked against MESSAGES (the run fails
loudly otherwise). Runs alternate mailward, Postfix, mailward, ...; before each run the
Postfix queue is drained, the page cache is synced. Prints one JSON line; the figures are
medians over --repeat runs, ratio = mailward / Postfix.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from mailward.testing.server import RunningServer, mail_server

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DOMAIN = "example.test"
RECIPIENT_LOCAL = "bench"
RECIPIENT = f"{RECIPIENT_LOCAL}@{DOMAIN}"
SENDER = "a@remote.test"
PASSWORD = "correct-horse-battery-staple-42"
QUEUE_DIRS = ("maildrop", "incoming", "active", "deferred", "hold")
# The virtual(8) Maildir owner. Any unprivileged uid works; nobody avoids creating users.
VMAIL_UID = 65534
VMAIL_GID = 65534


class BenchError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Drive the load; returns wall seconds. Raises if smtp-source reports failure."""
    argv = [
        SMTP_SOURCE,
        "-s", str(sessions),
        "-m", str(messages),
        "-l", str(size),
        "-f", SENDER,
        "-t", RECIPIENT,
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise BenchError(
            f"smtp-source exited {proc.returncode}: {proc.stderr.strip()[-2000:]} (argv {argv})"
        )
    return elapsed


def poll_until(
    pred: Callable[[], bool], deadline_s: float, what: str, interval: float = 0.05
) -> None:
    end = time.monotonic() + deadline_s
    while True:
        if pred():
            return
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline_s:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- mailward


def count_mboxrd(data: bytes) -> int:
    """Messages in an mboxrd export: separator lines are the only lines starting "From "."""
    if not data:
        return 0
    n = 1 if data.startswith(b"From ") else 0
    return n + data.count(b"\nFrom ")


@contextlib.contextmanager
def mailward_instance(root: Path) -> Iterator[tuple[int, RunningServer]]:
    with mail_server(root, users={RECIPIENT: PASSWORD}) as srv:
        yield srv.smtp_port, srv


def mailward_state(srv: RunningServer) -> str:
    """What the mailward side looked like when a run failed (its log is kept)."""
    alive = srv.process is not None and srv.process.poll() is None
    events = srv.log_events()
    counts = Counter(str(e.get("event")) for e in events)
    unusual = [e for e in events if e.get("level") not in ("info", "debug")][:20]
    fd, kept = tempfile.mkstemp(prefix="smtp_accept-mailward-", suffix=".log")
    with os.fdopen(fd, "wb") as f:
        f.write(srv.log_path.read_bytes())
    return (
        f"mailward {'running' if alive else 'exited'}; events {dict(counts)}; "
        f"warnings/errors {unusual}; full log kept in {kept}"
    )


def mailward_stored(srv: RunningServer) -> int:
    return count_mboxrd(srv.cli("export", RECIPIENT).stdout)


# --------------------------------------------------------------------------- Postfix

MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PrivatePostfix:
    """A Postfix instance living entirely in `root` (config, queue, data, Maildir, log).

    Same delivery as research/peers.md section 1 (virtual Maildir, no chroot, default
    durable queue: cleanup fsyncs the queue file before smtpd's 250, virtual fsyncs the
    Maildir file), but with `-c <root>/etc` instead of editing /etc/postfix.
    """

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.etc = root / "etc"
        self.spool = root / "spool"
        self.data = root / "data"
        self.vmail = root / "vmail"
        self.log = root / "postfix.log"
        self.maildir = self.vmail / DOMAIN / RECIPIENT_LOCAL
        self.running = False

    def configure(self) -> None:
        if os.geteuid() != 0:
            raise BenchError("the Postfix half needs root (postfix master starts as root)")
        self.root.mkdir(mode=0o755)
        self.root.chmod(0o755)  # postfix daemons (uid postfix) must traverse it
        for d in (self.etc, self.spool, self.data, self.vmail):
            d.mkdir(mode=0o755)
        shutil.chown(self.data, user="postfix")
        os.chown(self.vmail, VMAIL_UID, VMAIL_GID)
        main_cf = f"""\
compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pfbench.localdomain
mydestination =
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
maillog_file_prefixes = {self.root}
maillog_file = {self.log}
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.vmail}
virtual_mailbox_maps = static:{DOMAIN}/{RECIPIENT_LOCAL}/
virtual_uid_maps = static:{VMAIL_UID}
virtual_gid_maps = static:{VMAIL_GID}
"""
        (self.etc / "main.cf").write_text(main_cf)
        (self.etc / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    def _postfix(self, *args: str) -> None:
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.etc), *args],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise BenchError(
                f"postfix {' '.join(args)} exited {proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> None:
        self._postfix("check")
        self._postfix("start")
        self.running = True

        def listening() -> bool:
            with socket.socket() as s:
                s.settimeout(0.5)
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        try:
            poll_until(listening, 30, f"Postfix listening on 127.0.0.1:{self.port}")
        except BenchError as e:
            raise BenchError(f"{e}; log tail:\n{self.log_tail()}") from e

    def master_pid(self) -> int | None:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if not self.running:
            return
        pid = self.master_pid()
        try:
            self._postfix("stop")
        except BenchError:
            if pid is not None:  # the master we started, by its pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 15)
        if pid is not None:

            def gone() -> bool:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                return False

            poll_until(gone, 30, "Postfix master to exit")
        self.running = False

    def queued(self) -> int:
        n = 0
        for q in QUEUE_DIRS:
            for _dirpath, _dirs, files in os.walk(self.spool / q):
                n += len(files)
        return n

    def delivered(self) -> int:
        n = 0
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                n += sum(1 for _ in os.scandir(self.maildir / sub))
        return n

    def clear_maildir(self) -> None:
        for sub in ("new", "cur", "tmp"):
            d = self.maildir / sub
            if d.is_dir():
                for entry in os.scandir(d):
                    os.unlink(entry.path)

    def wait_drained(self, expected: int, deadline_s: float = 600) -> None:
        try:
            poll_until(
                lambda: self.queued() == 0 and self.delivered() >= expected,
                deadline_s,
                f"Postfix to deliver {expected} messages",
            )
        except BenchError as e:
            raise BenchError(
                f"{e} (queued {self.queued()}, delivered {self.delivered()}); log tail:\n"
                f"{self.log_tail()}"
            ) from e


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=10240, help="body bytes (smtp-source -l)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per server; medians reported")
    ap.add_argument(
        "--only", choices=("mailward", "postfix"), help="measure one side only (ratio null)"
    )
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.messages < 1 or args.sessions < 1 or args.size < 1:
        ap.error("--messages, --sessions, --size and --repeat must be positive")
    for tool in (SMTP_SOURCE, POSTFIX):
        if not os.path.exists(tool):
            print(f"smtp_accept: {tool} missing (Debian package postfix)", file=sys.stderr)
            return 2

    mw_runs: list[float] = []
    pf_runs: list[float] = []
    want_mw = args.only in (None, "mailward")
    want_pf = args.only in (None, "postfix")
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        root.chmod(0o755)  # Postfix's unprivileged daemons must traverse it
        (root / "mailward").mkdir(mode=0o700)
        pf = PrivatePostfix(root / "postfix", free_port())
        try:
            if want_pf:
                pf.configure()
                stack.callback(pf.stop)
                pf.start()
            if want_mw:
                mw_port, srv = stack.enter_context(mailward_instance(root / "mailward"))
                stored_before = mailward_stored(srv)
            for _ in range(args.repeat):
                if want_mw:
                    try:
                        secs = run_smtp_source(mw_port, args.messages, args.sessions, args.size)
                    except BenchError as e:
                        state = mailward_state(srv)
                        raise BenchError(f"run {len(mw_runs) + 1}: {e}\n{state}") from e
                    stored = mailward_stored(srv)
                    if stored - stored_before != args.messages:
                        raise BenchError(
                            f"mailward stored {stored - stored_before} of {args.messages}"
                        )
                    stored_before = stored
                    mw_runs.append(args.messages / secs)
                if want_pf:
                    pf.clear_maildir()
                    secs = run_smtp_source(pf.port, args.messages, args.sessions, args.size)
                    pf.wait_drained(args.messages)
                    if pf.delivered() != args.messages:
                        raise BenchError(f"Postfix delivered {pf.delivered()} of {args.messages}")
                    pf_runs.append(args.messages / secs)
        except BenchError as e:
            print(f"smtp_accept: {e}", file=sys.stderr)
            return 1

    mw = statistics.median(mw_runs) if mw_runs else None
    pfr = statistics.median(pf_runs) if pf_runs else None
    print(
        json.dumps(
            {
                "bench": "smtp_accept",
                "size": args.size,
                "sessions": args.sessions,
                "messages": args.messages,
                "mailward_msgs_per_s": None if mw is None else round(mw, 1),
                "postfix_msgs_per_s": None if pfr is None else round(pfr, 1),
                "ratio": None if mw is None or pfr is None else round(mw / pfr, 3),
                "repeat": args.repeat,
                "mailward_runs": [round(x, 1) for x in mw_runs],
                "postfix_runs": [round(x, 1) for x in pf_runs],
                "reference": "postfix 3.7 private instance, virtual Maildir, durable queue",
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
