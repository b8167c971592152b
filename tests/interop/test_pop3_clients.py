"""Interop: POP3 clients nobody here wrote download alice's INBOX byte-exact.

Clients: the standard library's poplib, fetchmail and getmail6 (Debian packages, see
scripts/install-test-deps), over implicit TLS (995, RFC 8314) and STLS on 110 (RFC
2595 4). The INBOX holds the SMTP part of `mail_corpus` (binary attachment, 8bit
UTF-8 with an encoded-word Subject, ~2 MB, lines "." / ".." / "From "); the
reference bytes are what imaplib reads with BODY.PEEK[] (mailward's Return-Path +
Received trace block, then the sent bytes).

What the clients document doing to a message, and so the only differences allowed:

- fetchmail inserts one Received field of its own ("by HOST with POP3
  (fetchmail-VERSION) for <USER> (single-drop); DATE", fetchmail(1) "invisible": it
  "generates a Received header into each message"), after a leading Return-Path;
  with an MDA it strips the CR of every CRLF unless "no stripcr" (fetchmail(1)
  "stripcr": "defaults to 'on' ... when there is an MDA declared").
- getmail6 writes Return-Path (the envelope sender; "if the message already contained
  such a header field, it must be deleted"), Delivered-To and Received at the top
  (getmail configuration.txt, "delivered_to" / "received" options), and a Maildir
  file has native (LF) line ends (getmailcore/message.py Message.flatten()).
"""

from __future__ import annotations

import os
import poplib
import re
import shutil
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer

from .mail_corpus import (
    ALICE,
    PASSWORD,
    Held,
    assert_bytes,
    assert_ok,
    dotted_message,
    find_tool,
    message_id,
    populate,
    read_maildirs,
    run_client,
    server_snapshot,
    smtp_deliver,
    split_header,
    transcript,
    utf8_message,
)

pytestmark = pytest.mark.interop

INBOX_COUNT = 4  # the SMTP part of the corpus


def inbox_by_id(srv: RunningServer) -> dict[str, Held]:
    return {message_id(h.data): h for h in server_snapshot(srv)["INBOX"].values()}


# --------------------------------------------------------------------------- poplib


def pop3s(srv: RunningServer) -> poplib.POP3_SSL:
    client = poplib.POP3_SSL(srv.host, srv.pop3s_port, context=srv.ssl_context(), timeout=60)
    client.user(ALICE)
    client.pass_(PASSWORD)
    return client


def pop3s_when_unlocked(srv: RunningServer, deadline: float = 10.0) -> poplib.POP3_SSL:
    """Log in, retrying while the server still holds the maildrop lock of a session
    whose client just vanished (RFC 2449 8.1.2 [IN-USE])."""
    end = time.monotonic() + deadline
    while True:
        try:
            return pop3s(srv)
        except poplib.error_proto as exc:
            if b"[IN-USE]" not in exc.args[0] or time.monotonic() > end:
                raise
            time.sleep(0.05)


def uidl_map(client: poplib.POP3) -> dict[int, str]:
    resp, lines, _ = client.uidl()
    assert resp.startswith(b"+OK"), resp
    out = {}
    for line in lines:
        number, uid = line.decode("ascii").split(" ")
        # RFC 1939 7: 1 to 70 characters in the range 0x21 to 0x7E.
        assert re.fullmatch(r"[\x21-\x7e]{1,70}", uid), uid
        out[int(number)] = uid
    return out


def retr(client: poplib.POP3, number: int) -> bytes:
    """RETR, with the message rebuilt from poplib's lines: poplib removes the CRLFs and
    the byte-stuffing dot (RFC 1939 3); `octets` counts the CRLFs, not the dots."""
    resp, lines, octets = client.retr(number)
    assert resp.startswith(b"+OK"), resp
    data = b"".join(line + b"\r\n" for line in lines)
    assert octets == len(data), (octets, len(data))
    return data


