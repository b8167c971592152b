"""Sans-I/O POP3 server core: RFC 1939, with CAPA and response codes (RFC 2449),
STLS (RFC 2595 4), SASL AUTH (RFC 5034) with PLAIN (RFC 4616, `proto.sasl`) and the
extended response codes of RFC 3206 ([SYS/TEMP] 4, [AUTH] 5, AUTH-RESP-CODE 6).

Implementation notes
- Bytes in (`receive_data`, `receive_eof`), events out (`next_event`), decisions in
  (`accept_login` / `refuse_login`, the message streaming calls, `finish_update`),
  bytes out (`data_to_send`). No sockets, clocks, store or randomness.
  `Pop3ProtocolError` is the only exception raised, and only for misuse by the shell,
  never for anything a client sends.
- Which command is allowed in which state is the table `COMMAND_TABLE` at the end of
  this module (RFC 1939 3: AUTHORIZATION, then TRANSACTION; UPDATE reads no command),
  consulted after the capability checks of `_capability_refusal` (STLS without TLS
  available or under TLS; USER/PASS/AUTH before TLS, DESIGN.md 3).
- One command is processed per step (RFC 2449 6.6 PIPELINING): the core never reads
  ahead of a pending decision, and responses accumulate until the shell drains them.
- Decisions. After `Credentials` the shell verifies, locks the maildrop (RFC 1939 4, 8)
  and takes its snapshot, then calls `accept_login(messages)` or `refuse_login(why)`.
  After `Retrieve` the shell feeds the stored message with `send_message_data()`
  (as many chunks as it likes; the call returns False once TOP has all it needs) and
  ends with `end_message()`, or `fail_message()` if it cannot read it. After `Update`
  (QUIT in TRANSACTION, RFC 1939 6) it removes the messages and calls
  `finish_update(ok)`. Calling `next_event()` with a decision outstanding raises
  `Pop3ProtocolError` (a shell bug).
- Multi-line responses (RFC 1939 3) are dot-stuffed with whole-buffer operations: a
  "." at a line start (after any LF, so that clients splitting on bare LF are safe
  too) gets another "."; the core remembers whether a chunk ended at a line start,
  so any cutting of the message into chunks gives the same bytes. A message that does
  not end with CRLF gets one before the terminating ".".
- Bad commands: every -ERR the core itself gives to a command line (unknown, syntax,
  wrong state, no such message, over-long line, refused before TLS) emits
  `CommandRefused`. `max_bad_commands` of them in a row (any accepted command resets
  the count) and the last one's response becomes "too many errors" and the core
  closes; the `max_commands`+1st command line is answered with "too many commands"
  and the core closes. Failed logins count separately: the `max_auth_failures`th
  failure closes the session.
- Limits (RFC 2449 4): a command line is at most 255 octets including CRLF; a longer
  one is answered with -ERR and skipped up to its LF. AUTH command lines and SASL
  response lines may be up to 12288 octets (the SMTP bound, RFC 4954 4), because an
  initial response can be long. A bare LF also ends a line (clients send it).
- After STLS every buffered byte, and every byte received before
  `tls_established()`, is discarded (RFC 2595 4; CVE-2011-0411). The client must
  re-issue CAPA, and anything it sent before (USER) is forgotten.
- The greeting names no software; there is no IMPLEMENTATION capability (RFC 2449
  6.9), and no response text carries internals (DESIGN.md 3).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mailward.proto import sasl

__all__ = [
    "COMMAND_TABLE",
    "MAX_AUTH_LINE",
    "MAX_COMMAND_LINE",
    "SHUTTING_DOWN",
    "CommandRefused",
    "ConnectionClosed",
    "Credentials",
    "LoginRefusal",
    "NeedData",
    "Pop3Event",
    "Pop3Message",
    "Pop3ProtocolError",
    "Pop3Server",
    "Pop3Settings",
    "Pop3State",
    "Retrieve",
    "StartTls",
    "Update",
]

MAX_COMMAND_LINE = 255  # RFC 2449 4: command lines up to 255 octets, CRLF included
MAX_AUTH_LINE = 12288  # AUTH lines and SASL responses (as RFC 4954 4 allows SMTP)

SHUTTING_DOWN = "[SYS/TEMP] Server shutting down"  # for `close()` at shutdown


class Pop3ProtocolError(Exception):
    """The shell misused the core (answer with no decision pending, data after close)."""


# --- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete input is buffered: flush `data_to_send()` and read more bytes."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """Notice: the core answered +OK to STLS. The shell wraps the transport in TLS and
    calls `tls_established()`; bytes pipelined after STLS were discarded (RFC 2595 4)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Decision: USER/PASS (mechanism "USER") or AUTH PLAIN finished. Verify, lock the
    maildrop, then `accept_login()` or `refuse_login()`. `authzid` is "" if none."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Retrieve:
    """Decision: RETR (`body_lines` None) or TOP (`body_lines` = n) of message `number`
    (1-based, valid, not deleted). Stream it with `send_message_data`, then
    `end_message()` (or `fail_message()`)."""

    number: int
    body_lines: int | None


