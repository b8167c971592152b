"""Authentication-Results (RFC 8601): formatting our field, removing forged ones."""

from __future__ import annotations

import email.parser
import email.policy

import pytest

from mailward.mailauth.results import (
    Resinfo,
    authserv_id,
    format_results,
    header_field,
    pvalue,
    strip_ours,
)

ID = "mx.example.org"


def test_format_one_resinfo_per_line() -> None:
    field = header_field(
        ID,
        [
            Resinfo("spf", "pass", "matched ip4", (("smtp.mailfrom", "bounce@sender.test"),)),
            Resinfo(
                "dkim",
                "pass",
                "",
                (
                    ("header.d", "sender.test"),
                    ("header.s", "202401e"),
                    ("header.a", "ed25519-sha256"),
                    ("header.b", "uAIb/+q="),
                ),
            ),
            Resinfo("dmarc", "pass", "p=reject dis=none", (("header.from", "sender.test"),)),
            Resinfo("arc", "none"),
        ],
    )
    assert field == (
        b"Authentication-Results: mx.example.org;\r\n"
        b"\tspf=pass (matched ip4) smtp.mailfrom=bounce@sender.test;\r\n"
        b"\tdkim=pass header.d=sender.test header.s=202401e header.a=ed25519-sha256"
        b' header.b="uAIb/+q=";\r\n'
        b"\tdmarc=pass (p=reject dis=none) header.from=sender.test;\r\n"
        b"\tarc=none\r\n"
    )
    # It parses as one header field whose value starts with our authserv-id.
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(field + b"\r\nx\r\n")
    value = str(msg["Authentication-Results"])
    assert value.startswith("mx.example.org;") and "arc=none" in value


def test_no_results_is_none() -> None:
    assert format_results(ID, []) == " mx.example.org; none"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("example.com", "example.com"),
        ("user@example.com", "user@example.com"),
        ("first.last+tag@example.com", "first.last+tag@example.com"),
        ("abc/def=", '"abc/def="'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("two words", '"two words"'),
        ("semi;colon@example.com", '"semi;colon@example.com"'),
        ("r\u00e9sum\u00e9@example.com", '"rsum@example.com"'),
    ],
)
def test_pvalues_are_tokens_addresses_or_quoted(value: str, expected: str) -> None:
    assert pvalue(value) == expected


def test_comments_cannot_break_out() -> None:
    field = header_field(ID, [Resinfo("spf", "fail", "evil) dkim=pass (x\r\nX-Injected: 1")])
    assert b"\r\nX-Injected" not in field
    assert field.count(b"(") == 1 and field.count(b")") == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" mx.example.org; spf=pass", "mx.example.org"),
        (" MX.Example.ORG 1; none", "mx.example.org"),
        (" (comment (nested)) mx.example.org;dkim=pass", "mx.example.org"),
        (' "mx.example.org"; none', "mx.example.org"),
        ("\r\n\tmx.example.org;\r\n\tnone", "mx.example.org"),
        (" other.example; none", "other.example"),
        ("", ""),
    ],
)
def test_authserv_id(value: str, expected: str) -> None:
    assert authserv_id(value) == expected


def test_strip_ours_removes_only_our_fields_whole() -> None:
    section = (
        b"Authentication-Results: MX.EXAMPLE.ORG;\r\n"
        b"\tdkim=pass header.d=bank.example\r\n"
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"authentication-results : (forged) mx.example.org; spf=pass\r\n"
        b"Authentication-Results: relay.other.example; spf=fail\r\n"
        b"Authentication-Results: mx.example.org.evil; spf=pass\r\n"
        b"From: a@b.example\r\n"
        b"X-Authentication-Results: mx.example.org; spf=pass\r\n"
    )
    stripped, removed = strip_ours(section, "mx.example.org")
    assert removed == 2
    assert stripped == (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: relay.other.example; spf=fail\r\n"
        b"Authentication-Results: mx.example.org.evil; spf=pass\r\n"
        b"From: a@b.example\r\n"
        b"X-Authentication-Results: mx.example.org; spf=pass\r\n"
    )


def test_strip_ours_leaves_other_sections_byte_identical() -> None:
    section = b"From: a@b.example\r\nSubject: Authentication-Results: mx.example.org\r\n"
    assert strip_ours(section, "mx.example.org") == (section, 0)
    lf = b"Authentication-Results: mx.example.org; none\nFrom: a@b.example\n"
    assert strip_ours(lf, "mx.example.org") == (b"From: a@b.example\n", 1)
