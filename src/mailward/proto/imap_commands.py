"""IMAP commands as typed values, and the parser from command bytes to them.

Grammar: RFC 9051 (IMAP4rev2) 9 "Formal Syntax", with the IMAP4rev1 commands and search
keys of RFC 3501 9 (CHECK, LSUB, RECENT/NEW/OLD, RFC822.* fetch items), and:
RFC 2971 (ID), RFC 3516 (BINARY fetch items, literal8 APPEND), RFC 4731 + RFC 9051
6.4.4 (ESEARCH RETURN options), RFC 5161 (ENABLE), RFC 5182 ("$" and SAVE), RFC 5258 +
RFC 5819 (LIST-EXTENDED, LIST-STATUS), RFC 6154 (SPECIAL-USE, CREATE USE), RFC 6851
(MOVE), RFC 7162 (CONDSTORE/QRESYNC: SELECT parameters, CHANGEDSINCE, VANISHED,
UNCHANGEDSINCE, MODSEQ search key), RFC 4315 / RFC 9051 6.4.9 (UID EXPUNGE), RFC 9208
4.2-4.3 (GETQUOTA, GETQUOTAROOT; SETQUOTA is not offered).

Implementation notes
- `parse_command(raw)` takes one complete command as the connection core assembled it:
  the lines without their final CRLF, each literal kept in place as `{n}CRLF` followed
  by its n octets (the core has already enforced the size limits). It returns a
  `Command` or raises `ImapParseError`, whose `text` is safe to send to the client (it
  never echoes client input) and whose `status`/`code` say how to answer (BAD, or NO
  [BADCHARSET ...] for `BadCharsetError`, RFC 9051 6.4.4).
- `command_head(raw)` reads just the tag and command name so that the core can check
  the session state before parsing arguments, and before sending "+" for a literal.
- `parse_append_head(prefix)` reads an APPEND up to its message literal: the core
  streams that literal instead of buffering it (RFC 9051 6.3.12).
- Names are decoded from UTF-8 (RFC 9051 5.1; invalid UTF-8 is BAD). Mailbox names keep
  their raw form: decoding modified UTF-7 for IMAP4rev1 clients (`imap_wire`) and
  "INBOX" case folding (RFC 9051 5.1) are the session's job. Control characters in a
  mailbox name are BAD.
- Bounds: nesting of search keys and parentheses at most `max_depth` (default 32),
  sequence sets at most `MAX_RANGES` ranges, numbers within their RFC ranges (number:
  32 bits, number64 / mod-sequence: 63 bits), section parts at most `MAX_SECTION_PARTS`.
  Recursion is bounded by `max_depth`, so no input can raise RecursionError.
- Strictness: the grammar is followed as written (single spaces, no trailing space),
  with these leniencies: command names, keywords and system flags are case-insensitive
  (RFC 9051 9 "case-insensitive"), a one-digit day is accepted in date-time, and
  mod-sequence values may be 0 everywhere (mod-sequence-valzer).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from mailward.proto import sasl

__all__ = [
    "COMMAND_NAMES",
    "MAX_ID_PAIRS",
    "MAX_RANGES",
    "MAX_SECTION_PARTS",
    "UID_COMMANDS",
    "AppendHead",
    "Authenticate",
    "BadCharsetError",
    "Capability",
    "Check",
    "Close",
    "Command",
    "CommandArgs",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchItem",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "Idle",
    "ImapParseError",
    "List",
    "Login",
    "Logout",
    "Lsub",
    "Move",
    "Namespace",
    "Noop",
    "Qresync",
    "Rename",
    "Search",
    "SearchAll",
    "SearchAnd",
    "SearchBody",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchModseq",
    "SearchNot",
    "SearchOr",
    "SearchSequence",
    "SearchSize",
    "SearchText",
    "SearchUid",
    "Section",
    "Select",
    "SequenceSet",
    "StartTls",
    "Status",
    "Store",
    "Subscribe",
    "Unselect",
    "Unsubscribe",
    "command_head",
    "parse_append_head",
    "parse_command",
]

MAX_RANGES = 10_000
MAX_SECTION_PARTS = 64
MAX_ID_PAIRS = 30  # RFC 2971 3.3
MAX_NUMBER = 4_294_967_295  # RFC 9051 9: number = 32-bit unsigned
MAX_NUMBER64 = 9_223_372_036_854_775_807  # RFC 9051 9: number64 = 63-bit; RFC 7162 modseq
DEFAULT_MAX_DEPTH = 32


class ImapParseError(ValueError):
    """The command is malformed. `text` is a client-safe response text; `status` is
    "BAD" (or "NO"), `code` an optional response code; `tag` the command tag when it
    could be read."""

    status: str = "BAD"

    def __init__(self, text: str, *, tag: str | None = None, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.tag = tag
        self.code = code


class BadCharsetError(ImapParseError):
    """SEARCH CHARSET names a charset other than UTF-8 / US-ASCII: answer
    `NO [BADCHARSET (UTF-8 US-ASCII)]` (RFC 9051 6.4.4, 7.1)."""

    status = "NO"

    def __init__(self, *, tag: str | None = None) -> None:
        super().__init__("Unsupported charset", tag=tag, code="BADCHARSET (UTF-8 US-ASCII)")


# --- sequence sets ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 9051 9 sequence-set, as written: each range is (first, last) with 0 for "*".
    `saved` is True for "$" (RFC 5182: the saved search result; `ranges` is empty then
    and the session substitutes its saved result)."""

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """The ranges with "*" replaced by `largest`, each ordered lo <= hi, sorted and
        merged (RFC 9051 9: "*" is the largest number in use; 4:2 is 2:4). In an empty
        mailbox (`largest` 0) a range with "*" matches nothing. Numbers above `largest`
        are kept: whether that is an error (message numbers) or ignored (UIDs) is the
        session's call. Raises ValueError for "$" (substitute the saved result first)."""
        if self.saved:
            raise ValueError("'$' must be replaced by the saved search result")
        spans: list[tuple[int, int]] = []
        for a, b in self.ranges:
            if (a == 0 or b == 0) and largest <= 0:
                continue
            a = a or largest
            b = b or largest
            spans.append((a, b) if a <= b else (b, a))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        """Whether `n` is in the set when "*" stands for `largest`."""
        if self.saved:
            raise ValueError("'$' must be replaced by the saved search result")
        for a, b in self.ranges:
            if (a == 0 or b == 0) and largest <= 0:
                continue
            a = a or largest
            b = b or largest
            if min(a, b) <= n <= max(a, b):
                return True
        return False

    @classmethod
    def from_numbers(cls, numbers: list[int] | tuple[int, ...] | set[int]) -> SequenceSet:
        """The shortest set of ranges covering these numbers (for responses)."""
        ranges: list[tuple[int, int]] = []
        for n in sorted(set(numbers)):
            if ranges and n == ranges[-1][1] + 1:
                ranges[-1] = (ranges[-1][0], n)
            else:
                ranges.append((n, n))
        return cls(tuple(ranges))

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(n: int) -> str:
            return "*" if n == 0 else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