@dataclass(frozen=True, slots=True)
class Update:
    """Decision: QUIT in TRANSACTION (RFC 1939 6, the UPDATE state). Remove the messages
    `deleted` (numbers, ascending; may be empty), then `finish_update(ok)`."""

    deleted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """Notice: the core answered a command with -ERR itself (for the log). `command` is
    the keyword if it is a known one, else ""; never an argument."""

    command: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over: flush `data_to_send()` and close the connection. Reasons:
    "quit", "eof", "too many errors", "too many commands", "too many failed logins",
    "message failed", "closed by server"."""

    reason: str


Pop3Event = (
    NeedData | StartTls | Credentials | Retrieve | Update | CommandRefused | ConnectionClosed
)


# --- settings and decisions ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    """Per-listener settings of the core."""

    hostname: str
    tls_available: bool = True  # STLS offered while TLS is not active
    tls_active: bool = False  # True on implicit-TLS listeners (995, RFC 8314)
    max_bad_commands: int = 10  # in a row
    max_commands: int = 1000
    max_auth_failures: int = 3


@dataclass(frozen=True, slots=True)
class Pop3Message:
    """One message of the maildrop snapshot: its size in octets as stored (RFC 1939 5,
    "exact size") and its unique-id (RFC 1939 7: 1 to 70 octets in 0x21-0x7E)."""

    size: int
    uid: str


class LoginRefusal(enum.Enum):
    """Why `refuse_login` refuses; each has its RFC 2449 / RFC 3206 response code."""

    FAILED = "failed"  # [AUTH]: wrong user name or password (counts as a failure)
    LOCKED_OUT = "locked out"  # [SYS/TEMP]: too many failures, try later (counts too)
    IN_USE = "in use"  # [IN-USE]: the maildrop is locked by another session (RFC 2449 8.1.2)
    UNAVAILABLE = "unavailable"  # [SYS/TEMP]: the maildrop could not be opened


class Pop3State(enum.Enum):
    """RFC 1939 3 session states; the first two are the columns of `COMMAND_TABLE`."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


_Phase = Literal["command", "auth", "tls", "login", "message", "update", "closed"]

# --- responses (client-safe texts, RFC 2449 / RFC 3206 response codes) ---------------------------

_UNKNOWN = "Unknown command"
_LINE_TOO_LONG = "Line too long"
_BAD_LINE = "Syntax error"
_SYNTAX = "Syntax error in arguments"
_NO_MESSAGE = "No such message"
_ALREADY_DELETED = "Message already deleted"
_LOG_IN_FIRST = "Log in first"
_LOGGED_IN = "Already logged in"
_TLS_ACTIVE = "TLS already active"
_NOT_AVAILABLE = "Command not available"
_NEED_USER = "Send USER first"
_USE_STLS = "[AUTH] Plaintext authentication disallowed without TLS, send STLS first"
_NEED_TLS = "[AUTH] Authentication requires TLS"
_UNKNOWN_MECHANISM = "Unrecognized authentication mechanism"
_AUTH_CANCELLED = "Authentication cancelled"
_AUTH_MALFORMED = "Cannot decode authentication response"
_TOO_MANY_ERRORS = "Too many bad commands, closing connection"
_TOO_MANY_COMMANDS = "Too many commands, closing connection"
_MESSAGE_UNAVAILABLE = "[SYS/TEMP] Message unavailable, try again later"
_UPDATE_FAILED = "[SYS/TEMP] Some deleted messages not removed, try again later"
_REFUSALS = {
    LoginRefusal.FAILED: "[AUTH] Authentication failed",
    LoginRefusal.LOCKED_OUT: "[SYS/TEMP] Too many failed attempts, try again later",
    LoginRefusal.IN_USE: "[IN-USE] Maildrop already locked",
    LoginRefusal.UNAVAILABLE: "[SYS/TEMP] Maildrop unavailable, try again later",
}
_LAST_REFUSALS = {
    LoginRefusal.FAILED: "[AUTH] Authentication failed, closing connection",
    LoginRefusal.LOCKED_OUT: "[SYS/TEMP] Too many failed attempts, closing connection",
}

