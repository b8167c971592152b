"""SMTP replies: the one typed, safe-to-show answer every refusal is made of.

RFC 5321 section 4.2 (reply lines), RFC 3463 / RFC 2034 (enhanced status codes).
A `Reply` carries only generic text meant for the client; detail belongs in the log.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: code, optional enhanced status code, and client-safe text lines."""

    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.text,) if isinstance(self.text, str) else self.text

    @property
    def is_positive(self) -> bool:
        """2xx or 3xx: the command was accepted (RFC 5321 4.2.1)."""
        return 200 <= self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    def to_bytes(self, *, enhanced_codes: bool = True) -> bytes:
        """Serialise as reply lines (RFC 5321 4.2.1: "code-text" continuation, "code text" last)."""
        lines = self.lines or ("",)
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            prefix = f"{self.enhanced} " if (enhanced_codes and self.enhanced) else ""
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")


# Replies used across the server, named so code and tests share them.
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "Message accepted")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_TEMP_LOCKED = Reply(454, "4.7.0", "Too many failed attempts, try again later")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
NO_SUCH_USER = Reply(550, "5.1.1", "No such recipient here")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
SENDER_NOT_OWNED = Reply(550, "5.7.1", "Sender address not owned by authenticated user")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header address not owned by authenticated user")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
