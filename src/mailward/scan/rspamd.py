"""An asyncio client for rspamd's scanner (the "normal" worker): `POST /checkv2`.

What it is for: rspamd is the optional outside spam scorer of the spam check (our
own scoring and Bayes are the default). One call sends one message with its SMTP
envelope and gets rspamd's verdict: the action it recommends, the score, the score
at which it would reject, and the symbols (rules) that fired with their scores.

The protocol (https://rspamd.com/doc/developers/protocol.html), as rspamd 3.x
speaks it on the normal worker (port 11333 by default):

- Plain HTTP/1.0 or 1.1. The request is `POST /checkv2` with the raw RFC 5322
  message as the body (`Content-Length` here; rspamd also takes chunked bodies).
- The envelope goes in request headers, each sent only when known: `IP` (the SMTP
  client's address), `Helo`, `From` (MAIL FROM), `Rcpt` (RCPT TO, one header per
  recipient), `Hostname` (the client's verified rDNS name), `User` (the SASL
  authenticated user, which makes rspamd treat the mail as outbound), `Queue-Id`
  (for rspamd's log).
- The reply is `200` with a JSON object: `action` (one of "no action", "greylist",
  "add header", "rewrite subject", "soft reject", "reject"), `score`,
  `required_score` (the reject threshold), `symbols` ({name: {"name", "score",
  "options", ...}}) and more (`messages`, `milter`, ...) that we ignore. An error
  is a non-200 status with `{"error": "..."}`.
- `GET /ping` is answered `pong`.

Why our own client: one request shape needs little code over
`asyncio.open_connection`, where a general HTTP library would be a new dependency
(with its own pools, retries and redirects to reason about), and we want
the limits in our hands: one `timeout` covers connecting, sending and reading, the
reply is bounded (`MAX_RESPONSE` octets, whether sized by `Content-Length`, chunked
or read to the end), each line of the head is bounded, and the header values
we send are refused when they hold CR, LF or NUL, so nothing that comes from an SMTP
client can inject a header. One connection per request, `Connection: close`, and
the connection is closed whatever happens (no connection is reused in an unknown
state).

Failures are typed: `RspamdUnavailable` (cannot connect, connection closed before
the whole reply, timed out: try again later) and `RspamdError` (its base: an HTTP
error status, a reply that is not HTTP, an oversized reply, JSON we cannot read).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ACTIONS",
    "DEFAULT_PORT",
    "MAX_RESPONSE",
    "RspamdClient",
    "RspamdError",
    "RspamdResult",
    "RspamdUnavailable",
    "parse_result",
    "parse_url",
]

DEFAULT_PORT = 11333  # rspamd's normal worker
MAX_RESPONSE = 1024 * 1024  # octets: the longest reply accepted, head and body
MAX_LINE = 8192  # octets: the longest status, header or chunk-size line
MAX_HEADERS = 100  # header fields in a reply
ACTIONS = frozenset(
    {"no action", "greylist", "add header", "rewrite subject", "soft reject", "reject"}
)
_FORBIDDEN = frozenset("\r\n\0")
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class RspamdError(Exception):
    """rspamd gave no verdict: an HTTP error status, a reply that is not HTTP or not
    the JSON we expect (and the base of `RspamdUnavailable`). The text is for the log."""


class RspamdUnavailable(RspamdError):
    """rspamd could not be reached, closed the connection early, or did not answer in
    time."""


@dataclass(frozen=True, slots=True)
class RspamdResult:
    action: str  # "no action" | "greylist" | "add header" | "rewrite subject" | ...
    score: float
    required_score: float
    symbols: dict[str, float]  # symbol name -> score


def parse_url(url: str) -> tuple[str, int]:
    """`"http://host:port"` (port optional: 11333; a trailing "/" allowed) -> (host,
    port). ValueError for anything else: another scheme, a path, a query, user info."""
    parts = urlsplit(url.strip())
    if parts.scheme != "http":
        raise ValueError(f"{url!r}: rspamd URL must be http://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url:
        raise ValueError(f"{url!r}: rspamd URL must not have a path or query")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: rspamd URL must not have user info")
    host = parts.hostname
    port = parts.port  # (ValueError when not a number in range)
    if not host:
        raise ValueError(f"{url!r}: rspamd URL has no host")
    if port == 0:
        raise ValueError(f"{url!r}: bad port")
    return host, port if port is not None else DEFAULT_PORT


def parse_result(body: bytes) -> RspamdResult:
    """The JSON body of a `/checkv2` reply -> `RspamdResult`, or `RspamdError`.
    An action outside `ACTIONS` (a custom action in rspamd's config) is kept as is."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise RspamdError(f"rspamd reply is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RspamdError("rspamd reply is not a JSON object")
    action = data.get("action")
    if not isinstance(action, str) or not action:
        error = data.get("error")
        if isinstance(error, str):
            raise RspamdError(f"rspamd: {_printable(error)[:200]}")
        raise RspamdError("rspamd reply has no action")
    symbols: dict[str, float] = {}
    raw_symbols = data.get("symbols", {})
    if not isinstance(raw_symbols, dict):
        raise RspamdError("rspamd reply: symbols is not an object")
    for name, symbol in raw_symbols.items():
        if not isinstance(symbol, dict):
            raise RspamdError(f"rspamd reply: symbol {_printable(name)[:100]!r} malformed")
        symbols[name] = _number(symbol.get("score", 0.0), "symbol score")
    return RspamdResult(
        action=action,
        score=_number(data.get("score"), "score"),
        required_score=_number(data.get("required_score"), "required_score"),
        symbols=symbols,
    )


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RspamdError(f"rspamd reply: {what} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise RspamdError(f"rspamd reply: {what} is not finite")
    return number


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _header_value(name: str, value: str) -> bytes:
    if any(c in _FORBIDDEN for c in value):
        raise ValueError(f"rspamd {name} header value contains CR, LF or NUL")
    return value.strip().encode("utf-8")


class RspamdClient:
    """One rspamd normal worker, reached on a new connection for each request."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError("rspamd timeout must be a positive number of seconds")
        self.url = url
        self.timeout = timeout
        self._host, self._port = parse_url(url)
        if not self._host.isascii():
            raise ValueError(f"{url!r}: rspamd host must be ASCII (an IP or an A-label name)")
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = f"{host}:{self._port}".encode("ascii")

    def __repr__(self) -> str:
        return f"RspamdClient({self.url!r}, timeout={self.timeout})"

    async def ping(self) -> bool:
        """Whether rspamd answers `GET /ping` with `pong` (in time)."""
        try:
            status, body = await self._exchange(self._head(b"GET", b"/ping", []), [])
        except RspamdError:
            return False
        return status == 200 and body.strip() == b"pong"

    async def check(
        self,
        message: bytes | Sequence[bytes],
        *,
        ip: str = "",
        helo: str = "",
        sender: str = "",
        recipients: Sequence[str] = (),
        hostname: str = "",
        user: str = "",
        queue_id: str = "",
    ) -> RspamdResult:
        """Score `message` (the raw message, whole or in pieces) with its envelope.
        ValueError for a header value with CR/LF/NUL or an `ip` that is not an IP
        address; `RspamdError` / `RspamdUnavailable` when rspamd gives no verdict."""
        if isinstance(message, bytes | bytearray | memoryview):
            chunks: list[bytes] = [bytes(message)]
        else:
            chunks = [bytes(chunk) for chunk in message]
        if isinstance(recipients, str):
            raise TypeError("recipients must be a sequence of addresses, not a str")
        if ip:
            ip = str(ipaddress.ip_address(ip.strip()))
        fields: list[tuple[bytes, bytes]] = []
        for name, value in (
            ("IP", ip),
            ("Helo", helo),
            ("From", sender),
            *(("Rcpt", rcpt) for rcpt in recipients),
            ("Hostname", hostname),
            ("User", user),
            ("Queue-Id", queue_id),
        ):
            encoded = _header_value(name, value)
            if encoded:
                fields.append((name.encode("ascii"), encoded))
        length = sum(len(chunk) for chunk in chunks)
        fields.append((b"Content-Length", str(length).encode("ascii")))
        status, body = await self._exchange(self._head(b"POST", b"/checkv2", fields), chunks)
        if status != 200:
            raise RspamdError(f"rspamd answered HTTP {status}: {_error_text(body)}")
        return parse_result(body)

    def _head(self, method: bytes, target: bytes, fields: list[tuple[bytes, bytes]]) -> bytes:
        lines = [
            method + b" " + target + b" HTTP/1.1",
            b"Host: " + self._authority,
            b"Connection: close",
            *(name + b": " + value for name, value in fields),
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    async def _exchange(self, head: bytes, chunks: list[bytes]) -> tuple[int, bytes]:
        """Send one request, read one reply: (status, body). Everything under one
        timeout; the connection is closed whatever happens."""
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    reader, writer = await asyncio.open_connection(
                        self._host, self._port, limit=MAX_LINE
                    )
                except OSError as exc:
                    raise RspamdUnavailable(
                        f"cannot connect to rspamd at {self.url}: {exc}"
                    ) from exc
                try:
                    writer.write(head)
                    for chunk in chunks:
                        writer.write(chunk)
                        await writer.drain()
                    await writer.drain()
                except OSError as exc:
                    # rspamd may have answered (an error) before it closed: read it.
                    with suppress(RspamdUnavailable):
                        return await _read_response(reader)
                    raise RspamdUnavailable(f"rspamd connection lost: {exc}") from exc
                return await _read_response(reader)
        except TimeoutError:
            raise RspamdUnavailable(f"rspamd did not answer within {self.timeout} s") from None
        finally:
            if writer is not None:
                # abort(): close() would wait to flush what a stuck peer never reads.
                writer.transport.abort()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.x response: (status, body); 1xx interim responses are skipped."""
    budget = _Budget()
    while True:
        status = _parse_status_line(await _read_line(reader, budget, first=True))
        headers = await _read_headers(reader, budget)
        if not 100 <= status < 200:
            break
    encodings = [
        coding.strip().lower()
        for value in headers.get("transfer-encoding", [])
        for coding in value.split(",")
        if coding.strip()
    ]
    if encodings:
        if encodings != ["chunked"]:
            raise RspamdError(f"rspamd reply: unsupported transfer-encoding {encodings!r}")
        return status, await _read_chunked(reader, budget)
    lengths = {value.strip() for value in headers.get("content-length", [])}
    if lengths:
        if len(lengths) != 1 or not (text := lengths.pop()).isdigit():
            raise RspamdError("rspamd reply: bad Content-Length")
        length = int(text)
        budget.take(length)
        return status, await _read_exactly(reader, length)
    return status, await _read_to_end(reader, budget)


class _Budget:
    """Octets of the reply still allowed (MAX_RESPONSE in all)."""

    def __init__(self) -> None:
        self.left = MAX_RESPONSE

    def take(self, count: int) -> None:
        self.left -= count
        if self.left < 0:
            raise RspamdError(f"rspamd reply longer than {MAX_RESPONSE} octets")


async def _read_line(
    reader: asyncio.StreamReader, budget: _Budget, *, first: bool = False
) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise RspamdError(f"rspamd reply has a line longer than {MAX_LINE} octets") from None
    except asyncio.IncompleteReadError as exc:
        if first and not exc.partial:
            raise RspamdUnavailable("rspamd closed the connection without a reply") from None
        if first and not exc.partial.startswith(b"HTTP/1."[: len(exc.partial)]):
            _parse_status_line(exc.partial)  # (raises: not HTTP)
        raise RspamdUnavailable("rspamd closed the connection mid-reply") from None
    except OSError as exc:
        raise RspamdUnavailable(f"rspamd connection lost: {exc}") from exc
    budget.take(len(line))
    return line.rstrip(b"\r\n")


def _parse_status_line(line: bytes) -> int:
    version, _, rest = line.partition(b" ")
    code = rest[:3]
    if (
        version not in (b"HTTP/1.0", b"HTTP/1.1")
        or len(code) != 3
        or not code.isdigit()
        or rest[3:4] not in (b"", b" ")
    ):
        shown = _printable(line[:80].decode("latin-1"))
        raise RspamdError(f"rspamd reply is not HTTP/1.x: {shown!r}")
    return int(code)


async def _read_headers(reader: asyncio.StreamReader, budget: _Budget) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _read_line(reader, budget)
        if not line:
            return headers
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or b" " in name:
            raise RspamdError("rspamd reply has a malformed header line")
        key = name.decode("latin-1").lower()
        headers.setdefault(key, []).append(value.strip().decode("latin-1"))
    raise RspamdError(f"rspamd reply has more than {MAX_HEADERS} header fields")


async def _read_exactly(reader: asyncio.StreamReader, count: int) -> bytes:
    try:
        return await reader.readexactly(count)
    except asyncio.IncompleteReadError:
        raise RspamdUnavailable("rspamd closed the connection mid-reply") from None
    except OSError as exc:
        raise RspamdUnavailable(f"rspamd connection lost: {exc}") from exc


async def _read_chunked(reader: asyncio.StreamReader, budget: _Budget) -> bytes:
    """A chunked body (RFC 9112 7.1): hex sizes (extensions ignored), data, CRLF; a
    zero size, then trailer fields up to an empty line."""
    body = bytearray()
    while True:
        size_text = (await _read_line(reader, budget)).partition(b";")[0].strip()
        if not 0 < len(size_text) <= 16 or size_text.strip(_HEX_DIGITS):
            raise RspamdError("rspamd reply has a bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            break
        budget.take(size + 2)
        data = await _read_exactly(reader, size + 2)
        if data[-2:] != b"\r\n":
            raise RspamdError("rspamd reply: chunk not followed by CRLF")
        body += data[:-2]
    await _read_headers(reader, budget)  # (the trailer section)
    return bytes(body)


async def _read_to_end(reader: asyncio.StreamReader, budget: _Budget) -> bytes:
    body = bytearray()
    while True:
        try:
            more = await reader.read(65536)
        except OSError as exc:
            raise RspamdUnavailable(f"rspamd connection lost: {exc}") from exc
        if not more:
            return bytes(body)
        budget.take(len(more))
        body += more


def _error_text(body: bytes) -> str:
    """The `error` of an rspamd error body (else the start of the body), printable."""
    try:
        data = json.loads(body)
        text = data["error"] if isinstance(data, dict) and "error" in data else body
    except (ValueError, RecursionError):
        text = body
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _printable(str(text))[:200]
