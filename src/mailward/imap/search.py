"""SEARCH: evaluating parsed search keys over a mailbox, and the SEARCH/ESEARCH responses.

RFC 9051 (IMAP4rev2) 6.4.4 SEARCH and 7.3.4 ESEARCH response; RFC 3501 (IMAP4rev1)
6.4.4 and 7.2.5 SEARCH response; RFC 4731 3.1 (RETURN MIN/MAX/ALL/COUNT); RFC 5182
("$" and RETURN SAVE); RFC 7162 3.1.5 (MODSEQ search key, MODSEQ in the responses).

Implementation notes
- `search` reads message bytes only where the metadata cannot decide: each message
  is first evaluated with three-valued (Kleene) logic over its `MessageInfo` alone
  (flags, sizes, internal dates, sequence numbers, UIDs, MODSEQ); only when that
  leaves it undecided is it loaded (`load`, once per message per call) and parsed
  once. AND short-circuits on a false cheap key, OR on a true one; within AND / OR
  the keys are tried cheapest first (metadata, then headers and Date:, then bodies,
  then TEXT). So a flag-only search loads nothing.
- Flags compare case-insensitively (RFC 9051 2.3.2: keywords are not case-sensitive;
  system flags reach us canonical). \\Recent is not a stored flag: a message is
  recent for this session when its uid > `recent_above`. NEW is RECENT UNSEEN, OLD
  is NOT RECENT (the parser builds those).
- Dates (RFC 9051 6.4.4 "disregarding time and timezone"): BEFORE/ON/SINCE compare
  the UTC date of the internal date (INTERNALDATE is shown in UTC, see
  `imap_wire.format_datetime`); SENTBEFORE/SENTON/SENTSINCE compare the date of the
  first Date: field as written in its own zone. A message without a parseable Date:
  matches no SENT* key (and so matches NOT SENT*).
- LARGER/SMALLER are strict (RFC822.SIZE > n, < n). MODSEQ n matches modseq >= n
  (RFC 7162 3.1.5).
- "*" in a sequence set is the last sequence number; in a UID set the largest uid in
  the mailbox (RFC 9051 9 seq-number). "$" (RFC 5182) as a sequence set or UID set
  means the messages whose uids are in `saved`.
- HEADER, BODY, TEXT matching (RFC 2047 decoding, charsets, case folding) is
  `message.search_text`'s.
- The event loop gets a turn every `YIELD_EVERY` messages even when nothing is
  loaded, so a search over a large mailbox does not stall other sessions.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
from collections.abc import Awaitable, Callable, Iterable, Sequence

from mailward.message import mime, search_text
from mailward.proto import imap_wire
from mailward.proto.imap_commands import (
    SearchAll,
    SearchAnd,
    SearchBody,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    SearchUid,
    SequenceSet,
)
from mailward.store.api import MessageInfo

__all__ = [
    "YIELD_EVERY",
    "compress_set",
    "esearch_response",
    "needs_message",
    "search",
    "search_response",
    "uses_modseq",
    "uses_sequence",
]

YIELD_EVERY = 1000

# Cost classes for ordering keys within AND / OR: metadata < header < body < text.
_COST_META, _COST_HEADER, _COST_BODY, _COST_TEXT = 0, 1, 2, 3


def _cost(key: SearchKey) -> int:
    if isinstance(key, SearchHeader):
        return _COST_HEADER
    if isinstance(key, SearchDate):
        return _COST_HEADER if key.field == "sent" else _COST_META
    if isinstance(key, SearchBody):
        return _COST_BODY
    if isinstance(key, SearchText):
        return _COST_TEXT
    if isinstance(key, SearchAnd):
        return max((_cost(k) for k in key.keys), default=_COST_META)
    if isinstance(key, SearchOr):
        return max(_cost(key.a), _cost(key.b))
    if isinstance(key, SearchNot):
        return _cost(key.key)
    return _COST_META


def needs_message(key: SearchKey) -> bool:
    """Whether evaluating `key` may need the message bytes (HEADER and its shorthands,
    BODY, TEXT, SENTBEFORE/SENTON/SENTSINCE anywhere in it)."""
    return _cost(key) > _COST_META


def uses_sequence(key: SearchKey) -> bool:
    """Whether `key` refers to message sequence numbers (a sequence set other than
    "$"), so the session must not renumber (send EXPUNGE) around it (RFC 9051 7.5.1)."""
    if isinstance(key, SearchSequence):
        return not key.set.saved
    return any(uses_sequence(child) for child in _children(key))


def uses_modseq(key: SearchKey) -> bool:
    """Whether `key` contains the MODSEQ search key: the response then carries the
    highest MODSEQ of the matches (RFC 7162 3.1.5)."""
    if isinstance(key, SearchModseq):
        return True
    return any(uses_modseq(child) for child in _children(key))


def _children(key: SearchKey) -> tuple[SearchKey, ...]:
    if isinstance(key, SearchAnd):
        return key.keys
    if isinstance(key, SearchOr):
        return (key.a, key.b)
    if isinstance(key, SearchNot):
        return (key.key,)
    return ()


def _cheapest_first(key: SearchKey) -> SearchKey:
    """The same key with AND / OR operands in cost order (stable)."""
    if isinstance(key, SearchAnd):
        keys = sorted((_cheapest_first(k) for k in key.keys), key=_cost)
        return SearchAnd(tuple(keys))
    if isinstance(key, SearchOr):
        a, b = _cheapest_first(key.a), _cheapest_first(key.b)
        return SearchOr(a, b) if _cost(a) <= _cost(b) else SearchOr(b, a)
    if isinstance(key, SearchNot):
        return SearchNot(_cheapest_first(key.key))
    return key


class _Loaded:
    """One loaded message: its bytes, its MIME tree and its Date:, each parsed once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._root: mime.Part | None = None
        self._sent: datetime.date | None = None
        self._sent_done = False

    @property
    def root(self) -> mime.Part:
        if self._root is None:
            self._root = mime.parse(self.data)
        return self._root

    @property
    def header_end(self) -> int:
        """End of the top-level header section, found without a MIME parse."""
        if self._root is not None:
            return self._root.header_end
        for separator in (b"\r\n\r\n", b"\n\n"):
            end = self.data.find(separator)
            if end >= 0:
                return end + len(separator)
        return len(self.data)

    @property
    def sent_date(self) -> datetime.date | None:
        if not self._sent_done:
            self._sent = _sent_date(self.data, self.header_end)
            self._sent_done = True
        return self._sent