# --- search keys (RFC 9051 6.4.4) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchAll:
    """ALL."""


@dataclass(frozen=True, slots=True)
class SearchFlag:
    """A flag present (or absent). System flags are canonical ("\\Seen", "\\Recent");
    KEYWORD/UNKEYWORD give the keyword atom as written (compare case-insensitively).
    NEW is SearchAnd((\\Recent present, \\Seen absent)); OLD is \\Recent absent."""

    flag: str
    present: bool


@dataclass(frozen=True, slots=True)
class SearchHeader:
    """HEADER name value; FROM/TO/CC/BCC/SUBJECT give "From", "To", "Cc", "Bcc",
    "Subject". Compare names case-insensitively; "" as value matches any such field."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchBody:
    """BODY text."""

    text: str


@dataclass(frozen=True, slots=True)
class SearchText:
    """TEXT text (header and body)."""

    text: str


@dataclass(frozen=True, slots=True)
class SearchDate:
    """BEFORE/ON/SINCE (field "internal") and SENTBEFORE/SENTON/SENTSINCE ("sent")."""

    field: Literal["internal", "sent"]
    op: Literal["before", "on", "since"]
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SearchSize:
    """LARGER n / SMALLER n (RFC822.SIZE)."""

    op: Literal["larger", "smaller"]
    size: int


@dataclass(frozen=True, slots=True)
class SearchSequence:
    """A message sequence number set."""

    set: SequenceSet


@dataclass(frozen=True, slots=True)
class SearchUid:
    """UID set."""

    set: SequenceSet


@dataclass(frozen=True, slots=True)
class SearchModseq:
    """MODSEQ n (RFC 7162 3.1.5): messages with mod-sequence >= n. The optional
    entry-name / entry-type are parsed and ignored."""

    modseq: int


@dataclass(frozen=True, slots=True)
class SearchAnd:
    """All of the keys (a parenthesised list, or several keys in a row)."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SearchOr:
    """OR a b."""

    a: SearchKey
    b: SearchKey


@dataclass(frozen=True, slots=True)
class SearchNot:
    """NOT key."""

    key: SearchKey


SearchKey: TypeAlias = (
    SearchAll
    | SearchFlag
    | SearchHeader
    | SearchBody
    | SearchText
    | SearchDate
    | SearchSize
    | SearchSequence
    | SearchUid
    | SearchModseq
    | SearchAnd
    | SearchOr
    | SearchNot
)

# --- fetch items (RFC 9051 6.4.5) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """A body section (RFC 9051 6.4.5 BODY[<section>]): `part` is the part path (1.2.3
    is (1, 2, 3); () is the whole message); `text` is "", "HEADER", "HEADER.FIELDS",
    "HEADER.FIELDS.NOT", "TEXT" or "MIME" (MIME only with a part); `fields` are the
    upper-cased header field names of HEADER.FIELDS[.NOT]."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        """The section spec as it goes back in a response (without brackets)."""
        spec = ".".join(str(p) for p in self.part)
        if self.text:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One fetch attribute. `name` is one of FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE,
    BODY, BODYSTRUCTURE, UID, MODSEQ, RFC822, RFC822.HEADER, RFC822.TEXT, BINARY,
    BINARY.SIZE. BODY without a section is the non-extensible BODYSTRUCTURE; BODY[...]
    and BODY.PEEK[...] are name "BODY" with a section (peek True for .PEEK); BINARY
    [.PEEK] and BINARY.SIZE always have a section (part only, RFC 3516). `partial` is
    (offset, length) from <offset.length>."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    def response_name(self) -> str:
        """The item name of the FETCH response (RFC 9051 7.5.2): BODY[1.TEXT]<0>,
        BINARY[2], BINARY.SIZE[2] ... (".PEEK" and the partial length dropped)."""
        if self.section is None:
            return self.name
        name = f"{self.name}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


# --- command arguments -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability:
    """CAPABILITY (RFC 9051 6.1.1)."""


@dataclass(frozen=True, slots=True)
class Noop:
    """NOOP (RFC 9051 6.1.2)."""


@dataclass(frozen=True, slots=True)
class Logout:
    """LOGOUT (RFC 9051 6.1.3)."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """STARTTLS (RFC 9051 6.2.1). The core refuses it itself under TLS or when not
    offered; on this command the session answers OK, starts TLS, then calls
    `ImapServer.tls_established()`."""


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTHENTICATE mechanism [initial-response] (RFC 9051 6.2.2, RFC 4959 SASL-IR).
    `mechanism` is upper-cased; `initial_response` is the decoded octets (b"" for "="),
    None when absent."""

    mechanism: str
    initial_response: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class Login:
    """LOGIN user password (RFC 9051 6.2.3)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Enable:
    """ENABLE capability... (RFC 5161, RFC 9051 6.3.1); names upper-cased."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Qresync:
    """The QRESYNC select parameter (RFC 7162 3.2.5): last known UIDVALIDITY and
    MODSEQ, optional known UIDs and (known sequence numbers, matching UIDs)."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """SELECT / EXAMINE (readonly) mailbox [(CONDSTORE | QRESYNC (...))]
    (RFC 9051 6.3.2-6.3.3, RFC 7162 3.1.8, 3.2.5)."""

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: Qresync | None = None


Examine = Select  # EXAMINE is Select(readonly=True)


@dataclass(frozen=True, slots=True)
class Create:
    """CREATE mailbox [(USE (attrs))] (RFC 9051 6.3.4, RFC 6154 3). Known special-use
    attributes are canonical ("\\Sent"); others are kept as written for the session to
    refuse with NO [USEATTR]."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete:
    """DELETE mailbox (RFC 9051 6.3.5)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    """RENAME old new (RFC 9051 6.3.6)."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE mailbox (RFC 9051 6.3.7)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE mailbox (RFC 9051 6.3.8)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class List:
    """LIST [(selection)] reference pattern(s) [RETURN (options)] (RFC 9051 6.3.9,
    RFC 5258, RFC 6154, RFC 5819). `selection` and `returns` are upper-cased option names
    (SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE / SUBSCRIBED CHILDREN SPECIAL-USE
    STATUS); when "STATUS" is in `returns`, `status_items` holds its items."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lsub:
    """LSUB reference pattern (RFC 3501 6.3.9; IMAP4rev1 only)."""

    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Namespace:
    """NAMESPACE (RFC 9051 6.3.10)."""


@dataclass(frozen=True, slots=True)
class Status:
    """STATUS mailbox (items) (RFC 9051 6.3.11); items upper-cased, in request order."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Idle:
    """IDLE (RFC 9051 6.3.13, RFC 2177). The session sends "+ idling" and calls
    `ImapServer.expect_idle_done()`."""


