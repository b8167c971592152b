"""DKIM and ARC verification of inbound mail (RFC 6376 6, RFC 8463, RFC 8617 5.2).

`verify_signatures` checks every DKIM-Signature of a message and names each outcome
as RFC 8601 2.7.1 does (pass / fail / temperror / permerror / neutral);
`verify_arc` validates the ARC chain (pass / fail / none). RSA and Ed25519 (RFC 8463,
through PyNaCl) are both verified, by dkimpy; RSA keys under 1024 bits are refused
(RFC 8301 3.2).

dkimpy is synchronous, so each call runs in a worker thread; its DNS callback is
bridged to the caller's async TXT lookup (the one injected resolver) on the caller's
event loop with `run_coroutine_threadsafe`. A temporary DNS failure becomes
temperror, never a fail or a pass: dkimpy swallows the key-lookup errors it knows,
so ours is an exception type it does not catch, raised through it and caught here.

How dkimpy's answers are named: True is pass; a body hash mismatch or a signature
that does not verify against a usable key is fail; no key record, an unusable or
revoked key, a malformed signature or message is permerror; signatures past the
first `MAX_SIGNATURES` are not verified (neutral), so the work per message is bounded.

Signing keys live in `crypto.dkim`; this module never sees a private key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

import dkim

from mailward.resolver import DnsTemporaryError

DkimVerdict = Literal["pass", "fail", "temperror", "permerror", "neutral"]
ArcVerdict = Literal["pass", "fail", "none"]
TxtLookup = Callable[[str], Coroutine[Any, Any, list[str]]]

# Bounded work per message: signatures beyond this many are not verified ("neutral").
MAX_SIGNATURES = 10
# A DNS answer the bridge waits for longer than this is a temporary failure.
DNS_BRIDGE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class DkimResult:
    domain: str  # d=
    selector: str  # s=
    result: DkimVerdict
    reason: str
    algorithm: str = ""  # a=, e.g. "ed25519-sha256"
    signature: str = ""  # b= without whitespace (RFC 6008 header.b uses a prefix)


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: ArcVerdict
    reason: str
    instances: int = 0  # ARC sets on the message


class _DnsTemporary(Exception):
    """Raised through dkimpy from the DNS bridge; dkimpy catches only DKIMException."""


class _Bridge:
    """dkimpy's `dnsfunc(name, timeout=...)`, answered by an async TXT lookup that runs
    on `loop`; remembers the last key record it returned (or that there was none)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, dns_txt: TxtLookup, timeout: float) -> None:
        self.loop = loop
        self.dns_txt = dns_txt
        self.timeout = timeout
        self.last: bytes | None = None

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        self.last = None
        try:
            qname = name.decode("ascii").rstrip(".")
        except UnicodeDecodeError:
            return None
        future = asyncio.run_coroutine_threadsafe(self.dns_txt(qname), self.loop)
        try:
            records = future.result(self.timeout)
        except DnsTemporaryError as exc:
            raise _DnsTemporary(str(exc)) from exc
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise _DnsTemporary(f"{qname}: no answer within {self.timeout:g}s") from exc
        if not records:
            return None
        # RFC 6376 3.6.2.2 leaves several records undefined: take the first key record.
        keys = [r for r in records if "p=" in r] or records
        self.last = keys[0].encode("utf-8", "replace")
        return self.last


def _tags(value: bytes) -> dict[bytes, bytes]:
    """A lenient tag=value parse, only to name a signature in results (never trusted)."""
    tags: dict[bytes, bytes] = {}
    for part in value.split(b";"):
        name, eq, val = part.partition(b"=")
        if eq:
            tags.setdefault(name.strip().lower(), re.sub(rb"\s+", b"", val))
    return tags


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


def _signature_headers(message: bytes, name: bytes) -> list[bytes]:
    """Values of the header fields called `name` (lower case), unfolded loosely."""
    end = re.search(rb"\r?\n\r?\n", message)
    section = message[: end.start()] if end else message
    values: list[bytes] = []
    current: list[bytes] | None = None
    for line in re.split(rb"\r?\n", section):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            values.append(b"".join(current))
            current = None
        field_name, colon, rest = line.partition(b":")
        if colon and field_name.strip().lower() == name:
            current = [rest]
    if current is not None:
        values.append(b"".join(current))
    return values