def test_poplib_retr_byte_exact_uidl_stable_across_sessions(server: RunningServer) -> None:
    populate(server, mailboxes=False)
    reference = inbox_by_id(server)
    assert len(reference) == INBOX_COUNT

    client = pop3s(server)
    try:
        count, size = client.stat()
        assert count == INBOX_COUNT
        assert size == sum(len(h.data) for h in reference.values())
        _, listing, _ = client.list()
        sizes = {int(n): int(s) for n, s in (line.split() for line in listing)}
        first_uidls = uidl_map(client)
        assert sorted(first_uidls) == sorted(sizes) == list(range(1, INBOX_COUNT + 1))
        assert len(set(first_uidls.values())) == INBOX_COUNT
        by_uidl = {}
        for number in sorted(sizes):
            data = retr(client, number)
            want = reference[message_id(data)].data
            assert_bytes(data, want, f"RETR {number}")
            assert sizes[number] == len(want)
            by_uidl[first_uidls[number]] = data
            # TOP n 0: the header and the empty line that ends it (RFC 1939 7).
            _, top, _ = client.top(number, 0)
            head, _ = split_header(want, b"\r\n")
            assert b"".join(line + b"\r\n" for line in top) == head + b"\r\n"
        # Byte-stuffed lines came back unstuffed (".", "..", ".leading dot").
        dots = next(d for d in by_uidl.values() if b"<dots-1@" in d)
        assert b"\r\n.\r\n..\r\n.leading dot\r\n" in dots
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()

    # Same UIDLs in a new session; a new message gets a new, different one.
    client = pop3s(server)
    try:
        assert uidl_map(client) == first_uidls
        client.quit()
    finally:
        client.close()
    smtp_deliver(server, dotted_message("dots-2"))
    client = pop3s(server)
    try:
        uidls = uidl_map(client)
        assert len(uidls) == INBOX_COUNT + 1
        assert {n: uidls[n] for n in first_uidls} == first_uidls
        [new_uidl] = set(uidls.values()) - set(first_uidls.values())
        new_number = next(n for n, u in uidls.items() if u == new_uidl)
        data = retr(client, new_number)
        assert b"<dots-2@interop.test>" in data
        for number, uidl in first_uidls.items():
            assert retr(client, number) == by_uidl[uidl]
        client.quit()
    finally:
        client.close()


def test_poplib_stls_dele_rset_quit(server: RunningServer) -> None:
    populate(server, mailboxes=False)
    reference = inbox_by_id(server)

    client = poplib.POP3(server.host, server.pop3_port, timeout=60)
    try:
        caps = client.capa()
        assert "STLS" in caps and "UIDL" in caps and "TOP" in caps, caps
        assert client.stls(context=server.ssl_context()).startswith(b"+OK")
        assert isinstance(client.sock, ssl.SSLSocket)
        assert "STLS" not in client.capa()
        client.user(ALICE)
        client.pass_(PASSWORD)
        uidls = uidl_map(client)
        # DELE then RSET: nothing is removed (RFC 1939 5).
        client.dele(1)
        client.rset()
        client.quit()
    finally:
        client.close()

    # DELE then a dropped connection (no QUIT): nothing is removed (RFC 1939 6).
    client = pop3s(server)
    client.dele(1)
    client.dele(2)
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()

    client = pop3s_when_unlocked(server)
    try:
        assert uidl_map(client) == uidls
        doomed = {}
        for number in sorted(uidls):
            mid = message_id(retr(client, number))
            if mid.startswith(("utf8-", "dots-")):
                doomed[number] = mid
                assert client.dele(number).startswith(b"+OK")
        assert len(doomed) == 2
        # A deleted message is gone for the rest of the session.
        with pytest.raises(poplib.error_proto):
            client.retr(min(doomed))
        assert client.stat()[0] == INBOX_COUNT - 2
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()

    client = pop3s(server)
    try:
        left = uidl_map(client)
        assert sorted(left.values()) == sorted(u for n, u in uidls.items() if n not in doomed)
        client.quit()
    finally:
        client.close()
    remaining = inbox_by_id(server)
    assert set(remaining) == set(reference) - set(doomed.values())

    client = pop3s(server)
    try:
        for number in uidl_map(client):
            client.dele(number)
        client.quit()
    finally:
        client.close()
    client = pop3s(server)
    try:
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()
    assert server_snapshot(server)["INBOX"] == {}


# --------------------------------------------------------------------------- fetchmail

