"""Typed values that flow through the message pipeline (DESIGN.md 2.3).

A check never mutates the session or the envelope: it returns a `CheckResult` (a
decision, the client-safe reply, a log reason and headers to add) and the runner owns
every state change. Listeners are "mx" (port 25: mail for local domains only) and
"submission" (587/465: authenticated users, RFC 6409).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mailward.proto.replies import Reply


class Decision(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    QUARANTINE = "quarantine"


@dataclass(frozen=True, slots=True)
class CheckResult:
    decision: Decision
    reply: Reply | None = None
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    # Local accounts whose copy goes to their Junk mailbox (spam scoring, per recipient).
    junk: frozenset[int] = frozenset()

    @property
    def refused(self) -> bool:
        return self.decision in (Decision.REJECT, Decision.TEMPFAIL)


ACCEPT = CheckResult(Decision.ACCEPT)


def reject(reply: Reply, reason: str) -> CheckResult:
    decision = Decision.TEMPFAIL if reply.is_temporary else Decision.REJECT
    return CheckResult(decision, reply, reason)


@dataclass(slots=True)
class SessionInfo:
    """What the pipeline knows about one SMTP connection."""

    listener: str  # "mx" | "submission"
    peer_ip: str
    peer_port: int
    session_id: str
    helo: str = ""
    tls_version: str = ""
    tls_cipher: str = ""
    account_id: int | None = None  # set once AUTH succeeded
    account_address: str = ""
    trusted_network: bool = False

    @property
    def authenticated(self) -> bool:
        return self.account_id is not None


@dataclass(frozen=True, slots=True)
class LocalRecipient:
    address: str  # as the client wrote it
    account_id: int
    account_address: str


@dataclass(frozen=True, slots=True)
class RemoteRecipient:
    address: str


Recipient = LocalRecipient | RemoteRecipient


@dataclass(slots=True)
class Envelope:
    """One mail transaction (RFC 5321 3.3)."""

    sender: str
    smtputf8: bool = False
    recipients: list[Recipient] = field(default_factory=list)
