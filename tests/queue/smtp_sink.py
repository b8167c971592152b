"""A scripted SMTP receiver for the delivery tests: `Sink`.

It listens on port 25 (the queue worker only ever talks to port 25) of a loopback
address of its own (`free_loopback_address`: 127.0.0.0/8 is all loopback on Linux and
the tests run as root), in a thread with its own event loop, so sync tests (a real
`mailward serve` sending) and async tests (an in-process worker) can both use it.

Everything a test needs to script is a field of `Script`: the EHLO keywords, replies
per recipient, the reply to the message (or none: drop the connection), a drop in
the middle of the message data, AUTH. `Sink.accepted` records each message the sink
answered 250 to (what "delivered exactly once" counts); `Sink.sessions` each
connection's commands.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailward.crypto import tls
from mailward.testing.server import free_loopback_address

__all__ = ["Accepted", "Script", "Sink", "free_loopback_address", "sink_tls"]


@dataclass
class Accepted:
    sender: str
    recipients: list[str]
    data: bytes  # unstuffed, as the client meant it
    mail_params: str
    tls: bool
    authenticated: str = ""


@dataclass
class Session:
    commands: list[str] = field(default_factory=list)
    tls: bool = False


@dataclass
class Script:
    extensions: list[str] = field(
        default_factory=lambda: [
            "PIPELINING",
            "SIZE 10000000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
        ]
    )
    starttls: bool = True  # offered when the sink has TLS and it is not active yet
    auth: dict[str, str] | None = None  # user -> password; offers AUTH PLAIN under TLS
    greeting: str = "220 mx.sink.test ESMTP"
    hold: threading.Event | None = None  # the greeting waits until it is set
    rcpt: Callable[[str], str] = lambda rcpt: "250 2.1.5 OK"
    mail: Callable[[str], str] = lambda params: "250 2.1.0 OK"
    # The reply to the end of the message; None drops the connection without one.
    end: Callable[[Accepted], str | None] = lambda msg: "250 2.0.0 queued"
    drop_in_data_after: int | None = None  # close after this many message octets


def sink_tls(directory: Path, names: list[str]) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for `names`, and the
    certificate's path (a client trusts it with cafile=that path)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "sink-cert.pem", directory / "sink-key.pem"
    tls.generate_self_signed(names, cert, key)
    return tls.server_context(cert, key), cert


class Sink:
    def __init__(
        self,
        address: str | None = None,
        *,
        port: int = 25,
        script: Script | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.address = address or free_loopback_address((port,))
        self.port = port
        self.script = script or Script()
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.accepted: list[Accepted] = []
        self.sessions: list[Session] = []
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> Sink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(
            self._session,
            self.address,
            self.port,
            ssl=self.tls_context if self.implicit_tls else None,
            reuse_address=True,
        )

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._server.wait_closed()

    @property
    def messages(self) -> list[Accepted]:
        with self.lock:
            return list(self.accepted)

    # --- one connection -------------------------------------------------------------

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(tls=self.implicit_tls)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self.lock:
            self.sessions.append(session)
        try:
            await self._converse(reader, writer, session)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: Session
    ) -> None:
        s = self.script

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        if s.hold is not None:
            while not s.hold.is_set():
                await asyncio.sleep(0.01)
        await say(s.greeting)
        if not s.greeting.startswith("220"):
            return
        sender: str | None = None
        params = ""
        rcpts: list[str] = []
        user = ""
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            session.commands.append(line if not line.upper().startswith("AUTH") else "AUTH")
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                sender, rcpts = None, []
                keywords = list(s.extensions)
                if self.tls_context is not None and s.starttls and not session.tls:
                    keywords.append("STARTTLS")
                if s.auth is not None and session.tls:
                    keywords.append("AUTH PLAIN")
                lines = ["mx.sink.test", *keywords] if verb == "EHLO" else ["mx.sink.test"]
                for i, text in enumerate(lines):
                    await say(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
            elif verb == "STARTTLS" and self.tls_context is not None and not session.tls:
                await say("220 2.0.0 go ahead")
                await writer.start_tls(self.tls_context)
                session.tls = True
                sender, rcpts = None, []
            elif verb == "AUTH" and s.auth is not None and session.tls:
                token = line.split(" ")[2] if len(line.split(" ")) > 2 else ""
                _authz, name, password = base64.b64decode(token).decode().split("\x00")
                if s.auth.get(name) == password:
                    user = name
                    await say("235 2.7.0 OK")
                else:
                    await say("535 5.7.8 bad credentials")
            elif verb == "MAIL":
                m = re.match(r"MAIL FROM:<([^>]*)>(.*)", line, re.I)
                if m is None:
                    await say("501 5.5.4 syntax")
                    continue
                if s.auth is not None and not user:
                    await say("530 5.7.0 authentication required")
                    continue
                reply = s.mail(m.group(2))
                if reply.startswith("250"):
                    sender, params, rcpts = m.group(1), m.group(2).strip(), []
                await say(reply)
            elif verb == "RCPT":
                m = re.match(r"RCPT TO:<([^>]*)>", line, re.I)
                if sender is None or m is None:
                    await say("503 5.5.1 need MAIL")
                    continue
                reply = s.rcpt(m.group(1))
                if reply.startswith("250"):
                    rcpts.append(m.group(1))
                await say(reply)
            elif verb == "DATA":
                if sender is None or not rcpts:
                    await say("554 5.5.1 no valid recipients")
                    continue
                await say("354 go ahead")
                data = await self._read_data(reader)
                if data is None:
                    return  # dropped mid-DATA
                msg = Accepted(sender, list(rcpts), data, params, session.tls, user)
                reply = s.end(msg)
                if reply is None:
                    return
                if reply.startswith("250"):
                    with self.lock:
                        self.accepted.append(msg)
                await say(reply)
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                await say("250 2.0.0 OK")
            elif verb == "NOOP":
                await say("250 2.0.0 OK")
            elif verb == "QUIT":
                await say("221 2.0.0 bye")
                return
            else:
                await say("502 5.5.1 not here")

    async def _read_data(self, reader: asyncio.StreamReader) -> bytes | None:
        limit = self.script.drop_in_data_after
        lines: list[bytes] = []
        size = 0
        while True:
            raw = await reader.readline()
            if not raw:
                return None
            size += len(raw)
            if limit is not None and size > limit:
                return None
            if raw == b".\r\n":
                return b"".join(lines)
            lines.append(raw[1:] if raw.startswith(b".") else raw)


@contextlib.contextmanager
def nothing_listening() -> Iterator[str]:
    """A loopback address where port 25 refuses connections (bound, not listening)."""
    address = free_loopback_address((25,))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, 25))  # keeps others off the address; no listen(): refused
        yield address
    finally:
        sock.close()
