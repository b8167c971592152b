"""Outbound data-loss prevention (NIST SP 800-45 v2 5.x content filtering of outbound
mail: keep payment cards, identity numbers and secrets from leaving by mistake).

Runs on mail that local users send: the submission listener, any authenticated
session, or a trusted network relaying through the MX port. Unless `internal` is
set, mail whose recipients are all local is not scanned (it does not leave).

The text is what `text_extract.message_texts` finds: the Subject, text and HTML
parts, text attachments (CSV, ...), PDF, DOCX/XLSX/PPTX and OpenDocument text, and the
same inside archives, at most `max_chars` characters. Built-in detectors (`DETECTORS`):

- "card-number": 13-19 digits, single spaces or dashes allowed between them, that
  pass the Luhn check (ISO/IEC 7812-1 annex B) and carry a Visa (4; 13, 16 or 19
  digits), Mastercard (51-55, 2221-2720; 16), American Express (34, 37; 15) or
  Discover (6011, 622126-622925, 644-649, 65; 16-19) issuer prefix;
- "us-ssn": AAA-GG-SSSS with dashes, never-issued numbers excluded (area 000, 666 and
  900-999, group 00, serial 0000, and the well-known advertising numbers);
- "iban": ISO 13616 IBANs, grouped by spaces or not, with the right length for their
  country (table below) and the mod-97 check (ISO 7064). Off by default: invoices
  carry the sender's own IBAN;
- "private-key": PEM / OpenSSH / PGP private key blocks ("-----BEGIN ... PRIVATE
  KEY-----" followed by key material) and PuTTY key files;
- "credential": AWS access key ids (AKIA/ASIA...), GitHub, Slack, Stripe live and
  Google API tokens (their fixed prefixes make them unambiguous), and assignments of
  a secret: `password=` / `DB_PASSWORD=` / `api_key=` / `client_secret=` ... or the
  JSON form `"password": "..."` with a value of 8 to 128 characters that is not a
  placeholder ("********", "${VAR}", "<password>", "changeme", ...). Conservative by
  design: prose such as "password: see below" is not an assignment.

Site rules: `patterns` ("name=regex", Python syntax; the name is what the reply and
log show) and `keywords` (whole words or phrases, case-insensitive: rule "keyword").

Actions: "quarantine" (held for review; default), "reject" (550 5.7.1 "Message refused
by data-loss policy: <rule names>"), "log" (accepted). Replies, reasons and log events
name the rules and count the matches; the matched text never leaves this module.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mailward.logs import EventLog
from mailward.message.text_extract import MAX_TEXT, message_texts
from mailward.pipeline.content import MessageView
from mailward.pipeline.types import ACCEPT, CheckResult, Decision, LocalRecipient, SessionInfo
from mailward.pipeline.types import reject as reject_with
from mailward.proto.replies import Reply

__all__ = [
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "DlpCheck",
    "Rule",
    "card_numbers",
    "credentials",
    "dlp_reply",
    "iban_valid",
    "ibans",
    "luhn_valid",
    "parse_pattern",
    "private_keys",
    "us_ssns",
]

Action = Literal["quarantine", "reject", "log"]
MAX_COUNT = 1000  # matches counted per rule and message (enough to decide, bounded work)
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def dlp_reply(rules: Iterable[str]) -> Reply:
    return Reply(550, "5.7.1", f"Message refused by data-loss policy: {', '.join(rules)}")


# ------------------------------------------------------------------- card numbers

_CARD = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")


def luhn_valid(digits: str) -> bool:
    """The Luhn check digit test (ISO/IEC 7812-1 annex B) on a string of digits."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card_brand_ok(digits: str) -> bool:
    length = len(digits)
    two, three, four, six = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":
        return length in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return length == 16  # Mastercard
    if two in (34, 37):
        return length == 15  # American Express
    if four == 6011 or 644 <= three <= 649 or two == 65 or 622126 <= six <= 622925:
        return 16 <= length <= 19  # Discover
    return False


def card_numbers(text: str, limit: int = MAX_COUNT) -> int:
    count = 0
    for match in _CARD.finditer(text):
        digits = match.group().replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and _card_brand_ok(digits) and luhn_valid(digits):
            count += 1
            if count >= limit:
                break
    return count


# ---------------------------------------------------------------------------- SSN

