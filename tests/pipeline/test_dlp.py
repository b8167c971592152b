"""Outbound data-loss prevention (pipeline/dlp.py, message/text_extract.py): each
detector on valid and invalid samples, each text source (plain, HTML, CSV, DOCX,
XLSX, PDF, archives, Subject), the actions, who is scanned, and that no reply, reason
or log line ever carries the matched value."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
import zlib
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailward.logs import EventLog
from mailward.message.text_extract import html_to_text, message_texts, pdf_text, xml_text
from mailward.pipeline.content import ContentCheck, MessageView
from mailward.pipeline.dlp import (
    DEFAULT_DETECTORS,
    DETECTORS,
    DlpCheck,
    card_numbers,
    credentials,
    iban_valid,
    ibans,
    luhn_valid,
    parse_pattern,
    private_keys,
    us_ssns,
)
from mailward.pipeline.types import (
    CheckResult,
    Decision,
    Envelope,
    LocalRecipient,
    Recipient,
    RemoteRecipient,
    SessionInfo,
)

CARD = "4111 1111 1111 1111"
OLE_DOC = (
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    + bytes(1000)
    + "Card number 4111111111111111 for Bob".encode("utf-16-le")
    + bytes(1000)
)
PEM_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
    "-----END RSA PRIVATE KEY-----\n"
)


# ------------------------------------------------------------------ detectors


@pytest.mark.parametrize(
    ("digits", "valid"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("79927398713", True),  # the classic Luhn example
        ("79927398710", False),
        ("0", True),
    ],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("card 4111 1111 1111 1111 thanks", 1),  # Visa, spaces
        ("4111-1111-1111-1111", 1),  # dashes
        ("4111111111111111", 1),  # compact
        ("4222222222222", 1),  # Visa, 13 digits
        ("5500 0000 0000 0004", 1),  # Mastercard 51-55
        ("2223000048400011", 1),  # Mastercard 2-series
        ("3782 822463 10005", 1),  # American Express, 4-6-5
        ("6011 0009 9013 9424", 1),  # Discover
        ("4111 1111 1111 1112", 0),  # Luhn fails
        ("0000 0000 0000 0000", 0),  # Luhn passes, no issuer
        ("1234 5678 9012 3452", 0),  # no issuer
        ("3782 8224 6310 0051", 0),  # Amex prefix, wrong length
        ("41111111111111111111111", 0),  # a longer number is not a card
        ("order 12345678903 shipped", 0),  # too short
        ("4111  1111  1111  1111", 0),  # double spaces: not one number
        ("٤١١١١١١١١١١١١١١١", 0),  # Arabic-Indic digits are not matched as card digits
        (f"{CARD} and 5500-0000-0000-0004", 2),
    ],
)
def test_card_numbers(text: str, count: int) -> None:
    assert card_numbers(text) == count


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("SSN 123-45-6788", 1),
        ("000-12-3456", 0),  # area 000
        ("666-12-3456", 0),  # area 666
        ("912-12-3456", 0),  # area 9xx
        ("123-00-4567", 0),  # group 00
        ("123-45-0000", 0),  # serial 0000
        ("078-05-1120", 0),  # the Woolworth wallet card
        ("123456788", 0),  # without dashes: too ambiguous
        ("1123-45-6788", 0),  # part of a longer number
        ("call 555-123-4567", 0),  # a phone number
    ],
)
def test_us_ssns(text: str, count: int) -> None:
    assert us_ssns(text) == count


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("IBAN: DE89 3704 0044 0532 0130 00.", 1),
        ("DE89370400440532013000", 1),
        ("GB82 WEST 1234 5698 7654 32", 1),
        ("FR14 2004 1010 0505 0001 3M02 606", 1),
        ("NL91ABNA0417164300", 1),
        ("DE89 3704 0044 0532 0130 01", 0),  # check digits wrong
        ("DE89 3704 0044 0532 0130", 0),  # too short for DE
        ("DE89370400440532013000X", 0),  # runs on
        ("XX89370400440532013000", 0),  # no such country
        ("de89370400440532013000", 0),  # lower case is not matched
    ],
)
def test_ibans(text: str, count: int) -> None:
    assert ibans(text) == count


def test_iban_valid() -> None:
    assert iban_valid("GB82WEST12345698765432")
    assert not iban_valid("GB82WEST1234569876543")
    assert not iban_valid("GB82WEST1234569876543!")


@pytest.mark.parametrize(
    ("text", "count"),
    [
        (PEM_KEY, 1),
        (PEM_KEY.replace("RSA PRIVATE", "PRIVATE"), 1),  # PKCS #8
        (PEM_KEY.replace("RSA PRIVATE", "ENCRYPTED PRIVATE"), 1),
        (PEM_KEY.replace("RSA PRIVATE", "OPENSSH PRIVATE"), 1),
        (
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n"
            "lQOYBF3x3mEBCADKc2dFmhdUJl8nA0Pn2QzYc8rP0m4mW8e0bqk8h5n1n3mW0a1a\n",
            1,
        ),
        ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nPrivate-Lines: 1\nAAAA\n", 1),
        ("Paste it between -----BEGIN RSA PRIVATE KEY----- and the end line.", 0),
        (PEM_KEY.replace("PRIVATE", "PUBLIC"), 0),
        ("-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBa\n", 0),
    ],
)
def test_private_keys(text: str, count: int) -> None:
    assert private_keys(text) == count


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("key id AKIAIOSFODNN7EXAMPLE", 1),
        ("ASIAY34FZKBOKMUTVV7A", 1),
        ("AKIAIOSFODNN7EXAMPL", 0),  # too short
        ("token ghp_" + "a1B2" * 9, 1),
        ("xoxb-1234567890-abcdefghij", 1),
        ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", 1),
        ("AIza" + "SyA-1234567890abcdefghijklmnopqrstu", 1),
        ("password=hunter2hunter2", 1),
        ("DB_PASSWORD=Tr0ub4dor&3x", 1),
        ("smtp.password = 'correct-horse-battery'", 1),
        ('{"api_key": "9f8e7d6c5b4a3f2e"}', 1),
        ("client_secret=Zm9vYmFyYmF6cXV4", 1),
        ("password=********", 0),  # placeholder
        ("password=${DB_PASSWORD}", 0),
        ("password=<password>", 0),
        ("password=changeme", 0),
        ("password=short", 0),  # under 8 characters
        ("Your password: see the note below", 0),  # prose, not an assignment
        ("api_key: 9f8e7d6c5b4a3f2e", 0),  # unquoted YAML-ish: too loose to count
        ("https://zoom.us/j/123?pwd=AbCdEfGh12345", 0),  # meeting passcodes in links
        ("unsubscribe?token=abcdef0123456789", 0),
    ],
)
def test_credentials(text: str, count: int) -> None:
    assert credentials(text) == count


def test_counts_are_bounded() -> None:
    assert card_numbers(f"{CARD}\n" * 50, 10) == 10


# ------------------------------------------------------------------ text sources


def docx(paragraphs: list[list[str]]) -> bytes:
    """A DOCX whose paragraphs are made of the given runs."""
    body = "".join(
        "<w:p>" + "".join(f"<w:r><w:t>{run}</w:t></w:r>" for run in runs) + "</w:p>"
        for runs in paragraphs
    )
    document = f'<?xml version="1.0"?><w:document xmlns:w="x"><w:body>{body}</w:body></w:document>'
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", document)
        archive.writestr("word/styles.xml", "<w:styles>4111111111111111</w:styles>")  # not text
    return out.getvalue()


def xlsx(shared: list[str], values: list[str]) -> bytes:
    strings = "".join(f"<si><t>{s}</t></si>" for s in shared)
    cells = "".join(f'<c r="A{i}"><v>{v}</v></c>' for i, v in enumerate(values, 1))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/sharedStrings.xml", f"<sst>{strings}</sst>")
        archive.writestr("xl/worksheets/sheet1.xml", f"<worksheet><row>{cells}</row></worksheet>")
    return out.getvalue()


def pdf(content: bytes, *, flate: bool = True) -> bytes:
    """A minimal PDF whose one page's content stream is `content`."""
    stream = zlib.compress(content) if flate else content
    filters = b" /Filter /FlateDecode" if flate else b""
    return (
        b"%PDF-1.4\n"
        b"1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n"
        b"3 0 obj << /Type /Page /Parent 2 0 R /Contents 4 0 R >> endobj\n"
        b"4 0 obj << /Length "
        + str(len(stream)).encode()
        + filters
        + b" >>\nstream\n"
        + stream
        + b"\nendstream\nendobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    )


def make_zip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def mail(
    text: str = "Hello,\n\nsee attached.\n",
    *,
    html: str | None = None,
    subject: str = "Report",
    files: list[tuple[str, bytes, str]] = (),  # type: ignore[assignment]
) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = "alice@example.test"
    message["To"] = "partner@example.net"
    message["Subject"] = subject
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for name, data, content_type in files:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()


def scan(data: bytes, **options: Any) -> dict[str, int]:
    return DlpCheck(log=EventLog(io.StringIO()), **options).scan(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (mail(f"My card is {CARD}, exp 12/29"), {"card-number": 1}),
        (mail("My card is 4111 1111 1111 1112"), {}),
        (mail(subject=f"card {CARD}"), {"card-number": 1}),
        (
            mail("see html", html="<p>Card: <b>4111</b>&nbsp;1111&#32;1111 &#x31;111</p>"),
            {"card-number": 1},
        ),
        (mail(html="<p>hidden <!-- 4111111111111111 --> in a comment</p>"), {"card-number": 1}),
        (mail(html="<script>var x = '4111111111111111';</script><p>hi</p>"), {}),
        (
            mail(files=[("export.csv", b"name,card\nAlice,4111111111111111\n", "text/csv")]),
            {"card-number": 1},
        ),
        (
            mail(
                files=[
                    ("export.csv", b"name;card\nBob;5500000000000004\n", "application/octet-stream")
                ]
            ),
            {"card-number": 1},
        ),
        (
            mail(
                files=[
                    (
                        "cards.docx",
                        docx([["Card: 4111 ", "1111 1111", " 1111"]]),
                        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    )
                ]
            ),
            {"card-number": 1},
        ),
        (mail(files=[("plain.docx", docx([["nothing here"]]), "application/octet-stream")]), {}),
        (
            mail(
                files=[
                    ("book.xlsx", xlsx(["Visa"], ["4111111111111111"]), "application/octet-stream")
                ]
            ),
            {"card-number": 1},
        ),
        (
            mail(
                files=[
                    ("book.xlsx", xlsx(["4111 1111 1111 1111"], ["1"]), "application/octet-stream")
                ]
            ),
            {"card-number": 1},
        ),
        (
            mail(
                files=[
                    (
                        "statement.pdf",
                        pdf(b"BT /F1 12 Tf 72 700 Td (Card 4111 1111 1111 1111) Tj ET"),
                        "application/pdf",
                    )
                ]
            ),
            {"card-number": 1},
        ),
        (
            mail(
                files=[
                    (
                        "s.pdf",
                        pdf(b"BT [(4111 11)-10(11 1111 1111)] TJ ET", flate=False),
                        "application/pdf",
                    )
                ]
            ),
            {"card-number": 1},
        ),
        (
            mail(
                files=[("s.pdf", pdf(b"BT <34313131> Tj (111111111111) Tj ET"), "application/pdf")]
            ),
            {"card-number": 1},
        ),
        (
            mail(
                files=[
                    (
                        "export.zip",
                        make_zip({"cards.csv": b"4111111111111111\n"}),
                        "application/zip",
                    )
                ]
            ),
            {"card-number": 1},
        ),
        # text that starts like another format is still read as text
        (mail("#!/bin/sh\nexport CARD=4111111111111111\n"), {"card-number": 1}),
        (mail("%PDF-1.4 is the header. Card 4111 1111 1111 1111"), {"card-number": 1}),
        (
            mail(
                files=[
                    ("a.rtf", b"{\\rtf1\\ansi card 4111 1111 1111 1111\\par}", "application/rtf")
                ]
            ),
            {"card-number": 1},
        ),
        (
            mail(files=[("old.doc", OLE_DOC, "application/msword")]),
            {"card-number": 1},
        ),
        (mail(f"SSN: 123-45-6788\n{PEM_KEY}"), {"us-ssn": 1, "private-key": 1}),
        (mail("aws AKIAIOSFODNN7EXAMPLE"), {"credential": 1}),
        (mail("IBAN DE89 3704 0044 0532 0130 00"), {}),  # iban is off by default
        (mail(files=[("photo.png", b"\x89PNG\r\n\x1a\n4111111111111111", "image/png")]), {}),
    ],
)
def test_sources(data: bytes, expected: dict[str, int]) -> None:
    assert scan(data) == expected


