"""SMTP path and parameter parsing: RFC 5321 4.1.2 / 4.1.3, with RFC 6531 (SMTPUTF8).

Faithful grammar, no policy: `user%other@local`, `a!b@c`, source routes, quoted local
parts and general address literals all parse when the ABNF allows them; deciding what
is local, a relay attempt or unwanted is the pipeline's job.

Grammar (RFC 5321 4.1.2, 4.1.3):

    Path        = "<" [ A-d-l ":" ] Mailbox ">"
    A-d-l       = At-domain *( "," At-domain )      ; source route, obsolete (C.)
    At-domain   = "@" Domain
    Mailbox     = Local-part "@" ( Domain / address-literal )
    Local-part  = Dot-string / Quoted-string
    Dot-string  = Atom *("." Atom)
    Quoted-string = DQUOTE *QcontentSMTP DQUOTE
    Domain      = sub-domain *("." sub-domain)
    sub-domain  = Let-dig [Ldh-str]
    address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
                            General-address-literal ) "]"
    esmtp-param = esmtp-keyword ["=" esmtp-value]

RFC 6531 3.3 adds UTF8-non-ascii to atext, qtextSMTP, sub-domain (U-label) and
esmtp-value; callers allow it only when the transaction was opened with SMTPUTF8.

Leniency (Postfix-like, documented, nothing more): `split_path` accepts a path written
without its "<" ">" pair; the SMTP core separately tolerates one space after "FROM:"/"TO:".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MAX_DOMAIN",
    "MAX_LOCAL_PART",
    "MAX_PATH",
    "AddressError",
    "ParsedPath",
    "parse_address_literal",
    "parse_domain",
    "parse_mail_params",
    "parse_path",
    "split_path",
]

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2
MAX_PATH = 256  # RFC 5321 4.5.3.1.3 (including "<", ">", route and separators)
MAX_LABEL = 63  # RFC 1035 2.3.4


class AddressError(ValueError):
    """The text does not match the RFC 5321 (or RFC 6531) grammar, or exceeds a limit."""


@dataclass(frozen=True, slots=True)
class ParsedPath:
    """A parsed Path. `local_part` is decoded (quotes and quoted-pairs removed),
    `domain` is as written (an address literal keeps its brackets; "" only for the
    RCPT special case `<postmaster>`), `mailbox` is the Mailbox as written without
    any source route, `source_route` lists the A-d-l domains (without "@")."""

    local_part: str
    domain: str
    quoted_local: bool
    source_route: tuple[str, ...]
    mailbox: str


_NON_ASCII = "\u0080-\U0010ffff"  # RFC 6531 3.3 UTF8-non-ascii (str already valid UTF-8)
_ATEXT_ASCII = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"  # RFC 5322 3.2.3 atext


class _Grammar:
    """Compiled regular expressions for one of the two alphabets (ASCII / SMTPUTF8).

    Every repetition is over a class that excludes the following delimiter, so the
    expressions match in linear time (no catastrophic backtracking)."""

    def __init__(self, utf8: bool) -> None:
        u = _NON_ASCII if utf8 else ""
        atom = f"[{_ATEXT_ASCII}{u}]+"
        dot_string = rf"{atom}(?:\.{atom})*"
        # RFC 5321 4.1.2 qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = "\" %d32-126
        quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{u}]|\\[\x20-\x7e])*"'
        # sub-domain = Let-dig [Ldh-str]; "no trailing hyphen" is checked after matching
        label = f"[A-Za-z0-9{u}][A-Za-z0-9{u}-]*"
        domain = rf"{label}(?:\.{label})*"
        # dcontent = %d33-90 / %d94-126; the literal's inner grammar is checked separately
        literal = r"\[[\x21-\x5a\x5e-\x7e]*\]"
        self.domain = re.compile(domain)
        self.mailbox = re.compile(
            rf"(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal})"
        )
        self.adl = re.compile(rf"@{domain}(?:,@{domain})*")
        # esmtp-value = 1*(%d33-60 / %d62-126) (RFC 6531 3.3 adds UTF8-non-ascii)
        self.param = re.compile(
            rf"(?P<key>[A-Za-z0-9][A-Za-z0-9-]*)(?:=(?P<value>[\x21-\x3c\x3e-\x7e{u}]+))?"
        )


_ASCII = _Grammar(utf8=False)
_UTF8 = _Grammar(utf8=True)

_IPV4 = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_HEX4 = re.compile(r"[0-9A-Fa-f]{1,4}")
# General-address-literal = Standardized-tag ":" 1*dcontent; Standardized-tag = Ldh-str
_GENERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _valid_ipv4(text: str) -> bool:
    # RFC 5321 4.1.3: Snum = 1*3DIGIT representing 0 through 255
    m = _IPV4.fullmatch(text)
    return m is not None and all(int(g) <= 255 for g in m.groups())


def _valid_ipv6(text: str) -> bool:
    """RFC 5321 4.1.3 IPv6-addr = IPv6-full / IPv6-comp / IPv6v4-full / IPv6v4-comp."""
    v4 = False
    head = text
    if "." in text:
        # IPv6v4-full / IPv6v4-comp: the last piece is an IPv4-address-literal
        i = text.rfind(":")
        if i < 0 or not _valid_ipv4(text[i + 1 :]):
            return False
        v4 = True
        head = text[: i + 1]
        if not head.endswith("::"):
            head = head[:-1]  # drop the ":" separating the IPv4 part
    if head.count("::") > 1 or ":::" in head:
        return False

    def groups(part: str) -> int | None:
        if part == "":
            return 0
        pieces = part.split(":")
        if not all(_HEX4.fullmatch(p) for p in pieces):
            return None
        return len(pieces)

    if "::" in head:
        left, _, right = head.partition("::")
        nl, nr = groups(left), groups(right)
        if nl is None or nr is None:
            return False
        # "::" stands for at least 2 groups: at most 6 others (4 with an IPv4 tail)
        return nl + nr <= (4 if v4 else 6)
    n = groups(head)
    return n == (6 if v4 else 8)


def parse_address_literal(text: str) -> str:
    """Validate an address literal written with its brackets; return it unchanged."""
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        raise AddressError("address literal must be bracketed")
    inner = text[1:-1]
    if _valid_ipv4(inner):
        return text
    if inner[:5].lower() == "ipv6:":
        # RFC 5321 4.1.3 IPv6-address-literal = "IPv6:" IPv6-addr (a malformed one is not
        # re-read as a General-address-literal with tag "IPv6")
        if _valid_ipv6(inner[5:]):
            return text
        raise AddressError("invalid IPv6 address literal")
    if _GENERAL.fullmatch(inner):
        return text
    raise AddressError("invalid address literal")


def _check_labels(domain: str) -> None:
    for label in domain.split("."):
        # RFC 5321 4.1.2 sub-domain = Let-dig [Ldh-str]: no trailing hyphen
        if label.endswith("-"):
            raise AddressError("domain label ends with a hyphen")
        if _octets(label) > MAX_LABEL:
            raise AddressError("domain label too long")


def parse_domain(text: str, *, utf8: bool, literal: bool = True) -> str:
    """Validate a Domain (or, when `literal`, an address-literal); return it unchanged.

    Trailing dots and empty labels are not in the grammar and are refused."""
    if _octets(text) > MAX_DOMAIN:
        raise AddressError("domain too long")
    if text.startswith("["):
        if not literal:
            raise AddressError("address literal not allowed here")
        return parse_address_literal(text)
    grammar = _UTF8 if utf8 else _ASCII
    if not grammar.domain.fullmatch(text):
        raise AddressError("invalid domain")
    _check_labels(text)
    return text


def split_path(arg: str) -> tuple[str, str]:
    """Split the argument of MAIL FROM:/RCPT TO: into (path, parameters).

    `arg` starts where the path starts. A bracketed path ends at the first ">" outside
    a quoted-string or address literal; an unbracketed one (tolerated) at the first
    space outside a quoted-string. The parameters must be empty or follow exactly one
    space (RFC 5321 4.1.1.2: Reverse-path [SP Mail-parameters])."""
    if not arg:
        raise AddressError("empty path")
    bracketed = arg[0] == "<"
    in_quote = in_literal = False
    i = 1 if bracketed else 0
    end = -1
    while i < len(arg):
        c = arg[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif in_literal:
            if c == "]":
                in_literal = False
        elif c == '"':
            in_quote = True
        elif c == "[":
            in_literal = True
        elif bracketed and c == ">":
            end = i + 1
            break
        elif not bracketed and c == " ":
            end = i
            break
        i += 1
    if end < 0:
        if bracketed:
            raise AddressError("unterminated path")
        end = len(arg)
    if end == 0:
        raise AddressError("empty path")
    path, rest = arg[:end], arg[end:]
    if rest and (rest[0] != " " or len(rest) == 1):
        raise AddressError("garbage after path")
    return path, rest[1:]


def parse_path(text: str, *, utf8: bool, postmaster: bool = False) -> ParsedPath:
    """Parse a Path (`<[A-d-l:]Mailbox>`, or the same without brackets).

    `utf8` allows RFC 6531 UTF-8 (only when SMTPUTF8 was given on MAIL). With
    `postmaster`, `<postmaster>` (any case, no domain) is accepted as RFC 5321 4.1.1.3
    requires for RCPT, giving domain "". The null path "<>" is not a Path: MAIL
    handles it itself. Raises AddressError."""
    if text.startswith("<"):
        if len(text) < 2 or not text.endswith(">"):
            raise AddressError("unbalanced angle brackets")
        inner = text[1:-1]
    elif text.endswith(">"):
        raise AddressError("unbalanced angle brackets")
    else:
        inner = text  # tolerated: path written without "<" ">"
    if _octets(inner) + 2 > MAX_PATH:
        raise AddressError("path too long")
    if postmaster and inner.lower() == "postmaster":
        return ParsedPath(inner, "", False, (), inner)
    if not utf8 and not inner.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8")
    grammar = _UTF8 if utf8 else _ASCII
    route: tuple[str, ...] = ()
    mailbox_text = inner
    if inner.startswith("@"):
        adl, sep, mailbox_text = inner.partition(":")
        if not sep or not grammar.adl.fullmatch(adl):
            raise AddressError("invalid source route")
        route = tuple(d[1:] for d in adl.split(","))
        for d in route:
            _check_labels(d)
            if _octets(d) > MAX_DOMAIN:
                raise AddressError("domain too long")
    m = grammar.mailbox.fullmatch(mailbox_text)
    if m is None:
        raise AddressError("invalid mailbox")
    local, domain = m.group("local"), m.group("domain")
    if _octets(local) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    parse_domain(domain, utf8=utf8)
    quoted = local.startswith('"')
    if quoted:
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    return ParsedPath(local, domain, quoted, route, mailbox_text)


def parse_mail_params(text: str, *, utf8: bool) -> dict[str, str | None]:
    """Parse `esmtp-param *(SP esmtp-param)` (RFC 5321 4.1.2) into {KEYWORD: value}.

    Keywords are upper-cased (they are case-insensitive); a keyword without "=" maps
    to None. Empty text gives {}. Repeated keywords, empty values and anything off the
    grammar raise AddressError. `utf8` allows RFC 6531 UTF8-non-ascii in values."""
    params: dict[str, str | None] = {}
    if text == "":
        return params
    grammar = _UTF8 if utf8 else _ASCII
    for item in text.split(" "):
        m = grammar.param.fullmatch(item)
        if m is None:
            raise AddressError("malformed ESMTP parameter")
        key = m.group("key").upper()
        if key in params:
            raise AddressError("repeated ESMTP parameter")
        params[key] = m.group("value")
    return params
