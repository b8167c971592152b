"""A private clamd (Debian's clamav-daemon) with one test signature, for tests.

    with TestClamd() as clamd:
        client = ClamdClient(clamd.address, timeout=10)
        result = await client.scan([b"..." + eicar() + b"..."])
        assert result.signature == clamd.signature      # "Mailward.Test.EICAR.UNOFFICIAL"

The instance is private: a temp dir holding its clamd.conf, its log, its temporary
files and a database directory with one body signature (`.ndb`, see
https://docs.clamav.net/manual/Signatures/BodySignatures.html) matching the first 40
octets of the EICAR anti-malware test file anywhere in a scanned object. clamd
refuses to start with an empty database directory, and this one signature makes it
start in a fraction of a second (the official databases take tens of seconds and
over 1 GB, and need the Internet to fetch). `ScanMail` and `ScanArchive` are on, so
the signature is found in base64/quoted-printable MIME parts, attached messages and
zip files, as it would be with the official `Eicar-Signature`.

clamd listens on 127.0.0.1 on a free port (`address` is "127.0.0.1:PORT"), or with
`unix_socket=True` on a socket in the temp dir (`address` is its path). It runs in
the foreground as a child process, as the current user (no `User`), and is stopped
(SIGTERM, then SIGKILL) and waited for when the context exits, whatever happened,
and as a last resort at interpreter exit or when the starting thread dies.

The EICAR string is put together from pieces at run time (`eicar()`), so that no
file of this repository is itself flagged by a virus scanner.
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
from pathlib import Path
from types import TracebackType
from typing import Self

from mailward.testing.daemon import terminate

__all__ = ["CLAMD", "SIGNATURE", "ClamdHarnessError", "TestClamd", "clamd_available", "eicar"]

CLAMD = "/usr/sbin/clamd"
HOST = "127.0.0.1"
SIGNATURE = "Mailward.Test.EICAR"  # clamd reports it with ".UNOFFICIAL" appended
START_TIMEOUT = 60.0  # seconds for clamd to answer PING after it is started


def eicar() -> bytes:
    """The 68-octet EICAR anti-malware test file (https://www.eicar.org), made at run
    time from pieces so that this source file does not contain it."""
    head = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
    middle = "EICAR-STANDARD-ANTIVIRUS-"
    tail = "TEST-FILE!$H+H*"
    return (head + middle + tail).encode("ascii")


def clamd_available() -> bool:
    """Whether clamd is installed (Debian package `clamav-daemon`, see
    scripts/install-test-deps)."""
    return os.access(CLAMD, os.X_OK)


class ClamdHarnessError(RuntimeError):
    """clamd would not start (bad config, no free port): the message has its log."""


class TestClamd:
    """A clamd whose only signature is `SIGNATURE` (the EICAR test file)."""

    __test__ = False  # (not a pytest test class)

    def __init__(
        self,
        *,
        unix_socket: bool = False,
        stream_max_length: str = "100M",
        directory: str | os.PathLike[str] | None = None,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        """`unix_socket`: listen on a UNIX socket in the temp dir instead of TCP.
        `stream_max_length`: clamd's StreamMaxLength (the longest INSTREAM accepted).
        `directory`: where clamd.conf, the database and clamd.log go (default: a temp dir
        removed on stop). `extra_config`: more clamd.conf lines."""
        self.unix_socket = unix_socket
        self.stream_max_length = stream_max_length
        self.extra_config = extra_config
        self._own_directory = directory is None
        self.directory = Path(directory) if directory is not None else None
        self.port = 0
        self.start_seconds = 0.0  # how long the last start took, until PONG
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], Path | None], TestClamd] | None
        ) = None

    # -- what tests use -------------------------------------------------------------

    @property
    def signature(self) -> str:
        """The name clamd reports for the EICAR test file."""
        return f"{SIGNATURE}.UNOFFICIAL"

    @property
    def address(self) -> str:
        """For `ClamdClient`: "127.0.0.1:PORT" or the UNIX socket's path."""
        if self.unix_socket:
            return str(self.socket_path)
        assert self.port, "not started"
        return f"{HOST}:{self.port}"

    @property
    def socket_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "clamd.sock"

    @property
    def config_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "clamd.conf"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "clamd.log"

    def log_text(self) -> str:
        """clamd's log so far (every detection is logged there)."""
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Self:
        """Write the database and config, start clamd, wait until it answers PING."""
        if self._process is not None:
            return self
        if not clamd_available():
            raise ClamdHarnessError("clamd is not installed: run scripts/install-test-deps")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="mailward-clamd-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.unix_socket else 5
        try:
            self._write_database()
            for attempt in range(attempts):
                if not self.unix_socket:
                    self.port = _free_port()
                self._write_config()
                try:
                    self._launch()
                    return self
                except ClamdHarnessError:
                    self._kill()
                    # A port taken between _free_port() and clamd's bind: another one.
                    if "bind" not in self._logs().lower() or attempt == attempts - 1:
                        raise
        except BaseException:
            self._kill()
            self._cleanup_directory()
            self.port = 0
            raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop clamd (SIGTERM, then SIGKILL) and wait for it; remove the temp dir."""
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

    def _write_database(self) -> None:
        assert self.directory is not None
        database = self.directory / "db"
        database.mkdir(exist_ok=True)
        # name:target:offset:hex-signature (target 0: any file type, offset *: anywhere)
        line = f"{SIGNATURE}:0:*:{eicar()[:40].hex()}\n"
        (database / "mailward-test.ndb").write_text(line)

    def _write_config(self) -> None:
        assert self.directory is not None
        directory = self.directory
        temporary = directory / "tmp"
        temporary.mkdir(exist_ok=True)
        lines = [
            f"DatabaseDirectory {directory / 'db'}",
            f"TemporaryDirectory {temporary}",
            f"LogFile {directory / 'clamd.log'}",
            "LogTime yes",
            "LogFileMaxSize 0",
            f"PidFile {directory / 'clamd.pid'}",
            "Foreground yes",
            "MaxThreads 4",
            f"StreamMaxLength {self.stream_max_length}",
            "ScanMail yes",
            "ScanArchive yes",
            "Bytecode no",
            "ConcurrentDatabaseReload no",
        ]
        if self.unix_socket:
            lines += [f"LocalSocket {self.socket_path}", "LocalSocketMode 600"]
        else:
            lines += [f"TCPSocket {self.port}", f"TCPAddr {HOST}"]
        lines += list(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        assert self.directory is not None
        command = [*_die_with_parent(), CLAMD, f"--config-file={self.config_path}"]
        started = time.monotonic()
        with open(self.directory / "clamd.stderr", "ab") as stderr:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our config
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # If the test forgets stop() (or the interpreter exits), clamd still goes.
        self._finalizer = weakref.finalize(
            self, terminate, self._process, self.directory if self._own_directory else None
        )
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ClamdHarnessError(
                    f"clamd exited with {self._process.returncode}:\n{self._logs()}"
                )
            if self._answers():
                self.start_seconds = time.monotonic() - started
                return
            time.sleep(0.02)
        raise ClamdHarnessError(f"clamd did not answer within {START_TIMEOUT} s:\n{self._logs()}")

    def _answers(self) -> bool:
        """Whether clamd answers PING with PONG (readiness probe)."""
        try:
            if self.unix_socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                target: str | tuple[str, int] = str(self.socket_path)
            else:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                target = (HOST, self.port)
            with sock:
                sock.settimeout(1.0)
                sock.connect(target)
                sock.sendall(b"zPING\0")
                reply = b""
                while b"\0" not in reply and len(reply) < 64:
                    more = sock.recv(64)
                    if not more:
                        break
                    reply += more
        except OSError:
            return False
        return reply.startswith(b"PONG")

    def _logs(self) -> str:
        assert self.directory is not None
        try:
            stderr = (self.directory / "clamd.stderr").read_text(errors="replace")
        except OSError:
            stderr = ""
        return f"{stderr}{self.log_text()}"

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
    """A TCP port free on 127.0.0.1 right now (clamd binds it a moment later; a lost
    race shows as a bind error and `start` tries again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((HOST, 0))
        port: int = tcp.getsockname()[1]
        return port


def _die_with_parent() -> list[str]:
    """A command prefix asking the kernel to SIGTERM clamd when the thread that started
    it dies (util-linux `setpriv --pdeathsig`): a test run killed outright leaves no
    clamd behind. Only from the main thread, which lives as long as the process."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]
