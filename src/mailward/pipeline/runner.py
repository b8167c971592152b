"""The one path every message takes: connect -> MAIL -> RCPT -> body checks -> targets.

The runner owns all state changes; checks only return `CheckResult`s (DESIGN.md 2.3).
Targets: recipients in local domains are stored in their INBOX (their Junk mailbox
when a check says quarantine), foreign recipients (authenticated or trusted senders
only) are put on the durable outbound queue; both happen in one `MailStore.deliver()`
call, so a message is acknowledged (250) only once it is durable for every recipient
(DESIGN.md 3, "nothing acknowledged is lost").

Body checks see the message as the client sent it: the SMTP session has already
written our trace fields (Return-Path, Received: `trace_length` octets) in front of
it. Header fields a check adds (Authentication-Results) go right after Return-Path,
above our Received; Authentication-Results fields claiming our authserv-id are
removed from the client's header section on every listener (RFC 8601 5). That
rewrite touches only the header section: an in-memory message becomes new bytes, a
spooled one a new spool file (header, then the old file's body copied in 256 KiB
chunks off the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random as random_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailward.logs import EventLog
from mailward.mailauth.results import strip_ours
from mailward.message.headers import (
    MAX_HEADER_SECTION,
    HeaderSectionTooLarge,
    header_section,
    header_values,
    remove_fields,
)
from mailward.pipeline.abuse import TransactionLimits
from mailward.pipeline.authentication import MessageAuthenticator, MessageSource
from mailward.pipeline.content import ContentCheck, MessageView
from mailward.pipeline.notices import held_notice
from mailward.pipeline.recipients import DUPLICATE_RECIPIENT, RecipientPolicy, is_duplicate
from mailward.pipeline.sender import SenderPolicy
from mailward.pipeline.types import (
    CheckResult,
    Decision,
    Envelope,
    LocalRecipient,
    SessionInfo,
    reject,
)
from mailward.proto.replies import (
    LOCAL_ERROR,
    MESSAGE_ACCEPTED,
    RECIPIENT_OK,
    SENDER_OK,
    Reply,
)
from mailward.proto.smtp_events import MailFrom, RcptTo
from mailward.resolver import Resolver
from mailward.store.api import (
    Delivery,
    LocalTarget,
    MailStore,
    QuarantineHold,
    SpecialUse,
    StoreError,
)

HEADERS_TOO_LARGE = Reply(552, "5.3.4", "Header section too large")
# Messages over LARGE_MESSAGE octets run their content checks LARGE_CONTENT_CHECKS at a
# time: a check may hold the whole message (and its decoded parts) in memory.
LARGE_MESSAGE = 1024 * 1024
LARGE_CONTENT_CHECKS = 4
COPY_CHUNK = 256 * 1024
JUNK_KEYWORD = "$Junk"  # RFC 5788 / IANA IMAP keywords, when there is no Junk mailbox


@dataclass(frozen=True, slots=True)
class _Body:
    """What the body checks decided about an accepted message."""

    trace: bytes  # our trace fields, as the session wrote them
    section: bytes  # the client's header section as received
    new_section: bytes | None  # the section with forged A-R removed (None: unchanged)
    header: bytes  # fields to add (CRLF-terminated), b"" for none
    quarantine: bool  # deliver to Junk (DMARC p=quarantine)
    hold: QuarantineHold | None = None  # a content check wants it held for review
    junk: frozenset[int] = frozenset()  # accounts whose copy goes to Junk (spam score)


class Pipeline:
    def __init__(
        self,
        store: MailStore,
        log: EventLog,
        *,
        resolver: Resolver,
        hostname: str,
        random: Callable[[], float] = random_module.random,
        abuse: TransactionLimits | None = None,
    ) -> None:
        self._store = store
        self._log = log
        # Probing, sending caps, greylisting (pipeline.abuse); None: no abuse limits.
        self.abuse = abuse
        self._hostname = hostname
        self._recipients = RecipientPolicy(store)
        self._senders = SenderPolicy(store)
        self._authenticator = MessageAuthenticator(resolver, hostname, log, random=random)
        # Called after a message was queued for outbound delivery (the queue worker's
        # wake-up, set by the composition root); the worker also polls on its own.
        self.on_queued: Callable[[], None] | None = None
        # Malware, attachment policy, DLP... (pipeline.content), in order; set by the
        # composition root from the config.
        self.content_checks: Sequence[ContentCheck] = ()
        self._large_checks = asyncio.Semaphore(LARGE_CONTENT_CHECKS)
        # Header fields removed from inbound mail because only we may write them
        # (X-Spam-Status...: set by the composition root when spam scoring is on).
        self.untrusted_fields: Sequence[str] = ()
        # Who gets a notice when a content check holds a message (pipeline.notices).
        self.notify_held_recipients = True
        self.notify_held_sender = True

    def _refused(
        self, session: SessionInfo, stage: str, result: CheckResult, **fields: object
    ) -> Reply:
        assert result.reply is not None
        self._log.info(
            f"smtp.{stage}.refused",
            session=session.session_id,
            ip=session.peer_ip,
            listener=session.listener,
            reason=result.reason,
            code=result.reply.code,
            **fields,
        )
        return result.reply

    async def mail_from(
        self, session: SessionInfo, event: MailFrom
    ) -> tuple[Reply, Envelope | None]:
        if self.abuse is not None:
            limited = await self.abuse.check_mail(session)
            if limited.refused:
                return self._refused(session, "mail", limited, sender=event.reverse_path), None
        result = await self._senders.check_envelope_sender(session, event.reverse_path)
        if result.refused:
            return self._refused(session, "mail", result, sender=event.reverse_path), None
        self._log.info("smtp.mail", session=session.session_id, sender=event.reverse_path)
        return SENDER_OK, Envelope(event.reverse_path, smtputf8=event.smtputf8)

    async def rcpt_to(self, session: SessionInfo, envelope: Envelope, event: RcptTo) -> Reply:
        abuse = self.abuse
        if abuse is not None:
            blocked = abuse.blocked(session, "RCPT")
            if blocked.refused:
                return self._refused(session, "rcpt", blocked, recipient=event.forward_path)
        result, recipient = await self._recipients.resolve(session, envelope, event)
        if result.refused or recipient is None:
            event_name = "relay" if result.reason == "relay denied" else "rcpt"
            if abuse is not None:
                result = abuse.recipient_refused(session, result)
            return self._refused(session, event_name, result, recipient=event.forward_path)
        if abuse is not None and not is_duplicate(envelope, recipient):
            limited = await abuse.check_rcpt(session, envelope, recipient)
            if limited.refused:
                return self._refused(session, "rcpt", limited, recipient=event.forward_path)
        self._log.info(
            "smtp.rcpt",
            session=session.session_id,
            recipient=event.forward_path,
            local=isinstance(recipient, LocalRecipient),
        )
        if is_duplicate(envelope, recipient):
            return DUPLICATE_RECIPIENT
        envelope.recipients.append(recipient)
        return RECIPIENT_OK

    async def end_of_data(
        self,
        session: SessionInfo,
        envelope: Envelope,
        spool: Path,
        content: bytes | None,
        trace_length: int,
        size: int,
    ) -> Reply:
        """Run body checks on the message (`content` if it is in memory, else the spool
        file), then make it durable for every target."""
        try:
            body = await self._check_body(session, envelope, spool, content, trace_length, size)
            if isinstance(body, _Body):
                spool, content = await self._rewrite(spool, content, trace_length, body)
        except OSError as exc:
            self._log.error("spool.read_failed", session=session.session_id, error=str(exc))
            body = LOCAL_ERROR
        if isinstance(body, Reply):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
            return body
        try:
            local = await self._local_targets(envelope, quarantine=body.quarantine, junk=body.junk)
        except StoreError as exc:
            self._log.error("message.store_failed", session=session.session_id, error=str(exc))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
            return LOCAL_ERROR
        outbound = [r.address for r in envelope.recipients if not isinstance(r, LocalRecipient)]
        try:
            # From here the store owns the spool file: it renames or deletes it.
            receipt = await self._store.deliver(
                Delivery(
                    spool=spool,
                    sender=envelope.sender,
                    local=local,
                    outbound=outbound,
                    content=content,
                    hold=body.hold,
                )
            )
        except (StoreError, OSError) as exc:
            self._log.error("message.store_failed", session=session.session_id, error=str(exc))
            return LOCAL_ERROR
        self._log.info(
            "message.stored",
            session=session.session_id,
            id=receipt.blob_id,
            size=size,
            local_recipients=len(local),
            queued_recipients=len(outbound),
            quarantined=body.quarantine,
            junk_recipients=len(body.junk),
        )
        if receipt.held:
            assert body.hold is not None
            self._log.warning(
                "message.held",
                session=session.session_id,
                id=receipt.held,
                check=body.hold.check,
                reason=body.hold.reason,
            )
            await self._notify_held(session, envelope, body, receipt.held)
            return MESSAGE_ACCEPTED
        if outbound and self.on_queued is not None:
            self.on_queued()
        return MESSAGE_ACCEPTED

    async def _notify_held(
        self, session: SessionInfo, envelope: Envelope, body: _Body, held_id: int
    ) -> None:
        """Tell local users that a message was held (pipeline.notices); a failure
        here is logged and changes nothing for the held message."""
        assert body.hold is not None
        subjects = header_values(body.section, "Subject")
        outgoing = session.authenticated and session.listener == "submission"
        told: list[tuple[int, str]] = []
        if outgoing and self.notify_held_sender and session.account_id is not None:
            told.append((session.account_id, session.account_address))
        elif not outgoing and self.notify_held_recipients:
            seen: set[int] = set()
            for r in envelope.recipients:
                if isinstance(r, LocalRecipient) and r.account_id not in seen:
                    seen.add(r.account_id)
                    told.append((r.account_id, r.account_address))
        for account_id, address in told:
            notice = held_notice(
                hostname=self._hostname,
                to=address,
                quarantine_id=held_id,
                check=body.hold.check,
                sender=envelope.sender,
                subject=subjects[0] if subjects else "",
                recipients=[r.address for r in envelope.recipients],
                outgoing=outgoing,
            )
            try:
                await self._store.deliver(
                    Delivery(
                        spool=self._store.new_spool(),
                        sender="",
                        local=[LocalTarget(account_id)],
                        outbound=[],
                        content=notice,
                    )
                )
            except (StoreError, OSError) as exc:
                self._log.error(
                    "quarantine.notice_failed", session=session.session_id, error=str(exc)
                )
                continue
            self._log.info(
                "quarantine.notice_sent",
                session=session.session_id,
                id=held_id,
                account=account_id,
                outgoing=outgoing,
            )

    async def _local_targets(
        self, envelope: Envelope, *, quarantine: bool, junk: frozenset[int] = frozenset()
    ) -> list[LocalTarget]:
        targets = []
        for r in envelope.recipients:
            if not isinstance(r, LocalRecipient):
                continue
            to_junk = quarantine or r.account_id in junk
            target = await self._junk(r.account_id) if to_junk else LocalTarget(r.account_id)
            targets.append(target)
        return targets

    async def _junk(self, account_id: int) -> LocalTarget:
        """The account's \\Junk mailbox (RFC 6154; "Junk" unless the user moved the
        role), or INBOX with the $Junk keyword if the user deleted it."""
        mailboxes = await self._store.list_mailboxes(account_id)
        for mailbox in mailboxes:
            if mailbox.special_use == SpecialUse.JUNK:
                return LocalTarget(account_id, mailbox=mailbox.name)
        if any(m.name == "Junk" for m in mailboxes):
            return LocalTarget(account_id, mailbox="Junk")
        return LocalTarget(account_id, flags=frozenset({JUNK_KEYWORD}))

    async def _check_body(
        self,
        session: SessionInfo,
        envelope: Envelope,
        spool: Path,
        content: bytes | None,
        trace_length: int,
        size: int,
    ) -> _Body | Reply:
        limit = trace_length + MAX_HEADER_SECTION + 4
        if content is not None:
            head = content[:limit]
        else:
            with open(spool, "rb") as f:
                head = f.read(limit)
        trace, prefix = head[:trace_length], head[trace_length:]
        try:
            section = header_section(prefix, complete=size <= MAX_HEADER_SECTION)
        except HeaderSectionTooLarge:
            return self._refused(session, "data", reject(HEADERS_TOO_LARGE, "headers too large"))
        if session.listener == "submission":
            result = await self._senders.check_headers(session, section)
            if result.refused:
                return self._refused(session, "data", result)
        # RFC 8601 5: nobody may hand us our own verdict, on any listener.
        stripped, removed = strip_ours(section, self._hostname)
        if removed:
            self._log.info(
                "mailauth.forged_results_removed", session=session.session_id, fields=removed
            )
        added = b""
        quarantine = False
        report = None
        if self._authenticator.applies(session):
            source = MessageSource(content, spool, trace_length, size)
            result, report = await self._authenticator.check(session, envelope, section, source)
            if result.refused:
                return self._refused(session, "data", result)
            added = b"".join(f"{n}:{v}\r\n".encode("ascii", "replace") for n, v in result.headers)
            quarantine = result.decision == Decision.QUARANTINE
            if self.untrusted_fields:
                stripped, dropped = remove_fields(stripped, self.untrusted_fields)
                removed += dropped
        hold = None
        junk: frozenset[int] = frozenset()
        view = MessageView(
            session, envelope, section, content, spool, trace_length, size, auth=report
        )
        checks = [c for c in self.content_checks if c.applies(session)]
        # Checks read a large message into memory (once, shared through the view):
        # at most LARGE_CONTENT_CHECKS such messages at a time bounds what that costs.
        large = self._large_checks if checks and size > LARGE_MESSAGE else None
        async with large or contextlib.nullcontext():
            for check in checks:
                result = await check.check(view)
                if result.refused:
                    return self._refused(session, "data", result, check=check.name)
                added += b"".join(
                    f"{n}: {v}\r\n".encode("ascii", "replace") for n, v in result.headers
                )
                if result.decision == Decision.QUARANTINE and hold is None:
                    hold = QuarantineHold(check.name, result.reason)
                junk |= result.junk
        new_section = stripped if removed else None
        return _Body(trace, section, new_section, added, quarantine, hold, junk)

    async def _rewrite(
        self, spool: Path, content: bytes | None, trace_length: int, body: _Body
    ) -> tuple[Path, bytes | None]:
        """The message with `body.header` added after Return-Path and the header
        section replaced by `body.new_section`; (spool, content) as for `Delivery`."""
        if not body.header and body.new_section is None:
            return spool, content
        trace = body.trace
        split = trace.find(b"\r\n") + 2 if trace[:12].lower() == b"return-path:" else 0
        section = body.section if body.new_section is None else body.new_section
        head = trace[:split] + body.header + trace[split:] + section
        cut = trace_length + len(body.section)
        if content is not None:
            return spool, head + content[cut:]
        new = self._store.new_spool()
        try:
            await asyncio.to_thread(_copy_spool, spool, new, head, cut)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(new)
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spool)
        return new, None


def _copy_spool(old: Path, new: Path, head: bytes, offset: int) -> None:
    """Write `head` then `old`'s bytes from `offset` into the new file `new` (0600)."""
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb", buffering=COPY_CHUNK) as out, open(old, "rb", buffering=0) as src:
        out.write(head)
        src.seek(offset)
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
