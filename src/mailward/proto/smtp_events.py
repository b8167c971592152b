"""Events the sans-I/O SMTP server core (`proto.smtp`) hands to its I/O shell.

Two kinds:
- *decision* events (`MailFrom`, `RcptTo`, `MessageEnd`, `AuthCredentials`): the core
  stops and waits until the shell calls `SmtpServer.send_reply(reply)`; a positive
  reply (2xx/3xx) moves the session state forward (RFC 5321 4.1.4 ordering).
- *notice* events: the core has already queued its own reply (or none is due); the
  shell acts on them (start TLS, append a body chunk to the spool, drop the spool,
  close the connection) and goes on calling `next_event()`.

Addresses are passed as the core parsed them (RFC 5321 4.1.2 Path / Mailbox) with no
policy applied: the pipeline decides what is local, what is a relay attempt and what
is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NeedData:
    """No complete input is buffered: flush `data_to_send()` and read more bytes."""


@dataclass(frozen=True, slots=True)
class Hello:
    """Notice: HELO/EHLO accepted (the core already replied). Any transaction was reset."""

    domain: str
    extended: bool


@dataclass(frozen=True, slots=True)
class StartTls:
    """Notice: the core replied 220 to STARTTLS; the shell must now wrap the transport in
    TLS and then call `SmtpServer.tls_established()`. Bytes pipelined after STARTTLS
    have been discarded (RFC 3207 section 4.2, STARTTLS command injection)."""


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """Decision: the client finished a SASL PLAIN or LOGIN exchange (RFC 4954, 4616).
    Reply 235 (success) or 535/454."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class MailFrom:
    """Decision: MAIL FROM. `reverse_path` is "" for the null sender <>."""

    reverse_path: str
    params: dict[str, str | None]
    size: int | None
    smtputf8: bool
    body: str | None


@dataclass(frozen=True, slots=True)
class RcptTo:
    """Decision: RCPT TO. `forward_path` is the mailbox as written, without any source
    route; `local_part` is unquoted (RFC 5321 4.1.2 Quoted-string decoded), `domain` as
    written (an address literal keeps its brackets). `quoted_local` is True when the
    local part was a Quoted-string; `had_source_route` when an obsolete @a,@b: route was
    given (RFC 5321 4.1.1.3, C.). The pipeline decides policy from these parts."""

    forward_path: str
    local_part: str
    domain: str
    quoted_local: bool
    params: dict[str, str | None]
    had_source_route: bool


@dataclass(frozen=True, slots=True)
class MessageStart:
    """Notice: DATA (or the first BDAT) was accepted: open a spool file."""


@dataclass(frozen=True, slots=True)
class MessageChunk:
    """Notice: message content, dot-unstuffed, CRLF line endings preserved byte-exact."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """Decision: the whole message has arrived. Reply 250 only once it is durable."""

    size: int


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """Notice: the message was refused while arriving (size limit, bare CR/LF, line over
    1000 octets, ...). The shell drops the spool at once; the core keeps reading to the
    end of the message (or BDAT chunk) and then sends the refusal (`reply_code`) itself."""

    reply_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    """Notice: RSET (or a new EHLO) ended the transaction; drop any spool."""


@dataclass(frozen=True, slots=True)
class CommandRefused:
    """Notice: a command was refused by the core itself (syntax, sequence, limit).
    For logging and abuse accounting; the reply is already queued."""

    command: str
    reply_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Notice: the session is over (QUIT, too many errors, timeout, shutdown). Flush
    `data_to_send()` then close the transport. `next_event()` keeps returning this."""

    reason: str


SmtpEvent = (
    NeedData
    | Hello
    | StartTls
    | AuthCredentials
    | MailFrom
    | RcptTo
    | MessageStart
    | MessageChunk
    | MessageEnd
    | MessageAborted
    | Reset
    | CommandRefused
    | ConnectionClosed
)
