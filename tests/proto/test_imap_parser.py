"""Tests of the IMAP command parser (proto.imap_commands): every command, valid and not.

Each case is the command bytes as the connection core assembles them (lines without the
final CRLF, literals in place as `{n}CRLF` + octets) and the typed result, or the error
text the client would see. Grammar: RFC 9051 9, RFC 3501 9 and the extensions named in
the module docstring of proto.imap_commands.
"""

from __future__ import annotations

import datetime

import pytest

from mailward.proto.imap_commands import (
    MAX_RANGES,
    AppendHead,
    Authenticate,
    BadCharsetError,
    Capability,
    Check,
    Close,
    Command,
    CommandArgs,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchItem,
    GetQuota,
    GetQuotaRoot,
    Id,
    Idle,
    ImapParseError,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Qresync,
    Rename,
    Search,
    SearchAll,
    SearchAnd,
    SearchBody,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    SearchUid,
    Section,
    Select,
    SequenceSet,
    StartTls,
    Status,
    Store,
    Subscribe,
    Unselect,
    Unsubscribe,
    command_head,
    parse_append_head,
    parse_command,
)


def args(raw: bytes) -> CommandArgs:
    return parse_command(raw).args


def error(raw: bytes) -> ImapParseError:
    with pytest.raises(ImapParseError) as info:
        parse_command(raw)
    return info.value


def seq(*ranges: tuple[int, int]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


ONE = seq((1, 1))

# --- the command wrapper and head ------------------------------------------------------------


def test_command_wrapper() -> None:
    assert parse_command(b"a001 noop") == Command("a001", "NOOP", False, Noop())
    assert parse_command(b"A.1 UID fetch 1 UID") == Command(
        "A.1", "FETCH", True, Fetch(ONE, (FetchItem("UID"),))
    )
    assert parse_command(b"x EXAMINE INBOX").name == "EXAMINE"


@pytest.mark.parametrize(
    ("raw", "head"),
    [
        (b"a NOOP", ("a", "NOOP", False)),
        (b"tag-1 login {5}\r\n", ("tag-1", "LOGIN", False)),
        (b"t UID copy 1 x", ("t", "COPY", True)),
        (b"t] SELECT x", ("t]", "SELECT", False)),  # "]" is an ASTRING-CHAR
    ],
)
def test_command_head(raw: bytes, head: tuple[str, str, bool]) -> None:
    assert command_head(raw) == head


@pytest.mark.parametrize(
    ("raw", "text", "tag"),
    [
        (b"", "Invalid or missing tag", None),
        (b" NOOP", "Invalid or missing tag", None),
        (b"+ NOOP", "Invalid or missing tag", None),  # RFC 9051 9: tag excludes "+"
        (b"a+b NOOP", "Expected a space", "a"),
        (b"a*b NOOP", "Expected a space", "a"),
        (b"(a NOOP", "Invalid or missing tag", None),
        (b"\xc3\xa9 NOOP", "Invalid or missing tag", None),
        (b"a", "Missing command", "a"),
        (b"a ", "Expected a command name", "a"),
        (b"a  NOOP", "Expected a command name", "a"),
        (b"a FROB", "Unknown command", "a"),
        (b"a NOOPS", "Unknown command", "a"),
        (b"a NOOP(", "Unknown command", "a"),
        (b"a UID", "Expected a space", "a"),
        (b"a UID NOOP", "Unknown UID command", "a"),
        (b"a UID UID FETCH 1 UID", "Unknown UID command", "a"),
        (b"a APPEND INBOX", "APPEND needs a message literal", "a"),
    ],
)
def test_head_errors(raw: bytes, text: str, tag: str | None) -> None:
    exc = error(raw)
    assert (exc.text, exc.tag, exc.status, exc.code) == (text, tag, "BAD", None)


# --- commands without arguments --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAPABILITY", Capability()),
        ("NOOP", Noop()),
        ("LOGOUT", Logout()),
        ("STARTTLS", StartTls()),
        ("NAMESPACE", Namespace()),
        ("IDLE", Idle()),
        ("CHECK", Check()),
        ("CLOSE", Close()),
        ("UNSELECT", Unselect()),
        ("EXPUNGE", Expunge()),
    ],
)
def test_no_argument_commands(name: str, value: CommandArgs) -> None:
    assert args(b"t " + name.encode()) == value
    assert args(b"t " + name.lower().encode()) == value
    assert error(b"t " + name.encode() + b" x").text == "Unexpected characters at end of command"
    assert error(b"t " + name.encode() + b" ").text == "Unexpected characters at end of command"


# --- strings: atoms, quoted, literals --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "user", "password"),
    [
        (b"t LOGIN fred secret", "fred", "secret"),
        (b't LOGIN "fred smith" "se\\"cr\\\\et"', "fred smith", 'se"cr\\et'),
        (b"t LOGIN {4}\r\nfred {6}\r\nsecret", "fred", "secret"),
        (b"t LOGIN {4+}\r\nfred {0}\r\n", "fred", ""),
        (b't LOGIN "" ""', "", ""),
        (b"t LOGIN f]ed pass]", "f]ed", "pass]"),
        (b't LOGIN "j\xc3\xb6rg" {5}\r\np\xc3\xa4ss', "jörg", "päss"),  # RFC 9051 UTF-8
        (b"t LOGIN {6}\r\na b\r\nc x", "a b\r\nc", "x"),  # literals carry anything
    ],
)
def test_login(raw: bytes, user: str, password: str) -> None:
    assert args(raw) == Login(user, password)


