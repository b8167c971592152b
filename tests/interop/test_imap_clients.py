"""Interop: IMAP clients nobody here wrote sync alice's mailboxes byte-exact.

Clients: the standard library's imaplib, isync's mbsync 1.4 and offlineimap3 (Debian
packages, see scripts/install-test-deps). Each test starts a fresh server (the
`server` fixture), delivers the corpus of `mail_corpus` (attachments, 8bit UTF-8,
message/rfc822, ~2 MB, mailboxes "Résumé", "Archiv/Übersicht", "日本語"), runs the
client, then compares every local file with what the server hands out to imaplib
(`UID FETCH 1:* (BODY.PEEK[])`), byte for byte, modulo only what the client
documents doing to a message on its way into a Maildir:

- both clients store Maildir files with LF line ends (CRLF -> LF, nothing else);
- mbsync adds one `X-TUID: <12 chars>` field as the last header field of every
  message it copies, in both directions (isync src/sync.c copy_msg_convert(); it
  finds the copy by it after an APPEND).

mbsync 1.4 keeps IMAP mailbox names as modified UTF-7 on disk ("R&AOk-sum&AOk-";
UTF-8 names came with isync 1.5); offlineimap3 with `utf8foldernames` writes UTF-8.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import re
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer

from .mail_corpus import (
    ALICE,
    ATTACHMENT_NAME,
    NON_ASCII_MAILBOXES,
    PASSWORD,
    UTF8_BODY_WORD,
    UTF8_SUBJECT,
    Corpus,
    Held,
    LocalMessage,
    append,
    assert_bytes,
    assert_ok,
    base64_lines,
    decode_mutf7,
    encode_mutf7,
    find_tool,
    imap_login,
    maildir_rename,
    message_id,
    populate,
    quoted,
    read_maildirs,
    run_client,
    server_snapshot,
    split_header,
    transcript,
    utf8_message,
    write_new_maildir_message,
)

pytestmark = pytest.mark.interop

# A message written into the Maildir by "a MUA" (LF line ends, 8bit UTF-8), for the
# clients to upload; and one appended on the server between two syncs.
LOCAL_NEW = (
    "From: Alice <alice@example.test>\n"
    "To: Bob <bob@example.test>\n"
    "Subject: =?UTF-8?B?w5xiZXJzaWNodCB2b20gTWFpbGRpcg==?=\n"
    "Date: Tue, 24 Nov 2026 09:00:00 +0100\n"
    "Message-ID: <local-new-1@interop.test>\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Geschrieben im Maildir: grüße, 日本語.\n"
).encode()
SERVER_NEW_ID = "server-new-1"


def held_by_id(messages: dict[int, Held]) -> dict[str, Held]:
    return {message_id(h.data): h for h in messages.values()}


def local_by_id(messages: list[LocalMessage]) -> dict[str, LocalMessage]:
    return {message_id(m.data): m for m in messages}


# --------------------------------------------------------------------------- mbsync


def mbsync_config(
    srv: RunningServer,
    tmp_path: Path,
    *,
    ssl_type: str = "IMAPS",
    cert: Path | None = None,
) -> tuple[Path, Path]:
    """(mbsyncrc, Maildir root). Host is `localhost`, the certificate's name."""
    base = tmp_path / f"mbsync-{ssl_type.lower()}"
    root = base / "mail"
    state = base / "state"
    root.mkdir(parents=True)
    state.mkdir()
    port = srv.imaps_port if ssl_type == "IMAPS" else srv.imap_port
    rc = base / "mbsyncrc"
    rc.write_text(
        f"""\
IMAPAccount alice
Host localhost
Port {port}
User {ALICE}
Pass {PASSWORD}
SSLType {ssl_type}
SSLVersions TLSv1.2 TLSv1.3
CertificateFile {cert or srv.cert_path}
Timeout 30

IMAPStore remote
Account alice

MaildirStore local
Path {root}/
Inbox {root}/INBOX
SubFolders Verbatim

Channel alice
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState {state}/
""",
        encoding="utf-8",
    )
    return rc, root


