"""Sans-I/O IMAP server connection core: IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501).

Framing of RFC 9051 2.2 and 4.3 (lines, literals), RFC 7888 (LITERAL+ / LITERAL-
non-synchronising literals), RFC 3516 (literal8 APPEND), RFC 9051 6.2.1 (STARTTLS),
6.2.2 + RFC 4959 (AUTHENTICATE, SASL-IR), 6.3.13 + RFC 2177 (IDLE), 6.3.12 (APPEND,
streamed) and the per-state command validity of RFC 9051 6.1-6.4 and the extensions
(RFC 2971 ID, RFC 5161 ENABLE, RFC 9208 4 GETQUOTA/GETQUOTAROOT: `COMMAND_TABLE`).
Command syntax is `proto.imap_commands`; response serialisation `proto.imap_wire`.

Implementation notes
- Bytes in (`receive_data`, `receive_eof`), events out (`next_event`), bytes out
  (`send` by the session, `data_to_send`). No sockets, clocks or randomness. The core
  sends no greeting (the session knows its capabilities) and answers no command itself
  except to refuse it: every refusal is a complete tagged (or untagged, when no tag could
  be read) BAD/NO line that the core queues itself, also yielding `CommandError` so the
  session can log and count it.
- Input is parsed lazily, one command per step, in `next_event`: a pipelined command is
  checked against the session state as it is when the session asks for it, so the
  session finishes each command (and calls `set_state`) before asking for the next.
- A command is collected whole before it is parsed: its lines (at most `max_line`
  octets each, excluding CRLF) and literals (at most `max_literal` each) into one buffer
  of at most `max_command` octets; the parser re-reads the literals in place. A bare LF
  ends a line as CRLF does. An over-long line is refused with BAD and input is skipped
  to the next LF (RFC 9051 4.3 allows servers to limit lengths).
- Literals (RFC 9051 4.3, 7.6; RFC 7888). Before answering "+" to a synchronising
  literal the core checks the command so far (tag, name, session state, APPEND head)
  and the size limits; if anything is wrong it sends the tagged refusal instead and
  the client does not send the literal. A non-synchronising literal ({n+}) arrives
  anyway: LITERAL- (the default; RFC 7888 4) refuses one over 4096 octets, LITERAL+
  (`literal_plus`) allows up to the limits. A refused non-synchronising literal of at
  most `max(max_literal, 4096)` octets is read and dropped with the rest of its
  command, then the refusal is sent; a larger one gets the refusal, `* BYE` and
  `ConnectionClosed` (RFC 7888 3 lets a server close the connection).
- APPEND is streamed, never buffered (DESIGN.md 3 "Memory per connection does not grow
  with message size"). When the message literal's marker arrives the core checks the
  head (`parse_append_head`) and `append_limit` (NO [TOOBIG], RFC 7889) and yields
  `AppendStart`; the session MUST then call `accept_literal()` (the core sends "+" for a
  synchronising literal) or `reject_literal(line)` before calling `next_event()` again
  (else `ImapProtocolError`). Then come `AppendChunk`s (whatever arrived; together
  exactly the literal), and `AppendEnd` when the line ends right after the literal.
  Anything else there (MULTIAPPEND, RFC 3502, is not offered) gives `AppendAborted`
  and a BAD; `ConnectionClosed` mid-message also means: drop the spool.
- AUTHENTICATE and IDLE: after `CommandReceived` for them the session sends its
  continuation ("+ <base64>" / "+ idling") and calls `expect_authenticate_response()`
  / `expect_idle_done()`; the next line is then read as a SASL response (RFC 9051 6.2.2:
  base64, "*" cancels) or as "DONE" (RFC 2177 3, case-insensitive).
- STARTTLS (RFC 9051 6.2.1): the core refuses it itself under TLS or when not offered
  (`ImapSettings.starttls`). On `CommandReceived(STARTTLS)` every buffered octet and
  every octet received before `tls_established()` is discarded: plaintext pipelined
  after STARTTLS must never be read as if it came under TLS (CVE-2011-0411 class).
- Bad commands: every core BAD (unknown command, syntax, wrong state, over-long line,
  literal too large, missing DONE) counts; at `max_bad_commands` the core sends
  `* BYE Too many errors` and closes. NO refusals (BADCHARSET, TOOBIG APPEND) do not
  count.
- `ImapProtocolError` is raised only for misuse by the session (a decision method
  called at the wrong time, `next_event` with an APPEND decision pending, a malformed
  `reject_literal` line), never for anything a client sends.
"""

