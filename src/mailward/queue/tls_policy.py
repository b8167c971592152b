"""Outbound TLS policy: how hard to insist on TLS, and on whose certificate, per
destination (RFC 7672 DANE for SMTP, RFC 8461 MTA-STS, RFC 7435 opportunistic
security, NIST SP 800-177r1 4.3 and 5.1).

The delivery worker asks `select_policy(domain, mx_hosts, ...)` once per attempt,
connects to each MX host with `client_context(policy, mx_host=...)` (server_hostname
= the MX host name, which is also the SNI that RFC 7672 8.1 requires), and after the
handshake asks `check_peer(policy, mx_host, ssl_object)`: None means go on, a string
is the reason to defer. Nothing here ever downgrades: a policy that cannot be
evaluated (DNS trouble on TLSA, a bogus answer) raises, and the worker defers.

The strongest applicable policy wins:

1. "dane": the MX host's TLSA RRset at `_25._tcp.<mx>` is non-empty, DNSSEC-validated
   (AD bit) by a resolver the configuration trusts (`dns.trusted`, RFC 7672 2.2), and
   reached through a validated MX RRset (RFC 7672 2.2.1: an unsigned MX answer could
   name an attacker's host, whose TLSA would prove nothing) or an implicit MX (the
   domain itself, RFC 5321 5.1). Matching is in `dane.py`. DANE is per MX host
   (RFC 7672 2.2.2), so a domain whose MX hosts differ carries per-host policies
   (`TlsPolicy.hosts`); `for_host` picks the one for a host. DANE takes precedence
   over MTA-STS for the hosts that have it (RFC 8461 2).
   *No usable record* (only PKIX-TA/PKIX-EE usages, unknown parameters or malformed
   digests): RFC 7672 2.2 and 3.1.3 say the published TLSA RRset still commits the
   server to TLS, so the client must not fall back to cleartext but has nothing to
   authenticate with. We keep mode "dane" with an empty `tlsa`: TLS is mandatory,
   the certificate is not checked (Postfix's behaviour too, the "encrypt" level) -
   unless MTA-STS enforce or require_tls applies to the domain, whose verified TLS is
   stronger and then wins.
2. "mta-sts": the domain publishes an MTA-STS policy in mode enforce (RFC 8461 5):
   the MX host must match a policy `mx` pattern (`mx_allowed`) and present a web-PKI
   certificate valid for its name. Mode testing or none is logged and not enforced.
3. "required": the domain is in `delivery.require_tls`: verified TLS (web PKI and the
   MX host name), else the mail waits.
4. "opportunistic": TLS if offered, no certificate check (RFC 7435; RFC 3207 4.1).

A DNS temporary error on TLSA (or on the MX security check) raises
`DnsTemporaryError`: the message is deferred, never sent under a weaker policy. A TLSA
answer that cannot be parsed raises `PolicyError` (also a deferral).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from pathlib import Path

from mailward.crypto import tls, x509
from mailward.queue import dane
from mailward.queue.mta_sts import MtaStsCache, mx_matches
from mailward.resolver import DnsTemporaryError, Resolver, TlsaRecord

MODES = ("dane", "mta-sts", "required", "opportunistic")


class PolicyError(Exception):
    """The destination's TLS policy cannot be evaluated now; defer, do not downgrade."""


def _host(name: str) -> str:
    return name.strip().lower().rstrip(".")


