"""SEARCH evaluation and responses (mailward.imap.search): RFC 9051 6.4.4 / 7.3.4,
RFC 3501 6.4.4, RFC 4731, RFC 5182, RFC 7162 3.1.5."""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import Sequence

import pytest

from mailward.imap.search import (
    compress_set,
    esearch_response,
    needs_message,
    search,
    search_response,
    uses_modseq,
    uses_sequence,
)
from mailward.message import mime
from mailward.proto.imap_commands import Search, SearchKey, parse_command
from mailward.store.api import MessageInfo


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=datetime.UTC).timestamp()


MSG_10 = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: Hello\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <10@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)
MSG_11 = (
    b"From: =?UTF-8?Q?Al=C3=AFce?= <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Cc: Dave <dave@example.test>\r\n"
    b"Subject: =?UTF-8?B?w4ljb2xl?=\r\n"
    b"Date: Tue, 2 Jan 2024 23:30:00 -0800\r\n"  # 3 Jan in UTC
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.b64encode("Un café au lait, s'il vous plaît\r\n".encode()) + b"\r\n"
    b"--XX\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.b64encode(b"attachment secret") + b"\r\n"
    b"--XX--\r\n"
)
MSG_12 = (  # no Date:
    b"From: bob@example.test\r\n"
    b"To: alice@example.test\r\n"
    b"Bcc: eve@example.test\r\n"
    b"Subject: Re: plans\r\n"
    b"\r\n"
    b"See you at noon.\r\n"
)
MSG_20 = (
    b"From: Carol <carol@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: =?ISO-8859-1?Q?caf=E9?=\r\n"
    b"Date: Fri, 5 Jan 2024 00:30:00 +1300\r\n"  # 4 Jan in UTC
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Cr=E8me br=FBl=E9e for dessert\r\n"
)
MSG_21 = (
    b"From: dave@example.test\r\n"
    b"Subject: weird date\r\n"
    b"Date: yesterday around noon\r\n"
    b"\r\n"
    b"nothing much\r\n"
)

# (uid, flags, size, internal date, modseq, bytes); sequence numbers are 1..5
ROWS = [
    (10, {"\\Seen"}, 100, at(2024, 1, 1, 10), 5, MSG_10),
    (11, {"\\Flagged", "$Work"}, 2000, at(2024, 1, 3, 7, 30), 9, MSG_11),
    (12, {"\\Answered", "\\Deleted"}, 300, at(2024, 1, 5, 23, 59), 12, MSG_12),
    (20, {"\\Draft", "$WORK"}, 400, at(2024, 1, 6), 3, MSG_20),
    (21, {"\\Seen"}, 5000, at(2024, 1, 6, 12), 20, MSG_21),
]
RECENT_ABOVE = 12  # uids 20 and 21 are recent for this session
BLOBS = {f"blob-{uid}": data for uid, *_, data in ROWS}
MAILBOX = [
    (
        seq,
        MessageInfo(
            mailbox_id=1,
            uid=uid,
            size=size,
            internal_date=date,
            flags=frozenset(flags),
            modseq=modseq,
            blob_id=f"blob-{uid}",
        ),
    )
    for seq, (uid, flags, size, date, modseq, _) in enumerate(ROWS, start=1)
]


def key(text: str) -> SearchKey:
    args = parse_command(b"a SEARCH " + text.encode()).args
    assert isinstance(args, Search)
    return args.key


class Loader:
    def __init__(self) -> None:
        self.loaded: list[int] = []
        self.header_only: list[bool] = []

    async def __call__(self, infos: Sequence[MessageInfo], header_only: bool) -> list[bytes]:
        self.loaded.extend(info.uid for info in infos)
        self.header_only.append(header_only)
        return [BLOBS[info.blob_id] for info in infos]


def run(
    text: str, saved: tuple[int, ...] = (), mailbox: list[tuple[int, MessageInfo]] = MAILBOX
) -> tuple[list[int], list[int]]:
    """(matching uids, uids loaded) for SEARCH `text`."""
    loader = Loader()
    found = asyncio.run(search(key(text), mailbox, loader, recent_above=RECENT_ABOVE, saved=saved))
    return [info.uid for _, info in found], loader.loaded


