"""Sans-I/O SMTP server core: RFC 5321, with ESMTP extensions.

Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
(RFC 6531), ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463), CHUNKING (RFC 3030),
STARTTLS (RFC 3207), AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN (`proto.sasl`).

Implementation notes
- Bytes in (`receive_data`, `receive_eof`), events out (`next_event`, see
  `proto.smtp_events`), decisions in (`send_reply`), bytes out (`data_to_send`). No
  sockets, clocks or randomness. `SmtpProtocolError` is the only exception raised, and
  only for misuse by the shell, never for anything a client sends.
- Which command is allowed in which session state is the table `COMMAND_TABLE` at the
  end of this module (RFC 5321 4.1.4 ordering), consulted after the capability checks
  of `_capability_refusal` (extension not offered: 502; STARTTLS under TLS: 503; AUTH
  without TLS: 538).
- One command is processed per step (RFC 2920 pipelining): the core never reads ahead
  of a pending decision, and replies accumulate until the shell drains them.
- Decision protocol: after `next_event()` returned a decision event (`MailFrom`,
  `RcptTo`, `MessageEnd`, `AuthCredentials`) the shell MUST call `send_reply()` before
  calling `next_event()` again; doing otherwise raises `SmtpProtocolError` (a shell
  bug). Positive answers must be 2xx (235 for `AuthCredentials`); any 421 answer
  closes the session (RFC 5321 3.8). A 5xx answer to `MailFrom`/`RcptTo` counts as a
  bad command (it indicates probing), towards `max_bad_commands`.
- Bad commands: every 5xx the core itself gives to a command line (unknown, syntax,
  sequence, over-long line, missing authentication) counts and emits `CommandRefused`;
  a core 4xx (452 too many recipients) emits `CommandRefused` without counting. When
  the count reaches `max_bad_commands` the core adds 421 4.7.0 and closes.
- DATA is handled with whole-buffer bytes operations (find / replace / count / split),
  never a Python loop per line. Only a real <CRLF>.<CRLF> ends DATA (the CRLF before
  the dot may be the implied one right after 354); a line start is only ever after a
  real CRLF, so `\\n.\\n`, `\\r.\\r`, `\\r\\n.\\n`, `\\n.\\r\\n` never end a message (SMTP
  smuggling). The core keeps back at most 5 unconsumed octets so that a terminator or
  CRLF split across reads is seen whole: any chunking of the input gives the same
  content, replies and events (apart from how `MessageChunk`s are cut).
- After `MessageAborted` the rest of the message is read and dropped; the core sends
  the refusal itself when the message (or the BDAT chunk) ends, then resets the
  transaction. On end of input during DATA/BDAT only `ConnectionClosed` is emitted:
  the shell drops any open spool then.
- After STARTTLS every buffered byte, and every byte received before
  `tls_established()`, is discarded (RFC 3207 4.2; CVE-2011-0411).
- Reply texts are generic; the greeting names no software (DESIGN.md 3).
"""

from __future__ import annotations

import enum
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mailward.proto import sasl
from mailward.proto.address import (
    AddressError,
    parse_domain,
    parse_mail_params,
    parse_path,
    split_path,
)
from mailward.proto.replies import AUTH_REQUIRED, MESSAGE_TOO_BIG, TOO_MANY_RECIPIENTS, Reply
from mailward.proto.smtp_events import (
    AuthCredentials,
    CommandRefused,
    ConnectionClosed,
    Hello,
    MailFrom,
    MessageAborted,
    MessageChunk,
    MessageEnd,
    MessageStart,
    NeedData,
    RcptTo,
    Reset,
    SmtpEvent,
    StartTls,
)

__all__ = [
    "COMMAND_TABLE",
    "MAX_AUTH_LINE",
    "MAX_COMMAND_LINE",
    "MAX_TEXT_LINE",
    "SessionState",
    "SmtpProtocolError",
    "SmtpServer",
    "SmtpSettings",
]

MAX_COMMAND_LINE = 2048  # RFC 5321 4.5.3.1.4 says 512; room for ESMTP parameters
MAX_AUTH_LINE = 12288  # RFC 4954 4: AUTH lines up to 12288 octets
MAX_TEXT_LINE = 1000  # RFC 5321 4.5.3.1.6, including CRLF
_MAX_LINE_CONTENT = MAX_TEXT_LINE - 2


class SmtpProtocolError(Exception):
    """The shell misused the core (reply with no decision pending, data after close, ...)."""


