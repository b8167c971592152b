"""Interop: SMTP clients nobody here wrote deliver into the store through every port.

Clients: the standard library's smtplib, swaks (Debian package) and Postfix's
`smtp-source` (Debian package postfix; only the tool runs, no Postfix daemon).
Ports: MX (plain and STARTTLS), submission 587 (STARTTLS + AUTH PLAIN / LOGIN) and
submissions 465 (implicit TLS + AUTH), RFC 5321 / 6409 / 3207 / 4954 / 8314.

Each test sends bytes it controls, reads the mailbox back with `mailward export`
(mboxrd) and checks that the stored message is exactly a Return-Path field and a
Received field (the trace block, RFC 5322 3.6.7: Return-Path first) followed by the
bytes the client sent, byte for byte after DATA dot-unstuffing (RFC 5321 4.5.2).
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
import random
import re
import shutil
import smtplib
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer, mail_server
from mailward.testing.smtp_raw import mbox_messages

pytestmark = pytest.mark.interop

DOMAIN = "example.test"
USERS = {
    "alice@example.test": "correct-horse-battery-staple-42",
    "bob@example.test": "Quartz-lantern-meadow-ferry-97",
    "carol@example.test": "violet-harbour-engine-quill-63",
    "load@example.test": "amber-glacier-tunnel-piano-18",
}
ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@example.test"
LOAD = "load@example.test"
REMOTE_SENDER = "sender@remote.test"
TIMEOUT = 60
BIG_PAYLOAD_BYTES = 6 * 1024 * 1024  # ~8.2 MB once base64-encoded


# --------------------------------------------------------------------------- helpers


def find_tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    assert path, f"{name} is not installed (Debian package); run scripts/install-test-deps"
    return path


def exported(srv: RunningServer, address: str) -> list[bytes]:
    return mbox_messages(srv.cli("export", address).stdout)


def stored_with(srv: RunningServer, address: str, marker: str, count: int = 1) -> list[bytes]:
    found = [m for m in exported(srv, address) if marker.encode() in m]
    assert len(found) == count, (
        f"expected {count} stored message(s) carrying {marker} for {address}, found {len(found)}"
    )
    return found


def split_trace(stored: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split off the leading header fields (with their folded lines) mailward prepends:
    Return-Path, Authentication-Results and the X-Spam fields on the MX port, then one
    Received. Returns ([(lowercased name, raw value)], the rest)."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    while True:
        end = stored.index(b"\r\n", pos) + 2
        line = stored[pos:end]
        if line[:1] in (b" ", b"\t"):
            assert fields, f"stored message starts with a continuation line: {line!r}"
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        elif fields and fields[-1][0] == "received":
            return fields, stored[pos:]
        else:
            name, colon, value = line.partition(b":")
            assert colon, f"not a header field: {line!r}"
            fields.append((name.decode("ascii", "replace").lower(), value))
        pos = end


def first_difference(got: bytes, want: bytes) -> str:
    n = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if n is None:
        n = min(len(got), len(want))
    return (
        f"lengths got {len(got)} want {len(want)}; first difference at byte {n}: "
        f"got {got[max(0, n - 40) : n + 40]!r} want {want[max(0, n - 40) : n + 40]!r}"
    )


def assert_trace(fields: list[tuple[str, bytes]], envelope_from: str, *, tls: bool) -> None:
    names = [
        name
        for name, _ in fields
        if name != "authentication-results" and not name.startswith("x-spam-")
    ]
    assert names == ["return-path", "received"], f"trace block is {fields!r}"
    assert fields[0][1].strip() == b"<" + envelope_from.encode("utf-8") + b">", fields[0]
    if tls:
        assert b"TLS" in fields[-1][1], f"Received does not record TLS: {fields[-1][1]!r}"


def assert_delivered(
    srv: RunningServer, rcpt: str, sent: bytes, marker: str, *, envelope_from: str, tls: bool
) -> bytes:
    """The one stored message with `marker` is trace block + `sent`, byte for byte."""
    [stored] = stored_with(srv, rcpt, marker)
    fields, rest = split_trace(stored)
    assert rest == sent, first_difference(rest, sent)
    assert_trace(fields, envelope_from, tls=tls)
    return stored


def new_marker() -> str:
    return uuid.uuid4().hex


def text_message(marker: str, from_hdr: str, to_hdr: str) -> bytes:
    """A plain message whose body exercises dot-stuffing and mboxrd quoting."""
    lines = [
        f"From: {from_hdr}",
        f"To: {to_hdr}",
        f"Subject: interop {marker}",
        "Date: Mon, 23 Nov 2026 10:00:00 +0000",
        f"Message-ID: <{marker}@interop.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "X-Folded: first part of a folded field",
        "\tsecond part",
        "",
        f"marker {marker}",
        ".a line starting with a dot",
        "..two dots",
        ".",
        "From the start of a line (mboxrd quotes this on export)",
        ">From already quoted once",
        "trailing spaces   ",
        "tab\there",
        "x" * 990,
        "",
        "last line",
    ]
    return "\r\n".join(lines).encode("ascii") + b"\r\n"


def utf8_message(marker: str, from_hdr: str, to_hdr: str) -> bytes:
    """Raw UTF-8 in header fields and body (RFC 6532 / 6531 SMTPUTF8, RFC 6152 8BITMIME)."""
    lines = [
        f"From: Jörg Müller <{from_hdr}>",
        f"To: {to_hdr}",
        "Subject: Grüße aus Köln — 日本語のテスト ✓",
        "Date: Mon, 23 Nov 2026 10:00:00 +0000",
        f"Message-ID: <{marker}@interop.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"marker {marker}",
        "Ünïcödé body: ça va? Здравствуйте, 你好, مرحبا, 🙂",
        ".Ärger mit Punkt am Zeilenanfang",
    ]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n"


def big_payload(marker: str) -> bytes:
    return random.Random(marker).randbytes(BIG_PAYLOAD_BYTES)


def big_message(marker: str, from_hdr: str, to_hdr: str, payload: bytes) -> bytes:
    """multipart/mixed with a several-MB base64 attachment (76-character lines)."""
    boundary = f"=_b_{marker}"
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    head = "\r\n".join(
        [
            f"From: {from_hdr}",
            f"To: {to_hdr}",
            f"Subject: big attachment {marker}",
            "Date: Mon, 23 Nov 2026 10:00:00 +0000",
            f"Message-ID: <{marker}@interop.test>",
            "MIME-Version: 1.0",
            f'Content-Type: multipart/mixed; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            f"marker {marker}",
            f"--{boundary}",
            'Content-Type: application/octet-stream; name="blob.bin"',
            "Content-Transfer-Encoding: base64",
            'Content-Disposition: attachment; filename="blob.bin"',
            "",
            "",
        ]
    ).encode("ascii")
    return head + encoded + f"--{boundary}--\r\n".encode("ascii")


def dot_stuffed(message: bytes) -> bytes:
    """DATA wire form of a CRLF message that ends in CRLF (RFC 5321 4.5.2)."""
    assert message.endswith(b"\r\n")
    return re.sub(rb"(?m)^\.", b"..", message) + b".\r\n"


# --------------------------------------------------------------------------- fixture


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with mail_server(tmp_path_factory.mktemp("interop"), domain=DOMAIN, users=USERS) as server:
        yield server


# --------------------------------------------------------------------------- smtplib


def test_smtplib_mx_plain(srv: RunningServer) -> None:
    marker = new_marker()
    msg = text_message(marker, f"<{REMOTE_SENDER}>", ALICE)
    with smtplib.SMTP(srv.host, srv.smtp_port, "client.remote.test", TIMEOUT) as smtp:
        smtp.ehlo()
        assert smtp.sendmail(REMOTE_SENDER, [ALICE], msg) == {}
    assert_delivered(srv, ALICE, msg, marker, envelope_from=REMOTE_SENDER, tls=False)


def test_smtplib_mx_starttls(srv: RunningServer) -> None:
    marker = new_marker()
    msg = text_message(marker, f"<{REMOTE_SENDER}>", ALICE)
    with smtplib.SMTP(srv.host, srv.smtp_port, "client.remote.test", TIMEOUT) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        code, _ = smtp.starttls(context=srv.ssl_context())
        assert code == 220
        smtp.ehlo()
        assert not smtp.has_extn("starttls"), "STARTTLS still offered once TLS is up"
        assert smtp.sendmail(REMOTE_SENDER, [ALICE], msg) == {}
    assert_delivered(srv, ALICE, msg, marker, envelope_from=REMOTE_SENDER, tls=True)


def test_smtplib_mx_smtputf8_8bit(srv: RunningServer) -> None:
    marker = new_marker()
    sender = "jörg@remote.test"
    msg = utf8_message(marker, sender, ALICE)
    with smtplib.SMTP(srv.host, srv.smtp_port, "client.remote.test", TIMEOUT) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("smtputf8") and smtp.has_extn("8bitmime")
        refused = smtp.sendmail(sender, [ALICE], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
    assert_delivered(srv, ALICE, msg, marker, envelope_from=sender, tls=False)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtplib_submission_starttls_auth(srv: RunningServer, mechanism: str) -> None:
    marker = new_marker()
    msg = text_message(marker, f"Alice <{ALICE}>", BOB)
    with smtplib.SMTP(srv.host, srv.submission_port, "client.example.test", TIMEOUT) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth"), "AUTH advertised before TLS"
        assert smtp.starttls(context=srv.ssl_context())[0] == 220
        smtp.ehlo()
        assert mechanism in smtp.esmtp_features.get("auth", "").upper().split()
        smtp.user, smtp.password = ALICE, USERS[ALICE]
        # PLAIN with an initial response (RFC 4954 4), LOGIN as the classic two-step.
        authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        code, _ = smtp.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
        assert code == 235
        assert smtp.sendmail(ALICE, [BOB], msg) == {}
    assert_delivered(srv, BOB, msg, marker, envelope_from=ALICE, tls=True)


def test_smtplib_submissions_implicit_tls_big_attachment(srv: RunningServer) -> None:
    marker = new_marker()
    payload = big_payload(marker)
    msg = big_message(marker, f"Alice <{ALICE}>", CAROL, payload)
    assert len(msg) > 8_000_000
    with smtplib.SMTP_SSL(
        srv.host, srv.submissions_port, "client.example.test", timeout=TIMEOUT,
        context=srv.ssl_context(),
    ) as smtp:  # fmt: skip
        assert isinstance(smtp.sock, ssl.SSLSocket)
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")
        smtp.ehlo()
        assert int(smtp.esmtp_features["size"]) >= len(msg)  # RFC 1870, default 50 MiB
        smtp.login(ALICE, USERS[ALICE])
        assert smtp.sendmail(ALICE, [CAROL], msg) == {}  # smtplib adds SIZE=
    stored = assert_delivered(srv, CAROL, msg, marker, envelope_from=ALICE, tls=True)
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_payload(decode=True) == payload


# --------------------------------------------------------------------------- swaks


SWAKS_CASES = {
    # name: (port attribute, TLS flags, AUTH mechanism or None)
    "mx-plain": ("smtp_port", [], None),
    "mx-starttls": ("smtp_port", ["--tls"], None),
    "submission-starttls-plain": ("submission_port", ["--tls"], "PLAIN"),
    "submission-starttls-login": ("submission_port", ["--tls"], "LOGIN"),
    "submissions-plain": ("submissions_port", ["--tls-on-connect"], "PLAIN"),
    "submissions-login": ("submissions_port", ["--tls-on-connect"], "LOGIN"),
}


def swaks(srv: RunningServer, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [
        find_tool("swaks"),
        "--server", srv.host,
        "--port", str(port),
        "--helo", "client.example.test",
        "--timeout", str(TIMEOUT),
        *args,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, f"swaks exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def tls_verify_args(srv: RunningServer) -> list[str]:
    # swaks 20201014 verifies the chain against --tls-ca-path (a wrong CA fails, exit 29)
    # but not the host name; --tls-sni sends the name the certificate is issued for.
    return ["--tls-verify", "--tls-ca-path", str(srv.cert_path), "--tls-sni", "localhost"]


def auth_args(mechanism: str | None) -> list[str]:
    if mechanism is None:
        return []
    return ["--auth", mechanism, "--auth-user", ALICE, "--auth-password", USERS[ALICE]]


@pytest.mark.parametrize("case", sorted(SWAKS_CASES))
def test_swaks_exact_bytes(srv: RunningServer, tmp_path: Path, case: str) -> None:
    port_attr, tls_flags, mechanism = SWAKS_CASES[case]
    marker = new_marker()
    if mechanism is None:
        sender, rcpt, from_hdr = REMOTE_SENDER, ALICE, f"<{REMOTE_SENDER}>"
    else:
        sender, rcpt, from_hdr = ALICE, BOB, f"Alice <{ALICE}>"
    msg = text_message(marker, from_hdr, rcpt)
    data_file = tmp_path / "data.eml"
    # --no-data-fixup: swaks sends the file verbatim as the DATA wire form.
    data_file.write_bytes(dot_stuffed(msg))
    tls = bool(tls_flags)
    proc = swaks(
        srv,
        getattr(srv, port_attr),
        "--from", sender,
        "--to", rcpt,
        "--data", f"@{data_file}",
        "--no-data-fixup",
        *tls_flags,
        *(tls_verify_args(srv) if tls else []),
        *auth_args(mechanism),
    )  # fmt: skip
    if tls:
        assert "TLS started" in proc.stdout, proc.stdout
    if mechanism:
        assert re.search(r"^<~\s+235[ -]", proc.stdout, re.M), proc.stdout
    assert_delivered(srv, rcpt, msg, marker, envelope_from=sender, tls=tls)


def test_swaks_submission_big_message_exact(srv: RunningServer, tmp_path: Path) -> None:
    marker = new_marker()
    msg = big_message(marker, f"Alice <{ALICE}>", CAROL, big_payload(marker))
    data_file = tmp_path / "big.eml"
    data_file.write_bytes(dot_stuffed(msg))
    swaks(
        srv, srv.submission_port,
        "--from", ALICE, "--to", CAROL,
        "--data", f"@{data_file}", "--no-data-fixup",
        "--tls", *tls_verify_args(srv), *auth_args("PLAIN"),
    )  # fmt: skip
    assert_delivered(srv, CAROL, msg, marker, envelope_from=ALICE, tls=True)


def test_swaks_own_mime_attachment(srv: RunningServer, tmp_path: Path) -> None:
    """swaks building the message itself (its usual mode): the attachment survives."""
    marker = new_marker()
    payload = big_payload(marker)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(payload)
    swaks(
        srv, srv.submissions_port,
        "--from", ALICE, "--to", CAROL,
        "--header", f"Subject: swaks attachment {marker}",
        "--attach-type", "application/octet-stream",
        "--attach", f"@{blob}",
        "--tls-on-connect", *tls_verify_args(srv), *auth_args("LOGIN"),
    )  # fmt: skip
    [stored] = stored_with(srv, CAROL, marker)
    fields, _rest = split_trace(stored)
    assert_trace(fields, ALICE, tls=True)
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    payloads = [
        part.get_payload(decode=True)
        for part in parsed.walk()
        if part.get_content_type() == "application/octet-stream"
    ]
    assert payloads == [payload]


# --------------------------------------------------------------------------- smtp-source


def test_smtp_source_load_all_stored(srv: RunningServer) -> None:
    before = len(exported(srv, LOAD))
    proc = subprocess.run(
        [
            find_tool("smtp-source"),
            "-s", "5", "-m", "50", "-l", "2000",
            "-f", REMOTE_SENDER, "-t", LOAD,
            f"{srv.host}:{srv.smtp_port}",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"smtp-source exited {proc.returncode}: {proc.stderr}"
    messages = exported(srv, LOAD)
    assert len(messages) - before == 50
    bodies = set()
    message_ids = set()
    for stored in messages[before:]:
        fields, rest = split_trace(stored)
        assert_trace(fields, REMOTE_SENDER, tls=False)
        # smtp-source's generated header block, then its generated body.
        assert rest.startswith(f"From: <{REMOTE_SENDER}>\r\nTo: <{LOAD}>\r\nDate: ".encode())
        head, sep, body = rest.partition(b"\r\n\r\n")
        assert sep, rest[:400]
        [mid] = re.findall(rb"(?im)^Message-Id: *(\S+)\r$", head + b"\r")
        message_ids.add(mid)
        bodies.add(body)
    assert len(message_ids) == 50, "a message was stored twice or lost its Message-Id"
    assert len(bodies) == 1, "the 50 identical generated bodies were not stored identically"
    assert len(bodies.pop()) >= 2000


def test_smtp_source_preformatted_exact(srv: RunningServer, tmp_path: Path) -> None:
    marker = new_marker()
    lines = [
        f"From: <{REMOTE_SENDER}>",
        f"To: <{ALICE}>",
        f"Subject: smtp-source {marker}",
        f"Message-ID: <{marker}@interop.test>",
        "",
        f"marker {marker}",
        ".leading dot",
        "From a line that mboxrd quotes",
        "end",
    ]
    source = tmp_path / "message.txt"
    source.write_text("\n".join(lines) + "\n", encoding="ascii")
    proc = subprocess.run(
        [
            find_tool("smtp-source"),
            "-s", "1", "-m", "3", "-F", str(source),
            "-f", REMOTE_SENDER, "-t", ALICE,
            f"{srv.host}:{srv.smtp_port}",
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"smtp-source exited {proc.returncode}: {proc.stderr}"
    # smtp-source -F sends every file line + CRLF (dot-stuffed), then CRLF "." CRLF, i.e.
    # the message gains one empty last line (seen on the wire with Postfix 3.7.11).
    expected = b"".join(line.encode() + b"\r\n" for line in lines) + b"\r\n"
    for stored in stored_with(srv, ALICE, marker, count=3):
        fields, rest = split_trace(stored)
        assert rest == expected, first_difference(rest, expected)
        assert_trace(fields, REMOTE_SENDER, tls=False)
