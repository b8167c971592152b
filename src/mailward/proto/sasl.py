"""Sans-I/O SASL server mechanisms: PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login).

Protocol-neutral: the SMTP core (RFC 4954) and IMAP/POP3 cores frame challenges and
responses themselves ("334 " / "+ ") and use `decode_response` / `encode_challenge`
for the base64 layer (RFC 4954 4: strict base64, "*" cancels, "=" is an empty initial
response). A mechanism turns responses into either a `SaslChallenge` (send it, read
another response) or `SaslCredentials` (verify them; no verification happens here).

Both mechanisms send the password in clear inside the base64 wrapping; the protocol
cores offer them only under TLS (DESIGN.md 3, "No credential in clear").
"""

from __future__ import annotations

import abc
import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import ClassVar

__all__ = [
    "MECHANISMS",
    "LoginMechanism",
    "PlainMechanism",
    "SaslCancelled",
    "SaslChallenge",
    "SaslCredentials",
    "SaslError",
    "SaslMalformed",
    "SaslMechanism",
    "decode_response",
    "encode_challenge",
    "new_mechanism",
]


class SaslError(ValueError):
    """The exchange failed before credentials could be produced."""


class SaslCancelled(SaslError):
    """The client sent "*" (RFC 4954 4: the server replies 501)."""


class SaslMalformed(SaslError):
    """Invalid base64, invalid UTF-8, or a message off the mechanism's grammar."""


@dataclass(frozen=True, slots=True)
class SaslChallenge:
    """Send `data` (raw octets; the protocol core base64-encodes) and read a response."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    """The exchange is complete: verify these. `authzid` is "" when none was given."""

    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)


SaslStep = SaslChallenge | SaslCredentials

# RFC 4648 4, canonical padding only; no whitespace or other characters
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_response(text: str, *, initial: bool = False) -> bytes:
    """Decode one client response line (without its line ending).

    RFC 4954 4: "*" cancels the exchange (SaslCancelled); an initial response of "="
    is the empty response; an empty continuation line is the empty response; anything
    that is not strict base64 raises SaslMalformed."""
    if text == "*":
        raise SaslCancelled("exchange cancelled by the client")
    if initial and text == "=":
        return b""
    if not _BASE64.fullmatch(text):
        raise SaslMalformed("invalid base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex already enforces this
        raise SaslMalformed("invalid base64") from exc


def encode_challenge(data: bytes) -> str:
    """Base64 for a challenge line (empty data gives the empty string)."""
    return base64.b64encode(data).decode("ascii")


def _utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SaslMalformed("not UTF-8") from exc


class SaslMechanism(abc.ABC):
    """One server-side exchange. Create a new instance per AUTH command."""

    name: ClassVar[str]

    @abc.abstractmethod
    def start(self, initial_response: bytes | None) -> SaslStep:
        """Begin; `initial_response` is None when the client sent none."""

    @abc.abstractmethod
    def step(self, response: bytes) -> SaslStep:
        """Feed the client's answer to the last challenge."""


class PlainMechanism(SaslMechanism):
    """RFC 4616: message = [authzid] UTF8NUL authcid UTF8NUL passwd.

    The server sends an empty challenge when there was no initial response (RFC 4616 2).
    authcid and passwd must be non-empty (1*SAFE); no part may contain NUL."""

    name = "PLAIN"

    def start(self, initial_response: bytes | None) -> SaslStep:
        if initial_response is None:
            return SaslChallenge(b"")
        return self.step(initial_response)

    def step(self, response: bytes) -> SaslStep:
        parts = response.split(b"\x00")
        if len(parts) != 3:
            raise SaslMalformed("PLAIN message needs exactly two NUL separators")
        authzid, authcid, passwd = (_utf8(p) for p in parts)
        if not authcid or not passwd:
            raise SaslMalformed("empty authentication identity or password")
        return SaslCredentials(self.name, authzid, authcid, passwd)


class LoginMechanism(SaslMechanism):
    """LOGIN (draft-murchison-sasl-login-00): challenges "Username:" then "Password:".

    An initial response, when given, is the user name (as Outlook and others send it).
    Both user name and password must be non-empty UTF-8."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def start(self, initial_response: bytes | None) -> SaslStep:
        if initial_response is None:
            return SaslChallenge(b"Username:")
        return self.step(initial_response)

    def step(self, response: bytes) -> SaslStep:
        value = _utf8(response)
        if not value:
            raise SaslMalformed("empty user name or password")
        if self._username is None:
            self._username = value
            return SaslChallenge(b"Password:")
        return SaslCredentials(self.name, "", self._username, value)


MECHANISMS: dict[str, type[SaslMechanism]] = {
    PlainMechanism.name: PlainMechanism,
    LoginMechanism.name: LoginMechanism,
}


def new_mechanism(name: str) -> SaslMechanism | None:
    """A fresh exchange for mechanism `name` (case-insensitive), or None if unknown."""
    cls = MECHANISMS.get(name.upper())
    return cls() if cls is not None else None
