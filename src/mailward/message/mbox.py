"""mbox and Maildir, for moving mail in and out of the store (export / import).

Formats:

- mbox, RFC 4155 (application/mbox): messages one after another, each introduced by a
  "From_" separator line ``From <sender> <asctime timestamp, UTC>``. We write the
  *mboxrd* variant and read mbox/mboxrd with mboxrd unquoting: every body line that
  matches ``^>*From `` gets one more ``>`` when written and loses one when read, which
  makes quoting exactly reversible (unlike mboxo, which quotes only ``^From ``).
- Maildir (the qmail/Dovecot convention): one file per message under ``cur/`` and
  ``new/``; flags are the letters after ``:2,`` in the file name
  (S R F T D -> \\Seen \\Answered \\Flagged \\Deleted \\Draft), the internal date is
  the file's mtime.

Byte-exactness (the export -> import -> export contract): the writer emits each
message's stored bytes unchanged except for mboxrd quoting; the separator line ends
with the message's own line ending (CRLF when its first line ends in CRLF, or when it
has no line ending at all; LF otherwise), and exactly one line ending of that kind
follows the message (the conventional empty line before the next From_ line when the
message ends in a line ending). The reader removes exactly one trailing line ending
of the separator's kind, so every message round-trips byte for byte, including one
that does not end in a line ending, binary 8-bit bytes and ``From `` lines.

Memory is bounded: input is read in chunks of at most `_CHUNK` bytes and a message
larger than `max_size` is reported as a problem and skipped, never held whole.

Standard library only (DESIGN.md 1: `message` does no I/O beyond the streams and
paths it is handed).
"""

from __future__ import annotations

import calendar
import email.utils
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_SIZE = 50 * 1024 * 1024
_CHUNK = 64 * 1024
_PREAMBLE = "data before the first From_ line"

CRLF = b"\r\n"
LF = b"\n"
_FROM = b"From "
_QUOTED_FROM = re.compile(rb">*From ")
_SENDER_OK = re.compile(r"[!-~]{1,998}")
_RETURN_PATH = re.compile(rb"(?im)^Return-Path:[ \t]*<([^<>\s]*)>")
_HEADER_FIELD = re.compile(rb"[!-9;-~]+[ \t]*:")
# RFC 4155 timestamps are asctime(3) in UTC: "Thu Jan  1 00:00:00 1970". Seen in the wild:
# a numeric or named zone before the year, and missing seconds.
_ASCTIME = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s+"
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+"
    rb"(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s+"
    rb"(?:([+-]\d{4}|[A-Z]{1,5})\s+)?(\d{4})"
)
_MONTHS = {
    m: i for i, m in enumerate(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)
}

# Maildir info letters (https://cr.yp.to/proto/maildir.html) -> IMAP system flags.
MAILDIR_FLAGS = {
    "S": "\\Seen",
    "R": "\\Answered",
    "F": "\\Flagged",
    "T": "\\Deleted",
    "D": "\\Draft",
}


@dataclass(frozen=True, slots=True)
class MailEntry:
    """One message read from an mbox or a Maildir.

    `problem` is empty for a good entry; otherwise it says why the entry is unusable
    (and `data` is empty): callers report and skip it.
    """

    label: str  # where it came from, for reports: "message 3 (line 120)" or a file name
    data: bytes
    internal_date: float | None = None  # Unix time
    flags: frozenset[str] = frozenset()
    sender: str = ""
    problem: str = ""


# --------------------------------------------------------------------------- writing


def line_ending(message: bytes) -> bytes:
    """The message's own line ending: that of its first line; CRLF if it has none."""
    nl = message.find(LF)
    if nl == -1:
        return CRLF
    return CRLF if nl > 0 and message[nl - 1 : nl] == b"\r" else LF


def quote_mboxrd(message: bytes) -> bytes:
    """Add one ">" to every line matching ``^>*From `` (the mboxrd convention)."""
    if b"From " not in message:
        return message
    lines = message.split(LF)
    return LF.join(b">" + line if _QUOTED_FROM.match(line) else line for line in lines)


def unquote_mboxrd_line(line: bytes) -> bytes:
    """Remove one ">" from a line matching ``^>+From ``."""
    if line[:1] == b">" and _QUOTED_FROM.match(line, 1):
        return line[1:]
    return line


