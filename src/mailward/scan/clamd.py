"""An asyncio client for ClamAV's clamd (man 8 clamd, "COMMANDS"): PING and INSTREAM.

The protocol, as clamd 1.x implements it:

- A command is `z<NAME>\\0` (the `z` prefix: the command and its reply are
  NUL-terminated); one command per connection here (no IDSESSION).
- `zPING\\0` is answered `PONG\\0`.
- `zINSTREAM\\0` is followed by chunks, each a 4-octet unsigned big-endian length and
  that many octets, then a zero length (`\\0\\0\\0\\0`) to end the stream. A zero-length
  chunk *is* the terminator, so empty chunks from the caller are never sent.
- The reply to INSTREAM is one of `stream: OK`, `stream: <Signature> FOUND`, or a text
  ending in ` ERROR`; `INSTREAM size limit exceeded. ERROR` when the stream is longer
  than clamd's `StreamMaxLength` (clamd then closes the connection, possibly before
  it has read everything we send: the reply is still read after a failed write).

Every operation is bounded: one `timeout` covers connecting, sending and waiting for
the reply, and a reply longer than `MAX_REPLY` octets is an error. Failures are typed:
`ClamdUnavailable` (cannot connect, connection lost, timed out: try again later),
`ClamdSizeLimitExceeded` (clamd refused the stream's length), `ClamdError` (any
other error reply or a reply we do not understand; the base class of the other two).

The address is `"host:port"` (`"[v6]:port"` for IPv6) for clamd's `TCPSocket`, or the
path of its `LocalSocket` (anything containing a `/`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_CHUNK",
    "MAX_REPLY",
    "ClamdClient",
    "ClamdError",
    "ClamdSizeLimitExceeded",
    "ClamdUnavailable",
    "ScanResult",
    "frame",
    "parse_address",
    "parse_scan_reply",
]

MAX_REPLY = 4096  # octets: the longest reply accepted (a signature name is < 200)
MAX_CHUNK = 1024 * 1024  # octets: longer pieces are sent as several chunks
MAX_SIGNATURE = 200  # characters of a signature name kept (it goes to the log)
_TERMINATOR = b"\0\0\0\0"
_SIZE_LIMIT = "INSTREAM size limit exceeded"


class ClamdError(Exception):
    """clamd gave no verdict: an error reply or one we do not understand (and the base
    of `ClamdUnavailable` and `ClamdSizeLimitExceeded`). The text is for the log."""


class ClamdSizeLimitExceeded(ClamdError):
    """The stream is longer than clamd's StreamMaxLength."""


class ClamdUnavailable(ClamdError):
    """clamd could not be reached, dropped the connection, or did not answer in time."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    clean: bool
    signature: str | None = None  # the name clamd reported when not clean


def parse_address(address: str) -> tuple[str, int] | str:
    """`"host:port"` / `"[v6]:port"` -> (host, port); a path (has a `/`) -> itself.
    ValueError for anything else (empty, no port, port out of range)."""
    text = address.strip()
    if not text:
        raise ValueError("empty clamd address")
    if "/" in text:
        return text
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{address!r}: expected [IPv6]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"{address!r}: expected host:port, [IPv6]:port or a socket path")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{address!r}: bad port")
    return host, int(port_text)


def frame(chunks: Iterable[bytes]) -> Iterable[bytes]:
    """INSTREAM framing of `chunks` (length prefix and data, as separate pieces), empty
    chunks skipped and long ones split at `MAX_CHUNK`; the terminator is not included."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), MAX_CHUNK):
            piece = view[start : start + MAX_CHUNK]
            yield struct.pack("!L", len(piece))
            yield piece.tobytes() if len(piece) != len(view) else chunk


def parse_scan_reply(reply: bytes) -> ScanResult:
    """An INSTREAM reply (NUL already removed) -> `ScanResult`, or the `ClamdError`."""
    text = reply.decode("utf-8", "replace").strip()
    if text.endswith(" ERROR") or text == "ERROR":
        if text.startswith(_SIZE_LIMIT):
            raise ClamdSizeLimitExceeded(text)
        raise ClamdError(f"clamd: {_printable(text)}")
    name, sep, result = text.partition(": ")
    if sep and name == "stream":
        if result == "OK":
            return ScanResult(clean=True)
        if result.endswith(" FOUND"):
            signature = _printable(result[: -len(" FOUND")].strip())[:MAX_SIGNATURE]
            return ScanResult(clean=False, signature=signature or "unknown")
    raise ClamdError(f"unexpected clamd reply {_printable(text)[:MAX_SIGNATURE]!r}")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