from __future__ import annotations

import datetime
import enum
import re
from collections import deque
from dataclasses import dataclass
from typing import Literal

from mailward.proto import imap_wire, sasl
from mailward.proto.imap_commands import (
    DEFAULT_MAX_DEPTH,
    Command,
    ImapParseError,
    command_head,
    parse_append_head,
    parse_command,
)

__all__ = [
    "COMMAND_TABLE",
    "LITERAL_MINUS_MAX",
    "AppendAborted",
    "AppendChunk",
    "AppendEnd",
    "AppendStart",
    "AuthenticateResponse",
    "CommandError",
    "CommandReceived",
    "ConnectionClosed",
    "IdleDone",
    "ImapEvent",
    "ImapProtocolError",
    "ImapServer",
    "ImapSettings",
    "ImapState",
    "NeedData",
]

LITERAL_MINUS_MAX = 4096  # RFC 7888 4: LITERAL- allows {n+} only up to 4096 octets


class ImapProtocolError(Exception):
    """The session misused the core (see the module notes)."""


class ImapState(enum.Enum):
    """RFC 9051 3: the connection states, the columns of `COMMAND_TABLE`."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


@dataclass(frozen=True)
class ImapSettings:
    """Per-listener limits and options of the core."""

    max_line: int = 64 * 1024  # octets a command line, excluding CRLF and literals
    max_literal: int = 64 * 1024  # octets a literal (APPEND's message excepted)
    max_command: int = 256 * 1024  # octets a whole command, literals included
    append_limit: int = 50 * 1024 * 1024  # octets an APPEND message (RFC 7889)
    literal_plus: bool = False  # advertise LITERAL+ (RFC 7888 3) rather than LITERAL-
    max_bad_commands: int = 20
    max_depth: int = DEFAULT_MAX_DEPTH  # nesting of parentheses and search keys
    tls_active: bool = False  # True on implicit-TLS listeners (993)
    starttls: bool = True  # STARTTLS offered while TLS is not active


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing complete is buffered: flush `data_to_send()` and read more bytes."""


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A valid command, allowed in the current state: the session executes it and
    sends its responses (tagged completion included)."""

    command: Command


@dataclass(frozen=True, slots=True)
class CommandError:
    """Notice: the core refused a command and has queued `response` (a complete
    tagged, or untagged `*` when `tag` is None, BAD/NO line). For logging and abuse
    accounting only."""

    tag: str | None
    response: bytes


@dataclass(frozen=True, slots=True)
class AppendStart:
    """Decision: an APPEND's message literal is about to arrive (RFC 9051 6.3.12).
    Call `accept_literal()` or `reject_literal(line)` before `next_event()`.
    `binary` is True for a literal8 `~{n}` (RFC 3516 4.2); `synchronizing` False for
    `{n+}` (RFC 7888), whose octets arrive whatever the answer."""

    tag: str
    mailbox: str
    flags: tuple[str, ...]
    internal_date: datetime.datetime | None
    size: int
    binary: bool
    synchronizing: bool


@dataclass(frozen=True, slots=True)
class AppendChunk:
    """Notice: the next octets of the accepted APPEND message, byte-exact."""

    data: bytes


@dataclass(frozen=True, slots=True)
class AppendEnd:
    """Decision: the APPEND command is complete. Answer OK only once the message is
    durable (DESIGN.md 3), or NO."""

    tag: str


@dataclass(frozen=True, slots=True)
class AppendAborted:
    """Notice: the accepted APPEND failed after its message (data after the literal):
    the core has sent BAD; drop the spool."""

    tag: str


@dataclass(frozen=True, slots=True)
class AuthenticateResponse:
    """The client's answer to a SASL challenge (after `expect_authenticate_response`).
    `data` is the decoded response; None when the client cancelled ("*", RFC 9051
    6.2.2: answer BAD) or, with `malformed` True, when it was not valid base64."""

    data: bytes | None
    malformed: bool = False


@dataclass(frozen=True, slots=True)
class IdleDone:
    """IDLE ended (after `expect_idle_done`). `valid` True: the client sent DONE, answer
    the IDLE tag with OK. False: it sent something else; the core has already answered
    `tag BAD` (RFC 2177 3) and IDLE is over."""

    tag: str
    valid: bool = True


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over: flush `data_to_send()` and close the transport. Also means
    "drop any APPEND spool". `next_event()` keeps returning this."""

    reason: str


