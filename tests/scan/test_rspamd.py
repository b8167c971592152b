"""The rspamd client: its HTTP against local fake servers (request on the wire, reply
framing, every error path), then against a real offline rspamd (Debian package,
`mailward.testing.rspamd.TestRspamd`), started once for the module.

The real-rspamd tests do not skip when rspamd is missing: they fail and say to run
scripts/install-test-deps (rspamd is one of the test dependencies it installs).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import TypeVar

import pytest

from mailward.scan.rspamd import (
    ACTIONS,
    DEFAULT_PORT,
    MAX_RESPONSE,
    RspamdClient,
    RspamdError,
    RspamdResult,
    RspamdUnavailable,
    parse_result,
    parse_url,
)
from mailward.testing.dns_server import TestDns
from mailward.testing.rspamd import (
    RspamdHarnessError,
    TestRspamd,
    gtube,
    rspamd_available,
)
from tests.scan.fake_server import loopback_server

T = TypeVar("T")

MISSING = "rspamd is not installed: run scripts/install-test-deps"
GUARD = 30.0  # seconds: no test here may hang longer than this (timings are not asserted)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        async with asyncio.timeout(GUARD):
            return await coro

    return asyncio.run(main())


def json_reply(data: object, *, status: str = "200 OK") -> bytes:
    body = json.dumps(data).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


VERDICT = {
    "is_skipped": False,
    "score": 4.5,
    "required_score": 15.0,
    "action": "add header",
    "symbols": {
        "R_SPF_ALLOW": {"name": "R_SPF_ALLOW", "score": -0.2, "options": ["+ip4:192.0.2.1"]},
        "FAKE_RULE": {"name": "FAKE_RULE", "score": 4.7, "metric_score": 4.7},
    },
    "messages": {},
    "milter": {"remove_headers": {"X-Spam": 0}},
}
RESULT = RspamdResult("add header", 4.5, 15.0, {"R_SPF_ALLOW": -0.2, "FAKE_RULE": 4.7})


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:11333", ("127.0.0.1", 11333)),
        ("http://127.0.0.1:11333/", ("127.0.0.1", 11333)),
        (" http://rspamd.internal ", ("rspamd.internal", DEFAULT_PORT)),
        ("http://[::1]:8080", ("::1", 8080)),
        ("HTTP://Localhost:1", ("localhost", 1)),
    ],
)
def test_parse_url(url: str, expected: tuple[str, int]) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["", "127.0.0.1:11333", "https://127.0.0.1:11333", "http://127.0.0.1:11333/checkv2",
     "http://h:11333?x=1", "http://h:11333#f", "http://user:pw@h:11333", "http://:11333",
     "http://h:0", "http://h:65536", "http://h:port", "unix:///run/rspamd.sock"],
)  # fmt: skip
def test_parse_url_rejects(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_client_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        RspamdClient("https://127.0.0.1:11333")
    with pytest.raises(ValueError):
        RspamdClient("http://127.0.0.1:11333", timeout=0)
    with pytest.raises(ValueError):
        RspamdClient("http://127.0.0.1:11333", timeout=float("nan"))
    with pytest.raises(ValueError):
        RspamdClient("http://rspämd.test:11333")


def test_parse_result() -> None:
    assert parse_result(json.dumps(VERDICT).encode()) == RESULT
    empty = {"action": "no action", "score": 0, "required_score": 15}
    assert parse_result(json.dumps(empty).encode()) == RspamdResult("no action", 0.0, 15.0, {})
    # A custom action of rspamd's config is passed on as is.
    custom = dict(VERDICT, action="quarantine")
    assert parse_result(json.dumps(custom).encode()).action == "quarantine"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"pong",
        b"[1, 2]",
        b'{"error": "Message has no data"}',
        b'{"action": "reject", "required_score": 15}',
        b'{"action": "reject", "score": "15", "required_score": 15}',
        b'{"action": "reject", "score": true, "required_score": 15}',
        b'{"action": "reject", "score": NaN, "required_score": 15}',
        b'{"action": "reject", "score": 1e999, "required_score": 15}',
        b'{"action": 3, "score": 1, "required_score": 15}',
        b'{"action": "", "score": 1, "required_score": 15}',
        b'{"action": "reject", "score": 1, "required_score": 15, "symbols": []}',
        b'{"action": "reject", "score": 1, "required_score": 15, "symbols": {"X": 1}}',
        b'{"action": "reject", "score": 1, "required_score": 15, "symbols": {"X": {"score": "a"}}}',
        b"\xff\xfe",
        b"[" * 100_000,
    ],
)
def test_parse_result_rejects(body: bytes) -> None:
    with pytest.raises(RspamdError) as caught:
        parse_result(body)
    assert type(caught.value) is RspamdError


def test_error_hierarchy() -> None:
    assert issubclass(RspamdUnavailable, RspamdError)
    assert "no action" in ACTIONS and "reject" in ACTIONS and len(ACTIONS) == 6


# --------------------------------------------------------------------------- fake rspamd


@dataclass
class Request:
    head: list[bytes]
    body: bytes

    def values(self, name: str) -> list[str]:
        prefix = name.lower().encode() + b":"
        return [
            line[len(prefix) :].strip().decode()
            for line in self.head[1:]
            if line.lower().startswith(prefix)
        ]


@dataclass
class FakeRspamd:
    """An HTTP server on 127.0.0.1 standing in for rspamd: reads a request (head and
    Content-Length body) exactly, records it, and writes `reply` (None: never
    answers; `close_at_once`: closes without reading)."""

    reply: bytes | None
    close_at_once: bool = False
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.close_at_once:
                return
            head = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
            request = Request(head, b"")
            lengths = request.values("Content-Length")
            if lengths:
                request.body = await reader.readexactly(int(lengths[0]))
            self.requests.append(request)
            if self.reply is None:
                await reader.read()  # (until the client gives up)
                return
            writer.write(self.reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()


@asynccontextmanager
async def fake_rspamd(
    reply: bytes | None, *, close_at_once: bool = False
) -> AsyncIterator[FakeRspamd]:
    fake = FakeRspamd(reply, close_at_once=close_at_once)
    async with loopback_server(fake.handle) as port:
        fake.port = port
        yield fake


async def check_fake(
    reply: bytes | None,
    message: bytes | list[bytes] = b"Subject: x\r\n\r\nhello\r\n",
    *,
    timeout: float = 10.0,
    close_at_once: bool = False,
    **envelope: object,
) -> tuple[RspamdResult | BaseException, FakeRspamd]:
    async with fake_rspamd(reply, close_at_once=close_at_once) as fake:
        client = RspamdClient(fake.url, timeout=timeout)
        try:
            result: RspamdResult | BaseException = await client.check(message, **envelope)  # type: ignore[arg-type]
        except RspamdError as exc:
            result = exc
        return result, fake


def test_request_on_the_wire() -> None:
    result, fake = run(
        check_fake(
            json_reply(VERDICT),
            [b"Subject: x\r\n", b"", b"\r\nbody\r\n"],
            ip="192.0.2.1",
            helo="mail.example.test",
            sender="alice@example.test",
            recipients=["bob@example.test", "carol@example.test"],
            hostname="mail.example.test",
            user="alice",
            queue_id="Q1",
        )
    )
    assert result == RESULT
    [request] = fake.requests
    assert request.head[0] == b"POST /checkv2 HTTP/1.1"
    assert request.body == b"Subject: x\r\n\r\nbody\r\n"
    assert request.values("Content-Length") == [str(len(request.body))]
    assert request.values("Connection") == ["close"]
    assert request.values("Host") == [f"127.0.0.1:{fake.port}"]
    assert request.values("IP") == ["192.0.2.1"]
    assert request.values("Helo") == ["mail.example.test"]
    assert request.values("From") == ["alice@example.test"]
    assert request.values("Rcpt") == ["bob@example.test", "carol@example.test"]
    assert request.values("Hostname") == ["mail.example.test"]
    assert request.values("User") == ["alice"]
    assert request.values("Queue-Id") == ["Q1"]


def test_empty_envelope_fields_are_not_sent() -> None:
    result, fake = run(check_fake(json_reply(VERDICT), b"x", ip="", sender="", recipients=[]))
    assert result == RESULT
    [request] = fake.requests
    names = sorted(line.partition(b":")[0].decode() for line in request.head[1:])
    assert names == ["Connection", "Content-Length", "Host"]
    assert request.body == b"x"


def test_ipv6_client_address_is_normalised() -> None:
    _, fake = run(check_fake(json_reply(VERDICT), ip="2001:DB8:0::1"))
    assert fake.requests[0].values("IP") == ["2001:db8::1"]


@pytest.mark.parametrize(
    "envelope",
    [
        {"helo": "mx.example.test\r\nUser: admin"},
        {"sender": "a@example.test\nRcpt: victim@example.test"},
        {"recipients": ["ok@example.test", "b@example.test\rX: y"]},
        {"hostname": "host\0name"},
        {"user": "alice\r\n"},
        {"queue_id": "Q\n"},
        {"ip": "192.0.2.1\r\nUser: admin"},
        {"ip": "not an address"},
    ],
)
def test_header_injection_is_refused_before_sending(envelope: dict[str, object]) -> None:
    async def main() -> FakeRspamd:
        async with fake_rspamd(json_reply(VERDICT)) as fake:
            with pytest.raises(ValueError):
                await RspamdClient(fake.url).check(b"x", **envelope)  # type: ignore[arg-type]
            return fake

    assert run(main()).connections == 0


def test_recipients_must_not_be_a_string() -> None:
    with pytest.raises(TypeError):
        run(RspamdClient("http://127.0.0.1:1").check(b"x", recipients="bob@example.test"))


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out = b""
    for size in sizes:
        piece, body = body[:size], body[size:]
        out += f"{size:x};ext=1\r\n".encode() + piece + b"\r\n"
    assert not body
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def test_chunked_reply() -> None:
    body = json.dumps(VERDICT).encode()
    sizes = [1, 7, 100, len(body) - 108]
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, sizes)
    result, _ = run(check_fake(reply))
    assert result == RESULT


def test_reply_read_to_the_end_without_length() -> None:
    reply = b"HTTP/1.0 200 OK\r\n\r\n" + json.dumps(VERDICT).encode()
    result, _ = run(check_fake(reply))
    assert result == RESULT


def test_interim_100_continue_is_skipped() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + json_reply(VERDICT)
    result, _ = run(check_fake(reply))
    assert result == RESULT


ERRORS = {
    "500 with rspamd's JSON error": (
        json_reply({"error": "internal failure"}, status="500 Internal Server Error"),
        RspamdError,
    ),
    "400 empty": (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", RspamdError),
    "200 not JSON": (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!", RspamdError),
    "200 JSON error": (json_reply({"error": "Message has no data"}), RspamdError),
    "garbage line": (b"SPAMD/1.1 0 EX_OK\r\n\r\n", RspamdError),
    "garbage, no newline": (b"\x00\x01garbage", RspamdError),
    "HTTP/2": (b"HTTP/2 200\r\n\r\n{}", RspamdError),
    "bad status code": (b"HTTP/1.1 2000 OK\r\n\r\n", RspamdError),
    "header without colon": (b"HTTP/1.1 200 OK\r\nBroken\r\n\r\n{}", RspamdError),
    "two lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        RspamdError,
    ),
    "negative length": (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", RspamdError),
    "gzip coding": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", RspamdError),
    "bad chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
        RspamdError,
    ),
    "chunk without CRLF": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
        RspamdError,
    ),
    "too long by length": (
        f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_RESPONSE + 1}\r\n\r\n".encode(),
        RspamdError,
    ),
    "too long when chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (f"{65536:x}\r\n".encode() + b"a" * 65536 + b"\r\n") * 17,
        RspamdError,
    ),
    "too long to the end": (b"HTTP/1.0 200 OK\r\n\r\n" + b"a" * (MAX_RESPONSE + 1), RspamdError),
    "header line too long": (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", RspamdError),
    "too many headers": (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", RspamdError),
    "closed without a word": (b"", RspamdUnavailable),
    "closed in the status line": (b"HTTP/1.1 2", RspamdUnavailable),
    "closed in the head": (b"HTTP/1.1 200 OK\r\nContent-Le", RspamdUnavailable),
    "closed in the body": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", RspamdUnavailable),
    "closed in a chunk": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n{}",
        RspamdUnavailable,
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_replies(case: str) -> None:
    reply, error = ERRORS[case]
    result, _ = run(check_fake(reply))
    assert type(result) is error, result


def test_http_error_text_is_kept_for_the_log() -> None:
    reply = json_reply({"error": "bad\x1b[31m input"}, status="500 Internal Server Error")
    result, _ = run(check_fake(reply))
    assert isinstance(result, RspamdError)
    assert "500" in str(result) and "bad?[31m input" in str(result)


def test_closed_without_reading_is_unavailable() -> None:
    result, fake = run(check_fake(b"", close_at_once=True))
    assert isinstance(result, RspamdUnavailable)
    assert fake.connections == 1


def test_big_message_whose_reply_comes_early_is_read() -> None:
    # The fake answers after reading only the head: a 30 MB body cannot all be sent.
    async def main() -> RspamdResult | BaseException:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(json_reply({"error": "too big"}, status="413 Too Large"))
            await writer.drain()
            writer.transport.abort()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            try:
                return await RspamdClient(f"http://127.0.0.1:{port}").check([b"a" * 1_000_000] * 30)
            except RspamdError as exc:
                return exc

    result = run(main())
    assert isinstance(result, RspamdError)  # (413 read, or the reset seen first)


def test_hanging_rspamd_times_out() -> None:
    started = time.monotonic()
    result, fake = run(check_fake(None, timeout=0.5))
    assert isinstance(result, RspamdUnavailable)
    assert "within 0.5 s" in str(result)
    assert fake.requests[0].body == b"Subject: x\r\n\r\nhello\r\n"
    assert time.monotonic() - started < GUARD


def test_connection_refused_is_unavailable() -> None:
    async def main() -> tuple[bool, BaseException | None]:
        async with fake_rspamd(b"") as fake:
            url = fake.url
        # (the fake's port is closed now: nothing listens there)
        client = RspamdClient(url, timeout=5)
        try:
            await client.check(b"x")
        except RspamdError as exc:
            return await client.ping(), exc
        return await client.ping(), None

    pinged, error = run(main())
    assert pinged is False
    assert isinstance(error, RspamdUnavailable)
    assert "cannot connect" in str(error)


def test_ping_against_fakes() -> None:
    pong = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\npong\r\n"
    replies: list[bytes | None] = [
        pong,
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npang",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\npong",
        b"garbage\r\n\r\n",
        b"",
        None,
    ]

    async def main() -> tuple[list[bool], list[list[bytes]]]:
        answers, heads = [], []
        for reply in replies:
            async with fake_rspamd(reply) as fake:
                answers.append(await RspamdClient(fake.url, timeout=0.5).ping())
            heads.append(fake.requests[0].head if fake.requests else [])
        return answers, heads

    answers, heads = run(main())
    assert answers == [True, False, False, False, False, False]
    assert heads[0][0] == b"GET /ping HTTP/1.1"


# --------------------------------------------------------------------------- real rspamd

SENDER_IP = "192.0.2.10"


@dataclass
class Rspamd:
    server: TestRspamd
    dns: TestDns

    def client(self) -> RspamdClient:
        return RspamdClient(self.server.url, timeout=GUARD)


@pytest.fixture(scope="module")
def rspamd() -> Iterator[Rspamd]:
    """One rspamd for the module (a start takes ~1 s warm, ~15 s the first time), its
    DNS from a TestDns: example.test has SPF, DMARC, MX and FCrDNS for SENDER_IP."""
    if not rspamd_available():
        pytest.fail(MISSING, pytrace=False)
    with TestDns() as dns:
        dns.add("example.test", "TXT", f"v=spf1 ip4:{SENDER_IP} -all")
        dns.add("example.test", "MX", "10 mail.example.test.")
        dns.add("_dmarc.example.test", "TXT", "v=DMARC1; p=reject")
        dns.add("mail.example.test", "A", SENDER_IP)
        dns.add("10.2.0.192.in-addr.arpa", "PTR", "mail.example.test.")
        with TestRspamd(dns=dns.address) as server:
            yield Rspamd(server, dns)


def mail(body: str, subject: str = "Minutes of Tuesday's meeting") -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "Alice Example <alice@example.test>"
    message["To"] = "Bob Example <bob@example.test>"
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="example.test")
    message.set_content(body)
    return message.as_bytes()


HAM = (
    "Hello Bob,\n\nthe minutes of Tuesday's budget meeting are below. We agreed to\n"
    "move the review to next week and to keep the current plan otherwise.\n\n"
    "See you at noon,\nAlice\n"
)
ENVELOPE: dict[str, object] = {
    "ip": SENDER_IP,
    "helo": "mail.example.test",
    "hostname": "mail.example.test",
    "sender": "alice@example.test",
    "recipients": ["bob@example.test"],
}


def wait_for_log(server: TestRspamd, predicate: Callable[[str], bool]) -> str:
    """rspamd's log once `predicate` holds for it (it is written as rspamd goes)."""
    deadline = time.monotonic() + 10
    while True:
        text = server.log_text()
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.02)