@dataclass(frozen=True, slots=True)
class Check:
    """CHECK (RFC 3501 6.4.1; IMAP4rev1 only)."""


@dataclass(frozen=True, slots=True)
class Close:
    """CLOSE (RFC 9051 6.4.1)."""


@dataclass(frozen=True, slots=True)
class Unselect:
    """UNSELECT (RFC 9051 6.4.2, RFC 3691)."""


@dataclass(frozen=True, slots=True)
class Expunge:
    """EXPUNGE (RFC 9051 6.4.3), or UID EXPUNGE set (`uids`, RFC 9051 6.4.9)."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search:
    """SEARCH [RETURN (...)] [CHARSET c] keys (RFC 9051 6.4.4). `charset` is upper-cased
    (UTF-8 or US-ASCII) or None. `returns` is None for a plain SEARCH, else the ESEARCH
    result options (MIN MAX ALL COUNT SAVE); an empty RETURN () is ("ALL",)
    (RFC 9051 6.4.4). Several top-level keys are one SearchAnd."""

    charset: str | None
    key: SearchKey
    returns: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH set items [(CHANGEDSINCE n [VANISHED])] (RFC 9051 6.4.5, RFC 7162 3.1.4,
    3.2.6). ALL/FAST/FULL are expanded. VANISHED is only accepted with UID FETCH and
    CHANGEDSINCE (RFC 7162 3.2.6)."""

    set: SequenceSet
    items: tuple[FetchItem, ...]
    changedsince: int | None = None
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class Store:
    """STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] flags (RFC 9051 6.4.6,
    RFC 7162 3.1.3). `mode` is "+" (add), "-" (remove) or "" (replace)."""

    set: SequenceSet
    mode: Literal["+", "-", ""]
    silent: bool
    flags: tuple[str, ...]
    unchangedsince: int | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY set mailbox (RFC 9051 6.4.7)."""

    set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Move:
    """MOVE set mailbox (RFC 9051 6.4.8, RFC 6851)."""

    set: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Id:
    """ID (params) / ID NIL (RFC 2971 3.1); at most 30 pairs, field names at most 30
    octets, values at most 1024 (RFC 2971 3.3)."""

    params: dict[str, str | None] | None


@dataclass(frozen=True, slots=True)
class GetQuota:
    """GETQUOTA quota-root (RFC 9208 4.2); the root name as given ("" is the usual one)."""

    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot:
    """GETQUOTAROOT mailbox (RFC 9208 4.3)."""

    mailbox: str


CommandArgs: TypeAlias = (
    Capability
    | Noop
    | Logout
    | StartTls
    | Authenticate
    | Login
    | Enable
    | Select
    | Create
    | Delete
    | Rename
    | Subscribe
    | Unsubscribe
    | List
    | Lsub
    | Namespace
    | Status
    | Idle
    | Check
    | Close
    | Unselect
    | Expunge
    | Search
    | Fetch
    | Store
    | Copy
    | Move
    | Id
    | GetQuota
    | GetQuotaRoot
)


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command. `name` is upper-case ("FETCH" with uid True for UID FETCH;
    "EXAMINE" has a Select with readonly True)."""

    tag: str
    name: str
    uid: bool
    args: CommandArgs


@dataclass(frozen=True, slots=True)
class AppendHead:
    """APPEND tag mailbox [flags] [date-time] up to the message literal
    (RFC 9051 6.3.12)."""

    tag: str
    mailbox: str
    flags: tuple[str, ...]
    internal_date: datetime.datetime | None


# --- the reader ------------------------------------------------------------------------------

_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\+\x80-\xff]+')  # ASTRING-CHAR except "+"
_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\\]\x80-\xff]+')  # ATOM-CHAR
_ASTRING_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\\x80-\xff]+')  # ASTRING-CHAR
_LIST_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f"\\\x80-\xff]+')  # list-char
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb"\\([\"\\])")
_LITERAL = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r\n")
_DIGITS = re.compile(rb"[0-9]+")
_SEQSET = re.compile(rb"[0-9*:,$]+")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 3.6.8 ftext
_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/=]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
_DATE_TIME = re.compile(
    r"( ?[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{4})"
)
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    )
}