def test_login_password_not_in_repr() -> None:
    assert "secret" not in repr(args(b"t LOGIN fred secret"))


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t LOGIN fred", "Expected a space"),
        (b"t LOGIN fred ", "Expected a password"),
        (b"t LOGIN fred  secret", "Expected a password"),
        (b't LOGIN "fred secret', "Invalid quoted string"),
        (b't LOGIN "fr\\ed" x', "Invalid quoted string"),  # only \" and \\ escapes
        (b't LOGIN "a\rb" x', "Invalid quoted string"),
        (b't LOGIN "a\x00b" x', "Invalid quoted string"),
        (b"t LOGIN {9}\r\nfred x", "Truncated literal"),
        (b"t LOGIN {4}fred x", "Invalid literal"),
        (b"t LOGIN ~{4}\r\nfred x", "literal8 is not allowed here"),
        (b"t LOGIN fr%d x", "Expected a space"),
        (b"t LOGIN f(x) y", "Expected a space"),
        (b"t LOGIN \xff x", "Expected a user name"),
        (b'"t LOGIN "\xff" x', "Invalid or missing tag"),
        (b't LOGIN "\xff" x', "Invalid UTF-8 in user name"),
        (b"t LOGIN a b c", "Unexpected characters at end of command"),
    ],
)
def test_login_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"t AUTHENTICATE plain", Authenticate("PLAIN", None)),
        (b"t AUTHENTICATE PLAIN =", Authenticate("PLAIN", b"")),  # RFC 4959: "=" is empty
        (b"t AUTHENTICATE PLAIN AHVAcA==", Authenticate("PLAIN", b"\x00u@p")),
        (b"t AUTHENTICATE SCRAM-SHA-256", Authenticate("SCRAM-SHA-256", None)),
    ],
)
def test_authenticate(raw: bytes, value: Authenticate) -> None:
    assert args(raw) == value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t AUTHENTICATE", "Expected a space"),
        (b"t AUTHENTICATE PLAIN AHVAcA=", "Invalid base64 in initial response"),
        (b"t AUTHENTICATE PLAIN *", "Expected an initial response"),
        (b"t AUTHENTICATE PLAIN ==", "Invalid base64 in initial response"),
        (b"t AUTHENTICATE PLAIN AHVAcA== x", "Unexpected characters at end of command"),
        (b'"t AUTHENTICATE "PLAIN"', "Invalid or missing tag"),
    ],
)
def test_authenticate_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


