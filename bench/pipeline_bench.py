"""bench/pipeline_bench: the full inbound pipeline (SPF/DKIM/DMARC, attachment policy,
clamd, DLP, spam scoring, the durable store) in messages/s, and the share of
end-of-data time each check takes. Not a test: nothing is asserted about timings.

    .venv/bin/python bench/pipeline_bench.py                 # 2000 messages, 8 senders
    .venv/bin/python bench/pipeline_bench.py --quick         # 200 messages, < 1 minute
    .venv/bin/python bench/pipeline_bench.py --rspamd        # + a real rspamd (~300 MB)

In one process, as root or any user: a data directory made by `mailward init` (one
account, bench@example.test) copied fresh for every run and opened with
`mailward.app.open_store`; the `Pipeline` and its content checks built as
`mailward.app._serve` builds them (`content_checks(config, ...)`) from that config
with `malware.clamd` pointing at a real private clamd (`mailward.testing.clamd`,
EICAR test signature; a fresh one per run, because clamd caches the hashes of clean
files and would answer the next run's identical corpus from that cache) and
`spam.dnsbl = ["bl.test"]`; DNS from a `TestDns` (in a child
process, so its Python does not compete with the pipeline for the GIL) serving SPF,
DKIM (Ed25519 + RSA-2048) and DMARC p=reject for sender.test, PTR/A for the client
addresses and the DNSBL zone, where 127.0.0.2 is listed. When the spam check has a
Bayes filter, the account's filter is trained first on 30 + 30 separate messages.

Each message goes through `Pipeline.mail_from`, `rcpt_to` and `end_of_data` exactly as
`net.smtp_server.SmtpSession` drives them: MX listener, our trace fields
(`pipeline.trace.trace_headers`) in front, into a `MessageSpool` (memory up to 64 KiB,
else a spool file), from --concurrency concurrent senders, after an unmeasured
warm-up of 20 other messages.

Corpus (deterministic, --seed; `mailward.testing.gateway_corpus` with its `BENCH_MIX`,
shared with tests/e2e/test_gateway_corpus.py): ham from sender.test, DKIM-signed (text;
text+HTML alternative; with a PDF, zip or docx attachment up to 1 MB), spam-like
HTML-only mail with link shorteners and capital subjects (from 127.0.0.2, listed, and
from 127.0.0.1, not listed), a few GTUBE and EICAR (made at run time) messages and
From-spoofs of sender.test. Every run's outcomes are checked against what the
configuration should do (the run's JSON line has `outcomes` and `unexpected`; exit
status 1 if anything was unexpected).

Timing: each content check is wrapped in a proxy (same name, applies, check), and so
are the authenticator's check and `store.deliver`; each message's times are summed
per key. `share` = that key's time / all end_of_data time, `other` is the rest (header
parsing, the header rewrite, Junk lookup, logging). With several senders the times are
latencies that include waiting for the event loop behind other messages; the
`full_c1` run (one sender) gives costs that add up.

Configurations, one JSON line each, all measured in this run on the same corpus:
`reference` (content checks off, authentication on), `malware_only`, `full`,
`full_no_dns_cache` (`full` without the resolver's answer cache, to show what it
saves), `reference_c1` and `full_c1` (one sender), `full_rspamd` with --rspamd. Every
other run caches DNS answers as `mailward serve` does (`dns.cache_max_ttl`).
`ratio_vs_reference` = msgs/s / the reference's msgs/s at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import inspect
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailward.app import content_checks, open_store
from mailward.config.load import load_config
from mailward.config.schema import CONFIG_FILE, Config
from mailward.crypto.dkim import DkimKey
from mailward.logs import EventLog
from mailward.net.smtp_server import MessageSpool
from mailward.pipeline.content import ContentCheck, MessageView
from mailward.pipeline.runner import Pipeline
from mailward.pipeline.spam import UNTRUSTED_FIELDS
from mailward.pipeline.trace import trace_headers
from mailward.pipeline.types import CheckResult, SessionInfo
from mailward.proto.smtp_events import MailFrom, RcptTo
from mailward.resolver import DnsResolver
from mailward.store.api import Delivery, DeliveryReceipt, MailStore
from mailward.testing.clamd import ClamdHarnessError, TestClamd, clamd_available
from mailward.testing.gateway_corpus import (
    BENCH_MIX,
    DNSBL,
    CorpusMaker,
    CorpusMessage,
    build_corpus,
    dns_data,
    sender_keys,
)

DOMAIN = "example.test"
RECIPIENT = f"bench@{DOMAIN}"
HOSTNAME = "localhost"
SPOOL_CHUNK = 64 * 1024  # what one read of the SMTP session hands the spool
WARMUP = 20
CHECK_KEYS = ("auth", "attachments", "malware", "dlp", "spam", "store")

# Share of the corpus per kind (the rest is ham_text).
MIX = BENCH_MIX


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------------------- corpus


def _signer(key: DkimKey) -> Callable[[bytes], bytes]:
    """`crypto.dkim.sign_message` for `key` with the private key read once: that function
    loads and checks the PEM file on every call (~20 ms for RSA-2048)."""
    private_key = serialization.load_pem_private_key(key.private_key_path.read_bytes(), None)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        raw = private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        secret, algorithm = base64.b64encode(raw), b"ed25519-sha256"
    else:
        assert isinstance(private_key, rsa.RSAPrivateKey)
        secret = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        algorithm = b"rsa-sha256"
    selector, domain = key.selector.encode(), key.domain.encode()

    def sign(message: bytes) -> bytes:
        signature: bytes = dkim.sign(
            message,
            selector,
            domain,
            secret,
            signature_algorithm=algorithm,
            canonicalize=(b"relaxed", b"relaxed"),
        )
        return signature

    return sign


def fast_signer(keys: list[DkimKey]) -> Callable[[bytes], bytes]:
    """The DKIM-Signature fields of every key, as `gateway_corpus.dkim_signer` makes
    them, with each private key loaded once."""
    signers = [_signer(k) for k in keys]
    return lambda message: b"".join(sign(message) for sign in signers)


def make_corpus(n: int, seed: int, keys: list[DkimKey]) -> list[CorpusMessage]:
    return build_corpus(seed, n, keys, recipients=[RECIPIENT], mix=MIX, sign=fast_signer(keys))


def training_corpus(seed: int, keys: list[DkimKey], each: int) -> list[tuple[CorpusMessage, bool]]:
    maker = CorpusMaker(seed + 7919, keys, recipients=[RECIPIENT], sign=fast_signer(keys))
    out = [(maker.make(("ham_text", "ham_alt")[i % 2]), False) for i in range(each)]
    return out + [(maker.make("spam_unlisted"), True) for _ in range(each)]


# --------------------------------------------------------------------------- DNS


def _dns_child(conn: Connection, zones: list[str], records: list[tuple[str, str, str]]) -> None:
    """Runs in a child process: a TestDns until told to stop (or the parent goes)."""
    from mailward.testing.dns_server import TestDns

    with TestDns() as server:
        for zone in zones:
            server.add_zone(zone)
        for name, rtype, value in records:
            server.add(name, rtype, value)
        conn.send(server.address)
        while True:
            try:
                command = conn.recv()
            except EOFError:
                return
            if command == "queries":
                conn.send(len(server.queries))
            else:
                return


class DnsProcess:
    def __init__(self, zones: list[str], records: list[tuple[str, str, str]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_dns_child, args=(child, zones, records), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(60):
            self.stop()
            raise BenchError("the TestDns child did not start within 60 s")
        self.address: str = self.conn.recv()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def queries(self) -> int:
        self.conn.send("queries")
        return int(self.conn.recv())

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU of process `pid` (Linux /proc), None if unreadable."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- timing

# The record of the message whose transaction the current task is driving.
_current: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "pipeline_bench_message", default=None
)


def _note(key: str, seconds: float) -> dict[str, Any] | None:
    record = _current.get()
    if record is not None:
        record[key] = record.get(key, 0.0) + seconds
    return record


class TimedCheck:
    """A ContentCheck that times the one it wraps (same name, applies, check)."""

    def __init__(self, inner: ContentCheck) -> None:
        self.inner = inner
        self.name = inner.name

    def applies(self, session: SessionInfo) -> bool:
        return self.inner.applies(session)

    async def check(self, message: MessageView) -> CheckResult:
        start = time.perf_counter()
        try:
            result = await self.inner.check(message)
        finally:
            record = _note(self.name, time.perf_counter() - start)
        if record is not None and result.refused:
            record["refused_by"] = self.name
        return result


def instrument(pipeline: Pipeline, store: MailStore) -> None:
    """Time the authenticator and the store's deliver() (instance attributes shadow
    the methods; the pipeline calls them through these objects)."""
    authenticator = pipeline._authenticator
    auth_check = authenticator.check

    async def timed_auth(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            result, report = await auth_check(*args, **kwargs)
        finally:
            record = _note("auth", time.perf_counter() - start)
        if record is not None and result.refused:
            record["refused_by"] = "auth"
        return result, report

    deliver = store.deliver

    async def timed_deliver(delivery: Delivery) -> DeliveryReceipt:
        record = _current.get()
        if record is not None and "target" not in record:
            if delivery.hold is not None:
                record["target"] = f"held:{delivery.hold.check}"
            elif any(t.mailbox != "INBOX" or "$Junk" in t.flags for t in delivery.local):
                record["target"] = "junk"
            else:
                record["target"] = "inbox"
        start = time.perf_counter()
        try:
            return await deliver(delivery)
        finally:
            _note("store", time.perf_counter() - start)

    setattr(authenticator, "check", timed_auth)  # noqa: B010 - shadow the method
    setattr(store, "deliver", timed_deliver)  # noqa: B010


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True, slots=True)
class RunConfig:
    name: str
    checks: str  # "none" | "malware" | "all"
    concurrency: int
    rspamd: bool = False
    dns_cache: bool = True  # the resolver's answer cache (dns.cache_max_ttl), as served


def expected(kind: str, checks: str, rspamd: bool = False) -> set[str]:
    """The outcomes a sample of `kind` may have with these content checks."""
    if rspamd and kind.startswith("spam"):
        # rspamd's own score (the packaged rules) can put spam over the reject score.
        return {"junk", "refused:spam:550"}
    refused_spam = "refused:spam:550"
    table: dict[str, dict[str, set[str]]] = {
        "ham_text": {"all": {"inbox"}},
        "ham_alt": {"all": {"inbox"}},
        "ham_attach": {"all": {"inbox"}},
        "spam_listed": {"all": {"junk"}},
        # Under the Junk threshold on its rules alone; the trained Bayes filter (when
        # there is one) may put it over.
        "spam_unlisted": {"all": {"inbox", "junk"}},
        "gtube": {"all": {refused_spam}},
        "eicar": {"all": {"refused:malware:554"}, "malware": {"refused:malware:554"}},
        "spoof": {"all": {"refused:auth:550"}, "none": {"refused:auth:550"}},
    }
    row = table[kind]
    if checks in row:
        return row[checks]
    if kind == "spoof":
        return row["none"]
    return {"inbox"}  # without the check that would act on it


def build_pipeline(
    config: Config,
    store: MailStore,
    log: EventLog,
    dns_address: str,
    checks: str,
    *,
    dns_cache: bool = True,
) -> tuple[Pipeline, str]:
    """As mailward.app._serve builds it; returns (pipeline, what Bayes does)."""
    resolver = DnsResolver(
        [dns_address],
        timeout=config.dns.timeout,
        cache_max_ttl=config.dns.cache_max_ttl if dns_cache else 0.0,
    )
    pipeline_kwargs: dict[str, Any] = {"resolver": resolver, "hostname": config.server.hostname}
    if "abuse" in inspect.signature(Pipeline).parameters:
        from mailward.pipeline.abuse import TransactionLimits

        pipeline_kwargs["abuse"] = TransactionLimits(store, log, config.abuse)
    pipeline = Pipeline(store, log, **pipeline_kwargs)
    params = inspect.signature(content_checks).parameters
    kwargs: dict[str, Any] = {"resolver": resolver}
    bayes = "absent"
    if "store" in params:
        kwargs["store"] = store
        bayes = "store"
    if "bayes" in params and config.spam.bayes:
        from mailward.spam.bayes import BayesFilter

        kwargs["bayes"] = BayesFilter(store, min_trained=config.spam.bayes_min_trained)
        bayes = "on"
    every = content_checks(config, log, **kwargs)
    chosen: list[ContentCheck] = {
        "none": [],
        "malware": [c for c in every if c.name == "malware"],
        "all": list(every),
    }[checks]
    pipeline.content_checks = [TimedCheck(c) for c in chosen]
    if config.spam.enabled:
        pipeline.untrusted_fields = UNTRUSTED_FIELDS
    pipeline.notify_held_recipients = config.quarantine.notify_recipients
    pipeline.notify_held_sender = config.quarantine.notify_sender
    instrument(pipeline, store)
    return pipeline, bayes if checks == "all" else "off"


async def transaction(
    pipeline: Pipeline, store: MailStore, sample: CorpusMessage, session_id: str
) -> tuple[int, float]:
    """MAIL, RCPT, DATA into a spool, end_of_data; (reply code, end_of_data seconds)."""
    session = SessionInfo("mx", sample.source_ip, 40000, session_id, helo=sample.helo)
    mail = MailFrom(sample.sender, {}, None, False, None)
    reply, envelope = await pipeline.mail_from(session, mail)
    if envelope is None:
        return reply.code, 0.0
    local, _, domain = RECIPIENT.partition("@")
    rcpt = RcptTo(RECIPIENT, local, domain, False, {}, False)
    reply = await pipeline.rcpt_to(session, envelope, rcpt)
    if reply.code != 250:
        return reply.code, 0.0
    prefix = trace_headers(session, envelope, HOSTNAME, f"{session_id}.0", None)
    spool = MessageSpool(store.new_spool(), prefix)
    data = sample.data
    for i in range(0, len(data), SPOOL_CHUNK):
        spool.write(data[i : i + SPOOL_CHUNK])
    content = spool.finish()
    start = time.perf_counter()
    reply = await pipeline.end_of_data(
        session, envelope, spool.path, content, len(prefix), len(data)
    )
    return reply.code, time.perf_counter() - start


async def drive(
    pipeline: Pipeline,
    store: MailStore,
    corpus: list[CorpusMessage],
    concurrency: int,
    tag: str,
    *,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], float]:
    records: list[dict[str, Any]] = [{} for _ in corpus]
    queue = iter(range(len(corpus)))
    done = 0
    step = max(1, len(corpus) // 4)

    async def sender() -> None:
        nonlocal done
        for i in queue:
            record = records[i]
            token = _current.set(record)
            try:
                code, eod = await transaction(pipeline, store, corpus[i], f"{tag}{i}")
            finally:
                _current.reset(token)
            record["code"] = code
            record["end_of_data"] = eod
            done += 1
            if progress and done % step == 0:
                print(f"  {tag}: {done}/{len(corpus)}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return records, time.perf_counter() - start


def outcome(record: dict[str, Any]) -> str:
    if record["code"] == 250:
        return str(record.get("target", "?"))
    return f"refused:{record.get('refused_by', 'pipeline')}:{record['code']}"


async def one_run(
    run: RunConfig,
    config: Config,
    template: Path,
    root: Path,
    dns: DnsProcess,
    clamd_pid: int | None,
    corpus: list[CorpusMessage],
    warm: list[CorpusMessage],
) -> dict[str, Any]:
    data_dir = root / f"run-{run.name}"
    shutil.copytree(template, data_dir, symlinks=True)
    log_file = open(root / f"{run.name}.log", "w", encoding="utf-8", buffering=64 * 1024)  # noqa: SIM115
    log = EventLog(log_file, "info")
    store = await open_store(data_dir)
    try:
        pipeline, bayes = build_pipeline(
            config, store, log, dns.address, run.checks, dns_cache=run.dns_cache
        )
        await drive(pipeline, store, warm, 1, f"warm-{run.name}-", progress=False)
        queries0 = dns.queries()
        cpu0, clamd0, dns0 = time.process_time(), cpu_seconds(clamd_pid), cpu_seconds(dns.pid)
        records, wall = await drive(pipeline, store, corpus, run.concurrency, f"{run.name}-")
        cpu1, clamd1, dns1 = time.process_time(), cpu_seconds(clamd_pid), cpu_seconds(dns.pid)
        queries = dns.queries() - queries0
    finally:
        await store.close()
        log.flush()
        log_file.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    n = len(corpus)
    names = [c.name for c in pipeline.content_checks]
    eod_total = sum(r["end_of_data"] for r in records)
    share: dict[str, float | None] = {}
    ms: dict[str, float | None] = {}
    for key in CHECK_KEYS:
        present = key in ("auth", "store") or key in names
        total = sum(r.get(key, 0.0) for r in records)
        share[key] = round(total / eod_total, 4) if present and eod_total else None
        ms[key] = round(total / n * 1000, 3) if present else None
    for extra in sorted(set(names) - set(CHECK_KEYS)):
        total = sum(r.get(extra, 0.0) for r in records)
        share[extra], ms[extra] = round(total / eod_total, 4), round(total / n * 1000, 3)
    keys = set(CHECK_KEYS) | set(names)
    timed = sum(r.get(k, 0.0) for r in records for k in keys)
    share["other"] = round((eod_total - timed) / eod_total, 4) if eod_total else None
    ms["other"] = round((eod_total - timed) / n * 1000, 3)
    ms["end_of_data"] = round(eod_total / n * 1000, 3)
    eods = sorted(r["end_of_data"] for r in records)
    counts = Counter(outcome(r) for r in records)
    unexpected = [
        (i, s.kind, outcome(r))
        for i, (s, r) in enumerate(zip(corpus, records, strict=True))
        if outcome(r) not in expected(s.kind, run.checks, run.rspamd)
    ]
    for i, kind, got in unexpected[:10]:
        print(
            f"pipeline_bench: {run.name}: message {i} ({kind}) -> {got}, expected "
            f"{sorted(expected(kind, run.checks, run.rspamd))}",
            file=sys.stderr,
        )

    def delta(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) / n * 1000, 3)

    return {
        "bench": "pipeline",
        "config": run.name,
        "checks": names or ["(none)"],
        "messages": n,
        "concurrency": run.concurrency,
        "msgs_per_s": round(n / wall, 1),
        "ratio_vs_reference": None,
        "share": share,
        "ms_per_msg": ms,
        "end_of_data_ms": {
            "p50": round(statistics.median(eods) * 1000, 2),
            "p95": round(eods[min(n - 1, int(n * 0.95))] * 1000, 2),
            "max": round(eods[-1] * 1000, 2),
        },
        "cpu_ms_per_msg": {
            "mailward": round((cpu1 - cpu0) / n * 1000, 3),
            "clamd": delta(clamd0, clamd1),
            "dns_server": delta(dns0, dns1),
        },
        "dns_queries_per_msg": round(queries / n, 2),
        "bayes": bayes,
        "outcomes": dict(sorted(counts.items())),
        "unexpected": len(unexpected),
        "wall_s": round(wall, 2),
    }


# --------------------------------------------------------------------------- setup


def cli(data_dir: Path, *args: str, stdin: bytes | None = None) -> None:
    cmd = [sys.executable, "-m", "mailward", *args, "--data", str(data_dir)]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.decode()}")


async def prepare_template(
    template: Path, config: Config, keys: list[DkimKey], seed: int, train: int
) -> str:
    """Train the account's Bayes filter when the spam check would use it."""
    params = inspect.signature(content_checks).parameters
    if not config.spam.bayes or not ({"bayes", "store"} & set(params)) or train <= 0:
        return "untrained"
    from mailward.spam.tokens import message_tokens

    store = await open_store(template)
    try:
        account = await store.get_account(RECIPIENT)
        assert account is not None
        for i, (sample, is_spam) in enumerate(training_corpus(seed, keys, train)):
            await store.bayes_train(
                account.id, f"bench-train-{i}", message_tokens(sample.data), is_spam
            )
    finally:
        await store.close()
    return f"trained {train} ham + {train} spam"


