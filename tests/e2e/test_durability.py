"""Durability: nothing acknowledged is lost (DESIGN.md 3; issue 2 "What must be shown").

* Several clients send concurrently; the server is SIGKILLed once about 100 messages got
  their 250 after DATA; after a restart on the same data directory every acknowledged
  message is in the store exactly once and byte-identical to what was sent (after the
  Return-Path / Received trace block), no stored message is torn, and the restarted
  server accepts mail again.
* SIGTERM while a session is inside DATA: the server exits with status 0 and the
  client gets 250 (then the message is stored) or 421 (then it is not) -- never a 250
  for a message that is not in the store.

A client records a message as acknowledged only after smtplib returned from sendmail,
i.e. after the server's 250 to the end of DATA.
"""

from __future__ import annotations

import random
import re
import signal
import smtplib
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import mbox_messages

USER = "dura@example.test"
USERS = {USER: "correct-horse-battery-staple-42"}
SENDER = "client@remote.test"
THREADS = 8
PER_THREAD = 40
KILL_AFTER_ACKS = 100
SIZES = (600, 4_000, 30_000, 250_000)
CLIENT_TIMEOUT = 30.0
DEADLINE = 120.0

_MARKER = re.compile(rb"X-Durability-Marker: (\S+)\r\n")


def strip_trace(stored: bytes) -> bytes:
    """Drop the Return-Path, Authentication-Results and X-Spam fields (MX port) and
    Received (with folded lines) mailward prepends."""
    pos, names = 0, list[bytes]()
    while True:
        end = stored.index(b"\r\n", pos) + 2
        line = stored[pos:end]
        if line[:1] not in (b" ", b"\t"):
            if names[-1:] == [b"received"]:
                ours = [n for n in names if not n.startswith(b"x-spam-")]
                assert ours in (
                    [b"return-path", b"received"],
                    [b"return-path", b"authentication-results", b"received"],
                ), names
                return stored[pos:]
            names.append(line.partition(b":")[0].lower())
        pos = end


def stored_by_marker(srv: RunningServer) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for stored in mbox_messages(srv.cli("export", USER).stdout):
        m = _MARKER.search(stored)
        assert m, f"a stored message carries no marker: {stored[:300]!r}"
        found.setdefault(m.group(1).decode(), []).append(strip_trace(stored))
    return found


def make_message(marker: str, size: int) -> bytes:
    rng = random.Random(marker)
    head = (
        f"From: <{SENDER}>\r\nTo: <{USER}>\r\nSubject: durability {marker}\r\n"
        f"Message-ID: <{marker}@durability.test>\r\nX-Durability-Marker: {marker}\r\n\r\n"
    ).encode()
    lines = []
    total = 0
    while total < size:
        line = f"{marker} {rng.getrandbits(200):x} .{total}".encode()
        if rng.random() < 0.05:
            line = b"." + line  # exercise dot-stuffing
        lines.append(line)
        total += len(line) + 2
    return head + b"\r\n".join(lines) + b"\r\n"


def dot_stuffed(message: bytes) -> bytes:
    """DATA wire form without the final ".\r\n" (RFC 5321 4.5.2)."""
    return re.sub(rb"(?m)^\.", b"..", message)


@dataclass
class Ledger:
    acked: dict[str, bytes] = field(default_factory=dict)
    attempted: dict[str, bytes] = field(default_factory=dict)
    errors_before_kill: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)
    killing: threading.Event = field(default_factory=threading.Event)


def client(srv: RunningServer, index: int, ledger: Ledger) -> None:
    """Send PER_THREAD messages; odd clients reuse one session, even ones reconnect."""
    smtp: smtplib.SMTP | None = None
    reuse = index % 2 == 1
    try:
        for i in range(PER_THREAD):
            if ledger.killing.is_set():
                return
            marker = f"t{index}m{i}-{uuid.uuid4().hex[:12]}"
            msg = make_message(marker, SIZES[(index + i) % len(SIZES)])
            with ledger.lock:
                ledger.attempted[marker] = msg
            try:
                if smtp is None:
                    smtp = smtplib.SMTP(srv.host, srv.smtp_port, "c.remote.test", CLIENT_TIMEOUT)
                refused = smtp.sendmail(SENDER, [USER], msg)
            except (smtplib.SMTPException, OSError) as exc:
                if not ledger.killing.is_set():
                    with ledger.lock:
                        ledger.errors_before_kill.append(f"client {index} msg {i}: {exc!r}")
                return
            assert refused == {}
            with ledger.lock:
                ledger.acked[marker] = msg
                if len(ledger.acked) >= KILL_AFTER_ACKS:
                    ledger.enough.set()
            if not reuse:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError) as exc:
                    if not ledger.killing.is_set():
                        with ledger.lock:
                            ledger.errors_before_kill.append(f"client {index} QUIT: {exc!r}")
                    return
                finally:
                    smtp.close()
                    smtp = None
    finally:
        if smtp is not None:
            smtp.close()


