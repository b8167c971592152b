"""Property tests of the POP3 server core (proto.pop3), with Hypothesis.

Oracles (DESIGN.md 2.1): whatever the client sends, the core raises nothing but
Pop3ProtocolError (and, driven correctly, not even that); how the input is cut into
reads changes nothing (fed whole, in random pieces, one byte at a time); every
(state, command) pair does what COMMAND_TABLE says (RFC 1939 3); and a retrieved
message, however the shell cuts it into chunks, is byte-stuffed so that un-stuffing
gives back exactly the stored octets (RFC 1939 3), TOP exactly the RFC 1939 7 excerpt.
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailward.proto.pop3 import (
    COMMAND_TABLE,
    CommandRefused,
    ConnectionClosed,
    Credentials,
    LoginRefusal,
    NeedData,
    Pop3Event,
    Pop3Message,
    Pop3ProtocolError,
    Pop3Server,
    Pop3Settings,
    Pop3State,
    Retrieve,
    StartTls,
    Update,
)

HOST = "pop.example.test"
MESSAGES = [
    b"Subject: a\r\n\r\nbody\r\n",
    b"A: b\r\n\r\n.\r\n..\r\n.x\r\n",
    b"no blank line, no line end",
    b"",
]
SNAPSHOT = [Pop3Message(len(m), f"9.{i}") for i, m in enumerate(MESSAGES, 1)]


class Outcome:
    def __init__(self) -> None:
        self.events: list[Pop3Event] = []
        self.out = b""
        self.error: str | None = None
        self.tls = False


def drive(srv: Pop3Server, pieces: list[bytes], chunk: int = 5) -> Outcome:
    """Feed the pieces like the shell does. Logins as bad@x fail, others succeed."""
    result = Outcome()
    try:
        for piece in pieces:
            srv.receive_data(piece)
            while not isinstance(event := srv.next_event(), NeedData):
                result.events.append(event)
                if isinstance(event, ConnectionClosed):
                    raise StopIteration
                if isinstance(event, StartTls):
                    result.tls = True
                    srv.tls_established()
                elif isinstance(event, Credentials):
                    if event.username == "bad@x":
                        srv.refuse_login(LoginRefusal.FAILED)
                    else:
                        srv.accept_login(SNAPSHOT)
                elif isinstance(event, Retrieve):
                    data = MESSAGES[event.number - 1]
                    for i in range(0, len(data), chunk):
                        if not srv.send_message_data(data[i : i + chunk]):
                            break
                    srv.end_message()
                elif isinstance(event, Update):
                    srv.finish_update(True)
    except StopIteration:
        pass
    except Pop3ProtocolError as exc:  # the one error type the core may raise
        result.error = str(exc)
    result.out = srv.data_to_send()
    return result


def check_output(out: bytes) -> None:
    """Whole lines only, starting with a status line: +OK / -ERR / "+ " (RFC 1939 3)."""
    if out:
        assert out.endswith(b"\r\n")
        assert out.startswith((b"+OK", b"-ERR ", b"+ "))


def new_server(config: dict[str, Any]) -> Pop3Server:
    srv = Pop3Server(Pop3Settings(HOST, **config))
    check_output(srv.data_to_send())
    return srv


PLAIN = base64.b64encode(b"\x00user@x\x00pass")
TOKENS = [
    b"CAPA\r\n",
    b"STLS\r\n",
    b"USER user@x\r\n",
    b"USER bad@x\r\n",
    b"PASS secret word\r\n",
    b"AUTH PLAIN " + PLAIN + b"\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH\r\n",
    PLAIN + b"\r\n",
    b"*\r\n",
    b"STAT\r\n",
    b"LIST\r\n",
    b"LIST 2\r\n",
    b"UIDL\r\n",
    b"UIDL 1\r\n",
    b"RETR 1\r\n",
    b"RETR 2\r\n",
    b"RETR 3\r\n",
    b"RETR 4\r\n",
    b"RETR 9\r\n",
    b"TOP 1 0\r\n",
    b"TOP 2 1\r\n",
    b"DELE 1\r\n",
    b"DELE 2\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"\r\n",
    b"\r",
    b"\n",
    b" ",
    b"x" * 300,
    b"\xff\xfe",
    "ü".encode(),
]
LOGIN = b"USER user@x\r\nPASS pw\r\n"
OPENINGS = [b"", LOGIN, LOGIN + b"DELE 1\r\n"]
SETTINGS = st.fixed_dictionaries(
    {
        "tls_active": st.booleans(),
        "tls_available": st.booleans(),
        "max_bad_commands": st.sampled_from([3, 10, 1000]),
        "max_commands": st.sampled_from([15, 1000]),
        "max_auth_failures": st.sampled_from([1, 3]),
    }
)
INPUT = st.builds(
    lambda opening, parts: opening + b"".join(parts),
    st.sampled_from(OPENINGS),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=20)), max_size=40),
)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *marks, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=SETTINGS,
    data=INPUT,
    points=st.lists(st.integers(min_value=0), max_size=12),
    chunk=st.integers(min_value=1, max_value=40),
)
def test_any_input_whole_and_split(
    config: dict[str, Any], data: bytes, points: list[int], chunk: int
) -> None:
    whole = drive(new_server(config), [data], chunk)
    split = drive(new_server(config), cut(data, points), chunk)
    for result in (whole, split):
        assert result.error is None  # a correct shell never triggers Pop3ProtocolError
        check_output(result.out)
    if not whole.tls:  # after STLS, what is discarded depends on when it arrived
        assert whole.events == split.events
        assert whole.out == split.out


@settings(max_examples=80, deadline=None)
@given(config=SETTINGS, data=INPUT)
def test_one_byte_at_a_time(config: dict[str, Any], data: bytes) -> None:
    whole = drive(new_server(config), [data])
    bytewise = drive(new_server(config), [data[i : i + 1] for i in range(len(data))])
    assert bytewise.error is None
    check_output(bytewise.out)
    if not whole.tls:
        assert whole.events == bytewise.events
        assert whole.out == bytewise.out


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), config=SETTINGS)
def test_random_bytes(data: bytes, config: dict[str, Any]) -> None:
    result = drive(new_server(config), [data])
    assert result.error is None
    check_output(result.out)
    assert all(
        isinstance(e, CommandRefused | ConnectionClosed | StartTls | Credentials)
        for e in result.events
    )


@settings(max_examples=100, deadline=None)
@given(data=INPUT, config=SETTINGS)
def test_misdriven_core_raises_only_its_own_error(data: bytes, config: dict[str, Any]) -> None:
    """A shell that ignores decisions gets Pop3ProtocolError, never anything else."""
    srv = new_server(config)
    srv.receive_data(data)
    try:
        for _ in range(5):
            srv.next_event()
        srv.accept_login(SNAPSHOT)
        srv.send_message_data(b"x")
        srv.end_message()
        srv.finish_update(False)
        srv.tls_established()
    except Pop3ProtocolError:
        pass


# --- every (state, command) pair (RFC 1939 3) ----------------------------------------------------

VALID = {
    "USER": b"USER a@b.example\r\n",
    "PASS": b"PASS pw\r\n",
    "AUTH": b"AUTH PLAIN " + PLAIN + b"\r\n",
    "STLS": b"STLS\r\n",
    "CAPA": b"CAPA\r\n",
    "QUIT": b"QUIT\r\n",
    "STAT": b"STAT\r\n",
    "LIST": b"LIST 1\r\n",
    "RETR": b"RETR 1\r\n",
    "TOP": b"TOP 1 1\r\n",
    "DELE": b"DELE 1\r\n",
    "NOOP": b"NOOP\r\n",
    "RSET": b"RSET\r\n",
    "UIDL": b"UIDL 1\r\n",
}
COLUMNS = [Pop3State.AUTHORIZATION, Pop3State.TRANSACTION]
LOGIN_VERBS = {"USER", "PASS", "AUTH"}


def server_in(state: Pop3State, verb: str) -> Pop3Server:
    # STLS needs TLS to be absent; everything after a login has TLS
    plain = verb == "STLS" and state is Pop3State.AUTHORIZATION
    srv = new_server({"tls_active": not plain})
    if state is Pop3State.TRANSACTION:
        drive(srv, [LOGIN])
    elif verb == "PASS":
        drive(srv, [b"USER a@b.example\r\n"])
    assert srv.state is state
    return srv


def test_table_covers_every_command() -> None:
    assert set(COMMAND_TABLE) == set(VALID)


@pytest.mark.parametrize("state", COLUMNS, ids=lambda s: s.value)
@pytest.mark.parametrize("verb", sorted(VALID))
def test_state_command_pair(state: Pop3State, verb: str) -> None:
    srv = server_in(state, verb)
    cell = COMMAND_TABLE[verb][COLUMNS.index(state)]
    result = drive(srv, [VALID[verb]])
    assert result.error is None
    check_output(result.out)
    refusals = [e for e in result.events if isinstance(e, CommandRefused)]
    if isinstance(cell, str):
        if verb == "STLS":  # the capability check comes first: TLS is on after a login
            assert result.out == b"-ERR TLS already active\r\n"
        else:
            assert result.out == f"-ERR {cell}\r\n".encode()
            assert refusals == [CommandRefused(verb, "not valid in this state")]
        assert srv.state is state
        assert srv.phase == "command"
        return
    assert refusals == []
    assert result.out.startswith(b"+")
    if verb in LOGIN_VERBS - {"USER"}:
        assert srv.state is Pop3State.TRANSACTION
    elif verb == "QUIT":
        assert srv.phase == "closed"
        expected = Pop3State.UPDATE if state is Pop3State.TRANSACTION else state
        assert srv.state is expected
    else:
        assert srv.state is state


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(COLUMNS),
    verb=st.sampled_from(sorted(VALID)),
    arg=st.text(max_size=40),
    case=st.sampled_from([str.upper, str.lower, str.title]),
)
def test_state_command_pair_any_argument(state: Pop3State, verb: str, arg: str, case: Any) -> None:
    srv = server_in(state, verb)
    line = (case(verb) + " " + arg).encode("utf-8", "surrogatepass") + b"\r\n"
    result = drive(srv, [line])
    assert result.error is None
    check_output(result.out)
    cell = COMMAND_TABLE[verb][COLUMNS.index(state)]
    if isinstance(cell, str) and not re.search(r"[\x00-\x1f\x7f\ud800-\udfff]", arg):
        # the state check comes before any look at the argument
        if verb != "STLS":
            assert result.out == f"-ERR {cell}\r\n".encode()
        assert srv.state is state


# --- RETR / TOP content: dot-stuffing round trip (RFC 1939 3, 7) ---------------------------------

LINE = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))
ENDING = st.sampled_from([b"\r\n", b"\r\n", b"\n", b""])
BODY_LINE = st.one_of(LINE, st.sampled_from([b".", b"..", b".x", b"", b"\r"]))
MESSAGE = st.builds(
    lambda lines, end: b"\r\n".join(lines) + end,
    st.lists(BODY_LINE, max_size=25),
    ENDING,
)
LINES = re.compile(rb"[^\n]*\n|[^\n]+\Z")


def stream(srv: Pop3Server, message: bytes, points: list[int]) -> bytes:
    srv.receive_data(b"")
    for piece in cut(message, points):
        if not srv.send_message_data(piece):
            break
    srv.end_message()
    return srv.data_to_send()


def server_with(message: bytes, command: bytes) -> tuple[Pop3Server, Retrieve]:
    srv = Pop3Server(Pop3Settings(HOST, tls_active=True))
    srv.receive_data(LOGIN + command)
    assert isinstance(srv.next_event(), Credentials)
    srv.accept_login([Pop3Message(len(message), "1.1")])
    event = srv.next_event()
    assert isinstance(event, Retrieve)
    srv.data_to_send()
    return srv, event


def unstuff(response: bytes) -> bytes:
    status, _, rest = response.partition(b"\r\n")
    assert status.startswith(b"+OK")
    assert rest.endswith(b".\r\n")
    body = rest[:-3]
    lines = LINES.findall(body)
    assert b"".join(lines) == body
    # no line but the terminator is "." alone, for clients splitting on CRLF or LF
    for line in lines:
        if line.startswith(b"."):
            assert line.startswith(b"..")
    assert body == b"" or body.endswith(b"\r\n")
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines)


def with_crlf(data: bytes) -> bytes:
    return data if data == b"" or data.endswith(b"\r\n") else data + b"\r\n"


@settings(max_examples=400, deadline=None)
@given(message=MESSAGE, points=st.lists(st.integers(min_value=0), max_size=10))
def test_retr_round_trip(message: bytes, points: list[int]) -> None:
    srv, _ = server_with(message, b"RETR 1\r\n")
    response = stream(srv, message, points)
    assert response.startswith(f"+OK {len(message)} octets\r\n".encode())
    assert unstuff(response) == with_crlf(message)


def top_reference(message: bytes, k: int) -> bytes:
    """RFC 1939 7: the header lines, the blank line, then k body lines."""
    lines = LINES.findall(message)
    for i, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            return b"".join(lines[: i + 1 + k])
    return message


HEADERS = st.lists(st.sampled_from([b"A: b", b"C: .d", b".E: f", b"", b"\r", b" g"]), max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    head=HEADERS,
    message=MESSAGE,
    k=st.integers(min_value=0, max_value=30),
    points=st.lists(st.integers(min_value=0), max_size=10),
    bare_lf=st.booleans(),
)
def test_top_matches_reference(
    head: list[bytes], message: bytes, k: int, points: list[int], bare_lf: bool
) -> None:
    eol = b"\n" if bare_lf else b"\r\n"
    full = b"".join(h + eol for h in head) + message
    srv, event = server_with(full, f"TOP 1 {k}\r\n".encode())
    assert event == Retrieve(1, k)
    response = stream(srv, full, points)
    assert response.startswith(b"+OK Top of message follows\r\n")
    assert unstuff(response) == with_crlf(top_reference(full, k))