def mbsync(rc: Path, tmp_path: Path) -> None:
    assert_ok(run_client([find_tool("mbsync"), "-c", str(rc), "-a"], tmp_path / "home"))


def mbsync_folder(root: Path, name: str) -> Path:
    """The Maildir of mailbox `name`: isync 1.4 uses the modified UTF-7 name on disk,
    isync >= 1.5 the UTF-8 one."""
    [folder] = [p for p in {root / encode_mutf7(name), root / name} if (p / "cur").is_dir()]
    return folder


def split_tuid(data: bytes, eol: bytes) -> tuple[bytes, bool]:
    """(`data` without the X-TUID field mbsync appends to the header block, whether it
    had one)."""
    head, rest = split_header(data, eol)
    assert head.count(b"X-TUID:") <= 1, head
    m = re.search(rb"X-TUID: [A-Za-z0-9+/]{12}" + re.escape(eol) + rb"\Z", head)
    return (head[: m.start()] + rest, True) if m else (data, False)


def assert_mbsync_converged(
    srv: RunningServer, root: Path
) -> tuple[dict[str, list[LocalMessage]], dict[str, dict[int, Held]]]:
    """Every server mailbox is a local Maildir with the same UIDs, flags and bytes."""
    local = {decode_mutf7(name): msgs for name, msgs in read_maildirs(root).items()}
    snapshot = server_snapshot(srv)
    assert sorted(local) == sorted(snapshot)
    for name, held in snapshot.items():
        files = {m.uid: m for m in local[name]}
        assert sorted(files) == sorted(held), (name, sorted(files), sorted(held))
        for uid, h in held.items():
            got = files[uid]
            assert b"\r" not in got.data, got.path
            local_data, local_tuid = split_tuid(got.data, b"\n")
            server_data, server_tuid = split_tuid(h.data, b"\r\n")
            # The copy mbsync made carries its X-TUID, the original does not.
            assert local_tuid != server_tuid, (got.path, local_tuid, server_tuid)
            assert_bytes(local_data, server_data.replace(b"\r\n", b"\n"), str(got.path))
            assert got.flags == h.flags, (got.path, got.flags, h.flags)
    return local, snapshot


def assert_attachment_intact(local: LocalMessage, corpus: Corpus) -> None:
    parsed = email.message_from_bytes(local.data, policy=email.policy.default)
    [part] = list(parsed.iter_attachments())
    assert part.get_filename() == ATTACHMENT_NAME
    assert part.get_payload(decode=True) == corpus.attachment


def test_mbsync_imaps_full_sync_and_round_trip(server: RunningServer, tmp_path: Path) -> None:
    corpus = populate(server)
    rc, root = mbsync_config(server, tmp_path)
    mbsync(rc, tmp_path)

    local, snapshot = assert_mbsync_converged(server, root)
    # One Maildir per mailbox, nested by the "/" hierarchy (SubFolders Verbatim).
    for name in NON_ASCII_MAILBOXES:
        assert mbsync_folder(root, name).is_dir(), name
    assert mbsync_folder(root, "Archiv/Übersicht").parent == root / "Archiv"
    assert sum(len(msgs) for msgs in local.values()) == len(corpus.messages) == 7
    inbox = local_by_id(local["INBOX"])
    assert_attachment_intact(inbox["mixed-1@interop.test"], corpus)
    big = inbox["big-1@interop.test"]
    assert len(big.data) > 2_000_000
    assert local_by_id(local["日本語"])["utf8-2@interop.test"].flags == {
        "\\Flagged",
        "\\Answered",
    }

    # Changes on both sides: read one and delete one locally, write a new local
    # message; append a message and flag another on the server.
    utf8 = inbox["utf8-1@interop.test"]
    assert utf8.flags == frozenset()
    maildir_rename(utf8, "S")
    big.path.unlink()
    write_new_maildir_message(mbsync_folder(root, "日本語"), LOCAL_NEW, "1795000000.M1P1.mua")
    client = imap_login(server)
    try:
        new_uid = append(client, "INBOX", utf8_message(SERVER_NEW_ID))
        client.select(quoted("Résumé"))
        [fwd_uid] = snapshot["Résumé"]
        typ, resp = client.uid("STORE", str(fwd_uid), "+FLAGS", "(\\Flagged)")
        assert typ == "OK", resp
    finally:
        client.logout()
    mbsync(rc, tmp_path)

    local, snapshot = assert_mbsync_converged(server, root)
    inbox_held = snapshot["INBOX"]
    assert inbox_held[utf8.uid].flags == {"\\Seen"}, "local read flag did not reach the server"
    assert big.uid not in inbox_held, "local deletion was not expunged on the server"
    assert new_uid in inbox_held and any(m.uid == new_uid for m in local["INBOX"])
    assert snapshot["Résumé"][fwd_uid].flags == {"\\Seen", "\\Flagged"}
    [uploaded] = [h for h in snapshot["日本語"].values() if b"<local-new-1@" in h.data]
    # Server copy = the local file with CRLF line ends plus mbsync's X-TUID field.
    uploaded_data, has_tuid = split_tuid(uploaded.data, b"\r\n")
    assert has_tuid
    assert_bytes(uploaded_data, LOCAL_NEW.replace(b"\n", b"\r\n"), "uploaded")
    assert sum(len(m) for m in snapshot.values()) == 8  # -1 deleted, +1 on each side

    # A third run has nothing to do: same files, same server state.
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    mbsync(rc, tmp_path)
    assert sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) == files
    assert server_snapshot(server) == snapshot


