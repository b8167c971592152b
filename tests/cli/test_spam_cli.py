"""`mailward spam train` and `mailward spam status`, run in-process through `main(argv)`."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailward.app import open_store
from mailward.cli.main import main
from mailward.crypto.passwords import PasswordHasher
from mailward.message.mbox import mboxrd_entry
from mailward.store.api import Delivery, LocalTarget

ALICE = "alice@example.org"
PASSWORD = "Velvet-otter-harbour-31"


@dataclass
class Result:
    rc: int
    out: str
    err: str


Run = Callable[..., Result]


@pytest.fixture(scope="module")
def hasher() -> Iterator[PasswordHasher]:
    h = PasswordHasher(workers=1, time_cost=1, memory_cost=8, parallelism=1)
    yield h
    h.close()


@pytest.fixture
def data(tmp_path: Path, hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAILWARD_DATA", str(tmp_path / "data"))
    assert main(["init", "--domain", "example.org", "--port-offset", "10000"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["user", "add", ALICE, "--password-stdin"], password_hasher=hasher) == 0
    return tmp_path / "data"


@pytest.fixture
def cli(data: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    yield run


def spam(n: int) -> bytes:
    return (
        f"From: Deals <promo{n}@cheap-meds.example>\r\nTo: {ALICE}\r\n"
        f"Subject: CHEAP PILLS {n} !!!\r\n\r\n"
        f"Buy viagra cialis pills online, discount {n}, discreet shipping.\r\n"
    ).encode()


def ham(n: int) -> bytes:
    return (
        f"From: Ben <ben@partner.example>\r\nTo: {ALICE}\r\n"
        f"Subject: Project meeting {n}\r\n\r\n"
        f"Agenda for the project meeting: milestone {n} review and budget.\r\n"
    ).encode()


def status(cli: Run) -> dict[str, object]:
    result = cli("spam", "status", ALICE, "--json")
    assert result.rc == 0, result.err
    parsed: dict[str, object] = json.loads(result.out)
    return parsed


def test_help(cli: Run) -> None:
    for argv in (["spam", "train", "--help"], ["spam", "status", "--help"]):
        result = cli(*argv)
        assert result.rc == 0
        assert "examples:" in result.out and "mailward spam" in result.out


def test_train_from_files_status_and_idempotence(cli: Run, tmp_path: Path) -> None:
    text = cli("spam", "status", ALICE)
    assert text.rc == 0
    assert text.out.splitlines() == [
        f"{ALICE}: trained 0 spam, 0 ham",
        "Bayes filter: learning (needs at least 10 spam and 10 ham)",
    ]
    box = tmp_path / "spam.mbox"
    box.write_bytes(
        b"".join(mboxrd_entry(spam(n), sender="x@example.net", date=0) for n in range(12))
    )
    result = cli("spam", "train", ALICE, "--spam", str(box))
    assert result.rc == 0, result.err
    assert result.out.strip() == f"trained 12 messages as spam for {ALICE} (0 already trained)"
    again = cli("spam", "train", ALICE, "--spam", str(box))
    assert again.out.strip() == f"trained 0 messages as spam for {ALICE} (12 already trained)"

    # Single messages (LF or CRLF: the same message) and a Maildir, as ham.
    files = []
    for n in range(8):
        path = tmp_path / f"ham{n}.eml"
        path.write_bytes(ham(n))
        files.append(str(path))
    lf = tmp_path / "ham0-lf.eml"
    lf.write_bytes(ham(0).replace(b"\r\n", b"\n"))
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n in (8, 9):
        (maildir / "cur" / f"{n}.host:2,S").write_bytes(ham(n))
    result = cli("spam", "train", ALICE, "--ham", *files, str(lf), str(maildir))
    assert result.rc == 0, result.err
    assert result.out.strip() == f"trained 10 messages as ham for {ALICE} (1 already trained)"
    assert status(cli) == {
        "address": ALICE,
        "spam": 12,
        "ham": 10,
        "min_trained": 10,
        "enabled": True,
        "active": True,
    }
    assert "Bayes filter: active" in cli("spam", "status", ALICE).out

    # A spam message trained as ham after all: moved, not counted twice.
    single = tmp_path / "was-spam.eml"
    single.write_bytes(spam(3))
    result = cli("spam", "train", ALICE, "--ham", str(single))
    assert result.out.strip() == f"trained 1 message as ham for {ALICE} (0 already trained)"
    counts = status(cli)
    assert (counts["spam"], counts["ham"], counts["active"]) == (11, 11, True)


def test_train_reports_what_it_skips_and_refuses(cli: Run, tmp_path: Path) -> None:
    junk = tmp_path / "not-mail.txt"
    junk.write_bytes(b"\x00\x01 this is no message")
    good = tmp_path / "good.eml"
    good.write_bytes(spam(1))
    result = cli("spam", "train", ALICE, "--spam", str(junk), str(good))
    assert result.rc == 0
    assert "skipped" in result.err and "not-mail.txt" in result.err
    assert result.out.strip().endswith("; skipped 1 (see above)")

    def refused(*argv: str, words: tuple[str, ...]) -> None:
        result = cli(*argv)
        assert result.rc == 2, result
        assert result.err.startswith("mailward: error: ")
        for word in words:
            assert word in result.err

    refused("spam", "train", ALICE, "--spam", words=("--spam", "expected"))
    refused("spam", "train", ALICE, "--from-mailboxes", str(good), words=("unrecognized",))
    refused("spam", "train", ALICE, "--spam", str(good), "--ham", str(good), words=("allowed",))
    refused("spam", "train", ALICE, words=("one of the arguments",))
    refused("spam", "train", ALICE, "--spam", str(tmp_path / "missing"), words=("no such",))
    refused("spam", "train", "nobody@example.org", "--spam", str(good), words=("no user",))
    refused("spam", "status", "nobody@example.org", words=("no user",))
    refused("spam", "train", ALICE, "--from-mailboxes", "--limit", "0", words=("limit",))


def test_train_from_mailboxes(cli: Run, data: Path) -> None:
    async def fill() -> None:
        store = await open_store(data)
        try:
            account = await store.get_account(ALICE)
            assert account is not None

            async def put(mailbox: str, content: bytes, flags: frozenset[str]) -> None:
                target = LocalTarget(account.id, mailbox, flags)
                path = store.new_spool()
                await store.deliver(Delivery(path, "", [target], [], content=content))

            for n in range(5):
                await put("Junk", spam(n), frozenset())
            await put("Junk", spam(99), frozenset({"$NotJunk"}))  # the user said: not junk
            for n in range(4):
                await put("INBOX", ham(n), frozenset())
            await put("INBOX", spam(98), frozenset({"$Junk"}))  # marked junk, not moved
            for n in range(4, 7):
                await put("Archive", ham(n), frozenset())
        finally:
            await store.close()

    asyncio.run(fill())
    result = cli("spam", "train", ALICE, "--from-mailboxes")
    assert result.rc == 0, result.err
    assert result.out.splitlines() == [
        "trained 5 messages from Junk as spam (0 already trained)",
        "trained 7 messages from INBOX and Archive as ham (0 already trained)",
    ]
    counts = status(cli)
    assert (counts["spam"], counts["ham"]) == (5, 7)
    again = cli("spam", "train", ALICE, "--from-mailboxes", "--limit", "2")
    assert again.out.splitlines() == [
        "trained 0 messages from Junk as spam (2 already trained)",
        "trained 0 messages from INBOX and Archive as ham (2 already trained)",
    ]


def test_status_when_bayes_is_off(cli: Run) -> None:
    assert main(["config", "set", "spam.bayes", "false"]) == 0
    result = cli("spam", "status", ALICE)
    assert "Bayes filter: off (spam.bayes = false)" in result.out
    assert status(cli)["active"] is False