# --- mailbox commands ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"t SELECT INBOX", Select("INBOX")),
        (b"t SELECT inbox", Select("inbox")),  # case folding of INBOX is the session's
        (b't SELECT "Sent Items"', Select("Sent Items")),
        (b"t SELECT {4}\r\na b\x7e", Select("a b~")),
        (b"t EXAMINE INBOX", Select("INBOX", readonly=True)),
        (b"t SELECT INBOX (CONDSTORE)", Select("INBOX", condstore=True)),
        (b"t SELECT Entw&APw-rfe", Select("Entw&APw-rfe")),  # raw: mUTF-7 not decoded
        (b't SELECT "Entw\xc3\xbcrfe"', Select("Entwürfe")),
        # RFC 7162 3.2.5.2 examples
        (
            b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
            Select(
                "INBOX",
                qresync=Qresync(67890007, 20050715194045000, seq((41, 41), (43, 211), (214, 541))),
            ),
        ),
        (
            b"B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 "
            b"(1:15,19 20:30)))",
            Select(
                "INBOX",
                qresync=Qresync(
                    67890007,
                    90060115194045000,
                    seq((41, 211), (214, 541)),
                    (seq((1, 15), (19, 19)), seq((20, 30))),
                ),
            ),
        ),
        (
            b"t SELECT INBOX (QRESYNC (1 0 (1 2)) CONDSTORE)",
            Select("INBOX", condstore=True, qresync=Qresync(1, 0, None, (ONE, seq((2, 2))))),
        ),
    ],
)
def test_select(raw: bytes, value: Select) -> None:
    assert args(raw) == value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t SELECT", "Expected a space"),
        (b"t SELECT INBOX ()", "Expected a select parameter"),
        (b"t SELECT INBOX (FOO)", "Unknown select parameter"),
        (b"t SELECT INBOX (CONDSTORE CONDSTORE)", "Duplicate select parameter"),
        (b"t SELECT INBOX (QRESYNC (0 1))", "Number out of range in a UIDVALIDITY"),
        (b"t SELECT INBOX (QRESYNC (1 1 1:*))", '"*" is not allowed in known UIDs'),
        (b"t SELECT INBOX (QRESYNC (1 1 $))", "'$' is not allowed here"),
        (
            b"t SELECT INBOX (QRESYNC (1 99999999999999999999))",
            "Number out of range in a mod-sequence",
        ),
        (b't SELECT "a\xffb"', "Invalid UTF-8 in mailbox name"),
        (b't SELECT "a\x01b"', "Control character in mailbox name"),
        (b"t SELECT {3}\r\na\nb", "Control character in mailbox name"),
        (b"t SELECT a%", "Unexpected characters at end of command"),
        (b"t SELECT a*", "Unexpected characters at end of command"),
    ],
)
def test_select_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"t CREATE owatagusiam/", Create("owatagusiam/")),
        (
            b"t CREATE MySpecial (USE (\\Drafts \\sent))",
            Create("MySpecial", ("\\Drafts", "\\Sent")),
        ),
        (b"t CREATE x (USE ())", Create("x")),
        (b"t CREATE x (USE (\\Custom))", Create("x", ("\\Custom",))),  # session: NO [USEATTR]
        (b"t DELETE blurdybloop", Delete("blurdybloop")),
        (b"t RENAME blurdybloop sarasoop", Rename("blurdybloop", "sarasoop")),
        (b't RENAME "a b" {3}\r\nc d', Rename("a b", "c d")),
        (b"t SUBSCRIBE #news.comp.mail.mime", Subscribe("#news.comp.mail.mime")),
        (b"t UNSUBSCRIBE x", Unsubscribe("x")),
    ],
)
def test_mailbox_commands(raw: bytes, value: CommandArgs) -> None:
    assert args(raw) == value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t CREATE", "Expected a space"),
        (b"t CREATE x (FOO (\\Sent))", "Unknown create parameter"),
        (b"t CREATE x (USE (Sent))", "Expected a special-use attribute"),
        (b"t CREATE x (USE (\\Sent)", 'Expected ")"'),
        (b"t DELETE", "Expected a space"),
        (b"t RENAME a", "Expected a space"),
        (b"t RENAME a b c", "Unexpected characters at end of command"),
        (b"t SUBSCRIBE", "Expected a space"),
    ],
)
def test_mailbox_command_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b't LIST "" ""', List("", ("",))),
        (b'A101 LIST "" *', List("", ("*",))),
        (b"t LIST ~/Mail/ %", List("~/Mail/", ("%",))),
        (b't LIST "" "foo/%"', List("", ("foo/%",))),
        (b"t LIST x a]b*%", List("x", ("a]b*%",))),
        (b"t LIST {0}\r\n {1}\r\n*", List("", ("*",))),
        # RFC 5258 5 examples
        (
            b'A02 LIST (SUBSCRIBED) "" "*"',
            List("", ("*",), selection=("SUBSCRIBED",)),
        ),
        (
            b'A03 LIST () "" "%" RETURN (CHILDREN)',
            List("", ("%",), returns=("CHILDREN",)),
        ),
        (
            b'A04 LIST (REMOTE) "" "%" RETURN (CHILDREN)',
            List("", ("%",), selection=("REMOTE",), returns=("CHILDREN",)),
        ),
        (
            b'A05 LIST (subscribed recursivematch) "" "%" RETURN (children)',
            List("", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",)),
        ),
        (
            b't LIST "" ("INBOX" "Drafts" %)',
            List("", ("INBOX", "Drafts", "%")),
        ),
        (b't LIST "" % RETURN ()', List("", ("%",))),
        # RFC 6154 5.1, RFC 5819 3
        (
            b't LIST (SPECIAL-USE) "" "*" RETURN (SPECIAL-USE)',
            List("", ("*",), ("SPECIAL-USE",), ("SPECIAL-USE",)),
        ),
        (
            b'A01 LIST "" % RETURN (STATUS (MESSAGES UNSEEN))',
            List("", ("%",), returns=("STATUS",), status_items=("MESSAGES", "UNSEEN")),
        ),
        (b"t LSUB #news. comp.mail.*", Lsub("#news.", "comp.mail.*")),
    ],
)
def test_list(raw: bytes, value: CommandArgs) -> None:
    assert args(raw) == value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t LIST", "Expected a space"),
        (b't LIST ""', "Expected a space"),
        (b't LIST "" ', "Expected a pattern"),
        (b't LIST (RECURSIVEMATCH) "" %', "RECURSIVEMATCH needs another selection option"),
        (b't LIST (REMOTE RECURSIVEMATCH) "" %', "RECURSIVEMATCH needs another selection option"),
        (b't LIST (FOO) "" %', "Unknown list selection option"),
        (b't LIST "" % RETURN (FOO)', "Unknown list return option"),
        (b't LIST "" % RETURN (STATUS ())', "Expected a status item"),
        (b't LIST "" % RETURNS (CHILDREN)', "Expected RETURN"),
        (b't LIST "" ()', "Expected a pattern"),
        (b't LIST "" % %', "Expected RETURN"),
        (b"t LSUB x", "Expected a space"),
    ],
)
def test_list_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (
            b"A042 STATUS blurdybloop (UIDNEXT MESSAGES)",
            Status("blurdybloop", ("UIDNEXT", "MESSAGES")),
        ),
        (
            b"t STATUS x (messages uidnext uidvalidity unseen deleted size recent "
            b"highestmodseq appendlimit)",
            Status(
                "x",
                (
                    "MESSAGES",
                    "UIDNEXT",
                    "UIDVALIDITY",
                    "UNSEEN",
                    "DELETED",
                    "SIZE",
                    "RECENT",
                    "HIGHESTMODSEQ",
                    "APPENDLIMIT",
                ),
            ),
        ),
        (b"t ENABLE CONDSTORE", Enable(("CONDSTORE",))),
        (b't GETQUOTA ""', GetQuota("")),  # RFC 9208 4.2 example root
        (b"t GETQUOTA user.fred", GetQuota("user.fred")),
        (b"t GETQUOTAROOT INBOX", GetQuotaRoot("INBOX")),
        (b't GETQUOTAROOT "Sent Items"', GetQuotaRoot("Sent Items")),
        (b"t ENABLE utf8=accept qresync", Enable(("UTF8=ACCEPT", "QRESYNC"))),
        (b"t NAMESPACE", Namespace()),
    ],
)
def test_status_enable(raw: bytes, value: CommandArgs) -> None:
    assert args(raw) == value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t STATUS x", "Expected a space"),
        (b"t STATUS x ()", "Expected a status item"),
        (b"t STATUS x (FOO)", "Unknown status item"),
        (b"t STATUS x MESSAGES", 'Expected "("'),
        (b"t ENABLE", "Expected a space"),
        (b"t GETQUOTA", "Expected a space"),
        (b"t GETQUOTAROOT", "Expected a space"),
        (b"t GETQUOTAROOT a b", "Unexpected characters at end of command"),
        (b't SETQUOTA "" (STORAGE 512)', "Unknown command"),
        (b"t ENABLE ", "Expected a capability"),
        (b"t ENABLE a  b", "Expected a capability"),
    ],
)
def test_status_enable_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"t ID NIL", Id(None)),
        (b"t ID nil", Id(None)),
        (b"t ID ()", Id({})),
        (
            b'a023 ID ("name" "sodr" "version" "19.34" "vendor" NIL)',
            Id({"name": "sodr", "version": "19.34", "vendor": None}),
        ),
        (b't ID ({4}\r\nname "x")', Id({"name": "x"})),
    ],
)
def test_id(raw: bytes, value: Id) -> None:
    assert args(raw) == value


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t ID", "Expected a space"),
        (b"t ID NILS", "Expected NIL or a parameter list"),
        (b"t ID (name x)", "Expected an ID field"),
        (b't ID ("name")', "Expected a space"),
        (b't ID ("' + b"k" * 31 + b'" "v")', "ID field or value too long"),
        (b't ID ("k" "' + b"v" * 1025 + b'")', "ID field or value too long"),
        (
            b"t ID (" + b" ".join(b'"k%d" NIL' % i for i in range(31)) + b")",
            "Too many ID fields",
        ),
    ],
)
def test_id_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


