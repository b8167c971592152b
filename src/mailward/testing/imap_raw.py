"""A small byte-level IMAP client for transcript tests (RFC 9051 framing only).

It sends exactly the bytes a test gives it and returns the server's responses as
bytes, with literals inlined, so tests can assert the exact tagged status and
response codes. It understands only what it needs to: tagged/untagged lines,
continuation requests and `{n}` / `~{n}` literals in responses.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import ssl
from dataclasses import dataclass, field

_LITERAL_AT_END = re.compile(rb"~?\{(\d+)\}\r\n$")


@dataclass
class Reply:
    """One command's outcome: its untagged responses and the tagged completion."""

    untagged: list[bytes] = field(default_factory=list)
    tagged: bytes = b""

    @property
    def status(self) -> str:
        return self.tagged.split(b" ", 2)[1].decode()

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    def code(self) -> str:
        """The response code of the tagged line, e.g. "APPENDUID 12 3", or ""."""
        m = re.search(rb"\[([^\]]*)\]", self.tagged)
        return m.group(1).decode() if m else ""

    def lines(self, kind: str) -> list[bytes]:
        """Untagged responses of one kind ("FETCH", "EXISTS", "LIST", ...)."""
        needle = kind.encode()
        out = []
        for u in self.untagged:
            words = u.split(b" ", 3)
            if words[1:2] == [needle] or (
                words[1:2] and words[1].isdigit() and words[2:3] == [needle]
            ):
                out.append(u)
        return out


class ImapRaw:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        timeout: float = 20.0,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        self.sock: socket.socket = (
            tls.wrap_socket(sock, server_hostname="localhost") if tls else sock
        )
        self.buffer = b""
        self.tags = (f"T{n}" for n in itertools.count(1))
        self.greeting = self.read_response()

    # --- reading ---------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_response(self) -> bytes:
        """One whole response, literals included, without its final CRLF."""
        out = b""
        while True:
            line = self._line()
            m = _LITERAL_AT_END.search(line)
            if not m:
                return out + line[:-2]
            out += line + self._exactly(int(m.group(1)))

    def closed(self) -> bool:
        """True once the server has closed the connection (after reading what is left)."""
        try:
            self.sock.settimeout(5)
            return not self.sock.recv(65536)
        except (ConnectionError, ssl.SSLError, OSError):
            return True

    # --- commands --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: str | bytes, *literals: bytes) -> Reply:
        """Send `TAG text` and read up to the tagged completion. When `text` ends with a
        synchronising literal `{n}`, the first `literals` item is sent after the
        server's continuation and ends the command (so do further items, each after
        its own continuation, for commands whose literal ends in another `{n}`)."""
        tag = next(self.tags)
        body = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + body + b"\r\n")
        reply = Reply()
        pending = list(literals)
        while True:
            response = self.read_response()
            if response.startswith(b"+"):
                if not pending:
                    raise AssertionError(f"unexpected continuation: {response!r}")
                self.send(pending.pop(0) + b"\r\n")
                continue
            if response.startswith(tag.encode() + b" "):
                reply.tagged = response
                return reply
            reply.untagged.append(response)

    def login(self, user: str, password: str) -> Reply:
        return self.command(f'LOGIN "{user}" "{password}"')

    def starttls(self, context: ssl.SSLContext) -> Reply:
        reply = self.command("STARTTLS")
        if reply.ok:
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> ImapRaw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