def test_real_rspamd_passes_ham(rspamd: Rspamd) -> None:
    result = run(rspamd.client().check(mail(HAM), **ENVELOPE))  # type: ignore[arg-type]
    assert result.action == "no action", result
    assert result.score < 2.0, result
    assert result.required_score == 15.0
    # SPF and DMARC were computed from our envelope against our DNS.
    assert result.symbols["R_SPF_ALLOW"] < 0
    assert result.symbols["DMARC_POLICY_ALLOW"] < 0
    assert "FROM_EQ_ENVFROM" in result.symbols


def test_real_rspamd_rejects_gtube(rspamd: Rspamd) -> None:
    message = mail(f"Buy now!\n\n{gtube().decode()}\n", subject="Offer")
    assert gtube() not in Path(__file__).read_bytes()  # (built at run time)
    result = run(rspamd.client().check(message, **ENVELOPE))  # type: ignore[arg-type]
    assert result.action == "reject"
    assert result.score >= 15.0
    assert "GTUBE" in result.symbols


def test_real_rspamd_symbols_are_filled(rspamd: Rspamd) -> None:
    result = run(rspamd.client().check(mail(HAM), **ENVELOPE))  # type: ignore[arg-type]
    assert len(result.symbols) >= 5
    assert all(isinstance(score, float) for score in result.symbols.values())
    assert result.symbols["MIME_GOOD"] < 0
    assert result.score == pytest.approx(sum(result.symbols.values()), abs=0.01)