def test_mbsync_starttls_sync(server: RunningServer, tmp_path: Path) -> None:
    corpus = populate(server)
    rc, root = mbsync_config(server, tmp_path, ssl_type="STARTTLS")
    mbsync(rc, tmp_path)
    local, _ = assert_mbsync_converged(server, root)
    assert sum(len(m) for m in local.values()) == len(corpus.messages)
    assert_attachment_intact(local_by_id(local["INBOX"])["mixed-1@interop.test"], corpus)


def test_mbsync_refuses_cleartext_and_a_foreign_certificate(
    server: RunningServer, tmp_path: Path
) -> None:
    populate(server, mailboxes=False)
    # Port 143 without STARTTLS: the server advertises LOGINDISABLED and no AUTH=, so
    # mbsync has nothing to log in with (RFC 9051 6.2.3, 11.1).
    rc, root = mbsync_config(server, tmp_path, ssl_type="None")
    proc = run_client([find_tool("mbsync"), "-c", str(rc), "-a"], tmp_path / "home")
    assert proc.returncode != 0, transcript(proc)
    assert "no acceptable authentication mechanism" in proc.stderr, transcript(proc)
    assert not any(p.is_file() for p in root.rglob("*"))

    # A certificate for the same name that is not the server's: the handshake fails.
    # (mbsync treats a non-CA certificate in CertificateFile as a pinned host
    # certificate, man mbsync "CertificateFile": matched against the server's own
    # certificate only, so this is the check that applies, not the DNS name.)
    other = tmp_path / "other-cert.pem"
    assert_ok(
        run_client(
            [
                find_tool("openssl"), "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(tmp_path / "other-key.pem"), "-out", str(other),
                "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                "-days", "2",
            ],
            tmp_path / "home",
        )
    )  # fmt: skip
    rc, root = mbsync_config(server, tmp_path / "foreign", cert=other)
    proc = run_client([find_tool("mbsync"), "-c", str(rc), "-a"], tmp_path / "home")
    assert proc.returncode != 0, transcript(proc)
    assert "certificate" in proc.stderr.lower(), transcript(proc)
    assert not any(p.is_file() for p in root.rglob("*"))


# --------------------------------------------------------------------------- offlineimap


def offlineimap_config(srv: RunningServer, tmp_path: Path, host: str = "localhost") -> Path:
    base = tmp_path / "offlineimap"
    (base / "mail").mkdir(parents=True)
    (base / "meta").mkdir()
    rc = base / "offlineimaprc"
    rc.write_text(
        f"""\
[general]
accounts = alice
metadata = {base}/meta
ui = quiet

[Account alice]
localrepository = local
remoterepository = remote
utf8foldernames = yes

[Repository local]
type = Maildir
localfolders = {base}/mail
sep = /

[Repository remote]
type = IMAP
remotehost = {host}
remoteport = {srv.imaps_port}
ssl = yes
sslcacertfile = {srv.cert_path}
remoteuser = {ALICE}
remotepass = {PASSWORD}
""",
        encoding="utf-8",
    )
    return rc


