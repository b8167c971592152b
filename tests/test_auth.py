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


def test_lockout_per_ip_covers_other_accounts(tmp_path: Path) -> None:
    async def scenario(auth, fake, out):  # type: ignore[no-untyped-def]
        for i in range(4):
            await login(auth, f"nobody{i}@example.test", "whatever-password", ip="198.51.100.7")
        blocked = await login(auth, "alice@example.test", GOOD, ip="198.51.100.7")
        assert blocked.locked_out
        other_ip = await login(auth, "alice@example.test", GOOD, ip="198.51.100.8")
        assert other_ip.ok

    run_scenario(tmp_path, scenario)