ImapEvent = (
    NeedData
    | CommandReceived
    | CommandError
    | AppendStart
    | AppendChunk
    | AppendEnd
    | AppendAborted
    | AuthenticateResponse
    | IdleDone
    | ConnectionClosed
)

# --- the command/state table (RFC 9051 6) ----------------------------------------------------

_NOT_AUTH = "Not authenticated"
_AUTHED = "Already authenticated"
_NOT_SELECTED = "No mailbox selected"
_ANY = (None, None, None)
_NONAUTH = (None, _AUTHED, _AUTHED)
_AUTH = (_NOT_AUTH, None, None)
_SELECT = (_NOT_AUTH, _NOT_SELECTED, None)

COMMAND_TABLE: dict[str, tuple[str | None, str | None, str | None]] = {
    # columns: NOT_AUTHENTICATED, AUTHENTICATED, SELECTED. None: allowed; a text: the
    # command is refused with "tag BAD <text>". LOGOUT state accepts nothing (closed).
    # RFC 9051 6.1: any state
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,  # RFC 2971 3.1
    # RFC 9051 6.2: not authenticated state
    "STARTTLS": _NONAUTH,
    "AUTHENTICATE": _NONAUTH,
    "LOGIN": _NONAUTH,
    # RFC 9051 6.3: authenticated state (and, per 6.4, selected state too)
    "ENABLE": (_NOT_AUTH, None, "ENABLE is not valid in the selected state"),  # RFC 5161 3.1
    "SELECT": _AUTH,
    "EXAMINE": _AUTH,
    "CREATE": _AUTH,
    "DELETE": _AUTH,
    "RENAME": _AUTH,
    "SUBSCRIBE": _AUTH,
    "UNSUBSCRIBE": _AUTH,
    "LIST": _AUTH,
    "LSUB": _AUTH,  # RFC 3501 6.3.9
    "NAMESPACE": _AUTH,
    "STATUS": _AUTH,
    "APPEND": _AUTH,
    "IDLE": _AUTH,
    "GETQUOTA": _AUTH,  # RFC 9208 4
    "GETQUOTAROOT": _AUTH,
    # RFC 9051 6.4: selected state (UID forms share their command's row, 6.4.9)
    "CHECK": _SELECT,  # RFC 3501 6.4.1
    "CLOSE": _SELECT,
    "UNSELECT": _SELECT,
    "EXPUNGE": _SELECT,
    "SEARCH": _SELECT,
    "FETCH": _SELECT,
    "STORE": _SELECT,
    "COPY": _SELECT,
    "MOVE": _SELECT,
}
"""Which command is valid in which state (RFC 9051 6.1-6.4 and the extensions)."""
_COLUMN = {ImapState.NOT_AUTHENTICATED: 0, ImapState.AUTHENTICATED: 1, ImapState.SELECTED: 2}

_Phase = Literal[
    "command", "literal", "discard", "append_decision", "append", "auth", "idle", "tls", "closed"
]

_CONTINUE = b"+ Ready for literal data\r\n"
_BYE_ERRORS = b"* BYE Too many errors\r\n"
_BYE_TOO_BIG = b"* BYE Literal too large\r\n"
_OVERFLOW = b"<line too long>"  # returned by identity from _read_line, never a real line
# a tag followed by SP; the same however much of an over-long line was buffered
_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\+\x80-\xff]+(?= )')


@dataclass(frozen=True, slots=True)
class _Marker:
    """A literal marker ending a line: `{size}`, `{size+}` or `~{size}`."""

    size: int
    sync: bool
    binary: bool
    length: int  # octets of the marker at the end of the line


@dataclass(frozen=True, slots=True)
class _Refusal:
    """A refusal waiting for its command's end (its non-synchronising literals are
    being skipped)."""

    tag: str | None
    response: bytes
    event: bool  # a core refusal: yield CommandError
    bad: bool  # counts towards max_bad_commands
    aborted_append: str | None = None  # yield AppendAborted(tag) first