def offlineimap(rc: Path, tmp_path: Path) -> None:
    proc = assert_ok(
        run_client([find_tool("offlineimap"), "-c", str(rc), "-o", "-u", "quiet"], tmp_path / "h")
    )
    # offlineimap exits 0 after some per-folder errors; those are printed as ERROR.
    assert "ERROR" not in proc.stdout + proc.stderr, transcript(proc)


def assert_offlineimap_converged(
    srv: RunningServer, root: Path
) -> tuple[dict[str, list[LocalMessage]], dict[str, dict[int, Held]]]:
    local = read_maildirs(root)
    snapshot = server_snapshot(srv)
    assert sorted(local) == sorted(snapshot)
    for name, held in snapshot.items():
        files = {m.uid: m for m in local[name]}
        assert sorted(files) == sorted(held), (name, sorted(files), sorted(held))
        for uid, h in held.items():
            got = files[uid]
            assert_bytes(got.data, h.data.replace(b"\r\n", b"\n"), str(got.path))
            assert got.flags == h.flags, (got.path, got.flags, h.flags)
    return local, snapshot


def test_offlineimap_full_sync_and_round_trip(server: RunningServer, tmp_path: Path) -> None:
    corpus = populate(server)
    rc = offlineimap_config(server, tmp_path)
    root = rc.parent / "mail"
    offlineimap(rc, tmp_path)

    local, snapshot = assert_offlineimap_converged(server, root)
    for name in NON_ASCII_MAILBOXES:  # UTF-8 folder names, "/" nesting
        assert (root / name / "cur").is_dir(), name
    assert sum(len(msgs) for msgs in local.values()) == len(corpus.messages) == 7
    inbox = local_by_id(local["INBOX"])
    assert_attachment_intact(inbox["mixed-1@interop.test"], corpus)
    assert local_by_id(local["Résumé"])["fwd-1@interop.test"].flags == {"\\Seen"}

    utf8 = inbox["utf8-1@interop.test"]
    maildir_rename(utf8, "S")
    dots = inbox["dots-1@interop.test"]
    dots.path.unlink()
    write_new_maildir_message(root / "Archiv/Übersicht", LOCAL_NEW, "1795000000.M1P1.mua")
    client = imap_login(server)
    try:
        new_uid = append(client, "日本語", utf8_message(SERVER_NEW_ID), ["\\Draft"])
    finally:
        client.logout()
    offlineimap(rc, tmp_path)

    local, snapshot = assert_offlineimap_converged(server, root)
    assert snapshot["INBOX"][utf8.uid].flags == {"\\Seen"}
    assert dots.uid not in snapshot["INBOX"]
    assert held_by_id(snapshot["日本語"])[f"{SERVER_NEW_ID}@interop.test"].uid == new_uid
    assert local_by_id(local["日本語"])[f"{SERVER_NEW_ID}@interop.test"].flags == {"\\Draft"}
    [uploaded] = [h for h in snapshot["Archiv/Übersicht"].values() if b"<local-new-1@" in h.data]
    # offlineimap3 uploads with CRLF and adds nothing when the server has UIDPLUS.
    assert_bytes(uploaded.data, LOCAL_NEW.replace(b"\n", b"\r\n"), "uploaded")
    assert sum(len(m) for m in snapshot.values()) == 8  # -1 deleted, +2 new


def test_offlineimap_checks_the_certificate_name(server: RunningServer, tmp_path: Path) -> None:
    populate(server, mailboxes=False)
    # The certificate names localhost only; dialling 127.0.0.1 must fail verification.
    rc = offlineimap_config(server, tmp_path, host="127.0.0.1")
    proc = run_client(
        [find_tool("offlineimap"), "-c", str(rc), "-o", "-u", "quiet"], tmp_path / "h"
    )
    assert proc.returncode != 0, transcript(proc)
    assert "no matching domain name found in certificate" in proc.stdout + proc.stderr
    assert not any(p.is_file() for p in (rc.parent / "mail").rglob("*"))


