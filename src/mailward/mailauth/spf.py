"""SPF: the Sender Policy Framework's check_host() (RFC 7208), async, on the Resolver.

`check_mailfrom()` checks the MAIL FROM identity (RFC 7208 2.4: the HELO name stands
in for a null reverse-path), `check_helo()` the HELO identity (RFC 7208 2.3); both
call `check_host()` (RFC 7208 4), which implements:

- record lookup and selection (4.4, 4.5): one "v=spf1" TXT record, else none /
  permerror; a DNS failure is temperror, never a pass;
- the whole record is parsed before anything is evaluated, so a syntax error
  anywhere is permerror (4.6);
- mechanisms all, include, a, mx, ptr, ip4, ip6, exists (5.1-5.7) with qualifiers
  and dual CIDR lengths; modifiers redirect (6.1) and exp (6.2); unknown modifiers
  are ignored (6);
- macros (7), including the explanation-only letters c, r, t and URL escaping of
  upper-case letters;
- processing limits (4.6.4): 10 DNS-querying terms (include, a, mx, ptr, exists,
  redirect) per evaluation, at most 10 MX names per mx and 10 PTR names per ptr,
  at most 2 void lookups (empty answers), and an overall time limit (20 s): permerror
  for the counts, temperror for the time.

IPv4-mapped IPv6 clients are evaluated as IPv4 (RFC 7208 5.6 "ip4" note).
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from mailward.resolver import DnsTemporaryError, Resolver

MAX_DNS_TERMS = 10  # RFC 7208 4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4
MAX_MX_NAMES = 10  # RFC 7208 4.6.4 (mx)
MAX_PTR_NAMES = 10  # RFC 7208 4.6.4 (ptr, %{p})
TIME_LIMIT = 20.0  # RFC 7208 4.6.4: "at least 20 seconds"
MAX_DOMAIN = 253

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SpfResult(enum.StrEnum):
    """RFC 7208 2.6."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"  # noqa: S105 - a result name, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """The result of one identity's check."""

    result: SpfResult
    identity: str  # "mailfrom" | "helo"
    domain: str  # the domain checked (MAIL FROM domain, or the HELO name)
    sender: str  # the <sender> of check_host(): "local@domain"
    reason: str  # what decided it, for logs and the A-R comment
    explanation: str = ""  # RFC 7208 6.2, on fail only


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


_QUALIFIERS = {
    "+": SpfResult.PASS,
    "-": SpfResult.FAIL,
    "~": SpfResult.SOFTFAIL,
    "?": SpfResult.NEUTRAL,
}
_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9\-_.]*)=(.*)$")
_MECHANISM = re.compile(r"^([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)$")
_CIDR_SUFFIX = re.compile(r"^(?P<spec>.*?)(?:/(?P<v4>[0-9]+))?(?://(?P<v6>[0-9]+))?$", re.S)
_MACRO_EXPAND = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
_TOPLABEL = re.compile(
    r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])\.?$"
)
_MACRO_LETTERS = frozenset("slodiphvcrt")
_EXPLANATION_ONLY = frozenset("crt")
_CIDR_NUMBER = re.compile(r"^(0|[1-9][0-9]{0,2})$")


# --------------------------------------------------------------------------- macros


@dataclass(frozen=True, slots=True)
class _Macro:
    letter: str  # lower case
    digits: int  # 0 = all parts
    reverse: bool
    delimiters: str
    escape: bool  # upper-case letter: URL-escape the value (RFC 7208 7.3)


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str
    expand: bool = False  # "%%", "%_", "%-": a macro-expand in the ABNF


_Token = _Macro | _Literal


