"""argon2id hashing off the event loop, and the password policy (crypto/passwords.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import argon2
import pytest

from mailward.crypto import passwords
from mailward.crypto.passwords import PasswordHasher, generate_password, password_problem

# Low cost through the explicit constructor arguments, to keep the suite fast.
FAST = {"time_cost": 1, "memory_cost": 8, "parallelism": 1}


class Spy:
    """Wraps argon2.PasswordHasher (which has __slots__) to watch calls."""

    def __init__(self, inner: argon2.PasswordHasher) -> None:
        self.inner = inner
        self.verified: list[str] = []
        self.threads: list[str] = []
        self.before_hash: Callable[[], None] = lambda: None

    def hash(self, password: str) -> str:
        self.threads.append(threading.current_thread().name)
        self.before_hash()
        return self.inner.hash(password)

    def verify(self, stored: str, password: str) -> bool:
        self.verified.append(stored)
        return self.inner.verify(stored, password)

    def check_needs_rehash(self, stored: str) -> bool:
        return self.inner.check_needs_rehash(stored)


def spy_on(h: PasswordHasher) -> Spy:
    spy = Spy(h._ph)
    h._ph = spy  # type: ignore[assignment]
    return spy


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    h = PasswordHasher(workers=2, **FAST)
    yield h
    h.close()


def test_production_defaults_are_argon2id_64mib() -> None:
    h = PasswordHasher(workers=1)
    try:
        params = argon2.extract_parameters(h.hash_sync("correct horse battery"))
    finally:
        h.close()
    assert params.type is argon2.Type.ID
    assert params.memory_cost == 64 * 1024  # KiB
    assert params.time_cost >= 3


def test_hash_and_verify(hasher: PasswordHasher) -> None:
    async def main() -> None:
        stored = await hasher.hash("Tr0ub4dor&3x-horse")
        assert stored.startswith("$argon2id$")
        assert await hasher.verify(stored, "Tr0ub4dor&3x-horse")
        assert not await hasher.verify(stored, "Tr0ub4dor&3x-horsE")
        assert not await hasher.verify(stored, "")
        # Same password, fresh salt each time.
        assert stored != await hasher.hash("Tr0ub4dor&3x-horse")

    asyncio.run(main())


def test_hash_sync_verifies_async(hasher: PasswordHasher) -> None:
    stored = hasher.hash_sync("pässwörd with ünïcode")
    assert asyncio.run(hasher.verify(stored, "pässwörd with ünïcode"))


@pytest.mark.parametrize(
    "bad", [None, "", "garbage", "$argon2id$v=19$m=8,t=1,p=1$bm9wZQ$", "$2b$12$abcdefghijklmnopq"]
)
def test_unknown_user_and_bad_hash_return_false_and_spend_a_verify(
    hasher: PasswordHasher, bad: str | None
) -> None:
    spy = spy_on(hasher)
    assert asyncio.run(hasher.verify(bad, "whatever password")) is False
    # The dummy hash was verified: the same work as for a real account.
    assert hasher._dummy is not None and hasher._dummy.startswith("$argon2id$")
    assert spy.verified and spy.verified[-1] == hasher._dummy


def test_work_runs_off_the_event_loop_thread(hasher: PasswordHasher) -> None:
    spy = spy_on(hasher)

    async def main() -> str:
        await hasher.hash("x" * 20)
        return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert spy.threads and spy.threads[0] != loop_thread
    assert spy.threads[0].startswith("argon2")


def test_pool_is_bounded() -> None:
    h = PasswordHasher(workers=2, **FAST)
    spy = spy_on(h)
    gate = threading.Event()
    active = 0
    peak = 0
    lock = threading.Lock()

    def hold() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        gate.wait(5)
        with lock:
            active -= 1

    spy.before_hash = hold

    async def main() -> None:
        tasks = [asyncio.ensure_future(h.hash(f"pw{i}")) for i in range(6)]
        await asyncio.sleep(0)
        asyncio.get_running_loop().call_later(0.2, gate.set)
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        h.close()
    assert peak == 2
    assert len(spy.threads) == 6


def test_needs_rehash(hasher: PasswordHasher) -> None:
    stored = hasher.hash_sync("a long enough password")
    assert not hasher.needs_rehash(stored)
    stronger = PasswordHasher(workers=1, time_cost=2, memory_cost=16, parallelism=1)
    try:
        assert stronger.needs_rehash(stored)
    finally:
        stronger.close()
    assert hasher.needs_rehash("not a hash")


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PasswordHasher(workers=0)


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("password", "address", "reason"),
    [
        ("Sh0rt!pass", "", "shorter than 12"),
        ("password123456", "", "commonly used"),
        ("QWERTYUIOP12", "", "commonly used"),
        ("Summer2031!!", "", "common word"),
        ("!!Password!!2031", "", "common word"),
        ("xx-Alice.Smith-2031", "alice.smith@example.org", "account name"),
        ("Zq9alice@example.org", "alice@example.org", "address"),
        ("aaaaaaaaaaaaaaaa", "", "repeated"),
        ("Ab1!Ab1!Ab1!Ab1!", "", "repeated"),
        ("ghijklmnopqrs", "", "repeated"),
        ("9876543210987", "", "repeated"),
        ("asdfghjklzxcvbnm", "", "repeated"),
        ("lowercaseonly1", "", "three of"),
        ("UPPERandlower", "", "three of"),
    ],
)
def test_password_problem_rejects(password: str, address: str, reason: str) -> None:
    problem = password_problem(password, address=address)
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize(
    ("password", "address"),
    [
        ("Tr0ub4dor&3x", ""),
        ("correct horse battery staple", ""),  # long: composition rule does not apply
        ("Kx7-mail-Vq2p", "al@example.org"),  # 2-letter local part is not matched
        ("my dog eats 3 carrots", "bob@example.org"),
    ],
)
def test_password_problem_accepts(password: str, address: str) -> None:
    assert password_problem(password, address=address) is None


def test_common_list_is_substantial_and_all_rejected() -> None:
    assert len(passwords._COMMON) >= 100
    assert all(password_problem(p) is not None for p in passwords._COMMON)


def test_generate_password() -> None:
    seen = set()
    for _ in range(200):
        p = generate_password()
        assert len(p) == 20
        assert password_problem(p) is None
        assert not set(p) & set("0O1lI")
        seen.add(p)
    assert len(seen) == 200