def envelope_sender(message: bytes) -> str:
    """The reverse-path recorded in the message's Return-Path: header, or "" if none.

    Stored messages do not carry their envelope sender separately; a delivered message
    has a Return-Path: header (RFC 5321 4.4) which is the right From_ line sender.
    """
    end = message.find(b"\r\n\r\n")
    if end == -1:
        end = message.find(b"\n\n")
    header = message[: end if end != -1 else min(len(message), 65536)]
    found = _RETURN_PATH.search(header)
    if found is None:
        return ""
    try:
        return found.group(1).decode("ascii")
    except UnicodeDecodeError:
        return ""


def from_line(sender: str, date: float) -> bytes:
    """An RFC 4155 separator line, without its line ending.

    An empty or unusable sender (null reverse-path, spaces, 8-bit) becomes
    MAILER-DAEMON, the traditional placeholder.
    """
    if not _SENDER_OK.fullmatch(sender):
        sender = "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(int(date)))
    return b"From " + sender.encode("ascii") + b" " + stamp.encode("ascii")


def mboxrd_entry(message: bytes, *, sender: str, date: float) -> bytes:
    """One message as an mboxrd entry: separator, quoted bytes, one more line ending."""
    eol = line_ending(message)
    return from_line(sender, date) + eol + quote_mboxrd(message) + eol


# --------------------------------------------------------------------------- reading


def canonical_line_endings(data: bytes) -> bytes:
    """LF-only input (no CRLF anywhere) converted to CRLF, the store's canonical form.

    A message that already has a CRLF is left exactly as it is, so a stored message
    (which may contain stray bare LFs inside binary parts) survives a round trip.
    """
    if CRLF in data or LF not in data:
        return data
    return data.replace(LF, CRLF)


def parse_from_line(line: bytes) -> tuple[str, float | None]:
    """(sender, Unix time or None) from a From_ line (with or without line ending)."""
    rest = line[len(_FROM) :].rstrip(b"\r\n")
    sender_b, _, date_part = rest.lstrip(b" ").partition(b" ")
    sender = sender_b.decode("ascii", "replace")
    found = _ASCTIME.search(date_part)
    if found is None:
        return sender, None
    month, day, hour, minute, second, zone, year = found.groups()
    try:
        stamp = calendar.timegm(
            (int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second or 0))
        )
    except (ValueError, OverflowError):
        return sender, None
    if zone is not None and zone[:1] in (b"+", b"-"):
        offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
        stamp -= offset if zone[:1] == b"+" else -offset
    return sender, float(stamp)


def _date_header(data: bytes) -> float | None:
    """The Date: header as Unix time, when a From_ line carries no usable date."""
    found = re.search(rb"(?im)^Date:[ \t]*([^\r\n]*)", data[:65536])
    if found is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(found.group(1).decode("ascii", "replace"))
        return parsed.timestamp()
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _message_problem(data: bytes) -> str:
    if not data.strip():
        return "empty message"
    if not _HEADER_FIELD.match(data):
        return "does not start with a header field (not an RFC 5322 message)"
    return ""


