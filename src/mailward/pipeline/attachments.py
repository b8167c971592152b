"""The attachment policy: executables, scripts, active content and archives (NIST SP
800-45 v2 5.x, "content filtering": block the file types that carry malicious code,
look inside compressed files, and do not trust what a message says about itself).

Every leaf body part is a file (`text_extract.leaves`: through multiparts, attached
messages, and attached messages a sender encoded), whatever its Content-Type says. A
file is judged by labels, and refused when one of them is in the block list
(`block_extensions`, default `sniff.BLOCKED_BY_DEFAULT`, minus `allow_extensions`):

- each file name it goes by gives its extension as Windows reads it: every
  `name`/`filename` parameter (RFC 2231 and RFC 2047 decoded), trailing dots and
  spaces dropped, also the name cut at a NUL or an NTFS stream colon, and the names
  of uuencoded files in text parts ("invoice.pdf.exe" is an "exe");
- its content gives a `sniff` label ("photo.jpg" that is a PE is an "exe"); an OLE2
  document holding a VBA project is a "macro"; a "#!" script counts when the part is
  a file (named or Content-Disposition: attachment), not as the text of the message;
- active content in documents (`sniff.active_labels`, NIST SP 800-45 v2): a PDF with
  a /Launch action is "pdf-launch" (blocked by default), one with JavaScript
  (/JavaScript, /JS) "pdf-javascript" (not blocked by default, since many PDF forms
  use it: add "pdf-javascript" to `block_extensions` to refuse those), an RTF document
  with an embedded or linked OLE object "rtf-object" (blocked by default); PDF names
  are found also "#hh"-escaped, and, with `inspect_archives`, in compressed object
  streams (`archives.pdf_inside`). A text part that is no file is not judged so (it
  is shown, not opened);
- with `inspect_archives`, archives (`archives.walk`: ZIP, tar, gzip, bzip2, xz, and
  TNEF: winmail.dat, each attachment a member) are opened and every member judged the
  same way, recursively; a ZIP that is a JAR, APK or MSIX package is labelled so, and
  members of Office documents that are macros (vbaProject.bin, Excel 4.0 macro sheets,
  ActiveX, OpenDocument Basic) label the document "macro". Files embedded in a PDF
  are judged like members too (by their /UF and /F names and their content; one that
  cannot be decoded is uninspectable). (Without `inspect_archives` only extensions,
  the first bytes and what needs no decompression are judged, so OOXML macros are
  found by extension only.)

Decisions (first the most severe; reject > quarantine > accept):

- a blocked type: `action` "reject" (554 5.7.1 "Message refused: attachment type not
  allowed (<file name>)": the sender's own file name, reduced to printable ASCII and
  shortened, naming the archive path down to the member) or "quarantine";
- a file that cannot be inspected (an encrypted archive or member, a compression
  method or archive format we do not open: RAR, 7z, CAB, ...; a corrupt archive):
  `uninspectable` "quarantine" (default), "reject" (554 5.7.1) or "accept";
- bounds (552 5.3.4, always a refusal, the reply naming the rule): archive nesting
  depth, members and decompressed octets in all the message's archives (PDF object
  streams and embedded files count too), compression ratio (`archives.ArchiveLimits`),
  and MIME structures past the parser's caps
  (`mime.MAX_DEPTH` levels, `mime.MAX_PARTS` parts), which would otherwise hide
  parts from this check.

The work is CPU-bound (decompression) and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from mailward.logs import EventLog
from mailward.message.archives import (
    ArchiveLimitExceeded,
    ArchiveLimits,
    Budget,
    Entry,
    archive_format,
    pdf_inside,
    walk,
)
from mailward.message.sniff import (
    BLOCKED_BY_DEFAULT,
    active_labels,
    is_pdf,
    member_labels,
    ole_has_macros,
    sniff,
)
from mailward.message.text_extract import Leaf, MimeLimitExceeded, extension, leaves
from mailward.pipeline.content import MessageView
from mailward.pipeline.types import ACCEPT, CheckResult, Decision, SessionInfo, reject
from mailward.proto.replies import Reply

__all__ = [
    "LIMIT_REPLIES",
    "AttachmentPolicy",
    "Finding",
    "blocked_reply",
    "display_name",
    "uninspectable_reply",
]

LIMIT_REPLIES = {
    "depth": Reply(552, "5.3.4", "Message refused: archive nesting too deep"),
    "members": Reply(552, "5.3.4", "Message refused: too many files in archive"),
    "size": Reply(552, "5.3.4", "Message refused: archive expands too large"),
    "ratio": Reply(552, "5.3.4", "Message refused: archive compression ratio too high"),
    "mime-depth": Reply(552, "5.3.4", "Message refused: MIME nesting too deep"),
    "mime-parts": Reply(552, "5.3.4", "Message refused: too many MIME parts"),
}
_DISPLAY_MAX = 64
_UUENCODE_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]+?)\r?$", re.MULTILINE)
_UUENCODE_SCAN = 1024 * 1024
_SEVERITY = {Decision.ACCEPT: 0, Decision.QUARANTINE: 1, Decision.REJECT: 2}

Action = Literal["reject", "quarantine"]
UninspectableAction = Literal["accept", "quarantine", "reject"]


def display_name(path: Iterable[str]) -> str:
    """A file's path (archive names down to the member) for a reply: printable ASCII
    only, at most `_DISPLAY_MAX` characters (the start is cut, the end kept)."""
    text = " > ".join(path) or "unnamed"
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= _DISPLAY_MAX else "..." + text[-(_DISPLAY_MAX - 3) :]


def blocked_reply(path: Iterable[str]) -> Reply:
    return Reply(
        554, "5.7.1", f"Message refused: attachment type not allowed ({display_name(path)})"
    )


def uninspectable_reply(path: Iterable[str]) -> Reply:
    name = display_name(path)
    return Reply(554, "5.7.1", f"Message refused: attachment cannot be inspected ({name})")


@dataclass(frozen=True, slots=True)
class Finding:
    """Why a file is refused or held: `kind` "blocked" (then `label` is the type, and
    `by` "name" or "content") or "uninspectable" (`label` says why)."""

    kind: Literal["blocked", "uninspectable"]
    label: str
    path: tuple[str, ...]
    by: str = "content"

    def describe(self) -> str:
        name = display_name(self.path)
        if self.kind == "blocked":
            return f"attachment type {self.label} by {self.by} ({name})"
        return f"attachment cannot be inspected: {self.label} ({name})"


class AttachmentPolicy:
    """The `ContentCheck` "attachments": every message, on every listener."""

    name = "attachments"

    def __init__(
        self,
        *,
        log: EventLog,
        action: Action = "reject",
        block_extensions: Iterable[str] = BLOCKED_BY_DEFAULT,
        allow_extensions: Iterable[str] = (),
        inspect_archives: bool = True,
        uninspectable: UninspectableAction = "quarantine",
        limits: ArchiveLimits | None = None,
    ) -> None:
        if action not in ("reject", "quarantine"):
            raise ValueError(f"attachments action must be reject or quarantine, not {action!r}")
        if uninspectable not in ("accept", "quarantine", "reject"):
            raise ValueError("attachments uninspectable must be accept, quarantine or reject")
        self.limits = limits or ArchiveLimits()
        if min(self.limits.max_depth, self.limits.max_members, self.limits.max_ratio) < 1:
            raise ValueError("archive depth, member and ratio limits must be at least 1")
        self._log = log
        self._action = action
        self._uninspectable = uninspectable
        self._inspect_archives = inspect_archives
        allowed = {_normalise(ext) for ext in allow_extensions}
        self.blocked = frozenset(_normalise(ext) for ext in block_extensions) - allowed

    def applies(self, session: SessionInfo) -> bool:
        return True  # SP 800-45: inbound and outbound alike

    async def check(self, message: MessageView) -> CheckResult:
        if _plain_text_only(message.header_section):
            # A single text part with no file name carries no attachment: it is shown
            # as text whatever it holds, so its body need not be read (and a large
            # one is never held in memory).
            return ACCEPT
        data = await message.read()
        result = await asyncio.to_thread(self.evaluate, data)
        if result.decision != Decision.ACCEPT:
            self._log.warning(
                "attachments.refused" if result.refused else "attachments.quarantined",
                session=message.session.session_id,
                ip=message.session.peer_ip,
                listener=message.session.listener,
                sender=message.envelope.sender,
                reason=result.reason,
            )
        return result

    # ------------------------------------------------------------------ the policy

    def evaluate(self, data: bytes) -> CheckResult:
        """The decision on the whole message `data` (synchronous, no I/O)."""
        worst: tuple[Decision, Finding] | None = None
        try:
            for finding in self.findings(data):
                decision = self._decision(finding)
                if worst is None or _SEVERITY[decision] > _SEVERITY[worst[0]]:
                    worst = (decision, finding)
                if decision == Decision.REJECT:
                    break
        except (ArchiveLimitExceeded, MimeLimitExceeded) as exc:
            return reject(LIMIT_REPLIES[exc.rule], f"{exc.rule} limit: {exc.detail}")
        if worst is None or worst[0] == Decision.ACCEPT:
            return ACCEPT
        decision, finding = worst
        if decision == Decision.QUARANTINE:
            return CheckResult(Decision.QUARANTINE, reason=finding.describe())
        if finding.kind == "blocked":
            return reject(blocked_reply(finding.path), finding.describe())
        return reject(uninspectable_reply(finding.path), finding.describe())

    def _decision(self, finding: Finding) -> Decision:
        if finding.kind == "blocked":
            return Decision.REJECT if self._action == "reject" else Decision.QUARANTINE
        return {
            "accept": Decision.ACCEPT,
            "quarantine": Decision.QUARANTINE,
            "reject": Decision.REJECT,
        }[self._uninspectable]

    def findings(self, data: bytes) -> Iterator[Finding]:
        """Every reason to refuse or hold the message, lazily (raises the limits)."""
        budget = Budget(self.limits)
        for leaf in leaves(data, strict=True):
            yield from self._leaf(leaf, budget)

    def _leaf(self, leaf: Leaf, budget: Budget) -> Iterator[Finding]:
        path = (leaf.names[0],) if leaf.names else ("unnamed",)
        names = list(leaf.names)
        if leaf.content_type.startswith("text/"):
            head = leaf.content[:_UUENCODE_SCAN]
            for match in _UUENCODE_BEGIN.finditer(head):
                name = match[1].decode("utf-8", "replace")
                yield from self._names((name,), (*path, name))
        yield from self._names(names, path)
        text = leaf.content_type.startswith("text/") and not leaf.attachment
        yield from self._content(leaf.content, path, budget, 1, is_file=leaf.attachment, text=text)
        if self._inspect_archives and archive_format(leaf.content) is not None:
            for entry in walk(leaf.content, path, budget):
                yield from self._entry(entry, budget)

    def _entry(self, entry: Entry, budget: Budget) -> Iterator[Finding]:
        container = entry.path[:-1]
        if entry.container in self.blocked:  # a JAR, APK or MSIX package
            yield Finding("blocked", entry.container or "", container)
        yield from self._names((entry.name, *entry.other_names), entry.path)
        if entry.problem:
            yield Finding("uninspectable", entry.problem, entry.path)
            return
        for label in member_labels(entry.container, entry.name, entry.data):
            if label in self.blocked:
                yield Finding("blocked", label, container)
        if entry.data is not None:
            depth = entry.depth + 1  # of what is inside it
            for finding in self._content(entry.data, entry.path, budget, depth, is_file=True):
                if finding.label == "macro" and entry.container in ("ooxml", "odf"):
                    finding = Finding("blocked", "macro", container)  # the document's
                yield finding

    def _names(self, names: Iterable[str], path: tuple[str, ...]) -> Iterator[Finding]:
        for name in names:
            for ext in _extensions(name):
                if ext in self.blocked:
                    yield Finding("blocked", ext, path, "name")

    def _content(
        self,
        content: bytes,
        path: tuple[str, ...],
        budget: Budget,
        depth: int,
        *,
        is_file: bool,
        text: bool = False,
    ) -> Iterator[Finding]:
        """Findings on a file's content; `depth` is that of the files inside it (a
        PDF's embedded files); `text`: a text part shown as the message's text."""
        label = sniff(content)
        if label == "ole" and ole_has_macros(content):
            label = "macro"
        if label == "script" and not is_file:
            return  # the text of the message, which starts with "#!": shown, not run
        if label is not None and label in self.blocked:
            yield Finding("blocked", label, path)
        if text:
            return  # a text part is shown as text, not opened as a PDF or RTF
        for active in sorted(active_labels(content)):
            if active in self.blocked:
                yield Finding("blocked", active, path)
        if self._inspect_archives and is_pdf(content):
            yield from self._pdf(content, path, budget, depth)

    def _pdf(
        self, content: bytes, path: tuple[str, ...], budget: Budget, depth: int
    ) -> Iterator[Finding]:
        """A PDF's object streams and embedded files (`archives.pdf_inside`), the
        files judged like archive members, archives among them opened."""
        inside = pdf_inside(content, path, budget, depth=depth)
        for active in sorted(inside.labels):
            if active in self.blocked:
                yield Finding("blocked", active, path)
        for entry in inside.files:
            yield from self._entry(entry, budget)
            if entry.data is not None and archive_format(entry.data) is not None:
                for inner in walk(entry.data, entry.path, budget, depth=entry.depth + 1):
                    yield from self._entry(inner, budget)


def _normalise(ext: str) -> str:
    return ext.strip().lstrip(".").lower()


def _extensions(name: str) -> set[str]:
    """Extensions `name` may have to a reader: as written, cut at a NUL (C string
    readers), cut at a colon (an NTFS alternate data stream: "a.exe:x", "a.exe::$DATA")."""
    variants = {name, name.split("\x00", 1)[0]}
    base = re.split(r"[/\\]", name.split("\x00", 1)[0])[-1]
    if ":" in base:
        variants.add(base.split(":", 1)[0])
    return {ext for ext in map(extension, variants) if ext}


_CONTENT_TYPE = re.compile(rb"(?im)^content-type[ \t]*:[ \t]*([^;\r\n]*)((?:[^\r\n]|\r?\n[ \t])*)")
_DISPOSITION = re.compile(rb"(?im)^content-disposition[ \t]*:")


def _plain_text_only(header_section: bytes) -> bool:
    """The message is one text/* part (or has no Content-Type: RFC 2045 5.2 text/plain)
    with no Content-Disposition and no name parameter: nothing in it is a file."""
    if _DISPOSITION.search(header_section):
        return False
    found = _CONTENT_TYPE.findall(header_section)
    if not found:
        return True
    if len(found) > 1:
        return False  # ambiguous: inspect the whole message
    media, params = found[0]
    return media.strip().lower().startswith(b"text/") and b"name" not in params.lower()
