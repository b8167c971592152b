"""IMAP end to end: a real `mailward serve` on loopback, driven byte by byte
(`testing.imap_raw`) and by Python's imaplib. Transcript style: each test names the
command and asserts the exact tagged status and response code (RFC 9051 7.1).
"""

from __future__ import annotations

import imaplib
import smtplib
import time
from collections.abc import Iterator

import pytest

from mailward.testing.imap_raw import ImapRaw
from mailward.testing.server import RunningServer

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORDS = {
    ALICE: "correct-horse-battery-staple-42",
    BOB: "Quartz-lantern-meadow-ferry-97",
}
MESSAGE = (
    b"From: Carol <carol@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n"
    b"Message-ID: <q1@example.org>\r\n"
    b"\r\n"
    b"The figures are attached in spirit.\r\n"
)


def connect(server: RunningServer, user: str = ALICE) -> ImapRaw:
    client = ImapRaw(server.host, server.imaps_port, tls=server.ssl_context())
    reply = client.login(user, PASSWORDS[user])
    assert reply.ok, reply
    return client


@pytest.fixture
def alice(server: RunningServer) -> Iterator[ImapRaw]:
    client = connect(server)
    yield client
    client.close()


def append(client: ImapRaw, mailbox: str, data: bytes, flags: str = "") -> int:
    flag_part = f"({flags}) " if flags else ""
    reply = client.command(f"APPEND {mailbox} {flag_part}{{{len(data)}}}", data)
    assert reply.ok, reply
    code = reply.code().split()
    assert code[0] == "APPENDUID", reply
    return int(code[2])


def deliver_smtp(server: RunningServer, rcpt: str, data: bytes) -> None:
    with smtplib.SMTP(server.host, server.smtp_port, timeout=15) as smtp:
        smtp.sendmail("carol@example.org", [rcpt], data)


# ------------------------------------------------------------------ TLS and login


def test_plain_port_offers_starttls_and_refuses_login_before_it(server: RunningServer) -> None:
    with ImapRaw(server.host, server.imap_port) as client:
        assert client.greeting.startswith(b"* OK ")
        caps = client.command("CAPABILITY").untagged[0]
        assert b"STARTTLS" in caps and b"LOGINDISABLED" in caps
        assert b"AUTH=" not in caps
        reply = client.login(ALICE, PASSWORDS[ALICE])
        assert reply.status == "NO" and reply.code() == "PRIVACYREQUIRED"
        reply = client.command("AUTHENTICATE PLAIN AGFsaWNlAHg=")
        assert reply.status == "NO" and reply.code() == "PRIVACYREQUIRED"
        assert client.starttls(server.ssl_context()).ok
        caps = client.command("CAPABILITY").untagged[0]
        assert b"AUTH=PLAIN" in caps and b"LOGINDISABLED" not in caps
        assert b"STARTTLS" not in caps
        reply = client.login(ALICE, PASSWORDS[ALICE])
        assert reply.ok and reply.code().startswith("CAPABILITY IMAP4rev2 IMAP4rev1")


def test_greeting_names_no_software(server: RunningServer) -> None:
    with ImapRaw(server.host, server.imaps_port, tls=server.ssl_context()) as client:
        assert b"mailward" not in client.greeting.lower()
        reply = client.command('ID ("name" "test")')
        assert reply.untagged == [b"* ID NIL"] and reply.ok


def test_authenticate_plain_with_initial_response(server: RunningServer) -> None:
    import base64

    with ImapRaw(server.host, server.imaps_port, tls=server.ssl_context()) as client:
        bad = base64.b64encode(f"\0{ALICE}\0wrong-password".encode()).decode()
        reply = client.command(f"AUTHENTICATE PLAIN {bad}")
        assert reply.status == "NO" and reply.code() == "AUTHENTICATIONFAILED"
        good = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode()).decode()
        reply = client.command(f"AUTHENTICATE PLAIN {good}")
        assert reply.ok, reply


