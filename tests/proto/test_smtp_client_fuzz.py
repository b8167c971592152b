"""Property tests of the SMTP client core (proto.smtp_client), with Hypothesis.

Oracles (DESIGN.md 2.1): whatever the server sends, the reply parser and the session
return replies or raise SmtpClientError, nothing else; how the input is cut (whole,
split anywhere, one byte at a time) changes nothing; well-formed replies survive a
round trip through `Reply.to_bytes`; dot-stuffed message data, however chunked,
unstuffs (by our own server core) to the CRLF-normalised message.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.proto.replies import MESSAGE_ACCEPTED, RECIPIENT_OK, SENDER_OK, Reply
from mailward.proto.smtp import SmtpServer, SmtpSettings
from mailward.proto.smtp_client import (
    Closed,
    NeedData,
    ReplyParser,
    Response,
    SmtpClient,
    SmtpClientError,
)
from mailward.proto.smtp_events import MailFrom, MessageChunk, MessageEnd, RcptTo

reply_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [b"250 OK\r\n", b"250-PIPELINING\r\n", b"354 go\r\n", b"550 5.1.1 no\r\n", b"421\r\n"]
        ),
        st.binary(max_size=40),
        st.builds(
            lambda code, sep, text: code + sep + text + b"\r\n",
            st.sampled_from([b"250", b"220", b"451", b"554", b"199", b"2x0"]),
            st.sampled_from([b" ", b"-", b"", b"x"]),
            st.binary(max_size=30).filter(lambda b: b"\n" not in b),
        ),
    ),
    max_size=12,
)


def cuts(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points})
    pieces, last = [], 0
    for m in marks:
        pieces.append(data[last:m])
        last = m
    pieces.append(data[last:])
    return pieces


def parse(pieces: list[bytes]) -> tuple[list[Reply], str | None]:
    parser = ReplyParser()
    out: list[Reply] = []
    try:
        for piece in pieces:
            parser.feed(piece)
            while (reply := parser.next_reply()) is not None:
                out.append(reply)
    except SmtpClientError as exc:
        return out, str(exc)
    return out, None


@settings(max_examples=400)
@given(reply_lines, st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_reply_parser_whole_split_and_bytewise_agree(lines: list[bytes], points: list[int]) -> None:
    data = b"".join(lines)
    whole = parse([data])
    split = parse(cuts(data, points))
    bytewise = parse([data[i : i + 1] for i in range(len(data))])
    assert whole == split == bytewise
    for reply in whole[0]:
        assert 200 <= reply.code <= 559
        for line in reply.lines:
            assert not re.search(r"[\x00-\x1f\x7f]", line)


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_reply_parser_on_arbitrary_bytes(data: bytes) -> None:
    assert parse([data]) == parse([data[i : i + 1] for i in range(len(data))])


texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=30
).map(str.strip)


@given(
    st.integers(min_value=200, max_value=559).filter(lambda c: (c // 10) % 10 <= 5),
    st.lists(texts, min_size=1, max_size=5),
    st.booleans(),
)
def test_reply_round_trip(code: int, lines: list[str], enhanced: bool) -> None:
    enhanced = enhanced and str(code)[0] in "245"  # RFC 3463: no 3.x.x class
    ecode = f"{str(code)[0]}.1.{code % 7}" if enhanced else None
    sent = Reply(code, ecode, tuple(lines))
    (got,), error = parse([sent.to_bytes()])
    assert error is None
    assert got.code == code
    if enhanced:
        assert got.enhanced == ecode
        assert got.lines == tuple(line.rstrip(" ") for line in lines)


@settings(max_examples=300)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_session_on_arbitrary_server_bytes(data: bytes, points: list[int]) -> None:
    """Drive a full transaction against arbitrary server output: only Responses,
    NeedData, Closed or SmtpClientError ever come out."""

    def drive(pieces: list[bytes]) -> tuple[list[object], str | None]:
        client = SmtpClient()
        client.ehlo("c.example")
        client.mail("a@example.org")
        client.rcpt("b@example.net")
        client.data()
        seen: list[object] = []
        try:
            for piece in [p for p in pieces if p] + [b""]:
                if piece:
                    client.receive_data(piece)
                else:
                    client.receive_eof()
                while True:
                    client.data_to_send()
                    ev = client.next_event()
                    if isinstance(ev, NeedData):
                        break
                    assert isinstance(ev, Response | Closed)
                    seen.append(ev)
                    if isinstance(ev, Closed):
                        return seen, None
                    if client.in_message:
                        client.message(b"x\r\n")
                        client.end_message()
        except SmtpClientError as exc:
            return seen, str(exc)
        return seen, None

    assert drive([data]) == drive(cuts(data, points))


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600).map(lambda b: b.replace(b"\x00", b"")),
    st.lists(st.integers(min_value=0, max_value=600), max_size=10),
)
def test_dot_stuffing_round_trips_through_the_server_core(
    message: bytes, points: list[int]
) -> None:
    server = SmtpServer(
        SmtpSettings(hostname="mx.example", tls_available=False, max_message_size=10**6)
    )
    client = SmtpClient()
    client.ehlo("c.example")
    client.mail("a@example.org")
    client.rcpt("b@example.net")
    client.data()
    received = bytearray()
    ended = False

    def pump() -> None:
        nonlocal ended
        server.receive_data(client.data_to_send())
        while True:
            ev = server.next_event()
            if isinstance(ev, MailFrom):
                server.send_reply(SENDER_OK)
            elif isinstance(ev, RcptTo):
                server.send_reply(RECIPIENT_OK)
            elif isinstance(ev, MessageChunk):
                received.extend(ev.data)
            elif isinstance(ev, MessageEnd):
                server.send_reply(MESSAGE_ACCEPTED)
                ended = True
            else:
                break
        client.receive_data(server.data_to_send())
        while not isinstance(client.next_event(), NeedData):
            pass

    for _ in range(6):
        pump()
    assert client.in_message
    for piece in cuts(message, points):
        client.message(piece)
    client.end_message()
    pump()
    assert ended
    expected = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    long_line = any(len(line) > 998 for line in expected.split(b"\r\n"))
    if not long_line:
        assert bytes(received) == expected