# --------------------------------------------------------------------------- imaplib


def fetch_one(client: imaplib.IMAP4, uid: int, item: str) -> bytes:
    """The value of a single-item UID FETCH: a literal, or a quoted string (a server
    may send short ASCII values either way, RFC 9051 4.3)."""
    typ, data = client.uid("FETCH", str(uid), f"({item})")
    assert typ == "OK", data
    literals = [d for d in data if isinstance(d, tuple)]
    if literals:
        [(_prefix, value)] = literals
        return value
    [line] = data
    assert isinstance(line, bytes)
    m = re.fullmatch(rb'\d+ \(UID \d+ [^"]+ "((?:[^"\\]|\\.)*)"\)', line)
    assert m, line
    return re.sub(rb"\\(.)", rb"\1", m.group(1))


def search(client: imaplib.IMAP4, *criteria: str, literal: str | None = None) -> list[int]:
    if literal is not None:
        client.literal = literal.encode("utf-8")
    typ, data = client.uid("SEARCH", *criteria)
    assert typ == "OK", data
    return sorted(int(n) for n in data[0].split())


_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


def parse_list(data: bytes) -> list[object]:
    """IMAP parenthesised list (atoms, quoted strings, NIL, numbers) -> nested lists."""
    stack: list[list[object]] = [[]]
    pos = 0
    while data[pos:].strip():
        m = _TOKEN.match(data, pos)
        assert m, data[pos : pos + 80]
        pos = m.end()
        if m.group(1):
            stack.append([])
        elif m.group(2):
            done = stack.pop()
            stack[-1].append(done)
        elif m.group(3) is not None:
            stack[-1].append(re.sub(rb"\\(.)", rb"\1", m.group(3)).decode("utf-8"))
        else:
            atom = m.group(4).decode("ascii")
            stack[-1].append(None if atom == "NIL" else int(atom) if atom.isdigit() else atom)
    [top] = stack
    return top


def one_line(data: list[bytes | tuple[bytes, bytes]]) -> bytes:
    """imaplib's pieces of one response, literals turned back into quoted strings."""
    out = b""
    for piece in data:
        if isinstance(piece, tuple):
            prefix, literal = piece
            out += re.sub(rb"~?\{\d+\}\Z", b"", prefix)
            out += b'"' + literal.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            out += piece
    return out


def bodystructure(client: imaplib.IMAP4, uid: int) -> list[object]:
    typ, data = client.uid("FETCH", str(uid), "(BODYSTRUCTURE)")
    assert typ == "OK", data
    fetched = parse_list(one_line(data))  # [seq, [UID, n, BODYSTRUCTURE, [...]]]
    items = fetched[1]
    assert isinstance(items, list)
    return items[items.index("BODYSTRUCTURE") + 1]


def mime_sections(data: bytes, boundary: bytes) -> list[tuple[bytes, bytes]]:
    """[(part MIME header incl. blank line, part body)] of a multipart, from the bytes."""
    _, first, rest = data.partition(b"\r\n--" + boundary + b"\r\n")
    assert first
    body, _, _ = rest.rpartition(b"\r\n--" + boundary + b"--")
    parts = body.split(b"\r\n--" + boundary + b"\r\n")
    out = []
    for part in parts:
        end = part.index(b"\r\n\r\n") + 4
        out.append((part[:end], part[end:]))
    return out