def _sent_date(data: bytes, header_end: int) -> datetime.date | None:
    """The calendar date of the first Date: field in its own zone (RFC 5322 3.3), or
    None when there is none or it does not parse."""
    for name, value in mime.header_fields(data, 0, header_end):
        if name.lower() != b"date":
            continue
        text = mime.unfold(value).decode("ascii", "replace")
        try:
            parsed = email.utils.parsedate_tz(text)
            return None if parsed is None else datetime.date(parsed[0], parsed[1], parsed[2])
        except (ValueError, TypeError, IndexError, OverflowError):
            return None
    return None


def _compare(found: datetime.date, op: str, wanted: datetime.date) -> bool:
    if op == "before":
        return found < wanted
    if op == "on":
        return found == wanted
    return found >= wanted  # since


class _Evaluator:
    def __init__(
        self, *, last_seq: int, last_uid: int, recent_above: int, saved: frozenset[int]
    ) -> None:
        self.last_seq = last_seq
        self.last_uid = last_uid
        self.recent_above = recent_above
        self.saved = saved

    def _in_set(self, numbers: SequenceSet, n: int, largest: int, uid: int) -> bool:
        if numbers.saved:
            return uid in self.saved  # RFC 5182: "$" is the saved set of messages
        return numbers.contains(n, largest)

    def evaluate(
        self, key: SearchKey, seq: int, info: MessageInfo, message: _Loaded | None
    ) -> bool | None:
        """True / False, or None when `message` is needed and not given."""
        if isinstance(key, SearchAll):
            return True
        if isinstance(key, SearchFlag):
            if key.flag.lower() == "\\recent":
                has = info.uid > self.recent_above
            else:
                wanted = key.flag.lower()
                has = any(flag.lower() == wanted for flag in info.flags)
            return has == key.present
        if isinstance(key, SearchSize):
            return info.size > key.size if key.op == "larger" else info.size < key.size
        if isinstance(key, SearchModseq):
            return info.modseq >= key.modseq
        if isinstance(key, SearchSequence):
            return self._in_set(key.set, seq, self.last_seq, info.uid)
        if isinstance(key, SearchUid):
            return self._in_set(key.set, info.uid, self.last_uid, info.uid)
        if isinstance(key, SearchDate) and key.field == "internal":
            day = datetime.datetime.fromtimestamp(info.internal_date, datetime.UTC).date()
            return _compare(day, key.op, key.date)
        if isinstance(key, SearchAnd):
            result: bool | None = True
            for child in key.keys:
                value = self.evaluate(child, seq, info, message)
                if value is False:
                    return False
                if value is None:
                    result = None
            return result
        if isinstance(key, SearchOr):
            a = self.evaluate(key.a, seq, info, message)
            if a is True:
                return True
            b = self.evaluate(key.b, seq, info, message)
            if b is True:
                return True
            return None if a is None or b is None else False
        if isinstance(key, SearchNot):
            value = self.evaluate(key.key, seq, info, message)
            return None if value is None else not value
        if message is None:
            return None
        return self._content(key, message)

    def _content(self, key: SearchKey, message: _Loaded) -> bool:
        if isinstance(key, SearchHeader):
            return search_text.header_section_matches(
                message.data, 0, message.header_end, key.name, key.value
            )
        if isinstance(key, SearchBody):
            return search_text.body_matches(message.data, message.root, key.text)
        if isinstance(key, SearchText):
            return search_text.text_matches(message.data, message.root, key.text)
        if isinstance(key, SearchDate):
            sent = message.sent_date
            return sent is not None and _compare(sent, key.op, key.date)
        raise ValueError(f"unknown search key {key!r}")