_SSN = re.compile(r"(?<![0-9-])([0-9]{3})-([0-9]{2})-([0-9]{4})(?![0-9-])")
_SSN_NEVER_ISSUED = frozenset({"078-05-1120", "219-09-9999", "123-45-6789"})


def us_ssns(text: str, limit: int = MAX_COUNT) -> int:
    count = 0
    for match in _SSN.finditer(text):
        area, group, serial = match.groups()
        if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
            continue
        if match.group() in _SSN_NEVER_ISSUED:
            continue
        count += 1
        if count >= limit:
            break
    return count


# --------------------------------------------------------------------------- IBAN

# ISO 13616 lengths (SWIFT IBAN registry) for the countries mail most often carries.
IBAN_LENGTHS = {
    **{"AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22},
    **{"BH": 22, "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18},
    **{"DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22},
    **{"GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22},
    **{"IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21},
    **{"LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27},
    **{"MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25},
    **{"QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27},
    **{"TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20},
}
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?=[ ]?[A-Z0-9])")


def iban_valid(candidate: str) -> bool:
    """Country length and the ISO 7064 mod-97-10 check on a compact IBAN."""
    iban = candidate.replace(" ", "").upper()
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isascii() or not iban.isalnum():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def ibans(text: str, limit: int = MAX_COUNT) -> int:
    """IBANs written compact or in groups separated by single spaces, ending at a
    character that is not a letter or digit."""
    count = 0
    for match in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(match.group()[:2])
        if length is None:
            continue
        position, taken = match.start(), 0
        chars: list[str] = []
        while position < len(text) and taken < length:
            char = text[position]
            if char == " " and chars and chars[-1] != " ":
                chars.append(char)
            elif char.isascii() and char.isalnum():
                chars.append(char)
                taken += 1
            else:
                break
            position += 1
        following = text[position : position + 1]
        ended = not (following.isascii() and following.isalnum())
        if taken == length and ended and iban_valid("".join(chars)):
            count += 1
            if count >= limit:
                break
    return count


# -------------------------------------------------------------------- private keys

_KEY_BEGIN = re.compile(
    r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,4}PRIVATE KEY(?: BLOCK)?-----"
    r"|PuTTY-User-Key-File-[0-9]+:"
)
_KEY_MATERIAL = re.compile(r"[A-Za-z0-9+/]{40,}|Private-Lines:")


def private_keys(text: str, limit: int = MAX_COUNT) -> int:
    """Private key blocks with key material within 1000 characters of their start."""
    count = 0
    for match in _KEY_BEGIN.finditer(text):
        if _KEY_MATERIAL.search(text, match.end(), match.end() + 1000):
            count += 1
            if count >= limit:
                break
    return count


# --------------------------------------------------------------------- credentials

_TOKENS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:AKIA|ASIA)[A-Z0-9]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50,255}"  # GitHub
    r"|xox[abposr]-[A-Za-z0-9-]{10,255}"  # Slack
    r"|[sr]k_live_[A-Za-z0-9]{20,255}"  # Stripe
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r")(?![A-Za-z0-9])"
)
_KEY_NAMES = (
    r"(?:[A-Za-z0-9]{1,32}[_.-])?"
    r"(?:password|passwd|passphrase|pass_phrase|api[_-]?key|secret[_-]?key|client[_-]?secret"
    r"|secret[_-]?access[_-]?key|private[_-]?key)"
)
_ASSIGNMENT = re.compile(
    rf"(?<![A-Za-z0-9_.-])(?:{_KEY_NAMES}\s*=\s*|[\"']{_KEY_NAMES}[\"']\s*:\s*)"
    r"[\"']?(?P<value>[^\s\"'<>]{8,128})(?![^\s\"'<>])",
    re.IGNORECASE,
)
_PLACEHOLDERS = frozenset(
    {"password", "changeme", "redacted", "yourpassword", "your_password", "undefined"}
    | {"secret", "example", "placeholder", "none", "null", "required", "optional"}
)


def _real_secret(value: str) -> bool:
    lowered = value.lower().strip(",;")
    if lowered in _PLACEHOLDERS or value[0] in "$%{<*[(" or "{{" in value:
        return False
    if set(lowered) <= set("*x.-_#?") or len(set(lowered)) < 3:
        return False
    return any(char.isalnum() for char in value)


def credentials(text: str, limit: int = MAX_COUNT) -> int:
    count = 0
    for _ in _TOKENS.finditer(text):
        count += 1
        if count >= limit:
            return count
    for match in _ASSIGNMENT.finditer(text):
        if _real_secret(match.group("value")):
            count += 1
            if count >= limit:
                break
    return count


# ----------------------------------------------------------------------- the check

DETECTORS: dict[str, Callable[[str, int], int]] = {
    "card-number": card_numbers,
    "us-ssn": us_ssns,
    "iban": ibans,
    "private-key": private_keys,
    "credential": credentials,
}
DEFAULT_DETECTORS = ("card-number", "us-ssn", "private-key", "credential")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    count: Callable[[str, int], int]  # matches in a text, at most the second argument


def parse_pattern(spec: str) -> tuple[str, re.Pattern[str]]:
    """ "name=regex" -> (name, compiled); ValueError naming the problem."""
    name, equals, pattern = spec.partition("=")
    name = name.strip()
    if not equals or not _RULE_NAME.match(name):
        raise ValueError(f"{spec!r} is not name=regex (name: letters, digits, _ . -)")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"pattern {name!r} is not a valid regular expression: {exc}") from None
    if compiled.fullmatch("") is not None:
        raise ValueError(f"pattern {name!r} matches the empty string")
    return name, compiled


def _regex_rule(name: str, pattern: re.Pattern[str]) -> Rule:
    def count(text: str, limit: int) -> int:
        found = 0
        for _ in pattern.finditer(text):
            found += 1
            if found >= limit:
                break
        return found

    return Rule(name, count)


class DlpCheck:
    """The `ContentCheck` "dlp": mail local users send (module doc)."""

    name = "dlp"

    def __init__(
        self,
        *,
        log: EventLog,
        action: Action = "quarantine",
        detectors: Iterable[str] = DEFAULT_DETECTORS,
        patterns: Iterable[str] = (),
        keywords: Iterable[str] = (),
        internal: bool = False,
        max_chars: int = MAX_TEXT,
    ) -> None:
        """Raises ValueError for an unknown action or detector, or a bad pattern."""
        if action not in ("quarantine", "reject", "log"):
            raise ValueError(f"dlp action must be quarantine, reject or log, not {action!r}")
        rules: list[Rule] = []
        for detector in detectors:
            if detector not in DETECTORS:
                known = ", ".join(DETECTORS)
                raise ValueError(f"unknown dlp detector {detector!r} (known: {known})")
            rules.append(Rule(detector, DETECTORS[detector]))
        for spec in patterns:
            rules.append(_regex_rule(*parse_pattern(spec)))
        words = sorted({word.strip() for word in keywords if word.strip()}, key=len, reverse=True)
        if words:
            alternatives = "|".join(r"\s+".join(map(re.escape, word.split())) for word in words)
            keyword = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
            rules.append(_regex_rule("keyword", keyword))
        self.rules = tuple(rules)
        self._log = log
        self._action = action
        self._internal = internal
        self._max_chars = max_chars

    def applies(self, session: SessionInfo) -> bool:
        return bool(self.rules) and (
            session.listener == "submission" or session.authenticated or session.trusted_network
        )

    async def check(self, message: MessageView) -> CheckResult:
        recipients = message.envelope.recipients
        if not self._internal and all(isinstance(r, LocalRecipient) for r in recipients):
            return ACCEPT  # nothing leaves the organisation
        data = await message.read()
        counts = await asyncio.to_thread(self.scan, data)
        if not counts:
            return ACCEPT
        names = sorted(counts)
        reason = "data-loss policy: " + ", ".join(f"{n} ({counts[n]})" for n in names)
        self._log.warning(
            "dlp.matched",
            session=message.session.session_id,
            listener=message.session.listener,
            account=message.session.account_address,
            sender=message.envelope.sender,
            rules=counts,
            action=self._action,
        )
        if self._action == "log":
            return CheckResult(Decision.ACCEPT, reason=reason)
        if self._action == "quarantine":
            return CheckResult(Decision.QUARANTINE, reason=reason)
        return reject_with(dlp_reply(names), reason)

    def scan(self, data: bytes) -> dict[str, int]:
        """Matches per rule in the message `data` (rules without a match left out)."""
        counts = dict.fromkeys((rule.name for rule in self.rules), 0)
        for _where, text in message_texts(data, max_chars=self._max_chars):
            for rule in self.rules:
                left = MAX_COUNT - counts[rule.name]
                if left > 0:
                    counts[rule.name] += rule.count(text, left)
        return {name: count for name, count in counts.items() if count}