class _Reader:
    """A cursor over one command's bytes. Every method raises ImapParseError on a
    mismatch (with the command tag once it is known)."""

    __slots__ = ("data", "depth", "max_depth", "pos", "tag")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0
        self.max_depth = max_depth
        self.tag: str | None = None

    def error(self, text: str, code: str | None = None) -> ImapParseError:
        return ImapParseError(text, tag=self.tag, code=code)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if not self.at_end():
            raise self.error("Unexpected characters at end of command")

    def peek(self) -> bytes:
        return self.data[self.pos : self.pos + 1]

    def maybe(self, token: bytes) -> bool:
        if self.data.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: bytes, what: str) -> None:
        if not self.maybe(token):
            raise self.error(f"Expected {what}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def open(self) -> None:
        self.expect(b"(", '"("')
        self.enter()

    def close(self) -> None:
        self.expect(b")", '")"')
        self.depth -= 1

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.max_depth:
            raise self.error("Too deeply nested")

    def next_item(self) -> bool:
        """After a list item: True at the closing ")", False after the separating SP."""
        if self.maybe(b")"):
            return True
        if self.at_end():
            raise self.error('Expected ")"')
        self.sp()
        return False

    def is_string(self) -> bool:
        """Whether a quoted string, literal or literal8 starts here ("~" alone is an
        ATOM-CHAR)."""
        return self.peek() in (b'"', b"{") or self.data.startswith(b"~{", self.pos)

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.data, self.pos)
        if m is None:
            raise self.error(f"Expected {what}")
        self.pos = m.end()
        return m.group(0)

    def atom(self, what: str = "an atom") -> bytes:
        return self.match(_ATOM, what)

    def keyword(self, what: str = "a keyword") -> str:
        return self.atom(what).decode("ascii").upper()

    def number(self, what: str = "a number", lo: int = 0, hi: int = MAX_NUMBER) -> int:
        digits = self.match(_DIGITS, what)
        if len(digits) > 20 or not lo <= int(digits) <= hi:
            raise self.error(f"Number out of range in {what}")
        return int(digits)

    def quoted(self) -> bytes:
        m = _QUOTED.match(self.data, self.pos)
        if m is None:
            raise self.error("Invalid quoted string")
        self.pos = m.end()
        return _UNESCAPE.sub(rb"\1", m.group(1))

    def literal(self, *, allow8: bool = False) -> bytes:
        m = _LITERAL.match(self.data, self.pos)
        if m is None:
            raise self.error("Invalid literal")
        if m.group(1) and not allow8:
            raise self.error("literal8 is not allowed here")  # RFC 3516 4.2
        size = int(m.group(2))
        start = m.end()
        if start + size > len(self.data):
            raise self.error("Truncated literal")
        self.pos = start + size
        return self.data[start : self.pos]

    def string(self, what: str = "a string") -> bytes:
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if c == b"{" or self.data.startswith(b"~{", self.pos):
            return self.literal()
        raise self.error(f"Expected {what}")

    def astring(self, what: str = "a string") -> bytes:
        if self.is_string():
            return self.string(what)
        return self.match(_ASTRING_ATOM, what)

    def nstring(self, what: str = "a string") -> bytes | None:
        if self.data[self.pos : self.pos + 3].upper() == b"NIL" and not _ATOM.match(
            self.data, self.pos + 3
        ):
            self.pos += 3
            return None
        return self.string(what)

    def utf8(self, data: bytes, what: str) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"Invalid UTF-8 in {what}") from None

    def mailbox(self) -> str:
        # RFC 9051 9: mailbox = "INBOX" / astring (names are UTF-8, RFC 9051 5.1)
        name = self.utf8(self.astring("a mailbox name"), "mailbox name")
        if _CONTROL.search(name):
            raise self.error("Control character in mailbox name")
        return name

    def list_mailbox(self) -> str:
        # RFC 9051 9: list-mailbox = 1*list-char / string
        raw = self.string() if self.is_string() else self.match(_LIST_ATOM, "a pattern")
        name = self.utf8(raw, "mailbox pattern")
        if _CONTROL.search(name):
            raise self.error("Control character in mailbox pattern")
        return name

    def seq_set(self, *, allow_saved: bool = True) -> SequenceSet:
        return _parse_seq_set(self, self.match(_SEQSET, "a sequence set"), allow_saved)

    def paren_list(self, item: str, read: _ItemReader) -> list[str]:
        """ "(" [item *(SP item)] ")" of upper-cased keywords, checked against `read`."""
        self.open()
        out: list[str] = []
        if not self.maybe(b")"):
            while True:
                out.append(read(self, item))
                if self.next_item():
                    break
        self.depth -= 1
        return out


_ItemReader: TypeAlias = "Callable[[_Reader, str], str]"


def _parse_seq_set(r: _Reader, token: bytes, allow_saved: bool) -> SequenceSet:
    # RFC 9051 9: sequence-set = (seq-number / seq-range) ["," sequence-set];
    # seq-number = nz-number / "*"; RFC 5182: sequence-set =/ "$"
    if token == b"$":
        if not allow_saved:
            raise r.error("'$' is not allowed here")
        return SequenceSet((), saved=True)
    pieces = token.split(b",")
    if len(pieces) > MAX_RANGES:
        raise r.error("Too many ranges in sequence set")
    ranges: list[tuple[int, int]] = []
    for piece in pieces:
        ends = piece.split(b":")
        if len(ends) > 2:
            raise r.error("Invalid sequence set")
        numbers = []
        for end in ends:
            if end == b"*":
                numbers.append(0)
            elif end[:1] in b"123456789" and end.isdigit() and len(end) <= 10:
                value = int(end)
                if value > MAX_NUMBER:
                    raise r.error("Invalid sequence set")
                numbers.append(value)
            else:
                raise r.error("Invalid sequence set")
        ranges.append((numbers[0], numbers[-1]))
    return SequenceSet(tuple(ranges))


def _read_keyword(allowed: frozenset[str]) -> Callable[[_Reader, str], str]:
    def read(r: _Reader, what: str) -> str:
        word = r.keyword(what)
        if word not in allowed:
            raise r.error(f"Unknown {what}")
        return word

    return read


# --- flags -----------------------------------------------------------------------------------

_SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
}
_SPECIAL_USE = {
    f.upper(): f
    for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}


def _flag(r: _Reader) -> str:
    # RFC 9051 9: flag = "\Answered" / "\Flagged" / "\Deleted" / "\Seen" / "\Draft" /
    # flag-keyword / flag-extension. \Recent cannot be set (RFC 3501 2.3.2); unknown
    # system flags are refused rather than stored.
    if r.maybe(b"\\"):
        name = "\\" + r.atom("a flag").decode("ascii")
        canonical = _SYSTEM_FLAGS.get(name.upper())
        if canonical is None:
            raise r.error("Unknown or read-only system flag")
        return canonical
    return r.atom("a flag").decode("ascii")


def _flag_list(r: _Reader) -> tuple[str, ...]:
    # RFC 9051 9: flag-list = "(" [flag *(SP flag)] ")"
    r.open()
    flags: list[str] = []
    if not r.maybe(b")"):
        while True:
            flags.append(_flag(r))
            if r.next_item():
                break
    r.depth -= 1
    return tuple(flags)


# --- dates -----------------------------------------------------------------------------------


def _date(r: _Reader) -> datetime.date:
    # RFC 9051 9: date = date-text / DQUOTE date-text DQUOTE
    raw = r.quoted() if r.peek() == b'"' else r.atom("a date")
    m = _DATE.fullmatch(raw.decode("ascii", "replace"))
    month = _MONTHS.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise r.error("Invalid date")
    try:
        return datetime.date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise r.error("Invalid date") from None