# --- sequence sets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"1", ONE),
        (b"*", seq((0, 0))),
        (b"2:4", seq((2, 4))),
        (b"4:2", seq((4, 2))),
        (b"1:*", seq((1, 0))),
        (b"*:3", seq((0, 3))),
        (b"2,4:7,9,12:*", seq((2, 2), (4, 7), (9, 9), (12, 0))),
        (b"4294967295", seq((4294967295, 4294967295))),
        (b"$", SequenceSet((), saved=True)),
    ],
)
def test_sequence_set_parse(text: bytes, value: SequenceSet) -> None:
    fetch = args(b"t FETCH " + text + b" UID")
    assert isinstance(fetch, Fetch)
    assert fetch.set == value
    if not value.saved:
        assert str(value) == text.decode()


@pytest.mark.parametrize(
    "text",
    [
        b"0",
        b"0:3",
        b"01",
        b"1:",
        b":1",
        b"1::2",
        b"1,",
        b",1",
        b"1:2:3",
        b"4294967296",
        b"1,$",
        b"$$",
    ],
)
def test_sequence_set_invalid(text: bytes) -> None:
    assert error(b"t FETCH " + text + b" UID").text == "Invalid sequence set"


def test_sequence_set_bounded() -> None:
    many = b",".join(b"%d" % (i + 1) for i in range(MAX_RANGES))
    fetch = args(b"t FETCH " + many + b" UID")
    assert isinstance(fetch, Fetch)
    assert len(fetch.set.ranges) == MAX_RANGES
    assert error(b"t FETCH " + many + b",1 UID").text == "Too many ranges in sequence set"


def test_sequence_set_resolve() -> None:
    s = seq((5, 0), (1, 3), (4, 4), (9, 7))
    assert s.resolve(10) == [(1, 10)]
    assert s.resolve(0) == [(1, 4), (7, 9)]  # "*" in an empty mailbox matches nothing
    assert seq((12, 0)).resolve(10) == [(10, 12)]  # RFC 9051 9: 12:* is 10:12
    assert seq((0, 0)).resolve(0) == []
    assert seq((3, 3), (1, 1)).resolve(5) == [(1, 1), (3, 3)]
    assert seq((1, 2), (3, 4)).resolve(5) == [(1, 4)]  # adjacent ranges merge
    assert s.contains(6, 10) and not s.contains(6, 4) and s.contains(8, 0)
    assert not seq((0, 0)).contains(1, 0)
    with pytest.raises(ValueError):
        SequenceSet((), saved=True).resolve(3)
    with pytest.raises(ValueError):
        SequenceSet((), saved=True).contains(1, 3)


def test_sequence_set_from_numbers() -> None:
    assert str(SequenceSet.from_numbers([5, 1, 2, 3, 9, 8])) == "1:3,5,8:9"
    assert str(SequenceSet.from_numbers([])) == ""
    assert str(SequenceSet((), saved=True)) == "$"


# --- SEARCH (RFC 9051 6.4.4) -----------------------------------------------------------------