def _parse_macro_string(text: str, *, explanation: bool = False) -> list[_Token]:
    """RFC 7208 7.1 macro-string; _PermError on a syntax error."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            nxt = text[i + 1 : i + 2]
            if nxt == "{":
                m = _MACRO_EXPAND.match(text, i)
                if not m:
                    raise _PermError(f"bad macro at {text[i:]!r}")
                letter = m.group(1)
                if letter.lower() not in _MACRO_LETTERS:
                    raise _PermError(f"unknown macro letter {letter!r}")
                if letter.lower() in _EXPLANATION_ONLY and not explanation:
                    raise _PermError(f"macro %{{{letter}}} outside an explanation")
                digits = int(m.group(2)) if m.group(2) else 0
                if m.group(2) and digits == 0:
                    raise _PermError("macro transformer of zero labels")
                tokens.append(
                    _Macro(
                        letter=letter.lower(),
                        digits=digits,
                        reverse=bool(m.group(3)),
                        delimiters=m.group(4) or ".",
                        escape=letter.isupper(),
                    )
                )
                i = m.end()
                continue
            literal = {"%": "%", "_": " ", "-": "%20"}.get(nxt)
            if literal is None:
                raise _PermError(f"bad '%' escape in {text!r}")
            tokens.append(_Literal(literal, expand=True))
            i += 2
            continue
        if not ("\x21" <= c <= "\x7e") and not (explanation and c == " "):
            raise _PermError(f"invalid character in {text!r}")
        tokens.append(_Literal(c))
        i += 1
    return tokens


def _parse_domain_spec(text: str) -> list[_Token]:
    """RFC 7208 7.1 domain-spec = macro-string domain-end."""
    tokens = _parse_macro_string(text)
    if not tokens:
        raise _PermError("empty domain-spec")
    last = tokens[-1]
    if isinstance(last, _Macro) or (isinstance(last, _Literal) and last.expand):
        return tokens
    tail = []
    for token in reversed(tokens):
        if not isinstance(token, _Literal) or token.expand:
            break
        tail.append(token.text)
    if not _TOPLABEL.search("".join(reversed(tail))):
        raise _PermError(f"domain-spec {text!r} does not end in a top-level label")
    return tokens


def _nibbles(ip: IpAddress) -> str:
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return ".".join(ip.exploded.replace(":", ""))


def _truncate(domain: str) -> str:
    # RFC 7208 7.3: drop labels from the left until it fits in 253 characters.
    while len(domain) > MAX_DOMAIN and "." in domain:
        domain = domain.split(".", 1)[1]
    return domain


# --------------------------------------------------------------------------- terms


@dataclass(frozen=True, slots=True)
class _Mechanism:
    qualifier: SpfResult
    name: str
    domain: list[_Token] | None = None
    network4: int = 32
    network6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class _Record:
    mechanisms: list[_Mechanism]
    redirect: list[_Token] | None
    explanation: list[_Token] | None


def _cidr(text: str | None, maximum: int) -> int:
    if text is None:
        return maximum
    if not _CIDR_NUMBER.match(text) or int(text) > maximum:
        raise _PermError(f"bad CIDR length /{text}")
    return int(text)


def _parse_mechanism(term: str) -> _Mechanism:
    m = _MECHANISM.match(term)
    if not m:
        raise _PermError(f"unknown term {term!r}")
    qualifier = _QUALIFIERS[m.group(1) or "+"]
    name = m.group(2).lower()
    rest = m.group(3)
    if name == "all":
        if rest:
            raise _PermError(f"bad term {term!r}")
        return _Mechanism(qualifier, name, text=term)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise _PermError(f"{name} needs a domain")
        return _Mechanism(qualifier, name, _parse_domain_spec(rest[1:]), text=term)
    if name in ("a", "mx"):
        spec_text = ""
        if rest.startswith(":"):
            spec_text = rest[1:]
            c = _CIDR_SUFFIX.match(spec_text)
            assert c is not None  # the pattern matches every string
            spec_text, v4, v6 = c.group("spec"), c.group("v4"), c.group("v6")
        elif rest.startswith("/") or not rest:
            c = _CIDR_SUFFIX.match(rest)
            assert c is not None
            if c.group("spec"):
                raise _PermError(f"bad term {term!r}")
            v4, v6 = c.group("v4"), c.group("v6")
        else:
            raise _PermError(f"unknown mechanism {term!r}")
        domain = _parse_domain_spec(spec_text) if rest.startswith(":") else None
        return _Mechanism(qualifier, name, domain, _cidr(v4, 32), _cidr(v6, 128), text=term)
    if name == "ptr":
        if rest and not rest.startswith(":"):
            raise _PermError(f"bad term {term!r}")
        domain = _parse_domain_spec(rest[1:]) if rest else None
        return _Mechanism(qualifier, name, domain, text=term)
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise _PermError(f"{name} needs an address")
        address, slash, length = rest[1:].partition("/")
        try:
            if name == "ip4":
                ip: IpAddress = ipaddress.IPv4Address(address)
                prefix = _cidr(length if slash else None, 32)
            else:
                ip = ipaddress.IPv6Address(address)
                prefix = _cidr(length if slash else None, 128)
        except ValueError:
            raise _PermError(f"bad address in {term!r}") from None
        network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        return _Mechanism(qualifier, name, network=network, text=term)
    raise _PermError(f"unknown mechanism {term!r}")


def parse_record(text: str) -> _Record:
    """Parse one "v=spf1" record; _PermError (the caller's permerror) on bad syntax."""
    terms = text.split(" ")[1:]  # terms are separated by SP (RFC 7208 12)
    mechanisms: list[_Mechanism] = []
    redirect: list[_Token] | None = None
    explanation: list[_Token] | None = None
    for term in terms:
        if not term:
            continue
        mod = _MODIFIER.match(term)
        if mod and ":" not in mod.group(1) and "/" not in mod.group(1):
            name, value = mod.group(1).lower(), mod.group(2)
            if name == "redirect":
                if redirect is not None:
                    raise _PermError("redirect given twice")  # RFC 7208 6
                redirect = _parse_domain_spec(value)
            elif name == "exp":
                if explanation is not None:
                    raise _PermError("exp given twice")
                explanation = _parse_domain_spec(value)
            else:
                _parse_macro_string(value)  # unknown modifiers are ignored, if valid
            continue
        mechanisms.append(_parse_mechanism(term))
    return _Record(mechanisms, redirect, explanation)


def _is_spf_record(text: str) -> bool:
    # RFC 7208 4.5: exactly "v=spf1" (case-insensitive) then SP or the end.
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def valid_domain(domain: str) -> bool:
    """RFC 7208 4.3: a multi-label domain with labels of 1-63 octets (after IDNA)."""
    name = domain[:-1] if domain.endswith(".") else domain
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return False
    labels = ascii_name.split(".")
    if len(labels) < 2 or len(ascii_name) > MAX_DOMAIN:
        return False
    return all(0 < len(x) <= 63 and x.isprintable() and " " not in x for x in labels)


# --------------------------------------------------------------------------- evaluation


@dataclass(slots=True)
class _State:
    resolver: Resolver
    ip: IpAddress
    helo: str
    receiving_host: str
    now: Callable[[], float]
    lookups: int = 0
    voids: int = 0
    validated: list[str] | None = None  # %{p} and ptr: the client's validated names

    def count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    def count_void(self, empty: bool) -> None:
        if empty:
            self.voids += 1
            if self.voids > MAX_VOID_LOOKUPS:
                raise _PermError(f"more than {MAX_VOID_LOOKUPS} void lookups")


@dataclass(frozen=True, slots=True)
class _Identity:
    sender: str
    local: str
    domain: str  # the sender's domain (%{o})


def _address_type(ip: IpAddress) -> str:
    return "A" if isinstance(ip, ipaddress.IPv4Address) else "AAAA"


async def _addresses(state: _State, name: str) -> list[str] | None:
    """A or AAAA records (the client's family) of `name`; None if the name is invalid."""
    if not valid_domain(name):
        return None
    try:
        answer = await state.resolver.query(name, _address_type(state.ip))
    except DnsTemporaryError as exc:
        raise _TempError(str(exc)) from exc
    return list(answer.records)


def _in_network(state: _State, addresses: list[str], mech: _Mechanism) -> bool:
    prefix = mech.network4 if isinstance(state.ip, ipaddress.IPv4Address) else mech.network6
    for text in addresses:
        try:
            network = ipaddress.ip_network(f"{text}/{prefix}", strict=False)
        except ValueError:
            continue
        if state.ip in network:
            return True
    return False


async def _validated_names(state: _State, domain: str) -> list[str]:
    """RFC 7208 5.5: PTR names of the client whose A/AAAA records lead back to it,
    ordered so names equal to, then under, `domain` come first. DNS errors: none."""
    cached = state.validated
    if cached is None:
        cached = []
        try:
            names = await state.resolver.ptr(str(state.ip))
        except DnsTemporaryError:
            names = []
        for name in names[:MAX_PTR_NAMES]:
            if not valid_domain(name):
                continue
            try:
                answer = await state.resolver.query(name, _address_type(state.ip))
            except DnsTemporaryError:
                continue
            for text in answer.records:
                try:
                    if ipaddress.ip_address(text) == state.ip:
                        cached.append(name.rstrip(".").lower())
                        break
                except ValueError:
                    continue
        state.validated = cached
    target = domain.rstrip(".").lower()
    exact = [n for n in cached if n == target]
    under = [n for n in cached if n.endswith("." + target)]
    rest = [n for n in cached if n not in exact and n not in under]
    return exact + under + rest


async def _expand(state: _State, tokens: list[_Token], identity: _Identity, domain: str) -> str:
    out = []
    for token in tokens:
        if isinstance(token, _Literal):
            out.append(token.text)
            continue
        out.append(await _macro_value(state, token, identity, domain))
    return "".join(out)


async def _macro_value(state: _State, macro: _Macro, identity: _Identity, domain: str) -> str:
    letter = macro.letter
    ip = state.ip
    if letter == "s":
        value = identity.sender
    elif letter == "l":
        value = identity.local
    elif letter == "o":
        value = identity.domain
    elif letter == "d":
        value = domain
    elif letter == "i":
        value = _nibbles(ip)
    elif letter == "p":
        names = await _validated_names(state, domain)
        value = names[0] if names else "unknown"
    elif letter == "v":
        value = "in-addr" if isinstance(ip, ipaddress.IPv4Address) else "ip6"
    elif letter == "h":
        value = state.helo
    elif letter == "c":
        value = str(ip)
    elif letter == "r":
        value = state.receiving_host
    else:  # "t"
        value = str(int(state.now()))
    parts = re.split("[" + re.escape(macro.delimiters) + "]", value)
    if macro.reverse:
        parts.reverse()
    if macro.digits:
        parts = parts[-macro.digits :]
    value = ".".join(parts)
    if macro.escape:
        value = urllib.parse.quote(value, safe="-._~")
    return value


async def _target(
    state: _State, mech_domain: list[_Token] | None, identity: _Identity, domain: str
) -> str:
    if mech_domain is None:
        return domain
    return _truncate(await _expand(state, mech_domain, identity, domain))


async def _matches(state: _State, mech: _Mechanism, identity: _Identity, domain: str) -> bool:
    name = mech.name
    if name == "all":
        return True
    if name in ("ip4", "ip6"):
        assert mech.network is not None
        return state.ip.version == mech.network.version and state.ip in mech.network
    state.count_lookup()
    target = await _target(state, mech.domain, identity, domain)
    if name == "include":
        result, _reason, _exp = await _check_host(state, identity, target)
        if result == SpfResult.PASS:
            return True
        if result in (SpfResult.FAIL, SpfResult.SOFTFAIL, SpfResult.NEUTRAL):
            return False
        if result == SpfResult.TEMPERROR:
            raise _TempError(f"include:{target}: temperror")
        raise _PermError(f"include:{target}: {result}")  # permerror or none (RFC 7208 5.2)
    if name == "a":
        addresses = await _addresses(state, target)
        state.count_void(not addresses)
        return _in_network(state, addresses or [], mech)
    if name == "mx":
        if not valid_domain(target):
            state.count_void(True)
            return False
        try:
            exchanges = await state.resolver.mx(target)
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from exc
        state.count_void(not exchanges)
        if len(exchanges) > MAX_MX_NAMES:
            raise _PermError(f"mx:{target}: more than {MAX_MX_NAMES} MX records")
        for _preference, exchange in exchanges:
            if not exchange:  # RFC 7505 null MX
                continue
            addresses = await _addresses(state, exchange)
            if _in_network(state, addresses or [], mech):
                return True
        return False
    if name == "ptr":
        names = await _validated_names(state, target)
        state.count_void(not names)
        wanted = target.rstrip(".").lower()
        return any(n == wanted or n.endswith("." + wanted) for n in names)
    if name == "exists":
        if not valid_domain(target):
            state.count_void(True)
            return False
        try:
            answer = await state.resolver.query(target, "A")  # always A (RFC 7208 5.7)
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from exc
        state.count_void(not answer.records)
        return bool(answer.records)
    raise _PermError(f"unknown mechanism {name}")  # pragma: no cover - parse rejects it


async def _explanation(
    state: _State, tokens: list[_Token], identity: _Identity, domain: str
) -> str:
    """RFC 7208 6.2: any problem means no explanation, never a different result."""
    try:
        target = _truncate(await _expand(state, tokens, identity, domain))
        if not valid_domain(target):
            return ""
        records = await state.resolver.txt(target)
        if len(records) != 1:
            return ""
        text = await _expand(
            state, _parse_macro_string(records[0], explanation=True), identity, domain
        )
    except (_PermError, _TempError, DnsTemporaryError):
        return ""
    return text if text.isascii() and text.isprintable() else ""


async def _check_host(
    state: _State, identity: _Identity, domain: str
) -> tuple[SpfResult, str, str]:
    """RFC 7208 4: (result, reason, explanation). Raises nothing for DNS trouble or bad
    records: those become temperror / permerror here, so an include sees them."""
    domain = domain[:-1] if domain.endswith(".") else domain
    if not valid_domain(domain):
        return SpfResult.NONE, f"{domain!r} is not a valid domain", ""
    try:
        try:
            records = await state.resolver.txt(domain)
        except DnsTemporaryError as exc:
            raise _TempError(str(exc)) from exc
        spf = [r for r in records if _is_spf_record(r)]
        if not spf:
            return SpfResult.NONE, f"no SPF record at {domain}", ""
        if len(spf) > 1:
            return SpfResult.PERMERROR, f"{len(spf)} SPF records at {domain}", ""
        record = parse_record(spf[0])
        for mech in record.mechanisms:
            if await _matches(state, mech, identity, domain):
                explanation = ""
                if mech.qualifier == SpfResult.FAIL and record.explanation is not None:
                    explanation = await _explanation(state, record.explanation, identity, domain)
                return mech.qualifier, f"{domain}: matched {mech.text}", explanation
        has_all = any(m.name == "all" for m in record.mechanisms)
        if record.redirect is not None and not has_all:  # RFC 7208 6.1
            state.count_lookup()
            target = _truncate(await _expand(state, record.redirect, identity, domain))
            result, reason, explanation = await _check_host(state, identity, target)
            if result == SpfResult.NONE:
                return SpfResult.PERMERROR, f"redirect={target}: no SPF record", ""
            return result, reason, explanation
        return SpfResult.NEUTRAL, f"{domain}: no mechanism matched", ""
    except _TempError as exc:
        return SpfResult.TEMPERROR, f"DNS: {exc}", ""
    except _PermError as exc:
        return SpfResult.PERMERROR, f"{domain}: {exc}", ""


def _client_ip(ip: str) -> IpAddress:
    address = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


async def check_host(
    resolver: Resolver,
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    receiving_host: str = "unknown",
    now: Callable[[], float] = time.time,
    time_limit: float = TIME_LIMIT,
) -> tuple[SpfResult, str, str]:
    """RFC 7208 4 check_host(<ip>, <domain>, <sender>) -> (result, reason, explanation)."""
    local, _, sender_domain = sender.rpartition("@")
    identity = _Identity(
        sender=f"{local or 'postmaster'}@{sender_domain}",
        local=local or "postmaster",  # RFC 7208 4.3
        domain=sender_domain,
    )
    state = _State(resolver, _client_ip(ip), helo, receiving_host, now)
    try:
        async with asyncio.timeout(time_limit):
            return await _check_host(state, identity, domain)
    except TimeoutError:
        return SpfResult.TEMPERROR, f"no result within {time_limit:g}s", ""


async def expand_macros(
    resolver: Resolver,
    text: str,
    *,
    ip: str,
    sender: str,
    domain: str,
    helo: str = "",
    receiving_host: str = "unknown",
    now: Callable[[], float] = time.time,
    explanation: bool = False,
) -> str:
    """Expand an RFC 7208 7 macro-string (ValueError on bad syntax); for tests and
    for showing an administrator what a record's macros become."""
    local, _, sender_domain = sender.rpartition("@")
    identity = _Identity(sender, local or "postmaster", sender_domain)
    state = _State(resolver, _client_ip(ip), helo, receiving_host, now)
    try:
        tokens = _parse_macro_string(text, explanation=explanation)
        return await _expand(state, tokens, identity, domain)
    except _PermError as exc:
        raise ValueError(str(exc)) from None


def _helo_domain(helo: str) -> str | None:
    name = helo.strip()
    if not name or name.startswith("[") or not valid_domain(name):
        return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name.rstrip(".").lower()
    return None


async def check_helo(
    resolver: Resolver, ip: str, helo: str, *, receiving_host: str = "unknown"
) -> SpfOutcome:
    """RFC 7208 2.3: the HELO identity, checked as postmaster@<helo>."""
    domain = _helo_domain(helo)
    if domain is None:
        return SpfOutcome(SpfResult.NONE, "helo", helo, "", "HELO is not a domain name")
    sender = f"postmaster@{domain}"
    result, reason, explanation = await check_host(
        resolver, ip, domain, sender, helo=helo, receiving_host=receiving_host
    )
    return SpfOutcome(result, "helo", domain, sender, reason, explanation)


async def check_mailfrom(
    resolver: Resolver, ip: str, mail_from: str, helo: str, *, receiving_host: str = "unknown"
) -> SpfOutcome:
    """RFC 7208 2.4: the MAIL FROM identity; for the null reverse-path, the HELO name
    (as postmaster@<helo>)."""
    if not mail_from:
        outcome = await check_helo(resolver, ip, helo, receiving_host=receiving_host)
        return SpfOutcome(
            outcome.result,
            "helo",
            outcome.domain,
            outcome.sender,
            outcome.reason,
            outcome.explanation,
        )
    local, _, domain = mail_from.rpartition("@")
    domain = domain.rstrip(".").lower()
    sender = f"{local or 'postmaster'}@{domain}"
    result, reason, explanation = await check_host(
        resolver, ip, domain, sender, helo=helo, receiving_host=receiving_host
    )
    return SpfOutcome(result, "mailfrom", domain, sender, reason, explanation)


__all__ = [
    "SpfOutcome",
    "SpfResult",
    "check_helo",
    "check_host",
    "check_mailfrom",
    "expand_macros",
    "valid_domain",
]
