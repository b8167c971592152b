"""Property tests of the SMTP server core (proto.smtp), with Hypothesis.

Oracles (DESIGN.md 2.1): whatever the client sends, the core raises nothing but
SmtpProtocolError (and, driven correctly, not even that); every reply is well-formed
(RFC 5321 4.2); how the input is cut into reads changes nothing; and every
(session state, command) pair does what COMMAND_TABLE says (RFC 5321 4.1.4).
"""

from __future__ import annotations

import base64
import itertools
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailward.proto.replies import AUTH_OK, MESSAGE_ACCEPTED, RECIPIENT_OK, SENDER_OK, Reply
from mailward.proto.smtp import (
    COMMAND_TABLE,
    SessionState,
    SmtpProtocolError,
    SmtpServer,
    SmtpSettings,
)
from mailward.proto.smtp_events import (
    AuthCredentials,
    CommandRefused,
    ConnectionClosed,
    MailFrom,
    MessageChunk,
    MessageEnd,
    NeedData,
    RcptTo,
    SmtpEvent,
    StartTls,
)

from . import merged

ANSWERS: dict[type, Reply] = {
    MailFrom: SENDER_OK,
    RcptTo: RECIPIENT_OK,
    MessageEnd: MESSAGE_ACCEPTED,
    AuthCredentials: AUTH_OK,
}
REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")


class Outcome:
    def __init__(self) -> None:
        self.events: list[SmtpEvent] = []
        self.out = b""
        self.error: str | None = None
        self.tls = False


def drive(srv: SmtpServer, pieces: list[bytes]) -> Outcome:
    """Feed the pieces like the shell does; answer every decision positively."""
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
                answer = ANSWERS.get(type(event))
                if answer is not None:
                    srv.send_reply(answer)
    except StopIteration:
        pass
    except SmtpProtocolError as exc:  # the one error type the core may raise
        result.error = str(exc)
    result.out = srv.data_to_send()
    return result


def check_replies(out: bytes) -> None:
    """Output is a sequence of RFC 5321 4.2 reply lines; a multi-line reply keeps its code."""
    pos = 0
    pending: bytes | None = None
    while pos < len(out):
        m = REPLY_LINE.match(out, pos)
        assert m is not None, out[pos : pos + 80]
        code, sep, text = m.groups()
        assert pending is None or pending == code
        pending = code if sep == b"-" else None
        if code == b"334":
            assert re.fullmatch(rb"[A-Za-z0-9+/=]*", text)
        pos = m.end()
    assert pending is None


PLAIN = base64.b64encode(b"\x00user\x00pass")
TOKENS = [
    b"EHLO c.example\r\n",
    b"HELO c.example\r\n",
    b"MAIL FROM:<a@b.example>\r\n",
    b"MAIL FROM:<> SIZE=20 SMTPUTF8\r\n",
    b"RCPT TO:<c@d.example>\r\n",
    b"RCPT TO:<postmaster>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"AUTH PLAIN " + PLAIN + b"\r\n",
    PLAIN + b"\r\n",
    b"*\r\n",
    b"QUIT\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"..",
    b"\r\n",
    b"\r",
    b"\n",
    b".",
    b"x" * 700,
    b"\xff\xfe",
    "ü".encode(),
]
SETTINGS = st.fixed_dictionaries(
    {
        "max_message_size": st.sampled_from([10, 100, 5000, 5000]),
        "max_recipients": st.sampled_from([1, 3]),
        "max_bad_commands": st.sampled_from([3, 1000]),
        "max_commands": st.sampled_from([20, 1000]),
        "tls_active": st.booleans(),
        "auth_enabled": st.booleans(),
        "auth_required": st.sampled_from([False, False, True]),
        "bare_line_endings": st.sampled_from(["reject", "normalize"]),
        "chunking": st.booleans(),
    }
)
OPENINGS = [
    b"",
    b"EHLO c.example\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
]
BODY = st.sampled_from([b"line\r\n", b"\r\n.\r\n", b".\r\n", b"..", b"\r\n", b"\r", b"\n"])
INPUT = st.builds(
    lambda opening, parts: opening + b"".join(parts),
    st.sampled_from(OPENINGS),
    st.lists(
        st.one_of(st.sampled_from(TOKENS), BODY, st.binary(max_size=30)),
        max_size=40,
    ),
)


def new_server(config: dict[str, Any]) -> SmtpServer:
    srv = SmtpServer(SmtpSettings("mx.example.test", **config))
    check_replies(srv.data_to_send())
    return srv


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *marks, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=SETTINGS, data=INPUT, points=st.lists(st.integers(min_value=0), max_size=12))
def test_any_input_whole_and_split(config: dict[str, Any], data: bytes, points: list[int]) -> None:
    whole = drive(new_server(config), [data])
    split = drive(new_server(config), cut(data, points))
    for result in (whole, split):
        assert result.error is None  # a correct shell never triggers SmtpProtocolError
        check_replies(result.out)
    if not whole.tls:  # after STARTTLS, what is discarded depends on when it arrived
        assert merged(whole.events) == merged(split.events)
        assert whole.out == split.out


@settings(max_examples=60, deadline=None)
@given(config=SETTINGS, data=INPUT)
def test_one_byte_at_a_time(config: dict[str, Any], data: bytes) -> None:
    whole = drive(new_server(config), [data])
    bytewise = drive(new_server(config), [data[i : i + 1] for i in range(len(data))])
    check_replies(bytewise.out)
    if not whole.tls:
        assert merged(whole.events) == merged(bytewise.events)
        assert whole.out == bytewise.out


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), config=SETTINGS)
def test_random_bytes(data: bytes, config: dict[str, Any]) -> None:
    result = drive(new_server(config), [data])
    assert result.error is None
    check_replies(result.out)