def test_sigkill_mid_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    with mail_server(tmp_path, users=USERS) as srv:
        ledger = Ledger()
        threads = [
            threading.Thread(target=client, args=(srv, n, ledger), daemon=True)
            for n in range(THREADS)
        ]
        for t in threads:
            t.start()
        reached = ledger.enough.wait(timeout=DEADLINE)
        ledger.killing.set()
        srv.kill()  # SIGKILL: no shutdown code runs
        for t in threads:
            t.join(timeout=DEADLINE)
        assert not any(t.is_alive() for t in threads), "a client hung after the kill"
        assert not ledger.errors_before_kill, ledger.errors_before_kill
        assert reached, f"only {len(ledger.acked)} messages acknowledged in {DEADLINE}s"
        assert len(ledger.acked) < THREADS * PER_THREAD, "the kill came after the load ended"

        srv.start()
        stored = stored_by_marker(srv)
        missing = sorted(set(ledger.acked) - set(stored))
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
        for marker, sent in ledger.acked.items():
            assert len(stored[marker]) == 1, f"{marker} stored {len(stored[marker])} times"
            assert stored[marker][0] == sent, f"{marker} stored bytes differ from sent"
        # Messages in flight at the kill may or may not be stored, but never torn.
        for marker, copies in stored.items():
            assert marker in ledger.attempted, f"stored message {marker} was never sent"
            assert copies == [ledger.attempted[marker]], f"{marker} stored torn or twice"

        # The restarted server serves.
        marker = f"after-restart-{uuid.uuid4().hex}"
        msg = make_message(marker, 2_000)
        with smtplib.SMTP(srv.host, srv.smtp_port, "c.remote.test", CLIENT_TIMEOUT) as smtp:
            assert smtp.sendmail(SENDER, [USER], msg) == {}
        assert stored_by_marker(srv)[marker] == [msg]
        assert srv.stop() == 0


# --------------------------------------------------------------------------- SIGTERM


class Session:
    """A raw SMTP client session, to stop in the middle of DATA."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.rfile = self.sock.makefile("rb")

    def reply(self) -> tuple[int, bytes]:
        lines: list[bytes] = []
        for _ in range(100):
            line = self.rfile.readline(2048)
            if not line:
                raise EOFError(f"connection closed after {lines!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return int(line[:3]), b"".join(lines)
        raise AssertionError(f"reply too long: {lines!r}")

    def command(self, line: bytes, expect: int) -> None:
        self.sock.sendall(line + b"\r\n")
        code, text = self.reply()
        assert code == expect, f"{line!r} -> {text!r}"

    def start_data(self, rcpt: str) -> None:
        code, text = self.reply()
        assert code == 220, text
        self.command(b"EHLO c.remote.test", 250)
        self.command(f"MAIL FROM:<{SENDER}>".encode(), 250)
        self.command(f"RCPT TO:<{rcpt}>".encode(), 250)
        self.command(b"DATA", 354)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def test_sigterm_while_data_stalls_tempfails_and_exits_cleanly(tmp_path: Path) -> None:
    with mail_server(tmp_path, users=USERS) as srv:
        assert srv.process is not None
        marker = f"stalled-{uuid.uuid4().hex}"
        msg = make_message(marker, 20_000)
        session = Session(srv.host, srv.smtp_port)
        try:
            session.start_data(USER)
            wire = dot_stuffed(msg)
            session.sock.sendall(wire[: len(wire) // 2])  # no end of data: the session stalls
            srv.process.send_signal(signal.SIGTERM)
            code, text = session.reply()
            assert code == 421, f"in-flight session at shutdown got {text!r}, want 421"
        finally:
            session.close()
        assert srv.process.wait(timeout=60) == 0
        assert marker not in stored_by_marker(srv)


def test_sigterm_as_data_ends_is_250_and_stored_or_421_and_not(tmp_path: Path) -> None:
    with mail_server(tmp_path, users=USERS) as srv:
        assert srv.process is not None
        marker = f"racing-{uuid.uuid4().hex}"
        msg = make_message(marker, 20_000)
        session = Session(srv.host, srv.smtp_port)
        reply: tuple[int, bytes] | None
        try:
            session.start_data(USER)
            session.sock.sendall(dot_stuffed(msg))  # all but the final ".\r\n"
            srv.process.send_signal(signal.SIGTERM)
            try:
                session.sock.sendall(b".\r\n")
                reply = session.reply()
            except (EOFError, ConnectionError):
                reply = None  # closed (a 421 may have been lost to a TCP reset)
        finally:
            session.close()
        assert srv.process.wait(timeout=60) == 0
        stored = stored_by_marker(srv).get(marker, [])
        if reply is not None and reply[0] == 250:
            assert stored == [msg], "250 to DATA but the message is not in the store intact"
        else:
            assert reply is None or reply[0] == 421, f"unexpected reply {reply!r}"
            assert stored == [], "message stored although the client got no 250"