def test_imaplib_sections_binary_and_bodystructure(server: RunningServer) -> None:
    corpus = populate(server)
    sent = corpus.find("mixed-1").data
    client = imap_login(server)
    try:
        client.select("INBOX")
        [uid] = search(client, "HEADER", "Message-ID", '"<mixed-1@interop.test>"')
        (mime1, text), (mime2, b64) = mime_sections(sent, b"=_mixed_mixed-1")
        assert b64 == base64_lines(corpus.attachment)[:-2]
        assert fetch_one(client, uid, "BODY.PEEK[1]") == text
        assert fetch_one(client, uid, "BODY.PEEK[2]") == b64
        assert fetch_one(client, uid, "BODY.PEEK[2.MIME]") == mime2
        assert fetch_one(client, uid, "BODY.PEEK[1.MIME]") == mime1
        assert fetch_one(client, uid, "BINARY.PEEK[2]") == corpus.attachment
        assert fetch_one(client, uid, "BINARY.PEEK[1]") == text
        typ, data = client.uid("FETCH", str(uid), "(BINARY.SIZE[2])")
        assert typ == "OK" and f"BINARY.SIZE[2] {len(corpus.attachment)}".encode() in data[0]
        partial = fetch_one(client, uid, "BINARY.PEEK[2]<1000.4096>")
        assert partial == corpus.attachment[1000:5096]
        head, body = split_header(sent, b"\r\n")
        assert fetch_one(client, uid, "BODY.PEEK[TEXT]") == body[2:]
        assert fetch_one(client, uid, "BODY.PEEK[HEADER]").endswith(head + b"\r\n")
        typ, flags = client.uid("FETCH", str(uid), "(FLAGS)")
        assert b"\\Seen" not in flags[0], "a .PEEK fetch set \\Seen"

        bs = bodystructure(client, uid)
        text_part, bin_part, subtype = bs[0], bs[1], bs[2]
        assert isinstance(text_part, list) and isinstance(bin_part, list)
        assert [str(x).lower() for x in text_part[:2]] == ["text", "plain"]
        assert text_part[6] == len(text)
        # One line without CRLF (that CRLF belongs to the boundary): 0 or 1 lines.
        assert text_part[7] in (0, 1)
        assert [str(x).lower() for x in bin_part[:2]] == ["application", "octet-stream"]
        assert str(bin_part[5]).lower() == "base64" and bin_part[6] == len(b64)
        assert str(subtype).lower() == "mixed"
        assert [str(x).lower() for x in bs[3]] == ["boundary", "=_mixed_mixed-1"]
        disposition = bin_part[8]
        assert isinstance(disposition, list) and str(disposition[0]).lower() == "attachment"
        # filename*=UTF-8''r%C3%A9sum%C3%A9.bin (RFC 2231): either as written or decoded.
        params = disposition[1]
        assert isinstance(params, list) and len(params) == 2
        assert str(params[0]).lower().rstrip("*") == "filename"
        assert params[1] in ("UTF-8''r%C3%A9sum%C3%A9.bin", ATTACHMENT_NAME), params

        # message/rfc822 in a non-ASCII mailbox: the part is the whole inner message.
        fwd = corpus.find("fwd-1", "Résumé").data
        inner = utf8_message("inner-1")
        typ, _ = client.select(quoted("Résumé"))
        assert typ == "OK"
        [uid] = search(client, "HEADER", "Message-ID", '"<fwd-1@interop.test>"')
        assert fetch_one(client, uid, "BODY.PEEK[]") == fwd
        # The part ends before the CRLF that starts the closing delimiter (RFC 2046 5.1.1).
        inner_part = inner[:-2]
        assert fetch_one(client, uid, "BODY.PEEK[2]") == inner_part
        inner_head, inner_body = split_header(inner_part, b"\r\n")
        assert fetch_one(client, uid, "BODY.PEEK[2.HEADER]") == inner_head + b"\r\n"
        assert fetch_one(client, uid, "BODY.PEEK[2.TEXT]") == inner_body[2:]
        assert fetch_one(client, uid, "BINARY.PEEK[2.1]") == inner_body[2:]
        bs = bodystructure(client, uid)
        msg_part = bs[1]
        assert isinstance(msg_part, list)
        assert [str(x).lower() for x in msg_part[:2]] == ["message", "rfc822"]
        assert msg_part[6] == len(inner_part)
        envelope, inner_bs = msg_part[7], msg_part[8]
        assert isinstance(envelope, list) and isinstance(inner_bs, list)
        assert (
            envelope[1]
            == "=?UTF-8?B?" + inner.split(b"=?UTF-8?B?")[1].split(b"?=")[0].decode() + "?="
        )
        assert [str(x).lower() for x in inner_bs[:2]] == ["text", "plain"]
        assert str(inner_bs[5]).lower() == "8bit"
        # Lines: servers differ on counting an unterminated last line (as above).
        assert msg_part[9] - inner_part.count(b"\r\n") in (0, 1)
    finally:
        client.logout()


