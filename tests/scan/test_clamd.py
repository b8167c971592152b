"""The clamd INSTREAM client (scan/clamd.py): reply parsing and chunk framing against
a tiny in-test clamd, then detection through a real clamd (testing/clamd.py) in the
shapes malware arrives in mail: raw, base64 MIME attachment, zip, attached message."""

from __future__ import annotations

import asyncio
import io
import struct
import zipfile
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, suppress
from email.message import EmailMessage
from email.policy import SMTP
from typing import TypeVar

import pytest

from mailward.scan.clamd import (
    MAX_CHUNK,
    MAX_REPLY,
    ClamdClient,
    ClamdError,
    ClamdSizeLimitExceeded,
    ClamdUnavailable,
    ScanResult,
    frame,
    parse_address,
    parse_scan_reply,
)
from mailward.testing.clamd import TestClamd, clamd_available, eicar
from tests.scan.fake_server import loopback_server

T = TypeVar("T")

needs_clamd = pytest.mark.skipif(
    not clamd_available(), reason="clamd is not installed: run scripts/install-test-deps"
)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:3310", ("127.0.0.1", 3310)),
        (" clamav.internal:3310 ", ("clamav.internal", 3310)),
        ("[::1]:3310", ("::1", 3310)),
        ("/run/clamav/clamd.ctl", "/run/clamav/clamd.ctl"),
        ("./clamd.sock", "./clamd.sock"),
    ],
)
def test_parse_address(text: str, expected: object) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "localhost", "host:", ":3310", "host:0", "host:65536", "host:x", "::1:3310",
     "[::1]", "[nope]:3310", "[::1]:"],
)  # fmt: skip
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_client_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        ClamdClient("localhost", timeout=5)
    with pytest.raises(ValueError):
        ClamdClient("127.0.0.1:3310", timeout=0)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"stream: OK", ScanResult(clean=True)),
        (b"stream: OK\n", ScanResult(clean=True)),
        (b"stream: Eicar-Signature FOUND", ScanResult(False, "Eicar-Signature")),
        (
            b"stream: Win.Test.EICAR_HDB-1 FOUND",
            ScanResult(False, "Win.Test.EICAR_HDB-1"),
        ),
        (b"stream: Bad\x1b[31mName FOUND", ScanResult(False, "Bad?[31mName")),
        (b"stream: " + b"A" * 500 + b" FOUND", ScanResult(False, "A" * 200)),
    ],
)
def test_parse_scan_reply(reply: bytes, expected: ScanResult) -> None:
    assert parse_scan_reply(reply) == expected


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"INSTREAM size limit exceeded. ERROR", ClamdSizeLimitExceeded),
        (b"stream: Can't allocate memory ERROR", ClamdError),
        (b"UNKNOWN COMMAND", ClamdError),
        (b"COMMAND READ TIMED OUT", ClamdError),
        (b"stream: FOUND", ClamdError),
        (b"stream: maybe", ClamdError),
        (b"PONG", ClamdError),
        (b"", ClamdError),
    ],
)
def test_parse_scan_reply_errors(reply: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_scan_reply(reply)


def test_error_hierarchy() -> None:
    assert issubclass(ClamdSizeLimitExceeded, ClamdError)
    assert issubclass(ClamdUnavailable, ClamdError)
    assert not issubclass(ClamdSizeLimitExceeded, ClamdUnavailable)


def test_frame_skips_empty_chunks_and_splits_long_ones() -> None:
    big = bytes(range(256)) * (MAX_CHUNK // 256) + b"tail"
    pieces = list(frame([b"", b"abc", b"", big]))
    assert pieces[:2] == [struct.pack("!L", 3), b"abc"]
    assert pieces[2:] == [
        struct.pack("!L", MAX_CHUNK),
        big[:MAX_CHUNK],
        struct.pack("!L", 4),
        b"tail",
    ]
    assert b"\0\0\0\0" not in pieces  # an empty chunk would end the stream early


# --------------------------------------------------------------------------- fake clamd


class FakeClamd:
    """A clamd stand-in on 127.0.0.1: parses commands and INSTREAM framing exactly,
    records what it got, and answers `reply` (None: never answers)."""

    def __init__(self, reply: bytes | None, *, close_after_command: bool = False) -> None:
        self.reply = reply
        self.close_after_command = close_after_command
        self.commands: list[bytes] = []
        self.chunks: list[bytes] = []
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            command = await reader.readuntil(b"\0")
            self.commands.append(command)
            if self.close_after_command:
                return
            if command == b"zINSTREAM\0":
                while True:
                    (length,) = struct.unpack("!L", await reader.readexactly(4))
                    if length == 0:
                        break
                    self.chunks.append(await reader.readexactly(length))
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
async def fake_clamd(
    reply: bytes | None, *, close_after_command: bool = False
) -> AsyncIterator[FakeClamd]:
    fake = FakeClamd(reply, close_after_command=close_after_command)
    async with loopback_server(fake.handle) as port:
        fake.port = port
        yield fake


async def scan_fake(
    reply: bytes | None,
    chunks: object = (b"hello",),
    *,
    timeout: float = 10.0,
    close_after_command: bool = False,
) -> tuple[ScanResult | BaseException, FakeClamd]:
    async with fake_clamd(reply, close_after_command=close_after_command) as fake:
        client = ClamdClient(fake.address, timeout=timeout)
        try:
            result: ScanResult | BaseException = await client.scan(chunks)  # type: ignore[arg-type]
        except ClamdError as exc:
            result = exc
        return result, fake


def test_instream_framing_on_the_wire() -> None:
    result, fake = run(scan_fake(b"stream: OK\0", [b"Subject: x\r\n", b"", b"\r\nbody\r\n"]))
    assert result == ScanResult(clean=True)
    assert fake.commands == [b"zINSTREAM\0"]
    assert fake.chunks == [b"Subject: x\r\n", b"\r\nbody\r\n"]


def test_async_iterable_chunks() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b"one", b"", b"two"):
            yield piece

    result, fake = run(scan_fake(b"stream: Some.Thing FOUND\0", chunks()))
    assert result == ScanResult(clean=False, signature="Some.Thing")
    assert fake.chunks == [b"one", b"two"]


def test_empty_message_is_just_the_terminator() -> None:
    result, fake = run(scan_fake(b"stream: OK\0", []))
    assert result == ScanResult(clean=True)
    assert fake.commands == [b"zINSTREAM\0"] and fake.chunks == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"INSTREAM size limit exceeded. ERROR\0", ClamdSizeLimitExceeded),
        (b"stream: lstat() failed: No such file or directory. ERROR\0", ClamdError),
        (b"something else\0", ClamdError),
        (b"x" * (MAX_REPLY + 10), ClamdError),  # no NUL, longer than the bound
        (b"", ClamdUnavailable),  # closed without a word
    ],
)
def test_error_replies(reply: bytes, error: type[ClamdError]) -> None:
    result, _ = run(scan_fake(reply))
    assert type(result) is error


