"""The one path every message takes: connect -> MAIL -> RCPT -> body checks -> targets.

The runner owns all state changes; checks only return `CheckResult`s (DESIGN.md 2.3).
Targets: recipients in local domains are stored in their INBOX, foreign recipients
(authenticated or trusted senders only) are put on the durable outbound queue; both
happen in one `MailStore.deliver()` call, so a message is acknowledged (250) only once
it is durable for every recipient (DESIGN.md 3, "nothing acknowledged is lost").
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from mailward.logs import EventLog
from mailward.message.headers import MAX_HEADER_SECTION, HeaderSectionTooLarge, header_section
from mailward.pipeline.recipients import DUPLICATE_RECIPIENT, RecipientPolicy, is_duplicate
from mailward.pipeline.sender import SenderPolicy
from mailward.pipeline.types import CheckResult, Envelope, LocalRecipient, SessionInfo, reject
from mailward.proto.replies import (
    LOCAL_ERROR,
    MESSAGE_ACCEPTED,
    RECIPIENT_OK,
    SENDER_OK,
    Reply,
)
from mailward.proto.smtp_events import MailFrom, RcptTo
from mailward.store.api import Delivery, LocalTarget, MailStore, StoreError

HEADERS_TOO_LARGE = Reply(552, "5.3.4", "Header section too large")


class Pipeline:
    def __init__(self, store: MailStore, log: EventLog) -> None:
        self._store = store
        self._log = log
        self._recipients = RecipientPolicy(store)
        self._senders = SenderPolicy(store)

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
        result = await self._senders.check_envelope_sender(session, event.reverse_path)
        if result.refused:
            return self._refused(session, "mail", result, sender=event.reverse_path), None
        self._log.info("smtp.mail", session=session.session_id, sender=event.reverse_path)
        return SENDER_OK, Envelope(event.reverse_path, smtputf8=event.smtputf8)

    async def rcpt_to(self, session: SessionInfo, envelope: Envelope, event: RcptTo) -> Reply:
        result, recipient = await self._recipients.resolve(session, envelope, event)
        if result.refused or recipient is None:
            event_name = "relay" if result.reason == "relay denied" else "rcpt"
            return self._refused(session, event_name, result, recipient=event.forward_path)
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
            reply = await self._check_body(session, spool, content, trace_length, size)
        except OSError as exc:
            self._log.error("spool.read_failed", session=session.session_id, error=str(exc))
            reply = LOCAL_ERROR
        if reply is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
            return reply
        local = [
            LocalTarget(r.account_id) for r in envelope.recipients if isinstance(r, LocalRecipient)
        ]
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
        )
        return MESSAGE_ACCEPTED

    async def _check_body(
        self,
        session: SessionInfo,
        spool: Path,
        content: bytes | None,
        trace_length: int,
        size: int,
    ) -> Reply | None:
        if session.listener != "submission":
            return None
        if content is not None:
            prefix = content[trace_length : trace_length + MAX_HEADER_SECTION + 4]
        else:
            with open(spool, "rb") as f:
                f.seek(trace_length)
                prefix = f.read(MAX_HEADER_SECTION + 4)
        try:
            section = header_section(prefix, complete=size <= MAX_HEADER_SECTION)
        except HeaderSectionTooLarge:
            return self._refused(session, "data", reject(HEADERS_TOO_LARGE, "headers too large"))
        result = await self._senders.check_headers(session, section)
        if result.refused:
            return self._refused(session, "data", result)
        return None