@dataclass(frozen=True)
class TlsPolicy:
    mode: str  # "dane" | "mta-sts" | "required" | "opportunistic"
    tlsa: tuple[TlsaRecord, ...] = ()  # mode "dane": the usable records
    sts_mx: tuple[str, ...] = ()  # mode "mta-sts": mx patterns ("*.example.net" allowed)
    verify_hostname: bool = False  # web-PKI validation of the MX name (mta-sts, required)
    reason: str = ""  # why this mode (for the log)
    hosts: tuple[tuple[str, TlsPolicy], ...] = ()  # per-MX-host policies (DANE)

    def for_host(self, host: str) -> TlsPolicy:
        """The policy for one MX host: its own (DANE) if it has one, else this one."""
        name = _host(host)
        for candidate, policy in self.hosts:
            if candidate == name:
                return policy
        return self

    def mx_allowed(self, host: str) -> bool:
        """MTA-STS enforce: the MX host must match a policy pattern (RFC 8461 4.1);
        a host with its own DANE policy is authenticated by DANE (RFC 8461 2)."""
        own = self.for_host(host)
        if own is not self:
            return own.mx_allowed(host)
        if self.mode == "mta-sts":
            return any(mx_matches(pattern, host) for pattern in self.sts_mx)
        return True

    @property
    def tls_required(self) -> bool:
        """False only for opportunistic: cleartext is then an acceptable fallback."""
        return self.mode != "opportunistic"

    @property
    def authenticated(self) -> bool:
        """Whether the peer's certificate is checked (by TLSA or by the web PKI)."""
        return self.mode in ("mta-sts", "required") or (self.mode == "dane" and bool(self.tlsa))


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


async def _mx_secure(domain: str, hosts: list[str], resolver: Resolver) -> bool:
    answer = await resolver.query(domain, "MX")
    if not answer.records:
        return hosts == [domain]  # implicit MX: the name came from the address, not DNS
    return answer.authenticated


async def _dane_for_host(host: str, resolver: Resolver) -> TlsPolicy | None:
    try:
        records, authenticated = await resolver.tlsa(f"_25._tcp.{host}")
    except ValueError as e:
        raise PolicyError(f"TLSA records of {host} do not parse: {e}") from None
    if not records or not authenticated:
        return None  # no TLSA, or not DNSSEC-validated: DANE does not apply (RFC 7672 2.2)
    usable = dane.usable_records(records)
    if usable:
        return TlsPolicy(
            "dane", tlsa=usable, reason=f"DANE: {len(usable)} usable TLSA record(s) for {host}"
        )
    return TlsPolicy(
        "dane",
        reason=(
            f"DANE: no usable TLSA record for {host}: TLS mandatory, certificate not "
            "checked (RFC 7672 2.2, 3.1.3)"
        ),
    )


async def _base_policy(
    domain: str, resolver: Resolver, *, require_tls: bool, sts: MtaStsCache | None
) -> TlsPolicy:
    note = ""
    if sts is not None:
        found = await sts.lookup(domain, resolver)
        if found.policy is not None and found.policy.mode == "enforce":
            return TlsPolicy(
                "mta-sts",
                sts_mx=found.policy.mx,
                verify_hostname=True,
                reason=_join(found.note, "mode enforce (RFC 8461 5)"),
            )
        if found.policy is not None:
            note = _join(found.note, f"mode {found.policy.mode}: not enforced (RFC 8461 5)")
        else:
            note = found.note
    if require_tls:
        return TlsPolicy(
            "required",
            verify_hostname=True,
            reason=_join("delivery.require_tls: verified TLS required", note),
        )
    return TlsPolicy("opportunistic", reason=_join("opportunistic TLS (RFC 7435)", note))


