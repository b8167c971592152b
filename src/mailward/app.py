"""The composition root: turns a data directory into running objects.

Only this module (and tests) import concrete store backends; everything else talks to
`store.api.MailStore` (DESIGN.md 1). `serve()` validates the whole configuration and
the TLS material before any port is bound, so a bad config exits with status 2 and a
message naming the key and the file.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from mailward.auth import Authenticator, AuthPolicy
from mailward.config.load import ConfigError, load_config
from mailward.config.schema import CONFIG_FILE, Config
from mailward.crypto.passwords import PasswordHasher
from mailward.crypto.tls import TlsConfigError, server_context
from mailward.logs import EventLog, open_log
from mailward.message.archives import ArchiveLimits
from mailward.net.imap_server import imap_services, imap_session_factory
from mailward.net.listener import MailService
from mailward.net.pop3_listener import pop3_services, pop3_session_factory
from mailward.net.smtp_server import smtp_services, smtp_session_factory
from mailward.pipeline.abuse import TransactionLimits
from mailward.pipeline.attachments import AttachmentPolicy
from mailward.pipeline.content import ContentCheck
from mailward.pipeline.dlp import DlpCheck
from mailward.pipeline.malware import MalwareCheck
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.spam import UNTRUSTED_FIELDS, SpamCheck
from mailward.queue.mta_sts import MtaStsCache
from mailward.queue.worker import QueueWorker, WorkerConfigError, WorkerSettings
from mailward.resolver import DnsResolver, Resolver
from mailward.scan.clamd import ClamdClient
from mailward.scan.rspamd import RspamdClient
from mailward.spam.bayes import BayesFilter
from mailward.spam.blocklists import (
    DEFAULT_DNSBL_SCORE,
    DEFAULT_RHSBL_SCORE,
    Blocklists,
    parse_zone,
)
from mailward.spam.tokens import message_tokens
from mailward.spam.training import JunkTrainer
from mailward.store.api import MailStore

SHUTDOWN_GRACE = 30.0
LOG_FLUSH_INTERVAL = 0.2


async def open_store(data_dir: Path) -> MailStore:
    """Open the embedded store of `data_dir` (creating its files if missing)."""
    from mailward.store.sqlite import SqliteStore

    return await SqliteStore.open(data_dir)


def resolve(data_dir: Path, path: str) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else data_dir / candidate


def serve(data_dir: Path) -> int:
    """Run every listener until SIGTERM/SIGINT; returns the process exit status."""
    config_path = data_dir / CONFIG_FILE
    if not config_path.exists():
        print(f"mailward: error: {config_path} not found (run 'mailward init')", file=sys.stderr)
        return 2
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"mailward: error: {exc}", file=sys.stderr)
        return 2
    try:
        tls = server_context(resolve(data_dir, config.tls.cert), resolve(data_dir, config.tls.key))
    except (TlsConfigError, OSError, ValueError) as exc:
        print(f"mailward: error: {config_path}: tls: {exc}", file=sys.stderr)
        return 2
    try:
        # Reads the smarthost password now, once (never logged).
        delivery = WorkerSettings.from_config(config, data_dir)
    except WorkerConfigError as exc:
        print(f"mailward: error: {config_path}: {exc}", file=sys.stderr)
        return 2
    # asyncio reports every failed client TLS handshake as an error: they are the
    # client's problem, logged by us as events where it matters.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    log = open_log(
        str(resolve(data_dir, config.log.file)) if config.log.file else "",
        config.log.level,
        flush_interval=LOG_FLUSH_INTERVAL,
    )
    return asyncio.run(_serve(data_dir, config, tls, log, delivery))


async def _serve(
    data_dir: Path, config: Config, tls: object, log: EventLog, delivery: WorkerSettings
) -> int:
    import ssl

    assert isinstance(tls, ssl.SSLContext)
    store = await open_store(data_dir)
    hasher = PasswordHasher(workers=config.auth.hash_workers)
    policy = AuthPolicy(
        failures_before_delay=config.auth.failures_before_delay,
        lockout_failures=config.auth.lockout_failures,
        lockout_seconds=config.auth.lockout_seconds,
        net_lockout_failures=config.abuse.auth_failures_per_net,
    )
    authenticator = Authenticator(store, hasher, log, policy)
    resolver = DnsResolver(
        config.dns.resolvers, timeout=config.dns.timeout, cache_max_ttl=config.dns.cache_max_ttl
    )
    abuse = TransactionLimits(store, log, config.abuse)
    pipeline = Pipeline(store, log, resolver=resolver, hostname=config.server.hostname, abuse=abuse)
    # Each user's Bayes filter scores their mail and learns from their Junk moves over
    # IMAP (spam/training.py).
    bayes = BayesFilter(store, min_trained=config.spam.bayes_min_trained)
    pipeline.content_checks = content_checks(
        config, log, resolver=resolver, bayes=bayes if config.spam.bayes else None
    )
    if config.spam.enabled:
        pipeline.untrusted_fields = UNTRUSTED_FIELDS
    pipeline.notify_held_recipients = config.quarantine.notify_recipients
    pipeline.notify_held_sender = config.quarantine.notify_sender
    smtp = smtp_services(config, tls, store, pipeline, authenticator, log)
    factory = smtp_session_factory(config, smtp)
    trainer = JunkTrainer(store, bayes, log) if config.spam.bayes else None
    imap_svc = imap_services(config, tls, store, authenticator, log, trainer=trainer)
    imap = imap_session_factory(imap_svc)
    pop3 = pop3_session_factory(pop3_services(config, tls, store, authenticator, log))
    factories = {"mx": factory, "submission": factory, "imap": imap, "pop3": pop3}
    service = MailService(config, tls, log, factories, probes=abuse.probes)
    try:
        specs = await service.start()
    except OSError as exc:
        log.error("server.bind_failed", error=str(exc))
        print(f"mailward: error: cannot listen: {exc}", file=sys.stderr)
        await store.close()
        hasher.close()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "server.ready",
        hostname=config.server.hostname,
        address=config.listen.address or "*",
        listeners={s.name: s.port for s in specs},
    )
    flusher = asyncio.create_task(_flush_periodically(log))
    # Outbound delivery starts once the listeners are bound (a second `serve` on the
    # same data directory fails to bind and never takes back this one's claims).
    sts = MtaStsCache(data_dir / "mta-sts")
    worker = QueueWorker(store, resolver, log, delivery, sts=sts)
    pipeline.on_queued = worker.wake
    await worker.start()
    await stop.wait()
    log.info("server.stopping", sessions=len(service.sessions))
    await asyncio.gather(service.stop(grace=SHUTDOWN_GRACE), worker.stop(grace=SHUTDOWN_GRACE))
    if trainer is not None:
        await trainer.close()  # before the store closes under it
    await store.close()
    hasher.close()
    log.info("server.stopped")
    flusher.cancel()
    log.flush()
    return 0


def content_checks(
    config: Config,
    log: EventLog,
    *,
    resolver: Resolver | None = None,
    bayes: BayesFilter | None = None,
) -> list[ContentCheck]:
    """The gateway's content checks, in the order they run: the attachment policy,
    malware scanning (when clamd is configured), data-loss rules on outgoing mail,
    spam scoring (when enabled and a resolver is given)."""
    checks: list[ContentCheck] = []
    a = config.attachments
    # Attachments first: a cheap refusal saves the scanner a round trip.
    checks.append(
        AttachmentPolicy(
            log=log,
            action=a.action,
            block_extensions=a.block_extensions,
            allow_extensions=a.allow_extensions,
            inspect_archives=a.inspect_archives,
            uninspectable=a.uninspectable,
            limits=ArchiveLimits(
                max_depth=a.max_archive_depth,
                max_members=a.max_archive_members,
                max_total_size=a.max_expanded_size,
                max_ratio=a.max_compression_ratio,
            ),
        )
    )
    malware = config.malware
    if malware.clamd:
        checks.append(
            MalwareCheck(
                ClamdClient(malware.clamd, timeout=malware.timeout),
                action=malware.action,
                fail_open=malware.fail_open,
                log=log,
                max_size=malware.max_size or config.limits.message_size,
            )
        )
    dlp = config.dlp
    if dlp.enabled:
        checks.append(
            DlpCheck(
                log=log,
                action=dlp.action,
                detectors=dlp.detectors,
                patterns=dlp.patterns,
                keywords=dlp.keywords,
                internal=dlp.internal,
            )
        )
    if config.spam.enabled and resolver is not None:
        checks.append(spam_check(config, log, resolver, bayes))
    return checks


def spam_check(
    config: Config, log: EventLog, resolver: Resolver, bayes: BayesFilter | None = None
) -> SpamCheck:
    """The spam check; `bayes` (each user's filter) is used when given."""
    spam = config.spam
    blocklists = Blocklists(
        resolver,
        dnsbl=[parse_zone(z, DEFAULT_DNSBL_SCORE) for z in spam.dnsbl],
        rhsbl=[parse_zone(z, DEFAULT_RHSBL_SCORE) for z in spam.rhsbl],
        timeout=config.dns.timeout,
    )
    return SpamCheck(
        resolver=resolver,
        log=log,
        hostname=config.server.hostname,
        blocklists=blocklists,
        junk_score=spam.junk_score,
        reject_score=spam.reject_score,
        rspamd=RspamdClient(spam.rspamd, timeout=spam.rspamd_timeout) if spam.rspamd else None,
        bayes=bayes,
        tokenize=message_tokens if bayes is not None else None,
    )


async def _flush_periodically(log: EventLog) -> None:
    while True:
        await asyncio.sleep(LOG_FLUSH_INTERVAL)
        log.flush()
