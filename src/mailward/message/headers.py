"""Reading the header section of a raw RFC 5322 message, bounded, without parsing MIME.

Used by pipeline checks that need a few header fields (From:, Sender:) before the
message is stored. RFC 5322 2.2 (header fields), 2.2.3 (folding), 3.6.2 (originator
fields). Input is bytes as received; header values are decoded leniently (UTF-8 with
replacement, RFC 6532) since they are only inspected, never re-emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import getaddresses

MAX_HEADER_SECTION = 256 * 1024


class HeaderSectionTooLarge(ValueError):
    """The header section did not end within `MAX_HEADER_SECTION` octets."""


def header_section(prefix: bytes, *, complete: bool) -> bytes:
    """The header section (without the blank line) found at the start of `prefix`.

    `complete` says `prefix` is the whole message; otherwise a header section that has
    not ended within the prefix is too large.
    """
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = prefix.find(sep)
        if end != -1:
            return prefix[: end + len(sep) // 2]
    if prefix.startswith((b"\r\n", b"\n")):
        return b""
    if complete and len(prefix) <= MAX_HEADER_SECTION:
        return prefix
    raise HeaderSectionTooLarge("header section too large")


def header_values(section: bytes, name: str) -> list[str]:
    """Unfolded values of every field called `name` (case-insensitive), in order."""
    wanted = name.lower().encode("ascii") + b":"
    values: list[str] = []
    current: list[bytes] | None = None
    for line in section.splitlines():
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append(_unfold(current))
            current = None
        if line.lower().startswith(wanted):
            current = [line[len(wanted) :]]
    if current is not None:
        values.append(_unfold(current))
    return values


def _unfold(parts: list[bytes]) -> str:
    # RFC 5322 2.2.3: unfolding removes the CRLF before each continuation's WSP.
    return b"".join(parts).decode("utf-8", "replace").strip()


def mailbox_addresses(values: list[str]) -> list[str]:
    """The addr-specs in address-list header values (display names dropped)."""
    return [addr for _name, addr in getaddresses(values) if addr]


def remove_fields(section: bytes, names: Sequence[str]) -> tuple[bytes, int]:
    """`section` without any field called one of `names` (case-insensitive; folded
    continuation lines go with their field); returns (new section, fields removed)."""
    wanted = tuple(n.lower().encode("ascii") + b":" for n in names)
    lowered = section.lower()
    if not any(w in lowered for w in wanted):
        return section, 0
    out: list[bytes] = []
    removed = 0
    dropping = False
    for line in section.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = line.lower().startswith(wanted)
        if dropping:
            removed += 1
        else:
            out.append(line)
    return b"".join(out), removed