def key(text: bytes) -> SearchKey:
    search = args(b"t SEARCH " + text)
    assert isinstance(search, Search)
    return search.key


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"ALL", SearchAll()),
        (b"all", SearchAll()),
        (b"ANSWERED", SearchFlag("\\Answered", True)),
        (b"UNANSWERED", SearchFlag("\\Answered", False)),
        (b"DELETED", SearchFlag("\\Deleted", True)),
        (b"UNDELETED", SearchFlag("\\Deleted", False)),
        (b"DRAFT", SearchFlag("\\Draft", True)),
        (b"UNDRAFT", SearchFlag("\\Draft", False)),
        (b"FLAGGED", SearchFlag("\\Flagged", True)),
        (b"UNFLAGGED", SearchFlag("\\Flagged", False)),
        (b"SEEN", SearchFlag("\\Seen", True)),
        (b"UNSEEN", SearchFlag("\\Seen", False)),
        (b"RECENT", SearchFlag("\\Recent", True)),
        (b"OLD", SearchFlag("\\Recent", False)),
        (b"NEW", SearchAnd((SearchFlag("\\Recent", True), SearchFlag("\\Seen", False)))),
        (b"KEYWORD $Forwarded", SearchFlag("$Forwarded", True)),
        (b"UNKEYWORD Junk", SearchFlag("Junk", False)),
        (b"FROM Smith", SearchHeader("From", "Smith")),
        (b'TO "a b"', SearchHeader("To", "a b")),
        (b"CC x", SearchHeader("Cc", "x")),
        (b"BCC x", SearchHeader("Bcc", "x")),
        (b"SUBJECT {5}\r\nhi yo", SearchHeader("Subject", "hi yo")),
        (b'HEADER Message-ID "<x@y>"', SearchHeader("Message-ID", "<x@y>")),
        (b'HEADER X-Spam ""', SearchHeader("X-Spam", "")),
        (b"BODY hello", SearchBody("hello")),
        (b"TEXT hello", SearchText("hello")),
        (b"BEFORE 1-Feb-1994", SearchDate("internal", "before", datetime.date(1994, 2, 1))),
        (b'ON "01-feb-1994"', SearchDate("internal", "on", datetime.date(1994, 2, 1))),
        (b"SINCE 29-Feb-2024", SearchDate("internal", "since", datetime.date(2024, 2, 29))),
        (b"SENTBEFORE 1-Jan-2000", SearchDate("sent", "before", datetime.date(2000, 1, 1))),
        (b"SENTON 1-Jan-2000", SearchDate("sent", "on", datetime.date(2000, 1, 1))),
        (b"SENTSINCE 1-Jan-2000", SearchDate("sent", "since", datetime.date(2000, 1, 1))),
        (b"LARGER 1000", SearchSize("larger", 1000)),
        (b"SMALLER 9223372036854775807", SearchSize("smaller", 9223372036854775807)),
        (b"UID 1:*", SearchUid(seq((1, 0)))),
        (b"UID $", SearchUid(SequenceSet((), saved=True))),
        (b"2:4,7", SearchSequence(seq((2, 4), (7, 7)))),
        (b"*", SearchSequence(seq((0, 0)))),
        (b"$", SearchSequence(SequenceSet((), saved=True))),
        (b"NOT SEEN", SearchNot(SearchFlag("\\Seen", True))),
        (b"OR SEEN 1", SearchOr(SearchFlag("\\Seen", True), SearchSequence(ONE))),
        (b"(SEEN)", SearchAnd((SearchFlag("\\Seen", True),))),
        (
            b"(SEEN (FLAGGED DRAFT))",
            SearchAnd(
                (
                    SearchFlag("\\Seen", True),
                    SearchAnd((SearchFlag("\\Flagged", True), SearchFlag("\\Draft", True))),
                )
            ),
        ),
        (b"MODSEQ 620162338", SearchModseq(620162338)),
        (b'MODSEQ "/flags/\\\\draft" all 620162338', SearchModseq(620162338)),  # RFC 7162
        (b"MODSEQ 0", SearchModseq(0)),
        (
            b"FLAGGED SINCE 1-Feb-1994 NOT FROM Smith",  # RFC 9051 6.4.4 example
            SearchAnd(
                (
                    SearchFlag("\\Flagged", True),
                    SearchDate("internal", "since", datetime.date(1994, 2, 1)),
                    SearchNot(SearchHeader("From", "Smith")),
                )
            ),
        ),
        (
            b"OR OR 1 2 NOT 3",
            SearchOr(
                SearchOr(SearchSequence(ONE), SearchSequence(seq((2, 2)))),
                SearchNot(SearchSequence(seq((3, 3)))),
            ),
        ),
    ],
)
def test_search_keys(text: bytes, value: SearchKey) -> None:
    assert key(text) == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"t SEARCH ALL", Search(None, SearchAll())),
        (b"t SEARCH CHARSET UTF-8 TEXT x", Search("UTF-8", SearchText("x"))),
        (b't SEARCH charset "us-ascii" TEXT x', Search("US-ASCII", SearchText("x"))),
        (b"t SEARCH RETURN (MIN MAX) ALL", Search(None, SearchAll(), ("MIN", "MAX"))),
        (b"t SEARCH RETURN () ALL", Search(None, SearchAll(), ("ALL",))),  # RFC 9051 6.4.4
        (b"t SEARCH RETURN (count count save) ALL", Search(None, SearchAll(), ("COUNT", "SAVE"))),
        (
            b"t SEARCH RETURN (ALL) CHARSET UTF-8 BODY {4}\r\n\xc3\xa9t\xc3",
            None,
        ),
        (
            b"t SEARCH RETURN (ALL) CHARSET UTF-8 BODY {4}\r\n\xc3\xa9t\xc3\xa9"[:-2] + b"\xa9",
            None,
        ),
        (
            b"t SEARCH CHARSET UTF-8 SUBJECT {6}\r\n\xc3\xa9t\xc3\xa9!",
            Search("UTF-8", SearchHeader("Subject", "été!")),
        ),
    ],
)
def test_search_command(raw: bytes, value: Search | None) -> None:
    if value is None:
        with pytest.raises(ImapParseError):
            parse_command(raw)
    else:
        assert args(raw) == value
        uid = parse_command(raw.replace(b" SEARCH ", b" UID SEARCH ", 1))
        assert uid.uid and uid.args == value