def _classify_false(bridge: _Bridge) -> tuple[DkimVerdict, str]:
    """dkimpy said False: a missing or unusable key, or a bad signature."""
    if bridge.last is None:
        return "permerror", "no key record"
    try:
        dkim.evaluate_pk(b"", bridge.last)
    except dkim.KeyFormatError as exc:
        return "permerror", f"unusable key record: {exc}"
    except Exception as exc:
        return "permerror", f"unusable key record: {exc.__class__.__name__}"
    return "fail", "signature did not verify"


def _verify_all(message: bytes, bridge: _Bridge) -> list[DkimResult]:
    values = _signature_headers(message, b"dkim-signature")
    if not values:
        return []
    try:
        verifier = dkim.DKIM(message, minkey=1024, timeout=int(bridge.timeout))
    except Exception as exc:
        reason = f"message not parseable: {exc.__class__.__name__}"
        return [
            DkimResult(_text(t.get(b"d", b"")), _text(t.get(b"s", b"")), "permerror", reason)
            for t in map(_tags, values)
        ]
    results = []
    for idx, value in enumerate(values):
        tags = _tags(value)
        named = {
            "domain": _text(tags.get(b"d", b"")).lower(),
            "selector": _text(tags.get(b"s", b"")),
            "algorithm": _text(tags.get(b"a", b"")),
            "signature": _text(tags.get(b"b", b"")),
        }
        verdict: DkimVerdict
        if idx >= MAX_SIGNATURES:
            verdict, reason = "neutral", f"not verified: more than {MAX_SIGNATURES} signatures"
        else:
            try:
                ok = verifier.verify(idx=idx, dnsfunc=bridge)
            except _DnsTemporary as exc:
                verdict, reason = "temperror", f"key lookup: {exc}"
            except dkim.ValidationError as exc:
                text = str(exc)
                if text.startswith("body hash mismatch"):
                    verdict, reason = "fail", "body hash did not verify"
                else:
                    verdict, reason = "permerror", text[:200]
            except dkim.DKIMException as exc:
                verdict, reason = "permerror", str(exc)[:200]
            except Exception as exc:
                verdict, reason = "permerror", f"unverifiable: {exc.__class__.__name__}"
            else:
                if ok:
                    verdict, reason = "pass", "signature verified"
                else:
                    verdict, reason = _classify_false(bridge)
        results.append(DkimResult(result=verdict, reason=reason, **named))
    return results


async def verify_signatures(
    message: bytes, dns_txt: TxtLookup, *, dns_timeout: float = DNS_BRIDGE_TIMEOUT
) -> list[DkimResult]:
    """Verify every DKIM-Signature of `message` (as received, CRLF or LF line ends),
    topmost first; [] when there is none. `dns_txt(name)` returns the TXT strings of
    `name` ([] for none) or raises `DnsTemporaryError`."""
    if not _signature_headers(message, b"dkim-signature"):
        return []
    bridge = _Bridge(asyncio.get_running_loop(), dns_txt, dns_timeout)
    return await asyncio.to_thread(_verify_all, message, bridge)


def _arc_verify(message: bytes, bridge: _Bridge) -> ArcResult:
    instances = len(_signature_headers(message, b"arc-seal"))
    if not instances:
        return ArcResult("none", "no ARC sets")
    try:
        cv, _sets, reason = dkim.arc_verify(message, dnsfunc=bridge)
    except _DnsTemporary as exc:
        # RFC 8617 registers only none/pass/fail for arc: a chain we could not check
        # is not a pass. ARC decides nothing here, so this costs no delivery.
        return ArcResult("fail", f"temporary DNS failure: {exc}", instances)
    except Exception as exc:
        return ArcResult("fail", f"unverifiable: {exc.__class__.__name__}", instances)
    if cv == dkim.CV_Pass:
        return ArcResult("pass", str(reason), instances)
    if cv == dkim.CV_None:
        return ArcResult("none", str(reason), instances)
    return ArcResult("fail", str(reason)[:200], instances)


async def verify_arc(
    message: bytes, dns_txt: TxtLookup, *, dns_timeout: float = DNS_BRIDGE_TIMEOUT
) -> ArcResult:
    """RFC 8617 5.2: validate the ARC chain of `message`: "pass", "fail" or "none"."""
    if not _signature_headers(message, b"arc-seal"):
        return ArcResult("none", "no ARC sets")
    bridge = _Bridge(asyncio.get_running_loop(), dns_txt, dns_timeout)
    return await asyncio.to_thread(_arc_verify, message, bridge)
