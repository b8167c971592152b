"""Transaction-level abuse limits (pipeline/abuse.py, sending_limits.py, greylist.py):
recipient probing, per-account sending caps, greylisting, through the real pipeline and
a real store, with injected clocks (no waiting)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailward.app import open_store
from mailward.config.schema import AbuseConfig
from mailward.logs import EventLog
from mailward.pipeline.abuse import ProbeTracker, TransactionLimits
from mailward.pipeline.networks import client_key, client_network
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.types import Envelope, SessionInfo
from mailward.proto.address import parse_path
from mailward.proto.smtp_events import MailFrom, RcptTo
from mailward.store.api import MailStore
from mailward.testing.fake_dns import FakeResolver

ALICE = "alice@example.test"
BOB = "bob@example.test"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def events(log: io.StringIO, name: str) -> list[dict[str, object]]:
    records = [json.loads(line) for line in log.getvalue().splitlines()]
    return [r for r in records if r["event"] == name]


def mail(sender: str) -> MailFrom:
    return MailFrom(reverse_path=sender, params={}, smtputf8=False, body="7BIT", size=None)


def rcpt(address: str) -> RcptTo:
    p = parse_path(f"<{address}>", utf8=False)
    return RcptTo(
        forward_path=p.mailbox,
        local_part=p.local_part,
        domain=p.domain,
        quoted_local=p.quoted_local,
        params={},
        had_source_route=False,
    )


@dataclass
class World:
    store: MailStore
    pipeline: Pipeline
    limits: TransactionLimits
    log: io.StringIO
    clock: Clock  # monotonic (probing)
    wall: Clock  # Unix time (sending caps, greylisting)
    alice: int
    bob: int

    def mx(self, ip: str = "192.0.2.10", session_id: str = "s1") -> SessionInfo:
        return SessionInfo("mx", ip, 4000, session_id)

    def submission(self, account: str = ALICE, ip: str = "192.0.2.20") -> SessionInfo:
        session = SessionInfo("submission", ip, 4000, "sub")
        session.account_id = self.alice if account == ALICE else self.bob
        session.account_address = account
        return session

    async def transaction(
        self, session: SessionInfo, sender: str, *recipients: str
    ) -> tuple[int, list[int], Envelope | None]:
        reply, envelope = await self.pipeline.mail_from(session, mail(sender))
        codes = []
        if envelope is not None:
            for r in recipients:
                codes.append((await self.pipeline.rcpt_to(session, envelope, rcpt(r))).code)
        return reply.code, codes, envelope


def run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]], **config: object) -> None:
    async def main() -> None:
        store = await open_store(tmp_path)
        try:
            await store.add_domain("example.test")
            alice = await store.add_account(ALICE, "x")
            bob = await store.add_account(BOB, "x")
            out = io.StringIO()
            log = EventLog(out)
            clock, wall = Clock(1000.0), Clock(1_700_000_000.0)
            limits = TransactionLimits(
                store,
                log,
                dataclasses.replace(AbuseConfig(), **config),
                clock=clock,
                wall_clock=wall,
            )
            pipeline = Pipeline(
                store, log, resolver=FakeResolver({}), hostname="mx.test", abuse=limits
            )
            await scenario(World(store, pipeline, limits, out, clock, wall, alice.id, bob.id))
        finally:
            await store.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- networks


@pytest.mark.parametrize(
    ("ip", "network", "key"),
    [
        ("192.0.2.77", "192.0.2.0/24", "192.0.2.77"),
        ("::ffff:192.0.2.77", "192.0.2.0/24", "192.0.2.77"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64", "fe80::/64"),
        ("not-an-ip", "not-an-ip", "not-an-ip"),
    ],
)
def test_client_network_and_key(ip: str, network: str, key: str) -> None:
    assert client_network(ip) == network
    assert client_key(ip) == key


# --------------------------------------------------------------------------- probing


def tracker(out: io.StringIO, clock: Clock, **kw: float) -> ProbeTracker:
    settings: dict[str, float] = {
        "window": 600,
        "slowdown": 3,
        "block": 6,
        "block_seconds": 60,
        "step": 0.5,
        "maximum": 2.0,
    }
    settings.update(kw)
    return ProbeTracker(
        EventLog(out),
        window=settings["window"],
        slowdown=int(settings["slowdown"]),
        block=int(settings["block"]),
        block_seconds=settings["block_seconds"],
        step=settings["step"],
        maximum=settings["maximum"],
        clock=clock,
        max_clients=int(settings.get("max_clients", 100)),
    )


def test_probe_tracker_slows_down_then_blocks_then_forgives() -> None:
    out, clock = io.StringIO(), Clock(0.0)
    probes = tracker(out, clock)
    ip = "198.51.100.5"
    delays = []
    for _ in range(5):
        assert not probes.record(ip, "s1")
        delays.append(probes.delay(ip))
    assert delays == [0.0, 0.0, 0.5, 1.0, 1.5]  # from the 3rd on, growing
    assert probes.blocked_for(ip) == 0.0
    assert probes.record(ip, "s1")  # the 6th blocks
    assert probes.blocked_for(ip) == 60
    assert probes.blocked_for("198.51.100.6") == 0.0  # only that client
    clock.now += 59.5
    assert probes.blocked_for(ip) == pytest.approx(0.5)
    clock.now += 1
    assert probes.blocked_for(ip) == 0.0 and probes.delay(ip) == 0.0
    [slow] = events(out, "abuse.probe_slowdown")
    [block] = events(out, "abuse.probe_block")
    assert (slow["ip"], slow["limit"], block["limit"], block["seconds"]) == (ip, 3, 6, 60)


def test_probe_window_slides_and_delay_is_capped() -> None:
    out, clock = io.StringIO(), Clock(0.0)
    probes = tracker(out, clock, block=0)  # never block
    for _ in range(20):
        probes.record("198.51.100.5", "s")
        clock.now += 10
    assert probes.delay("198.51.100.5") == 2.0  # the cap
    assert probes.blocked_for("198.51.100.5") == 0.0
    clock.now += 600
    assert probes.count("198.51.100.5") == 0 and probes.delay("198.51.100.5") == 0.0


def test_ipv6_probes_count_per_64() -> None:
    out, clock = io.StringIO(), Clock(0.0)
    probes = tracker(out, clock)
    for i in range(6):
        probes.record(f"2001:db8:0:1::{i + 1:x}", "s")  # a new address every time
    assert probes.blocked_for("2001:db8:0:1::ffff") > 0
    assert probes.blocked_for("2001:db8:0:2::1") == 0.0


def test_probe_tracker_memory_is_bounded() -> None:
    out, clock = io.StringIO(), Clock(0.0)
    probes = tracker(out, clock, max_clients=50, block=2)
    for i in range(5000):
        probes.record(f"10.{i // 256 % 256}.{i % 256}.1", "s")
        probes.record(f"10.{i // 256 % 256}.{i % 256}.1", "s")
    assert len(probes._probes) <= 50 and len(probes._blocked) <= 50


def test_unknown_recipients_get_the_client_blocked_at_mail_and_rcpt(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        prober, other = w.mx("203.0.113.9"), w.mx("203.0.113.10", "s2")
        code, codes, _ = await w.transaction(
            prober, "x@remote.test", *[f"guess{i}@example.test" for i in range(4)], ALICE
        )
        assert (code, codes) == (250, [550, 550, 550, 550, 250])
        assert w.limits.probes.delay(prober.peer_ip) == 0.0
        _, codes, _ = await w.transaction(prober, "x@remote.test", "guess4@example.test")
        assert codes == [550]  # the 5th: slowed down from now on
        assert w.limits.probes.delay(prober.peer_ip) > 0
        _, codes, _ = await w.transaction(
            prober, "x@remote.test", *[f"g{i}@example.test" for i in range(15)]
        )
        assert codes == [550] * 14 + [421]  # the 20th unknown recipient: blocked
        reply, envelope = await w.pipeline.mail_from(prober, mail("x@remote.test"))
        assert (reply.code, reply.enhanced, envelope) == (421, "4.7.0", None)
        assert (await w.transaction(other, "x@remote.test", ALICE))[:2] == (250, [250])
        w.clock.now += 601  # block_seconds (600) later
        assert (await w.transaction(prober, "x@remote.test", ALICE))[:2] == (250, [250])
        assert events(w.log, "abuse.probe_block") and events(w.log, "abuse.blocked")
        refused = events(w.log, "smtp.rcpt.refused")
        assert refused[-1]["reason"] == "client blocked for recipient probing"

    run(tmp_path, scenario)


def test_authenticated_and_trusted_clients_are_not_counted_as_probers(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        trusted = w.mx("10.0.0.1")
        trusted.trusted_network = True
        for session in (w.submission(), trusted):
            sender = ALICE if session.authenticated else "x@remote.test"
            _, codes, _ = await w.transaction(
                session, sender, *[f"typo{i}@example.test" for i in range(25)]
            )
            assert codes == [550] * 25
            assert w.limits.probes.count(session.peer_ip) == 0

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- sending caps


async def send(w: World, session: SessionInfo, *recipients: str) -> tuple[int, list[int]]:
    """One message through MAIL/RCPT, counted as accepted if every RCPT was."""
    code, codes, envelope = await w.transaction(session, session.account_address, *recipients)
    if code == 250 and envelope is not None and codes and all(c == 250 for c in codes):
        await w.limits.message_accepted(session, envelope)
    return code, codes


def test_messages_per_day_cap(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        alice = w.submission()
        assert await send(w, alice, "r1@remote.test") == (250, [250])
        assert await send(w, alice, "r1@remote.test") == (250, [250])
        reply, envelope = await w.pipeline.mail_from(alice, mail(ALICE))
        assert (reply.code, reply.enhanced, envelope) == (451, "4.7.1", None)
        assert "limit" in str(reply.text).lower() and "try later" in str(reply.text)
        # Per account: bob still sends.
        assert await send(w, w.submission(BOB), "r1@remote.test") == (250, [250])
        # 24 hours (and the hour bucket) later alice sends again.
        w.wall.now += 25 * 3600
        assert await send(w, alice, "r1@remote.test") == (250, [250])
        [trip] = events(w.log, "abuse.sending_limit")
        assert (trip["account"], trip["limit"], trip["cap"]) == (ALICE, "messages_per_day", 2)
        # MX mail is never capped (no account).
        for _ in range(3):
            assert (await w.transaction(w.mx(), "x@remote.test", ALICE))[:2] == (250, [250])

    run(tmp_path, scenario, messages_per_day=2, new_recipients_per_day=0)


def test_new_recipients_per_day_cap(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        alice = w.submission()
        # Two new recipients in one transaction fill the cap; a third is refused.
        assert await send(w, alice, "a@remote.test", "b@remote.test", "c@remote.test") == (
            250,
            [250, 250, 451],
        )
        assert await send(w, alice, "a@remote.test", "B@REMOTE.TEST") == (250, [250, 250])
        # Known recipients pass; a new one does not.
        assert await send(w, alice, "a@remote.test", "d@remote.test", BOB) == (
            250,
            [250, 451, 451],
        )
        # Bob's history is his own.
        assert await send(w, w.submission(BOB), "c@remote.test", "d@remote.test") == (
            250,
            [250, 250],
        )
        w.wall.now += 25 * 3600
        assert await send(w, alice, "c@remote.test", "d@remote.test") == (250, [250, 250])
        trips = events(w.log, "abuse.sending_limit")
        assert {t["limit"] for t in trips} == {"new_recipients_per_day"}

    run(tmp_path, scenario, messages_per_day=0, new_recipients_per_day=2)


# --------------------------------------------------------------------------- greylisting


def test_greylisting_first_attempt_tempfails_retry_after_delay_passes(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        client = w.mx("192.0.2.10")
        neighbour = w.mx("192.0.2.200", "s2")  # same /24: the same triplet network
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [451]
        w.wall.now += 30
        assert (await w.transaction(neighbour, "S@remote.test", ALICE))[1] == [451]  # early
        w.wall.now += 31
        assert (await w.transaction(neighbour, "s@remote.test", ALICE))[1] == [250]
        # Remembered: no delay for the same triplet, a delay for a new one.
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [250]
        assert (await w.transaction(client, "s@remote.test", BOB))[1] == [451]
        assert (await w.transaction(w.mx("198.51.100.1"), "s@remote.test", ALICE))[1] == [451]
        # Authenticated, trusted: never greylisted. Unknown users: 550 as always.
        trusted = w.mx("10.1.1.1")
        trusted.trusted_network = True
        assert (await w.transaction(trusted, "t@remote.test", ALICE))[1] == [250]
        assert (await w.transaction(w.submission(), ALICE, BOB))[1] == [250]
        assert (await w.transaction(client, "s@remote.test", "nobody@example.test"))[1] == [550]
        assert len(events(w.log, "abuse.greylisted")) == 4
        assert len(events(w.log, "abuse.greylist_passed")) == 1
        [refused, *_] = events(w.log, "smtp.rcpt.refused")
        assert refused["code"] == 451

    run(tmp_path, scenario, greylisting=True, greylist_delay=60.0)


def test_greylisting_expiry_and_lifetime(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        client = w.mx("192.0.2.10")
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [451]
        w.wall.now += 3601  # too late: starts over
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [451]
        w.wall.now += 61
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [250]
        w.wall.now += 7000  # used within its lifetime: still passes, and is renewed
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [250]
        w.wall.now += 7201  # unused for longer than the lifetime: greylisted again
        assert (await w.transaction(client, "s@remote.test", ALICE))[1] == [451]
        # Expired triplets are pruned from the store.
        assert events(w.log, "abuse.greylist_pruned")

    run(
        tmp_path,
        scenario,
        greylisting=True,
        greylist_delay=60.0,
        greylist_expiry=3600.0,
        greylist_lifetime=7200.0,
    )


def test_greylisting_off_by_default(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        assert w.limits.greylist is None
        assert (await w.transaction(w.mx(), "s@remote.test", ALICE))[1] == [250]

    run(tmp_path, scenario)