@pytest.mark.parametrize(
    ("text", "error_text"),
    [
        (b"", "Expected a search key"),
        (b"FOO", "Unknown search key"),
        (b"ALL ", "Expected a search key"),
        (b"FROM", "Expected a space"),
        (b"HEADER Subject", "Expected a space"),
        (b'HEADER "Sub ject" x', "Invalid header field name"),
        (b'HEADER "" x', "Invalid header field name"),
        (b"HEADER Subject: x", "Invalid header field name"),
        (b"KEYWORD \\Seen", "Expected a keyword"),
        (b"BEFORE 32-Jan-2020", "Invalid date"),
        (b"BEFORE 29-Feb-2023", "Invalid date"),
        (b"BEFORE 1-Foo-2020", "Invalid date"),
        (b"BEFORE 2020-01-01", "Invalid date"),
        (b'BEFORE "1-Jan-2020', "Invalid quoted string"),
        (b"LARGER x", "Expected a size"),
        (b"LARGER 9223372036854775808", "Number out of range in a size"),
        (b"LARGER " + b"9" * 5000, "Number out of range in a size"),
        (b"UID", "Expected a space"),
        (b"UID x", "Expected a sequence set"),
        (b"NOT", "Expected a space"),
        (b"OR SEEN", "Expected a space"),
        (b"()", "Expected a search key"),
        (b"(SEEN", 'Expected ")"'),
        (b"SEEN)", "Unexpected characters at end of command"),
        (b"MODSEQ", "Expected a space"),
        (b'MODSEQ "/flags/x" bogus 5', "Invalid entry type"),
        (b"RETURN (FOO) ALL", "Unknown search return option"),
        (b"RETURN ALL", 'Expected "("'),
        (b"CHARSET US-ASCII TEXT {2}\r\n\xc3\xa9", "Non-ASCII search string with CHARSET US-ASCII"),
        (b"TEXT {1}\r\n\xff", "Invalid UTF-8 in search string"),
    ],
)
def test_search_errors(text: bytes, error_text: str) -> None:
    exc = error(b"t SEARCH " + text)
    assert (exc.text, exc.status) == (error_text, "BAD")


def test_search_bad_charset_is_no() -> None:
    with pytest.raises(BadCharsetError) as info:
        parse_command(b"t SEARCH CHARSET KOI8-R TEXT x")
    exc = info.value
    assert (exc.tag, exc.status, exc.code) == ("t", "NO", "BADCHARSET (UTF-8 US-ASCII)")


def test_search_nesting_is_bounded() -> None:
    assert key(b"NOT " * 31 + b"ALL") is not None
    assert error(b"t SEARCH " + b"NOT " * 32 + b"ALL").text == "Too deeply nested"
    assert error(b"t SEARCH " + b"(" * 40 + b"ALL" + b")" * 40).text == "Too deeply nested"
    assert error(b"t SEARCH " + b"OR ALL " * 40 + b"ALL").text == "Too deeply nested"
    # very deep input fails the bound, never Python's recursion limit
    assert error(b"t SEARCH " + b"NOT " * 100_000 + b"ALL").text == "Too deeply nested"
    assert parse_command(b"t SEARCH " + b"NOT " * 40 + b"ALL", max_depth=64)


# --- FETCH (RFC 9051 6.4.5) ------------------------------------------------------------------


def items(text: bytes, *, uid: bool = False) -> tuple[FetchItem, ...]:
    fetch = args(b"t " + (b"UID " if uid else b"") + b"FETCH 1 " + text)
    assert isinstance(fetch, Fetch)
    return fetch.items


