"""The POP3 session (net.pop3_server) over real sockets, against a real SqliteStore.

Each test serves `Pop3Session` with `asyncio.start_server` on 127.0.0.1 (port 0): one
plain listener where STLS is required before a login (RFC 2595 4), and one with
implicit TLS (RFC 8314). Clients are Python's `poplib` and raw socket transcripts,
run in a thread while the server runs on the event loop. Messages go in through
`MailStore.deliver` and results are checked in the store.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import poplib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from mailward.auth import Authenticator, AuthPolicy
from mailward.crypto.passwords import PasswordHasher
from mailward.crypto.tls import client_context, generate_self_signed, server_context
from mailward.logs import EventLog
from mailward.net.pop3_server import MESSAGE_CHUNK, Pop3Services, Pop3Session
from mailward.pipeline.types import SessionInfo
from mailward.store.api import LocalTarget, MailStore, MessageInfo, NotFound, StoreError
from mailward.store.sqlite import SqliteStore
from mailward.testing.store_conformance import deliver_bytes

T = TypeVar("T")

HOST = "pop.example.test"
GREETING = b"+OK pop.example.test POP3 ready\r\n"
ALICE, ALICE_PW = "alice@example.test", "correct-horse-battery-staple-42"
BOB, BOB_PW = "bob@example.test", "Quartz-lantern-meadow-ferry-97"
USE_STLS = b"-ERR [AUTH] Plaintext authentication disallowed without TLS, send STLS first\r\n"
IN_USE = b"-ERR [IN-USE] Maildrop already locked\r\n"
SHUTTING_DOWN = b"-ERR [SYS/TEMP] Server shutting down\r\n"

DOTTED = (
    b"From: a@example.org\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\n"
    b"middle . line\r\n.\r\nlast\r\n"
)
SMALL = b"From: a@example.org\r\nSubject: small\r\n\r\nhello\r\n"


def big_message() -> bytes:
    """~3 MiB of short lines, with dot lines just at, and just after a CRLF split by,
    the 256 KiB boundaries the session reads the store in."""
    buf = bytearray(b"From: a@example.org\r\nSubject: big\r\n\r\n")

    def pad_to(target: int) -> None:
        n = 0
        while len(buf) < target:
            left = target - len(buf)
            size = 78 if left >= 80 else left
            text = b"." + b"x" * (size - 3) if n % 500 == 0 else b"x" * (size - 2)
            buf.extend(text[: size - 2] + b"\r\n")
            n += 1

    pad_to(MESSAGE_CHUNK)
    buf += b".starts the second chunk\r\n"
    pad_to(2 * MESSAGE_CHUNK - 5)
    buf += b"abcd\r\n.after a CRLF split across chunks\r\n"
    pad_to(3 * MESSAGE_CHUNK)
    buf += b".\r\n"  # would end the response if it were not stuffed
    pad_to(3 * 1024 * 1024 + 123)
    assert buf[MESSAGE_CHUNK : MESSAGE_CHUNK + 1] == b"."
    assert buf[2 * MESSAGE_CHUNK - 1 : 2 * MESSAGE_CHUNK + 2] == b"\r\n."
    return bytes(buf)


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


DEFAULT_POLICY = AuthPolicy()


async def no_sleep(seconds: float) -> None:
    return None


# --- the harness --------------------------------------------------------------------------------


@dataclass
class Env:
    store: SqliteStore
    services: Pop3Services
    log_text: io.StringIO
    cafile: Path
    accounts: dict[str, int]
    plain_port: int = 0
    tls_port: int = 0
    sessions: list[Pop3Session] = field(default_factory=list)
    ended: list[asyncio.Event] = field(default_factory=list)

    def client_ctx(self) -> ssl.SSLContext:
        return client_context(self.cafile)

    async def deliver(self, address: str, data: bytes) -> int:
        receipt = await deliver_bytes(self.store, data, [LocalTarget(self.accounts[address])])
        return receipt.stored[0][1]

    async def inbox(self, address: str) -> list[MessageInfo]:
        account = self.accounts[address]
        mailbox = await self.store.get_mailbox(account, "INBOX")
        assert mailbox is not None
        uids = await self.store.list_uids(account, mailbox.id)
        return await self.store.fetch_info(account, mailbox.id, [(1, uids[-1])]) if uids else []

    async def uidvalidity(self, address: str) -> int:
        mailbox = await self.store.get_mailbox(self.accounts[address], "INBOX")
        assert mailbox is not None
        return mailbox.uidvalidity

    async def all_ended(self) -> None:
        """Every session so far has finished `run()` (its lock is released by then)."""
        async with asyncio.timeout(10):
            for event in self.ended:
                await event.wait()

    async def client(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_text.getvalue().splitlines()]


def run(
    tmp_path: Path,
    scenario: Callable[[Env], Awaitable[None]],
    *,
    policy: AuthPolicy = DEFAULT_POLICY,
    command_timeout: float = 600.0,
    wrap_store: Callable[[SqliteStore], Any] | None = None,
) -> None:
    async def main() -> None:
        store = await SqliteStore.open(tmp_path / "data")
        hasher = PasswordHasher(workers=2, time_cost=1, memory_cost=8192, parallelism=1)
        servers: list[asyncio.Server] = []
        env: Env | None = None
        try:
            await store.add_domain("example.test")
            accounts = {
                address: (await store.add_account(address, await hasher.hash(pw))).id
                for address, pw in ((ALICE, ALICE_PW), (BOB, BOB_PW))
            }
            cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
            generate_self_signed(["localhost", "127.0.0.1"], cert, key)
            tls = server_context(cert, key)
            log_text = io.StringIO()
            log = EventLog(log_text)
            session_store = cast(MailStore, wrap_store(store) if wrap_store else store)
            services = Pop3Services(
                hostname=HOST,
                tls_context=tls,
                store=session_store,
                authenticator=Authenticator(store, hasher, log, policy, sleep=no_sleep),
                log=log,
                command_timeout=command_timeout,
                tls_handshake_timeout=10.0,
                maildrop_locks=set(),
            )
            env = Env(store, services, log_text, cert, accounts)

            async def handle(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, implicit: bool
            ) -> None:
                assert env is not None
                ip, port = writer.get_extra_info("peername")[:2]
                info = SessionInfo("pop3", ip, port, f"t{len(env.sessions) + 1}")
                session = Pop3Session(reader, writer, info, services, implicit_tls=implicit)
                ended = asyncio.Event()
                env.sessions.append(session)
                env.ended.append(ended)
                try:
                    await session.run()
                finally:
                    ended.set()

            plain_server = await asyncio.start_server(
                lambda r, w: handle(r, w, False), "127.0.0.1", 0
            )
            tls_server = await asyncio.start_server(
                lambda r, w: handle(r, w, True), "127.0.0.1", 0, ssl=tls
            )
            servers = [plain_server, tls_server]
            env.plain_port = plain_server.sockets[0].getsockname()[1]
            env.tls_port = tls_server.sockets[0].getsockname()[1]
            await scenario(env)
            await env.all_ended()
            assert services.maildrop_locks == set()  # every exit path releases its lock
            text = log_text.getvalue()
            assert ALICE_PW not in text and BOB_PW not in text  # never a password
        finally:
            for server in servers:
                server.close()
            if env is not None:
                for session in env.sessions:
                    session.writer.transport.abort()
                with_timeout = [e.wait() for e in env.ended]
                await asyncio.wait_for(asyncio.gather(*with_timeout), 10)
            hasher.close()
            await store.close()

    asyncio.run(main())


class Raw:
    """A blocking line-level POP3 client for byte-exact transcripts."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.sock: socket.socket = (
            tls.wrap_socket(sock, server_hostname="127.0.0.1") if tls else sock
        )
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline(1 << 20)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.line()

    def multi(self) -> bytes:
        """The rest of a multi-line response, terminator included."""
        parts = []
        while True:
            line = self.line()
            assert line, "connection closed inside a multi-line response"
            parts.append(line)
            if line == b".\r\n":
                return b"".join(parts)

    def starttls(self, tls: ssl.SSLContext) -> None:
        self.file.close()
        self.sock = tls.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.file = self.sock.makefile("rb")

    def login(self, user: str = ALICE, password: str = ALICE_PW) -> bytes:
        assert self.cmd(f"USER {user}".encode()) == b"+OK Send PASS\r\n"
        return self.cmd(f"PASS {password}".encode())

    def closed_by_server(self) -> bool:
        return self.file.read() == b""