# --- every (session state, command) pair -------------------------------------------------

SETUP = {
    SessionState.INIT: b"",
    SessionState.READY: b"EHLO c.example\r\n",
    SessionState.MAIL: b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n",
    SessionState.RCPT: b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
    SessionState.BDAT: (
        b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 1\r\nx"
    ),
}
VALID = {
    "EHLO": b"EHLO other.example\r\n",
    "HELO": b"HELO other.example\r\n",
    "MAIL": b"MAIL FROM:<x@y.example>\r\n",
    "RCPT": b"RCPT TO:<z@y.example>\r\n",
    "DATA": b"DATA\r\n",
    "BDAT": b"BDAT 1\r\ny",
    "STARTTLS": b"STARTTLS\r\n",
    "AUTH": b"AUTH PLAIN " + PLAIN + b"\r\n",
    "RSET": b"RSET\r\n",
    "NOOP": b"NOOP\r\n",
    "QUIT": b"QUIT\r\n",
    "VRFY": b"VRFY someone\r\n",
    "EXPN": b"EXPN list\r\n",
    "HELP": b"HELP\r\n",
}
S = SessionState
NEXT_STATE: dict[str, Any] = {
    "EHLO": S.READY,
    "HELO": S.READY,
    "MAIL": S.MAIL,
    "RCPT": S.RCPT,
    "DATA": S.RCPT,
    "BDAT": S.BDAT,
    "STARTTLS": S.INIT,
    "RSET": lambda s: S.INIT if s is S.INIT else S.READY,
}
COLUMNS = list(SessionState)


def server_in(state: SessionState, verb: str) -> SmtpServer:
    # AUTH needs TLS; STARTTLS needs its absence
    config = {"tls_active": True, "auth_enabled": True} if verb == "AUTH" else {}
    srv = new_server(config)
    drive(srv, [SETUP[state]])
    assert srv.session_state is state
    return srv


def test_table_covers_every_state_and_command() -> None:
    assert set(COMMAND_TABLE) == set(VALID)
    assert all(len(row) == len(COLUMNS) for row in COMMAND_TABLE.values())


@pytest.mark.parametrize("state", COLUMNS, ids=lambda s: s.value)
@pytest.mark.parametrize("verb", sorted(VALID))
def test_state_command_pair(state: SessionState, verb: str) -> None:
    srv = server_in(state, verb)
    cell = COMMAND_TABLE[verb][COLUMNS.index(state)]
    result = drive(srv, [VALID[verb]])
    assert result.error is None
    check_replies(result.out)
    refusals = [e for e in result.events if isinstance(e, CommandRefused)]
    if isinstance(cell, Reply):
        assert result.out == cell.to_bytes()
        assert refusals == [CommandRefused(verb, cell.code, "bad sequence of commands")]
        assert srv.session_state is state
        assert srv.phase == "command"  # a refused BDAT's octet was skipped
        return
    if verb == "EXPN":
        assert [r.reply_code for r in refusals] == [502]
    else:
        assert refusals == []
    expected = NEXT_STATE.get(verb, state)
    if callable(expected):
        expected = expected(state)
    assert srv.session_state is expected
    assert srv.phase == {"QUIT": "closed", "DATA": "data"}.get(verb, "command")


@settings(max_examples=300, deadline=None)
@given(
    state=st.sampled_from(COLUMNS),
    verb=st.sampled_from(sorted(VALID)),
    arg=st.text(max_size=40),
    case=st.sampled_from([str.upper, str.lower, str.title]),
)
def test_state_command_pair_any_argument(
    state: SessionState, verb: str, arg: str, case: Any
) -> None:
    srv = server_in(state, verb)
    result = drive(srv, [(case(verb) + " " + arg).encode("utf-8", "surrogatepass") + b"\r\n"])
    assert result.error is None
    check_replies(result.out)
    cell = COMMAND_TABLE[verb][COLUMNS.index(state)]
    if isinstance(cell, Reply) and not re.search(r"[\x00-\x1f\x7f]", arg):
        # the sequence check comes before any look at the argument
        assert result.out.startswith(cell.to_bytes())
        assert srv.session_state is state


# --- round trip: a dot-stuffed message comes out exactly as it went in ----------------------

LINE = st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
OPEN_TX = b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.one_of(LINE, st.sampled_from([b".", b"..", b".x", b""])), max_size=30),
    points=st.lists(st.integers(min_value=0), max_size=8),
    use_bdat=st.booleans(),
)
def test_message_round_trip(lines: list[bytes], points: list[int], use_bdat: bool) -> None:
    body = b"".join(line + b"\r\n" for line in lines)
    if use_bdat:
        wire = OPEN_TX + b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n"
    else:
        stuffed = b"".join((b"." if ln.startswith(b".") else b"") + ln + b"\r\n" for ln in lines)
        wire = OPEN_TX + b"DATA\r\n" + stuffed + b".\r\nQUIT\r\n"
    result = drive(new_server({}), cut(wire, points))
    assert result.error is None
    chunks = b"".join(e.data for e in result.events if isinstance(e, MessageChunk))
    assert chunks == body
    assert MessageEnd(len(body)) in result.events
    assert result.events[-1] == ConnectionClosed("quit")