@dataclass(frozen=True)
class SmtpSettings:
    """Per-listener settings of the core."""

    hostname: str
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_bad_commands: int = 10
    max_commands: int = 1000
    tls_available: bool = True  # STARTTLS offered while TLS is not active
    tls_active: bool = False  # True on implicit-TLS listeners (465)
    auth_enabled: bool = False  # AUTH offered/accepted only when TLS is active
    auth_required: bool = False  # MAIL needs a successful AUTH first (530 5.7.0)
    bare_line_endings: Literal["reject", "normalize"] = "reject"
    chunking: bool = True  # CHUNKING/BDAT (RFC 3030)


class SessionState(enum.Enum):
    """Command-level session states (RFC 5321 4.1.4), the columns of `COMMAND_TABLE`."""

    INIT = "init"  # greeted; no HELO/EHLO yet (again none after STARTTLS)
    READY = "ready"  # HELO/EHLO done, no mail transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one RCPT accepted
    BDAT = "bdat"  # at least one non-LAST BDAT chunk accepted (RFC 3030)


_Phase = Literal["command", "data", "bdat", "auth", "closed"]

# --- replies (client-safe texts) --------------------------------------------------------

_OK = Reply(250, "2.0.0", "OK")
_BYE = Reply(221, "2.0.0", "Bye")
_HELP = Reply(214, "2.0.0", "See RFC 5321")
_VRFY = Reply(252, "2.5.0", "Cannot verify the user; send mail to attempt delivery")
_START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")  # RFC 3463: no 3.x.x class
_READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
_UNKNOWN = Reply(500, "5.5.1", "Command unrecognized")
_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
_BAD_LINE = Reply(500, "5.5.2", "Syntax error")
_SYNTAX = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
_BAD_DOMAIN = Reply(501, "5.5.4", "Invalid domain name")
_BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
_BAD_RCPT = Reply(501, "5.1.3", "Bad recipient address syntax")
_BAD_PARAM = Reply(555, "5.5.4", "Unsupported or malformed parameter")
_NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
_TLS_ACTIVE = Reply(503, "5.5.1", "TLS already active")
_ALREADY_AUTH = Reply(503, "5.5.1", "Already authenticated")
_NEED_HELO = Reply(503, "5.5.1", "Send EHLO or HELO first")
_NEED_MAIL = Reply(503, "5.5.1", "Send MAIL first")
_NEED_RCPT = Reply(503, "5.5.1", "No valid recipients")
_NESTED_MAIL = Reply(503, "5.5.1", "Nested MAIL command")
_IN_TRANSACTION = Reply(503, "5.5.1", "Not allowed during a mail transaction")
_IN_BDAT = Reply(503, "5.5.1", "Send BDAT or RSET to finish the message")
_ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication")
_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
_AUTH_CANCELLED = Reply(501, "5.7.0", "Authentication cancelled")
_AUTH_MALFORMED = Reply(501, "5.5.2", "Cannot decode response")
_BARE_EOL = Reply(554, "5.6.0", "Message refused: bare CR or LF not allowed")
_LONG_TEXT_LINE = Reply(554, "5.6.0", "Message refused: line longer than 1000 octets")
_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
_TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection")