def test_imaplib_search_utf8_charset(server: RunningServer) -> None:
    populate(server)
    client = imap_login(server)
    try:
        client.select("INBOX", readonly=True)
        [utf8_uid] = search(client, "HEADER", "Message-ID", '"<utf8-1@interop.test>"')
        # SUBJECT matches the decoded encoded-word (RFC 9051 6.4.4, RFC 2047).
        assert search(client, "CHARSET", "UTF-8", "SUBJECT", literal="Köln") == [utf8_uid]
        assert search(client, "CHARSET", "UTF-8", "SUBJECT", literal="日本語") == [utf8_uid]
        assert search(client, "CHARSET", "UTF-8", "SUBJECT", literal=UTF8_SUBJECT) == [utf8_uid]
        assert search(client, "CHARSET", "UTF-8", "BODY", literal=UTF8_BODY_WORD) == [utf8_uid]
        assert search(client, "CHARSET", "UTF-8", "TEXT", literal="Здравствуйте") == [utf8_uid]
        assert search(client, "CHARSET", "UTF-8", "SUBJECT", literal="Zürich") == []
        assert search(client, "CHARSET", "UTF-8", "FROM", literal="Müller") == [utf8_uid]
        assert len(search(client, "ALL")) == 4
        typ, _ = client.select(quoted("日本語"), readonly=True)
        assert typ == "OK"
        assert search(client, "CHARSET", "UTF-8", "BODY", literal="äöüß") == [1]
        assert search(client, "FLAGGED", "ANSWERED") == [1]
        typ, data = client.uid("SEARCH", "CHARSET", "KOI8-U", "SUBJECT", "x")
        assert typ == "NO" and b"BADCHARSET" in data[0], (typ, data)
    except imaplib.IMAP4.error as exc:  # imaplib raises on NO for some commands
        raise AssertionError(str(exc)) from exc
    finally:
        client.logout()


def test_imaplib_utf8_accept_mailbox_names(server: RunningServer) -> None:
    """ENABLE UTF8=ACCEPT (RFC 6855): the same mailboxes by their UTF-8 names."""
    populate(server)
    client = imap_login(server)
    try:
        typ, data = client.enable("UTF8=ACCEPT")
        assert typ == "OK", data
        typ, lines = client.list('""', "*")
        assert typ == "OK"
        names = {
            line.decode("utf-8").rsplit(' "/" ', 1)[1].strip('"')
            for line in lines
            if isinstance(line, bytes)
        }
        assert {*NON_ASCII_MAILBOXES, "INBOX", "Archiv"} <= names, names
        typ, data = client.select('"Archiv/Übersicht"', readonly=True)
        assert (typ, data) == ("OK", [b"1"]), (typ, data)
        typ, data = client.create('"Résumé/Entwürfe 2026"')
        assert typ == "OK", data
        new = b"From: a@example.org\r\nSubject: x\r\nMessage-ID: <u8@interop.test>\r\n\r\nx\r\n"
        # Not client.append(): once UTF-8 is enabled, CPython 3.11's imaplib puts the
        # RFC 6855 wrapper inside the literal ("{n}" CRLF "UTF8 (" message ")"), so the
        # server (rightly) stores those bytes. A plain APPEND is valid in UTF-8 mode.
        client.literal = new
        typ, data = client.xatom("APPEND", '"Résumé/Entwürfe 2026"')
        assert typ == "OK", data
    finally:
        client.logout()
    # A rev1 client without UTF8=ACCEPT sees the same mailbox in modified UTF-7.
    snapshot = server_snapshot(server)
    [held] = snapshot["Résumé/Entwürfe 2026"].values()
    assert held.data == new