def test_real_rspamd_gets_the_whole_envelope(rspamd: Rspamd) -> None:
    queue_id = f"MWTEST{os.getpid()}{time.monotonic_ns()}"
    envelope = dict(ENVELOPE, recipients=["bob@example.test", "carol@example.test"])
    result = run(rspamd.client().check(mail(HAM), queue_id=queue_id, **envelope))  # type: ignore[arg-type]
    assert result.action == "no action"
    line = f"qid: <{queue_id}>"
    log = wait_for_log(rspamd.server, lambda text: line in text)
    [entry] = [entry for entry in log.splitlines() if line in entry]
    assert f"ip: {SENDER_IP}" in entry and "from: <alice@example.test>" in entry
    assert "rcpts: <bob@example.test,carol@example.test>" in entry


def test_real_rspamd_without_envelope(rspamd: Rspamd) -> None:
    # No IP: rspamd scores the content alone (and cannot check SPF).
    result = run(rspamd.client().check(mail(HAM)))
    assert result.action in ACTIONS
    assert "R_SPF_ALLOW" not in result.symbols


def test_real_rspamd_message_in_pieces(rspamd: Rspamd) -> None:
    data = mail(f"Buy now!\n\n{gtube().decode()}\n", subject="Offer")
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    result = run(rspamd.client().check(pieces, **ENVELOPE))  # type: ignore[arg-type]
    assert result.action == "reject"


