"""Under attack the server keeps serving everyone else (DESIGN.md 3; SP 800-45 DoS).

200 hostile connections at once, from their own addresses in 127.70.1.0/24 (the MX
flood: 150, over the per-/24 limit of 100) and 127.70.2.0/24 (the brute force: 50);
Linux routes all of 127/8 to lo, and the legitimate client stays on 127.0.0.1, in a
/24 of its own. The server runs with the product's abuse defaults (greeting pause,
tarpit, per-/24 limit, minimum rate, probing slowdown, login lockout):

- slowloris: greet properly, then trickle DATA (or a command line) one octet a second;
- brute force: AUTH PLAIN with wrong passwords on implicit-TLS submission, for a real
  account and for made-up ones;
- recipient probing: RCPT TO random local parts on the MX port;
- garbage: binary, unknown commands and over-long lines, talking before the greeting.

Every hostile connection that ends is replaced (after a short pause) until the test
ends, so the flood lasts. Meanwhile a legitimate user submits a message with AUTH over
TLS and reads it back over IMAP: within a generous bound (15 s) from the start of its
attempt. The server's resident memory (VmRSS) is sampled before and during the flood:
it must not grow by more than 100 MiB, beyond the password hasher's fixed working
memory (2 x 64 MiB while logins are verified) at the peak, and by no more than 100 MiB
once the flood is over. Loopback only, bounded in connections and time (about 20 s,
never more than 45 s of flood).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import random
import smtplib
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import message

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORDS = {
    ALICE: "correct-horse-battery-staple-42",
    BOB: "Quartz-lantern-meadow-ferry-97",
}
# The product defaults, over the suite's TEST_CONFIG (no pause, no tarpit).
PRODUCT_PACING = {"abuse.greeting_delay": "1", "abuse.tarpit_step": "0.5"}
ATTACK_NET = "127.70.1"
BRUTE_NET = "127.70.2"
CONNECTIONS = 200
LEGIT_BOUND = 15.0  # seconds from the start of the legitimate attempt to reading it back
RSS_BOUND_KIB = 100 * 1024
# argon2id takes 64 MiB per verification, at most auth.hash_workers (2) at once, and
# gives it back after each: peaks during the flood may include that fixed budget.
HASHER_KIB = 2 * 64 * 1024
ATTACK_TIME_LIMIT = 45.0  # a hostile task stops at this point whatever happens
READ_TIMEOUT = 30.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with mail_server(tmp_path, users=PASSWORDS, config=PRODUCT_PACING) as srv:
        yield srv


# --------------------------------------------------------------------------- attackers


class Attack:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.stop = asyncio.Event()
        self.deadline = time.monotonic() + ATTACK_TIME_LIMIT
        self.connected = Counter[str]()
        self.refused = Counter[str]()  # greeted with 421 (a limit)
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE

    @property
    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() > self.deadline

    async def open(
        self, kind: str, source: str, port: int, *, tls: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.server.host,
                port,
                local_addr=(source, 0),
                ssl=self.tls if tls else None,
                server_hostname="localhost" if tls else None,
            ),
            READ_TIMEOUT,
        )
        self.connected[kind] += 1
        return reader, writer

    async def reply(self, kind: str, reader: asyncio.StreamReader) -> int:
        """The code of the next reply (the last line of it); 0 at end of input."""
        while True:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            if not line:
                return 0
            if line[3:4] != b"-":
                code = int(line[:3]) if line[:3].isdigit() else 0
                if code == 421:
                    self.refused[kind] += 1
                return code

    async def forever(self, kind: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run one hostile session after another until the attack is over."""
        while not self.over:
            with contextlib.suppress(OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                await run()
            await asyncio.sleep(0.2)

    async def slowloris(self, source: str, n: int) -> None:
        reader, writer = await self.open("slowloris", source, self.server.smtp_port)
        try:
            if await self.reply("slowloris", reader) != 220:
                return
            writer.write(b"EHLO slow.test\r\n")
            if await self.reply("slowloris", reader) != 250:
                return
            if n % 2:  # a command line that never ends
                trickle = b"MAIL FROM:<" + b"s" * 400
            else:
                writer.write(b"MAIL FROM:<slow@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
                writer.write(b"DATA\r\n")
                for _ in range(3):
                    await self.reply("slowloris", reader)
                trickle = b"Subject: slow\r\n\r\n" + b"z" * 400
            for octet in trickle:
                if self.over or reader.at_eof():
                    return
                writer.write(bytes([octet]))
                await writer.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                        return  # disconnected (421 4.4.2 then EOF)
        finally:
            writer.close()

    async def brute_force(self, source: str, n: int) -> None:
        reader, writer = await self.open("brute", source, self.server.submissions_port, tls=True)
        try:
            if await self.reply("brute", reader) != 220:
                return
            writer.write(b"EHLO brute.test\r\n")
            if await self.reply("brute", reader) != 250:
                return
            while not self.over:
                user = BOB if n % 2 else f"user{random.randrange(10**6)}@example.test"
                guess = base64.b64encode(f"\0{user}\0guess{random.randrange(10**9)}".encode())
                writer.write(b"AUTH PLAIN " + guess + b"\r\n")
                if await self.reply("brute", reader) in (0, 421, 235):
                    return
        finally:
            writer.close()

    async def probe(self, source: str, n: int) -> None:
        reader, writer = await self.open("probe", source, self.server.smtp_port)
        try:
            if await self.reply("probe", reader) != 220:
                return
            writer.write(b"EHLO probe.test\r\nMAIL FROM:<harvest@remote.test>\r\n")
            for _ in range(2):
                if await self.reply("probe", reader) not in (250,):
                    return
            while not self.over:
                local = uuid.uuid4().hex[:8]
                writer.write(f"RCPT TO:<{local}@example.test>\r\n".encode())
                if await self.reply("probe", reader) in (0, 421):
                    return
        finally:
            writer.close()

    async def garbage(self, source: str, n: int) -> None:
        reader, writer = await self.open("garbage", source, self.server.smtp_port)
        try:
            rng = random.Random(n)
            writer.write(rng.randbytes(64) + b"\r\n")  # before the greeting
            while not self.over:
                writer.write(
                    rng.choice([rng.randbytes(200), b"XYZZY " * 50, b"A" * 3000, b"\x00\xff"])
                    + b"\r\n"
                )
                await writer.drain()
                if await asyncio.wait_for(reader.read(65536), READ_TIMEOUT) == b"":
                    return
        finally:
            writer.close()

    def tasks(self) -> list[asyncio.Task[None]]:
        kinds = [self.slowloris, self.brute_force, self.probe, self.garbage]
        out = []
        for n in range(CONNECTIONS):
            run = kinds[n % len(kinds)]
            # One address each; the MX flood shares one /24 (over its limit of 100),
            # the brute force has another.
            net = BRUTE_NET if run == self.brute_force else ATTACK_NET
            source = f"{net}.{n + 1}"
            out.append(
                asyncio.create_task(
                    self.forever(run.__name__, lambda r=run, s=source, i=n: r(s, i))
                )
            )
        return out


# --------------------------------------------------------------------------- the user


def legitimate_round_trip(server: RunningServer) -> dict[str, float]:
    """Submit with AUTH over TLS, then read the message back over IMAP; seconds taken,
    in all ("total") and per step."""
    steps: dict[str, float] = {}
    started = mark = time.monotonic()

    def step(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        steps[name], mark = round(now - mark, 2), now

    subject = f"legit-{uuid.uuid4().hex}"
    with smtplib.SMTP_SSL(
        server.host, server.submissions_port, context=server.ssl_context(), timeout=LEGIT_BOUND
    ) as smtp:
        step("smtp_connect")
        smtp.login(ALICE, PASSWORDS[ALICE])
        step("smtp_auth")
        assert smtp.sendmail(ALICE, [ALICE], message(ALICE, ALICE, subject)) == {}
        step("smtp_send")
    with imaplib.IMAP4_SSL(
        server.host, server.imaps_port, ssl_context=server.ssl_context(), timeout=LEGIT_BOUND
    ) as imap:
        step("imap_connect")
        imap.login(ALICE, PASSWORDS[ALICE])
        step("imap_login")
        imap.select("INBOX", readonly=True)
        status, data = imap.search(None, "SUBJECT", subject)
        assert status == "OK" and data[0], data
        status, fetched = imap.fetch(data[0].split()[-1], "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK" and subject.encode() in fetched[0][1]  # type: ignore[index]
        step("imap_read")
    steps["total"] = round(time.monotonic() - started, 2)
    return steps


def test_legitimate_mail_flows_during_a_flood(server: RunningServer) -> None:
    def logged(name: str) -> bool:
        return any(e.get("event") == name for e in server.log_events())

    assert server.process is not None
    pid = server.process.pid
    warm = legitimate_round_trip(server)["total"]  # TLS, hash workers, store: warm
    before = rss_kib(pid)

    async def main() -> tuple[dict[str, float], int, Attack]:
        attack = Attack(server)
        flood_started = time.monotonic()
        tasks = attack.tasks()
        peak = before
        try:
            # Let the flood build up: most attackers connected at least once.
            deadline = time.monotonic() + 15
            while sum(attack.connected.values()) < CONNECTIONS * 3 // 4:
                assert time.monotonic() < deadline, f"flood never built: {attack.connected}"
                await asyncio.sleep(0.1)
            peak = max(peak, rss_kib(pid))
            legit = asyncio.create_task(asyncio.to_thread(legitimate_round_trip, server))
            while not legit.done():
                peak = max(peak, rss_kib(pid))
                await asyncio.wait({legit}, timeout=0.25)
            legit_steps = legit.result()
            # Keep flooding until the slow clients reach their cut-off (10 s of grace).
            end = flood_started + 25
            while time.monotonic() < end and not logged("abuse.slow_client"):
                for _ in range(4):
                    peak = max(peak, rss_kib(pid))
                    await asyncio.sleep(0.25)
        finally:
            attack.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return legit_steps, peak, attack

    started = time.monotonic()
    steps, peak, attack = asyncio.run(main())
    elapsed = steps["total"]
    after = rss_kib(pid)
    report = (
        f"legit round trip {elapsed:.2f}s under attack {steps} (warm {warm:.2f}s); RSS before "
        f"{before} KiB, peak {peak} KiB, after {after} KiB; connections {dict(attack.connected)},"
        f" refused {dict(attack.refused)}; attack phase {time.monotonic() - started:.1f}s"
    )
    print(report)
    assert elapsed < LEGIT_BOUND, report
    assert peak - before < RSS_BOUND_KIB + HASHER_KIB, report
    assert after - before < RSS_BOUND_KIB, report
    # The defences tripped, and said so in the log.
    names = {str(e.get("event")) for e in server.log_events()}
    for event in (
        "abuse.connections_per_net",
        "abuse.pregreet",
        "abuse.tarpit",
        "abuse.probe_slowdown",
        "abuse.slow_client",
        "auth.lockout",
    ):
        assert event in names, f"{event} never logged; {report}"
    # And the server still serves once the flood is over.
    assert legitimate_round_trip(server)["total"] < LEGIT_BOUND