class MboxReader:
    """Iterate the messages of an mbox/mboxrd stream; `position` is bytes consumed."""

    def __init__(self, stream: BinaryIO, *, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._stream = stream
        self._max = max_size
        self.position = 0

    def __iter__(self) -> Iterator[MailEntry]:
        read = self._stream.readline
        at_line_start = True
        line_no = 0
        preamble = False  # non-blank bytes before the first From_ line
        started = False
        parts: list[bytes] = []
        size = 0
        too_big = False
        header: tuple[int, int, bytes, str, float | None, str] = (0, 0, CRLF, "", None, "")
        count = 0
        while chunk := read(_CHUNK):
            self.position += len(chunk)
            line_start = at_line_start
            at_line_start = chunk.endswith(LF)
            if line_start:
                line_no += 1
            if line_start and chunk.startswith(_FROM):
                if started:
                    yield self._finish(header, parts, too_big)
                elif preamble:
                    yield MailEntry(
                        "start of file", b"", problem="data before the first From_ line"
                    )
                started = True
                count += 1
                problem = ""
                while not at_line_start:  # an absurdly long From_ line: drop the rest
                    more = read(_CHUNK)
                    if not more:
                        break
                    self.position += len(more)
                    at_line_start = more.endswith(LF)
                    problem = "From_ line too long"
                eol = CRLF if chunk.endswith(CRLF) else LF
                sender, date = parse_from_line(chunk)
                header = (count, line_no, eol, sender, date, problem)
                parts, size, too_big = [], 0, False
                continue
            if not started:
                preamble = preamble or bool(chunk.strip())
                continue
            if too_big:
                continue
            if line_start:
                chunk = unquote_mboxrd_line(chunk)
            size += len(chunk)
            if size > self._max + len(CRLF):
                too_big, parts = True, []
            else:
                parts.append(chunk)
        if started:
            yield self._finish(header, parts, too_big)
        elif preamble:
            yield MailEntry("start of file", b"", problem="not an mbox: no From_ line")

    def _finish(
        self,
        header: tuple[int, int, bytes, str, float | None, str],
        parts: list[bytes],
        too_big: bool,
    ) -> MailEntry:
        count, line_no, eol, sender, date, problem = header
        label = f"message {count} (line {line_no})"
        if too_big:
            return MailEntry(label, b"", problem=f"larger than {self._max} bytes")
        if problem:
            return MailEntry(label, b"", problem=problem)
        data = b"".join(parts)
        # The separator's own line ending after the message (mboxrd, see module doc).
        if data.endswith(eol):
            data = data[: -len(eol)]
        elif data.endswith(LF):
            data = data[:-1]
        if len(data) > self._max:
            return MailEntry(label, b"", problem=f"larger than {self._max} bytes")
        problem = _message_problem(data)
        if problem:
            return MailEntry(label, b"", problem=problem)
        if date is None:
            date = _date_header(data)
        return MailEntry(label, data, internal_date=date, sender=sender)


def read_mbox(stream: BinaryIO, *, max_size: int = DEFAULT_MAX_SIZE) -> Iterator[MailEntry]:
    """The messages of an mbox/mboxrd stream, in order (see `MboxReader`)."""
    return iter(MboxReader(stream, max_size=max_size))


def is_maildir(path: Path) -> bool:
    return path.is_dir() and ((path / "cur").is_dir() or (path / "new").is_dir())


def maildir_flags(name: str) -> frozenset[str]:
    """IMAP flags from a Maildir file name's info part ``:2,<letters>``.

    ``!`` is accepted in place of ``:`` (used where ``:`` cannot be in file names).
    Lower-case letters (Dovecot keywords) and unknown letters (P, passed) are ignored.
    """
    for sep in (":2,", "!2,"):
        _, found, info = name.rpartition(sep)
        if found:
            return frozenset(MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS)
    return frozenset()


def maildir_files(path: Path) -> list[Path]:
    """Message files of a Maildir (cur/ then new/), oldest first; dot files skipped."""
    found: list[tuple[float, str, Path]] = []
    for sub in ("cur", "new"):
        folder = path / sub
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                found.append((entry.stat().st_mtime, entry.name, Path(entry.path)))
    found.sort(key=lambda item: (item[0], item[1]))
    return [item[2] for item in found]


def read_maildir_file(path: Path, *, max_size: int = DEFAULT_MAX_SIZE) -> MailEntry:
    """One Maildir message with its flags and its mtime as the internal date."""
    label = f"{path.parent.name}/{path.name}"
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_size > max_size:
                return MailEntry(label, b"", problem=f"larger than {max_size} bytes")
            data = handle.read(max_size + 1)
    except OSError as exc:
        return MailEntry(label, b"", problem=f"cannot read: {exc.strerror or exc}")
    if len(data) > max_size:
        return MailEntry(label, b"", problem=f"larger than {max_size} bytes")
    problem = _message_problem(data)
    if problem:
        return MailEntry(label, b"", problem=problem)
    return MailEntry(label, data, internal_date=info.st_mtime, flags=maildir_flags(path.name))


def read_maildir(path: Path, *, max_size: int = DEFAULT_MAX_SIZE) -> Iterator[MailEntry]:
    for file in maildir_files(path):
        yield read_maildir_file(file, max_size=max_size)
