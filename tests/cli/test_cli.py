"""The `mailward` command line, run in-process through `main(argv)`.

A low-cost argon2id hasher is injected (`main(..., password_hasher=...)`) so user
commands do not spend ~100 ms and 64 MiB a hash.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailward.app import open_store
from mailward.cli.main import main
from mailward.crypto.passwords import PasswordHasher, password_problem
from mailward.store.api import MessageInfo

DOMAIN = "example.org"
GOOD_PASSWORD = "Velvet-otter-harbour-31"


@dataclass
class Result:
    rc: int
    out: bytes
    err: str

    @property
    def text(self) -> str:
        return self.out.decode()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


@pytest.fixture(scope="module")
def hasher() -> Iterator[PasswordHasher]:
    h = PasswordHasher(workers=1, time_cost=1, memory_cost=8, parallelism=1)
    yield h
    h.close()


class Cli:
    def __init__(
        self, capsysbinary: pytest.CaptureFixture[bytes], mp: pytest.MonkeyPatch, h: PasswordHasher
    ) -> None:
        self._cap = capsysbinary
        self._mp = mp
        self._hasher = h

    def __call__(self, *argv: str, stdin: str = "") -> Result:
        self._cap.readouterr()
        self._mp.setattr(sys, "stdin", io.StringIO(stdin))
        rc = main(list(argv), password_hasher=self._hasher)
        out, err = self._cap.readouterr()
        return Result(rc, out, err.decode())


@pytest.fixture
def cli(
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
    hasher: PasswordHasher,
) -> Cli:
    monkeypatch.delenv("MAILWARD_DATA", raising=False)
    return Cli(capsysbinary, monkeypatch, hasher)


@pytest.fixture
def data(cli: Cli, tmp_path: Path) -> Path:
    directory = tmp_path / "data"
    result = cli("init", "--data", str(directory), "--domain", DOMAIN, "--port-offset", "10000")
    assert result.rc == 0, result.err
    return directory


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_usage_error(result: Result, *words: str) -> None:
    assert result.rc == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailward: error: "), result.err
    for word in words:
        assert word in lines[0]


def stored(data_dir: Path, address: str, mailbox: str = "INBOX") -> list[tuple[MessageInfo, bytes]]:
    async def go() -> list[tuple[MessageInfo, bytes]]:
        store = await open_store(data_dir)
        try:
            account = await store.get_account(address)
            assert account is not None
            infos = sorted(await store.list_messages(account.id, mailbox), key=lambda m: m.uid)
            return [(i, await store.read_message(account.id, mailbox, i.uid)) for i in infos]
        finally:
            await store.close()

    return asyncio.run(go())


# --------------------------------------------------------------------------- help


def test_help_as_a_subprocess() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mailward", "--help"], capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0
    out = result.stdout.decode()
    for word in ("init", "user", "alias", "domain", "config", "export", "import", "serve"):
        assert word in out
    assert "examples:" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "add", "--help"],
        ["init", "--help"],
        ["import", "--help"],
        ["config", "set", "--help"],
    ],
)
def test_every_command_explains_itself(cli: Cli, argv: list[str]) -> None:
    result = cli(*argv)
    assert result.rc == 0
    assert "examples:" in result.text and "mailward " + argv[0] in result.text


def test_usage_errors_are_one_line_exit_2(cli: Cli) -> None:
    assert_usage_error(cli("frobnicate"), "invalid choice")
    assert_usage_error(cli("user", "add"), "address")
    assert_usage_error(cli("user", "list"), "--data", "MAILWARD_DATA")


def test_uninitialised_directory_is_refused(cli: Cli, tmp_path: Path) -> None:
    assert_usage_error(cli("user", "list", "--data", str(tmp_path)), "mailward init")
    assert_usage_error(cli("serve", "--data", str(tmp_path)), "mailward init")
    assert not (tmp_path / "mailward.db").exists()  # nothing created as a side effect


# --------------------------------------------------------------------------- init


def test_init_layout_modes_and_output(cli: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "new" / "data"
    result = cli(
        "init", "--data", str(directory), "--domain", "Example.ORG", "--port-offset", "10000",
        "--listen", "127.0.0.1",
    )  # fmt: skip
    assert result.rc == 0, result.err
    assert mode(directory) == 0o700
    assert mode(directory / "tls") == 0o700
    assert mode(directory / "mailward.toml") == 0o600
    assert mode(directory / "tls" / "key.pem") == 0o600
    assert (directory / "tls" / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert mode(directory / "mailward.db") == 0o600
    keys = list((directory / "dkim" / "example.org").glob("*.key"))
    assert len(keys) == 2 and all(mode(k) == 0o600 for k in keys)
    assert not list(directory.glob(".*"))  # no staging file left behind

    toml = (directory / "mailward.toml").read_text()
    assert 'hostname = "mail.example.org"' in toml
    assert "port_offset = 10000" in toml and 'address = "127.0.0.1"' in toml

    out = result.text
    assert "example.org. 3600 IN MX 10 mail.example.org." in out
    assert '"v=spf1 mx -all"' in out
    assert "_domainkey.example.org. 3600 IN TXT" in out and "v=DKIM1" in out
    assert "_dmarc.example.org. 3600 IN TXT" in out
    assert "10025" in out and "10587" in out and "10465" in out
    # the long RSA DKIM record is split into <=255-octet strings
    for line in out.splitlines():
        for piece in line.split('"')[1::2]:
            assert len(piece) <= 255

    assert cli("domain", "list", "--data", str(directory)).lines == ["example.org"]


def test_init_refuses_an_initialised_directory(cli: Cli, data: Path) -> None:
    before = (data / "mailward.toml").read_bytes()
    assert_usage_error(cli("init", "--data", str(data), "--domain", "x.org"), "already")
    assert (data / "mailward.toml").read_bytes() == before


def test_init_validation(cli: Cli, tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    assert_usage_error(cli("init", "--data", d, "--domain", "bad domain"), "domain")
    assert_usage_error(
        cli("init", "--data", d, "--domain", DOMAIN, "--cert", str(tmp_path / "c")), "--key"
    )
    assert_usage_error(cli("init", "--data", d, "--domain", DOMAIN, "--listen", "nope"), "nope")
    assert_usage_error(cli("init", "--data", d, "--domain", DOMAIN, "--port-offset", "70000"))
    assert not (tmp_path / "d").exists()


def test_init_installs_given_certificate(cli: Cli, tmp_path: Path) -> None:
    from mailward.crypto.tls import generate_self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed(["mx.example.org"], cert, key)
    directory = tmp_path / "d"
    result = cli(
        "init", "--data", str(directory), "--domain", DOMAIN, "--hostname", "mx.example.org",
        "--cert", str(cert), "--key", str(key),
    )  # fmt: skip
    assert result.rc == 0, result.err
    assert (directory / "tls" / "cert.pem").read_bytes() == cert.read_bytes()
    assert (directory / "tls" / "key.pem").read_bytes() == key.read_bytes()
    assert mode(directory / "tls" / "key.pem") == 0o600
    assert "MX 10 mx.example.org." in result.text


def test_init_refuses_mismatched_certificate(cli: Cli, tmp_path: Path) -> None:
    from mailward.crypto.tls import generate_self_signed

    generate_self_signed(["a.example"], tmp_path / "a.pem", tmp_path / "a.key")
    generate_self_signed(["b.example"], tmp_path / "b.pem", tmp_path / "b.key")
    directory = tmp_path / "d"
    result = cli(
        "init", "--data", str(directory), "--domain", DOMAIN,
        "--cert", str(tmp_path / "a.pem"), "--key", str(tmp_path / "b.key"),
    )  # fmt: skip
    assert_usage_error(result, "does not match")
    assert not (directory / "mailward.toml").exists()


# --------------------------------------------------------------------------- users


def test_user_add_generates_password_and_postmaster(cli: Cli, data: Path) -> None:
    result = cli("user", "add", "Alice@Example.org", "--data", str(data))
    assert result.rc == 0, result.err
    last = result.lines[-1]
    assert last.startswith("password: ")
    password = last.removeprefix("password: ")
    assert password_problem(password) is None and len(password) >= 16
    assert sum(line.startswith("password:") for line in result.lines) == 1
    assert "postmaster@example.org" in result.text and "4.5.1" in result.text
    assert password not in result.err

    second = cli(
        "user", "add", "bob@example.org", "--password-stdin", "--data", str(data),
        stdin=GOOD_PASSWORD + "\n",
    )  # fmt: skip
    assert second.rc == 0, second.err
    assert "postmaster" not in second.text
    assert not any(line.startswith("password:") for line in second.lines)

    aliases = cli("alias", "list", "--data", str(data)).lines
    assert aliases == ["postmaster@example.org -> alice@example.org"]
    users = cli("user", "list", "--data", str(data)).lines
    assert [u.split()[0] for u in users] == ["alice@example.org", "bob@example.org"]
    assert "postmaster@example.org" in users[0]


def test_user_add_refusals(cli: Cli, data: Path) -> None:
    d = str(data)
    weak = cli("user", "add", "carol@example.org", "--password-stdin", "--data", d, stdin="abc\n")
    assert_usage_error(weak, "shorter than 12")
    common = cli(
        "user", "add", "carol@example.org", "--password-stdin", "--data", d,
        stdin="carol@example.org-Xy1!\n",
    )  # fmt: skip
    assert_usage_error(common, "address")
    assert_usage_error(cli("user", "add", "carol@elsewhere.net", "--data", d), "not a local domain")
    assert_usage_error(cli("user", "add", "not-an-address", "--data", d), "invalid address")
    assert_usage_error(
        cli("user", "add", "carol@example.org", "--password-stdin", "--data", d, stdin=""),
        "no password",
    )
    assert cli("user", "list", "--data", d).lines == []
    assert cli("user", "add", "carol@example.org", "--data", d).rc == 0
    assert_usage_error(cli("user", "add", "CAROL@example.org", "--data", d), "already in use")


def test_user_passwd_and_del(cli: Cli, data: Path, hasher: PasswordHasher) -> None:
    d = str(data)
    assert cli("user", "add", "dave@example.org", "--data", d, stdin="").rc == 0

    async def hash_of(address: str) -> str:
        store = await open_store(data)
        try:
            account = await store.get_account(address)
            assert account is not None
            return account.password_hash
        finally:
            await store.close()

    new = "Granite-kettle-swallow-88"
    result = cli("user", "passwd", "dave@example.org", "--password-stdin", "--data", d, stdin=new)
    assert result.rc == 0, result.err
    stored_hash = asyncio.run(hash_of("dave@example.org"))
    assert stored_hash.startswith("$argon2id$") and new not in stored_hash
    assert asyncio.run(hasher.verify(stored_hash, new))

    generated = cli("user", "passwd", "dave@example.org", "--data", d)
    password = generated.lines[-1].removeprefix("password: ")
    assert asyncio.run(hasher.verify(asyncio.run(hash_of("dave@example.org")), password))
    assert not asyncio.run(hasher.verify(asyncio.run(hash_of("dave@example.org")), new))

    weak = cli("user", "passwd", "dave@example.org", "--password-stdin", "--data", d, stdin="dave")
    assert_usage_error(weak, "password refused")
    assert_usage_error(cli("user", "passwd", "nobody@example.org", "--data", d), "no user")

    deleted = cli("user", "del", "dave@example.org", "--data", d)
    assert deleted.rc == 0
    assert "removed alias postmaster@example.org" in deleted.text
    assert "postmaster" in deleted.err  # warned: the domain lost its postmaster
    assert cli("user", "list", "--data", d).lines == []
    assert cli("alias", "list", "--data", d).lines == []
    assert_usage_error(cli("user", "del", "dave@example.org", "--data", d), "no user")


# --------------------------------------------------------------------------- aliases, domains


def test_aliases(cli: Cli, data: Path) -> None:
    d = str(data)
    cli("user", "add", "erin@example.org", "--data", d)
    assert cli("alias", "add", "Sales@example.org", "erin@example.org", "--data", d).rc == 0
    assert "sales@example.org -> erin@example.org" in cli("alias", "list", "--data", d).lines
    assert_usage_error(
        cli("alias", "add", "sales@example.org", "erin@example.org", "--data", d), "in use"
    )
    assert_usage_error(
        cli("alias", "add", "x@example.org", "ghost@example.org", "--data", d), "no user"
    )
    assert_usage_error(
        cli("alias", "add", "x@other.net", "erin@example.org", "--data", d), "not a local domain"
    )
    assert cli("alias", "del", "sales@example.org", "--data", d).rc == 0
    assert "sales@example.org -> erin@example.org" not in cli("alias", "list", "--data", d).lines
    assert_usage_error(cli("alias", "del", "sales@example.org", "--data", d), "no alias")


def test_domains(cli: Cli, data: Path) -> None:
    d = str(data)
    added = cli("domain", "add", "Example.NET", "--data", d)
    assert added.rc == 0, added.err
    assert "example.net. 3600 IN MX 10 mail.example.org." in added.text
    assert "._domainkey.example.net. 3600 IN TXT" in added.text
    assert len(list((data / "dkim" / "example.net").glob("*.key"))) == 2
    assert cli("domain", "list", "--data", d).lines == ["example.net", "example.org"]
    assert_usage_error(cli("domain", "add", "example.net", "--data", d), "already")
    assert_usage_error(cli("domain", "add", "../etc", "--data", d), "invalid domain")
    assert cli("user", "add", "frank@example.net", "--data", d).rc == 0


# --------------------------------------------------------------------------- config


def test_config_show_and_set(cli: Cli, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILWARD_DATA", str(data))  # --data from the environment
    shown = json.loads(cli("config", "show", "--json").text)
    assert shown["server"]["hostname"] == "mail.example.org"
    assert shown["listen"]["port_offset"] == 10000
    assert "[limits]" in cli("config", "show").text

    result = cli("config", "set", "limits.recipients", "50")
    assert result.rc == 0, result.err
    assert json.loads(cli("config", "show", "--json").text)["limits"]["recipients"] == 50
    assert mode(data / "mailward.toml") == 0o600

    before = (data / "mailward.toml").read_bytes()
    bad = cli("config", "set", "limits.recipients", "lots")
    assert_usage_error(bad, "limits.recipients", "mailward.toml")
    assert_usage_error(cli("config", "set", "nosuch.key", "1"), "nosuch.key")
    assert (data / "mailward.toml").read_bytes() == before


# --------------------------------------------------------------------------- export / import

MESSAGES = [
    b"Return-Path: <sender@example.net>\r\nSubject: one\r\n\r\nFrom the top\r\n"
    b">From quoted\r\n>>From twice\r\n",
    b"Subject: binary\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\x80\x81\xfe\xff caf\xe9\r\n"
    b"\x00nul\r\n",
    b"Subject: no final line ending\r\n\r\nlast",
    b"Subject: blank lines at the end\r\n\r\nbody\r\n\r\n\r\n",
]
LF_ONLY = b"Subject: lf only\n\nFrom here\n>From there\nbye\n"


def mboxrd(messages: list[bytes]) -> bytes:
    from mailward.message.mbox import mboxrd_entry

    return b"".join(
        mboxrd_entry(m, sender="x@example.net", date=1_600_000_000 + i)
        for i, m in enumerate(messages)
    )


def test_export_import_round_trip_is_byte_exact(cli: Cli, data: Path, tmp_path: Path) -> None:
    d = str(data)
    cli("user", "add", "gina@example.org", "--data", d)
    cli("user", "add", "hank@example.org", "--data", d)
    source = tmp_path / "in.mbox"
    source.write_bytes(mboxrd([*MESSAGES, LF_ONLY]))

    result = cli("import", "gina@example.org", str(source), "--data", d)
    assert result.rc == 0, result.err
    assert "imported 5 messages" in result.text

    messages = stored(data, "gina@example.org")
    expected = [*MESSAGES, LF_ONLY.replace(b"\n", b"\r\n")]
    assert [m for _, m in messages] == expected
    assert [int(i.internal_date) for i, _ in messages] == [1_600_000_000 + i for i in range(5)]

    first = cli("export", "gina@example.org", "--data", d)
    assert first.rc == 0, first.err
    assert first.out.startswith(b"From sender@example.net Sun Sep 13 12:26:40 2020\r\n")
    assert b"\r\nFrom MAILER-DAEMON Sun Sep 13 12:26:41 2020\r\n" in first.out
    assert b"\r\n>From the top\r\n>>From quoted\r\n>>>From twice\r\n" in first.out

    exported = tmp_path / "out.mbox"
    exported.write_bytes(first.out)
    assert cli("import", "hank@example.org", str(exported), "--data", d, "--mailbox", "Old").rc == 0
    assert [m for _, m in stored(data, "hank@example.org", "Old")] == expected
    second = cli("export", "hank@example.org", "--mailbox", "Old", "--data", d)
    assert second.out == first.out


def test_export_errors(cli: Cli, data: Path) -> None:
    d = str(data)
    assert_usage_error(cli("export", "nobody@example.org", "--data", d), "no user")
    cli("user", "add", "ivy@example.org", "--data", d)
    assert_usage_error(cli("export", "ivy@example.org", "--mailbox", "Nope", "--data", d), "Nope")
    empty = cli("export", "ivy@example.org", "--data", d)
    assert empty.rc == 0 and empty.out == b""


def test_import_skips_malformed_entries(cli: Cli, data: Path, tmp_path: Path) -> None:
    d = str(data)
    cli("user", "add", "jack@example.org", "--data", d)
    source = tmp_path / "mixed.mbox"
    source.write_bytes(
        mboxrd([MESSAGES[0]])
        + b"From x Thu Jan  1 00:00:00 1970\r\nthis is no header\r\n\r\n"
        + mboxrd([MESSAGES[1]])
    )
    result = cli("import", "jack@example.org", str(source), "--data", d)
    assert result.rc == 0
    assert "imported 2 messages" in result.text and "skipped 1" in result.text
    assert "skipped message 2 (line 9)" in result.err and "header" in result.err
    assert [m for _, m in stored(data, "jack@example.org")] == MESSAGES[:2]


def test_import_refuses_missing_source_and_non_maildir(
    cli: Cli, data: Path, tmp_path: Path
) -> None:
    d = str(data)
    cli("user", "add", "kim@example.org", "--data", d)
    assert_usage_error(cli("import", "kim@example.org", str(tmp_path / "nope"), "--data", d))
    assert_usage_error(cli("import", "kim@example.org", str(tmp_path), "--data", d), "Maildir")


def test_import_maildir_with_flags(cli: Cli, data: Path, tmp_path: Path) -> None:
    d = str(data)
    cli("user", "add", "lee@example.org", "--data", d)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    files = [
        ("cur/1000.M1.host:2,S", b"Subject: seen\r\n\r\n1\r\n", 1_000_000),
        ("cur/2000.M2.host:2,FRT", b"Subject: flagged\n\nFrom lf\n", 2_000_000),
        ("cur/3000.M3.host:2,D", b"Subject: draft\r\n\r\n3\r\n", 3_000_000),
        ("new/4000.M4.host", b"Subject: new\r\n\r\n4\r\n", 4_000_000),
        ("tmp/5000.M5.host", b"Subject: unfinished\r\n\r\n", 5_000_000),
    ]
    for name, body, mtime in files:
        (maildir / name).write_bytes(body)
        os.utime(maildir / name, (mtime, mtime))
    result = cli("import", "lee@example.org", str(maildir), "--data", d, "--mailbox", "Archive")
    assert result.rc == 0, result.err
    assert "imported 4 messages" in result.text
    messages = stored(data, "lee@example.org", "Archive")
    assert [set(i.flags) & {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}
            for i, _ in messages] == [
        {"\\Seen"},
        {"\\Flagged", "\\Answered", "\\Deleted"},
        {"\\Draft"},
        set(),
    ]  # fmt: skip
    assert [i.internal_date for i, _ in messages] == [1e6, 2e6, 3e6, 4e6]
    assert messages[1][1] == b"Subject: flagged\r\n\r\nFrom lf\r\n"
    assert messages[0][1] == b"Subject: seen\r\n\r\n1\r\n"