def _date_time(r: _Reader) -> datetime.datetime:
    # RFC 9051 9: date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time
    # SP zone DQUOTE
    if r.peek() != b'"':
        raise r.error("Invalid date-time")
    m = _DATE_TIME.fullmatch(r.quoted().decode("ascii", "replace"))
    month = _MONTHS.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise r.error("Invalid date-time")
    day, _, year, hour, minute, second, sign, zone = m.groups()
    zone_h, zone_m = int(zone[:2]), int(zone[2:])
    try:
        tz = datetime.timezone(
            (1 if sign == "+" else -1) * datetime.timedelta(hours=zone_h, minutes=zone_m)
        )
        if zone_m > 59:
            raise ValueError
        return datetime.datetime(
            int(year),
            month,
            int(day),
            int(hour),
            int(minute),
            min(int(second), 59),  # a leap second becomes :59
            tzinfo=tz,
        )
    except ValueError:
        raise r.error("Invalid date-time") from None


# --- search ----------------------------------------------------------------------------------

_FLAG_KEYS: dict[str, SearchKey] = {
    "ALL": SearchAll(),
    "ANSWERED": SearchFlag("\\Answered", True),
    "UNANSWERED": SearchFlag("\\Answered", False),
    "DELETED": SearchFlag("\\Deleted", True),
    "UNDELETED": SearchFlag("\\Deleted", False),
    "DRAFT": SearchFlag("\\Draft", True),
    "UNDRAFT": SearchFlag("\\Draft", False),
    "FLAGGED": SearchFlag("\\Flagged", True),
    "UNFLAGGED": SearchFlag("\\Flagged", False),
    "SEEN": SearchFlag("\\Seen", True),
    "UNSEEN": SearchFlag("\\Seen", False),
    # RFC 3501 6.4.4 (IMAP4rev1 only)
    "RECENT": SearchFlag("\\Recent", True),
    "OLD": SearchFlag("\\Recent", False),
    "NEW": SearchAnd((SearchFlag("\\Recent", True), SearchFlag("\\Seen", False))),
}
_HEADER_KEYS = {"FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc", "SUBJECT": "Subject"}
_DATE_KEYS: dict[str, tuple[Literal["internal", "sent"], Literal["before", "on", "since"]]] = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}
_SEARCH_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})  # RFC 9051 6.4.4
_CHARSETS = frozenset({"UTF-8", "US-ASCII"})


class _SearchParser:
    __slots__ = ("ascii_only", "r")

    def __init__(self, r: _Reader, ascii_only: bool) -> None:
        self.r = r
        self.ascii_only = ascii_only

    def text(self) -> str:
        raw = self.r.astring("a search string")
        if self.ascii_only and not raw.isascii():
            raise self.r.error("Non-ASCII search string with CHARSET US-ASCII")
        return self.r.utf8(raw, "search string")

    def key(self) -> SearchKey:
        r = self.r
        r.enter()
        try:
            return self._key()
        finally:
            r.depth -= 1

    def _key(self) -> SearchKey:
        r = self.r
        c = r.peek()
        if c == b"(":
            r.open()
            keys = [self.key()]
            while r.maybe(b" "):
                keys.append(self.key())
            r.expect(b")", '")"')
            r.depth -= 1
            return SearchAnd(tuple(keys))
        if c and c in b"0123456789*$":
            return SearchSequence(r.seq_set())
        word = r.keyword("a search key")
        flag_key = _FLAG_KEYS.get(word)
        if flag_key is not None:
            return flag_key
        if word in ("KEYWORD", "UNKEYWORD"):
            r.sp()
            keyword = r.atom("a keyword").decode("ascii")
            return SearchFlag(keyword, word == "KEYWORD")
        if word in _HEADER_KEYS:
            r.sp()
            return SearchHeader(_HEADER_KEYS[word], self.text())
        if word == "HEADER":
            r.sp()
            name = r.utf8(r.astring("a header field name"), "header field name")
            if not _FIELD_NAME.fullmatch(name):
                raise r.error("Invalid header field name")
            r.sp()
            return SearchHeader(name, self.text())
        if word == "BODY":
            r.sp()
            return SearchBody(self.text())
        if word == "TEXT":
            r.sp()
            return SearchText(self.text())
        if word in _DATE_KEYS:
            r.sp()
            date_field, op = _DATE_KEYS[word]
            return SearchDate(date_field, op, _date(r))
        if word in ("LARGER", "SMALLER"):
            r.sp()
            size = r.number("a size", hi=MAX_NUMBER64)
            return SearchSize("larger" if word == "LARGER" else "smaller", size)
        if word == "UID":
            r.sp()
            return SearchUid(r.seq_set())
        if word == "NOT":
            r.sp()
            return SearchNot(self.key())
        if word == "OR":
            r.sp()
            a = self.key()
            r.sp()
            return SearchOr(a, self.key())
        if word == "MODSEQ":
            # RFC 7162 3.1.5: "MODSEQ" [SP entry-name SP entry-type-req] SP
            # mod-sequence-valzer
            r.sp()
            if r.peek() == b'"':
                r.quoted()
                r.sp()
                if r.keyword("an entry type") not in ("PRIV", "SHARED", "ALL"):
                    raise r.error("Invalid entry type")
                r.sp()
            return SearchModseq(r.number("a mod-sequence", hi=MAX_NUMBER64))
        raise r.error("Unknown search key")


def _search(r: _Reader, uid: bool) -> Search:
    # RFC 9051 9: search = "SEARCH" [search-return-opts] SP search-program;
    # search-program = ["CHARSET" SP charset SP] search-key *(SP search-key)
    returns: tuple[str, ...] | None = None
    r.sp()
    if r.data[r.pos : r.pos + 7].upper() == b"RETURN ":
        r.pos += 7
        options = r.paren_list("search return option", _read_keyword(_SEARCH_RETURNS))
        returns = tuple(dict.fromkeys(options)) or ("ALL",)
        r.sp()
    charset: str | None = None
    if r.data[r.pos : r.pos + 8].upper() == b"CHARSET ":
        r.pos += 8
        raw = r.quoted() if r.peek() == b'"' else r.atom("a charset")
        charset = raw.decode("ascii", "replace").upper()
        if charset not in _CHARSETS:
            raise BadCharsetError(tag=r.tag)
        r.sp()
    parser = _SearchParser(r, ascii_only=charset == "US-ASCII")
    keys = [parser.key()]
    while r.maybe(b" "):
        keys.append(parser.key())
    key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return Search(charset, key, returns)


# --- fetch -----------------------------------------------------------------------------------