def test_real_rspamd_big_message(rspamd: Rspamd) -> None:
    body = HAM + "".join(f"Line {i} of the appendix, nothing to see.\n" for i in range(20000))
    data = mail(body)
    assert len(data) > 500_000
    result = run(rspamd.client().check(data, **ENVELOPE))  # type: ignore[arg-type]
    assert result.action in ACTIONS


def test_real_rspamd_empty_message(rspamd: Rspamd) -> None:
    result = run(rspamd.client().check(b""))
    assert result.action == "no action"


def test_real_rspamd_ping(rspamd: Rspamd) -> None:
    assert run(rspamd.client().ping()) is True


def test_real_rspamd_keeps_serving_concurrent_checks(rspamd: Rspamd) -> None:
    async def main() -> list[RspamdResult]:
        client = rspamd.client()
        spam = mail(f"{gtube().decode()}\n", subject="Offer")
        return await asyncio.gather(
            *(client.check(spam if i % 2 else mail(HAM), **ENVELOPE) for i in range(20))  # type: ignore[arg-type]
        )

    results = run(main())
    assert [r.action for r in results] == ["no action", "reject"] * 10


# --------------------------------------------------------------------------- harness


def session_members(session: int) -> list[int]:
    """Processes of `session` (rspamd's main process and its workers)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError):
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
                if int(fields[3]) == session and fields[0] != "Z":
                    members.append(int(entry))
    return members


def test_harness_stops_rspamd_and_its_workers_even_on_failure() -> None:
    if not rspamd_available():
        pytest.fail(MISSING, pytrace=False)
    server = TestRspamd()
    with pytest.raises(RuntimeError, match="boom"), server:
        process = server._process
        assert process is not None and process.poll() is None
        assert server.url.startswith("http://127.0.0.1:") and server.start_seconds > 0
        assert len(session_members(process.pid)) >= 2  # main and the normal worker
        assert run(RspamdClient(server.url).ping()) is True
        raise RuntimeError("boom")
    assert process is not None and process.poll() is not None
    assert session_members(process.pid) == []
    assert server.directory is None  # (temp dir removed)


def test_harness_reports_a_failed_start_with_the_log() -> None:
    if not rspamd_available():
        pytest.fail(MISSING, pytrace=False)
    server = TestRspamd(local_config={"options.inc": "dns { nameserver = [ ; }\n"})
    with pytest.raises(RspamdHarnessError, match="rspamd exited"):
        server.start()
    assert server.directory is None and server.port == 0
