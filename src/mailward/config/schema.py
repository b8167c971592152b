"""The one typed, documented configuration schema (TOML file `mailward.toml`).

Every key has a type, a default and a one-line doc; `config.load` validates a file
against these dataclasses and names the offending key and file on error, and
`config.load.render_toml` writes a commented config from this schema. Paths that are
relative are relative to the data directory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from mailward.message.sniff import BLOCKED_BY_DEFAULT

CONFIG_FILE = "mailward.toml"


def doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = field(
        default="localhost", metadata=doc("This server's name in the greeting and Received:")
    )


@dataclass(frozen=True)
class ListenConfig:
    address: str = field(
        default="", metadata=doc('Address to bind: "" for all addresses, or one IP')
    )
    port_offset: int = field(
        default=0, metadata=doc("Added to every standard port (25, 587, 465, ...)")
    )
    smtp: bool = field(default=True, metadata=doc("Serve the MX listener (offset+25)"))
    submission: bool = field(
        default=True, metadata=doc("Serve submission with STARTTLS (offset+587)")
    )
    submissions: bool = field(
        default=True, metadata=doc("Serve submission over implicit TLS (offset+465)")
    )
    imap: bool = field(default=True, metadata=doc("Serve IMAP with STARTTLS (offset+143)"))
    imaps: bool = field(default=True, metadata=doc("Serve IMAP over implicit TLS (offset+993)"))
    pop3: bool = field(default=True, metadata=doc("Serve POP3 with STLS (offset+110)"))
    pop3s: bool = field(default=True, metadata=doc("Serve POP3 over implicit TLS (offset+995)"))


@dataclass(frozen=True)
class TlsConfig:
    cert: str = field(default="tls/cert.pem", metadata=doc("PEM certificate chain"))
    key: str = field(default="tls/key.pem", metadata=doc("PEM private key (mode 0600)"))


@dataclass(frozen=True)
class LimitsConfig:
    message_size: int = field(
        default=50 * 1024 * 1024, metadata=doc("Largest message accepted, bytes (SIZE)")
    )
    recipients: int = field(default=100, metadata=doc("Most RCPT TO per message"))
    bad_commands: int = field(
        default=10, metadata=doc("Refused commands before the session is closed")
    )
    connections_per_ip: int = field(
        default=50, metadata=doc("Concurrent connections from one IP address")
    )
    connections: int = field(default=1000, metadata=doc("Concurrent connections in all"))
    commands_per_session: int = field(
        default=1000, metadata=doc("Commands in one session before it is closed")
    )


@dataclass(frozen=True)
class TimeoutsConfig:
    """RFC 5321 4.5.3.2 suggests these minimums (seconds)."""

    command: float = field(default=300.0, metadata=doc("Waiting for the next command"))
    data_block: float = field(default=180.0, metadata=doc("Between data blocks in DATA"))
    data_total: float = field(default=1800.0, metadata=doc("Whole DATA transfer (slowloris bound)"))
    tls_handshake: float = field(default=30.0, metadata=doc("TLS handshake"))
    imap_idle: float = field(
        default=1800.0,
        metadata=doc("IMAP/POP3 autologout once logged in (RFC 9051 5.4: at least 30 min)"),
    )


@dataclass(frozen=True)
class SmtpConfig:
    bare_line_endings: Literal["reject", "normalize"] = field(
        default="reject",
        metadata=doc('Bare CR or LF in DATA: "reject" (5xx, SMTP smuggling) or "normalize"'),
    )
    trusted_networks: list[str] = field(
        default_factory=list,
        metadata=doc("CIDRs allowed to relay without AUTH on the MX port (empty: none)"),
    )


@dataclass(frozen=True)
class AuthConfig:
    failures_before_delay: int = field(
        default=3, metadata=doc("Failed logins (per IP or account) before replies slow down")
    )
    lockout_failures: int = field(
        default=10, metadata=doc("Failed logins (per IP or account) before a lockout")
    )
    lockout_seconds: float = field(default=900.0, metadata=doc("How long a lockout lasts"))
    hash_workers: int = field(
        default=2, metadata=doc("Concurrent argon2id verifications (64 MiB each)")
    )


@dataclass(frozen=True)
class DnsConfig:
    resolvers: list[str] = field(
        default_factory=list,
        metadata=doc('DNS servers, "ip" or "ip:port" (empty: the system\'s /etc/resolv.conf)'),
    )
    trusted: bool = field(
        default=False,
        metadata=doc("The resolvers validate DNSSEC and the path to them is safe (DANE needs it)"),
    )
    timeout: float = field(default=5.0, metadata=doc("Seconds for one DNS lookup"))
    cache_max_ttl: float = field(
        default=300.0,
        metadata=doc("Seconds an answer is reused at most (within its TTL); 0: no cache"),
    )


@dataclass(frozen=True)
class DeliveryConfig:
    smarthost: str = field(
        default="",
        metadata=doc('Relay all outbound mail via "host:port" (AUTH over TLS); "" = direct MX'),
    )
    smarthost_user: str = field(default="", metadata=doc("User name at the smarthost"))
    smarthost_password_file: str = field(
        default="", metadata=doc("File holding the smarthost password (mode 0600)")
    )
    require_tls: list[str] = field(
        default_factory=list,
        metadata=doc("Destination domains that must get verified TLS (else the mail waits)"),
    )
    retry_schedule: list[str] = field(
        default_factory=lambda: ["5m", "15m", "30m", "1h", "2h", "4h"],
        metadata=doc('Wait before each retry ("90s", "15m", "2h", "1d"); the last repeats'),
    )
    max_age: float = field(
        default=5 * 86400.0, metadata=doc("Seconds a message may wait before it bounces")
    )
    delay_warning: float = field(
        default=4 * 3600.0, metadata=doc("Seconds before the sender is told of a delay (0: never)")
    )
    workers: int = field(default=8, metadata=doc("Concurrent outbound connections"))


@dataclass(frozen=True)
class LogConfig:
    file: str = field(default="", metadata=doc('JSON-lines log file; "" for stderr'))
    level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata=doc("Least severe level written")
    )


@dataclass(frozen=True)
class MalwareConfig:
    """Malware scanning of every message (inbound and outbound) by ClamAV's clamd."""

    clamd: str = field(
        default="",
        metadata=doc('clamd to scan with: "host:port" or its socket path; "" = no scanning'),
    )
    action: Literal["reject", "quarantine"] = field(
        default="reject",
        metadata=doc('Malware found: "reject" (554 5.7.1) or "quarantine" (held for review)'),
    )
    fail_open: bool = field(
        default=False,
        metadata=doc("clamd down or failing: accept unscanned (true) instead of 451 (false)"),
    )
    timeout: float = field(default=30.0, metadata=doc("Seconds for one scan (connect to verdict)"))
    max_size: int = field(
        default=0,
        metadata=doc("Largest message scanned, bytes; larger is refused (0: limits.message_size)"),
    )