async def select_policy(
    domain: str,
    mx_hosts: list[str],
    resolver: Resolver,
    *,
    require_tls: bool,
    sts: MtaStsCache | None,
    dane_trusted: bool,
    mx_authenticated: bool | None = None,
) -> TlsPolicy:
    """The TLS policy for delivering to `domain` through `mx_hosts` (in MX order).

    `dane_trusted` is config `dns.trusted`; `mx_authenticated` is the AD bit of the MX
    answer the hosts came from (None: looked up here). Raises DnsTemporaryError or
    PolicyError when the policy cannot be decided now (defer).
    """
    domain = _host(domain)
    hosts = list(dict.fromkeys(_host(h) for h in mx_hosts))
    per_host: dict[str, TlsPolicy] = {}
    dane_note = ""
    if dane_trusted and hosts:
        secure = mx_authenticated
        if secure is None:
            secure = await _mx_secure(domain, hosts, resolver)
        if secure:
            for host in hosts:
                found = await _dane_for_host(host, resolver)
                if found is not None:
                    per_host[host] = found
        else:
            dane_note = "MX answer not DNSSEC-validated: DANE not applicable (RFC 7672 2.2.1)"
    if hosts and all(h in per_host and per_host[h].tlsa for h in hosts):
        # Every MX host is DANE-authenticated: MTA-STS would add nothing (RFC 8461 2).
        first = per_host[hosts[0]]
        return replace(first, hosts=tuple(per_host.items()) if len(hosts) > 1 else ())
    base = await _base_policy(domain, resolver, require_tls=require_tls, sts=sts)
    base = replace(base, reason=_join(base.reason, dane_note))
    overrides = {h: p for h, p in per_host.items() if p.tlsa or not base.authenticated}
    if not overrides:
        return base
    if all(h in overrides for h in hosts):  # every host has its own DANE policy
        return replace(
            overrides[hosts[0]], hosts=tuple(overrides.items()) if len(hosts) > 1 else ()
        )
    names = ", ".join(f"{h} ({p.mode})" for h, p in overrides.items())
    return replace(
        base, hosts=tuple(overrides.items()), reason=_join(base.reason, f"DANE: {names}")
    )


def client_context(
    policy: TlsPolicy, *, mx_host: str | None = None, cafile: Path | None = None
) -> ssl.SSLContext:
    """The client SSL context for `policy` (for `mx_host` when given: pass it, a domain
    may have per-host DANE policies). Wrap with server_hostname=mx_host.

    mta-sts, required: certificate and host name checked against the system trust
    store (plus `cafile`, for tests or a private CA). dane, opportunistic: no web-PKI
    check; DANE matches the TLSA records itself in `check_peer` (RFC 7672 3.1: DANE-EE
    needs neither a CA nor a matching name, DANE-TA brings its own anchor).
    """
    own = policy.for_host(mx_host) if mx_host is not None else policy
    if own.mode in ("mta-sts", "required"):
        ctx = tls.client_context()
        if cafile is not None:
            ctx.load_verify_locations(cafile=cafile)
        return ctx
    return tls.client_context(verify=False)


def check_peer(
    policy: TlsPolicy, mx_host: str, ssl_object: ssl.SSLObject | ssl.SSLSocket
) -> str | None:
    """After the handshake with `mx_host`: None if the connection satisfies the policy,
    else the reason to defer (never a reason to retry without TLS)."""
    own = policy.for_host(mx_host)
    if own.mode == "opportunistic":
        return None
    if own.mode == "dane":
        if not own.tlsa:
            return None  # RFC 7672 2.2: encrypted is all an unusable RRset lets us ask
        problem = dane.match(own.tlsa, x509.peer_chain(ssl_object), mx_host)
        return None if problem is None else f"DANE: {problem}"
    if own.mode not in ("mta-sts", "required"):
        return f"unknown TLS policy mode {own.mode!r}"
    if own.mode == "mta-sts" and not policy.mx_allowed(mx_host):
        return f"MTA-STS: {mx_host} matches no mx pattern of the policy (RFC 8461 4.1)"
    ctx = ssl_object.context
    if ctx.verify_mode != ssl.CERT_REQUIRED or not ctx.check_hostname:
        return f"{own.mode}: the connection was made without certificate verification"
    if _host(ssl_object.server_hostname or "") != _host(mx_host):
        return f"{own.mode}: the certificate was checked for {ssl_object.server_hostname!r}"
    if not ssl_object.getpeercert():
        return f"{own.mode}: no verified server certificate"
    return None


__all__ = [
    "MODES",
    "DnsTemporaryError",
    "PolicyError",
    "TlsPolicy",
    "check_peer",
    "client_context",
    "select_policy",
]