Loader = Callable[[Sequence[MessageInfo], bool], Awaitable[Sequence[bytes]]]
LOAD_BATCH = 512  # messages read per `load` call (one store round trip)


def needs_body(key: SearchKey) -> bool:
    """Whether some key looks past the header section (BODY, TEXT); HEADER/FROM/
    SUBJECT/... and SENT* need only the header section, which is far cheaper to read."""
    if isinstance(key, SearchBody | SearchText):
        return True
    return any(needs_body(child) for child in _children(key))


async def search(
    key: SearchKey,
    messages: Sequence[tuple[int, MessageInfo]],
    load: Loader,
    *,
    recent_above: int,
    saved: Sequence[int] = (),
) -> list[tuple[int, MessageInfo]]:
    """The (seq, info) pairs of `messages` (every message of the mailbox, in sequence
    order) that match `key`, in order. `load(infos, header_only)` returns the messages'
    bytes (only their header sections when `header_only`); it is called in batches,
    only for messages the metadata cannot decide, at most once each."""
    last_seq, last_uid = (messages[-1][0], messages[-1][1].uid) if messages else (0, 0)
    evaluator = _Evaluator(
        last_seq=last_seq, last_uid=last_uid, recent_above=recent_above, saved=frozenset(saved)
    )
    ordered = _cheapest_first(key)
    header_only = not needs_body(ordered)
    matches: list[tuple[int, MessageInfo]] = []
    undecided: list[tuple[int, MessageInfo]] = []

    async def decide_undecided() -> None:
        contents = await load([info for _, info in undecided], header_only)
        for (seq, info), data in zip(undecided, contents, strict=True):
            if evaluator.evaluate(ordered, seq, info, _Loaded(data)):
                matches.append((seq, info))
        undecided.clear()

    for index, (seq, info) in enumerate(messages):
        if index and index % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        result = evaluator.evaluate(ordered, seq, info, None)
        if result is None:
            undecided.append((seq, info))
            if len(undecided) >= LOAD_BATCH:
                await decide_undecided()
        elif result:
            matches.append((seq, info))
    if undecided:
        await decide_undecided()
    matches.sort(key=lambda pair: pair[0])
    return matches


# --- responses ---------------------------------------------------------------------------------


def compress_set(numbers: Iterable[int]) -> str:
    """A sequence-set for these numbers, sorted, runs as ranges: [1, 2, 3, 5] is
    "1:3,5" (RFC 9051 9 sequence-set). Empty input gives ""."""
    ranges: list[list[int]] = []
    for n in sorted(set(numbers)):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ",".join(str(a) if a == b else f"{a}:{b}" for a, b in ranges)


def search_response(matches: list[int], modseq: int | None) -> bytes:
    """The IMAP4rev1 `* SEARCH 2 5 6` response (RFC 3501 7.2.5), with `(MODSEQ n)` when
    `modseq` is given and something matched (RFC 7162 3.1.5: the highest mod-sequence
    of the returned messages, sent when the search used MODSEQ)."""
    line = b"* SEARCH" + b"".join(b" %d" % n for n in matches)
    if modseq is not None and matches:
        line += b" (MODSEQ %d)" % modseq
    return line + b"\r\n"


def esearch_response(
    tag: str, matches: list[int], returns: tuple[str, ...], *, uid: bool, modseq: int | None
) -> bytes:
    """The `* ESEARCH (TAG "t") [UID] ...` response (RFC 4731 3.1, RFC 9051 7.3.4).

    `returns` are the RETURN options; () means ALL (RFC 9051 6.4.4). MIN, MAX and ALL
    are left out when nothing matched, COUNT is always given when asked (COUNT 0);
    MODSEQ n follows when `modseq` is given and something matched (RFC 7162 3.1.5).
    With SAVE as the only option the answer is b"": no ESEARCH response (RFC 5182).
    """
    options = [option.upper() for option in returns]
    wanted = {option for option in options if option != "SAVE"}
    if options and not wanted:
        return b""
    if not options:
        wanted = {"ALL"}
    line = b"* ESEARCH (TAG " + imap_wire.quote_or_literal(tag) + b")"
    if uid:
        line += b" UID"
    if matches:
        if "MIN" in wanted:
            line += b" MIN %d" % min(matches)
        if "MAX" in wanted:
            line += b" MAX %d" % max(matches)
    if "COUNT" in wanted:
        line += b" COUNT %d" % len(set(matches))
    if matches and "ALL" in wanted:
        line += b" ALL " + compress_set(matches).encode("ascii")
    if modseq is not None and matches:
        line += b" MODSEQ %d" % modseq
    return line + b"\r\n"
