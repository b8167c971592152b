"""Login throttling and lockout, with an injected clock and sleep (no real waiting)."""

import asyncio
import io
import json
from pathlib import Path

from mailward.app import open_store
from mailward.auth import Authenticator, AuthPolicy
from mailward.crypto.passwords import PasswordHasher
from mailward.logs import EventLog

GOOD = "correct-horse-battery-staple-42"


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def run_scenario(tmp_path: Path, scenario):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        store = await open_store(tmp_path)
        hasher = PasswordHasher(workers=1, time_cost=1, memory_cost=8192, parallelism=1)
        await store.add_domain("example.test")
        await store.add_account("alice@example.test", await hasher.hash(GOOD))
        out = io.StringIO()
        fake = FakeTime()
        auth = Authenticator(
            store,
            hasher,
            EventLog(out),
            AuthPolicy(failures_before_delay=2, lockout_failures=4, lockout_seconds=60),
            clock=fake.clock,
            sleep=fake.sleep,
        )
        try:
            return await scenario(auth, fake, out)
        finally:
            hasher.close()
            await store.close()

    return asyncio.run(main())


def login(auth, user, password, ip="192.0.2.1"):  # type: ignore[no-untyped-def]
    return auth.authenticate(user, password, ip=ip, protocol="smtp", mechanism="PLAIN")


def test_right_password_succeeds_case_insensitively(tmp_path: Path) -> None:
    async def scenario(auth, fake, out):  # type: ignore[no-untyped-def]
        outcome = await login(auth, "ALICE@example.test", GOOD)
        assert outcome.ok and outcome.account.address == "alice@example.test"
        assert fake.slept == []

    run_scenario(tmp_path, scenario)


def test_failures_slow_down_then_lock_out_even_the_right_password(tmp_path: Path) -> None:
    async def scenario(auth, fake, out):  # type: ignore[no-untyped-def]
        results = [await login(auth, "alice@example.test", f"wrong-{i}") for i in range(4)]
        assert not any(r.ok for r in results)
        assert fake.slept and fake.slept == sorted(fake.slept)  # growing delays
        locked = await login(auth, "alice@example.test", GOOD)
        assert not locked.ok and locked.locked_out
        fake.now += 61  # the lockout expires by itself
        assert (await login(auth, "alice@example.test", GOOD)).ok
        text = out.getvalue()
        assert GOOD not in text and "wrong-0" not in text  # never log a password
        events = [json.loads(line)["event"] for line in text.splitlines()]
        assert "auth.locked_out" in events and "auth.failure" in events

    run_scenario(tmp_path, scenario)


def test_a_guesser_cannot_lock_the_owner_out_of_a_network_they_use(tmp_path: Path) -> None:
    async def scenario(auth, fake, out):  # type: ignore[no-untyped-def]
        assert (await login(auth, "alice@example.test", GOOD, ip="198.51.100.7")).ok
        # Someone elsewhere guesses until the account is locked...
        for i in range(4):
            guess = await login(auth, "alice@example.test", f"wrong-{i}", ip=f"203.0.113.{i}")
            assert not guess.ok
        stranger = await login(auth, "alice@example.test", GOOD, ip="192.0.2.50")
        assert stranger.locked_out  # ...so from any other network it is locked,
        # but Alice, from the network she logged in from before, gets in.
        assert (await login(auth, "alice@example.test", GOOD, ip="198.51.100.8")).ok
        # Her own client's failures still lock that client.
        for i in range(4):
            await login(auth, "alice@example.test", f"typo-{i}", ip="198.51.100.8")
        assert (await login(auth, "alice@example.test", GOOD, ip="198.51.100.8")).locked_out
        fake.now += 30 * 86400 + 61  # the memory of her network expires
        for i in range(4):
            await login(auth, "alice@example.test", f"wrong-{i}", ip=f"203.0.113.{i}")
        assert (await login(auth, "alice@example.test", GOOD, ip="198.51.100.9")).locked_out

    run_scenario(tmp_path, scenario)


def test_lockout_per_ip_covers_other_accounts(tmp_path: Path) -> None:
    async def scenario(auth, fake, out):  # type: ignore[no-untyped-def]
        for i in range(4):
            await login(auth, f"nobody{i}@example.test", "whatever-password", ip="198.51.100.7")
        blocked = await login(auth, "alice@example.test", GOOD, ip="198.51.100.7")
        assert blocked.locked_out
        other_ip = await login(auth, "alice@example.test", GOOD, ip="198.51.100.8")
        assert other_ip.ok

    run_scenario(tmp_path, scenario)