_SIMPLE_FETCH = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
    }
)
_MACROS = {
    # RFC 9051 6.4.5
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_MSGTEXT = ("HEADER.FIELDS.NOT", "HEADER.FIELDS", "HEADER", "TEXT", "MIME")


def _section(r: _Reader, *, binary: bool) -> Section:
    # RFC 9051 9: section = "[" [section-spec] "]"; section-spec = section-msgtext /
    # (section-part ["." section-text]); section-binary = "[" [section-part] "]"
    r.expect(b"[", '"["')
    parts: list[int] = []
    text = ""
    fields: tuple[str, ...] = ()
    if r.maybe(b"]"):
        return Section()
    text_follows = False
    if _is_digit(r.peek()):
        while True:
            parts.append(r.number("a section part", lo=1))
            if len(parts) > MAX_SECTION_PARTS:
                raise r.error("Section part too deep")
            if not r.maybe(b"."):
                break
            if not _is_digit(r.peek()):
                text_follows = True  # section-part "." section-text
                break
    if not parts or text_follows:
        if binary:
            raise r.error("Invalid binary section")
        for candidate in _MSGTEXT:
            if r.data[r.pos : r.pos + len(candidate)].upper() == candidate.encode():
                text = candidate
                r.pos += len(candidate)
                break
        else:
            raise r.error("Invalid section")
        if text == "MIME" and not parts:
            raise r.error("MIME needs a section part")  # RFC 9051 6.4.5
        if text.startswith("HEADER.FIELDS"):
            # RFC 9051 9: header-list = "(" header-fld-name *(SP header-fld-name) ")"
            r.sp()
            r.open()
            names = []
            while True:
                name = r.utf8(r.astring("a header field name"), "header field name")
                if not _FIELD_NAME.fullmatch(name):
                    raise r.error("Invalid header field name")
                names.append(name.upper())
                if r.next_item():
                    break
            r.depth -= 1
            fields = tuple(names)
    r.expect(b"]", '"]"')
    return Section(tuple(parts), text, fields)


def _is_digit(c: bytes) -> bool:
    return len(c) == 1 and c in b"0123456789"


def _partial(r: _Reader) -> tuple[int, int] | None:
    # RFC 9051 9: partial = "<" number64 "." nz-number64 ">"
    if not r.maybe(b"<"):
        return None
    offset = r.number("a partial offset", hi=MAX_NUMBER64)
    r.expect(b".", '"."')
    length = r.number("a partial length", lo=1, hi=MAX_NUMBER64)
    r.expect(b">", '">"')
    return (offset, length)


def _fetch_att(r: _Reader) -> FetchItem:
    name = r.match(_FETCH_NAME, "a fetch attribute").decode("ascii").upper()
    if name in _SIMPLE_FETCH:
        return FetchItem(name)
    if name == "BODY":
        if r.peek() != b"[":
            return FetchItem("BODY")
        section = _section(r, binary=False)
        return FetchItem("BODY", section, _partial(r))
    if name == "BODY.PEEK":
        section = _section(r, binary=False)
        return FetchItem("BODY", section, _partial(r), peek=True)
    if name in ("BINARY", "BINARY.PEEK"):  # RFC 3516 4.1
        section = _section(r, binary=True)
        return FetchItem("BINARY", section, _partial(r), peek=name == "BINARY.PEEK")
    if name == "BINARY.SIZE":
        return FetchItem("BINARY.SIZE", _section(r, binary=True))
    raise r.error("Unknown fetch attribute")


def _mod_params(r: _Reader) -> dict[str, int | None]:
    # RFC 4466 2.4 / RFC 7162: SP "(" modifier *(SP modifier) ")"
    r.sp()
    r.open()
    out: dict[str, int | None] = {}
    while True:
        word = r.keyword("a modifier")
        if word in out:
            raise r.error("Duplicate modifier")
        if word in ("CHANGEDSINCE", "UNCHANGEDSINCE"):
            r.sp()
            out[word] = r.number("a mod-sequence", hi=MAX_NUMBER64)
        elif word == "VANISHED":
            out[word] = None
        else:
            raise r.error("Unknown modifier")
        if r.next_item():
            break
    r.depth -= 1
    return out


def _fetch(r: _Reader, uid: bool) -> Fetch:
    # RFC 9051 9: fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
    # fetch-att / "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
    r.sp()
    seq = r.seq_set()
    r.sp()
    items: list[FetchItem] = []
    if r.maybe(b"("):
        r.enter()
        while True:
            items.append(_fetch_att(r))
            if r.next_item():
                break
        r.depth -= 1
    else:
        m = _FETCH_NAME.match(r.data, r.pos)
        macro = _MACROS.get(m.group(0).decode("ascii").upper()) if m else None
        if m is not None and macro is not None:
            r.pos = m.end()
            items = [FetchItem(name) for name in macro]
        else:
            items.append(_fetch_att(r))
    changedsince: int | None = None
    vanished = False
    if not r.at_end():
        mods = _mod_params(r)
        if "UNCHANGEDSINCE" in mods:
            raise r.error("Unknown modifier")
        changedsince = mods.get("CHANGEDSINCE")
        vanished = "VANISHED" in mods
        if vanished and (not uid or changedsince is None):
            # RFC 7162 3.2.6: only with UID FETCH and CHANGEDSINCE
            raise r.error("VANISHED needs UID FETCH and CHANGEDSINCE")
    return Fetch(seq, tuple(items), changedsince, vanished)


# --- the other commands ----------------------------------------------------------------------


def _no_args(args: CommandArgs) -> Callable[[_Reader, bool], CommandArgs]:
    def parse(r: _Reader, uid: bool) -> CommandArgs:
        return args

    return parse


def _authenticate(r: _Reader, uid: bool) -> Authenticate:
    # RFC 9051 9: authenticate = "AUTHENTICATE" SP auth-type [SP initial-resp];
    # initial-resp = (base64 / "=") (RFC 4959)
    r.sp()
    mechanism = r.keyword("a SASL mechanism")
    initial: bytes | None = None
    if r.maybe(b" "):
        text = r.match(_BASE64_CHARS, "an initial response").decode("ascii")
        try:
            initial = sasl.decode_response(text, initial=True)
        except sasl.SaslError:
            raise r.error("Invalid base64 in initial response") from None
    return Authenticate(mechanism, initial)


def _login(r: _Reader, uid: bool) -> Login:
    # RFC 9051 9: login = "LOGIN" SP userid SP password
    r.sp()
    user = r.utf8(r.astring("a user name"), "user name")
    r.sp()
    password = r.utf8(r.astring("a password"), "password")
    return Login(user, password)


def _enable(r: _Reader, uid: bool) -> Enable:
    # RFC 5161 4: "ENABLE" 1*(SP capability)
    caps: list[str] = []
    while True:
        r.sp()
        caps.append(r.keyword("a capability"))
        if r.at_end():
            return Enable(tuple(caps))


def _select(readonly: bool) -> Callable[[_Reader, bool], Select]:
    def parse(r: _Reader, uid: bool) -> Select:
        # RFC 9051 9: select = "SELECT" SP mailbox [select-params]; RFC 7162 7
        r.sp()
        mailbox = r.mailbox()
        condstore = False
        qresync: Qresync | None = None
        if r.maybe(b" "):
            r.open()
            seen: set[str] = set()
            while True:
                word = r.keyword("a select parameter")
                if word in seen:
                    raise r.error("Duplicate select parameter")
                seen.add(word)
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC":
                    r.sp()
                    qresync = _qresync(r)
                else:
                    raise r.error("Unknown select parameter")
                if r.next_item():
                    break
            r.depth -= 1
        return Select(mailbox, readonly, condstore, qresync)

    return parse


def _qresync(r: _Reader) -> Qresync:
    # RFC 7162 7: "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
    # [SP seq-match-data] ")"; seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    r.open()
    uidvalidity = r.number("a UIDVALIDITY", lo=1)
    r.sp()
    modseq = r.number("a mod-sequence", hi=MAX_NUMBER64)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.maybe(b" "):
        if r.peek() != b"(":
            known = _no_star(r, r.seq_set(allow_saved=False))
            if r.maybe(b" "):
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.close()
    return Qresync(uidvalidity, modseq, known, match)


def _no_star(r: _Reader, seq: SequenceSet) -> SequenceSet:
    if any(0 in pair for pair in seq.ranges):
        raise r.error('"*" is not allowed in known UIDs')  # RFC 7162 7
    return seq


def _seq_match(r: _Reader) -> tuple[SequenceSet, SequenceSet]:
    r.open()
    seqs = _no_star(r, r.seq_set(allow_saved=False))
    r.sp()
    uids = _no_star(r, r.seq_set(allow_saved=False))
    r.close()
    return (seqs, uids)


def _create(r: _Reader, uid: bool) -> Create:
    # RFC 9051 9: create = "CREATE" SP mailbox [create-params];
    # RFC 6154 6: create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"
    r.sp()
    mailbox = r.mailbox()
    uses: list[str] = []
    if r.maybe(b" "):
        r.open()
        if r.keyword("a create parameter") != "USE":
            raise r.error("Unknown create parameter")
        r.sp()
        r.open()
        if not r.maybe(b")"):
            while True:
                r.expect(b"\\", "a special-use attribute")
                attr = "\\" + r.atom("a special-use attribute").decode("ascii")
                uses.append(_SPECIAL_USE.get(attr.upper(), attr))
                if r.next_item():
                    break
        r.depth -= 1
        r.close()
    return Create(mailbox, tuple(uses))


def _one_mailbox(
    cls: type[Delete] | type[Subscribe] | type[Unsubscribe],
) -> Callable[[_Reader, bool], CommandArgs]:
    def parse(r: _Reader, uid: bool) -> CommandArgs:
        r.sp()
        return cls(r.mailbox())

    return parse


def _rename(r: _Reader, uid: bool) -> Rename:
    r.sp()
    old = r.mailbox()
    r.sp()
    return Rename(old, r.mailbox())


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",  # RFC 9051 6.3.11
        "SIZE",  # RFC 8438 / RFC 9051
        "RECENT",  # RFC 3501 (IMAP4rev1)
        "HIGHESTMODSEQ",  # RFC 7162 3.1.6
        "APPENDLIMIT",  # RFC 7889 4
    }
)