def test_authenticate_plain_with_continuation_and_cancel(server: RunningServer) -> None:
    import base64

    with ImapRaw(server.host, server.imaps_port, tls=server.ssl_context()) as client:
        client.send(b"A1 AUTHENTICATE PLAIN\r\n")
        assert client.read_response().startswith(b"+")
        client.send(b"*\r\n")
        assert client.read_response().startswith(b"A1 BAD")
        client.send(b"A2 AUTHENTICATE PLAIN\r\n")
        assert client.read_response().startswith(b"+")
        token = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode())
        client.send(token + b"\r\n")
        assert client.read_response().startswith(b"A2 OK")


def test_commands_need_authentication(server: RunningServer) -> None:
    with ImapRaw(server.host, server.imaps_port, tls=server.ssl_context()) as client:
        for command in ("SELECT INBOX", 'LIST "" *', "FETCH 1 FLAGS", "APPEND INBOX {1}"):
            reply = client.command(command)
            assert reply.status == "BAD", (command, reply)
        assert client.command("NOOP").ok


# ------------------------------------------------------------ delivery and FETCH


def test_smtp_delivery_is_fetched_byte_exact(server: RunningServer, alice: ImapRaw) -> None:
    deliver_smtp(server, ALICE, MESSAGE)
    reply = alice.command("SELECT INBOX")
    assert reply.ok and reply.code() == "READ-WRITE"
    assert b"* 1 EXISTS" in reply.untagged
    fetched = alice.command("FETCH 1 (BODY.PEEK[] FLAGS)")
    line = fetched.untagged[0]
    assert line.endswith(MESSAGE + b" FLAGS (\\Recent))") or line.endswith(
        MESSAGE + b" FLAGS ())"
    ), line
    assert b"Received: " in line  # the trace header the MX added
    reply = alice.command("FETCH 1 (ENVELOPE)")
    assert b'"Quarterly figures"' in reply.untagged[0]
    assert b'(("Carol" NIL "carol" "example.org"))' in reply.untagged[0]


