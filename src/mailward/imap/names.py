"""Mailbox names as IMAP clients see them: LIST patterns, hierarchy, encodings.

RFC 9051 5.1 / 6.3.9 and RFC 5258 (LIST-EXTENDED): names are Unicode strings with "/"
as the hierarchy separator; "INBOX" is case-insensitive; `*` matches anything and `%`
anything but the separator. A rev1 client without UTF8=ACCEPT gets names in modified
UTF-7 (RFC 3501 5.1.3) and sends them that way; a rev2 (or UTF8=ACCEPT) client uses
UTF-8. Names are data only: the store keys them by (account, name) and they never
become paths (DESIGN.md 3).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mailward.proto.imap_wire import decode_mutf7, encode_mutf7

SEPARATOR = "/"
MAX_NAME = 255
MAX_DEPTH = 32


class BadName(ValueError):
    """A name a client may not create (the text is safe to show)."""


def normalise(name: str) -> str:
    """INBOX in any case is INBOX (RFC 9051 5.1), also as the top of a hierarchy."""
    head, sep, rest = name.partition(SEPARATOR)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def from_client(raw: str, *, utf8: bool) -> str:
    """A mailbox name as the client sent it, decoded and normalised."""
    if not utf8 and "&" in raw:
        try:
            raw = decode_mutf7(raw)
        except ValueError as exc:
            raise BadName("Mailbox name is not valid modified UTF-7") from exc
    return normalise(raw)


def to_client(name: str, *, utf8: bool) -> str:
    return name if utf8 else encode_mutf7(name)


def check_new_name(name: str) -> str:
    """Validate a name for CREATE/RENAME: returns it without a trailing separator."""
    if name.endswith(SEPARATOR):
        name = name.rstrip(SEPARATOR)  # RFC 9051 6.3.4: "foo/" creates "foo"
    if not name or len(name) > MAX_NAME:
        raise BadName("Mailbox name is empty or too long")
    parts = name.split(SEPARATOR)
    if len(parts) > MAX_DEPTH or any(not p for p in parts):
        raise BadName("Mailbox name has an empty or too deep hierarchy level")
    if any(ord(c) < 0x20 or c == "\x7f" or c in "*%" for c in name):
        raise BadName("Mailbox name contains a forbidden character")
    return normalise(name)


def parents(name: str) -> list[str]:
    """Every superior name: "a/b/c" -> ["a", "a/b"]."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """RFC 9051 6.3.9: the reference is prefixed to the pattern (a pattern starting
    with the separator stands alone); `*` matches anything, `%` anything but the
    separator. An INBOX prefix matches case-insensitively."""
    full = pattern if pattern.startswith(SEPARATOR) or not reference else reference + pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in "/*%"):
        full = "INBOX" + full[5:]
    out = []
    for ch in full:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(SEPARATOR)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


@dataclass(frozen=True, slots=True)
class ListEntry:
    name: str
    attributes: tuple[str, ...]
    child_subscribed: bool = False  # RFC 5258 CHILDINFO ("SUBSCRIBED")


@dataclass(frozen=True, slots=True)
class ListQuery:
    patterns: tuple[re.Pattern[str], ...]
    subscribed_only: bool = False  # SUBSCRIBED selection option (and LSUB)
    special_use_only: bool = False  # RFC 6154 SPECIAL-USE selection option
    recursive_match: bool = False
    return_subscribed: bool = False
    rev2: bool = True  # \NonExistent (rev2, LIST-EXTENDED) or \Noselect (rev1)


def list_entries(
    names: Iterable[str], special_use: dict[str, str], subscribed: set[str], query: ListQuery
) -> list[ListEntry]:
    """The LIST answer (RFC 9051 6.3.9, RFC 5258 3): the names that match, with
    \\HasChildren / \\HasNoChildren, \\Subscribed and the special-use role (RFC 6154).
    A parent that does not exist but has children is listed as \\NonExistent (rev1:
    \\Noselect), so hierarchical clients can show the tree."""
    existing = set(names)
    implied = {p for n in existing for p in parents(n)} - existing
    missing_attr = "\\NonExistent" if query.rev2 else "\\Noselect"
    if query.subscribed_only:
        universe = set(subscribed)
        if query.recursive_match:
            universe |= {p for s in subscribed for p in parents(s)}
    else:
        universe = existing | implied
    entries: list[ListEntry] = []
    for name in sorted(universe, key=lambda n: (n != "INBOX", n)):
        if not any(r.fullmatch(name) for r in query.patterns):
            continue
        child_subscribed = query.subscribed_only and name not in subscribed
        if query.special_use_only and not special_use.get(name):
            continue
        attrs: list[str] = []
        if name not in existing:
            attrs.append(missing_attr)
        if name in existing or name in implied:
            has_children = any(n.startswith(name + SEPARATOR) for n in existing)
            attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
        if name in subscribed and (query.return_subscribed or query.subscribed_only):
            attrs.append("\\Subscribed")
        if special_use.get(name):
            attrs.append(special_use[name])
        entries.append(ListEntry(name, tuple(attrs), child_subscribed))
    return entries