_VERBS = frozenset(
    {"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT", "STAT", "LIST", "RETR", "TOP", "DELE"}
    | {"NOOP", "RSET", "UIDL"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"[0-9]{1,10}")  # RFC 1939 3: arguments up to 40 characters
_UID = re.compile(r"[\x21-\x7e]{1,70}")  # RFC 1939 7, unique-id
_OVERFLOW = b"<line too long>"  # returned by identity from _read_line, never a real line


def _ok(text: str = "") -> bytes:
    return (f"+OK {text}" if text else "+OK").encode() + b"\r\n"


def _err(text: str) -> bytes:
    return f"-ERR {text}\r\n".encode()


def _multiline(first: str, lines: Sequence[str]) -> bytes:
    # RFC 1939 3: no line here starts with "." (keywords and numbers only)
    return _ok(first) + "".join(f"{line}\r\n" for line in lines).encode() + b".\r\n"


class Pop3Server:
    """One POP3 server session. See the module docstring for the calling protocol."""

    def __init__(self, settings: Pop3Settings) -> None:
        self._settings = settings
        self._buf = bytearray()
        self._out = bytearray()
        self._events: deque[Pop3Event] = deque()
        self._eof = False
        self._closed: ConnectionClosed | None = None
        self._state = Pop3State.AUTHORIZATION
        self._phase: _Phase = "command"
        self._tls_active = settings.tls_active
        self._decision_delivered = False
        self._bad = 0
        self._refused = False
        self._commands = 0
        self._auth_failures = 0
        self._user: str | None = None  # the name of an accepted USER, until PASS
        self._sasl: sasl.SaslMechanism | None = None
        # line reading
        self._scan_from = 0
        self._discard_line = False
        # the maildrop snapshot (TRANSACTION)
        self._messages: tuple[Pop3Message, ...] = ()
        self._deleted: set[int] = set()
        # the message being streamed (RETR / TOP)
        self._streaming: Retrieve | None = None
        self._started = False
        self._tail = b""  # the last two octets sent of the message content
        self._in_headers = True
        self._carry = b""
        self._lines_left = 0
        self._excerpt_done = False
        # RFC 1939 4: greeting; names no software (DESIGN.md 3)
        self._out += _ok(f"{settings.hostname} POP3 ready")

    # --- read-only state -----------------------------------------------------------------

    @property
    def state(self) -> Pop3State:
        return self._state

    @property
    def phase(self) -> _Phase:
        """What the core waits for: a command, a SASL response, TLS, or a decision."""
        return "closed" if self._closed is not None else self._phase

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def message_count(self) -> int:
        """Messages in the snapshot (deleted ones included)."""
        return len(self._messages)

    @property
    def deleted(self) -> frozenset[int]:
        """Numbers of the messages marked deleted (RFC 1939 5 DELE)."""
        return frozenset(self._deleted)

    # --- shell API: bytes ----------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the client."""
        if self._closed is not None:
            raise Pop3ProtocolError("receive_data() after the session closed")
        if self._eof:
            raise Pop3ProtocolError("receive_data() after receive_eof()")
        if self._phase == "tls":
            return  # RFC 2595 4: plaintext after STLS is never interpreted
        self._buf += data

    def receive_eof(self) -> None:
        """The client closed its side; once buffered commands are processed,
        `next_event()` returns ConnectionClosed("eof") (RFC 1939 6: no UPDATE)."""
        self._eof = True

    def data_to_send(self) -> bytes:
        """Drain the queued output."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Pop3Event:
        """The next event; NeedData when no complete input is buffered.

        Raises Pop3ProtocolError while a delivered decision is unanswered, and after
        StartTls until `tls_established()` is called."""
        if self._decision_delivered and self._closed is None:
            raise Pop3ProtocolError(f"a decision is pending ({self._phase})")
        while True:
            if self._events:
                event = self._events.popleft()
                if isinstance(event, Credentials | Retrieve | Update):
                    self._decision_delivered = True
                return event
            if self._closed is not None:
                return self._closed
            if self._phase == "tls":
                raise Pop3ProtocolError("call tls_established() after StartTls")
            if not self._step():
                if self._eof:
                    self._close("eof")
                    continue
                return NeedData()

    def tls_established(self) -> None:
        """The shell finished the TLS handshake after StartTls. RFC 2595 4: everything
        learnt before is forgotten (a pending USER); the client should send CAPA again."""
        if self._phase != "tls" or self._closed is not None:
            raise Pop3ProtocolError("tls_established() without a StartTls")
        self._phase = "command"
        self._tls_active = True
        self._buf.clear()
        self._scan_from = 0
        self._discard_line = False
        self._user = None

    def close(self, text: str | None = None) -> None:
        """Shell-initiated close. With `text` (e.g. SHUTTING_DOWN) "-ERR text" is sent
        first, but only where a command is awaited; without (RFC 1939 3 autologout
        timer) the connection just closes. Does nothing if already closed."""
        if self._closed is not None:
            return
        if text is not None and self._phase in ("command", "auth"):
            self._check_text(text)
            self._out += _err(text)
        self._events.clear()
        self._close("closed by server")

    # --- shell API: decisions ------------------------------------------------------------

    def _expect(self, phase: _Phase) -> None:
        if self._closed is not None or self._phase != phase or not self._decision_delivered:
            raise Pop3ProtocolError(f"no {phase} decision is pending")

    def accept_login(self, messages: Sequence[Pop3Message]) -> None:
        """Answer `Credentials`: the user is authenticated, the maildrop locked, and
        `messages` is its snapshot (message n is messages[n - 1]). RFC 1939 4."""
        self._expect("login")
        for m in messages:
            if m.size < 0 or not _UID.fullmatch(m.uid):
                raise Pop3ProtocolError(f"bad size or unique-id {m.uid!r}")
        self._decision_delivered = False
        self._phase = "command"
        self._messages = tuple(messages)
        self._deleted = set()
        self._state = Pop3State.TRANSACTION
        count, octets = self._totals()
        self._out += _ok(f"Logged in, {count} messages ({octets} octets)")

    def refuse_login(self, refusal: LoginRefusal) -> None:
        """Answer `Credentials` with a refusal; the session stays in AUTHORIZATION, or
        closes at the `max_auth_failures`th FAILED / LOCKED_OUT."""
        self._expect("login")
        self._decision_delivered = False
        self._phase = "command"
        if refusal in _LAST_REFUSALS:
            self._auth_failures += 1
            if self._auth_failures >= self._settings.max_auth_failures:
                self._out += _err(_LAST_REFUSALS[refusal])
                self._close("too many failed logins")
                return
        self._out += _err(_REFUSALS[refusal])

    def send_message_data(self, data: bytes) -> bool:
        """Feed the next octets of the message being retrieved (any cutting). Returns
        False once TOP has its excerpt: then further data is ignored."""
        self._expect("message")
        if self._excerpt_done:
            return False
        event = self._streaming
        assert event is not None
        if event.body_lines is not None:
            data = self._excerpt(data)
        self._emit_content(data)
        return not self._excerpt_done

    def end_message(self) -> None:
        """The whole message (or the TOP excerpt) was fed: terminate the response."""
        self._expect("message")
        if not self._started:
            self._start_response()
        if self._tail != b"\r\n":
            self._out += b"\r\n"  # RFC 1939 3: the terminating "." starts a line
        self._out += b".\r\n"
        self._end_streaming()

    def fail_message(self) -> None:
        """The message could not be read. Before any of it was sent the client gets
        -ERR [SYS/TEMP] and the session goes on; after, the response cannot be
        completed truthfully, so the session closes."""
        self._expect("message")
        started = self._started
        self._end_streaming()
        if started:
            self._close("message failed")
        else:
            self._out += _err(_MESSAGE_UNAVAILABLE)

    def finish_update(self, ok: bool) -> None:
        """Answer `Update`: `ok` if every deleted message was removed (RFC 1939 6)."""
        self._expect("update")
        self._decision_delivered = False
        self._out += _ok("Bye") if ok else _err(_UPDATE_FAILED)
        self._close("quit")

    # --- internals: output, refusal, closing ---------------------------------------------------

    @staticmethod
    def _check_text(text: str) -> None:
        if _CONTROL.search(text) or len(text) > 500:  # RFC 2449 4: 512 octets a response
            raise Pop3ProtocolError("bad response text")  # response injection

    def _close(self, reason: str) -> None:
        if self._closed is not None:
            return
        self._closed = ConnectionClosed(reason)
        self._events.append(self._closed)
        self._decision_delivered = False
        self._streaming = None
        self._buf.clear()

    def _refuse(self, command: str, text: str, reason: str) -> None:
        self._refused = True
        self._events.append(CommandRefused(command, reason))
        self._bad += 1
        if self._bad >= self._settings.max_bad_commands:
            self._out += _err(_TOO_MANY_ERRORS)
            self._close("too many errors")
            return
        self._out += _err(text)

    def _decide(self, phase: _Phase, event: Credentials | Retrieve | Update) -> None:
        self._phase = phase
        self._events.append(event)

    def _totals(self) -> tuple[int, int]:
        live = [m.size for i, m in enumerate(self._messages, 1) if i not in self._deleted]
        return len(live), sum(live)

    # --- internals: message streaming -------------------------------------------------------

    def _start_response(self) -> None:
        self._started = True
        event = self._streaming
        assert event is not None
        if event.body_lines is None:
            self._out += _ok(f"{self._messages[event.number - 1].size} octets")
        else:
            self._out += _ok("Top of message follows")

    def _emit_content(self, data: bytes) -> None:
        if not self._started:
            self._start_response()
        if not data:
            return
        # RFC 1939 3: byte-stuff every line that starts with "."
        if data[:1] == b"." and self._tail[-1:] == b"\n":
            self._out += b"."
        self._out += data.replace(b"\n.", b"\n..")
        self._tail = (self._tail + data)[-2:]

    def _excerpt(self, data: bytes) -> bytes:
        """RFC 1939 7 TOP: the headers, the blank line, then `body_lines` lines.

        A blank line is "CRLF" (or a bare LF) at a line start; the message is treated
        as if preceded by an LF, and the last two octets seen are carried over, so a
        separator split across chunks is found."""
        out = b""
        if self._in_headers:
            joined = self._carry + data
            found = [i for i in (joined.find(b"\n\r\n"), joined.find(b"\n\n")) if i >= 0]
            if not found:
                self._carry = joined[-2:]
                return data
            i = min(found)
            end = i + (3 if joined[i + 1] == 0x0D else 2) - len(self._carry)
            self._in_headers = False
            out, data = data[:end], data[end:]
        if self._lines_left == 0:
            self._excerpt_done = True
            return out
        count = data.count(b"\n")
        if count < self._lines_left:
            self._lines_left -= count
            return out + data
        pos = -1
        for _ in range(self._lines_left):
            pos = data.index(b"\n", pos + 1)
        self._lines_left = 0
        self._excerpt_done = True
        return out + data[: pos + 1]

    def _end_streaming(self) -> None:
        self._decision_delivered = False
        self._streaming = None
        self._phase = "command"

    # --- input steps -------------------------------------------------------------------------

    def _step(self) -> bool:
        """Process one line of buffered input; False when more input is needed."""
        line = self._read_line()
        if line is None:
            return False
        if line is _OVERFLOW:
            if self._phase == "auth":
                self._sasl = None
                self._phase = "command"
                self._refuse("AUTH", _LINE_TOO_LONG, "line too long")
            else:
                self._command_line(None)
            return True
        if self._phase == "auth":
            self._auth_response(line)
        else:
            self._command_line(line)
        return True

    def _line_limit(self) -> int:
        if self._phase == "auth" or self._buf[:5].upper() == b"AUTH ":
            return MAX_AUTH_LINE
        return MAX_COMMAND_LINE

    def _read_line(self) -> bytes | None:
        """One line including its LF, `_OVERFLOW`, or None (need more input)."""
        buf = self._buf
        if self._discard_line:
            i = buf.find(b"\n")
            if i < 0:
                buf.clear()
                return None
            del buf[: i + 1]
            self._discard_line = False
            self._scan_from = 0
        limit = self._line_limit()
        i = buf.find(b"\n", self._scan_from)
        if i < 0:
            if len(buf) >= limit:  # the line will exceed the limit (RFC 2449 4)
                buf.clear()
                self._scan_from = 0
                self._discard_line = True
                return _OVERFLOW
            self._scan_from = len(buf)
            return None
        self._scan_from = 0
        line = bytes(buf[: i + 1])
        del buf[: i + 1]
        if len(line) > limit:
            return _OVERFLOW
        return line

    @staticmethod
    def _decode_line(line: bytes) -> str | None:
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _CONTROL.search(text):
            return None
        return text

    def _command_line(self, raw: bytes | None) -> None:
        self._commands += 1
        if self._commands > self._settings.max_commands:
            self._out += _err(_TOO_MANY_COMMANDS)
            self._close("too many commands")
            return
        self._refused = False
        self._command(raw)
        if not self._refused:
            self._bad = 0  # RFC-neutral leniency: only bad commands *in a row* count

    def _command(self, raw: bytes | None) -> None:
        if raw is None:
            self._user = None
            self._refuse("", _LINE_TOO_LONG, "line too long")
            return
        text = self._decode_line(raw)
        if text is None:
            self._user = None
            self._refuse("", _BAD_LINE, "non-UTF-8 or control character in command")
            return
        # RFC 1939 3: a keyword, then arguments separated by single spaces
        word, _, arg = text.partition(" ")
        verb = word.upper() if word.isascii() else ""
        if verb != "PASS":
            self._user = None  # RFC 1939 7: PASS must follow USER directly
            arg = arg.rstrip(" ")  # leniency: trailing spaces are ignored
        if verb not in _VERBS:
            self._refuse("", _UNKNOWN, "unknown command")
            return
        refusal = self._capability_refusal(verb)
        if refusal is not None:
            self._refuse(verb, refusal, "not available")
            return
        action = COMMAND_TABLE[verb][0 if self._state is Pop3State.AUTHORIZATION else 1]
        if isinstance(action, str):
            self._refuse(verb, action, "not valid in this state")
            return
        action(self, arg)

    def _capability_refusal(self, verb: str) -> str | None:
        """Checks made before the state table: is the command offered at all?"""
        s = self._settings
        if verb == "STLS":
            if self._tls_active:
                return _TLS_ACTIVE
            if not s.tls_available:
                return _NOT_AVAILABLE
        elif verb in ("USER", "PASS", "AUTH") and not self._tls_active:
            # DESIGN.md 3: no credential in clear (RFC 2595 2.3: refuse clear-text logins).
            # Without TLS there is no login, so the state is always AUTHORIZATION here.
            return _USE_STLS if s.tls_available else _NEED_TLS
        return None

    def _args(self, arg: str, lo: int, hi: int) -> list[str] | None:
        args = arg.split(" ") if arg else []
        return args if lo <= len(args) <= hi else None

    def _message_number(self, command: str, text: str) -> int | None:
        """A message number that exists and is not deleted (RFC 1939 5), or None
        after refusing the command."""
        if not _NUMBER.fullmatch(text):
            self._refuse(command, _SYNTAX, "bad message number")
            return None
        number = int(text)
        if not 1 <= number <= len(self._messages):
            self._refuse(command, _NO_MESSAGE, "no such message")
            return None
        if number in self._deleted:
            self._refuse(command, _NO_MESSAGE, "message deleted")
            return None
        return number

    # --- command handlers (cells of COMMAND_TABLE) ----------------------------------------------

    def _capabilities(self) -> list[str]:
        # RFC 2449 5: what is offered in AUTHORIZATION is announced in both states
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self._tls_active:
            caps += ["USER", "SASL PLAIN"]  # RFC 2449 6.2, 6.3; never before TLS
        elif self._settings.tls_available:
            caps.append("STLS")  # RFC 2595 4
        return caps

    def _cmd_capa(self, arg: str) -> None:
        if arg:
            self._refuse("CAPA", _SYNTAX, "CAPA takes no argument")
            return
        self._out += _multiline("Capability list follows", self._capabilities())

    def _cmd_stls(self, arg: str) -> None:
        if arg:
            self._refuse("STLS", _SYNTAX, "STLS takes no argument")
            return
        self._out += _ok("Begin TLS negotiation")
        self._events.append(StartTls())
        # RFC 2595 4: anything pipelined after STLS is discarded (CVE-2011-0411)
        self._buf.clear()
        self._scan_from = 0
        self._discard_line = False
        self._phase = "tls"

    def _cmd_user(self, arg: str) -> None:
        # RFC 1939 7: USER name; the full address here. Nothing tells whether it exists.
        if not arg or " " in arg:
            self._refuse("USER", _SYNTAX, "USER takes one argument")
            return
        self._user = arg
        self._out += _ok("Send PASS")

    def _cmd_pass(self, arg: str) -> None:
        # RFC 1939 7: the argument is the whole rest of the line, spaces included
        user, self._user = self._user, None
        if user is None:
            self._refuse("PASS", _NEED_USER, "PASS without USER")
            return
        if not arg:
            self._refuse("PASS", _SYNTAX, "empty password")
            return
        self._decide("login", Credentials("USER", "", user, arg))

    def _cmd_auth(self, arg: str) -> None:
        # RFC 5034 4: "AUTH" SP sasl-mech [SP initial-response]
        if not arg:
            # legacy RFC 1734 clients list the mechanisms with a bare AUTH
            self._out += _multiline("", ["PLAIN"])
            return
        name, _, initial = arg.partition(" ")
        if " " in initial:
            self._refuse("AUTH", _SYNTAX, "syntax")
            return
        if name.upper() != "PLAIN":
            self._refuse("AUTH", _UNKNOWN_MECHANISM, "unknown mechanism")
            return
        mechanism = sasl.PlainMechanism()
        try:
            response = sasl.decode_response(initial, initial=True) if initial else None
            result = mechanism.start(response)
        except sasl.SaslError as exc:
            self._auth_failed(exc)
            return
        self._sasl = mechanism
        self._auth_result(result)

    def _auth_response(self, raw: bytes) -> None:
        mechanism = self._sasl
        assert mechanism is not None
        text = self._decode_line(raw)
        try:
            if text is None:
                raise sasl.SaslMalformed("not a base64 line")
            result = mechanism.step(sasl.decode_response(text))
        except sasl.SaslError as exc:
            self._auth_failed(exc)
            return
        self._auth_result(result)

    def _auth_failed(self, exc: sasl.SaslError) -> None:
        self._phase = "command"
        self._sasl = None
        if isinstance(exc, sasl.SaslCancelled):
            # RFC 5034 4: "*" cancels, and the server MUST answer -ERR
            self._refuse("AUTH", _AUTH_CANCELLED, "cancelled by client")
        else:
            self._refuse("AUTH", _AUTH_MALFORMED, str(exc))

    def _auth_result(self, result: sasl.SaslStep) -> None:
        if isinstance(result, sasl.SaslChallenge):
            # RFC 5034 4: continuation = "+" SP [base64] CRLF
            self._out += b"+ " + sasl.encode_challenge(result.data).encode() + b"\r\n"
            self._phase = "auth"
            return
        self._sasl = None
        self._decide(
            "login", Credentials(result.mechanism, result.authzid, result.username, result.password)
        )

    def _cmd_quit(self, arg: str) -> None:
        if arg:
            self._refuse("QUIT", _SYNTAX, "QUIT takes no argument")
            return
        if self._state is Pop3State.AUTHORIZATION:
            self._out += _ok("Bye")  # RFC 1939 4: no UPDATE state
            self._close("quit")
            return
        self._state = Pop3State.UPDATE  # RFC 1939 6
        self._decide("update", Update(tuple(sorted(self._deleted))))

    def _cmd_stat(self, arg: str) -> None:
        if arg:
            self._refuse("STAT", _SYNTAX, "STAT takes no argument")
            return
        count, octets = self._totals()
        self._out += _ok(f"{count} {octets}")  # RFC 1939 5: exactly "+OK nn mm"

    def _cmd_list(self, arg: str) -> None:
        args = self._args(arg, 0, 1)
        if args is None:
            self._refuse("LIST", _SYNTAX, "LIST takes at most one argument")
            return
        if args:
            number = self._message_number("LIST", args[0])
            if number is not None:
                self._out += _ok(f"{number} {self._messages[number - 1].size}")
            return
        count, octets = self._totals()
        lines = [f"{i} {m.size}" for i, m in enumerate(self._messages, 1) if i not in self._deleted]
        self._out += _multiline(f"{count} messages ({octets} octets)", lines)

    def _cmd_uidl(self, arg: str) -> None:
        args = self._args(arg, 0, 1)
        if args is None:
            self._refuse("UIDL", _SYNTAX, "UIDL takes at most one argument")
            return
        if args:
            number = self._message_number("UIDL", args[0])
            if number is not None:
                self._out += _ok(f"{number} {self._messages[number - 1].uid}")
            return
        lines = [f"{i} {m.uid}" for i, m in enumerate(self._messages, 1) if i not in self._deleted]
        self._out += _multiline("", lines)

    def _start_streaming(self, event: Retrieve) -> None:
        self._streaming = event
        self._started = False
        self._tail = b"\r\n"  # the status line ended with CRLF
        self._in_headers = True
        self._carry = b"\n"  # the message is read as if preceded by a line end
        self._lines_left = event.body_lines or 0
        self._excerpt_done = False
        self._decide("message", event)

    def _cmd_retr(self, arg: str) -> None:
        args = self._args(arg, 1, 1)
        if args is None:
            self._refuse("RETR", _SYNTAX, "RETR takes one argument")
            return
        number = self._message_number("RETR", args[0])
        if number is not None:
            self._start_streaming(Retrieve(number, None))

    def _cmd_top(self, arg: str) -> None:
        args = self._args(arg, 2, 2)
        if args is None or not _NUMBER.fullmatch(args[1]):
            self._refuse("TOP", _SYNTAX, "TOP takes two arguments")
            return
        number = self._message_number("TOP", args[0])
        if number is not None:
            self._start_streaming(Retrieve(number, int(args[1])))

    def _cmd_dele(self, arg: str) -> None:
        args = self._args(arg, 1, 1)
        if args is None or not _NUMBER.fullmatch(args[0]):
            self._refuse("DELE", _SYNTAX, "DELE takes one argument")
            return
        number = int(args[0])
        if not 1 <= number <= len(self._messages):
            self._refuse("DELE", _NO_MESSAGE, "no such message")
        elif number in self._deleted:
            self._refuse("DELE", _ALREADY_DELETED, "message already deleted")
        else:
            self._deleted.add(number)
            self._out += _ok(f"Message {number} deleted")

    def _cmd_noop(self, arg: str) -> None:
        if arg:
            self._refuse("NOOP", _SYNTAX, "NOOP takes no argument")
            return
        self._out += _ok()

    def _cmd_rset(self, arg: str) -> None:
        if arg:
            self._refuse("RSET", _SYNTAX, "RSET takes no argument")
            return
        self._deleted.clear()  # RFC 1939 5
        count, octets = self._totals()
        self._out += _ok(f"{count} messages ({octets} octets)")


# --- the session table (RFC 1939 3) --------------------------------------------------------------

_Action = Callable[[Pop3Server, str], None] | str
_H = Pop3Server
COMMAND_TABLE: dict[str, tuple[_Action, _Action]] = {
    # a handler runs the command; a str is the -ERR text for that state
    # columns: AUTHORIZATION (RFC 1939 4), TRANSACTION (RFC 1939 5)
    "USER": (_H._cmd_user, _LOGGED_IN),
    "PASS": (_H._cmd_pass, _LOGGED_IN),
    "AUTH": (_H._cmd_auth, _LOGGED_IN),
    "STLS": (_H._cmd_stls, _LOGGED_IN),  # RFC 2595 4: AUTHORIZATION state only
    "CAPA": (_H._cmd_capa, _H._cmd_capa),  # RFC 2449 5: both states
    "QUIT": (_H._cmd_quit, _H._cmd_quit),
    "STAT": (_LOG_IN_FIRST, _H._cmd_stat),
    "LIST": (_LOG_IN_FIRST, _H._cmd_list),
    "RETR": (_LOG_IN_FIRST, _H._cmd_retr),
    "TOP": (_LOG_IN_FIRST, _H._cmd_top),
    "DELE": (_LOG_IN_FIRST, _H._cmd_dele),
    "NOOP": (_LOG_IN_FIRST, _H._cmd_noop),
    "RSET": (_LOG_IN_FIRST, _H._cmd_rset),
    "UIDL": (_LOG_IN_FIRST, _H._cmd_uidl),
}
"""Which command may run in which `Pop3State` (AUTHORIZATION, TRANSACTION)."""
assert COMMAND_TABLE.keys() == _VERBS