CASES = [
    ("ALL", [10, 11, 12, 20, 21]),
    # flags
    ("SEEN", [10, 21]),
    ("UNSEEN", [11, 12, 20]),
    ("FLAGGED", [11]),
    ("UNFLAGGED", [10, 12, 20, 21]),
    ("ANSWERED", [12]),
    ("UNANSWERED", [10, 11, 20, 21]),
    ("DELETED", [12]),
    ("UNDELETED", [10, 11, 20, 21]),
    ("DRAFT", [20]),
    ("UNDRAFT", [10, 11, 12, 21]),
    ("KEYWORD $work", [11, 20]),  # RFC 9051 2.3.2: keywords are case-insensitive
    ("KEYWORD $Missing", []),
    ("UNKEYWORD $WORK", [10, 12, 21]),
    ("RECENT", [20, 21]),
    ("NEW", [20]),
    ("OLD", [10, 11, 12]),
    # headers (RFC 2047 decoded, case-insensitive substring)
    ("FROM alice", [10, 11]),
    ('FROM "alïce"', [11]),
    ("FROM BOB", [12]),
    ("TO alice", [12, 20]),
    ("CC dave", [11]),
    ("BCC eve", [12]),
    ("BCC alice", []),
    ('SUBJECT "école"', [11]),
    ('SUBJECT "ÉCOLE"', [11]),
    ('SUBJECT "café"', [20]),
    ("SUBJECT plans", [12]),
    ('HEADER Message-ID ""', [10]),
    ("HEADER message-id 10@example", [10]),
    ('HEADER X-Missing ""', []),
    # bodies (transfer- and charset-decoded)
    ("BODY lait", [11]),
    ('BODY "crème"', [20]),
    ("BODY noon", [12]),
    ("BODY hello", [10]),
    ("BODY plans", []),  # only in the header
    ("BODY secret", []),  # not a text part
    ("TEXT plans", [12]),
    ("TEXT hello", [10]),
    ("TEXT carol", [20]),
    ("TEXT lait", [11]),
    ("TEXT nowhere", []),
    # internal date: UTC date, time disregarded
    ("BEFORE 3-Jan-2024", [10]),
    ("ON 3-Jan-2024", [11]),
    ("ON 5-Jan-2024", [12]),
    ("SINCE 5-Jan-2024", [12, 20, 21]),
    ("SINCE 7-Jan-2024", []),
    # Date: header, in its own zone; no or bad Date: never matches
    ("SENTBEFORE 2-Jan-2024", [10]),
    ("SENTON 2-Jan-2024", [11]),
    ("SENTON 3-Jan-2024", []),
    ("SENTON 5-Jan-2024", [20]),
    ("SENTON 4-Jan-2024", []),
    ("SENTSINCE 2-Jan-2024", [11, 20]),
    ("NOT SENTON 2-Jan-2024", [10, 12, 20, 21]),
    # sizes are strict
    ("LARGER 300", [11, 20, 21]),
    ("LARGER 299", [11, 12, 20, 21]),
    ("SMALLER 300", [10]),
    ("SMALLER 100", []),
    ("LARGER 5000", []),
    # sequence numbers
    ("1:2", [10, 11]),
    ("2,4:*", [11, 20, 21]),
    ("*", [21]),
    ("*:4", [20, 21]),
    ("3:1", [10, 11, 12]),
    ("9", []),
    ("4:9", [20, 21]),
    # UIDs: "*" is the largest uid
    ("UID 11:12", [11, 12]),
    ("UID 20:*", [20, 21]),
    ("UID *", [21]),
    ("UID 100:*", [21]),
    ("UID 13:19", []),
    ("UID 1,12,21", [12, 21]),
    # MODSEQ n: modseq >= n
    ("MODSEQ 9", [11, 12, 21]),
    ("MODSEQ 21", []),
    ('MODSEQ "/flags/\\\\draft" all 12', [12, 21]),
    # NOT / OR / AND nesting
    ("NOT SEEN", [11, 12, 20]),
    ("NOT NOT SEEN", [10, 21]),
    ("OR SEEN FLAGGED", [10, 11, 21]),
    ("OR (SEEN FROM alice) DRAFT", [10, 20]),
    ("NOT (OR SEEN DELETED)", [11, 20]),
    ('OR FROM bob BODY "crème"', [12, 20]),
    ("OR OR SEEN DRAFT 3", [10, 12, 20, 21]),
    ("UNSEEN NOT FROM alice SINCE 4-Jan-2024", [12, 20]),
    ("(UNSEEN (LARGER 300 OR TO alice CC dave))", [11, 20]),
    ("NOT (UID 10:11 OR 3 SENTSINCE 5-Jan-2024)", [10, 11, 12, 20, 21]),
    ("NOT (OR UID 10:11 OR 3 SENTSINCE 5-Jan-2024)", [21]),
    ("OR NOT KEYWORD $work SMALLER 500", [10, 12, 20, 21]),
    ("SEEN UNSEEN", []),
]


