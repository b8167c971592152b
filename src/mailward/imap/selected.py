"""One session's view of its selected mailbox: sequence numbers and what it was told.

RFC 9051 2.3.1.2 / 7.5: message sequence numbers are per session; they change only
when this session is told (EXPUNGE / VANISHED), and EXPUNGE must not be sent while
answering a non-UID FETCH, STORE or SEARCH (7.5.1), so a removal seen then stays
pending. New messages are announced with EXISTS, flag changes made by others with
untagged FETCH FLAGS (plus UID under QRESYNC and MODSEQ under CONDSTORE, RFC 7162
3.1.4 / 3.2.4). Changes are found by MODSEQ: `store.changes_since(highestmodseq)`
returns every message and tombstone newer than what this session last saw.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailward.store.api import MailboxChanges, MessageInfo


def compress(numbers: Sequence[int]) -> str:
    """Ascending numbers as an IMAP sequence set: [1, 2, 3, 5] -> "1:3,5"."""
    out: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        out.append(str(numbers[i]) if i == j else f"{numbers[i]}:{numbers[j]}")
        i = j + 1
    return ",".join(out)


def ranges_of(uids: Sequence[int]) -> list[tuple[int, int]]:
    """Ascending uids as inclusive (lo, hi) ranges for `store.fetch_info`."""
    out: list[tuple[int, int]] = []
    for uid in uids:
        if out and out[-1][1] + 1 == uid:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out


@dataclass(slots=True)
class SelectedMailbox:
    mailbox_id: int
    name: str
    uidvalidity: int
    readonly: bool
    uids: array[int]  # 4 octets a message: a session on 100k messages holds 400 KB
    highestmodseq: int
    recent_above: int  # uids above this are \Recent for this session (rev1; 2**32 under rev2)
    uidnext: int
    pending_expunge: set[int] = field(default_factory=set)
    own_modseqs: set[int] = field(default_factory=set)  # our own STOREs, already reported

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int:
        """The sequence number of `uid`, or 0 if not in the view."""
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else 0

    def by_sequence(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """(seq, uid) for resolved sequence-number ranges, ascending, deduplicated."""
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted((max(lo, 1), min(hi, len(self.uids))) for lo, hi in ranges):
            if lo > hi:
                continue
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        uids = self.uids
        return [(s, uids[s - 1]) for lo, hi in merged for s in range(lo, hi + 1)]

    def by_uid(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """(seq, uid) for the uids of the view inside the ranges, ascending."""
        found: dict[int, int] = {}
        for lo, hi in ranges:
            i = bisect.bisect_left(self.uids, lo)
            while i < len(self.uids) and self.uids[i] <= hi:
                found[i + 1] = self.uids[i]
                i += 1
        return sorted(found.items())

    def apply(
        self,
        changes: MailboxChanges,
        *,
        allow_expunge: bool,
        qresync: bool,
        condstore: bool,
        rev2: bool,
    ) -> list[bytes]:
        """Untagged responses telling this session about `changes`, in an order that
        keeps sequence numbers right: expunges, then flag changes, then EXISTS."""
        out: list[bytes] = []
        last_known = self.uids[-1] if self.uids else 0
        gone = [u for u in changes.expunged if self.seq_of(u)]
        self.pending_expunge.update(gone)
        if allow_expunge:
            out += self.flush_expunges(qresync=qresync)
        new: list[int] = []
        for info in changes.changed:
            if info.uid > last_known:
                new.append(info.uid)
                continue
            seq = self.seq_of(info.uid)
            if not seq or info.uid in self.pending_expunge or info.modseq in self.own_modseqs:
                continue
            out.append(self.flags_line(seq, info, qresync=qresync, condstore=condstore))
        if new:
            self.uids.extend(u for u in new if u not in self.pending_expunge)
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            if not rev2:
                recent = len(self.uids) - bisect.bisect_right(self.uids, self.recent_above)
                out.append(b"* %d RECENT\r\n" % recent)
        self.highestmodseq = max(self.highestmodseq, changes.highestmodseq)
        self.uidnext = max(self.uidnext, changes.uidnext)
        self.own_modseqs = {m for m in self.own_modseqs if m > self.highestmodseq}
        return out

    def flush_expunges(self, *, qresync: bool) -> list[bytes]:
        if not self.pending_expunge:
            return []
        gone = sorted(self.pending_expunge)
        self.pending_expunge.clear()
        out: list[bytes] = []
        if qresync:
            out.append(b"* VANISHED %s\r\n" % compress(gone).encode())
            keep = set(gone)
            self.uids = array("I", (u for u in self.uids if u not in keep))
            return out
        # Highest first, so each number is still valid when the client reads it.
        for uid in reversed(gone):
            seq = self.seq_of(uid)
            if seq:
                del self.uids[seq - 1]
                out.append(b"* %d EXPUNGE\r\n" % seq)
        return out

    def remove_expunged(self, uids: Sequence[int], *, qresync: bool) -> list[bytes]:
        """This session's own EXPUNGE / MOVE removed `uids`: tell it at once."""
        self.pending_expunge.update(u for u in uids if self.seq_of(u))
        return self.flush_expunges(qresync=qresync)

    def flags_line(self, seq: int, info: MessageInfo, *, qresync: bool, condstore: bool) -> bytes:
        flags = sorted(info.flags)
        if info.uid > self.recent_above:
            flags.append("\\Recent")
        items = [b"FLAGS (%s)" % " ".join(flags).encode()]
        if qresync:
            items.insert(0, b"UID %d" % info.uid)
        if condstore or qresync:
            items.append(b"MODSEQ (%d)" % info.modseq)
        return b"* %d FETCH (%s)\r\n" % (seq, b" ".join(items))
