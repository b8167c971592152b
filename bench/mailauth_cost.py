"""Cost per message of the inbound authentication check (SPF + HELO SPF + DKIM x2 +
ARC + DMARC + the Authentication-Results field), with the in-memory resolver, so the
figure is our CPU cost without network latency.

Reference, measured in the same run: dkimpy verifying the same two signatures
synchronously with a dict lookup (`dkim.DKIM(msg).verify(idx)`), i.e. the floor any
DKIM-verifying receiver in Python pays; the difference is SPF, DMARC, the thread and
DNS bridging, and the header.

    .venv/bin/python bench/mailauth_cost.py [--messages 300] [--concurrency 1,16]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import dkim

from mailward.crypto.dkim import dns_records, generate_domain_keys, sign_message
from mailward.logs import EventLog
from mailward.pipeline.authentication import MessageAuthenticator, MessageSource
from mailward.pipeline.types import Envelope, SessionInfo
from mailward.testing.fake_dns import FakeResolver


def build(tmp: Path) -> tuple[FakeResolver, bytes, bytes]:
    keys = generate_domain_keys(tmp, "sender.test", selector_date="202401")
    dns = FakeResolver()
    for name, rtype, value in dns_records("sender.test", "mail.sender.test", keys):
        if rtype == "TXT" and name == "sender.test":
            value = "v=spf1 ip4:192.0.2.10 include:_spf.sender.test -all"
        dns.add(name, rtype, value)
    dns.add("_spf.sender.test", "TXT", "v=spf1 ip4:198.51.100.0/24 -all")
    body = b"".join(b"Line %04d of an ordinary message body.\r\n" % i for i in range(200))
    msg = (
        b"From: News <news@sender.test>\r\nTo: alice@example.test\r\nSubject: bench\r\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench@sender.test>\r\n\r\n" + body
    )
    signed = sign_message(msg, keys[0]) + sign_message(msg, keys[1]) + msg
    return dns, msg, signed


async def per_message(dns: FakeResolver, message: bytes, n: int, concurrency: int) -> float:
    check = MessageAuthenticator(dns, "mx.example.test", EventLog(io.StringIO()))
    session = SessionInfo("mx", "192.0.2.10", 4000, "b", helo="mail.sender.test")
    section = message.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    source = MessageSource(message, Path("/nonexistent"), 0, len(message))
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            _result, report = await check.check(
                session, Envelope("bounce@sender.test"), section, source
            )
            assert report.action == "accept", report

    await one()  # warm up (PSL load, imports)
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return (time.perf_counter() - start) / n


def dkimpy_floor(dns: FakeResolver, signed: bytes, n: int) -> float:
    txt = {f"{k}.".encode(): v[0].encode() for (k, t), v in dns.records.items() if t == "TXT"}

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return txt.get(name)

    start = time.perf_counter()
    for _ in range(n):
        d = dkim.DKIM(signed)
        assert d.verify(idx=0, dnsfunc=lookup) and d.verify(idx=1, dnsfunc=lookup)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dns, plain, signed = build(Path(tmp))
        figures: dict[str, object] = {"messages": args.messages, "size": len(signed)}
        for c in [int(x) for x in args.concurrency.split(",")]:
            runs = [
                asyncio.run(per_message(dns, signed, args.messages, c)) for _ in range(args.repeat)
            ]
            figures[f"signed_ms_per_msg_c{c}"] = round(statistics.median(runs) * 1000, 3)
            runs = [
                asyncio.run(per_message(dns, plain, args.messages, c)) for _ in range(args.repeat)
            ]
            figures[f"unsigned_ms_per_msg_c{c}"] = round(statistics.median(runs) * 1000, 3)
        floor = statistics.median(
            dkimpy_floor(dns, signed, args.messages) for _ in range(args.repeat)
        )
        figures["reference_dkimpy_verify_2_sigs_ms"] = round(floor * 1000, 3)
        first = f"signed_ms_per_msg_c{args.concurrency.split(',')[0]}"
        figures[f"{first}_over_reference"] = round(float(str(figures[first])) / (floor * 1000), 2)
    print(json.dumps({"bench": "mailauth_cost", **figures}))


if __name__ == "__main__":
    main()