def test_iban_detector_when_enabled() -> None:
    data = mail("Pay to DE89 3704 0044 0532 0130 00 please")
    assert scan(data, detectors=["iban"]) == {"iban": 1}
    assert scan(mail("Pay to DE89 3704 0044 0532 0130 01"), detectors=["iban"]) == {}


def test_custom_patterns_and_keywords() -> None:
    data = mail("Project FALCON budget: EMP-123456 and EMP-654321. Strictly confidential.")
    found = scan(
        data,
        detectors=[],
        patterns=[r"employee-id=\bEMP-[0-9]{6}\b"],
        keywords=["project falcon", "strictly  confidential", "  "],
    )
    assert found == {"employee-id": 2, "keyword": 2}
    assert scan(mail("falconry is fun"), detectors=[], keywords=["falcon"]) == {}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("no equals sign", "name=regex"),
        ("=abc", "name=regex"),
        ("bad name=abc", "name=regex"),
        ("broken=([a-z]", "not a valid regular expression"),
        ("empty=x*", "matches the empty string"),
    ],
)
def test_bad_patterns(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_pattern(spec)
    with pytest.raises(ValueError, match=problem):
        DlpCheck(log=EventLog(io.StringIO()), patterns=[spec])


def test_good_pattern() -> None:
    name, pattern = parse_pattern("order-no=ORD-[0-9]{8}")
    assert name == "order-no" and pattern.search("see ORD-12345678")


def test_bad_options() -> None:
    with pytest.raises(ValueError, match="unknown dlp detector"):
        DlpCheck(log=EventLog(io.StringIO()), detectors=["card-numbers"])
    with pytest.raises(ValueError, match="action"):
        DlpCheck(log=EventLog(io.StringIO()), action="drop")  # type: ignore[arg-type]
    assert set(DEFAULT_DETECTORS) < set(DETECTORS)


def test_extracted_text_is_bounded() -> None:
    data = mail("a" * 10_000 + CARD, files=[("x.csv", b"b" * 10_000, "text/csv")])
    texts = list(message_texts(data, max_chars=5000))
    assert sum(len(text) for _, text in texts) <= 5000
    assert scan(data, max_chars=5000) == {}
    assert scan(data) == {"card-number": 1}


def test_extractors_directly() -> None:
    assert html_to_text("<p>a&amp;b</p><style>p{}</style><td>c</td>") == "\na&b\n\tc"
    assert xml_text(b"<w:p><w:r><w:t>4111</w:t></w:r><w:r><w:t>1111</w:t></w:r></w:p>") == (
        "41111111\n"
    )
    assert pdf_text(pdf(b"BT (Hello \\(world\\)) Tj T* (line\\0412) Tj ET")) == (
        "Hello (world)\nline!2\n"
    )
    assert pdf_text(b"%PDF-1.4 no streams") == ""
    assert pdf_text(pdf(b"x") + b"stream\n\x00garbage") == ""  # never raises


# ------------------------------------------------------------------ the check


def view(
    data: bytes,
    *,
    listener: str = "submission",
    account: int | None = 7,
    trusted: bool = False,
    recipients: list[Recipient] | None = None,
) -> MessageView:
    session = SessionInfo(
        listener, "192.0.2.7", 40000, "sess-9", account_id=account, trusted_network=trusted
    )
    if account is not None:
        session.account_address = "alice@example.test"
    rcpts: list[Recipient] = (
        [RemoteRecipient("partner@example.net")] if recipients is None else recipients
    )
    envelope = Envelope("alice@example.test", recipients=rcpts)
    return MessageView(session, envelope, b"", data, Path("/nonexistent"), 0, len(data))


class Checked:
    def __init__(self, **options: Any) -> None:
        self.stream = io.StringIO()
        self.check: ContentCheck = DlpCheck(log=EventLog(self.stream, "debug"), **options)

    def run(self, data: bytes, **view_options: Any) -> CheckResult:
        return asyncio.run(self.check.check(view(data, **view_options)))

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


def test_quarantine_is_the_default_action() -> None:
    checked = Checked()
    result = checked.run(mail(f"card {CARD} and {CARD}"))
    assert result.decision == Decision.QUARANTINE
    assert result.reply is None
    assert result.reason == "data-loss policy: card-number (2)"
    (event,) = checked.events
    assert event["event"] == "dlp.matched"
    assert event["rules"] == {"card-number": 2}
    assert event["action"] == "quarantine"


def test_reject_names_the_rules_only() -> None:
    result = Checked(action="reject").run(mail(f"{CARD}\n{PEM_KEY}"))
    assert result.decision == Decision.REJECT
    assert result.reply is not None
    assert (result.reply.code, result.reply.enhanced) == (550, "5.7.1")
    assert result.reply.text == "Message refused by data-loss policy: card-number, private-key"


def test_log_action_accepts() -> None:
    checked = Checked(action="log")
    result = checked.run(mail("aws AKIAIOSFODNN7EXAMPLE"))
    assert result.decision == Decision.ACCEPT
    assert not result.refused
    assert [e["rules"] for e in checked.events] == [{"credential": 1}]


def test_clean_mail_is_accepted_silently() -> None:
    checked = Checked()
    assert checked.run(mail("Lunch at noon?")).decision == Decision.ACCEPT
    assert checked.events == []


SECRETS = [
    CARD,
    "4111111111111111",
    "123-45-6788",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
    "hunter2hunter2",
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "EMP-123456",
]


@pytest.mark.parametrize("action", ["quarantine", "reject", "log"])
def test_matched_values_never_leave(action: str) -> None:
    body = (
        f"card {CARD}\nssn 123-45-6788\niban DE89 3704 0044 0532 0130 00\n"
        f"AKIAIOSFODNN7EXAMPLE\npassword=hunter2hunter2\n{PEM_KEY}\nEMP-123456\n"
    )
    checked = Checked(
        action=action,
        detectors=list(DETECTORS),
        patterns=["employee=EMP-[0-9]{6}"],
    )
    result = checked.run(mail(body, subject="Subject 4111111111111111"))
    assert result.decision != Decision.ACCEPT or action == "log"
    shown = " ".join(
        [result.reason, str(result.reply), str(result.headers), checked.stream.getvalue()]
    )
    for secret in SECRETS:
        assert secret not in shown, secret
    assert "employee" in shown and "card-number" in shown


@pytest.mark.parametrize(
    ("options", "applies"),
    [
        ({"listener": "submission"}, True),
        ({"listener": "mx", "account": 7}, True),  # authenticated on the MX port
        ({"listener": "mx", "account": None, "trusted": True}, True),  # relaying network
        ({"listener": "mx", "account": None}, False),  # inbound mail
    ],
)
def test_who_is_scanned(options: dict[str, Any], applies: bool) -> None:
    check = DlpCheck(log=EventLog(io.StringIO()))
    assert check.applies(view(b"", **options).session) is applies


def test_no_rules_no_scan() -> None:
    check = DlpCheck(log=EventLog(io.StringIO()), detectors=[])
    assert not check.applies(view(b"").session)


def test_mail_that_stays_inside_is_not_scanned_unless_asked() -> None:
    local: list[Recipient] = [LocalRecipient("bob@example.test", 2, "bob@example.test")]
    data = mail(f"card {CARD}")
    assert Checked().run(data, recipients=local).decision == Decision.ACCEPT
    assert Checked(internal=True).run(data, recipients=local).decision == Decision.QUARANTINE
    mixed: list[Recipient] = [*local, RemoteRecipient("x@example.net")]
    assert Checked().run(data, recipients=mixed).decision == Decision.QUARANTINE


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(
        [
            mail(
                "x", html="<p>4111&nbsp;1111 <!-- c --></p>", files=[("a.csv", b"1,2", "text/csv")]
            ),
            mail(files=[("s.pdf", pdf(b"BT (4111 1111 1111 1111) Tj ET"), "application/pdf")]),
            mail(files=[("b.xlsx", xlsx(["a"], ["4111111111111111"]), "application/octet-stream")]),
        ]
    ),
    st.lists(st.tuples(st.integers(min_value=0), st.binary(max_size=12)), max_size=6),
)
def test_damaged_messages_are_scanned_without_error(
    seed: bytes, edits: list[tuple[int, bytes]]
) -> None:
    data = bytearray(seed)
    for where, noise in edits:
        position = where % (len(data) or 1)
        data[position : position + len(noise)] = noise
    found = scan(bytes(data), detectors=list(DETECTORS))
    assert all(isinstance(count, int) and count > 0 for count in found.values())
