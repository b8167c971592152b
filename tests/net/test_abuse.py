"""Connection-level abuse limits and session pacing (net/abuse.py, net/pacing.py): the
rate limiter and the per-network guard with an injected clock, the tarpit and minimum
rate arithmetic, the early-talker read, and the listener refusing over-limit clients
on a real loopback socket."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import ssl
from collections.abc import AsyncIterator

from mailward.config.schema import AbuseConfig, Config, LimitsConfig, ListenConfig
from mailward.logs import EventLog
from mailward.net.abuse import ConnectionGuard, RateLimiter
from mailward.net.listener import ListenerSpec, MailService
from mailward.net.pacing import GreetingPasses, InputRate, Tarpit, early_input
from mailward.pipeline.abuse import ProbeTracker
from mailward.pipeline.types import SessionInfo


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- rate


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    rate = RateLimiter(60, clock)  # one a second
    assert all(rate.take("a") for _ in range(60))
    assert not rate.take("a")
    assert rate.take("b")  # per key
    clock.now += 1.0
    assert rate.take("a") and not rate.take("a")
    clock.now += 120.0  # refills up to the burst size, no further
    assert sum(rate.take("a") for _ in range(100)) == 60


def test_rate_limiter_zero_is_no_limit_and_memory_is_bounded() -> None:
    assert all(RateLimiter(0).take("a") for _ in range(1000))
    clock = Clock()
    rate = RateLimiter(5, clock, max_keys=100)
    for i in range(10_000):
        rate.take(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.01
    assert len(rate) <= 100


def test_guard_counts_per_network_and_exempts_trusted() -> None:
    config = dataclasses.replace(AbuseConfig(), connections_per_net=2, connection_rate=0)
    guard = ConnectionGuard(config, Clock())
    assert guard.admit("192.0.2.1") is None
    assert guard.admit("192.0.2.2") is None
    refusal = guard.admit("192.0.2.3")
    assert refusal is not None and refusal.event == "abuse.connections_per_net"
    assert (refusal.limit, refusal.key) == (2, "192.0.2.0/24")
    assert guard.admit("192.0.3.1") is None  # another /24
    assert guard.admit("192.0.2.4", exempt=True) is None  # trusted: counted, not limited
    guard.release("192.0.2.4")
    guard.release("192.0.2.1")
    assert guard.admit("192.0.2.3") is None
    # IPv6: the /64 is the network.
    assert guard.admit("2001:db8::1") is None and guard.admit("2001:db8::2") is None
    assert guard.admit("2001:db8::ffff") is not None
    assert guard.admit("2001:db8:0:1::1") is None


def test_guard_rate_is_per_client() -> None:
    config = dataclasses.replace(AbuseConfig(), connection_rate=3)
    clock = Clock()
    guard = ConnectionGuard(config, clock)
    for _ in range(3):
        assert guard.admit("192.0.2.1") is None
        guard.release("192.0.2.1")
    refusal = guard.admit("192.0.2.1")
    assert refusal is not None and refusal.event == "abuse.connection_rate"
    assert guard.admit("192.0.2.2") is None  # a neighbour has its own bucket
    clock.now += 20  # one token back (3 a minute)
    assert guard.admit("192.0.2.1") is None
    assert guard.per_net["192.0.2.0/24"] == 2


# --------------------------------------------------------------------------- pacing


def test_tarpit_grows_per_error_and_is_capped() -> None:
    tarpit = Tarpit(0.5, 2.0)
    assert [tarpit.error() for _ in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert tarpit.errors == 6


def test_greeting_passes_expire_and_are_bounded() -> None:
    now = [1000.0]
    passes = GreetingPasses(60.0, limit=2, clock=lambda: now[0])
    assert not passes.fresh("192.0.2.1")
    passes.remember("192.0.2.1")
    assert passes.fresh("192.0.2.1")
    now[0] += 61
    assert not passes.fresh("192.0.2.1")  # expired
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        passes.remember(ip)
    assert not passes.fresh("192.0.2.1")  # the oldest was forgotten
    assert passes.fresh("192.0.2.2") and passes.fresh("192.0.2.3")
    never = GreetingPasses(0.0, clock=lambda: now[0])
    never.remember("192.0.2.1")
    assert not never.fresh("192.0.2.1")


def test_input_rate_deadline() -> None:
    rate = InputRate(min_rate=100, grace=10)
    assert rate.deadline() is None  # nothing measured
    rate.start("data", now=50.0)
    assert rate.deadline() == 60.0  # the grace period, whatever arrives in it
    rate.add(500)
    assert rate.deadline() == 60.0
    rate.add(1500)  # 2000 octets cover 20 s at 100 octets/s
    assert rate.deadline() == 70.0
    assert rate.rate(70.0) == 100.0
    rate.stop()
    rate.add(10**6)
    assert rate.deadline() is None
    assert InputRate(min_rate=0, grace=10).deadline() is None


def reader_with(data: bytes = b"", eof: bool = False) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    if data:
        reader.feed_data(data)
    if eof:
        reader.feed_eof()
    return reader


def test_early_input() -> None:
    async def main() -> None:
        assert await early_input(reader_with(), 0, 1024) is None
        assert await early_input(reader_with(b"EHLO x\r\n"), 0, 1024) == b"EHLO x\r\n"
        assert await early_input(reader_with(eof=True), 0, 1024) == b""
        # With a pause: what arrives during it counts; nothing is lost otherwise.
        reader = reader_with()
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, reader.feed_data, b"QUIT\r\n")
        assert await early_input(reader, 5.0, 1024) == b"QUIT\r\n"
        quiet = reader_with()
        assert await early_input(quiet, 0.05, 1024) is None
        quiet.feed_data(b"later")
        assert await quiet.read(100) == b"later"

    asyncio.run(main())


# --------------------------------------------------------------------------- listener


class HeldSession:
    """A session that greets and then waits until the test lets it go."""

    def __init__(self, writer: asyncio.StreamWriter, gate: asyncio.Event) -> None:
        self.writer = writer
        self.gate = gate

    async def run(self) -> None:
        self.writer.write(b"220 hi\r\n")
        await self.writer.drain()
        await self.gate.wait()
        self.writer.close()

    def interrupt(self, *, force: bool) -> None:
        self.gate.set()


@contextlib.asynccontextmanager
async def listener(
    abuse: AbuseConfig, probes: ProbeTracker | None, out: io.StringIO
) -> AsyncIterator[tuple[int, asyncio.Event]]:
    config = Config(
        listen=ListenConfig(
            address="127.0.0.1",
            submission=False,
            submissions=False,
            imap=False,
            imaps=False,
            pop3=False,
            pop3s=False,
        ),
        limits=LimitsConfig(connections_per_ip=10),
        abuse=abuse,
    )
    gate = asyncio.Event()

    def factory(
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        info: SessionInfo,
        spec: ListenerSpec,
    ) -> HeldSession:
        return HeldSession(writer, gate)

    service = MailService(
        config, ssl.create_default_context(), EventLog(out), {"mx": factory}, probes=probes
    )
    # The service's connection handler on a port the kernel picks.
    server = await asyncio.start_server(
        lambda r, w: service._connection(r, w, ListenerSpec("smtp", "mx", 0, False)),
        host="127.0.0.1",
        port=0,
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, gate
    finally:
        gate.set()
        server.close()
        await server.wait_closed()


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def logged(out: io.StringIO, name: str) -> list[dict[str, object]]:
    return [r for r in map(json.loads, out.getvalue().splitlines()) if r["event"] == name]


def test_listener_refuses_over_the_network_limit_and_logs_it() -> None:
    async def main() -> None:
        out = io.StringIO()
        abuse = dataclasses.replace(AbuseConfig(), connections_per_net=2)
        async with listener(abuse, None, out) as (port, _gate):
            held = [await connect(port, f"127.77.1.{i}") for i in (1, 2)]
            for reader, _ in held:
                assert await asyncio.wait_for(reader.readline(), 10) == b"220 hi\r\n"
            reader, writer = await connect(port, "127.77.1.3")
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line.startswith(b"421 4.7.0 ")
            assert await asyncio.wait_for(reader.read(), 10) == b""  # disconnected
            writer.close()
            # Another /24 is not affected.
            other, other_writer = await connect(port, "127.77.2.1")
            assert await asyncio.wait_for(other.readline(), 10) == b"220 hi\r\n"
            for _, w in [*held, (other, other_writer)]:
                w.close()
        [trip] = logged(out, "abuse.connections_per_net")
        assert (trip["ip"], trip["client"], trip["limit"]) == ("127.77.1.3", "127.77.1.0/24", 2)

    asyncio.run(main())


def test_listener_refuses_blocked_and_too_fast_clients() -> None:
    async def main() -> None:
        out = io.StringIO()
        probes = ProbeTracker(EventLog(out), slowdown=1, block=1, block_seconds=600)
        probes.record("127.78.0.9", "earlier")
        abuse = dataclasses.replace(AbuseConfig(), connection_rate=2)
        async with listener(abuse, probes, out) as (port, gate):
            reader, writer = await connect(port, "127.78.0.9")
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line.startswith(b"421 4.7.0 ")
            writer.close()
            gate.set()  # sessions end at once: only the rate limits
            for _ in range(2):
                reader, writer = await connect(port, "127.78.0.1")
                assert await asyncio.wait_for(reader.readline(), 10) == b"220 hi\r\n"
                writer.close()
            reader, writer = await connect(port, "127.78.0.1")
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"421 4.7.0 ")
            writer.close()
        assert logged(out, "abuse.blocked") and logged(out, "abuse.connection_rate")

    asyncio.run(main())