@pytest.mark.parametrize(("query", "expected"), CASES, ids=[case[0] for case in CASES])
def test_search_key(query: str, expected: list[int]) -> None:
    assert run(query)[0] == expected


def test_saved_result_dollar() -> None:
    saved = (11, 21)
    assert run("$", saved)[0] == [11, 21]
    assert run("UID $", saved)[0] == [11, 21]
    assert run("NOT $", saved)[0] == [10, 12, 20]
    assert run("$ SEEN", saved)[0] == [21]
    assert run("$")[0] == []  # nothing saved


def test_returns_pairs_with_sequence_numbers() -> None:
    found = asyncio.run(search(key("DRAFT"), MAILBOX, Loader(), recent_above=0))
    assert found == [MAILBOX[3]]


def test_empty_mailbox() -> None:
    assert run("*", mailbox=[]) == ([], [])
    assert run("UID 1:*", mailbox=[]) == ([], [])


# --- load laziness --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "loaded"),
    [
        ("(SEEN FLAGGED DELETED DRAFT KEYWORD x RECENT NEW OLD)", []),
        ("OR SEEN NOT FLAGGED", []),
        ("LARGER 10 SMALLER 9999 BEFORE 1-Jan-2030 SINCE 1-Jan-2000", []),
        ("1:* UID 1:* MODSEQ 1 ALL", []),
        # AND whose cheap key fails loads nothing for that message, whatever the order
        ("SEEN FROM alice", [10, 21]),
        ("FROM alice SEEN", [10, 21]),
        ("BODY lait FLAGGED", [11]),
        ("UNSEEN SEEN FROM alice", []),
        ("SENTON 2-Jan-2024 UID 11", [11]),
        ("TEXT x 1", [10]),
        ("NOT (SEEN OR DRAFT FROM alice)", [10, 21]),
        # OR: a true cheap side decides without loading
        ("OR SEEN FROM alice", [11, 12, 20]),
        ("OR FROM alice SEEN", [11, 12, 20]),
        ("OR SEEN BODY x", [11, 12, 20]),
        # content keys: every message, once
        ("FROM alice SUBJECT hello BODY hello TEXT bob SENTSINCE 1-Jan-2000", [10, 11, 12, 20, 21]),
        ("NOT FROM alice", [10, 11, 12, 20, 21]),
    ],
)
def test_loads_only_undecided_messages(query: str, loaded: list[int]) -> None:
    assert run(query)[1] == loaded


def test_each_loaded_message_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_parse = mime.parse

    def counting(data: bytes) -> mime.Part:
        calls.append(len(data))
        return real_parse(data)

    monkeypatch.setattr(mime, "parse", counting)
    found, loaded = run(
        "OR FROM nobody OR SUBJECT nothing OR BODY none OR TEXT nil SENTON 1-Jan-2024"
    )
    assert found == [10]
    assert len(calls) == len(loaded) == 5


@pytest.mark.parametrize(
    ("query", "header_only"),
    [
        ("SUBJECT lunch", True),
        ("OR FROM x SENTBEFORE 1-Jan-2030", True),
        ("BODY spirit", False),
        ("NOT OR SUBJECT a TEXT b", False),
    ],
)
def test_header_keys_read_only_header_sections(query: str, header_only: bool) -> None:
    loader = Loader()
    asyncio.run(search(key(query), MAILBOX, loader, recent_above=RECENT_ABOVE))
    assert loader.header_only and set(loader.header_only) == {header_only}


def test_a_search_reads_in_batches_and_keeps_sequence_order() -> None:
    info = MAILBOX[0][1]
    many = [(seq, info) for seq in range(1, 1201)]
    loader = Loader()
    found = asyncio.run(search(key("FROM @"), many, loader, recent_above=RECENT_ABOVE))
    assert len(loader.header_only) == 3  # 1200 undecided messages, 512 a call
    assert [seq for seq, _ in found] == sorted(seq for seq, _ in found)


def test_load_errors_propagate() -> None:
    async def broken(infos: Sequence[MessageInfo], header_only: bool) -> list[bytes]:
        raise OSError("blob missing")

    with pytest.raises(OSError, match="blob missing"):
        asyncio.run(search(key("BODY x"), MAILBOX, broken, recent_above=0))


def test_large_mailbox_gives_the_event_loop_turns() -> None:
    info = MAILBOX[0][1]
    many = [(seq, info) for seq in range(1, 3001)]

    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        found = await search(key("SEEN"), many, Loader(), recent_above=0)
        task.cancel()
        return ticks, len(found)

    ticks, count = asyncio.run(main())
    assert count == 3000
    assert ticks >= 3  # one turn before, then one every YIELD_EVERY messages