@dataclass(frozen=True)
class AttachmentsConfig:
    """Attachment policy on every listener: executables, scripts, macros, archives (SP 800-45)."""

    action: Literal["reject", "quarantine"] = field(
        default="reject",
        metadata=doc('A blocked file type: "reject" (554 5.7.1) or "quarantine" (held)'),
    )
    block_extensions: list[str] = field(
        default_factory=lambda: list(BLOCKED_BY_DEFAULT),
        metadata=doc("Refused file types: name extensions, and types found by content alike"),
    )
    allow_extensions: list[str] = field(
        default_factory=list,
        metadata=doc("File types allowed even though block_extensions lists them"),
    )
    inspect_archives: bool = field(
        default=True,
        metadata=doc("Open zip/tar/gzip/bzip2/xz attachments and Office files and judge members"),
    )
    uninspectable: Literal["accept", "quarantine", "reject"] = field(
        default="quarantine",
        metadata=doc("Encrypted, corrupt or unopenable (rar, 7z, ...) archives: what to do"),
    )
    max_archive_depth: int = field(
        default=3, metadata=doc("Archives nested deeper than this are refused (at least 1)")
    )
    max_archive_members: int = field(
        default=1000, metadata=doc("Files in all of one message's archives (at least 1)")
    )
    max_expanded_size: int = field(
        default=100 * 1024 * 1024,
        metadata=doc("Octets all of one message's archives may expand to"),
    )
    max_compression_ratio: int = field(
        default=100,
        metadata=doc("Largest expansion ratio of an archive member over 1 MiB (at least 1)"),
    )