def _status_items(r: _Reader) -> tuple[str, ...]:
    # RFC 9051 9: "(" status-att *(SP status-att) ")"
    items = r.paren_list("status item", _read_keyword(_STATUS_ITEMS))
    if not items:
        raise r.error("Expected a status item")
    return tuple(items)


def _list(r: _Reader, uid: bool) -> List:
    # RFC 9051 9: list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    # [SP list-return-opts]  (RFC 5258 6)
    r.sp()
    selection: tuple[str, ...] = ()
    if r.peek() == b"(":
        selection = tuple(r.paren_list("list selection option", _read_keyword(_LIST_SELECT)))
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            # RFC 5258 3.1: RECURSIVEMATCH needs another selection option
            raise r.error("RECURSIVEMATCH needs another selection option")
        r.sp()
    reference = r.mailbox()
    r.sp()
    patterns: list[str] = []
    if r.peek() == b"(":
        r.open()
        while True:
            patterns.append(r.list_mailbox())
            if r.next_item():
                break
        r.depth -= 1
    else:
        patterns.append(r.list_mailbox())
    returns: list[str] = []
    status_items: tuple[str, ...] = ()
    if r.maybe(b" "):
        if r.keyword("RETURN") != "RETURN":
            raise r.error("Expected RETURN")
        r.sp()
        r.open()
        if not r.maybe(b")"):
            while True:
                word = r.keyword("a list return option")
                if word not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"):
                    raise r.error("Unknown list return option")
                if word == "STATUS":  # RFC 5819 2
                    r.sp()
                    status_items = _status_items(r)
                returns.append(word)
                if r.next_item():
                    break
        r.depth -= 1
    return List(reference, tuple(patterns), selection, tuple(returns), status_items)


def _lsub(r: _Reader, uid: bool) -> Lsub:
    r.sp()
    reference = r.mailbox()
    r.sp()
    return Lsub(reference, r.list_mailbox())


def _status(r: _Reader, uid: bool) -> Status:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    return Status(mailbox, _status_items(r))


def _expunge(r: _Reader, uid: bool) -> Expunge:
    if not uid:
        return Expunge()
    r.sp()  # RFC 9051 9: uid-expunge = "EXPUNGE" SP sequence-set
    return Expunge(r.seq_set())


_STORE_ATT = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)


