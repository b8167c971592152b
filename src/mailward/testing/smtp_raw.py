"""Exact-bytes SMTP test helpers, shipped for this project's tests and anyone testing
a mailward deployment: a raw-socket client that sends exactly the bytes given and reads
replies as the server wrote them (RFC 5321 4.2), message builders, and a splitter for
the mboxrd that `mailward export` writes.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
import uuid

TIMEOUT = 15.0


class Raw:
    """A minimal SMTP client on a raw socket: send exact bytes, read exact replies."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock: socket.socket = (
            context.wrap_socket(sock, server_hostname="localhost") if context else sock
        )
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self) -> tuple[int, bytes]:
        """One (possibly multi-line) reply: (code, all its raw lines)."""
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if not re.match(rb"^\d{3}[ -]", line):
                raise AssertionError(f"malformed reply line {line!r}")
            if line[3:4] == b" ":
                return int(line[:3]), b"".join(lines)

    def cmd(self, line: str | bytes) -> tuple[int, bytes]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def ehlo(self, name: str = "client.test") -> tuple[int, bytes]:
        code, text = self.cmd(f"EHLO {name}")
        assert code == 250, text
        return code, text

    def starttls(self, context: ssl.SSLContext) -> None:
        code, text = self.cmd("STARTTLS")
        assert code == 220, text
        assert self.buf == b""
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")

    def closed_by_server(self) -> bool:
        """True once the server closes (EOF or reset) within the timeout."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
            if not chunk:
                return True
            self.buf += chunk
        return False


def auth_plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def message(sender: str, to: str, subject: str = "hello", body: bytes = b"") -> bytes:
    """A small RFC 5322 message with CRLF line ends and a unique Message-ID."""
    mid = f"<{uuid.uuid4().hex}@client.test>"
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        "Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
    ).encode()
    return head + (body or f"Hello, this is {subject}.\r\nSecond line.\r\n".encode())


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, for messages sent over a Raw session."""
    out = re.sub(rb"(?m)^\.", b"..", data)
    return out if out.endswith(b"\r\n") else out + b"\r\n"


def mbox_messages(mbox: bytes) -> list[bytes]:
    """Split mboxrd (as `mailward export` writes it) into messages, un-escaping >From.

    In mboxrd every body line matching ^>*From is quoted, so each ^From line is a
    separator; one line ending of the separator's kind follows each message."""
    messages: list[tuple[bytes, list[bytes]]] = []
    for line in mbox.splitlines(keepends=True):
        if line.startswith(b"From "):
            messages.append((b"\r\n" if line.endswith(b"\r\n") else b"\n", []))
        elif messages:
            if re.match(rb"^>+From ", line):
                line = line[1:]
            messages[-1][1].append(line)
        else:
            raise AssertionError(f"mbox does not start with a From_ line: {line!r}")
    result = []
    for ending, lines in messages:
        data = b"".join(lines)
        assert data.endswith(ending), data
        result.append(data[: -len(ending)])
    return result


def split_trace(data: bytes) -> tuple[list[bytes], bytes]:
    """The leading fields mailward prepends (Return-Path:, Authentication-Results:,
    X-Spam-Score/-Status/-Flag:, Received:; unfolded) and the bytes after them."""
    fields: list[bytes] = []
    rest = data
    while True:
        line, sep, after = rest.partition(b"\r\n")
        if not sep:
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        elif re.match(
            rb"(?i)^(return-path|authentication-results|x-spam-(?:score|status|flag)|received):",
            line,
        ):
            fields.append(line)
        else:
            break
        rest = after
    return fields, rest