# --- key properties -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "needed"),
    [
        ("ALL", False),
        ("SEEN UNSEEN NEW OLD RECENT KEYWORD a", False),
        ("BEFORE 1-Jan-2024 ON 1-Jan-2024 SINCE 1-Jan-2024", False),
        ("LARGER 1 SMALLER 2 1:* UID 1 MODSEQ 4 $", False),
        ("FROM a", True),
        ("TO a", True),
        ("HEADER X-A b", True),
        ("BODY a", True),
        ("TEXT a", True),
        ("SENTBEFORE 1-Jan-2024", True),
        ("SENTON 1-Jan-2024", True),
        ("SENTSINCE 1-Jan-2024", True),
        ("NOT (SEEN OR 1 SUBJECT x)", True),
    ],
)
def test_needs_message(query: str, needed: bool) -> None:
    assert needs_message(key(query)) is needed


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("1:3", True),
        ("NOT (SEEN OR FLAGGED *)", True),
        ("UID 1:3", False),
        ("$", False),  # saved uids, not sequence numbers
        ("SEEN FROM a", False),
    ],
)
def test_uses_sequence(query: str, expected: bool) -> None:
    assert uses_sequence(key(query)) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [("MODSEQ 5", True), ("OR SEEN NOT MODSEQ 5", True), ("SEEN UID 5", False)],
)
def test_uses_modseq(query: str, expected: bool) -> None:
    assert uses_modseq(key(query)) is expected


# --- responses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ([], ""),
        ([7], "7"),
        ([1, 2, 3, 5], "1:3,5"),
        ([5, 3, 1, 2, 2], "1:3,5"),
        ([1, 3, 5], "1,3,5"),
        ([2, 5, 6, 7, 8, 9], "2,5:9"),
    ],
)
def test_compress_set(numbers: list[int], expected: str) -> None:
    assert compress_set(numbers) == expected


def test_search_response() -> None:
    assert search_response([2, 5, 6], None) == b"* SEARCH 2 5 6\r\n"
    assert search_response([], None) == b"* SEARCH\r\n"
    # RFC 7162 3.1.5
    assert search_response([2, 5, 6], 917162500) == b"* SEARCH 2 5 6 (MODSEQ 917162500)\r\n"
    assert search_response([], 917162500) == b"* SEARCH\r\n"


@pytest.mark.parametrize(
    ("matches", "returns", "uid", "modseq", "expected"),
    [
        (
            [2, 5, 6, 7, 8, 9],
            ("MIN", "MAX", "COUNT", "ALL"),
            True,
            None,
            b'* ESEARCH (TAG "A1") UID MIN 2 MAX 9 COUNT 6 ALL 2,5:9\r\n',
        ),
        ([2, 10, 11], (), False, None, b'* ESEARCH (TAG "A1") ALL 2,10:11\r\n'),
        ([2, 10, 11], ("ALL",), False, None, b'* ESEARCH (TAG "A1") ALL 2,10:11\r\n'),
        ([2, 10, 11], ("min", "count"), False, None, b'* ESEARCH (TAG "A1") MIN 2 COUNT 3\r\n'),
        # RFC 4731 3.1: no MIN/MAX/ALL when nothing matched; COUNT 0 still given
        ([], ("MIN", "MAX", "ALL", "COUNT"), True, None, b'* ESEARCH (TAG "A1") UID COUNT 0\r\n'),
        ([], ("MIN",), False, None, b'* ESEARCH (TAG "A1")\r\n'),
        ([], (), True, 5, b'* ESEARCH (TAG "A1") UID\r\n'),
        # RFC 7162 3.1.5
        ([1, 2, 3, 5], (), False, 1236, b'* ESEARCH (TAG "A1") ALL 1:3,5 MODSEQ 1236\r\n'),
        # RFC 5182: SAVE alone gives no ESEARCH; with others, those are returned
        ([1, 2], ("SAVE",), False, None, b""),
        ([1, 2], ("SAVE", "MIN"), True, None, b'* ESEARCH (TAG "A1") UID MIN 1\r\n'),
        ([9, 2, 5], ("ALL",), False, None, b'* ESEARCH (TAG "A1") ALL 2,5,9\r\n'),
    ],
)
def test_esearch_response(
    matches: list[int], returns: tuple[str, ...], uid: bool, modseq: int | None, expected: bytes
) -> None:
    assert esearch_response("A1", matches, returns, uid=uid, modseq=modseq) == expected


def test_esearch_tag_is_quoted() -> None:
    assert esearch_response("a]1", [1], (), uid=False, modseq=None) == (
        b'* ESEARCH (TAG "a]1") ALL 1\r\n'
    )