FETCHMAIL_RECEIVED = re.compile(
    rb"Received: from localhost \[127\.0\.0\.1\]\r?\n"
    rb"\tby [^\r\n]+ with POP3 \(fetchmail-[0-9.]+\)\r?\n"
    rb"\tfor <[^>\r\n]*> \(single-drop\); [^\r\n]+\r?\n"
)


def fetchmail_setup(
    srv: RunningServer,
    tmp_path: Path,
    *,
    implicit_tls: bool,
    options: str,
    host: str = "localhost",
) -> tuple[Path, Path]:
    """(rcfile, directory the MDA writes one file per message into)."""
    base = tmp_path / "fetchmail"
    out = base / "out"
    out.mkdir(parents=True)
    mda = base / "mda.sh"
    # fetchmail runs the MDA once per message with the message on stdin.
    mda.write_text('#!/bin/sh\nf=$(mktemp "$1/msg.XXXXXXXX") || exit 75\nexec cat > "$f"\n')
    mda.chmod(0o755)
    port = srv.pop3s_port if implicit_tls else srv.pop3_port
    rc = base / "fetchmailrc"
    rc.write_text(
        f"""\
set no syslog
set no showdots
poll {host} port {port} protocol pop3 uidl timeout 30
    user "{ALICE}" there with password "{PASSWORD}"
    {"ssl" if implicit_tls else ""} sslproto "tls1.2+" sslcertck sslcertfile "{srv.cert_path}"
    {options}
    mda "{mda} {out}"
""",
        encoding="utf-8",
    )
    rc.chmod(0o600)  # fetchmail refuses a readable rcfile with a password in it
    return rc, out


def fetchmail(rc: Path, tmp_path: Path, *args: str) -> tuple[int, str]:
    proc = run_client(
        [find_tool("fetchmail"), "-f", str(rc), "--nodetach", *args], tmp_path / "home"
    )
    # 0: mail retrieved; 1: no mail (fetchmail(1) EXIT CODES); anything else is an error.
    assert proc.returncode in (0, 1), transcript(proc)
    return proc.returncode, proc.stdout + proc.stderr