F = FetchItem


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"FLAGS", (F("FLAGS"),)),
        (b"(flags uid)", (F("FLAGS"), F("UID"))),
        (b"FAST", (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"))),
        (b"all", (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE"))),
        (b"FULL", (F("FLAGS"), F("INTERNALDATE"), F("RFC822.SIZE"), F("ENVELOPE"), F("BODY"))),
        (
            b"(ENVELOPE BODYSTRUCTURE BODY MODSEQ)",
            (F("ENVELOPE"), F("BODYSTRUCTURE"), F("BODY"), F("MODSEQ")),
        ),
        (
            b"(RFC822 RFC822.HEADER RFC822.TEXT RFC822.SIZE)",
            (F("RFC822"), F("RFC822.HEADER"), F("RFC822.TEXT"), F("RFC822.SIZE")),
        ),
        (b"BODY[]", (F("BODY", Section()),)),
        (b"BODY.PEEK[]", (F("BODY", Section(), peek=True),)),
        (b"body[]<0.2048>", (F("BODY", Section(), (0, 2048)),)),
        (b"BODY[HEADER]", (F("BODY", Section((), "HEADER")),)),
        (b"BODY[TEXT]", (F("BODY", Section((), "TEXT")),)),
        (b"BODY[1]", (F("BODY", Section((1,))),)),
        (b"BODY[4.2.2.1]", (F("BODY", Section((4, 2, 2, 1))),)),
        (b"BODY[3.HEADER]", (F("BODY", Section((3,), "HEADER")),)),
        (b"BODY[3.TEXT]", (F("BODY", Section((3,), "TEXT")),)),
        (b"BODY[3.MIME]", (F("BODY", Section((3,), "MIME")),)),
        (
            b"BODY.PEEK[HEADER.FIELDS (DATE from)]",
            (F("BODY", Section((), "HEADER.FIELDS", ("DATE", "FROM")), peek=True),),
        ),
        (
            b"BODY[1.2.header.fields.not (X-Spam {4}\r\nX-Me)]<10.5>",
            (F("BODY", Section((1, 2), "HEADER.FIELDS.NOT", ("X-SPAM", "X-ME")), (10, 5)),),
        ),
        (b"BINARY[]", (F("BINARY", Section()),)),
        (b"BINARY.PEEK[1.2]<0.10>", (F("BINARY", Section((1, 2)), (0, 10), peek=True),)),
        (b"BINARY.SIZE[1]", (F("BINARY.SIZE", Section((1,))),)),
        (b"(UID FLAGS) (CHANGEDSINCE 12345)", (F("UID"), F("FLAGS"))),
    ],
)
def test_fetch_items(text: bytes, value: tuple[FetchItem, ...]) -> None:
    assert items(text) == value


def test_fetch_response_names() -> None:
    assert F("FLAGS").response_name() == "FLAGS"
    assert F("BODY", Section(), (0, 2048), peek=True).response_name() == "BODY[]<0>"
    assert (
        F("BODY", Section((1, 2), "HEADER.FIELDS", ("A", "B"))).response_name()
        == "BODY[1.2.HEADER.FIELDS (A B)]"
    )
    assert F("BINARY.SIZE", Section((3,))).response_name() == "BINARY.SIZE[3]"
    assert F("BODY", Section((), "TEXT")).response_name() == "BODY[TEXT]"


def test_fetch_modifiers() -> None:
    assert args(b"t FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)") == Fetch(
        seq((1, 0)), (F("FLAGS"),), changedsince=12345
    )
    assert args(b"t UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)") == Fetch(
        seq((300, 500)), (F("FLAGS"),), changedsince=12345, vanished=True
    )
    assert args(b"t UID FETCH 1 FLAGS (vanished changedsince 1)") == Fetch(
        ONE, (F("FLAGS"),), changedsince=1, vanished=True
    )


@pytest.mark.parametrize(
    ("text", "error_text"),
    [
        (b"", "Expected a fetch attribute"),
        (b"()", "Expected a fetch attribute"),
        (b"(FLAGS", 'Expected ")"'),
        (b"(ALL)", "Unknown fetch attribute"),  # macros stand alone
        (b"(FLAGS ALL)", "Unknown fetch attribute"),
        (b"FOO", "Unknown fetch attribute"),
        (b"X-GM-MSGID", "Unknown fetch attribute"),
        (b"BODY.PEEK", 'Expected "["'),
        (b"BINARY", 'Expected "["'),
        (b"BODY[", "Invalid section"),
        (b"BODY[0]", "Number out of range in a section part"),
        (b"BODY[1.]", "Invalid section"),
        (b"BODY[1.FOO]", "Invalid section"),
        (b"BODY[MIME]", "MIME needs a section part"),
        (b"BODY[HEADER.FIELDS]", "Expected a space"),
        (b"BODY[HEADER.FIELDS ()]", "Expected a header field name"),
        (b"BODY[HEADER.FIELDS (a:b)]", "Invalid header field name"),
        (b"BODY[TEXT", 'Expected "]"'),
        (b"BODY[]<0>", 'Expected "."'),
        (b"BODY[]<0.0>", "Number out of range in a partial length"),
        (b"BODY[]<x.1>", "Expected a partial offset"),
        (b"BINARY[HEADER]", "Invalid binary section"),
        (b"BINARY[1.TEXT]", "Invalid binary section"),
        (b"BINARY.SIZE[1]<0.1>", "Expected a space"),  # no partial for BINARY.SIZE
        (b"FLAGS[]", "Expected a space"),
        (b"BODY[" + b"1." * 64 + b"1]", "Section part too deep"),
        (b"FLAGS (CHANGEDSINCE)", "Expected a space"),
        (b"FLAGS (CHANGEDSINCE x)", "Expected a mod-sequence"),
        (b"FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)", "Duplicate modifier"),
        (b"FLAGS (UNCHANGEDSINCE 1)", "Unknown modifier"),
        (b"FLAGS (FOO)", "Unknown modifier"),
        (b"FLAGS (CHANGEDSINCE 1 VANISHED)", "VANISHED needs UID FETCH and CHANGEDSINCE"),
        (b"FLAGS ()", "Expected a modifier"),
        (b"FLAGS  (CHANGEDSINCE 1)", 'Expected "("'),
    ],
)
def test_fetch_errors(text: bytes, error_text: str) -> None:
    assert error(b"t FETCH 1 " + text).text == error_text


def test_vanished_needs_changedsince() -> None:
    assert error(b"t UID FETCH 1 FLAGS (VANISHED)").text == (
        "VANISHED needs UID FETCH and CHANGEDSINCE"
    )


# --- STORE, COPY, MOVE, EXPUNGE --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"t STORE 2:4 +FLAGS (\\Deleted)", Store(seq((2, 4)), "+", False, ("\\Deleted",))),
        (b"t STORE 1 -flags.silent \\seen", Store(ONE, "-", True, ("\\Seen",))),
        (b"t STORE 1 FLAGS ()", Store(ONE, "", False, ())),
        (
            b"t STORE 1 FLAGS \\Answered \\Flagged \\Draft $Label1 Junk",
            Store(ONE, "", False, ("\\Answered", "\\Flagged", "\\Draft", "$Label1", "Junk")),
        ),
        (
            b"t STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",  # RFC 7162
            Store(seq((7, 7), (5, 5), (9, 9)), "+", True, ("\\Deleted",), 320162338),
        ),
        (b"t STORE $ +FLAGS (x)", Store(SequenceSet((), saved=True), "+", False, ("x",))),
        (b"t COPY 2:4 MEETING", Copy(seq((2, 4)), "MEETING")),
        (b't MOVE 1:* "Junk Mail"', Move(seq((1, 0)), "Junk Mail")),
        (b"t EXPUNGE", Expunge()),
    ],
)
def test_store_copy_move(raw: bytes, value: CommandArgs) -> None:
    assert args(raw) == value