_VERBS = frozenset(
    {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "EXPN"}
    | {"HELP", "STARTTLS", "AUTH"}
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BDAT_ARGS = re.compile(r"([0-9]{1,20})(?: ([Ll][Aa][Ss][Tt]))?")  # RFC 3030 2
_SIZE_VALUE = re.compile(r"[0-9]{1,20}")  # RFC 1870 4: size-value = 1*20DIGIT
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")  # RFC 3463 2
_BARE_CR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_ALL_BUT_CR_LF = bytes(sorted(set(range(256)) - {0x0D, 0x0A}))
_TRANSACTION_STATES = frozenset({SessionState.MAIL, SessionState.RCPT, SessionState.BDAT})

_OVERFLOW = b"<line too long>"  # returned by identity from _read_line, never a real line

_Decision = MailFrom | RcptTo | MessageEnd | AuthCredentials


def _check_reply(reply: Reply) -> None:
    if not 200 <= reply.code <= 599:
        raise SmtpProtocolError(f"reply code {reply.code} out of range")
    if reply.enhanced is not None and (
        not _ENHANCED.fullmatch(reply.enhanced) or reply.enhanced[0] != str(reply.code)[0]
    ):
        raise SmtpProtocolError(f"bad enhanced status code {reply.enhanced!r}")
    for line in reply.lines:
        if _CONTROL.search(line):
            raise SmtpProtocolError("control character in reply text")  # reply injection


class SmtpServer:
    """One SMTP server session. See the module docstring for the calling protocol."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings
        self._buf = bytearray()
        self._out = bytearray()
        self._events: deque[SmtpEvent] = deque()
        self._eof = False
        self._closed: ConnectionClosed | None = None
        self._state = SessionState.INIT
        self._phase: _Phase = "command"
        self._tls_active = settings.tls_active
        self._awaiting_tls = False
        self._authenticated = False
        self._helo: str | None = None
        self._extended = False
        self._decision: _Decision | None = None
        self._decision_delivered = False
        self._bad = 0
        self._commands = 0
        # command line reading
        self._scan_from = 0
        self._discard_line = False
        # transaction
        self._smtputf8 = False
        self._rcpts = 0
        # message content (DATA and BDAT)
        self._bol = True
        self._line_len = 0
        self._size = 0
        self._held_cr = False
        self._abort: Reply | None = None
        # BDAT chunk being read
        self._bdat_remaining = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_discard = False
        # AUTH exchange
        self._sasl: sasl.SaslMechanism | None = None
        # RFC 5321 4.2 / 3.1: greeting, naming no software (DESIGN.md 3)
        self._out += f"220 {settings.hostname} ESMTP\r\n".encode()

    # --- read-only state -----------------------------------------------------------------

    @property
    def phase(self) -> _Phase:
        """What the core is reading: command lines, DATA, a BDAT chunk, AUTH responses."""
        return "closed" if self._closed is not None else self._phase

    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def in_transaction(self) -> bool:
        return self._closed is None and self._state in _TRANSACTION_STATES

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def helo_name(self) -> str | None:
        return self._helo

    @property
    def awaiting_decision(self) -> bool:
        """True after `next_event()` returned a decision event not yet answered."""
        return self._decision is not None and self._decision_delivered

    @property
    def partial_line(self) -> bool:
        """True while part of a command line (or AUTH response) has been received but
        not its end: the shell's minimum-rate check runs while this holds."""
        return self._phase in ("command", "auth") and (bool(self._buf) or self._discard_line)

    # --- shell API -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the client."""
        if self._closed is not None:
            raise SmtpProtocolError("receive_data() after the session closed")
        if self._eof:
            raise SmtpProtocolError("receive_data() after receive_eof()")
        if self._awaiting_tls:
            return  # RFC 3207 4.2: plaintext after STARTTLS is never interpreted
        self._buf += data

    def receive_eof(self) -> None:
        """The client closed its side; once buffered commands are processed,
        `next_event()` returns ConnectionClosed("eof")."""
        self._eof = True

    def next_event(self) -> SmtpEvent:
        """The next event; NeedData when no complete input is buffered.

        Raises SmtpProtocolError while a delivered decision is unanswered, and after
        StartTls until `tls_established()` is called."""
        if self.awaiting_decision:
            raise SmtpProtocolError("a decision is pending: call send_reply() first")
        while True:
            if self._events:
                event = self._events.popleft()
                if event is self._decision:
                    self._decision_delivered = True
                return event
            if self._closed is not None:
                return self._closed
            if self._awaiting_tls:
                raise SmtpProtocolError("call tls_established() after StartTls")
            if not self._step():
                if self._eof:
                    self._close("eof")
                    continue
                return NeedData()

    def send_reply(self, reply: Reply) -> None:
        """Answer the pending decision event (see the module docstring)."""
        decision = self._decision
        if decision is None or not self._decision_delivered or self._closed is not None:
            raise SmtpProtocolError("no decision is pending")
        _check_reply(reply)
        positive = reply.is_positive
        if positive and (
            reply.code >= 300 or (isinstance(decision, AuthCredentials) and reply.code != 235)
        ):
            raise SmtpProtocolError(f"reply {reply.code} cannot answer {type(decision).__name__}")
        self._decision = None
        self._decision_delivered = False
        self._out += reply.to_bytes()
        if isinstance(decision, MailFrom):
            if positive:
                self._state = SessionState.MAIL
                self._smtputf8 = decision.smtputf8
                self._rcpts = 0
        elif isinstance(decision, RcptTo):
            if positive:
                self._state = SessionState.RCPT
                self._rcpts += 1
        elif isinstance(decision, MessageEnd):
            self._end_transaction()  # RFC 5321 4.1.1.4: the transaction ends either way
        else:
            self._phase = "command"
            self._authenticated = positive
        if reply.code == 421:
            self._close("closed by server")  # RFC 5321 3.8
        elif reply.code >= 500 and isinstance(decision, MailFrom | RcptTo):
            self._count_bad()

    def tls_established(self) -> None:
        """The shell finished the TLS handshake after StartTls. RFC 3207 4.2: the
        session starts afresh (EHLO expected; authentication and transaction forgotten)."""
        if not self._awaiting_tls or self._closed is not None:
            raise SmtpProtocolError("tls_established() without a StartTls")
        self._awaiting_tls = False
        self._tls_active = True
        self._buf.clear()
        self._scan_from = 0
        self._discard_line = False
        self._state = SessionState.INIT
        self._helo = None
        self._extended = False
        self._authenticated = False
        self._smtputf8 = False
        self._rcpts = 0

    def close(self, reply: Reply) -> None:
        """Shell-initiated close (timeout, shutdown): queue `reply`, then only
        ConnectionClosed. Does nothing if the session is already closed."""
        if self._closed is not None:
            return
        _check_reply(reply)
        self._events.clear()
        self._out += reply.to_bytes()
        self._close("closed by server")

    def data_to_send(self) -> bytes:
        """Drain the queued output."""
        out = bytes(self._out)
        self._out.clear()
        return out

    # --- internals: output, refusal, closing ---------------------------------------------

    def _reply(self, reply: Reply) -> None:
        self._out += reply.to_bytes()

    def _decide(self, event: _Decision) -> None:
        self._decision = event
        self._decision_delivered = False
        self._events.append(event)

    def _close(self, reason: str, reply: Reply | None = None) -> None:
        if self._closed is not None:
            return
        if reply is not None:
            self._reply(reply)
        self._closed = ConnectionClosed(reason)
        self._events.append(self._closed)
        self._decision = None
        self._decision_delivered = False
        self._awaiting_tls = False
        self._buf.clear()

    def _count_bad(self) -> None:
        self._bad += 1
        if self._bad >= self._settings.max_bad_commands:
            self._close("too many errors", _TOO_MANY_ERRORS)

    def _refuse(self, command: str, reply: Reply, reason: str) -> None:
        self._reply(reply)
        self._events.append(CommandRefused(command, reply.code, reason))
        if reply.code >= 500:
            self._count_bad()

    def _end_transaction(self) -> None:
        self._state = SessionState.READY
        self._phase = "command"
        self._smtputf8 = False
        self._rcpts = 0
        self._abort = None
        self._held_cr = False

    def _reset_transaction(self) -> None:
        if self._state in _TRANSACTION_STATES:
            self._events.append(Reset())
            self._end_transaction()

    # --- input steps -----------------------------------------------------------------------

    def _step(self) -> bool:
        """Process one unit of buffered input; False when more input is needed."""
        if self._phase == "data":
            return self._step_data()
        if self._phase == "bdat":
            return self._step_bdat()
        line = self._read_line()
        if line is None:
            return False
        if line is _OVERFLOW:
            if self._phase == "auth":
                self._phase = "command"
                self._sasl = None
                self._refuse("AUTH", _LINE_TOO_LONG, "line too long")
            else:
                self._command_line_too_long()
            return True
        if self._phase == "auth":
            self._auth_response(line)
        else:
            self._command(line)
        return True

    def _line_limit(self) -> int:
        if self._phase == "auth" or self._buf[:5].upper() == b"AUTH ":
            return MAX_AUTH_LINE
        return MAX_COMMAND_LINE

    def _read_line(self) -> bytes | None:
        """One line including its LF, `_OVERFLOW`, or None (need more input).

        A bare LF ends a command line (clients send it); CR elsewhere is refused later."""
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
            if len(buf) >= limit:  # the line will exceed the limit: RFC 5321 4.5.3.1.4
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

    def _command_line_too_long(self) -> None:
        self._commands += 1
        if self._commands > self._settings.max_commands:
            self._close("too many commands", _TOO_MANY_COMMANDS)
            return
        self._refuse("", _LINE_TOO_LONG, "line too long")

    @staticmethod
    def _decode_line(line: bytes) -> str | None:
        body = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if _CONTROL.search(text):
            return None
        return text.rstrip(" ")  # leniency: trailing spaces are ignored

    def _command(self, raw: bytes) -> None:
        self._commands += 1
        if self._commands > self._settings.max_commands:
            self._close("too many commands", _TOO_MANY_COMMANDS)
            return
        text = self._decode_line(raw)
        if text is None:
            self._refuse("", _BAD_LINE, "non-UTF-8 or control character in command")
            return
        word, _, arg = text.partition(" ")
        verb = word.upper() if word.isascii() else ""
        if verb not in _VERBS:
            shown = verb if verb.isalpha() and len(verb) <= 16 else ""
            self._refuse(shown, _UNKNOWN, "unknown command")
            return
        refusal = self._capability_refusal(verb)
        if refusal is not None:
            self._refuse(verb, refusal, "not available")
            return
        action = COMMAND_TABLE[verb][_COLUMN[self._state]]
        if isinstance(action, Reply):
            self._refuse(verb, action, "bad sequence of commands")
            if verb == "BDAT":
                self._discard_refused_bdat(arg)
            return
        action(self, arg)

    def _capability_refusal(self, verb: str) -> Reply | None:
        """Checks made before the state table: is the command offered at all?"""
        s = self._settings
        if verb == "STARTTLS":
            if self._tls_active:
                return _TLS_ACTIVE
            if not s.tls_available:
                return _NOT_IMPLEMENTED
        elif verb == "AUTH":
            if not s.auth_enabled:
                return _NOT_IMPLEMENTED
            if not self._tls_active:
                return _ENCRYPTION_REQUIRED  # RFC 4954 4, DESIGN.md 3
        elif verb == "BDAT" and not s.chunking:
            return _NOT_IMPLEMENTED
        return None

    # --- command handlers (cells of COMMAND_TABLE) ------------------------------------------

    def _ehlo_lines(self) -> tuple[str, ...]:
        s = self._settings
        lines = [s.hostname, "PIPELINING", f"SIZE {s.max_message_size}", "8BITMIME"]
        lines += ["SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if s.chunking:
            lines.append("CHUNKING")
        if s.tls_available and not self._tls_active:
            lines.append("STARTTLS")
        if s.auth_enabled and self._tls_active and not self._authenticated:
            lines.append("AUTH PLAIN LOGIN")  # RFC 4954 3; never before TLS
        return tuple(lines)

    def _hello(self, verb: str, arg: str) -> None:
        # RFC 5321 4.1.1.1: "EHLO" SP ( Domain / address-literal )
        if not arg:
            self._refuse(verb, _SYNTAX, "missing domain")
            return
        try:
            parse_domain(arg, utf8=False)
        except AddressError:
            self._refuse(verb, _BAD_DOMAIN, "invalid domain")
            return
        self._reset_transaction()
        self._helo = arg
        self._extended = verb == "EHLO"
        self._state = SessionState.READY
        if self._extended:
            self._reply(Reply(250, None, self._ehlo_lines()))
        else:
            self._reply(Reply(250, None, self._settings.hostname))
        self._events.append(Hello(arg, self._extended))

    def _cmd_ehlo(self, arg: str) -> None:
        self._hello("EHLO", arg)

    def _cmd_helo(self, arg: str) -> None:
        self._hello("HELO", arg)

    def _cmd_mail(self, arg: str) -> None:
        if self._settings.auth_required and not self._authenticated:
            self._refuse("MAIL", AUTH_REQUIRED, "authentication required")  # RFC 4954 6
            return
        # RFC 5321 4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters]
        rest = _after_keyword(arg, "FROM:")
        if rest is None:
            self._refuse("MAIL", _SYNTAX, "syntax")
            return
        try:
            path_text, params_text = split_path(rest)
        except AddressError:
            self._refuse("MAIL", _BAD_SENDER, "bad reverse-path syntax")
            return
        try:
            params = parse_mail_params(params_text, utf8=True)
        except AddressError:
            self._refuse("MAIL", _BAD_PARAM, "malformed parameter")
            return
        smtputf8 = "SMTPUTF8" in params
        body = params.get("BODY")
        size_text = params.get("SIZE")
        if (
            not params.keys() <= {"SIZE", "BODY", "SMTPUTF8", "AUTH"}
            or (not smtputf8 and not params_text.isascii())  # RFC 6531 3.3
            or ("SMTPUTF8" in params and params["SMTPUTF8"] is not None)  # RFC 6531 3.4
            or ("BODY" in params and (body is None or body.upper() not in ("7BIT", "8BITMIME")))
            or ("SIZE" in params and (size_text is None or not _SIZE_VALUE.fullmatch(size_text)))
            or ("AUTH" in params and params["AUTH"] is None)  # RFC 4954 5: accepted, ignored
        ):
            self._refuse("MAIL", _BAD_PARAM, "unsupported or malformed parameter")
            return
        if path_text == "<>":
            reverse_path = ""  # RFC 5321 4.5.5 null reverse-path
        else:
            try:
                reverse_path = parse_path(path_text, utf8=smtputf8).mailbox
            except AddressError:
                self._refuse("MAIL", _BAD_SENDER, "bad reverse-path syntax")
                return
        size = int(size_text) if size_text is not None else None
        if size is not None and size > self._settings.max_message_size:
            self._refuse("MAIL", MESSAGE_TOO_BIG, "declared size over limit")  # RFC 1870 6.1
            return
        self._decide(
            MailFrom(
                reverse_path=reverse_path,
                params=params,
                size=size,
                smtputf8=smtputf8,
                body=body.upper() if body is not None else None,
            )
        )

    def _cmd_rcpt(self, arg: str) -> None:
        # RFC 5321 4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
        # Forward-path ) [SP Rcpt-parameters]
        rest = _after_keyword(arg, "TO:")
        if rest is None:
            self._refuse("RCPT", _SYNTAX, "syntax")
            return
        try:
            path_text, params_text = split_path(rest)
            path = parse_path(path_text, utf8=self._smtputf8, postmaster=True)
        except AddressError:
            self._refuse("RCPT", _BAD_RCPT, "bad forward-path syntax")
            return
        if params_text:
            # no RCPT parameter extension (DSN, ...) is offered: RFC 5321 4.1.1.11 555
            self._refuse("RCPT", _BAD_PARAM, "unsupported parameter")
            return
        if self._rcpts >= self._settings.max_recipients:
            self._refuse("RCPT", TOO_MANY_RECIPIENTS, "too many recipients")  # 4.5.3.1.8
            return
        self._decide(
            RcptTo(
                forward_path=path.mailbox,
                local_part=path.local_part,
                domain=path.domain,
                quoted_local=path.quoted_local,
                params={},
                had_source_route=bool(path.source_route),
            )
        )

    def _start_message(self) -> None:
        self._bol = True  # RFC 5321 4.1.1.4: the CRLF before the first line is implied
        self._line_len = 0
        self._size = 0
        self._held_cr = False
        self._abort = None
        self._events.append(MessageStart())

    def _cmd_data(self, arg: str) -> None:
        if arg:
            self._refuse("DATA", _SYNTAX, "DATA takes no argument")
            return
        self._reply(_START_DATA)
        self._start_message()
        self._phase = "data"

    def _cmd_bdat(self, arg: str) -> None:
        m = _BDAT_ARGS.fullmatch(arg)
        if m is None:
            # the chunk size is unknown, so nothing can be skipped (RFC 3030 2)
            self._refuse("BDAT", _SYNTAX, "syntax")
            return
        size = int(m.group(1))
        if self._state is SessionState.RCPT:
            self._start_message()
            self._state = SessionState.BDAT
        self._phase = "bdat"
        self._bdat_remaining = self._bdat_size = size
        self._bdat_last = m.group(2) is not None
        self._bdat_discard = False
        if self._abort is None and self._size + size > self._settings.max_message_size:
            self._abort_message(MESSAGE_TOO_BIG, "message over size limit")

    def _discard_refused_bdat(self, arg: str) -> None:
        # RFC 3030 2: the octets of a refused BDAT chunk still follow and are not commands
        m = _BDAT_ARGS.fullmatch(arg)
        if m is not None and self._closed is None:
            self._phase = "bdat"
            self._bdat_remaining = int(m.group(1))
            self._bdat_discard = True

    def _cmd_rset(self, arg: str) -> None:
        if arg:
            self._refuse("RSET", _SYNTAX, "RSET takes no argument")
            return
        self._reset_transaction()  # RFC 5321 4.1.1.5
        self._reply(_OK)

    def _cmd_noop(self, arg: str) -> None:
        self._reply(_OK)  # RFC 5321 4.1.1.9: the argument is ignored

    def _cmd_quit(self, arg: str) -> None:
        if arg:
            self._refuse("QUIT", _SYNTAX, "QUIT takes no argument")
            return
        self._close("quit", _BYE)  # RFC 5321 4.1.1.10

    def _cmd_vrfy(self, arg: str) -> None:
        if not arg:
            self._refuse("VRFY", _SYNTAX, "VRFY needs an argument")
            return
        self._reply(_VRFY)  # RFC 5321 3.5.3: 252, reveal nothing (DESIGN.md 3)

    def _cmd_expn(self, arg: str) -> None:
        self._refuse("EXPN", _NOT_IMPLEMENTED, "EXPN disabled")  # RFC 5321 3.5.2, 7.3

    def _cmd_help(self, arg: str) -> None:
        self._reply(_HELP)

    def _cmd_starttls(self, arg: str) -> None:
        if arg:
            self._refuse("STARTTLS", _SYNTAX, "STARTTLS takes no argument")  # RFC 3207 4
            return
        self._reply(_READY_TLS)
        self._events.append(StartTls())
        # RFC 3207 4.2: anything pipelined after STARTTLS is discarded (CVE-2011-0411)
        self._buf.clear()
        self._scan_from = 0
        self._awaiting_tls = True

    def _cmd_auth(self, arg: str) -> None:
        # RFC 4954 4: "AUTH" SP sasl-mech [SP initial-response]
        if self._authenticated:
            self._refuse("AUTH", _ALREADY_AUTH, "already authenticated")
            return
        name, _, initial = arg.partition(" ")
        if not name or " " in initial:
            self._refuse("AUTH", _SYNTAX, "syntax")
            return
        mechanism = sasl.new_mechanism(name)
        if mechanism is None:
            self._refuse("AUTH", _UNKNOWN_MECHANISM, "unknown mechanism")
            return
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
            self._refuse("AUTH", _AUTH_CANCELLED, "cancelled by client")
        else:
            self._refuse("AUTH", _AUTH_MALFORMED, str(exc))

    def _auth_result(self, result: sasl.SaslStep) -> None:
        if isinstance(result, sasl.SaslChallenge):
            # RFC 4954 4: continue-req = "334" SP [base64] CRLF (the SP is mandatory)
            self._out += b"334 " + sasl.encode_challenge(result.data).encode() + b"\r\n"
            self._phase = "auth"
            return
        self._phase = "command"
        self._sasl = None
        self._decide(
            AuthCredentials(result.mechanism, result.authzid, result.username, result.password)
        )

    # --- message content ----------------------------------------------------------------

    def _abort_message(self, reply: Reply, reason: str) -> None:
        self._abort = reply
        self._events.append(MessageAborted(reply.code, reason))

    def _content(self, content: bytes) -> None:
        """Check and emit one piece of message content that does not end inside a CRLF.

        Checks: bare CR/LF (reject or normalize), line length, size. When the piece
        breaks a rule, the violation at the smallest stream offset wins (ties in that
        order), so that the outcome never depends on how the input was cut."""
        if self._abort is not None or not content:
            return
        violations: list[tuple[int, int, Reply, str]] = []
        # every CR and LF must pair up as CRLF: keep only CRs and LFs, compare with CRLFs
        ends = content.translate(None, _ALL_BUT_CR_LF)
        if ends != b"\r\n" * (len(ends) // 2):
            if self._settings.bare_line_endings == "reject":
                m = _BARE_CR_LF.search(content)
                assert m is not None
                violations.append((m.start(), 0, _BARE_EOL, "bare CR or LF"))
            else:
                content = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                content = content.replace(b"\n", b"\r\n")
        long_at, line_len = self._long_line_at(content)
        if long_at >= 0:
            violations.append((long_at, 1, _LONG_TEXT_LINE, "line over 1000 octets"))
        limit = self._settings.max_message_size
        if self._size + len(content) > limit:  # RFC 1870
            violations.append((limit - self._size, 2, MESSAGE_TOO_BIG, "message over size limit"))
        if violations:
            _, _, reply, reason = min(violations, key=lambda v: (v[0], v[1]))
            self._abort_message(reply, reason)
            return
        self._line_len = line_len
        self._size += len(content)
        self._events.append(MessageChunk(content))

    def _long_line_at(self, content: bytes) -> tuple[int, int]:
        """RFC 5321 4.5.3.1.6: at most 1000 octets a line, CRLF included.

        Returns (offset of the 999th octet of the first too-long line or -1, length of
        the unfinished last line). Jumps from a line start to the last LF within the
        next 1000 octets: every line inside that window fits, so the loop runs once per
        ~1000 octets, not once per line."""
        n = len(content)
        pos = -self._line_len  # start of the current line, relative to `content`
        while True:
            stop = pos + MAX_TEXT_LINE  # its LF must come before `stop`
            if stop > n:
                j = content.rfind(b"\n", max(pos, 0))
                start = j + 1 if j >= 0 else pos
                if n - start > _MAX_LINE_CONTENT:
                    return start + _MAX_LINE_CONTENT, 0
                return -1, n - start
            j = content.rfind(b"\n", max(pos, 0), stop)
            if j < 0:
                return pos + _MAX_LINE_CONTENT, 0
            pos = j + 1

    def _step_data(self) -> bool:
        buf = self._buf
        end = False
        if self._bol and buf[:3] == b".\r\n":
            raw, used, end, stuffed = b"", 3, True, False
        else:
            # RFC 5321 4.1.1.4: only <CRLF>.<CRLF> ends. One scan for "<CRLF>." finds both
            # the terminator and (rare) dot-stuffed lines.
            i = buf.find(b"\r\n.")
            if i < 0:
                t = -1
            elif buf[i + 3 : i + 5] == b"\r\n":
                t = i
            else:
                t = buf.find(b"\r\n.\r\n", i + 3)
            stuffed = i >= 0 and (t < 0 or i < t)
            if t >= 0:
                raw, used, end = bytes(buf[: t + 2]), t + 5, True
            else:
                # keep back what could start a terminator; never split a CRLF
                used = len(buf) - 4
                if used > 0 and buf[used - 1] == 0x0D:
                    used -= 1
                if used <= 0:
                    return False
                raw = bytes(buf[:used])
        del buf[:used]
        if raw:
            bol = self._bol
            self._bol = raw.endswith(b"\r\n")  # only a real CRLF starts a line
            if self._abort is None:
                # RFC 5321 4.5.2: remove the first dot of a line starting with one
                if bol and raw[:1] == b".":
                    raw = raw[1:]
                self._content(raw.replace(b"\r\n.", b"\r\n") if stuffed else raw)
        if end:
            self._message_done()
        return True

    def _message_done(self) -> None:
        self._phase = "command"
        if self._abort is not None:
            self._reply(self._abort)
            self._end_transaction()
        else:
            self._decide(MessageEnd(self._size))

    def _bdat_piece(self, data: bytes, final: bool) -> None:
        # a CR ending one piece may pair with an LF starting the next one (even across
        # BDAT chunks): hold it back until the next octet is known
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if not final and data.endswith(b"\r"):
            data = data[:-1]
            self._held_cr = True
        self._content(data)

    def _step_bdat(self) -> bool:
        if self._bdat_remaining:
            buf = self._buf
            if not buf:
                return False
            n = min(self._bdat_remaining, len(buf))
            data = bytes(buf[:n])
            del buf[:n]
            self._bdat_remaining -= n
            if not self._bdat_discard and self._abort is None:
                self._bdat_piece(data, final=False)
            if self._bdat_remaining:
                return True
        self._phase = "command"
        if self._bdat_discard:
            self._bdat_discard = False
            return True
        if self._bdat_last and self._abort is None:
            self._bdat_piece(b"", final=True)
        if self._abort is not None:
            self._reply(self._abort)
            self._end_transaction()
        elif self._bdat_last:
            self._decide(MessageEnd(self._size))
        else:
            self._reply(Reply(250, "2.0.0", f"{self._bdat_size} octets received"))
        return True


# --- the session table (RFC 5321 4.1.4) ------------------------------------------------------

_Action = Callable[[SmtpServer, str], None] | Reply
_S = SessionState
_COLUMNS = (_S.INIT, _S.READY, _S.MAIL, _S.RCPT, _S.BDAT)
_COLUMN = {state: i for i, state in enumerate(_COLUMNS)}
_Row = tuple[_Action, _Action, _Action, _Action, _Action]


def _all(action: _Action) -> _Row:
    return (action, action, action, action, action)


_H = SmtpServer
COMMAND_TABLE: dict[str, _Row] = {
    # a handler runs the command; a Reply is the 503 refusal for that state
    # columns: INIT, READY, MAIL, RCPT, BDAT
    "EHLO": _all(_H._cmd_ehlo),
    "HELO": _all(_H._cmd_helo),
    "MAIL": (_NEED_HELO, _H._cmd_mail, _NESTED_MAIL, _NESTED_MAIL, _NESTED_MAIL),
    "RCPT": (_NEED_MAIL, _NEED_MAIL, _H._cmd_rcpt, _H._cmd_rcpt, _IN_BDAT),
    "DATA": (_NEED_MAIL, _NEED_MAIL, _NEED_RCPT, _H._cmd_data, _IN_BDAT),
    "BDAT": (_NEED_MAIL, _NEED_MAIL, _NEED_RCPT, _H._cmd_bdat, _H._cmd_bdat),
    "STARTTLS": (_NEED_HELO, _H._cmd_starttls, _IN_TRANSACTION, _IN_TRANSACTION, _IN_TRANSACTION),
    "AUTH": (_NEED_HELO, _H._cmd_auth, _IN_TRANSACTION, _IN_TRANSACTION, _IN_TRANSACTION),
    "RSET": _all(_H._cmd_rset),
    "NOOP": _all(_H._cmd_noop),
    "QUIT": _all(_H._cmd_quit),
    "VRFY": _all(_H._cmd_vrfy),
    "EXPN": _all(_H._cmd_expn),
    "HELP": _all(_H._cmd_help),
}
"""Which command may run in which `SessionState` (columns in `SessionState` order)."""
assert COMMAND_TABLE.keys() == _VERBS


def _after_keyword(arg: str, keyword: str) -> str | None:
    """What follows "FROM:" / "TO:" (case-insensitive), or None if it is missing.
    Leniency: one space after the colon is tolerated, as most clients expect."""
    if arg[: len(keyword)].upper() != keyword:
        return None
    rest = arg[len(keyword) :]
    return rest[1:] if rest.startswith(" ") else rest