@dataclass(frozen=True)
class DlpConfig:
    """Data-loss prevention on mail local users send (submission, authenticated, trusted)."""

    enabled: bool = field(default=True, metadata=doc("Scan outgoing mail for sensitive data"))
    action: Literal["quarantine", "reject", "log"] = field(
        default="quarantine",
        metadata=doc('On a match: "quarantine" (held), "reject" (550 5.7.1) or "log" (accept)'),
    )
    detectors: list[str] = field(
        default_factory=lambda: ["card-number", "us-ssn", "private-key", "credential"],
        metadata=doc("Built-in detectors: card-number, us-ssn, iban, private-key, credential"),
    )
    patterns: list[str] = field(
        default_factory=list,
        metadata=doc('Site rules, "name=regex" (Python syntax); the name is what replies show'),
    )
    keywords: list[str] = field(
        default_factory=list,
        metadata=doc('Words or phrases that match (whole words, any case) as rule "keyword"'),
    )
    internal: bool = field(
        default=False, metadata=doc("Also scan mail whose recipients are all local")
    )


@dataclass(frozen=True)
class QuarantineConfig:
    """Who is told when a content check holds a message for review."""

    notify_recipients: bool = field(
        default=True, metadata=doc("Local recipients of held inbound mail get a notice")
    )
    notify_sender: bool = field(
        default=True, metadata=doc("A local user whose outgoing mail was held gets a notice")
    )


@dataclass(frozen=True)
class SpamConfig:
    """Spam scoring of mail arriving on the MX port (and a content score of mail users
    send): DNSBL/RHSBL, SPF/DKIM/DMARC, HELO/rDNS, GTUBE, header and MIME heuristics,
    each user's Bayes filter, and optionally rspamd."""

    enabled: bool = field(default=True, metadata=doc("Score mail for spam"))
    dnsbl: list[str] = field(
        default_factory=list,
        metadata=doc('IP blocklist zones, "zone" or "zone=score" (e.g. "zen.spamhaus.org=6")'),
    )
    rhsbl: list[str] = field(
        default_factory=list,
        metadata=doc('Domain blocklist zones for sender, From: and HELO domains ("zone=score")'),
    )
    junk_score: float = field(
        default=5.0, metadata=doc("Score from which mail goes to the recipient's Junk mailbox")
    )
    reject_score: float = field(
        default=15.0, metadata=doc("Score from which mail is refused (550 5.7.1); 0: never")
    )
    bayes: bool = field(
        default=True, metadata=doc("Use each user's Bayes filter, trained from their Junk moves")
    )
    bayes_min_trained: int = field(
        default=10,
        metadata=doc("Spam and ham messages a user must have trained (each) before Bayes counts"),
    )
    rspamd: str = field(
        default="",
        metadata=doc('rspamd\'s normal worker as an extra scorer, "http://host:port"; "": none'),
    )
    rspamd_timeout: float = field(default=10.0, metadata=doc("Seconds for one rspamd check"))