def test_uid_expunge() -> None:
    assert parse_command(b"t UID EXPUNGE 3000:3002") == Command(
        "t", "EXPUNGE", True, Expunge(seq((3000, 3002)))
    )
    assert error(b"t UID EXPUNGE").text == "Expected a space"
    assert error(b"t EXPUNGE 1").text == "Unexpected characters at end of command"


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"t STORE 1 FLAGS", "Expected a space"),
        (b"t STORE 1 FLAGS.LOUD (x)", "Expected a space"),
        (b"t STORE 1 *FLAGS (x)", "Expected FLAGS, +FLAGS or -FLAGS"),
        (b"t STORE 1 +FLAGS (\\Recent)", "Unknown or read-only system flag"),
        (b"t STORE 1 +FLAGS (\\*)", "Expected a flag"),
        (b"t STORE 1 +FLAGS (\\Foo)", "Unknown or read-only system flag"),
        (b"t STORE 1 +FLAGS (a b", 'Expected ")"'),
        (b"t STORE 1 +FLAGS (a%b)", "Expected a space"),
        (b"t STORE 1 +FLAGS (a]b)", "Expected a space"),  # "]" is not an ATOM-CHAR
        (b"t STORE 1 +FLAGS \xff", "Expected a flag"),
        (b"t STORE 1 (UNCHANGEDSINCE 1 CHANGEDSINCE 2) FLAGS x", "Unknown store modifier"),
        (b"t STORE 1 (CHANGEDSINCE 2) FLAGS x", "Unknown store modifier"),
        (b"t COPY 1", "Expected a space"),
        (b"t COPY 1 ", "Expected a mailbox name"),
        (b"t MOVE x y", "Expected a sequence set"),
    ],
)
def test_store_copy_move_errors(raw: bytes, text: str) -> None:
    assert error(raw).text == text


# --- APPEND head -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "value"),
    [
        (b"A003 APPEND saved-messages ", AppendHead("A003", "saved-messages", (), None)),
        (b"t APPEND {5}\r\nINBOX ", AppendHead("t", "INBOX", (), None)),
        (b"t APPEND INBOX (\\seen $Fwd) ", AppendHead("t", "INBOX", ("\\Seen", "$Fwd"), None)),
        (b"t APPEND INBOX () ", AppendHead("t", "INBOX", (), None)),
        (
            b't APPEND INBOX (\\Seen) " 7-Feb-1994 21:52:25 -0800" ',
            AppendHead(
                "t",
                "INBOX",
                ("\\Seen",),
                datetime.datetime(
                    1994, 2, 7, 21, 52, 25, tzinfo=datetime.timezone(datetime.timedelta(hours=-8))
                ),
            ),
        ),
        (
            b't APPEND INBOX "17-Jul-1996 02:44:25 +0000" ',
            AppendHead(
                "t", "INBOX", (), datetime.datetime(1996, 7, 17, 2, 44, 25, tzinfo=datetime.UTC)
            ),
        ),
        (b"t APPEND ", None),  # the literal is the mailbox name
    ],
)
def test_append_head(prefix: bytes, value: AppendHead | None) -> None:
    assert parse_append_head(prefix) == value


@pytest.mark.parametrize(
    ("prefix", "text"),
    [
        (b"t APPEND INBOX", "Expected a space"),
        (b"t APPEND INBOX  ", "Unexpected characters at end of command"),
        (b"t APPEND INBOX (\\Seen ", "Expected a flag"),
        (b"t APPEND INBOX (\\Seen", 'Expected ")"'),
        (b"t APPEND INBOX (\\Recent) ", "Unknown or read-only system flag"),
        (b't APPEND INBOX "31-Feb-2020 00:00:00 +0000" ', "Invalid date-time"),
        (b't APPEND INBOX "1-Jan-2020 24:00:00 +0000" ', "Invalid date-time"),
        (b't APPEND INBOX "1-Jan-2020 00:00:00 +0060" ', "Invalid date-time"),
        (b't APPEND INBOX "1-Jan-2020 00:00:00 +2400" ', "Invalid date-time"),
        (b't APPEND INBOX "1-Jan-2020 00:00:00" ', "Invalid date-time"),
        (b"t APPEND INBOX 1-Jan-2020 ", "Unexpected characters at end of command"),
        (b"t APPEND INBOX x ", "Unexpected characters at end of command"),
        (b"t NOOP ", "Not an APPEND command"),
        (b"t APPEND", "Expected a space"),
    ],
)
def test_append_head_errors(prefix: bytes, text: str) -> None:
    with pytest.raises(ImapParseError) as info:
        parse_append_head(prefix)
    assert info.value.text == text


def test_append_leap_second_is_clamped() -> None:
    head = parse_append_head(b't APPEND x "31-Dec-2016 23:59:60 +0000" ')
    assert head is not None and head.internal_date is not None
    assert head.internal_date.second == 59
