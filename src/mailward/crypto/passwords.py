"""Password hashing (argon2id, RFC 9106) and password policy (NIST SP 800-63B 5.1.1).

Hashing: argon2id through argon2-cffi with its defaults, which are RFC 9106's
"second recommended option" (t=3, m=64 MiB, p=4): about 100 ms and 64 MiB a call.
That is far too slow for an event loop, so every hash and verify runs in a bounded
thread pool (`workers` at once; `auth.hash_workers` in the config), which also bounds
memory to workers x 64 MiB. Stored hashes are PHC strings
(`$argon2id$v=19$m=65536,t=3,p=4$salt$hash`) that carry their own parameters, so
`needs_rehash` can upgrade them at the next successful login.

Timing: `verify(None, ...)` (no such account) and `verify("garbage", ...)` still spend
one full verification against a dummy hash made with the same parameters, so response
time does not reveal whether an account exists.

Policy (`password_problem`): SP 800-63B asks for a length minimum and a check against
commonly used or context-specific passwords rather than composition rules; we add one
mild composition rule for shorter passwords. `generate_password` always passes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
# Below this length a password needs at least three character classes.
LONG_LENGTH = 16


class PasswordHasher:
    """argon2id hashing off the event loop, in at most `workers` threads."""

    def __init__(
        self,
        workers: int = 2,
        *,
        time_cost: int = argon2.DEFAULT_TIME_COST,
        memory_cost: int = argon2.DEFAULT_MEMORY_COST,
        parallelism: int = argon2.DEFAULT_PARALLELISM,
    ) -> None:
        """Production code passes only `workers`; tests may lower the costs."""
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._ph = argon2.PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=argon2.Type.ID,
        )
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._dummy_lock = threading.Lock()
        self._dummy: str | None = None

    def hash_sync(self, password: str) -> str:
        """Hash now, on this thread (for the CLI and tests; not on the event loop)."""
        return self._ph.hash(password)

    async def hash(self, password: str) -> str:
        """Hash in the worker pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._ph.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """True if `password` matches `stored_hash`; False otherwise, never raises.

        `stored_hash` None (unknown account) or unparsable costs the same as a real
        verification, against a dummy hash.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._verify_sync, stored_hash, password)

    def _dummy_hash(self) -> str:
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self._ph.hash(secrets.token_urlsafe(32))
            return self._dummy

    def _verify_sync(self, stored_hash: str | None, password: str) -> bool:
        if stored_hash is not None:
            try:
                return self._ph.verify(stored_hash, password)
            except VerifyMismatchError:
                return False
            except (VerificationError, InvalidHashError, ValueError, TypeError):
                pass  # corrupt hash: fall through and spend the same time
        with contextlib.suppress(VerificationError, InvalidHashError):
            self._ph.verify(self._dummy_hash(), password)
        return False

    def needs_rehash(self, stored_hash: str) -> bool:
        """True if `stored_hash` was made with other parameters (or is unparsable)."""
        try:
            return self._ph.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def close(self) -> None:
        """Finish running hashes and stop the threads; queued work is cancelled."""
        self._executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- policy


def _wordlist(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Very common passwords of 12+ characters (shorter ones fail on length anyway), from
# public breach-frequency lists. Compared case-insensitively.
_COMMON = _wordlist(
    """
    password1234 password12345 password123456 password1234567 password12345678
    passwordpassword password123! password2020 password2021 password2022 password2023
    password2024 password2025 passw0rd1234 p@ssw0rd1234 p@ssword1234 mypassword123
    qwertyuiop12 qwertyuiop123 qwerty123456 qwerty1234567 qwertyqwerty qwertyuiopasdf
    qwertyuiopasdfghjkl qwertyuiopasdfghjklzxcvbnm 1q2w3e4r5t6y 1q2w3e4r5t6y7u
    1qaz2wsx3edc 1qaz2wsx3edc4rfv zaq12wsxcde3 qazwsxedcrfv asdfghjkl123
    zxcvbnm12345 123456789012 1234567890123 12345678901234 123456789123 123123123123
    123456123456 111111111111 000000000000 987654321000 iloveyou1234 iloveyou12345
    letmein12345 letmein123456 welcome12345 welcome123456 welcome2024! changeme1234
    changeme12345 administrator administrator1 admin1234567 admin123456789 adminadmin12
    rootroot1234 football1234 baseball1234 basketball12 superman1234 batman123456
    sunshine1234 princess1234 starwars1234 pokemon12345 dragon123456 monkey123456
    master123456 shadow123456 michael12345 jennifer1234 trustno11234 whatever1234
    computer1234 internet1234 abcdefghijkl abcdefghijklm abc123abc123 abcd1234abcd
    a1b2c3d4e5f6 aaaaaaaaaaaa passwordqwerty 1234qwerasdf qwer1234asdf1234 1234abcd1234
    hello1234567 helloworld12 helloworld123 loveyou12345 iloveyou1234! secret123456
    summer2024!! winter2024!! spring2024!! autumn2024!! freedom12345 mustang12345
    liverpool123 chelsea12345 arsenal12345 q1w2e3r4t5y6 q1w2e3r4t5y6u7 test12345678
    testtest1234 guest1234567 default12345 mailserver12 postmaster12 webmaster123
    """
)

# Common words that people pad with digits and symbols to pass a length rule
# ("Summer2024!!", "Password#123").
_COMMON_STEMS = _wordlist(
    """
    password passw0rd p@ssword p@ssw0rd qwerty qwertyuiop letmein welcome changeme
    admin administrator iloveyou football baseball sunshine princess starwars dragon
    monkey master shadow superman batman summer winter spring autumn monday secret
    hello trustno whatever computer internet
    """
)
_PADDING = "0123456789!@#$%^&*()-_=+.?,;:~ "

_SEQUENCES = (
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
    "qwertyuiopasdfghjklzxcvbnm",
    "qwertzuiopasdfghjklyxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
)


def _classes(password: str) -> int:
    return sum(
        (
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        )
    )


def _is_repetition(s: str) -> bool:
    """ "aaaa...", "abcabc...", or a run along the alphabet, digits or a keyboard row."""
    n = len(s)
    for unit in range(1, n // 2 + 1):
        if n % unit == 0 and s[:unit] * (n // unit) == s:
            return True
    for seq in _SEQUENCES:
        cycle = seq * (n // len(seq) + 2)
        if s in cycle or s in cycle[::-1]:
            return True
    return False


def password_problem(password: str, *, address: str = "") -> str | None:
    """None if `password` is acceptable, else a reason to show the user."""
    if len(password) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters"
    folded = password.casefold()
    if folded in _COMMON:
        return "is one of the most commonly used passwords"
    if folded.strip(_PADDING) in _COMMON_STEMS:
        return "is a common word with digits or symbols added"
    address = address.strip().casefold()
    if address:
        local = address.rpartition("@")[0] if "@" in address else address
        if address in folded:
            return "contains the account's address"
        if len(local) >= 3 and local in folded:
            return "contains the account name"
    if _is_repetition(folded):
        return "is one character, sequence or keyboard run repeated"
    if len(password) < LONG_LENGTH and _classes(password) < 3:
        return (
            f"needs at least three of lower case, upper case, digits and symbols, "
            f"or at least {LONG_LENGTH} characters"
        )
    return None


# No 0/O, 1/l/I: easy to read aloud and to copy from paper.
_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def generate_password(length: int = 20) -> str:
    """A random password (about 5.8 bits a character: 116 bits at 20) that passes policy."""
    if length < LONG_LENGTH:
        raise ValueError(f"generated passwords are at least {LONG_LENGTH} characters")
    while True:
        candidate = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if _classes(candidate) >= 3 and password_problem(candidate) is None:
            return candidate