def bench_config(template: Path, dns_address: str, clamd: str, rspamd: str) -> Config:
    config = load_config(template / CONFIG_FILE)
    return dataclasses.replace(
        config,
        dns=dataclasses.replace(config.dns, resolvers=[dns_address], timeout=3.0),
        malware=dataclasses.replace(config.malware, clamd=clamd),
        spam=dataclasses.replace(config.spam, enabled=True, dnsbl=[DNSBL], rspamd=rspamd),
    )


def run_all(args: argparse.Namespace, runs: list[RunConfig]) -> list[dict[str, Any]]:
    """Set everything up, do every run; prints and returns the JSON lines."""
    lines: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="mw-pipeline-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        root = Path(tmp)
        t0 = time.perf_counter()
        keys = sender_keys(root / "sender-keys")
        corpus = make_corpus(args.messages, args.seed, keys)
        # Other messages for the unmeasured warm-up (nothing scanned twice).
        warm = make_corpus(WARMUP, args.seed + 1_000_003, keys)
        sizes = [len(s.data) for s in corpus]
        print(
            f"pipeline_bench: corpus of {len(corpus)} ({sum(sizes) / 2**20:.1f} MiB, "
            f"{dict(Counter(s.kind for s in corpus))}) in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        zones, records = dns_data(keys)
        dns = DnsProcess(zones, records)
        stack.callback(dns.stop)
        rspamd_url = ""
        if args.rspamd:
            from mailward.testing.rspamd import TestRspamd

            rspamd_url = stack.enter_context(TestRspamd(dns=dns.address)).url
        template = root / "template"
        cli(template, "init", "--domain", DOMAIN, "--hostname", HOSTNAME, "--listen", "127.0.0.1")
        cli(
            template,
            "user",
            "add",
            RECIPIENT,
            "--password-stdin",
            stdin=b"correct-horse-battery-staple-42\n",
        )
        config = bench_config(template, dns.address, "", "")
        training = asyncio.run(
            prepare_template(template, config, keys, args.seed, args.bayes_train)
        )
        print(f"pipeline_bench: setup done, Bayes {training}", file=sys.stderr)
        reference: dict[int, float] = {}
        for run in runs:
            print(
                f"pipeline_bench: run {run.name} (concurrency {run.concurrency})", file=sys.stderr
            )
            with contextlib.ExitStack() as per_run:
                # A fresh clamd per run: its cache of clean files would otherwise answer
                # for the corpus the previous run had it scan.
                clamd, clamd_pid = "", None
                if run.checks != "none":
                    scanner = per_run.enter_context(TestClamd(directory=root / "clamd"))
                    clamd = scanner.address
                    clamd_pid = scanner._process.pid if scanner._process is not None else None
                cfg = bench_config(template, dns.address, clamd, rspamd_url if run.rspamd else "")
                line = asyncio.run(one_run(run, cfg, template, root, dns, clamd_pid, corpus, warm))
            if run.checks == "none":
                reference[run.concurrency] = line["msgs_per_s"]
            ref = reference.get(run.concurrency)
            line["ratio_vs_reference"] = round(line["msgs_per_s"] / ref, 3) if ref else None
            line["reference"] = (
                f"reference{'' if run.concurrency == args.concurrency else '_c1'}: same corpus, "
                "content checks off, authentication on, measured in this run"
            )
            line["bayes_training"] = training if line["bayes"] == "on" else None
            line["corpus"] = {
                "mean_bytes": round(statistics.fmean(sizes)),
                "max_bytes": max(sizes),
                "spooled": sum(1 for s in sizes if s > 64 * 1024),
                "seed": args.seed,
            }
            print(json.dumps(line), flush=True)
            lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="200 messages (< 1 minute)")
    ap.add_argument("--rspamd", action="store_true", help="also a run with a real rspamd")
    ap.add_argument("--no-single", action="store_true", help="skip the one-sender runs")
    ap.add_argument("--bayes-train", type=int, default=30, help="ham and spam each; 0: none")
    args = ap.parse_args(argv)
    if args.quick:
        args.messages = 200
    if args.messages < 1 or args.concurrency < 1:
        ap.error("--messages and --concurrency must be positive")
    if not clamd_available():
        print("pipeline_bench: clamd missing (Debian package clamav-daemon)", file=sys.stderr)
        return 2
    if args.rspamd:
        from mailward.testing.rspamd import rspamd_available

        if not rspamd_available():
            print("pipeline_bench: rspamd missing (Debian package rspamd)", file=sys.stderr)
            return 2

    runs = [
        RunConfig("reference", "none", args.concurrency),
        RunConfig("malware_only", "malware", args.concurrency),
        RunConfig("full", "all", args.concurrency),
        RunConfig("full_no_dns_cache", "all", args.concurrency, dns_cache=False),
    ]
    if args.rspamd:
        runs.append(RunConfig("full_rspamd", "all", args.concurrency, rspamd=True))
    if not args.no_single and args.concurrency != 1:
        runs += [RunConfig("reference_c1", "none", 1), RunConfig("full_c1", "all", 1)]

    try:
        lines = run_all(args, runs)
    except (BenchError, ClamdHarnessError) as exc:
        print(f"pipeline_bench: {exc}", file=sys.stderr)
        return 1
    bad = sum(line["unexpected"] for line in lines)
    if bad:
        print(f"pipeline_bench: {bad} unexpected outcomes (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