def _literal_marker(line: bytes) -> _Marker | None:
    # RFC 9051 9: literal = "{" number64 ["+"] "}" CRLF *CHAR8; RFC 3516: literal8 = "~{"
    if not line.endswith(b"}"):
        return None
    i = line.rfind(b"{")
    if i < 0:
        return None
    inner = line[i + 1 : -1]
    sync = not inner.endswith(b"+")
    digits = inner if sync else inner[:-1]
    if not digits or not digits.isdigit():
        return None
    size = int(digits) if len(digits) <= 20 else 1 << 70  # beyond every limit
    binary = i > 0 and line[i - 1] == 0x7E  # "~"
    return _Marker(size, sync, binary, len(line) - i + binary)


def _guess_tag(data: bytes) -> str | None:
    m = _TAG.match(data)
    return m.group(0).decode("ascii") if m else None


class ImapServer:
    """One IMAP server connection. See the module docstring for the calling protocol."""

    def __init__(self, settings: ImapSettings | None = None) -> None:
        self._settings = settings or ImapSettings()
        self._buf = bytearray()
        self._out = bytearray()
        self._events: deque[ImapEvent] = deque()
        self._state = ImapState.NOT_AUTHENTICATED
        self._phase: _Phase = "command"
        self._tls_active = self._settings.tls_active
        self._eof = False
        self._closed: ConnectionClosed | None = None
        self._bad = 0
        # line reading
        self._scan_from = 0
        self._skip_line = False
        self._overflow_head = b""
        # the command being collected
        self._cmd = bytearray()
        self._remaining = 0  # octets left of a literal / discarded literal / message
        self._refusal: _Refusal | None = None
        self._append: AppendStart | None = None
        self._append_trailer: str | None = None  # tag: the rest of the line must be empty
        self._last: Command | None = None  # the last command yielded
        self._discard_max = max(self._settings.max_literal, LITERAL_MINUS_MAX)

    # --- public API ------------------------------------------------------------------------------

    @property
    def state(self) -> ImapState:
        return self._state

    def set_state(self, state: ImapState) -> None:
        """The session moved the connection to `state` (RFC 9051 3). LOGOUT closes."""
        self._state = state
        if state is ImapState.LOGOUT:
            self._close("logout")

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def phase(self) -> str:
        """What the core is reading: "command", "literal", "discard", "append_decision",
        "append", "auth", "idle", "tls" or "closed" (for tests and logs)."""
        return self._phase

    @property
    def pending_input(self) -> int:
        """Octets received and not yet consumed."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Feed octets from the client. Dropped after close and between STARTTLS and
        `tls_established()` (RFC 9051 6.2.1, CVE-2011-0411)."""
        if self._closed is not None or self._phase == "tls":
            return
        self._buf += data

    def receive_eof(self) -> None:
        """The client closed its side: once buffered input is used, `ConnectionClosed`."""
        self._eof = True

    def next_event(self) -> ImapEvent:
        """The next event (see the module docstring); `NeedData` when input is needed."""
        while True:
            if self._events:
                return self._events.popleft()
            if self._closed is not None:
                return self._closed
            if self._phase == "append_decision":
                raise ImapProtocolError("call accept_literal() or reject_literal() first")
            if not self._step():
                if self._eof:
                    self._close("end of input")
                    continue
                return NeedData()

    def send(self, data: bytes) -> None:
        """Queue response octets (see `imap_wire` for serialising them)."""
        self._out += data

    def data_to_send(self) -> bytes:
        """Everything queued for the client since the last call."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self, reason: str = "closed by server") -> None:
        """End the session (after the session sent its BYE): `ConnectionClosed`."""
        self._close(reason)

    def accept_literal(self) -> None:
        """Read the APPEND message announced by `AppendStart` (sends "+" if needed)."""
        append = self._append
        if self._phase != "append_decision" or append is None:
            raise ImapProtocolError("no APPEND literal is waiting for a decision")
        if append.synchronizing:
            self._out += _CONTINUE
        self._remaining = append.size
        if append.size:
            self._phase = "append"
        else:
            self._end_message()

    def reject_literal(self, response: bytes) -> None:
        """Refuse the APPEND announced by `AppendStart` with `response`, one complete
        tagged line (e.g. b"A1 NO [TOOBIG] Message too large\\r\\n"). A synchronising
        literal is then never read; a non-synchronising one is read and dropped, or, if
        over `max(max_literal, 4096)` octets, the connection is closed with BYE."""
        append = self._append
        if self._phase != "append_decision" or append is None:
            raise ImapProtocolError("no APPEND literal is waiting for a decision")
        if not response.endswith(b"\r\n") or b"\r" in response[:-2] or b"\n" in response[:-2]:
            raise ImapProtocolError("the response must be one CRLF-terminated line")
        self._append = None
        self._phase = "command"
        refusal = _Refusal(append.tag, response, event=False, bad=False)
        self._refuse(refusal, _Marker(append.size, append.synchronizing, append.binary, 0))

    def expect_authenticate_response(self) -> None:
        """After sending "+ challenge" for AUTHENTICATE: read the next line as the SASL
        response and yield it as `AuthenticateResponse`."""
        self._expect("AUTHENTICATE")
        self._phase = "auth"

    def expect_idle_done(self) -> None:
        """After sending "+ idling" for IDLE: the next line must be DONE (`IdleDone`)."""
        self._expect("IDLE")
        self._phase = "idle"

    def tls_established(self) -> None:
        """The TLS handshake after STARTTLS completed: read commands again."""
        if self._phase != "tls":
            raise ImapProtocolError("no STARTTLS is pending")
        self._tls_active = True
        self._buf.clear()
        self._scan_from = 0
        self._skip_line = False
        self._phase = "command"

    # --- internals -------------------------------------------------------------------------------

    def _expect(self, name: str) -> None:
        if self._phase != "command" or self._last is None or self._last.name != name:
            raise ImapProtocolError(f"not after {name}")
        if self._events:
            raise ImapProtocolError("events are still pending")

    def _close(self, reason: str, bye: bytes | None = None) -> None:
        if self._closed is not None:
            return
        if bye is not None:
            self._out += bye
        self._closed = ConnectionClosed(reason)
        self._phase = "closed"
        self._buf.clear()
        self._cmd.clear()

    def _count_bad(self) -> None:
        self._bad += 1
        if self._bad >= self._settings.max_bad_commands:
            self._close("too many errors", _BYE_ERRORS)

    def _send_refusal(self, refusal: _Refusal) -> None:
        self._out += refusal.response
        if refusal.aborted_append is not None:
            self._events.append(AppendAborted(refusal.aborted_append))
        if refusal.event:
            self._last = None  # expect_*() only right after the command they follow
            self._events.append(CommandError(refusal.tag, refusal.response))
        if refusal.bad:
            self._count_bad()

    def _refuse(self, refusal: _Refusal, marker: _Marker | None) -> None:
        """Refuse the current command; `marker` is the literal ending its current line."""
        self._cmd.clear()
        if marker is None or marker.sync:
            # RFC 9051 7.5: a BAD instead of "+" stops the client sending the literal
            self._send_refusal(refusal)
            return
        if marker.size <= self._discard_max:
            self._refusal = refusal  # RFC 7888: the octets come anyway; skip them
            self._skip_literal(marker.size)
            return
        self._send_refusal(refusal)
        self._close("literal too large", _BYE_TOO_BIG)

    def _fail(
        self,
        tag: str | None,
        text: str,
        *,
        status: str = "BAD",
        code: str | None = None,
        marker: _Marker | None = None,
        aborted_append: str | None = None,
    ) -> None:
        response = imap_wire.response(tag, status, text, code)
        refusal = _Refusal(tag, response, True, status == "BAD", aborted_append)
        self._refuse(refusal, marker)

    def _skip_literal(self, size: int) -> None:
        self._remaining = size
        self._phase = "discard" if size else "command"

    def _end_message(self) -> None:
        append = self._append
        assert append is not None
        self._append = None
        self._append_trailer = append.tag
        self._phase = "command"

    # --- input steps -----------------------------------------------------------------------------

    def _step(self) -> bool:
        """Process one unit of buffered input; False when more input is needed."""
        phase = self._phase
        if phase in ("literal", "discard", "append"):
            return self._step_octets()
        if phase not in ("command", "auth", "idle"):
            return False
        line = self._read_line()
        if line is None:
            return False
        if phase == "auth":
            self._auth_line(line)
        elif phase == "idle":
            self._idle_line(line)
        else:
            self._command_line(line)
        return True

    def _read_line(self) -> bytes | None:
        """One line without its CRLF (or LF), `_OVERFLOW`, or None (need more input)."""
        buf = self._buf
        if self._skip_line:
            i = buf.find(b"\n")
            if i < 0:
                buf.clear()
                return None
            del buf[: i + 1]
            self._skip_line = False
            self._scan_from = 0
        limit = self._settings.max_line
        i = buf.find(b"\n", self._scan_from)
        if i < 0:
            if len(buf) > limit + 1:  # the content will exceed the limit even with a CR
                self._overflow_head = bytes(buf[: limit + 1])
                buf.clear()
                self._scan_from = 0
                self._skip_line = True
                return _OVERFLOW
            self._scan_from = len(buf)
            return None
        self._scan_from = 0
        end = i - 1 if i > 0 and buf[i - 1] == 0x0D else i
        if end > limit:
            self._overflow_head = bytes(buf[: limit + 1])
            del buf[: i + 1]
            return _OVERFLOW
        line = bytes(buf[:end])
        del buf[: i + 1]
        return line

    def _step_octets(self) -> bool:
        buf = self._buf
        n = min(self._remaining, len(buf))
        if n == 0:
            return False
        phase = self._phase
        if phase == "append":
            if n == len(buf):
                chunk = bytes(buf)
                buf.clear()
            else:
                chunk = bytes(buf[:n])
                del buf[:n]
            self._events.append(AppendChunk(chunk))
        else:
            if phase == "literal":
                self._cmd += buf[:n]
            del buf[:n]
        self._remaining -= n
        if self._remaining == 0:
            if phase == "append":
                self._end_message()
            else:
                self._phase = "command"
        return True

    def _command_line(self, line: bytes) -> None:
        if line is _OVERFLOW:
            self._line_overflow()
            return
        marker = _literal_marker(line)
        refusal = self._refusal
        if refusal is not None:
            # the rest of a refused command whose non-synchronising literal was skipped
            if marker is not None and not marker.sync and marker.size <= self._discard_max:
                self._skip_literal(marker.size)
                return
            self._refusal = None
            self._send_refusal(refusal)
            if marker is not None and not marker.sync:
                self._close("literal too large", _BYE_TOO_BIG)
            return
        trailer = self._append_trailer
        if trailer is not None:
            self._append_trailer = None
            if line:
                # RFC 9051 9: append = ... SP literal CRLF (MULTIAPPEND is not offered)
                self._fail(
                    trailer,
                    "Unexpected data after the message",
                    marker=marker,
                    aborted_append=trailer,
                )
            else:
                self._events.append(AppendEnd(trailer))
            return
        if len(self._cmd) + len(line) + 2 > self._settings.max_command:
            tag = _guess_tag(bytes(self._cmd) or line)
            self._fail(tag, "Command too long", code="TOOBIG", marker=marker)
            return
        if marker is None:
            self._cmd += line
            raw = bytes(self._cmd)
            self._cmd.clear()
            self._complete(raw)
            return
        prefix = bytes(self._cmd) + line[: len(line) - marker.length]
        self._cmd += line
        self._cmd += b"\r\n"
        self._literal(prefix, marker)

    def _line_overflow(self) -> None:
        refusal = self._refusal
        if refusal is not None:
            self._refusal = None
            self._send_refusal(refusal)
            return
        trailer = self._append_trailer
        self._append_trailer = None
        tag = trailer or _guess_tag(bytes(self._cmd) or self._overflow_head)
        self._fail(tag, "Command line too long", code="TOOBIG", aborted_append=trailer)

    def _refusal_text(self, name: str) -> str | None:
        text = COMMAND_TABLE[name][_COLUMN[self._state]]
        if text is None and name == "STARTTLS":
            if self._tls_active:
                return "TLS is already active"
            if not self._settings.starttls:
                return "STARTTLS is not available"
        return text

    def _complete(self, raw: bytes) -> None:
        """A whole command has arrived: check it and yield it."""
        if not raw:
            self._fail(None, "Empty command line")
            return
        try:
            tag, name, _ = command_head(raw)
        except ImapParseError as exc:
            self._fail(exc.tag, exc.text)
            return
        refusal = self._refusal_text(name)
        if refusal is not None:
            self._fail(tag, refusal)
            return
        try:
            command = parse_command(raw, max_depth=self._settings.max_depth)
        except ImapParseError as exc:
            self._fail(tag, exc.text, status=exc.status, code=exc.code)
            return
        self._last = command
        self._events.append(CommandReceived(command))
        if name == "STARTTLS":
            # RFC 9051 6.2.1: nothing pipelined after STARTTLS may be read (CVE-2011-0411)
            self._phase = "tls"
            self._buf.clear()
            self._scan_from = 0
            self._skip_line = False

    def _literal(self, prefix: bytes, marker: _Marker) -> None:
        """A line ended in a literal marker; `prefix` is the command up to the marker."""
        s = self._settings
        try:
            tag, name, _ = command_head(prefix)
        except ImapParseError as exc:
            self._fail(exc.tag, exc.text, marker=marker)
            return
        refusal = self._refusal_text(name)
        if refusal is not None:
            self._fail(tag, refusal, marker=marker)
            return
        if name == "APPEND":
            try:
                head = parse_append_head(prefix, max_depth=s.max_depth)
            except ImapParseError as exc:
                self._fail(tag, exc.text, marker=marker)
                return
            if head is not None:
                self._cmd.clear()
                self._start_append(head.tag, head.mailbox, head.flags, head.internal_date, marker)
                return
        if marker.binary:
            self._fail(tag, "literal8 is only allowed for APPEND data", marker=marker)
        elif not marker.sync and not s.literal_plus and marker.size > LITERAL_MINUS_MAX:
            # RFC 7888 4: LITERAL- refuses a larger non-synchronising literal
            self._fail(tag, "Non-synchronizing literal too large", code="TOOBIG", marker=marker)
        elif marker.size > s.max_literal or len(self._cmd) + marker.size > s.max_command:
            self._fail(tag, "Literal too large", code="TOOBIG", marker=marker)
        else:
            if marker.sync:
                self._out += _CONTINUE  # RFC 9051 7.6
            self._remaining = marker.size
            self._phase = "literal" if marker.size else "command"

    def _start_append(
        self,
        tag: str,
        mailbox: str,
        flags: tuple[str, ...],
        internal_date: datetime.datetime | None,
        marker: _Marker,
    ) -> None:
        s = self._settings
        if not marker.sync and not s.literal_plus and marker.size > LITERAL_MINUS_MAX:
            self._fail(tag, "Non-synchronizing literal too large", code="TOOBIG", marker=marker)
            return
        if marker.size > s.append_limit:
            # RFC 7889 4 / RFC 9051 7.1: NO [TOOBIG]
            self._fail(tag, "Message too large", status="NO", code="TOOBIG", marker=marker)
            return
        append = AppendStart(
            tag, mailbox, flags, internal_date, marker.size, marker.binary, marker.sync
        )
        self._append = append
        self._phase = "append_decision"
        self._events.append(append)

    def _auth_line(self, line: bytes) -> None:
        # RFC 9051 6.2.2: a base64 response line, or "*" to cancel
        self._phase = "command"
        if line is _OVERFLOW:
            self._events.append(AuthenticateResponse(None, malformed=True))
            return
        try:
            data = sasl.decode_response(line.decode("ascii"))
        except sasl.SaslCancelled:
            self._events.append(AuthenticateResponse(None))
        except (UnicodeDecodeError, sasl.SaslError):
            self._events.append(AuthenticateResponse(None, malformed=True))
        else:
            self._events.append(AuthenticateResponse(data))

    def _idle_line(self, line: bytes) -> None:
        # RFC 2177 3 / RFC 9051 6.3.13: the client ends IDLE with "DONE"
        self._phase = "command"
        assert self._last is not None
        tag = self._last.tag
        if line is not _OVERFLOW and line.upper() == b"DONE":
            self._events.append(IdleDone(tag))
            return
        response = imap_wire.response(tag, "BAD", "Expected DONE")
        self._out += response
        self._events.append(IdleDone(tag, valid=False))
        self._events.append(CommandError(tag, response))
        self._count_bad()