@dataclass(frozen=True)
class AbuseConfig:
    """Abuse and denial-of-service limits on the SMTP listeners (SP 800-45): connection
    floods, early talkers, slow clients, recipient probing, sending caps, greylisting."""

    connections_per_net: int = field(
        default=100,
        metadata=doc("Concurrent connections from one IPv4 /24 or IPv6 /64 (all listeners)"),
    )
    connection_rate: int = field(
        default=120,
        metadata=doc("New connections per minute from one IP (IPv6: one /64); 0: no limit"),
    )
    greeting_delay: float = field(
        default=1.0,
        metadata=doc("MX only: pause after '220-'; a client talking before '220 ' is refused"),
    )
    greeting_pass_ttl: float = field(
        default=86400.0,
        metadata=doc("Seconds a client that waited for the greeting is not paused again; 0: never"),
    )
    hello_timeout: float = field(
        default=60.0, metadata=doc("Seconds from connect until HELO/EHLO must have been sent")
    )
    tarpit_step: float = field(
        default=0.5,
        metadata=doc("Seconds an error reply is delayed per error so far in the session; 0: off"),
    )
    tarpit_max: float = field(
        default=5.0, metadata=doc("Longest tarpit delay of one reply, seconds")
    )
    probe_window: float = field(
        default=600.0, metadata=doc("Seconds over which unknown-recipient refusals are counted")
    )
    probe_slowdown: int = field(
        default=5,
        metadata=doc("Unknown recipients from one client before its every reply is tarpitted"),
    )
    probe_block: int = field(
        default=20,
        metadata=doc("Unknown recipients from one client before it is refused (421); 0: never"),
    )
    block_seconds: float = field(
        default=600.0, metadata=doc("How long a client blocked for probing is refused")
    )
    min_data_rate: int = field(
        default=256,
        metadata=doc("Slowest accepted input, bytes/s, in DATA and within a command line; 0: off"),
    )
    data_rate_grace: float = field(
        default=10.0, metadata=doc("Seconds of input before min_data_rate is enforced")
    )
    auth_failures_per_net: int = field(
        default=50,
        metadata=doc("Failed logins from one /24 or /64 before all of it is locked out; 0: none"),
    )
    messages_per_day: int = field(
        default=1000,
        metadata=doc("Messages one account may submit in 24 hours (451 beyond); 0: no cap"),
    )
    new_recipients_per_day: int = field(
        default=200,
        metadata=doc("Recipients an account never sent to before, per 24 hours; 0: no cap"),
    )
    greylisting: bool = field(
        default=False,
        metadata=doc("Greylist unauthenticated MX mail per (client net, sender, recipient)"),
    )
    greylist_delay: float = field(
        default=60.0, metadata=doc("Seconds before a greylisted retry is accepted (RFC 6647)")
    )
    greylist_expiry: float = field(
        default=86400.0, metadata=doc("Seconds within which the retry must come, else start over")
    )
    greylist_lifetime: float = field(
        default=35 * 86400.0,
        metadata=doc("Seconds a passed triplet is remembered after its last use"),
    )


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    malware: MalwareConfig = field(default_factory=MalwareConfig)
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    dlp: DlpConfig = field(default_factory=DlpConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    spam: SpamConfig = field(default_factory=SpamConfig)
    abuse: AbuseConfig = field(default_factory=AbuseConfig)


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """ "90s", "15m", "2h", "1d" or a plain number of seconds -> seconds (ValueError)."""
    value = text.strip().lower()
    unit = _DURATION_UNITS.get(value[-1:], 0.0)
    number = float(value[:-1] if unit else value)
    seconds = number * (unit or 1.0)
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def parse_zone(spec: str, default_score: float) -> tuple[str, float]:
    """ "zone" or "zone=score" (spam.dnsbl, spam.rhsbl) -> (zone, score); ValueError."""
    name, sep, score_text = spec.strip().partition("=")
    name = name.strip().strip(".").lower()
    labels = name.split(".")
    if not name or any(
        not re.fullmatch(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?", x) for x in labels
    ):
        raise ValueError(f"{spec!r} is not a DNS zone")
    score = default_score
    if sep:
        try:
            score = float(score_text)
        except ValueError:
            raise ValueError(f"{spec!r}: the score after '=' must be a number") from None
        if score != score or score in (float("inf"), float("-inf")):
            raise ValueError(f"{spec!r}: the score must be finite")
    return name, score


def parse_nameservers(specs: Sequence[str]) -> list[tuple[str, int]]:
    """["127.0.0.1:5353", "::1", "[::1]:53"] -> [(ip, port), ...]; ValueError if bad."""
    out = []
    for spec in specs:
        text = spec.strip()
        host, port = text, 53
        if text.startswith("["):
            match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
            if match is None:
                raise ValueError(f"bad bracketed address in {spec!r}")
            host, port = match.group(1), int(match.group(2) or 53)
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text)
        ipaddress.ip_address(host)
        if not 0 < port < 65536:
            raise ValueError(f"bad port in {spec!r}")
        out.append((host, port))
    return out


# Standard ports; a listener binds at listen.port_offset + this.
PORTS = {
    "smtp": 25,
    "submission": 587,
    "submissions": 465,
    "imap": 143,
    "imaps": 993,
    "pop3": 110,
    "pop3s": 995,
}
