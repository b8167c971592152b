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
and as a last resort at interpreter exit or when the starting thread dies (the
lifecycle is `testing.daemon.PrivateDaemon`'s).

The EICAR string is put together from pieces at run time (`eicar()`), so that no
file of this repository is itself flagged by a virus scanner.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mailward.testing.daemon import HOST, DaemonHarnessError, PrivateDaemon, free_port

__all__ = ["CLAMD", "SIGNATURE", "ClamdHarnessError", "TestClamd", "clamd_available", "eicar"]

CLAMD = "/usr/sbin/clamd"
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


class ClamdHarnessError(DaemonHarnessError):
    """clamd would not start (bad config, no free port): the message has its log."""


class TestClamd(PrivateDaemon):
    """A clamd whose only signature is `SIGNATURE` (the EICAR test file); `start()`
    returns once it answers PING with PONG."""

    __test__ = False  # (not a pytest test class)

    program = "clamd"
    error = ClamdHarnessError
    start_timeout = START_TIMEOUT
    poll_interval = 0.02

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
        super().__init__(directory=directory)
        self.unix_socket = unix_socket
        self.stream_max_length = stream_max_length
        self.extra_config = extra_config

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
        """clamd.log: every detection is logged there (`log_text()`)."""
        assert self.directory is not None, "not started"
        return self.directory / "clamd.log"

    # -- hooks of PrivateDaemon -----------------------------------------------------

    def _installed(self) -> bool:
        return clamd_available()

    def _prepare(self) -> None:
        """The database: one body signature for the EICAR test file."""
        assert self.directory is not None
        database = self.directory / "db"
        database.mkdir(exist_ok=True)
        # name:target:offset:hex-signature (target 0: any file type, offset *: anywhere)
        line = f"{SIGNATURE}:0:*:{eicar()[:40].hex()}\n"
        (database / "mailward-test.ndb").write_text(line)

    def _port_for(self, attempt: int) -> int:
        return 0 if self.unix_socket else free_port()

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

    def _command(self) -> list[str]:
        return [CLAMD, f"--config-file={self.config_path}"]

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