def test_fetch_body_sets_seen_peek_does_not(server: RunningServer, alice: ImapRaw) -> None:
    uid = append(alice, "INBOX", MESSAGE)
    alice.command("SELECT INBOX")
    reply = alice.command(f"UID FETCH {uid} (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: Quarterly figures" in reply.untagged[0]
    assert b"\\Seen" not in alice.command("FETCH 1 FLAGS").untagged[0]
    reply = alice.command("FETCH 1 BODY[TEXT]")
    assert b"The figures are attached" in b"".join(reply.untagged)
    assert b"\\Seen" in b"".join(reply.untagged)
    assert b"\\Seen" in alice.command("FETCH 1 FLAGS").untagged[0]


def test_append_keeps_flags_and_date(server: RunningServer, alice: ImapRaw) -> None:
    reply = alice.command(
        f'APPEND Drafts (\\Draft $Work) "05-Jan-2024 09:30:00 +0000" {{{len(MESSAGE)}}}', MESSAGE
    )
    assert reply.ok and reply.code().startswith("APPENDUID ")
    alice.command("SELECT Drafts")
    line = alice.command("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)").untagged[0]
    assert b"\\Draft" in line and b"$Work" in line
    assert b'INTERNALDATE " 5-Jan-2024 09:30:00 +0000"' in line  # RFC 9051 date-day-fixed
    assert b"RFC822.SIZE %d" % len(MESSAGE) in line


def test_append_to_missing_mailbox_says_trycreate(alice: ImapRaw) -> None:
    reply = alice.command(f"APPEND Nowhere {{{len(MESSAGE)}}}", MESSAGE)
    assert reply.status == "NO" and reply.code() == "TRYCREATE"
    assert alice.command("NOOP").ok


@pytest.mark.server_config({"limits.message_size": "5000"})
def test_append_over_limit_is_refused_before_the_literal(server: RunningServer) -> None:
    with connect(server) as client:
        caps = client.command("CAPABILITY").untagged[0]
        assert b"APPENDLIMIT=5000" in caps
        client.send(b"A1 APPEND INBOX {6000}\r\n")
        reply = client.read_response()
        assert reply.startswith(b"A1 NO [TOOBIG]"), reply
        assert client.command("NOOP").ok


def test_literal_plus_append(alice: ImapRaw) -> None:
    alice.send(b"A1 APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    reply = alice.read_response()
    assert reply.startswith(b"A1 OK [APPENDUID "), reply


# --------------------------------------------------------------- mailboxes


def test_create_rename_delete_with_codes(alice: ImapRaw) -> None:
    assert alice.command("CREATE Projects/2026/Q4").ok
    reply = alice.command("CREATE Projects")
    assert reply.status == "NO" and reply.code() == "ALREADYEXISTS"
    reply = alice.command('LIST "" "Projects*"')
    names = [line.rsplit(b" ", 1)[1] for line in reply.lines("LIST")]
    assert names == [b'"Projects"', b'"Projects/2026"', b'"Projects/2026/Q4"']
    assert b"\\HasChildren" in reply.lines("LIST")[0]
    assert alice.command("RENAME Projects Archive/Projects").ok
    reply = alice.command('LIST "" "Archive/*"')
    assert len(reply.lines("LIST")) == 3
    reply = alice.command("DELETE Projects")
    assert reply.status == "NO" and reply.code() == "NONEXISTENT"
    reply = alice.command("RENAME Nowhere Elsewhere")
    assert reply.status == "NO" and reply.code() == "NONEXISTENT"
    reply = alice.command("DELETE INBOX")
    assert reply.status == "NO" and reply.code() == "CANNOT"
    reply = alice.command('CREATE "a//b"')
    assert reply.status == "NO" and reply.code() == "CANNOT"
    reply = alice.command('CREATE "star*"')
    assert reply.status == "NO" and reply.code() == "CANNOT"
    assert alice.command("DELETE Archive/Projects/2026/Q4").ok


def test_list_special_use_status_and_subscriptions(alice: ImapRaw) -> None:
    reply = alice.command('LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT))')
    lists = b"\n".join(reply.lines("LIST"))
    for role in (b"\\Sent", b"\\Drafts", b"\\Trash", b"\\Junk", b"\\Archive"):
        assert role in lists
    assert len(reply.lines("STATUS")) == len(reply.lines("LIST"))
    assert alice.command("CREATE Receipts (USE (\\Archive))").status in ("OK", "NO")
    assert alice.command("SUBSCRIBE Sent").ok
    reply = alice.command('LIST (SUBSCRIBED) "" "*"')
    assert [line for line in reply.lines("LIST") if b"\\Subscribed" in line]
    reply = alice.command('LSUB "" "*"')
    assert any(line.endswith(b'"Sent"') for line in reply.lines("LSUB"))
    reply = alice.command("UNSUBSCRIBE Nothing")
    assert reply.status == "NO"
    reply = alice.command('LIST "" ""')
    assert reply.untagged == [b'* LIST (\\Noselect) "/" ""']


def test_status_and_namespace(alice: ImapRaw) -> None:
    append(alice, "INBOX", MESSAGE)
    append(alice, "INBOX", MESSAGE, "\\Seen")
    reply = alice.command("STATUS INBOX (MESSAGES UNSEEN UIDNEXT SIZE HIGHESTMODSEQ)")
    line = reply.untagged[0]
    assert b"MESSAGES 2" in line and b"UNSEEN 1" in line and b"UIDNEXT 3" in line
    assert b"SIZE %d" % (2 * len(MESSAGE)) in line
    reply = alice.command("STATUS Nowhere (MESSAGES)")
    assert reply.status == "NO" and reply.code() == "NONEXISTENT"
    assert alice.command("NAMESPACE").untagged == [b'* NAMESPACE (("" "/")) NIL NIL']


def test_utf8_names_rev1_modified_utf7_rev2_utf8(alice: ImapRaw) -> None:
    assert alice.command("CREATE R&AOk-sum&AOk-").ok  # "Résumé" in modified UTF-7
    reply = alice.command('LIST "" "R*"')
    assert reply.lines("LIST")[0].endswith(b'"R&AOk-sum&AOk-"')
    assert alice.command("ENABLE UTF8=ACCEPT").untagged == [b"* ENABLED UTF8=ACCEPT"]
    reply = alice.command('LIST "" "R*"')
    assert reply.lines("LIST")[0].endswith('"Résumé"'.encode())


# --------------------------------------------------------------- messages


def test_store_copy_move_expunge(alice: ImapRaw) -> None:
    for _ in range(3):
        append(alice, "INBOX", MESSAGE)
    alice.command("SELECT INBOX")
    reply = alice.command("STORE 1:2 +FLAGS (\\Flagged)")
    assert reply.ok and len(reply.lines("FETCH")) == 2
    reply = alice.command("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert reply.ok and reply.lines("FETCH") == []
    reply = alice.command("UID COPY 1:2 Archive")
    assert reply.ok and reply.code().startswith("COPYUID ")
    reply = alice.command("COPY 1 Nowhere")
    assert reply.status == "NO" and reply.code() == "TRYCREATE"
    reply = alice.command("MOVE 3 Trash")
    assert reply.ok
    assert any(b"COPYUID" in u for u in reply.untagged)
    assert b"* 3 EXPUNGE" in reply.untagged
    assert alice.command("STORE 1 +FLAGS (\\Deleted)").ok
    reply = alice.command("EXPUNGE")
    assert reply.untagged == [b"* 1 EXPUNGE"] and reply.ok
    reply = alice.command("FETCH 1:* (UID FLAGS)")
    assert len(reply.lines("FETCH")) == 1
    assert alice.command("STATUS Archive (MESSAGES)").untagged[0].endswith(b"(MESSAGES 2)")


def test_uid_expunge_only_named(alice: ImapRaw) -> None:
    uids = [append(alice, "INBOX", MESSAGE, "\\Deleted") for _ in range(3)]
    alice.command("SELECT INBOX")
    reply = alice.command(f"UID EXPUNGE {uids[1]}")
    assert reply.ok and reply.untagged == [b"* 2 EXPUNGE"]
    assert len(alice.command("FETCH 1:* UID").lines("FETCH")) == 2


def test_condstore_unchangedsince(alice: ImapRaw) -> None:
    append(alice, "INBOX", MESSAGE)
    reply = alice.command("SELECT INBOX (CONDSTORE)")
    highest = [u for u in reply.untagged if b"HIGHESTMODSEQ" in u]
    assert highest
    line = alice.command("FETCH 1 (MODSEQ)").untagged[0]
    modseq = int(line.split(b"MODSEQ (")[1].split(b")")[0])
    assert alice.command(f"STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Seen)").ok
    reply = alice.command(f"STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS (\\Flagged)")
    assert reply.ok and reply.code() == "MODIFIED 1"
    reply = alice.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {modseq})")
    assert len(reply.lines("FETCH")) == 1


def test_search_keys_and_esearch(alice: ImapRaw) -> None:
    append(alice, "INBOX", MESSAGE)
    other = MESSAGE.replace(b"Quarterly figures", b"Lunch on Friday")
    append(alice, "INBOX", other, "\\Flagged")
    alice.command("SELECT INBOX")
    assert alice.command("SEARCH SUBJECT lunch").untagged == [b"* SEARCH 2"]
    assert alice.command("SEARCH FLAGGED").untagged == [b"* SEARCH 2"]
    assert alice.command("SEARCH NOT FLAGGED").untagged == [b"* SEARCH 1"]
    assert alice.command("SEARCH OR SUBJECT lunch BODY spirit").untagged == [b"* SEARCH 1 2"]
    assert alice.command("SEARCH FROM nobody").untagged == [b"* SEARCH"]
    reply = alice.command("UID SEARCH RETURN (MIN MAX COUNT) ALL")
    assert reply.untagged[0].startswith(b'* ESEARCH (TAG "') and b"COUNT 2" in reply.untagged[0]
    reply = alice.command("SEARCH CHARSET KOI8-R SUBJECT x")
    assert reply.status == "NO" and reply.code().startswith("BADCHARSET")


def test_quota_is_reported_and_enforced(server: RunningServer, alice: ImapRaw) -> None:
    server.cli("user", "quota", ALICE, "2K")
    reply = alice.command("GETQUOTAROOT INBOX")
    assert b'* QUOTAROOT "INBOX" ""' in reply.untagged
    assert any(u.startswith(b'* QUOTA "" (STORAGE ') for u in reply.untagged)
    big = MESSAGE + b"x" * 3000 + b"\r\n"
    reply = alice.command(f"APPEND INBOX {{{len(big)}}}", big)
    assert reply.status == "NO" and reply.code() == "OVERQUOTA"


# ------------------------------------------------------------ concurrency


def test_two_sessions_see_each_others_changes(server: RunningServer, alice: ImapRaw) -> None:
    for _ in range(2):
        append(alice, "INBOX", MESSAGE)
    other = connect(server)
    try:
        alice.command("SELECT INBOX")
        other.command("SELECT INBOX")
        assert other.command("STORE 1 +FLAGS (\\Deleted \\Answered)").ok
        reply = alice.command("NOOP")
        assert any(b"FETCH (FLAGS (" in u and b"\\Answered" in u for u in reply.untagged)
        assert other.command("EXPUNGE").ok
        reply = alice.command("FETCH 1 FLAGS")  # no EXPUNGE during a FETCH
        assert not [u for u in reply.untagged if u.endswith(b"EXPUNGE")]
        reply = alice.command("NOOP")
        assert b"* 1 EXPUNGE" in reply.untagged
        append(other, "INBOX", MESSAGE)
        reply = alice.command("NOOP")
        assert b"* 2 EXISTS" in reply.untagged
    finally:
        other.close()


def test_qresync_reports_vanished(server: RunningServer, alice: ImapRaw) -> None:
    for _ in range(3):
        append(alice, "INBOX", MESSAGE)
    other = connect(server)
    try:
        assert alice.command("ENABLE QRESYNC").ok
        alice.command("SELECT INBOX")
        other.command("SELECT INBOX")
        other.command("STORE 2 +FLAGS (\\Deleted)")
        other.command("EXPUNGE")
        reply = alice.command("NOOP")
        assert b"* VANISHED 2" in reply.untagged, reply
    finally:
        other.close()


def test_idle_reports_smtp_delivery_promptly(server: RunningServer, alice: ImapRaw) -> None:
    alice.command("SELECT INBOX")
    alice.send(b"I1 IDLE\r\n")
    assert alice.read_response().startswith(b"+")
    started = time.monotonic()
    deliver_smtp(server, ALICE, MESSAGE)
    line = alice.read_response()
    elapsed = time.monotonic() - started
    assert line == b"* 1 EXISTS", line
    assert elapsed < 5  # pushed at once, not found by the 10 s poll
    alice.send(b"DONE\r\n")
    while not (line := alice.read_response()).startswith(b"I1 "):
        pass
    assert line.startswith(b"I1 OK")


# --------------------------------------------------------------- isolation and abuse


def test_accounts_are_walled_off(server: RunningServer, alice: ImapRaw) -> None:
    assert alice.command("CREATE Secret").ok
    uid = append(alice, "Secret", MESSAGE)
    with connect(server, BOB) as bob:
        for command in ("SELECT Secret", "STATUS Secret (MESSAGES)", "DELETE Secret"):
            reply = bob.command(command)
            assert reply.status == "NO", (command, reply)
        assert bob.command(f"APPEND Secret {{{len(MESSAGE)}}}", MESSAGE).code() == "TRYCREATE"
        assert bob.command('LIST "" "*"').lines("LIST") != []
        assert b"Secret" not in b"".join(bob.command('LIST "" "*"').untagged)
        bob.command("SELECT INBOX")
        reply = bob.command(f"UID FETCH {uid} BODY[]")
        assert reply.ok and reply.lines("FETCH") == []
        assert bob.command(f"UID COPY {uid} INBOX").ok
        assert bob.command("STATUS INBOX (MESSAGES)").untagged[0].endswith(b"(MESSAGES 0)")
        assert bob.command("RENAME Secret Mine").status == "NO"
    assert alice.command("STATUS Secret (MESSAGES)").untagged[0].endswith(b"(MESSAGES 1)")


@pytest.mark.parametrize(
    "garbage",
    [b"A1 FETCH\r\n", b"A1 FROB x\r\n", b"no-tag\r\n", b"A1 SELECT (((\r\n", b"\x00\x01\r\n"],
    ids=["missing-args", "unknown", "untagged", "parens", "binary"],
)
def test_garbage_gets_bad_and_the_session_goes_on(alice: ImapRaw, garbage: bytes) -> None:
    alice.send(garbage)
    line = alice.read_response()
    assert b" BAD " in line, line
    assert alice.command("NOOP").ok


def test_repeated_garbage_ends_with_bye(alice: ImapRaw) -> None:
    for n in range(40):
        alice.send(b"X%d FROB\r\n" % n)
    seen = []
    try:
        while True:
            seen.append(alice.read_response())
    except (ConnectionError, OSError):
        pass
    assert any(line.startswith(b"* BYE") for line in seen)


def test_imaplib_round_trip(server: RunningServer) -> None:
    client = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=server.ssl_context())
    try:
        client.login(ALICE, PASSWORDS[ALICE])
        typ, data = client.append("INBOX", "(\\Seen)", None, MESSAGE)
        assert typ == "OK"
        typ, data = client.select("INBOX")
        assert typ == "OK" and data == [b"1"]
        typ, data = client.fetch("1", "(RFC822)")
        assert typ == "OK" and data[0][1] == MESSAGE
        typ, data = client.search(None, "SEEN")
        assert data == [b"1"]
        client.logout()
    finally:
        if client.state != "LOGOUT":
            client.shutdown()


# --------------------------------------------------------------- IMAP4rev2 and shutdown


def test_enable_imap4rev2_changes_responses(alice: ImapRaw) -> None:
    append(alice, "INBOX", MESSAGE)
    assert alice.command("ENABLE IMAP4rev2").untagged == [b"* ENABLED IMAP4rev2"]
    reply = alice.command("SELECT INBOX")
    assert not reply.lines("RECENT")  # rev2 has no \Recent (RFC 9051 appendix E)
    assert any(u.startswith(b'* LIST () "/" "INBOX"') for u in reply.untagged), reply
    reply = alice.command("SEARCH ALL")  # rev2 answers SEARCH with ESEARCH
    assert reply.untagged[0].startswith(b'* ESEARCH (TAG "') and b"ALL 1" in reply.untagged[0]
    assert b"\\Recent" not in alice.command("FETCH 1 FLAGS").untagged[0]


def test_sigterm_says_bye_to_idle_imap_and_pop3_sessions(server: RunningServer) -> None:
    import poplib
    import signal

    imap = connect(server)
    imap.command("SELECT INBOX")
    imap.send(b"I1 IDLE\r\n")
    assert imap.read_response().startswith(b"+")
    pop = poplib.POP3_SSL(server.host, server.pop3s_port, context=server.ssl_context())
    pop.user(ALICE)
    pop.pass_(PASSWORDS[ALICE])
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    line = imap.read_response()
    assert line.startswith(b"* BYE"), line
    assert imap.closed()
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        pop.stat()  # the server closed the POP3 session with -ERR or hung up
    assert server.process.wait(timeout=30) == 0
    imap.close()
    pop.close()


def test_a_move_by_one_session_is_an_expunge_for_the_other(
    server: RunningServer, alice: ImapRaw
) -> None:
    for _ in range(3):
        append(alice, "INBOX", MESSAGE)
    other = connect(server)
    try:
        alice.command("SELECT INBOX")
        other.command("SELECT INBOX")
        reply = other.command("UID MOVE 2 Archive")
        assert reply.ok and b"* 2 EXPUNGE" in reply.untagged
        reply = alice.command("UID FETCH 1:* (FLAGS)")  # UID FETCH may carry EXPUNGE
        assert b"* 2 EXPUNGE" in reply.untagged
        assert len(reply.lines("FETCH")) == 2
        assert alice.command("STATUS Archive (MESSAGES)").untagged[0].endswith(b"(MESSAGES 1)")
    finally:
        other.close()
