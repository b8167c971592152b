"""Sans-I/O SMTP client core: RFC 5321 (client side), with ESMTP extensions.

Extensions used: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
(RFC 6531), ENHANCEDSTATUSCODES (RFC 2034, codes from RFC 3463), STARTTLS (RFC 3207),
AUTH PLAIN (RFC 4954, RFC 4616). The queue worker (`mailward.queue`) drives it through
`queue.transport`; it never touches a socket itself.

Implementation notes
- Commands in (`ehlo`, `mail`, `rcpt`, `data`, ...), bytes out (`data_to_send`);
  bytes in (`receive_data`, `receive_eof`), events out (`next_event`: one `Response`
  per command, in command order, then `NeedData` or `Closed`). No sockets, clocks or
  randomness. `SmtpClientError` is the only exception raised: for a reply that breaks
  RFC 5321 4.2 (syntax, size bounds, a reply nobody asked for) and for misuse by the
  shell (a command with CR or LF in it, message data outside DATA, ...). After a
  malformed reply the session is unusable: the shell drops the connection.
- Batching is the core's job (RFC 2920 3.1): the shell issues commands as it likes and
  `data_to_send()` releases as many as may go now. With PIPELINING every command up to
  and including the next one that must end a group (EHLO, HELO, DATA, STARTTLS, AUTH,
  NOOP, QUIT; `_GROUP_END`) goes at once; without it, one command per reply. So MAIL,
  every RCPT and DATA leave in one write when the server pipelines.
- Reply parsing (RFC 5321 4.2): "code-text" continuation lines and a "code text" (or
  bare "code") last line, all with one code; the code is %x32-35 %x30-35 %x30-39. A
  line may end in a bare LF (leniency). Bounds: MAX_REPLY_LINE octets a line (RFC
  5321 4.5.3.1.5 says 512; real servers send longer texts), MAX_REPLY_LINES lines a
  reply (an EHLO reply has one per extension). Text is decoded as UTF-8 with
  replacement and control characters replaced by "?", so a reply can be logged as is.
  An RFC 3463 enhanced code is taken from the first line when its class matches the
  reply's first digit (RFC 2034 3) and removed from every line that repeats it.
- Message data (after a 354 `Response` to DATA): `message()` takes the message in
  chunks of any size and cut anywhere; line endings are made CRLF (a bare CR or LF
  becomes CRLF, RFC 5321 2.3.8) and a line starting with "." gets another (RFC 5321
  4.5.2), with whole-buffer bytes operations; `end_message()` adds the final CRLF if
  the message lacks it, then ".".
- STARTTLS (RFC 3207 4.2): bytes buffered after the 220 are discarded (response
  injection, the client side of CVE-2011-0411) and so is everything received until
  `tls_established()`; the extensions are forgotten, so the shell sends EHLO again.
- A 421 reply (RFC 5321 3.8) closes the session: its `Response` comes first, then
  `Closed`, and commands still waiting for replies never get one.
"""

from __future__ import annotations

import base64
import enum
import re
from collections import deque
from dataclasses import dataclass, field

from mailward.proto.replies import Reply

__all__ = [
    "MAX_REPLY_LINE",
    "MAX_REPLY_LINES",
    "Closed",
    "Command",
    "Extensions",
    "NeedData",
    "ReplyParser",
    "Response",
    "SmtpClient",
    "SmtpClientError",
    "dot_stuff",
    "parse_ehlo",
]

MAX_REPLY_LINE = 4096  # octets including CRLF
MAX_REPLY_LINES = 256


class SmtpClientError(Exception):
    """A reply that breaks RFC 5321 4.2, or a misuse of the core by its shell."""


class Command(enum.Enum):
    GREETING = "greeting"  # the server's 220 (RFC 5321 4.3.1), not a command we send
    EHLO = "EHLO"
    HELO = "HELO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    MESSAGE = "message"  # the end of the message data ("." line)
    RSET = "RSET"
    NOOP = "NOOP"
    QUIT = "QUIT"


# RFC 2920 3.1 (and RFC 3207 4 / RFC 4954 4 for STARTTLS / AUTH): a command after which
# the client waits for the replies before sending anything else.
_GROUP_END = frozenset(
    {
        Command.EHLO,
        Command.HELO,
        Command.DATA,
        Command.STARTTLS,
        Command.AUTH,
        Command.NOOP,
        Command.QUIT,
        Command.MESSAGE,
    }
)