# --------------------------------------------------------------------------- abuse (DoS)


class CountingHasher:
    """Wraps the real hasher: counts verifications and how many run at once."""

    def __init__(self, inner: PasswordHasher) -> None:
        self.inner = inner
        self.verifies = 0
        self.running = 0
        self.most = 0

    async def verify(self, stored: str | None, password: str) -> bool:
        self.verifies += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(0.01)
            return await self.inner.verify(stored, password)
        finally:
            self.running -= 1


def run_counted(tmp_path: Path, scenario, **policy):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        store = await open_store(tmp_path)
        hasher = PasswordHasher(workers=2, time_cost=1, memory_cost=8192, parallelism=1)
        await store.add_domain("example.test")
        await store.add_account("alice@example.test", await hasher.hash(GOOD))
        out = io.StringIO()
        fake = FakeTime()
        counting = CountingHasher(hasher)
        settings = {"failures_before_delay": 100, "lockout_failures": 4, "lockout_seconds": 60}
        settings.update(policy)
        auth = Authenticator(
            store,
            counting,  # type: ignore[arg-type]
            EventLog(out),
            AuthPolicy(**settings),
            clock=fake.clock,
            sleep=fake.sleep,
        )
        try:
            return await scenario(auth, fake, out, counting)
        finally:
            hasher.close()
            await store.close()

    return asyncio.run(main())


def events_of(out: io.StringIO, name: str) -> list[dict[str, object]]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == name]


def test_locked_out_attempts_cost_no_verification_and_wait(tmp_path: Path) -> None:
    async def scenario(auth, fake, out, hasher):  # type: ignore[no-untyped-def]
        for i in range(4):
            await login(auth, "alice@example.test", f"wrong-{i}")
        assert hasher.verifies == 4
        for _ in range(20):
            assert (await login(auth, "alice@example.test", GOOD)).locked_out
        assert hasher.verifies == 4  # a flood of locked-out attempts hashes nothing
        assert fake.slept[-20:] == [5.0] * 20  # each one is answered slowly
        [lockout] = events_of(out, "auth.lockout")  # the trip, logged once
        assert (lockout["scope"], lockout["limit"], lockout["ip"]) == ("client", 4, "192.0.2.1")

    run_counted(tmp_path, scenario)


def test_a_network_is_locked_out_as_a_whole(tmp_path: Path) -> None:
    async def scenario(auth, fake, out, hasher):  # type: ignore[no-untyped-def]
        # Many addresses of one /24, each under its own limit, made-up users each time.
        for i in range(6):
            await login(auth, f"guess{i}@example.test", "x", ip=f"198.51.100.{i + 1}")
        locked = await login(auth, "alice@example.test", GOOD, ip="198.51.100.77")
        assert locked.locked_out
        assert (await login(auth, "alice@example.test", GOOD, ip="203.0.113.1")).ok
        [lockout] = events_of(out, "auth.lockout")
        assert (lockout["scope"], lockout["network"]) == ("network", "198.51.100.0/24")

    run_counted(tmp_path, scenario, net_lockout_failures=6)


def test_one_network_cannot_take_every_hash_worker(tmp_path: Path) -> None:
    async def scenario(auth, fake, out, hasher):  # type: ignore[no-untyped-def]
        burst = [
            asyncio.ensure_future(
                login(auth, f"guess{i}@example.test", "x", ip=f"198.51.100.{i + 1}")
            )
            for i in range(12)
        ]
        await asyncio.sleep(0)
        assert (await login(auth, "alice@example.test", GOOD, ip="203.0.113.1")).ok
        # The legitimate login did not wait for the whole burst to be verified.
        assert sum(f.done() for f in burst) < len(burst)
        results = await asyncio.gather(*burst)
        assert hasher.most <= 2  # one for the burst's network, one for everyone else
        # Queued attempts are checked again once their turn comes: locked out by then.
        assert sum(r.locked_out for r in results) == len(burst) - 4
        assert hasher.verifies == 4 + 1

    run_counted(tmp_path, scenario, net_lockout_failures=4, lockout_failures=10)