def fetched_files(out: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(out.iterdir()):
        data = path.read_bytes()
        files[message_id(data)] = data
    assert len(files) == len(list(out.iterdir())), "a message was delivered twice"
    return files


def without_fetchmail_received(data: bytes, eol: bytes) -> bytes:
    head, rest = split_header(data, eol)
    matches = list(FETCHMAIL_RECEIVED.finditer(head))
    assert len(matches) == 1, f"fetchmail's Received field not found once: {head[:500]!r}"
    [m] = matches
    # After a leading Return-Path (kept first), else at the very top.
    assert m.start() == 0 or head[: m.start()].startswith(b"Return-Path:"), head[:500]
    return head[: m.start()] + head[m.end() :] + rest


def test_fetchmail_pop3s_keep_fetches_only_new(server: RunningServer, tmp_path: Path) -> None:
    populate(server, mailboxes=False)
    rc, out = fetchmail_setup(server, tmp_path, implicit_tls=True, options="keep")
    status, log = fetchmail(rc, tmp_path)
    assert status == 0, log

    reference = inbox_by_id(server)
    files = fetched_files(out)
    assert sorted(files) == sorted(reference)
    for mid, data in files.items():
        assert b"\r" not in data, mid  # stripcr: on with an MDA
        assert_bytes(
            without_fetchmail_received(data, b"\n"),
            reference[mid].data.replace(b"\r\n", b"\n"),
            mid,
        )
    assert len(reference) == INBOX_COUNT  # "keep": still on the server

    # UIDL bookkeeping: a second run finds nothing new, a third only the new message.
    status, log = fetchmail(rc, tmp_path)
    assert status == 1 and len(list(out.iterdir())) == INBOX_COUNT, log
    smtp_deliver(server, utf8_message("utf8-new"))
    status, log = fetchmail(rc, tmp_path)
    assert status == 0, log
    files = fetched_files(out)
    assert len(files) == INBOX_COUNT + 1
    reference = inbox_by_id(server)
    assert_bytes(
        without_fetchmail_received(files["utf8-new@interop.test"], b"\n"),
        reference["utf8-new@interop.test"].data.replace(b"\r\n", b"\n"),
        "new message",
    )


def test_fetchmail_stls_no_keep_empties_inbox(server: RunningServer, tmp_path: Path) -> None:
    populate(server, mailboxes=False)
    reference = inbox_by_id(server)
    rc, out = fetchmail_setup(
        server, tmp_path, implicit_tls=False, options="no keep fetchall no stripcr"
    )
    status, log = fetchmail(rc, tmp_path, "-v")
    assert status == 0, log
    assert "POP3> STLS" in log and "upgrade to TLS succeeded" in log, log[-3000:]
    assert log.index("upgrade to TLS succeeded") < log.index("POP3> PASS"), log[-3000:]
    assert "POP3> QUIT" in log

    files = fetched_files(out)
    assert sorted(files) == sorted(reference)
    for mid, data in files.items():
        # "no stripcr": the CRLF line ends arrive as sent; only the Received is added.
        assert_bytes(without_fetchmail_received(data, b"\r\n"), reference[mid].data, mid)
    assert server_snapshot(server)["INBOX"] == {}
    client = pop3s(server)
    try:
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()


def test_fetchmail_checks_the_certificate_name(server: RunningServer, tmp_path: Path) -> None:
    populate(server, mailboxes=False)
    # The certificate names localhost only; 127.0.0.1 must fail sslcertck.
    rc, out = fetchmail_setup(server, tmp_path, implicit_tls=True, options="keep", host="127.0.0.1")
    proc = run_client([find_tool("fetchmail"), "-f", str(rc), "--nodetach"], tmp_path / "h")
    assert proc.returncode == 2, transcript(proc)  # 2: socket / TLS error
    assert "certificate verify failed" in proc.stdout + proc.stderr, transcript(proc)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- getmail


@pytest.fixture
def getmail_maildir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """(a Maildir, the destination's extra config). getmail will not deliver to a
    Maildir as root ("this 'optional' parameter [user] is required in that situation",
    configuration.txt), so under root it delivers as nobody, into a Maildir that
    nobody can reach (the pytest temp dir is root-only)."""
    if os.geteuid() != 0:
        maildir = tmp_path / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        yield maildir, ""
        return
    base = Path(tempfile.mkdtemp(prefix="mailward-getmail-"))
    try:
        base.chmod(stat.S_IRWXU | stat.S_IXGRP | stat.S_IXOTH)
        maildir = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for path in (maildir, *maildir.iterdir()):
            shutil.chown(path, user="nobody")
        yield maildir, "user = nobody"
    finally:
        shutil.rmtree(base)


def getmail_rc(
    srv: RunningServer,
    tmp_path: Path,
    maildir: tuple[Path, str],
    *,
    delete: bool,
    host: str = "localhost",
) -> Path:
    path, destination_extra = maildir
    rc = tmp_path / "getmailrc"
    rc.write_text(
        f"""\
[retriever]
type = SimplePOP3SSLRetriever
server = {host}
port = {srv.pop3s_port}
username = {ALICE}
password = {PASSWORD}
ca_certs = {srv.cert_path}
timeout = 30

[destination]
type = Maildir
path = {path}/
{destination_extra}

[options]
verbose = 1
read_all = false
delete = {"true" if delete else "false"}
""",
        encoding="utf-8",
    )
    return rc


def getmail(rc: Path, tmp_path: Path) -> str:
    gdir = tmp_path / "getmail-state"
    gdir.mkdir(exist_ok=True)
    argv = [find_tool("getmail"), "--rcfile", str(rc), "--getmaildir", str(gdir)]
    proc = assert_ok(run_client(argv, tmp_path / "home"))
    assert "error" not in (proc.stdout + proc.stderr).lower(), transcript(proc)
    return proc.stdout


GETMAIL_FIELDS = re.compile(
    rb"\AReturn-Path: <(?P<sender>[^>\n]*)>\n"
    rb"Delivered-To: unknown\n"
    rb"Received: from localhost \(127\.0\.0\.1:(?P<port>\d+)\) by \S+ with POP3-SSL\n?"
    rb"[ \t]+getmail6 msgid:(?P<uidl>\S+); [^\n]+\n"
)
RETURN_PATH = re.compile(rb"\AReturn-Path: <([^>\r\n]*)>\r\n")


def assert_getmail_copy(data: bytes, held: Held, uidls: dict[str, str], port: int) -> None:
    m = GETMAIL_FIELDS.match(data)
    assert m, f"getmail's leading fields not found: {data[:400]!r}"
    rp = RETURN_PATH.match(held.data)
    assert rp, held.data[:200]
    assert m.group("sender") == rp.group(1)
    assert int(m.group("port")) == port
    mid = message_id(held.data)
    assert m.group("uidl").decode() == uidls[mid], "getmail saw another UIDL than poplib"
    want = held.data[rp.end() :].replace(b"\r\n", b"\n")
    assert_bytes(data[m.end() :], want, mid)


def pop3_uidls_by_id(srv: RunningServer) -> dict[str, str]:
    client = pop3s(srv)
    try:
        return {message_id(retr(client, number)): uidl for number, uidl in uidl_map(client).items()}
    finally:
        client.quit()
        client.close()


def maildir_by_id(maildir: Path) -> dict[str, bytes]:
    [messages] = read_maildirs(maildir).values()
    out = {message_id(m.data): m.data for m in messages}
    assert len(out) == len(messages), "a message was delivered twice"
    return out


def test_getmail_keep_fetches_only_new(
    server: RunningServer, tmp_path: Path, getmail_maildir: tuple[Path, str]
) -> None:
    populate(server, mailboxes=False)
    reference = inbox_by_id(server)
    uidls = pop3_uidls_by_id(server)
    rc = getmail_rc(server, tmp_path, getmail_maildir, delete=False)
    getmail(rc, tmp_path)

    maildir = getmail_maildir[0]
    files = maildir_by_id(maildir)
    assert sorted(files) == sorted(reference)
    for mid, data in files.items():
        assert_getmail_copy(data, reference[mid], uidls, server.pop3s_port)
    assert len(inbox_by_id(server)) == INBOX_COUNT  # delete = false

    # read_all = false: getmail remembers UIDLs ("oldmail" file), fetches only new ones.
    getmail(rc, tmp_path)
    assert len(maildir_by_id(maildir)) == INBOX_COUNT
    smtp_deliver(server, utf8_message("utf8-new"))
    getmail(rc, tmp_path)
    files = maildir_by_id(maildir)
    assert len(files) == INBOX_COUNT + 1
    reference = inbox_by_id(server)
    uidls = pop3_uidls_by_id(server)
    new = "utf8-new@interop.test"
    assert_getmail_copy(files[new], reference[new], uidls, server.pop3s_port)


def test_getmail_delete_empties_inbox(
    server: RunningServer, tmp_path: Path, getmail_maildir: tuple[Path, str]
) -> None:
    populate(server, mailboxes=False)
    reference = inbox_by_id(server)
    uidls = pop3_uidls_by_id(server)
    rc = getmail_rc(server, tmp_path, getmail_maildir, delete=True)
    getmail(rc, tmp_path)

    files = maildir_by_id(getmail_maildir[0])
    assert sorted(files) == sorted(reference)
    for mid, data in files.items():
        assert_getmail_copy(data, reference[mid], uidls, server.pop3s_port)
    assert server_snapshot(server)["INBOX"] == {}
    client = pop3s(server)
    try:
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()


def test_getmail_checks_the_certificate_name(
    server: RunningServer, tmp_path: Path, getmail_maildir: tuple[Path, str]
) -> None:
    populate(server, mailboxes=False)
    rc = getmail_rc(server, tmp_path, getmail_maildir, delete=True, host="127.0.0.1")
    gdir = tmp_path / "getmail-state"
    gdir.mkdir()
    argv = [find_tool("getmail"), "--rcfile", str(rc), "--getmaildir", str(gdir)]
    proc = run_client(argv, tmp_path / "home")
    assert proc.returncode != 0, transcript(proc)
    assert "hostname '127.0.0.1' doesn't match 'localhost'" in proc.stdout + proc.stderr
    assert read_maildirs(getmail_maildir[0]) == {".": []}
    assert len(inbox_by_id(server)) == INBOX_COUNT  # nothing retrieved, nothing deleted
