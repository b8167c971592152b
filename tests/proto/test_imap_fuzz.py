"""Property tests of the IMAP core, parser and wire helpers, with Hypothesis.

Oracles (DESIGN.md 2.1): whatever the client sends, the core yields only its defined
events and raises nothing but ImapProtocolError (and, driven by a correct session, not
even that); every line it queues is a well-formed response (RFC 9051 7); how the input
is cut into reads changes nothing (apart from how APPEND chunks are cut); the parser
raises only ImapParseError; strings the serialiser writes parse back to the same value;
modified UTF-7 (RFC 3501 5.1.3) round-trips and is canonical.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import random
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailward.proto.imap import (
    COMMAND_TABLE,
    AppendAborted,
    AppendChunk,
    AppendEnd,
    AppendStart,
    AuthenticateResponse,
    CommandError,
    CommandReceived,
    ConnectionClosed,
    IdleDone,
    ImapEvent,
    ImapProtocolError,
    ImapServer,
    ImapSettings,
    ImapState,
    NeedData,
)
from mailward.proto.imap_commands import (
    Command,
    ImapParseError,
    Login,
    SequenceSet,
    parse_append_head,
    parse_command,
)
from mailward.proto.imap_wire import (
    astring,
    decode_mutf7,
    encode_mutf7,
    quote_or_literal,
)

EVENT_TYPES = (
    CommandReceived,
    CommandError,
    AppendStart,
    AppendChunk,
    AppendEnd,
    AppendAborted,
    AuthenticateResponse,
    IdleDone,
    ConnectionClosed,
)
# every line the core or the simulated session below queues: continuation, untagged or
# tagged status (no literals are sent by either)
RESPONSE_LINE = re.compile(
    rb"(?:\+ [^\r\n]*|\* (?:OK|NO|BAD|BYE) [^\r\n]+|[!-~]+ (?:OK|NO|BAD) [^\r\n]+)\r\n"
)


class Outcome:
    def __init__(self) -> None:
        self.events: list[ImapEvent] = []
        self.out = b""
        self.error: str | None = None
        self.tls = False


class _Stop(Exception):
    pass


def react(srv: ImapServer, event: ImapEvent, result: Outcome, tags: dict[str, str]) -> None:
    """A minimal correct session: every command succeeds; state, IDLE, AUTHENTICATE,
    STARTTLS and APPEND are handled as the calling protocol requires."""
    if isinstance(event, CommandReceived):
        cmd = event.command
        ok = f"{cmd.tag} OK done\r\n".encode()
        if cmd.name == "AUTHENTICATE":
            assert srv.state is ImapState.NOT_AUTHENTICATED
            if getattr(cmd.args, "initial_response", None) is None:
                tags["auth"] = cmd.tag
                srv.send(b"+ \r\n")
                srv.expect_authenticate_response()
                return
            srv.set_state(ImapState.AUTHENTICATED)
        elif cmd.name == "LOGIN":
            srv.set_state(ImapState.AUTHENTICATED)
        elif cmd.name in ("SELECT", "EXAMINE"):
            srv.set_state(ImapState.SELECTED)
        elif cmd.name in ("CLOSE", "UNSELECT"):
            srv.set_state(ImapState.AUTHENTICATED)
        elif cmd.name == "IDLE":
            srv.send(b"+ idling\r\n")
            srv.expect_idle_done()
            return
        elif cmd.name == "STARTTLS":
            srv.send(ok)
            result.tls = True
            srv.tls_established()
            return
        elif cmd.name == "LOGOUT":
            srv.send(b"* BYE bye\r\n" + ok)
            srv.set_state(ImapState.LOGOUT)
            return
        srv.send(ok)
    elif isinstance(event, AuthenticateResponse):
        tag = tags.pop("auth")
        if event.data is not None:
            srv.set_state(ImapState.AUTHENTICATED)
            srv.send(f"{tag} OK done\r\n".encode())
        else:
            srv.send(f"{tag} BAD cancelled\r\n".encode())
    elif isinstance(event, IdleDone):
        if event.valid:
            srv.send(f"{event.tag} OK done\r\n".encode())
    elif isinstance(event, AppendStart):
        if event.size <= 10:
            srv.accept_literal()
        else:
            srv.reject_literal(f"{event.tag} NO [TOOBIG] too big\r\n".encode())
    elif isinstance(event, AppendEnd):
        srv.send(f"{event.tag} OK done\r\n".encode())


def drive(srv: ImapServer, pieces: list[bytes]) -> Outcome:
    result = Outcome()
    tags: dict[str, str] = {}
    try:
        for piece in pieces:
            srv.receive_data(piece)
            while not isinstance(event := srv.next_event(), NeedData):
                assert isinstance(event, EVENT_TYPES)
                result.events.append(event)
                if isinstance(event, ConnectionClosed):
                    raise _Stop
                react(srv, event, result, tags)
    except _Stop:
        pass
    except ImapProtocolError as exc:  # the one error type the core may raise
        result.error = str(exc)
    result.out = srv.data_to_send()
    return result


def check_output(out: bytes) -> None:
    pos = 0
    while pos < len(out):
        m = RESPONSE_LINE.match(out, pos)
        assert m is not None, out[pos : pos + 80]
        pos = m.end()


def merged(events: list[ImapEvent]) -> list[ImapEvent]:
    """Events with adjacent APPEND chunks joined (their cut depends on the reads)."""
    out: list[ImapEvent] = []
    for e in events:
        if isinstance(e, AppendChunk) and out and isinstance(out[-1], AppendChunk):
            out[-1] = AppendChunk(out[-1].data + e.data)
        else:
            out.append(e)
    return out


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *marks, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


PLAIN = base64.b64encode(b"\x00user\x00pass")
TOKENS = [
    b"a1 NOOP\r\n",
    b"a2 CAPABILITY\r\n",
    b"a3 LOGIN user pass\r\n",
    b"a4 LOGIN {4}\r\n",
    b"user {4}\r\npass\r\n",
    b"a5 LOGIN {4+}\r\nuser {4+}\r\npass\r\n",
    b"a6 AUTHENTICATE PLAIN\r\n",
    PLAIN + b"\r\n",
    b"*\r\n",
    b"a7 AUTHENTICATE PLAIN " + PLAIN + b"\r\n",
    b"a8 SELECT INBOX\r\n",
    b"a9 EXAMINE {5}\r\nINBOX\r\n",
    b"b1 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)]<0.10>)\r\n",
    b"b2 UID SEARCH CHARSET UTF-8 OR SEEN (FROM {3}\r\nabc)\r\n",
    b"b3 STORE 1 +FLAGS (\\Seen)\r\n",
    b"b4 APPEND INBOX {5}\r\n",
    b"hello\r\n",
    b"b5 APPEND INBOX (\\Seen) {5+}\r\nhello\r\n",
    b"b6 APPEND INBOX ~{3}\r\n\x00\x01\x02\r\n",
    b"b7 APPEND INBOX {30+}\r\n",
    b"b8 IDLE\r\n",
    b"DONE\r\n",
    b"b9 CLOSE\r\n",
    b"c1 UNSELECT\r\n",
    b"c2 STARTTLS\r\n",
    b"c3 LOGOUT\r\n",
    b"c4 ENABLE QRESYNC\r\n",
    b'c5 LIST "" *\r\n',
    b"c6 ID NIL\r\n",
    b"c7 SEARCH " + b"NOT " * 40 + b"ALL\r\n",
    b"c8 SEARCH CHARSET KOI8-R ALL\r\n",
    b"{5}\r\n",
    b"{5+}\r\n",
    b"{0}\r\n",
    b"{99999999999+}\r\n",
    b"~{2}\r\n",
    b"x" * 70,
    b"\r\n",
    b"\n",
    b"\r",
    b"(",
    b")",
    b'"',
    b" ",
    b"\xff",
]
SETTINGS = st.fixed_dictionaries(
    {
        "max_line": st.sampled_from([40, 1000]),
        "max_literal": st.sampled_from([10, 1000]),
        "max_command": st.sampled_from([60, 5000]),
        "append_limit": st.sampled_from([4, 100]),
        "literal_plus": st.booleans(),
        "max_bad_commands": st.sampled_from([3, 1000]),
        "max_depth": st.sampled_from([8, 32]),
        "tls_active": st.booleans(),
        "starttls": st.booleans(),
    }
)
OPENINGS = [b"", b"o1 LOGIN user pass\r\n", b"o1 LOGIN user pass\r\no2 SELECT INBOX\r\n"]
INPUT = st.builds(
    lambda opening, parts: opening + b"".join(parts),
    st.sampled_from(OPENINGS),
    st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=30)), max_size=40),
)


def new_server(config: dict[str, Any]) -> ImapServer:
    return ImapServer(ImapSettings(**config))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=SETTINGS, data=INPUT, points=st.lists(st.integers(min_value=0), max_size=12))
def test_any_input_whole_and_split(config: dict[str, Any], data: bytes, points: list[int]) -> None:
    whole = drive(new_server(config), [data])
    split = drive(new_server(config), cut(data, points))
    for result in (whole, split):
        assert result.error is None  # a correct session never triggers ImapProtocolError
        check_output(result.out)
    if not whole.tls:  # after STARTTLS, what is discarded depends on when it arrived
        assert merged(whole.events) == merged(split.events)
        assert whole.out == split.out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=SETTINGS, data=INPUT)
def test_one_byte_at_a_time(config: dict[str, Any], data: bytes) -> None:
    whole = drive(new_server(config), [data])
    bytewise = drive(new_server(config), [data[i : i + 1] for i in range(len(data))])
    assert bytewise.error is None
    check_output(bytewise.out)
    if not whole.tls:
        assert merged(whole.events) == merged(bytewise.events)
        assert whole.out == bytewise.out


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=400), config=SETTINGS)
def test_random_bytes(data: bytes, config: dict[str, Any]) -> None:
    result = drive(new_server(config), [data])
    assert result.error is None
    check_output(result.out)


def test_seeded_random_sessions() -> None:
    """Longer inputs than the Hypothesis tests build, from a fixed seed: whole, split at
    random points and one byte at a time give the same events and output."""
    rng = random.Random(9051)
    for _ in range(300):
        parts = [
            rng.choice(TOKENS) if rng.random() < 0.8 else rng.randbytes(rng.randint(0, 30))
            for _ in range(rng.randint(0, 60))
        ]
        data = rng.choice(OPENINGS) + b"".join(parts)
        config = {
            "max_line": rng.choice([40, 1000]),
            "max_literal": rng.choice([10, 1000]),
            "max_command": rng.choice([60, 5000]),
            "append_limit": rng.choice([4, 100]),
            "literal_plus": rng.random() < 0.5,
            "max_bad_commands": rng.choice([3, 1000]),
            "max_depth": rng.choice([8, 32]),
            "tls_active": rng.random() < 0.5,
            "starttls": rng.random() < 0.5,
        }
        whole = drive(new_server(config), [data])
        split = drive(new_server(config), cut(data, [rng.randint(0, 10**6) for _ in range(12)]))
        bytewise = drive(new_server(config), [data[i : i + 1] for i in range(len(data))])
        for result in (whole, split, bytewise):
            assert result.error is None
            check_output(result.out)
        if not whole.tls:
            assert merged(whole.events) == merged(split.events) == merged(bytewise.events)
            assert whole.out == split.out == bytewise.out


@settings(max_examples=100, deadline=None)
@given(
    message=st.binary(max_size=3000),
    points=st.lists(st.integers(min_value=0), max_size=20),
    sync=st.booleans(),
    binary=st.booleans(),
)
def test_append_round_trip(message: bytes, points: list[int], sync: bool, binary: bool) -> None:
    srv = ImapServer(ImapSettings(literal_plus=True))
    srv.set_state(ImapState.AUTHENTICATED)
    marker = b"~" * binary + b"{%d%s}" % (len(message), b"" if sync else b"+")
    wire = b"a APPEND INBOX " + marker + b"\r\n" + message + b"\r\nb NOOP\r\n"
    events: list[ImapEvent] = []
    for piece in cut(wire, points):
        srv.receive_data(piece)
        while not isinstance(event := srv.next_event(), NeedData):
            events.append(event)
            if isinstance(event, AppendStart):
                assert (event.size, event.binary, event.synchronizing) == (
                    len(message),
                    binary,
                    sync,
                )
                srv.accept_literal()
    data = b"".join(e.data for e in events if isinstance(e, AppendChunk))
    assert data == message
    assert [type(e) for e in events if not isinstance(e, AppendChunk)] == [
        AppendStart,
        AppendEnd,
        CommandReceived,
    ]
    assert srv.data_to_send() == (b"+ Ready for literal data\r\n" if sync else b"")


# --- the state table holds whatever the arguments --------------------------------------------

STATES = [ImapState.NOT_AUTHENTICATED, ImapState.AUTHENTICATED, ImapState.SELECTED]


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(STATES),
    name=st.sampled_from(sorted(COMMAND_TABLE)),
    arg=st.binary(max_size=40).filter(lambda b: b"\n" not in b and not b.endswith(b"}")),
    case=st.sampled_from([str.upper, str.lower, str.title]),
)
def test_state_refusal_comes_before_argument_checks(
    state: ImapState, name: str, arg: bytes, case: Any
) -> None:
    srv = ImapServer()
    srv.set_state(state)
    srv.receive_data(b"t " + case(name).encode() + b" " + arg + b"\r\n")
    event = srv.next_event()
    cell = COMMAND_TABLE[name][STATES.index(state)]
    if cell is not None:
        line = b"t BAD " + cell.encode() + b"\r\n"
        assert event == CommandError("t", line)
        assert srv.data_to_send() == line
    else:
        assert isinstance(event, CommandReceived | CommandError)


# --- parser ----------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(
    [
        b"t ",
        b"UID ",
        b"FETCH ",
        b"SEARCH ",
        b"STORE ",
        b"SELECT ",
        b"LIST ",
        b"APPEND ",
        b"LOGIN ",
        b"ID ",
        b"1:*",
        b"$",
        b"*",
        b",",
        b"(",
        b")",
        b"[",
        b"]",
        b"<0.1>",
        b" ",
        b'"x"',
        b"{3}\r\nabc",
        b"{9}\r\n",
        b"~{1}\r\n\x00",
        b"BODY",
        b".PEEK",
        b"HEADER.FIELDS",
        b"NOT ",
        b"OR ",
        b"ALL",
        b"CHARSET ",
        b"RETURN ",
        b"+FLAGS ",
        b"\\Seen",
        b"NIL",
        b"INBOX",
        b"QRESYNC",
        b"CHANGEDSINCE 1",
        b'"1-Jan-2020 00:00:00 +0000"',
        b"\xff",
        b"\x00",
    ]
)


@settings(max_examples=500, deadline=None)
@given(parts=st.lists(FRAGMENTS, max_size=25))
def test_parser_raises_only_its_error(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    for parse in (parse_command, parse_append_head):
        try:
            parse(raw)
        except ImapParseError as exc:
            assert exc.text and exc.status in ("BAD", "NO")
            assert not re.search(r"[\r\n\x00]", exc.text)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200))
def test_parser_random_bytes(raw: bytes) -> None:
    with contextlib.suppress(ImapParseError):
        parse_command(b"t " + raw)


@settings(max_examples=300, deadline=None)
@given(
    user=st.text().filter(lambda s: "\x00" not in s),
    password=st.text().filter(lambda s: "\x00" not in s),
)
def test_serialised_strings_parse_back(user: str, password: str) -> None:
    raw = b"t LOGIN " + astring(user) + b" " + quote_or_literal(password)
    assert parse_command(raw) == Command("t", "LOGIN", False, Login(user, password))


@given(
    ranges=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=8),
    largest=st.integers(0, 30),
)
def test_sequence_set_resolve_properties(ranges: list[tuple[int, int]], largest: int) -> None:
    s = SequenceSet(tuple(ranges))  # 0 stands for "*"
    resolved = s.resolve(largest)
    for lo, hi in resolved:
        assert 1 <= lo <= hi
    for (_, hi), (lo, _) in itertools.pairwise(resolved):
        assert lo > hi + 1  # sorted, disjoint, not adjacent
    for n in range(45):
        assert s.contains(n, largest) == any(lo <= n <= hi for lo, hi in resolved)
    # the text form parses back to the same set
    fetch = parse_command(b"t FETCH " + str(s).encode() + b" UID").args
    assert getattr(fetch, "set", None) == s


# --- modified UTF-7 --------------------------------------------------------------------------


@given(name=st.text())
def test_mutf7_round_trip(name: str) -> None:
    encoded = encode_mutf7(name)
    assert encoded.isascii() and all(" " <= c <= "~" for c in encoded)
    assert decode_mutf7(encoded) == name


@given(encoded=st.text(alphabet=st.sampled_from("&-AZaz09+,/=éb ~\t"), max_size=20))
def test_mutf7_decode_is_strict_and_canonical(encoded: str) -> None:
    try:
        name = decode_mutf7(encoded)
    except ValueError:
        return
    assert encode_mutf7(name) == encoded  # only the canonical form is accepted
