"""Notices to local users about a message held in the quarantine (SP 800-45 v2 5.x:
tell the intended recipient, or the sender of outgoing mail, that a message was
held, so nothing vanishes without a word).

Who is told (config `[quarantine]`):
- inbound mail held (malware, attachment policy, unopenable archive): each local
  recipient gets a notice in their INBOX (`notify_recipients`);
- mail a local user sent that was held (data-loss rules, attachments, malware): that
  user gets a notice (`notify_sender`).
Remote senders are never told: a notice to a forged envelope sender would be
backscatter (RFC 3834 2, RFC 5321 6.2).

A notice names the quarantine entry, the envelope sender, the subject and the check
that held it (its name only: the detail, e.g. a virus name or which DLP rule matched
where, stays in the log for the administrator). It is built with the standard
library's email package (RFC 5322 fields, RFC 2047 for a non-ASCII subject), marked
`Auto-Submitted: auto-generated` (RFC 3834) so no one auto-replies to it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid

MAX_SUBJECT = 200

CHECK_WORDS = {
    "malware": "it contains what the virus scanner reports as malware",
    "attachments": "an attachment is of a type that is not allowed",
    "dlp": "it appears to contain sensitive data (such as card numbers or credentials)",
    "spam": "it was scored as spam",
}


def _clean(text: str) -> str:
    """One line, printable, bounded: header text that came from the sender."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat[:MAX_SUBJECT] + ("..." if len(flat) > MAX_SUBJECT else "")


def held_notice(
    *,
    hostname: str,
    to: str,
    quarantine_id: int,
    check: str,
    sender: str,
    subject: str,
    recipients: list[str],
    outgoing: bool,
    now: datetime | None = None,
) -> bytes:
    """The notice for `to` (an address of the local account told) as message bytes."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Mail Delivery System <postmaster@{hostname}>"
    msg["To"] = to
    msg["Subject"] = (
        "Your message was held for review" if outgoing else "A message to you was held for review"
    )
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=hostname)
    msg["Auto-Submitted"] = "auto-generated"
    why = CHECK_WORDS.get(check, f"the {check} check held it")
    lines = [
        "This is an automatic notice from your mail server."
        if not outgoing
        else "This is an automatic notice about a message you sent.",
        "",
        f"The message was held in the quarantine because {why}.",
        "",
        f"  Quarantine id: {quarantine_id}",
        f"  From (envelope): {_clean(sender) or '<>'}",
        f"  Subject: {_clean(subject) or '(none)'}",
    ]
    if outgoing:
        shown = ", ".join(_clean(r) for r in recipients[:10])
        more = f" and {len(recipients) - 10} more" if len(recipients) > 10 else ""
        lines.append(f"  To: {shown}{more}")
    lines += [
        "",
        "It has not been delivered. If you expected it, ask your mail administrator",
        "to review it (quarantine id above); they can release it or delete it.",
        "Do not reply to this notice.",
    ]
    msg.set_content("\n".join(lines) + "\n")
    return msg.as_bytes()