def test_connection_closed_mid_stream_is_unavailable() -> None:
    # (more than the socket buffers hold, so a send fails; no reply was written)
    result, fake = run(scan_fake(b"", [b"z" * 65536] * 200, close_after_command=True))
    assert isinstance(result, ClamdUnavailable)
    assert fake.commands == [b"zINSTREAM\0"]


def test_reply_without_nul_before_close_is_still_read() -> None:
    result, _ = run(scan_fake(b"stream: OK"))
    assert result == ScanResult(clean=True)


def test_hanging_clamd_times_out() -> None:
    result, fake = run(scan_fake(None, timeout=0.5))
    assert isinstance(result, ClamdUnavailable)
    assert fake.chunks == [b"hello"]


def test_ping_against_fakes() -> None:
    async def main() -> list[bool]:
        answers = []
        for reply in (b"PONG\0", b"PANG\0", None):
            async with fake_clamd(reply) as fake:
                answers.append(await ClamdClient(fake.address, timeout=0.5).ping())
        return answers

    assert run(main()) == [True, False, False]


def test_connection_refused_is_unavailable() -> None:
    async def main() -> tuple[bool, BaseException | None]:
        async with fake_clamd(b"") as fake:
            address = fake.address
        # (the fake's port is closed now: nothing listens there)
        client = ClamdClient(address, timeout=5)
        try:
            await client.scan([b"x"])
        except ClamdError as exc:
            return await client.ping(), exc
        return await client.ping(), None

    pinged, error = run(main())
    assert pinged is False
    assert isinstance(error, ClamdUnavailable)


def test_missing_unix_socket_is_unavailable(tmp_path: object) -> None:
    client = ClamdClient(f"{tmp_path}/no-such.sock", timeout=5)
    with pytest.raises(ClamdUnavailable):
        run(client.scan([b"x"]))


# --------------------------------------------------------------------------- real clamd


@pytest.fixture(scope="module")
def clamd() -> Iterator[TestClamd]:
    if not clamd_available():
        pytest.skip("clamd is not installed: run scripts/install-test-deps")
    with TestClamd() as server:
        yield server


def mail(body: str = "Hello,\r\nsee you at noon.\r\n") -> EmailMessage:
    message = EmailMessage(policy=SMTP)
    message["From"] = "alice@example.test"
    message["To"] = "bob@example.test"
    message["Subject"] = "Minutes"
    message.set_content(body)
    return message