class ClamdClient:
    """One clamd, reached on a new connection for each command (clamd serves one
    command per connection unless IDSESSION; no connection is reused in an unknown
    state after an error or a timeout).

    Plain non-blocking sockets (`loop.sock_*`), not streams: when clamd answers "size
    limit exceeded" and closes while we are still sending, our send fails with a
    reset, but its reply is still in our receive queue; a stream transport would
    close the socket on that send error and lose the reply."""

    def __init__(self, address: str, *, timeout: float) -> None:
        if not timeout > 0:
            raise ValueError("clamd timeout must be greater than 0")
        self.address = address
        self.timeout = timeout
        self._target = parse_address(address)

    def __repr__(self) -> str:
        return f"ClamdClient({self.address!r}, timeout={self.timeout})"

    async def ping(self) -> bool:
        """Whether clamd answers PING with PONG (in time)."""
        try:
            return await self._command(b"zPING\0") == b"PONG"
        except ClamdError:
            return False

    async def version(self) -> str:
        """clamd's version line ("ClamAV 1.4.6/..."): for the log and the self-audit."""
        return (await self._command(b"zVERSION\0")).decode("utf-8", "replace")

    async def scan(self, chunks: AsyncIterable[bytes] | Iterable[bytes]) -> ScanResult:
        """Send the concatenation of `chunks` with INSTREAM; the verdict, or a
        `ClamdError` (`ClamdUnavailable`, `ClamdSizeLimitExceeded`)."""
        try:
            async with asyncio.timeout(self.timeout):
                with await self._connect() as sock:
                    reply = await _instream(sock, chunks)
        except TimeoutError:
            raise ClamdUnavailable(f"clamd did not answer within {self.timeout} s") from None
        return parse_scan_reply(reply)

    async def _command(self, command: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                with await self._connect() as sock:
                    try:
                        await loop.sock_sendall(sock, command)
                    except OSError as exc:
                        raise ClamdUnavailable(f"clamd connection lost: {exc}") from exc
                    return await _read_reply(sock)
        except TimeoutError:
            raise ClamdUnavailable(f"clamd did not answer within {self.timeout} s") from None

    async def _connect(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(self._target, str):
                targets: list[tuple[int, Any]] = [(socket.AF_UNIX, self._target)]
            else:
                host, port = self._target
                found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                targets = [(family, address) for family, _, _, _, address in found]
            error: OSError = OSError(f"no address for {self.address}")
            for family, address in targets:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, address)
                    return sock
                except OSError as exc:
                    sock.close()
                    error = exc
                except BaseException:
                    sock.close()
                    raise
            raise error
        except OSError as exc:
            raise ClamdUnavailable(f"cannot connect to clamd at {self.address}: {exc}") from exc


async def _instream(sock: socket.socket, chunks: AsyncIterable[bytes] | Iterable[bytes]) -> bytes:
    """Send INSTREAM and the framed chunks, then read the reply."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"zINSTREAM\0")
        if isinstance(chunks, AsyncIterable):
            async for chunk in chunks:
                for piece in frame((chunk,)):
                    await loop.sock_sendall(sock, piece)
        else:
            for piece in frame(chunks):
                await loop.sock_sendall(sock, piece)
        await loop.sock_sendall(sock, _TERMINATOR)
    except OSError as exc:
        # clamd closes early after "size limit exceeded": its reply may be waiting.
        try:
            return await _read_reply(sock)
        except ClamdUnavailable:
            raise ClamdUnavailable(f"clamd connection lost: {exc}") from exc
    return await _read_reply(sock)


async def _read_reply(sock: socket.socket) -> bytes:
    """One NUL-terminated reply of at most MAX_REPLY octets (end of stream also ends a
    non-empty reply); ClamdUnavailable when the connection closes with nothing."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\0" not in data:
        try:
            more = await loop.sock_recv(sock, MAX_REPLY + 1 - len(data))
        except OSError as exc:
            if data:
                break
            raise ClamdUnavailable(f"clamd connection lost: {exc}") from exc
        if not more:
            if data:
                break
            raise ClamdUnavailable("clamd closed the connection without a reply")
        data += more
        if len(data) > MAX_REPLY:
            raise ClamdError(f"clamd reply longer than {MAX_REPLY} octets")
    return data.partition(b"\0")[0].rstrip(b"\r\n")