def unstuff(body: bytes) -> bytes:
    """RFC 1939 3: drop the terminating line and one leading dot of every line."""
    assert body.endswith(b"\r\n.\r\n") or body == b".\r\n"
    lines = body[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def logged_in(count: int, octets: int) -> bytes:
    return f"+OK Logged in, {count} messages ({octets} octets)\r\n".encode()


# --- poplib -----------------------------------------------------------------------------------


def test_poplib_over_stls(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        uids = [await env.deliver(ALICE, m) for m in (SMALL, DOTTED)]
        validity = await env.uidvalidity(ALICE)

        def client() -> None:
            pop = poplib.POP3("127.0.0.1", env.plain_port, timeout=20)
            assert pop.getwelcome() == GREETING.rstrip()
            caps = pop.capa()
            assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
            assert "IMPLEMENTATION" not in caps
            pop.stls(env.client_ctx())
            caps = pop.capa()
            assert caps["SASL"] == ["PLAIN"] and "USER" in caps and "STLS" not in caps
            assert {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"} <= caps.keys()
            pop.user(ALICE)
            pop.pass_(ALICE_PW)
            assert pop.stat() == (2, len(SMALL) + len(DOTTED))
            assert pop.list()[1] == [b"1 %d" % len(SMALL), b"2 %d" % len(DOTTED)]
            assert pop.uidl()[1] == [b"%d %d.%d" % (i, validity, u) for i, u in enumerate(uids, 1)]
            for n, message in enumerate((SMALL, DOTTED), 1):
                response, lines, _ = pop.retr(n)
                assert response == b"+OK %d octets" % len(message)
                assert b"\r\n".join(lines) + b"\r\n" == message
            _, lines, _ = pop.top(2, 1)
            assert lines == [b"From: a@example.org", b"Subject: dots", b"", b".leading dot"]
            pop.dele(1)
            assert pop.quit() == b"+OK Bye"

        await env.client(client)
        await env.all_ended()
        left = await env.inbox(ALICE)
        assert [i.uid for i in left] == [uids[1]]
        assert "\\Seen" in left[0].flags  # RETR marks \Seen

    run(tmp_path, scenario)


def test_poplib_over_implicit_tls_with_a_3_mib_message(tmp_path: Path) -> None:
    big = big_message()

    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, big)

        def client() -> None:
            pop = poplib.POP3_SSL("127.0.0.1", env.tls_port, context=env.client_ctx(), timeout=30)
            assert "STLS" not in pop.capa()
            pop.user(ALICE)
            pop.pass_(ALICE_PW)
            response, lines, _ = pop.retr(1)
            assert response == b"+OK %d octets" % len(big)
            assert b"\r\n".join(lines) + b"\r\n" == big
            pop.quit()

        await env.client(client)
        assert len(await env.inbox(ALICE)) == 1  # nothing deleted

    run(tmp_path, scenario)


# --- raw transcripts: TLS and login -------------------------------------------------------------


def test_login_refused_before_stls(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        def client() -> None:
            with Raw(env.plain_port) as c:
                assert c.line() == GREETING
                assert c.cmd(b"CAPA") == b"+OK Capability list follows\r\n"
                assert c.multi() == (
                    b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nSTLS\r\n.\r\n"
                )
                assert c.cmd(b"USER " + ALICE.encode()) == USE_STLS
                assert c.cmd(b"PASS " + ALICE_PW.encode()) == USE_STLS
                assert c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW)) == USE_STLS
                assert c.cmd(b"STAT") == b"-ERR Log in first\r\n"
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"
                assert c.closed_by_server()

        await env.client(client)
        assert not any(e["event"].startswith("auth.") for e in env.events())

    run(tmp_path, scenario)


def test_stls_discards_pipelined_plaintext(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        def client() -> None:
            with Raw(env.plain_port) as c:
                assert c.line() == GREETING
                # an attacker's plaintext after STLS must not run inside the TLS session
                c.send(b"STLS\r\nUSER " + ALICE.encode() + b"\r\n")
                assert c.line() == b"+OK Begin TLS negotiation\r\n"
                c.starttls(env.client_ctx())
                assert c.cmd(b"PASS " + ALICE_PW.encode()) == b"-ERR Send USER first\r\n"
                assert c.cmd(b"STLS") == b"-ERR TLS already active\r\n"
                assert c.login() == logged_in(0, 0)
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"

        await env.client(client)
        assert any(e["event"] == "tls.established" for e in env.events())

    run(tmp_path, scenario)


@pytest.mark.parametrize("copies", [3000, 8000])  # ~78 KB: more than one read; ~200 KB
def test_stls_with_a_large_plaintext_injection(tmp_path: Path, copies: int) -> None:
    """More plaintext than one read after STLS: the session drops what its reader holds
    (without that, the rest would run as commands inside TLS); whatever is still in the
    socket then breaks the handshake. Either way no injected command runs under TLS."""

    async def scenario(env: Env) -> None:
        def client() -> None:
            with Raw(env.plain_port) as c:
                assert c.line() == GREETING
                c.send(b"STLS\r\n" + (b"USER " + ALICE.encode() + b"\r\n") * copies)
                assert c.line() == b"+OK Begin TLS negotiation\r\n"
                try:
                    c.starttls(env.client_ctx())
                    reply = c.cmd(b"PASS " + ALICE_PW.encode())
                except (ssl.SSLError, OSError):
                    return  # the handshake failed: also safe
                assert reply == b"-ERR Send USER first\r\n"

        await env.client(client)

    run(tmp_path, scenario)


def test_auth_plain_initial_response_continuation_and_cancel(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                assert c.line() == GREETING
                assert c.cmd(b"AUTH PLAIN *") == b"-ERR Authentication cancelled\r\n"
                assert c.cmd(b"AUTH PLAIN") == b"+ \r\n"
                assert c.cmd(b"*") == b"-ERR Authentication cancelled\r\n"
                assert c.cmd(b"AUTH PLAIN " + plain(ALICE, ALICE_PW)) == logged_in(1, len(SMALL))
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"
            with Raw(env.tls_port, env.client_ctx()) as c:
                assert c.line() == GREETING
                assert c.cmd(b"AUTH PLAIN") == b"+ \r\n"
                assert c.cmd(plain(ALICE, ALICE_PW, ALICE)) == logged_in(1, len(SMALL))
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                # proxy authorisation (an authzid of another user) is refused
                line = b"AUTH PLAIN " + plain(ALICE, ALICE_PW, BOB)
                assert c.cmd(line) == b"-ERR [AUTH] Authentication failed\r\n"

        await env.client(client)
        logins = [e for e in env.events() if e["event"] == "pop3.login"]
        assert [e["mechanism"] for e in logins] == ["PLAIN", "PLAIN"]

    run(tmp_path, scenario)


def test_wrong_password_then_close_after_three(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                assert c.login(ALICE, "wrong-1") == b"-ERR [AUTH] Authentication failed\r\n"
                assert (
                    c.login("nobody@example.test", "x") == b"-ERR [AUTH] Authentication failed\r\n"
                )
                assert c.login(ALICE, "wrong-3") == (
                    b"-ERR [AUTH] Authentication failed, closing connection\r\n"
                )
                assert c.closed_by_server()

        await env.client(client)
        failures = [e for e in env.events() if e["event"] == "auth.failure"]
        assert len(failures) == 3 and {e["protocol"] for e in failures} == {"pop3"}

    run(tmp_path, scenario, policy=AuthPolicy(failures_before_delay=100))


def test_locked_out_account_gets_a_temporary_error(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                assert c.login(ALICE, "wrong-1").startswith(b"-ERR [AUTH]")
                assert c.login(ALICE, "wrong-2").startswith(b"-ERR [AUTH]")
                assert c.login(ALICE, ALICE_PW) == (
                    b"-ERR [SYS/TEMP] Too many failed attempts, closing connection\r\n"
                )
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                assert c.login(ALICE, ALICE_PW) == (
                    b"-ERR [SYS/TEMP] Too many failed attempts, try again later\r\n"
                )

        await env.client(client)

    run(tmp_path, scenario, policy=AuthPolicy(failures_before_delay=100, lockout_failures=2))


# --- raw transcripts: TRANSACTION -----------------------------------------------------------------


def test_list_uidl_retr_top_byte_exact(tmp_path: Path) -> None:
    big = big_message()
    messages = [SMALL, DOTTED, big]

    async def scenario(env: Env) -> None:
        uids = [await env.deliver(ALICE, m) for m in messages]
        validity = await env.uidvalidity(ALICE)
        stored = await env.inbox(ALICE)
        assert [i.size for i in stored] == [len(m) for m in messages]

        def client() -> None:
            with Raw(env.plain_port) as c:
                c.line()
                assert c.cmd(b"STLS") == b"+OK Begin TLS negotiation\r\n"
                c.starttls(env.client_ctx())
                total = sum(map(len, messages))
                assert c.login() == logged_in(3, total)
                assert c.cmd(b"STAT") == b"+OK 3 %d\r\n" % total
                assert c.cmd(b"LIST") == b"+OK 3 messages (%d octets)\r\n" % total
                assert (
                    c.multi()
                    == b"".join(b"%d %d\r\n" % (i, len(m)) for i, m in enumerate(messages, 1))
                    + b".\r\n"
                )
                assert c.cmd(b"LIST 3") == b"+OK 3 %d\r\n" % len(big)
                assert c.cmd(b"UIDL") == b"+OK\r\n"
                assert (
                    c.multi()
                    == b"".join(b"%d %d.%d\r\n" % (i, validity, u) for i, u in enumerate(uids, 1))
                    + b".\r\n"
                )
                assert c.cmd(b"UIDL 2") == b"+OK 2 %d.%d\r\n" % (validity, uids[1])
                for n, message in enumerate(messages, 1):
                    assert c.cmd(b"RETR %d" % n) == b"+OK %d octets\r\n" % len(message)
                    body = c.multi()
                    assert unstuff(body) == message
                assert c.cmd(b"RETR 2") == b"+OK %d octets\r\n" % len(DOTTED)
                assert c.multi() == (
                    b"From: a@example.org\r\nSubject: dots\r\n\r\n..leading dot\r\n...two\r\n"
                    b"..\r\nmiddle . line\r\n..\r\nlast\r\n.\r\n"
                )
                assert c.cmd(b"TOP 2 0") == b"+OK Top of message follows\r\n"
                assert c.multi() == b"From: a@example.org\r\nSubject: dots\r\n\r\n.\r\n"
                assert c.cmd(b"TOP 2 2") == b"+OK Top of message follows\r\n"
                assert unstuff(c.multi()) == b"From: a@example.org\r\nSubject: dots\r\n\r\n" + (
                    b".leading dot\r\n..two\r\n"
                )
                assert c.cmd(b"TOP 3 1") == b"+OK Top of message follows\r\n"
                head_end = big.index(b"\r\n\r\n") + 4
                assert unstuff(c.multi()) == big[: big.index(b"\r\n", head_end) + 2]
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"

        await env.client(client)
        assert [i.uid for i in await env.inbox(ALICE)] == uids  # nothing deleted

    run(tmp_path, scenario)


def test_dele_quit_expunges(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        uids = [await env.deliver(ALICE, m) for m in (SMALL, DOTTED, SMALL)]

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.login()
                assert c.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
                assert c.cmd(b"DELE 3") == b"+OK Message 3 deleted\r\n"
                assert c.cmd(b"DELE 3") == b"-ERR Message already deleted\r\n"
                assert c.cmd(b"RETR 1") == b"-ERR No such message\r\n"
                assert c.cmd(b"STAT") == b"+OK 1 %d\r\n" % len(DOTTED)
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"
                assert c.closed_by_server()

        await env.client(client)
        assert [i.uid for i in await env.inbox(ALICE)] == [uids[1]]
        end = [e for e in env.events() if e["event"] == "pop3.end"]
        assert end[-1]["removed"] == 2 and end[-1]["reason"] == "quit"

    run(tmp_path, scenario)


def test_dele_rset_quit_keeps(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        uids = [await env.deliver(ALICE, m) for m in (SMALL, DOTTED)]

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.login()
                c.cmd(b"DELE 1")
                c.cmd(b"DELE 2")
                assert c.cmd(b"RSET") == b"+OK 2 messages (%d octets)\r\n" % (
                    len(SMALL) + len(DOTTED)
                )
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"

        await env.client(client)
        assert [i.uid for i in await env.inbox(ALICE)] == uids

    run(tmp_path, scenario)


def test_disconnect_without_quit_keeps_everything_and_frees_the_lock(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        uids = [await env.deliver(ALICE, m) for m in (SMALL, DOTTED)]

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.login()
                assert c.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
                assert c.cmd(b"DELE 2") == b"+OK Message 2 deleted\r\n"

        await env.client(client)
        await env.all_ended()
        assert env.services.maildrop_locks == set()
        assert [i.uid for i in await env.inbox(ALICE)] == uids

        def again() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                assert c.login() == logged_in(2, len(SMALL) + len(DOTTED))

        await env.client(again)

    run(tmp_path, scenario)


def test_second_login_is_refused_until_the_first_quits(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)
        first = await env.client(lambda: Raw(env.tls_port, env.client_ctx()))
        second = await env.client(lambda: Raw(env.plain_port))
        try:

            def step1() -> None:
                first.line()
                assert first.login() == logged_in(1, len(SMALL))
                second.line()
                second.cmd(b"STLS")
                second.starttls(env.client_ctx())
                assert second.login() == IN_USE  # RFC 1939 4, RFC 2449 8.1.2
                assert second.cmd(b"STAT") == b"-ERR Log in first\r\n"
                assert first.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
                assert first.cmd(b"QUIT") == b"+OK Bye\r\n"
                # the lock is released before "+OK" is sent: a retry succeeds at once
                assert second.login() == logged_in(0, 0)
                assert second.cmd(b"QUIT") == b"+OK Bye\r\n"

            await env.client(step1)
            assert any(e["event"] == "pop3.maildrop_in_use" for e in env.events())
        finally:
            first.close()
            second.close()

    run(tmp_path, scenario)


def test_users_are_walled_off(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        alice_uids = [await env.deliver(ALICE, m) for m in (SMALL, DOTTED)]
        bob_message = b"Subject: for bob\r\n\r\nbob only\r\n"
        await env.deliver(BOB, bob_message)

        def client() -> None:
            with (
                Raw(env.tls_port, env.client_ctx()) as alice,
                Raw(env.tls_port, env.client_ctx()) as bob,
            ):
                alice.line()
                bob.line()
                assert alice.login() == logged_in(2, len(SMALL) + len(DOTTED))
                # both logged in at once: the lock is per maildrop, not global
                assert bob.login(BOB, BOB_PW) == logged_in(1, len(bob_message))
                assert bob.cmd(b"RETR 2") == b"-ERR No such message\r\n"
                assert bob.cmd(b"RETR 1") == b"+OK %d octets\r\n" % len(bob_message)
                assert unstuff(bob.multi()) == bob_message
                assert bob.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
                assert bob.cmd(b"QUIT") == b"+OK Bye\r\n"
                assert alice.cmd(b"QUIT") == b"+OK Bye\r\n"

        await env.client(client)
        assert [i.uid for i in await env.inbox(ALICE)] == alice_uids
        assert await env.inbox(BOB) == []

    run(tmp_path, scenario)


def test_bad_input_gets_err_and_the_session_goes_on(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                assert c.cmd(b"X" * 300) == b"-ERR Line too long\r\n"
                assert c.cmd(b"FROB") == b"-ERR Unknown command\r\n"
                c.login()
                assert c.cmd(b"RETR 0") == b"-ERR No such message\r\n"
                assert c.cmd(b"RETR 999") == b"-ERR No such message\r\n"
                assert c.cmd(b"RETR abc") == b"-ERR Syntax error in arguments\r\n"
                assert c.cmd(b"TOP 1") == b"-ERR Syntax error in arguments\r\n"
                assert c.cmd(b"DELE 1 2") == b"-ERR Syntax error in arguments\r\n"
                assert c.cmd(b"LIST \xff") == b"-ERR Syntax error\r\n"
                assert c.cmd(b"L" * 5000) == b"-ERR Line too long\r\n"
                assert c.cmd(b"STAT") == b"+OK 1 %d\r\n" % len(SMALL)
                assert c.cmd(b"QUIT") == b"+OK Bye\r\n"

        await env.client(client)
        refused = [e for e in env.events() if e["event"] == "pop3.command.refused"]
        assert len(refused) == 9

    run(tmp_path, scenario)


def test_ten_bad_commands_in_a_row_close_the_connection(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.send(b"BAD\r\n" * 12)  # pipelined
                assert [c.line() for _ in range(9)] == [b"-ERR Unknown command\r\n"] * 9
                assert c.line() == b"-ERR Too many bad commands, closing connection\r\n"
                assert c.closed_by_server()

        await env.client(client)

    run(tmp_path, scenario)


def test_pipelined_commands(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, DOTTED)

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.send(f"USER {ALICE}\r\nPASS {ALICE_PW}\r\nSTAT\r\nRETR 1\r\nQUIT\r\n".encode())
                assert c.line() == b"+OK Send PASS\r\n"
                assert c.line() == logged_in(1, len(DOTTED))
                assert c.line() == b"+OK 1 %d\r\n" % len(DOTTED)
                assert c.line() == b"+OK %d octets\r\n" % len(DOTTED)
                assert unstuff(c.multi()) == DOTTED
                assert c.line() == b"+OK Bye\r\n"

        await env.client(client)

    run(tmp_path, scenario)


def test_snapshot_hides_messages_delivered_during_the_session(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)
        c = await env.client(lambda: Raw(env.tls_port, env.client_ctx()))
        try:
            await env.client(c.line)
            assert await env.client(c.login) == logged_in(1, len(SMALL))
            await env.deliver(ALICE, DOTTED)
            assert await env.client(lambda: c.cmd(b"STAT")) == b"+OK 1 %d\r\n" % len(SMALL)
            assert await env.client(lambda: c.cmd(b"DELE 1")) == b"+OK Message 1 deleted\r\n"
            assert await env.client(lambda: c.cmd(b"QUIT")) == b"+OK Bye\r\n"
        finally:
            c.close()
        assert [i.size for i in await env.inbox(ALICE)] == [len(DOTTED)]

    run(tmp_path, scenario)


# --- timeouts, shutdown, store failures ---------------------------------------------------------


def test_idle_timeout_closes_silently_without_update(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        uid = await env.deliver(ALICE, SMALL)

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.login()
                c.cmd(b"DELE 1")
                # RFC 1939 3: the autologout timer closes without a response or UPDATE
                assert c.closed_by_server()

        await env.client(client)
        assert [i.uid for i in await env.inbox(ALICE)] == [uid]
        assert any(e["event"] == "limit.timeout" for e in env.events())

    run(tmp_path, scenario, command_timeout=0.5)


def test_shutdown_closes_an_idle_session_with_sys_temp(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)
        plain_client = await env.client(lambda: Raw(env.plain_port))
        c = await env.client(lambda: Raw(env.tls_port, env.client_ctx()))
        try:
            assert await env.client(plain_client.line) == GREETING
            await env.client(c.line)
            assert await env.client(c.login) == logged_in(1, len(SMALL))
            for session in env.sessions:
                session.interrupt(force=False)
            assert await env.client(c.line) == SHUTTING_DOWN
            assert await env.client(c.closed_by_server)
            assert await env.client(plain_client.line) == SHUTTING_DOWN
        finally:
            c.close()
            plain_client.close()
        await env.all_ended()
        assert len(await env.inbox(ALICE)) == 1

    run(tmp_path, scenario)


class GatedStore:
    """The real store, with expunge held until the test lets it go."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.expunge_started = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def expunge(self, *args: Any, **kwargs: Any) -> list[int]:
        self.expunge_started.set()
        await self.release.wait()
        return await self.inner.expunge(*args, **kwargs)


def test_forced_shutdown_never_cuts_the_update(tmp_path: Path) -> None:
    gated: list[GatedStore] = []

    def wrap(store: SqliteStore) -> GatedStore:
        gated.append(GatedStore(store))
        return gated[0]

    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)
        c = await env.client(lambda: Raw(env.tls_port, env.client_ctx()))
        try:
            await env.client(c.line)
            await env.client(c.login)
            await env.client(lambda: c.cmd(b"DELE 1"))
            await env.client(lambda: c.send(b"QUIT\r\n"))
            await gated[0].expunge_started.wait()
            for session in env.sessions:
                session.interrupt(force=True)
                session.interrupt(force=True)
            gated[0].release.set()
            assert await env.client(c.line) == b"+OK Bye\r\n"
        finally:
            c.close()
        assert await env.inbox(ALICE) == []

    run(tmp_path, scenario, wrap_store=wrap)


class FailingStore:
    """The real store, with expunge and read_blob failing."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def expunge(self, *args: Any, **kwargs: Any) -> list[int]:
        raise StoreError("disk on fire")

    async def read_blob(self, blob_id: str, offset: int = 0, length: int = -1) -> bytes:
        raise NotFound("no such message")


def test_store_failures_give_sys_temp_and_lose_nothing(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        uids = [await env.deliver(ALICE, m) for m in (SMALL, DOTTED)]

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.login()
                assert c.cmd(b"RETR 1") == (
                    b"-ERR [SYS/TEMP] Message unavailable, try again later\r\n"
                )
                assert c.cmd(b"STAT") == b"+OK 2 %d\r\n" % (len(SMALL) + len(DOTTED))
                assert c.cmd(b"DELE 1") == b"+OK Message 1 deleted\r\n"
                assert c.cmd(b"QUIT") == (
                    b"-ERR [SYS/TEMP] Some deleted messages not removed, try again later\r\n"
                )
                assert c.closed_by_server()

        await env.client(client)
        assert [i.uid for i in await env.inbox(ALICE)] == uids
        text = env.log_text.getvalue()
        assert "pop3.update_failed" in text and "pop3.retrieve_failed" in text

    run(tmp_path, scenario, wrap_store=FailingStore)


def test_log_has_connect_login_and_end(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        await env.deliver(ALICE, SMALL)

        def client() -> None:
            with Raw(env.tls_port, env.client_ctx()) as c:
                c.line()
                c.login()
                c.cmd(b"RETR 1")
                c.multi()
                c.cmd(b"QUIT")

        await env.client(client)
        await env.all_ended()
        names = [e["event"] for e in env.events()]
        for name in ("tls.established", "auth.success", "pop3.login", "pop3.end"):
            assert name in names
        end = next(e for e in env.events() if e["event"] == "pop3.end")
        assert end["user"] == ALICE and end["retrieved"] == 1 and end["reason"] == "quit"
        assert "hello" not in env.log_text.getvalue()  # no message content

    run(tmp_path, scenario)