def with_attachment(data: bytes, filename: str, subtype: str = "octet-stream") -> bytes:
    message = mail()
    message.add_attachment(data, maintype="application", subtype=subtype, filename=filename)
    return message.as_bytes()


def zipped(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def forwarded(inner: bytes) -> bytes:
    """`inner` (a whole message) attached as message/rfc822 to a new message."""
    from email import message_from_bytes

    outer = mail("Forwarding the message below.\r\n")
    outer.add_attachment(message_from_bytes(inner, policy=SMTP))
    data = outer.as_bytes()
    assert b"message/rfc822" in data
    return data


def chunked(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def scan_real(clamd: TestClamd, data: bytes) -> ScanResult:
    return run(ClamdClient(clamd.address, timeout=30).scan(chunked(data)))


INFECTED = {
    "raw": lambda: eicar(),
    "raw, mid-text": lambda: b"x" * 5000 + eicar() + b"y" * 5000,
    "base64 attachment": lambda: with_attachment(eicar(), "tool.com"),
    "zip attachment": lambda: with_attachment(zipped("tool.com", eicar()), "tools.zip", "zip"),
    "attached message": lambda: forwarded(with_attachment(eicar(), "tool.com")),
    "zip in attached message": lambda: forwarded(
        with_attachment(zipped("a/tool.com", eicar()), "tools.zip", "zip")
    ),
}


@needs_clamd
@pytest.mark.parametrize("shape", sorted(INFECTED))
def test_real_clamd_finds_eicar(clamd: TestClamd, shape: str) -> None:
    data = INFECTED[shape]()
    if shape not in ("raw", "raw, mid-text"):
        assert eicar() not in data  # (encoded or compressed: clamd has to unpack it)
    assert scan_real(clamd, data) == ScanResult(clean=False, signature=clamd.signature)


CLEAN = {
    "text": lambda: mail().as_bytes(),
    "attachment": lambda: with_attachment(b"%PDF-1.4 not really\n" * 100, "a.pdf", "pdf"),
    "zip": lambda: with_attachment(zipped("notes.txt", b"nothing to see\n"), "n.zip", "zip"),
    "EICAR cut short": lambda: with_attachment(eicar()[:39], "half.com"),
    "empty": lambda: b"",
}


@needs_clamd
@pytest.mark.parametrize("shape", sorted(CLEAN))
def test_real_clamd_passes_clean_mail(clamd: TestClamd, shape: str) -> None:
    assert scan_real(clamd, CLEAN[shape]()) == ScanResult(clean=True)


@needs_clamd
def test_real_clamd_ping_and_version(clamd: TestClamd) -> None:
    client = ClamdClient(clamd.address, timeout=10)
    assert run(client.ping()) is True
    assert run(client.version()).startswith("ClamAV ")


@needs_clamd
def test_real_clamd_over_a_unix_socket() -> None:
    with TestClamd(unix_socket=True) as server:
        assert server.address.endswith("/clamd.sock")
        client = ClamdClient(server.address, timeout=10)
        assert run(client.ping()) is True
        assert run(client.scan([b"abc", eicar()])) == ScanResult(False, server.signature)
        assert run(client.scan([b"abc"])) == ScanResult(clean=True)


@needs_clamd
def test_real_clamd_size_limit() -> None:
    # 3 MB against StreamMaxLength 1M: clamd answers and closes while we still send.
    with TestClamd(stream_max_length="1M") as server:
        client = ClamdClient(server.address, timeout=30)
        with pytest.raises(ClamdSizeLimitExceeded):
            run(client.scan(chunked(b"a" * 3_000_000, 64 * 1024)))
        assert run(client.scan([b"small"])) == ScanResult(clean=True)


@needs_clamd
def test_real_clamd_stopped_is_unavailable() -> None:
    server = TestClamd()
    with server:
        client = ClamdClient(server.address, timeout=10)
        assert run(client.ping()) is True
    assert run(client.ping()) is False
    with pytest.raises(ClamdUnavailable):
        run(client.scan([b"x"]))


@needs_clamd
def test_harness_stops_clamd_even_on_failure() -> None:
    server = TestClamd()
    with pytest.raises(RuntimeError, match="boom"), server:
        process = server._process
        assert process is not None and process.poll() is None
        raise RuntimeError("boom")
    assert process.poll() is not None
    assert server.directory is None  # (temp dir removed)


def test_eicar_is_built_at_run_time() -> None:
    data = eicar()
    assert len(data) == 68 and data.startswith(b"X5O!") and data.endswith(b"H+H*")