@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete reply is buffered: send `data_to_send()` and read more bytes."""


@dataclass(frozen=True, slots=True)
class Response:
    """The server's reply to one command (`argument`: the recipient of a RCPT)."""

    command: Command
    reply: Reply
    argument: str = ""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: the server sent 421, closed its side, or we sent QUIT and
    got its reply. Commands still waiting (`unanswered`) never got a reply."""

    reason: str
    unanswered: tuple[tuple[Command, str], ...] = ()


Event = Response | NeedData | Closed

# --- replies ---------------------------------------------------------------------------

_CODE = re.compile(rb"[2-5][0-5][0-9]")
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ReplyParser:
    """Replies out of a byte stream (RFC 5321 4.2.1), bounded in size."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self._code = b""
        self._lines: list[str] = []

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> int:
        """Drop everything buffered (STARTTLS); returns how many octets were dropped."""
        dropped = len(self._buf)
        self._buf.clear()
        self._scan_from = 0
        self._code = b""
        self._lines = []
        return dropped

    @property
    def partial(self) -> bool:
        """True when part of a reply has been read (end of input now would cut it)."""
        return bool(self._buf) or bool(self._lines)

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None if more input is needed."""
        while True:
            line = self._line()
            if line is None:
                return None
            code, sep, text = line[:3], line[3:4], line[4:]
            if not _CODE.fullmatch(code) or sep not in (b"", b" ", b"-"):
                raise SmtpClientError("malformed reply line")
            if self._lines and code != self._code:
                raise SmtpClientError("reply lines with different codes")
            if len(self._lines) >= MAX_REPLY_LINES:
                raise SmtpClientError("reply has too many lines")
            self._code = code
            self._lines.append(_clean_text(text))
            if sep != b"-":
                lines, self._lines = self._lines, []
                return _make_reply(int(code), lines)

    def _line(self) -> bytes | None:
        buf = self._buf
        i = buf.find(b"\n", self._scan_from)
        if i < 0:
            if len(buf) >= MAX_REPLY_LINE:
                raise SmtpClientError("reply line too long")
            self._scan_from = len(buf)
            return None
        if i + 1 > MAX_REPLY_LINE:
            raise SmtpClientError("reply line too long")
        line = bytes(buf[:i])
        del buf[: i + 1]
        self._scan_from = 0
        return line[:-1] if line.endswith(b"\r") else line


def _clean_text(raw: bytes) -> str:
    return _CONTROL.sub("?", raw.decode("utf-8", "replace"))


def _make_reply(code: int, lines: list[str]) -> Reply:
    enhanced: str | None = None
    m = _ENHANCED.match(lines[0])
    if m is not None and m.group(1) == str(code)[0]:
        enhanced = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        prefix = enhanced + " "
        lines = [
            line[len(prefix) :] if line.startswith(prefix) else ("" if line == enhanced else line)
            for line in lines
        ]
    return Reply(code, enhanced, tuple(lines))


# --- EHLO --------------------------------------------------------------------------------

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


@dataclass(frozen=True, slots=True)
class Extensions:
    """What an EHLO reply offers (RFC 5321 4.1.1.1): keyword (upper case) -> parameters.
    Empty after HELO or before EHLO."""

    keywords: dict[str, str] = field(default_factory=dict)

    def offers(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def pipelining(self) -> bool:
        return self.offers("PIPELINING")

    @property
    def starttls(self) -> bool:
        return self.offers("STARTTLS")

    @property
    def eightbitmime(self) -> bool:
        return self.offers("8BITMIME")

    @property
    def smtputf8(self) -> bool:
        return self.offers("SMTPUTF8")

    @property
    def size(self) -> int | None:
        """RFC 1870: the SIZE limit in octets, 0 for "no fixed limit", None if not
        offered (an unparseable value counts as no fixed limit)."""
        if "SIZE" not in self.keywords:
            return None
        value = self.keywords["SIZE"].strip()
        return int(value) if value.isdigit() and len(value) <= 20 else 0

    @property
    def auth_mechanisms(self) -> frozenset[str]:
        """RFC 4954 3 "AUTH mech ...", and the pre-standard "AUTH=mech ..." form."""
        mechanisms = self.keywords.get("AUTH", "").split()
        mechanisms += self.keywords.get("AUTH=", "").split()
        return frozenset(m.upper() for m in mechanisms)


def parse_ehlo(reply: Reply) -> Extensions:
    """The extensions of a 250 EHLO reply: its lines after the first (the greeting
    domain). Lines that are not an ehlo-line (RFC 5321 4.1.1.1) are ignored."""
    keywords: dict[str, str] = {}
    for line in reply.lines[1:]:
        word, _, params = line.strip().partition(" ")
        if word.upper().startswith("AUTH="):  # RFC 4954 appendix: old servers
            keywords["AUTH="] = f"{word[5:]} {params}".strip()
            continue
        if _KEYWORD.fullmatch(word):
            keywords.setdefault(word.upper(), params.strip())
    return Extensions(keywords)


# --- message data ----------------------------------------------------------------------

_LINE_END = re.compile(rb"\r\n|\r|\n")


def dot_stuff(data: bytes, at_line_start: bool) -> bytes:
    """`data` with CRLF line endings and RFC 5321 4.5.2 transparency applied. `data` must
    not end in a CR that the next piece may pair with (SmtpClient.message holds it)."""
    if b"\r" in data or b"\n" in data:
        if data.count(b"\r\n") * 2 != data.count(b"\r") + data.count(b"\n"):
            data = _LINE_END.sub(b"\r\n", data)
        if b"\r\n." in data:
            data = data.replace(b"\r\n.", b"\r\n..")
    if at_line_start and data[:1] == b".":
        data = b"." + data
    return data


# --- the session -------------------------------------------------------------------------


class _Phase(enum.Enum):
    COMMANDS = "commands"
    MESSAGE = "message"  # after a 354, until end_message()
    TLS = "tls"  # after a 220 to STARTTLS, until tls_established()
    CLOSED = "closed"


def _check_argument(text: str) -> str:
    if _CONTROL.search(text):
        raise SmtpClientError("control character in a command argument")  # injection
    return text


class SmtpClient:
    """One SMTP client session. See the module docstring for the calling protocol."""

    def __init__(self) -> None:
        self._parser = ReplyParser()
        self._out = bytearray()
        self._queued: deque[tuple[Command, str, bytes]] = deque()
        self._pending: deque[tuple[Command, str]] = deque([(Command.GREETING, "")])
        self._phase = _Phase.COMMANDS
        self._closed: Closed | None = None
        self._eof = False
        self._extensions = Extensions()
        self._tls_active = False
        self._bol = True
        self._held_cr = False
        self.discarded_after_starttls = 0

    # --- read-only state --------------------------------------------------------------

    @property
    def extensions(self) -> Extensions:
        return self._extensions

    @property
    def tls_active(self) -> bool:
        return self._tls_active

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def in_message(self) -> bool:
        """True between a 354 to DATA and `end_message()`."""
        return self._phase is _Phase.MESSAGE

    @property
    def waiting(self) -> int:
        """Commands sent or queued that have no reply yet."""
        return len(self._pending) + len(self._queued)

    # --- bytes in / events out ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._closed is not None:
            return  # nothing more is read from a closed session
        if self._eof:
            raise SmtpClientError("receive_data() after receive_eof()")
        if self._phase is _Phase.TLS:
            self.discarded_after_starttls += len(data)  # RFC 3207 4.2
            return
        self._parser.feed(data)

    def receive_eof(self) -> None:
        self._eof = True

    def next_event(self) -> Event:
        """The next `Response` (one per command, in order), else `Closed` once the
        session is over, else `NeedData`. Raises SmtpClientError for a bad reply."""
        while True:
            if self._closed is not None:
                return self._closed
            if self._phase is _Phase.TLS:
                raise SmtpClientError("call tls_established() after the 220 to STARTTLS")
            reply = self._parser.next_reply()
            if reply is None:
                if self._eof:
                    if self._parser.partial:
                        return self._close("connection closed inside a reply")
                    return self._close("connection closed by the server")
                return NeedData()
            if not self._pending:
                if self._phase is _Phase.MESSAGE:
                    # A server that gives up during the message data (552, 554...) and
                    # hangs up: its reply is the message's; the session is over.
                    self._phase = _Phase.COMMANDS
                    self._close("reply during the message data")
                    return Response(Command.MESSAGE, reply)
                if reply.code == 421:  # RFC 5321 3.8: may come at any time
                    return self._close("421 from the server")
                raise SmtpClientError("reply to no command")
            command, argument = self._pending.popleft()
            if command is Command.AUTH and reply.code == 334:
                # We always send an initial response (RFC 4954 4); a server asking for
                # more gets a cancel ("*"), and its answer to that ends the command.
                self._out += b"*\r\n"
                self._pending.appendleft((Command.AUTH, argument))
                continue
            self._after_reply(command, reply)
            return Response(command, reply, argument)

    def _after_reply(self, command: Command, reply: Reply) -> None:
        if command is Command.EHLO and reply.code == 250:
            self._extensions = parse_ehlo(reply)
        elif command is Command.HELO and reply.code == 250:
            self._extensions = Extensions()
        elif command is Command.DATA and reply.code == 354:
            self._phase = _Phase.MESSAGE
            self._bol = True
            self._held_cr = False
        elif command is Command.STARTTLS and reply.code == 220:
            self._phase = _Phase.TLS
            self.discarded_after_starttls += self._parser.clear()
        if reply.code == 421:
            self._close("421 from the server")
        elif command is Command.QUIT:
            self._close("quit")

    def _close(self, reason: str) -> Closed:
        if self._closed is None:
            unanswered = tuple(self._pending) + tuple((c, a) for c, a, _ in self._queued)
            self._closed = Closed(reason, unanswered)
            self._pending.clear()
            self._queued.clear()
            self._phase = _Phase.CLOSED
        return self._closed

    # --- commands in / bytes out ---------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything that may be sent now (see "Batching" in the module docstring)."""
        while self._queued and self._phase is _Phase.COMMANDS:
            if self._pending:
                last = self._pending[-1][0]
                if last in _GROUP_END or not self._extensions.pipelining:
                    break
            command, argument, line = self._queued.popleft()
            self._out += line
            self._pending.append((command, argument))
        out = bytes(self._out)
        self._out.clear()
        return out

    def _command(self, command: Command, line: str, argument: str = "") -> None:
        if self._closed is not None:
            raise SmtpClientError("the session is closed")
        if self._phase is not _Phase.COMMANDS:
            raise SmtpClientError(f"{command.value} while sending a message or TLS")
        _check_argument(line)
        self._queued.append((command, argument, line.encode("utf-8") + b"\r\n"))

    def ehlo(self, name: str) -> None:
        self._command(Command.EHLO, f"EHLO {name}")

    def helo(self, name: str) -> None:
        self._command(Command.HELO, f"HELO {name}")

    def starttls(self) -> None:
        if self._tls_active:
            raise SmtpClientError("TLS is already active")
        self._command(Command.STARTTLS, "STARTTLS")

    def tls_established(self) -> None:
        """The shell finished the TLS handshake after the 220 to STARTTLS (RFC 3207
        4.2: the session starts afresh; send EHLO again)."""
        if self._phase is not _Phase.TLS:
            raise SmtpClientError("tls_established() without a 220 to STARTTLS")
        self._phase = _Phase.COMMANDS
        self._tls_active = True
        self._extensions = Extensions()

    def auth_plain(self, username: str, password: str, authzid: str = "") -> None:
        """AUTH PLAIN with an initial response (RFC 4954 4, RFC 4616 2). The line holds
        the password (base64): never log what `data_to_send()` returns."""
        if "\x00" in username + password + authzid:
            raise SmtpClientError("NUL in credentials")
        token = base64.b64encode(f"{authzid}\x00{username}\x00{password}".encode()).decode()
        self._command(Command.AUTH, f"AUTH PLAIN {token}")

    def mail(
        self,
        reverse_path: str,
        *,
        size: int | None = None,
        body_8bitmime: bool = False,
        smtputf8: bool = False,
    ) -> None:
        """MAIL FROM:<reverse_path> ("" for the null sender) with the parameters the
        server offered (the caller checks `extensions`)."""
        params = ""
        if size is not None:
            params += f" SIZE={int(size)}"  # RFC 1870 5
        if body_8bitmime:
            params += " BODY=8BITMIME"  # RFC 6152 2
        if smtputf8:
            params += " SMTPUTF8"  # RFC 6531 3.4
        self._command(Command.MAIL, f"MAIL FROM:<{_path(reverse_path)}>{params}")

    def rcpt(self, forward_path: str) -> None:
        self._command(Command.RCPT, f"RCPT TO:<{_path(forward_path)}>", forward_path)

    def data(self) -> None:
        self._command(Command.DATA, "DATA")

    def message(self, chunk: bytes) -> None:
        """Message content after the 354 (see "Message data" in the module docstring)."""
        if self._phase is not _Phase.MESSAGE:
            raise SmtpClientError("message data without a 354 to DATA")
        if not chunk:
            return
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
            if not chunk:
                return
        stuffed = dot_stuff(chunk, self._bol)
        self._bol = stuffed.endswith(b"\n")
        self._out += stuffed

    def end_message(self) -> None:
        """End the message data: CRLF if the last line lacks one, then "." CRLF."""
        if self._phase is not _Phase.MESSAGE:
            raise SmtpClientError("end_message() without a 354 to DATA")
        if self._held_cr:
            self._out += b"\r\n"
            self._held_cr = False
            self._bol = True
        if not self._bol:
            self._out += b"\r\n"
        self._out += b".\r\n"
        self._phase = _Phase.COMMANDS
        self._pending.append((Command.MESSAGE, ""))

    def rset(self) -> None:
        self._command(Command.RSET, "RSET")

    def noop(self) -> None:
        self._command(Command.NOOP, "NOOP")

    def quit(self) -> None:
        self._command(Command.QUIT, "QUIT")


def _path(address: str) -> str:
    if any(c in address for c in "<>") or any(c.isspace() for c in address):
        raise SmtpClientError("bad address for a command")
    return _check_argument(address)
