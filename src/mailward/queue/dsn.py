"""Delivery status notifications: RFC 3464 (format), RFC 3462/6522 (multipart/report),
RFC 3463 (status codes), RFC 6533 (internationalised addresses), RFC 3834.

A DSN tells the sender that delivery failed for good (Action: failed) or is taking
long (Action: delayed, sent once). Rules kept here and by the worker:

- Never for a message with the null reverse-path: a DSN is itself sent with MAIL
  FROM:<> (RFC 5321 4.5.5, RFC 3464 2), so a DSN can never cause another (no loops).
- Three parts: a human-readable text/plain; the machine-readable
  message/delivery-status (Reporting-MTA, Arrival-Date; per recipient Final-Recipient,
  Action, Status, Remote-MTA, Diagnostic-Code "smtp; <reply>", Last-Attempt-Date,
  Will-Retry-Until for delays); the original's header section (text/rfc822-headers),
  never its body (RFC 3462 allows either; headers are enough to identify the message
  and leak nothing more to a forged sender).
- Everything is 7-bit, so the DSN can be relayed anywhere: server texts are reduced
  to printable ASCII; an address that is not ASCII is reported as "utf-8;" inside
  message/global-delivery-status (RFC 6533 3) with the original headers as
  message/global-headers, and non-ASCII octets in them are replaced.
- `Auto-Submitted: auto-replied` (RFC 3834 5) so auto-responders stay quiet.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from mailward.message.headers import MAX_HEADER_SECTION, header_section

MAX_ORIGINAL_HEADERS = 64 * 1024
_NON_PRINTABLE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True, slots=True)
class RecipientReport:
    recipient: str
    action: str  # "failed" | "delayed"
    status: str  # RFC 3463, e.g. "5.1.1"
    diagnostic: str = ""  # the remote reply ("550 5.1.1 no such user") or our reason
    remote_mta: str = ""  # the MX host that answered, if any
    last_attempt: float = 0.0
    will_retry_until: float = 0.0  # delayed only


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _ascii(text: str, limit: int = 900) -> str:
    return _NON_PRINTABLE.sub("?", text)[:limit]


def _address_field(address: str) -> str:
    if address.isascii():
        return f"rfc822; {_ascii(address)}"
    return f"utf-8; {address}"


def _seven_bit_headers(original: bytes) -> bytes:
    try:
        section = header_section(original[: MAX_HEADER_SECTION + 4], complete=True)
    except ValueError:
        section = original[:MAX_ORIGINAL_HEADERS]
    section = section[:MAX_ORIGINAL_HEADERS]
    # Our own Return-Path (RFC 5321 4.4: the delivering MTA adds one) is not news.
    lines = section.split(b"\r\n")
    while lines and lines[0].lower().startswith(b"return-path:"):
        lines.pop(0)
    text = b"\r\n".join(lines).decode("ascii", "replace").replace("\ufffd", "?")
    text = re.sub(r"\r?\n", "\r\n", text)
    return text.encode("ascii").rstrip(b"\r\n") + b"\r\n"


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    arrival: float,
    now: float,
    reports: Sequence[RecipientReport],
    original: bytes,
) -> bytes:
    """The DSN message (CRLF, 7-bit) to send to `original_sender` about `reports`,
    which share one action. `original` is the message as stored (its headers only
    are returned)."""
    if not reports:
        raise ValueError("a DSN needs at least one recipient report")
    if not original_sender:
        raise ValueError("no DSN is ever sent for the null reverse-path (RFC 3464 2)")
    delayed = all(r.action == "delayed" for r in reports)
    utf8 = not original_sender.isascii() or any(not r.recipient.isascii() for r in reports)
    host = _ascii(reporting_mta, 255)
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    message_id = f"<{secrets.token_hex(16)}@{host}>"
    subject = (
        "Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender"
    )
    to = original_sender if utf8 else _ascii(original_sender)

    human = [
        f"This is the mail system at {host}.",
        "",
    ]
    if delayed:
        human += [
            "Your message has not been delivered yet to the recipients below. It is",
            "still in the queue and will be tried again; you need not send it again.",
            "You will be told if it cannot be delivered in the end.",
        ]
    else:
        human += [
            "Your message could not be delivered to the recipients below. This is a",
            "permanent error; it has been given up on.",
        ]
    human.append("")
    for r in reports:
        reason = _ascii(r.diagnostic) or r.status
        where = f" (at {_ascii(r.remote_mta)})" if r.remote_mta else ""
        human.append(f"<{_ascii(r.recipient)}>{where}: {reason}")
    human += ["", "The headers of your message are attached."]

    status = [f"Reporting-MTA: dns; {host}", f"Arrival-Date: {_date(arrival)}", ""]
    for r in reports:
        status.append(f"Final-Recipient: {_address_field(r.recipient)}")
        status.append(f"Action: {r.action}")
        status.append(f"Status: {r.status}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {_ascii(r.remote_mta, 255)}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {_ascii(r.diagnostic)}")
        if r.last_attempt:
            status.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if r.will_retry_until:
            status.append(f"Will-Retry-Until: {_date(r.will_retry_until)}")
        status.append("")

    status_type = "message/global-delivery-status" if utf8 else "message/delivery-status"
    headers_type = "message/global-headers" if utf8 else "text/rfc822-headers"
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{host}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "",
        "This is a MIME-formatted delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        *human,
        "",
        f"--{boundary}",
        f"Content-Type: {status_type}",
        "Content-Description: Delivery report",
        "",
        *status,
        f"--{boundary}",
        f"Content-Type: {headers_type}",
        "Content-Description: Undelivered message headers",
        "",
    ]
    text = "\r\n".join(head) + "\r\n"
    return (
        text.encode("utf-8")
        + _seven_bit_headers(original)
        + f"\r\n--{boundary}--\r\n".encode("ascii")
    )
