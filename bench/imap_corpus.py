"""bench/imap_corpus: the deterministic mail corpus of bench/imap_bench.py.

Not a test. `message(i, seed)` returns message number `i` of the corpus as CRLF bytes
plus its IMAP flags and internal date; the result depends only on (i, seed), so any
slice of the corpus can be generated in any process and the bytes are the same for
both servers and across runs.

Mix (after research/peers.md's generator, with smaller attachments so 100,000 messages
stay around 1.5 GB): 55 % text/plain (0.5-4 KB), 25 % multipart/alternative text+HTML
(2-10 KB of text), 20 % multipart/mixed with one or two base64 attachments (pdf, png,
zip, csv; 2-40 KB each). From/To with some non-ASCII display names (RFC 2047 encoded),
some Cc, "Re:"/"Fwd:" subjects with In-Reply-To/References, Date headers spread over
about three years in order of `i`. `SEARCH_WORD` appears in the Subject of ~1 % of the
messages (it is not in the ordinary word list). Flags: ~60 % \\Seen, ~5 % \\Flagged.

`write_maildir(dest, n, seed)` writes messages 0..n-1 into `dest/cur` (in parallel
worker processes) with Dovecot-compatible Maildir names whose leading timestamp orders
them by `i` (Dovecot assigns UIDs to new files in that order) and the file mtime set to
the internal date (Dovecot's INTERNALDATE for Maildir). `read_maildir(dest)` yields them
back in the same order, so the mailward loader stores the identical bytes.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import format_datetime, formataddr
from pathlib import Path

CORPUS_VERSION = 1
SEARCH_WORD = "kumquat"
SEARCH_FRACTION = 0.01
FIRST_DATE = 1_600_000_000  # 2020-09-13
DATE_STEP = 900  # seconds between consecutive messages (100,000 msgs ~ 2.9 years)

WORDS = [
    "alpha", "beta", "gamma", "delta", "invoice", "meeting", "report", "budget", "quarterly",
    "server", "mail", "release", "plan", "review", "update", "urgent", "hello", "thanks",
    "regards", "project", "status", "draft", "lorem", "ipsum", "dolor", "sit", "amet",
    "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod", "tempor", "schedule",
    "agenda", "customer", "contract", "shipping", "order", "payment", "reminder", "minutes",
    "deadline", "summary", "launch",
]  # fmt: skip
NAMES = [
    "Alice Archer", "Bob Baker", "Carol Cook", "Dave Diaz", "Eve Evans", "Frank Ford",
    "Grace Gray", "Heidi Hahn", "Ivan Ito", "Judy Jones", "Mallory Moss", "Olivia Ortiz",
    "Zoë Zürich", "Łukasz Ławski", "Søren Sørensen", "José Núñez", "Ærin Åberg",
]  # fmt: skip
DOMAINS = ["example.test", "example.org", "mail.example.net", "corp.example.com"]
ATTACHMENTS = {
    "pdf": "application/pdf",
    "png": "image/png",
    "zip": "application/zip",
    "csv": "text/csv",
}


def _text(rng: random.Random, nbytes: int) -> str:
    out, n = [], 0
    while n < nbytes:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12)))
        out.append(line)
        n += len(line) + 2
    return "\r\n".join(out) + "\r\n"


def _address(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    local = name.split()[0].lower().encode("ascii", "ignore").decode() or "user"
    return formataddr((name, f"{local}@{rng.choice(DOMAINS)}"), charset="utf-8")


def _b64(data: bytes) -> str:
    raw = base64.b64encode(data).decode("ascii")
    return "\r\n".join(raw[k : k + 76] for k in range(0, len(raw), 76)) + "\r\n"


def _boundary(rng: random.Random, i: int) -> str:
    return f"=_bench_{i}_{rng.getrandbits(48):012x}"


def internal_date(i: int) -> float:
    return float(FIRST_DATE + i * DATE_STEP + 600)


def message(i: int, seed: int = 1) -> tuple[bytes, frozenset[str], float]:
    """Message number `i`: (CRLF bytes, IMAP flags, internal date as a Unix time)."""
    rng = random.Random(f"imap-bench:{seed}:{i}")
    date = FIRST_DATE + i * DATE_STEP + rng.randint(0, DATE_STEP - 1)
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))).capitalize()
    if rng.random() < SEARCH_FRACTION:
        words = subject.split()
        words.insert(rng.randint(0, len(words)), SEARCH_WORD)
        subject = " ".join(words)
    prefix = rng.random()
    reply = prefix < 0.30
    subject = ("Re: " if reply else "Fwd: " if prefix < 0.35 else "") + subject + f" #{i}"
    headers = [
        f"Return-Path: <bounce-{i}@{rng.choice(DOMAINS)}>",
        f"Received: from mx{rng.randint(1, 9)}.example.net"
        f" (mx.example.net [192.0.2.{rng.randint(1, 254)}])"
        f"\r\n\tby mail.example.test with ESMTPS id {rng.getrandbits(40):010x}"
        f"\r\n\tfor <bench@example.test>; {format_datetime(datetime.fromtimestamp(date + 5, UTC))}",
        f"From: {_address(rng)}",
        f"To: {_address(rng)}",
    ]
    if rng.random() < 0.2:
        headers.append("Cc: " + ", ".join(_address(rng) for _ in range(rng.randint(1, 3))))
    headers += [
        f"Subject: {subject}",
        f"Date: {format_datetime(datetime.fromtimestamp(date, UTC))}",
        f"Message-ID: <{i}.{rng.getrandbits(32):08x}@example.test>",
    ]
    if reply and i > 0:
        parent = rng.randint(max(0, i - 500), i - 1)
        headers += [f"In-Reply-To: <{parent}.ref@example.test>",
                    f"References: <{parent}.ref@example.test>"]  # fmt: skip
    headers.append("MIME-Version: 1.0")
    kind = rng.random()
    if kind < 0.55:
        headers += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 7bit"]
        body = _text(rng, rng.randint(500, 4000))
    elif kind < 0.80:
        b = _boundary(rng, i)
        text = _text(rng, rng.randint(2000, 10000))
        html = "<html><body><p>" + text.replace("\r\n", "</p>\r\n<p>") + "</p></body></html>\r\n"
        headers.append(f'Content-Type: multipart/alternative; boundary="{b}"')
        body = (
            f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 7bit\r\n\r\n{text}"
            f"--{b}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 7bit\r\n\r\n{html}--{b}--\r\n"
        )
    else:
        b = _boundary(rng, i)
        headers.append(f'Content-Type: multipart/mixed; boundary="{b}"')
        parts = [
            f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Transfer-Encoding: 7bit\r\n\r\n{_text(rng, rng.randint(300, 3000))}"
        ]
        for k in range(rng.randint(1, 2)):
            ext = rng.choice(list(ATTACHMENTS))
            size = rng.randint(2_000, 40_000)
            data = _text(rng, size).encode() if ext == "csv" else rng.randbytes(size)
            name = f"file-{i}-{k}.{ext}"
            parts.append(
                f'--{b}\r\nContent-Type: {ATTACHMENTS[ext]}; name="{name}"\r\n'
                f'Content-Disposition: attachment; filename="{name}"\r\n'
                f"Content-Transfer-Encoding: base64\r\n\r\n{_b64(data)}"
            )
        body = "This is a multi-part message in MIME format.\r\n" + "".join(parts) + f"--{b}--\r\n"
    data = ("\r\n".join(headers) + "\r\n\r\n" + body).encode("utf-8")
    flags = set()
    if rng.random() < 0.6:
        flags.add("\\Seen")
    if rng.random() < 0.05:
        flags.add("\\Flagged")
    return data, frozenset(flags), internal_date(i)


def big_message(size: int = 25 * 1024 * 1024, seed: int = 1) -> bytes:
    """One message of about `size` bytes: a short text part and one big base64 attachment."""
    rng = random.Random(f"imap-bench-big:{seed}")
    b = "=_bench_big"
    raw = rng.randbytes(int(size * 3 / 4 * 76 / 78) - 2048)
    head = (
        "From: Big Sender <big@example.org>\r\nTo: bench@example.test\r\n"
        "Subject: A 25 MB message\r\nDate: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
        "Message-ID: <big.1@example.test>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
        f"--{b}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attachment.\r\n"
        f'--{b}\r\nContent-Type: application/octet-stream; name="big.bin"\r\n'
        'Content-Disposition: attachment; filename="big.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode() + _b64(raw).encode() + f"--{b}--\r\n".encode()


def small_message(k: int) -> bytes:
    """A small message for APPEND in the mixed load."""
    return (
        f"From: Load Client <load@example.org>\r\nTo: bench@example.test\r\n"
        f"Subject: mixed load append {k}\r\nDate: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
        f"Message-ID: <load.{k}@example.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        + "hello from the mixed load, a short line of text\r\n"
        * 20
    ).encode()


# --------------------------------------------------------------------------- Maildir

_NAME = re.compile(r"^(\d+)\.M(\d+)P\d+\.imapbench,S=(\d+):2,([A-Z]*)$")
_FLAG_CHARS = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Deleted": "T", "\\Draft": "D"}
_CHAR_FLAGS = {v: k for k, v in _FLAG_CHARS.items()}


def maildir_name(i: int, size: int, flags: frozenset[str]) -> str:
    chars = "".join(sorted(_FLAG_CHARS[f] for f in flags))
    return f"{FIRST_DATE + i}.M{i}P1.imapbench,S={size}:2,{chars}"


def _write_range(args: tuple[str, int, int, int]) -> tuple[int, int]:
    cur, start, stop, seed = args
    total = 0
    for i in range(start, stop):
        data, flags, idate = message(i, seed)
        path = os.path.join(cur, maildir_name(i, len(data), flags))
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (idate, idate))
        total += len(data)
    return stop - start, total


def write_maildir(dest: Path, n: int, seed: int = 1, workers: int | None = None) -> dict[str, int]:
    """Write messages 0..n-1 into the Maildir `dest` (created); returns a manifest."""
    for sub in ("cur", "new", "tmp"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    chunk = 1000
    jobs = [(str(dest / "cur"), s, min(n, s + chunk), seed) for s in range(0, n, chunk)]
    workers = workers or os.cpu_count() or 1
    total = 0
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _count, size in pool.imap_unordered(_write_range, jobs):
                total += size
    else:
        for job in jobs:
            total += _write_range(job)[1]
    manifest = {"version": CORPUS_VERSION, "messages": n, "seed": seed, "bytes": total}
    (dest / "corpus.json").write_text(json.dumps(manifest))
    return manifest


def maildir_manifest(dest: Path) -> dict[str, int] | None:
    try:
        return json.loads((dest / "corpus.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def read_maildir(dest: Path) -> Iterator[tuple[int, Path, frozenset[str], float]]:
    """(i, path, flags, internal date) of every corpus file in `dest/cur`, in order of i."""
    entries = []
    for entry in os.scandir(dest / "cur"):
        m = _NAME.match(entry.name)
        if m:
            flags = frozenset(_CHAR_FLAGS[c] for c in m.group(4))
            entries.append((int(m.group(2)), Path(entry.path), flags))
    entries.sort(key=lambda e: e[0])
    for i, path, flags in entries:
        yield i, path, flags, internal_date(i)
