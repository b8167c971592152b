"""What the private test daemons (clamd, unbound, rspamd) share: their lifecycle.

`PrivateDaemon` is the base of `testing.clamd.TestClamd`, `testing.unbound.TestUnbound`
and `testing.rspamd.TestRspamd`. It starts the daemon as a child process in its own
directory (a temp dir unless one is given) on a free 127.0.0.1 port, waits until it
answers a readiness probe before a deadline (else raises with the daemon's stderr and
log), tries another port when the one chosen was taken before the daemon bound it,
and stops it for sure: SIGTERM, then SIGKILL, waited for, temp dir removed, from
`stop()`, the context's exit, a failed start, a `weakref.finalize` when the harness
is collected or the interpreter exits, and (`die_with_parent()`) the kernel when the
starting thread dies. So a failed test never leaves a daemon or its temp dir behind.

Each harness says what differs: its program name, error class and timeouts (class
attributes), and the hooks `_installed`, `_check_start`, `_prepare`, `_port_for`,
`_write_config`, `_command`, `_answers`, `_bind_failed` and the `log_path` property.

Also here, for them: `terminate()`, `free_port()`, `die_with_parent()`, `HOST`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

__all__ = [
    "HOST",
    "START_ATTEMPTS",
    "STOP_TIMEOUT",
    "DaemonHarnessError",
    "PrivateDaemon",
    "die_with_parent",
    "free_port",
    "terminate",
]

HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0  # seconds after SIGTERM before SIGKILL
START_ATTEMPTS = 5  # starts on a fresh port after the last one's bind failed


class DaemonHarnessError(RuntimeError):
    """A private daemon would not start (bad config, no free port): the message has
    its log. Each harness raises its own subclass."""


class PrivateDaemon(ABC):
    """A daemon run privately for a test: `start()`/`stop()` or a `with` block.

    Attributes: `directory` (its files; None when stopped with a temp dir), `port`
    (0 when stopped), `start_seconds` (how long the last start took, until the
    readiness probe answered)."""

    program: ClassVar[str]  # "clamd": temp dir prefix, "<program>.stderr", messages
    error: ClassVar[type[DaemonHarnessError]]  # what a failed start raises
    start_timeout: ClassVar[float]  # seconds for the probe to answer after the launch
    poll_interval: ClassVar[float] = 0.05  # seconds between probes
    awaited: ClassVar[str] = "answer"  # "<program> did not <awaited> within ..."
    log_tail_lines: ClassVar[int | None] = None  # None: the whole log in a failure
    kill_group: ClassVar[bool] = False  # also SIGKILL its process group (workers)

    def __init__(self, *, directory: str | os.PathLike[str] | None = None) -> None:
        """`directory`: where the daemon's files go (default: a temp dir made on start
        and removed on stop)."""
        self._own_directory = directory is None
        self.directory: Path | None = Path(directory) if directory is not None else None
        self.port = 0
        self.start_seconds = 0.0
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., PrivateDaemon] | None = None

    # -- hooks ----------------------------------------------------------------------

    @property
    @abstractmethod
    def log_path(self) -> Path:
        """The daemon's log file (in `directory`)."""

    @abstractmethod
    def _installed(self) -> bool:
        """Whether the daemon's program is installed."""

    def _check_start(self) -> None:  # noqa: B027 - optional hook, nothing by default
        """Raise `error` if the daemon cannot start yet (after the installed check)."""

    def _prepare(self) -> None:  # noqa: B027 - optional hook, nothing by default
        """Once per start, in `directory`, before the first config: files the config
        does not depend on (databases, subdirectories)."""

    def _port_for(self, attempt: int) -> int:
        """The port for start attempt `attempt` (0, 1, ...); 0: none (no retry)."""
        return free_port()

    @abstractmethod
    def _write_config(self) -> None:
        """Write (and check) the config for `port`, at each start attempt."""

    @abstractmethod
    def _command(self) -> list[str]:
        """The daemon's command line, in the foreground, with the config written."""

    @abstractmethod
    def _answers(self) -> bool:
        """The readiness probe: whether the daemon answers on `port` (or its socket)."""

    def _bind_failed(self, logs: str) -> bool:
        """Whether a failed start's `log_tail()` shows that the port was taken."""
        return "bind" in logs.lower()

    # -- what tests use -------------------------------------------------------------

    def log_text(self) -> str:
        """The daemon's log so far ("" before it is started)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    def log_tail(self) -> str:
        """What a failed start reports: the daemon's stderr, then its log (only the
        last `log_tail_lines` lines, if set)."""
        stderr = ""
        if self.directory is not None:
            with suppress(OSError):
                stderr = (self.directory / f"{self.program}.stderr").read_text(errors="replace")
        if self.log_tail_lines is None:
            return stderr + self.log_text()
        return stderr + "\n".join(self.log_text().splitlines()[-self.log_tail_lines :])

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Prepare the directory, write the config, start the daemon, wait until it
        answers its readiness probe; on a bind failure, again on another port (up to
        `START_ATTEMPTS` times). A failed start stops it and removes the temp dir."""
        if self._process is not None:
            return self
        if not self._installed():
            raise self.error(f"{self.program} is not installed: run scripts/install-test-deps")
        self._check_start()
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix=f"mailward-{self.program}-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare()
            for attempt in range(START_ATTEMPTS):
                self.port = self._port_for(attempt)
                self._write_config()
                try:
                    self._launch()
                    return self
                except DaemonHarnessError:
                    self._kill()
                    # A port taken between free_port() and the daemon's bind: another one.
                    last = attempt == START_ATTEMPTS - 1
                    if not self.port or not self._bind_failed(self.log_tail()) or last:
                        raise
        except BaseException:
            self._kill()
            self._cleanup_directory()
            self.port = 0
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and wait for it; remove the temp dir."""
        self._kill()
        self._cleanup_directory()
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

    # -- internals ------------------------------------------------------------------

    def _launch(self) -> None:
        """Start the process and wait until `_answers()`, at most `start_timeout`."""
        assert self.directory is not None
        command = [*die_with_parent(), *self._command()]
        started = time.monotonic()
        with open(self.directory / f"{self.program}.stderr", "ab") as stderr:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our config
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # If the test forgets stop() (or the interpreter exits), the daemon still goes.
        self._finalizer = weakref.finalize(
            self,
            terminate,
            self._process,
            self.directory if self._own_directory else None,
            kill_group=self.kill_group,
        )
        deadline = started + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise self.error(
                    f"{self.program} exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            if self._answers():
                self.start_seconds = time.monotonic() - started
                return
            time.sleep(self.poll_interval)
        raise self.error(
            f"{self.program} did not {self.awaited} within {self.start_timeout} s:\n"
            f"{self.log_tail()}"
        )

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if self._process is not None:
            terminate(self._process, kill_group=self.kill_group)
            self._process = None

    def _cleanup_directory(self) -> None:
        if self._own_directory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def terminate(
    process: subprocess.Popen[bytes], directory: Path | None = None, *, kill_group: bool = False
) -> None:
    """Stop `process` (SIGTERM, then SIGKILL) and reap it; with `kill_group`, then
    SIGKILL whatever is left of its process group (it was started in its own session:
    e.g. workers orphaned by a SIGKILLed main process); remove `directory` if given."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    if kill_group:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def free_port(*, udp: bool = False) -> int:
    """A TCP port (with `udp`: free for both UDP and TCP) on 127.0.0.1 right now (the
    daemon binds it a moment later; a lost race shows as a bind error and `start`
    tries again)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP on 127.0.0.1")


def die_with_parent() -> list[str]:
    """A command prefix asking the kernel to SIGTERM the daemon when the thread that
    started it dies (util-linux `setpriv --pdeathsig`, PR_SET_PDEATHSIG): a test run
    killed outright leaves no daemon behind (rspamd's main process then stops its
    workers). Only from the main thread, which lives as long as the process (the
    signal follows the starting *thread*)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]
