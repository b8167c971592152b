"""One outbound SMTP connection: asyncio around the sans-I/O client core.

`SmtpConnection` connects (plain, or implicit TLS for a smarthost on 465), reads the
greeting, says EHLO (HELO if EHLO is refused, RFC 5321 3.2), upgrades with STARTTLS,
authenticates with AUTH PLAIN (only ever under TLS), and runs mail transactions,
several per connection, pipelined when the server allows (the core batches).

Timeouts are RFC 5321 4.5.3.2's: 5 minutes for the greeting, MAIL and RCPT, 2 for
the 354 to DATA, 3 between writes of message data, 10 for the reply to the final
"."; connecting gets 30 seconds (Postfix's smtp_connect_timeout).

Failures are `TransportError`s that say how far the transaction got (`stage`):
before the end of the message data nothing was delivered and the message may go to
another host at once; at "end" (the final "." was sent, no reply came) the outcome is
unknown, the message is deferred and retried later, never elsewhere at once (RFC 5321
6.1 accepts the rare duplicate over a loss).

The password for AUTH is in the bytes sent, never in a log line or an error text.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailward.crypto.tls import describe_tls
from mailward.net.starttls import discard_buffered_plaintext
from mailward.proto.replies import Reply
from mailward.proto.smtp_client import (
    Closed,
    Command,
    Extensions,
    NeedData,
    Response,
    SmtpClient,
    SmtpClientError,
)

READ_SIZE = 64 * 1024
WRITE_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; RFC 5321 4.5.3.2 minimums by default."""

    connect: float = 30.0
    greeting: float = 300.0
    command: float = 300.0  # EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT
    data_start: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0
    tls_handshake: float = 60.0


class TransportError(Exception):
    """The connection or the transaction failed as a whole.

    `stage`: "connect", "greeting", "ehlo", "tls", "auth", "mail" (anything before
    the message data was complete: nothing was delivered) or "end" (the final "." went
    out but no reply came: outcome unknown). `reply` is the server's, when it gave
    one; `permanent` for 5xx (at "mail" stage: the whole transaction is refused)."""

    def __init__(
        self, stage: str, text: str, *, reply: Reply | None = None, permanent: bool = False
    ) -> None:
        super().__init__(text)
        self.stage = stage
        self.text = text
        self.reply = reply
        self.permanent = permanent


@dataclass
class TransactionResult:
    """Replies of one transaction: MAIL, each RCPT, DATA (None if not sent: no
    recipient was accepted) and the final one after the message (None if not sent)."""

    mail: Reply
    rcpts: dict[str, Reply] = field(default_factory=dict)
    data: Reply | None = None
    message: Reply | None = None

    def accepted(self) -> list[str]:
        return [r for r, reply in self.rcpts.items() if 200 <= reply.code < 300]


def reply_text(reply: Reply) -> str:
    """One line for logs and DSNs: "550 5.1.1 text text"."""
    code = f"{reply.code} {reply.enhanced}" if reply.enhanced else str(reply.code)
    text = " ".join(line for line in reply.lines if line).strip()
    return f"{code} {text}"[:500].rstrip()


class SmtpConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        host: str,
        address: str,
        timeouts: Timeouts,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host  # the MX name (for TLS checks and logs)
        self.address = address
        self.timeouts = timeouts
        self.core = SmtpClient()
        self.transactions = 0
        self._broken = False

    # --- opening ------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        address: str,
        port: int,
        *,
        helo: str,
        timeouts: Timeouts,
        implicit_tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        source_address: str | None = None,
    ) -> SmtpConnection:
        """Connect (from `source_address` when given: the address the receiver checks
        SPF and reverse DNS against), read the 220 greeting and say EHLO.
        TransportError on failure."""
        try:
            async with asyncio.timeout(timeouts.connect + timeouts.tls_handshake):
                reader, writer = await asyncio.open_connection(
                    address,
                    port,
                    ssl=implicit_tls,
                    server_hostname=server_hostname if implicit_tls is not None else None,
                    ssl_handshake_timeout=timeouts.tls_handshake if implicit_tls else None,
                    limit=READ_SIZE,
                    local_addr=(source_address, 0) if source_address else None,
                )
        except TimeoutError:
            raise TransportError("connect", f"connection to {address}:{port} timed out") from None
        except ssl.SSLError as exc:
            raise TransportError("tls", f"TLS handshake with {address} failed: {exc}") from None
        except OSError as exc:
            text = exc.strerror or exc.__class__.__name__
            raise TransportError("connect", f"cannot connect to {address}:{port}: {text}") from None
        conn = cls(reader, writer, host=host, address=address, timeouts=timeouts)
        try:
            (greeting,) = await conn._exchange(timeouts.greeting, "greeting")
            if greeting.code != 220:
                # RFC 5321 3.1: a 554 greeting means "no service here"; say QUIT.
                await conn.quit()
                raise TransportError(
                    "greeting",
                    f"{host} refused the session: {reply_text(greeting)}",
                    reply=greeting,
                    permanent=False,
                )
            await conn.hello(helo)
        except BaseException:
            conn.close()
            raise
        return conn

    # --- session commands -------------------------------------------------------------

    @property
    def extensions(self) -> Extensions:
        return self.core.extensions

    @property
    def usable(self) -> bool:
        return not self._broken and not self.core.closed

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    @property
    def tls_version(self) -> str:
        obj = self.ssl_object
        if obj is None:
            return ""
        try:
            version, cipher = describe_tls(obj)
        except ValueError:
            return ""
        return f"{version} {cipher}"

    async def hello(self, helo: str) -> None:
        self.core.ehlo(helo)
        (reply,) = await self._exchange(self.timeouts.command, "ehlo")
        if reply.code == 250:
            return
        if 500 <= reply.code < 600:  # RFC 5321 3.2: fall back to HELO
            self.core.helo(helo)
            (reply,) = await self._exchange(self.timeouts.command, "ehlo")
            if reply.code == 250:
                return
        raise TransportError("ehlo", f"EHLO refused: {reply_text(reply)}", reply=reply)

    async def starttls(
        self, context: ssl.SSLContext, server_hostname: str | None, helo: str
    ) -> None:
        """STARTTLS, the handshake, and EHLO again (RFC 3207 4.2)."""
        self.core.starttls()
        (reply,) = await self._exchange(self.timeouts.command, "tls")
        if reply.code != 220:
            raise TransportError("tls", f"STARTTLS refused: {reply_text(reply)}", reply=reply)
        dropped = discard_buffered_plaintext(self.reader)  # response injection
        self.core.discarded_after_starttls += dropped
        try:
            await self.writer.start_tls(
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self.timeouts.tls_handshake,
            )
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._broken = True
            raise TransportError("tls", f"TLS handshake with {self.host} failed: {exc}") from None
        except (OSError, TimeoutError) as exc:
            self._broken = True
            raise TransportError("tls", f"TLS handshake with {self.host} failed: {exc!r}") from None
        self.core.tls_established()
        await self.hello(helo)

    async def auth_plain(self, username: str, password: str) -> None:
        """RFC 4954 AUTH PLAIN; TransportError("auth") unless 235. Only under TLS."""
        if self.ssl_object is None:
            raise TransportError("auth", "refusing to authenticate without TLS")
        self.core.auth_plain(username, password)
        (reply,) = await self._exchange(self.timeouts.command, "auth")
        if reply.code != 235:
            raise TransportError(
                "auth",
                f"authentication refused: {reply_text(reply)}",
                reply=reply,
                permanent=500 <= reply.code < 600,
            )

    async def transaction(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        size: bool = False,
        body_8bitmime: bool = False,
        smtputf8: bool = False,
    ) -> TransactionResult:
        """One mail transaction; RSET first on a reused connection (pipelined with MAIL,
        RCPT and DATA when the server allows). Per-recipient replies are returned;
        TransportError when the connection fails or MAIL is refused."""
        if self.transactions:
            self.core.rset()
        self.transactions += 1
        self.core.mail(
            sender,
            size=len(message) if size else None,
            body_8bitmime=body_8bitmime,
            smtputf8=smtputf8,
        )
        for rcpt in recipients:
            self.core.rcpt(rcpt)
        self.core.data()
        replies = await self._exchange(self.timeouts.command, "mail")
        if self.transactions > 1:
            rset = replies.pop(0)
            if rset.code != 250:
                raise TransportError("mail", f"RSET refused: {reply_text(rset)}", reply=rset)
        mail, *rest = replies
        result = TransactionResult(mail=mail)
        rcpt_replies, data = rest[: len(recipients)], rest[len(recipients)]
        result.rcpts = dict(zip(recipients, rcpt_replies, strict=True))
        if mail.code != 250:
            raise TransportError(
                "mail",
                f"MAIL refused: {reply_text(mail)}",
                reply=mail,
                permanent=500 <= mail.code < 600,
            )
        result.data = data
        if data.code != 354:
            return result
        if not result.accepted():
            # RFC 2920 3.1: DATA got 354 though no recipient was accepted: send an
            # empty message and ignore the answer.
            self.core.end_message()
            await self._exchange(self.timeouts.data_end, "mail")
            result.data = None
            return result
        await self._send_message(message)
        self.core.end_message()
        (final,) = await self._exchange(self.timeouts.data_end, "end")
        result.message = final
        return result

    async def quit(self) -> None:
        """QUIT politely (RFC 5321 4.1.1.10), then close; errors are ignored."""
        if self.usable:
            with contextlib.suppress(TransportError, SmtpClientError):
                self.core.quit()
                await self._exchange(min(self.timeouts.command, 10.0), "quit")
        self.close()

    def close(self) -> None:
        self._broken = True
        with contextlib.suppress(Exception):
            self.writer.close()

    # --- I/O ---------------------------------------------------------------------------

    async def _send_message(self, message: bytes) -> None:
        view = memoryview(message)
        try:
            for start in range(0, len(view), WRITE_CHUNK):
                self.core.message(bytes(view[start : start + WRITE_CHUNK]))
                self.writer.write(self.core.data_to_send())
                async with asyncio.timeout(self.timeouts.data_block):
                    await self.writer.drain()
        except TimeoutError:
            self._broken = True
            raise TransportError("mail", "timeout sending the message data") from None
        except (OSError, ConnectionError) as exc:
            self._broken = True
            raise TransportError("mail", f"connection lost during DATA: {exc!r}") from None

    async def _exchange(self, timeout: float, stage: str) -> list[Reply]:
        """Send what the core releases and collect replies until every command has
        one; TransportError if the session closes first or a read times out."""
        if not self.usable and stage != "quit":
            raise TransportError(stage, "the connection is no longer usable")
        replies: list[Reply] = []
        try:
            while True:
                event = self.core.next_event()
                if isinstance(event, Response):
                    replies.append(event.reply)
                    if event.command is Command.QUIT or not self.core.waiting:
                        return replies  # (after a 220 to STARTTLS: nothing more is read)
                    continue
                if isinstance(event, Closed):
                    self._broken = True
                    if stage == "quit":
                        return replies
                    raise TransportError(stage, f"{self.host}: {event.reason}")
                assert isinstance(event, NeedData)
                out = self.core.data_to_send()
                if out:
                    self.writer.write(out)
                    async with asyncio.timeout(timeout):
                        await self.writer.drain()
                if not self.core.waiting:
                    return replies
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(READ_SIZE)
                if data:
                    self.core.receive_data(data)
                else:
                    self.core.receive_eof()
        except TimeoutError:
            self._broken = True
            raise TransportError(stage, f"timeout waiting for {self.host}") from None
        except SmtpClientError as exc:
            self._broken = True
            raise TransportError(stage, f"bad reply from {self.host}: {exc}") from None
        except (OSError, ConnectionError) as exc:
            self._broken = True
            raise TransportError(stage, f"connection to {self.host} lost: {exc!r}") from None