def _store(r: _Reader, uid: bool) -> Store:
    # RFC 9051 9: store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags;
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    r.sp()
    seq = r.seq_set()
    unchangedsince: int | None = None
    if r.data[r.pos : r.pos + 2] == b" (":
        mods = _mod_params(r)
        if set(mods) != {"UNCHANGEDSINCE"}:
            raise r.error("Unknown store modifier")
        unchangedsince = mods["UNCHANGEDSINCE"]
    r.sp()
    m = _STORE_ATT.match(r.data, r.pos)
    if m is None:
        raise r.error("Expected FLAGS, +FLAGS or -FLAGS")
    r.pos = m.end()
    r.sp()
    if r.peek() == b"(":
        flags = _flag_list(r)
    else:
        flag_items = [_flag(r)]
        while r.maybe(b" "):
            flag_items.append(_flag(r))
        flags = tuple(flag_items)
    mode: Literal["+", "-", ""] = "+" if m.group(1) == b"+" else "-" if m.group(1) else ""
    return Store(seq, mode, m.group(2) is not None, flags, unchangedsince)


def _copy_move(cls: type[Copy] | type[Move]) -> Callable[[_Reader, bool], CommandArgs]:
    def parse(r: _Reader, uid: bool) -> CommandArgs:
        r.sp()
        seq = r.seq_set()
        r.sp()
        return cls(seq, r.mailbox())

    return parse


def _id(r: _Reader, uid: bool) -> Id:
    # RFC 2971 4: id = "ID" SP id-params-list; id-params-list = "(" *(string SP nstring)
    # ")" / nil
    r.sp()
    if r.peek() != b"(":
        if r.keyword("NIL") != "NIL":
            raise r.error("Expected NIL or a parameter list")
        return Id(None)
    r.open()
    params: dict[str, str | None] = {}
    if not r.maybe(b")"):
        while True:
            key = r.utf8(r.string("an ID field"), "ID field")
            r.sp()
            raw = r.nstring("an ID value")
            value = None if raw is None else r.utf8(raw, "ID value")
            if len(key.encode()) > 30 or (raw is not None and len(raw) > 1024):
                raise r.error("ID field or value too long")  # RFC 2971 3.3
            params[key] = value
            if len(params) > MAX_ID_PAIRS:
                raise r.error("Too many ID fields")
            if r.next_item():
                break
    r.depth -= 1
    return Id(params)


def _getquota(r: _Reader, uid: bool) -> GetQuota:
    # RFC 9208 9: getquota = "GETQUOTA" SP quota-root-name; quota-root-name = astring
    r.sp()
    return GetQuota(r.mailbox())


def _getquotaroot(r: _Reader, uid: bool) -> GetQuotaRoot:
    # RFC 9208 9: getquotaroot = "GETQUOTAROOT" SP mailbox
    r.sp()
    return GetQuotaRoot(r.mailbox())


def _append(r: _Reader, uid: bool) -> CommandArgs:
    # APPEND's message literal is streamed by the core (`parse_append_head`); a complete
    # APPEND command reaching this point has no literal.
    raise r.error("APPEND needs a message literal")


_Parser: TypeAlias = "Callable[[_Reader, bool], CommandArgs]"

_PARSERS: dict[str, _Parser] = {
    # RFC 9051 6.1 any state
    "CAPABILITY": _no_args(Capability()),
    "NOOP": _no_args(Noop()),
    "LOGOUT": _no_args(Logout()),
    "ID": _id,
    # RFC 9051 6.2 not authenticated
    "STARTTLS": _no_args(StartTls()),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    # RFC 9051 6.3 authenticated
    "ENABLE": _enable,
    "SELECT": _select(readonly=False),
    "EXAMINE": _select(readonly=True),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _no_args(Namespace()),
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_args(Idle()),
    "GETQUOTA": _getquota,  # RFC 9208 4.2
    "GETQUOTAROOT": _getquotaroot,  # RFC 9208 4.3
    # RFC 9051 6.4 selected
    "CHECK": _no_args(Check()),
    "CLOSE": _no_args(Close()),
    "UNSELECT": _no_args(Unselect()),
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_move(Copy),
    "MOVE": _copy_move(Move),
}

COMMAND_NAMES = frozenset(_PARSERS)
"""Every command name the parser knows (UID is a prefix, not a name)."""
UID_COMMANDS = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})
"""RFC 9051 6.4.9: the commands UID may prefix."""


def _head(r: _Reader) -> tuple[str, str, bool]:
    # RFC 9051 9: command = tag SP (command-any / command-auth / command-nonauth /
    # command-select) CRLF; tag = 1*<any ASTRING-CHAR except "+">
    m = _TAG.match(r.data)
    if m is None:
        raise r.error("Invalid or missing tag")
    r.tag = m.group(0).decode("ascii")
    r.pos = m.end()
    if r.at_end():
        raise r.error("Missing command")
    r.sp()
    name = r.keyword("a command name")
    uid = False
    if name == "UID":
        uid = True
        r.sp()
        name = r.keyword("a command name")
        if name not in UID_COMMANDS:
            raise r.error("Unknown UID command")
    elif name not in COMMAND_NAMES:
        raise r.error("Unknown command")
    if not r.at_end() and r.peek() != b" ":
        raise r.error("Unknown command")
    return r.tag, name, uid


def command_head(raw: bytes) -> tuple[str, str, bool]:
    """(tag, upper-case command name, uid) of a command, or its start (the first line is
    enough). Raises ImapParseError ("Unknown command", invalid tag: `tag` None)."""
    return _head(_Reader(raw, DEFAULT_MAX_DEPTH))


def parse_command(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Command:
    """Parse one complete command (see the module notes for the form of `raw`)."""
    r = _Reader(raw, max_depth)
    tag, name, uid = _head(r)
    args = _PARSERS[name](r, uid)
    r.end()
    return Command(tag, name, uid, args)


def parse_append_head(prefix: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> AppendHead | None:
    """Parse an APPEND command up to its message literal: `prefix` is everything before
    the literal's "{" (or "~{" for literal8), ending in the SP that precedes it.

    Returns None when the literal is not the message but the mailbox name (`prefix` is
    just `tag SP "APPEND" SP`). Raises ImapParseError when the command is not APPEND or
    the part before the message is malformed (RFC 9051 9: append = "APPEND" SP mailbox
    [SP flag-list] [SP date-time] SP literal; RFC 3516 4.2 allows literal8)."""
    r = _Reader(prefix, max_depth)
    tag, name, _ = _head(r)
    if name != "APPEND":
        raise r.error("Not an APPEND command")
    r.sp()
    if r.at_end():
        return None
    mailbox = r.mailbox()
    r.sp()
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    if r.peek() == b"(":
        flags = _flag_list(r)
        r.sp()
    if r.peek() == b'"':
        internal_date = _date_time(r)
        r.sp()
    r.end()
    return AppendHead(tag, mailbox, flags, internal_date)
