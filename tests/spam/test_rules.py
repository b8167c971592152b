"""The spam rules (spam/rules.py), one by one, on messages built here: each rule fires
on the shape it names and stays quiet on a well-formed message."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formatdate, make_msgid

import pytest

from mailward.spam import rules
from mailward.spam.rules import GTUBE, AuthVerdicts

NOW = time.time()


def names(hits: list[rules.Hit]) -> set[str]:
    return {h.name for h in hits}


def good_message(**overrides: str) -> EmailMessage:
    msg = EmailMessage(policy=SMTP)
    msg["From"] = overrides.get("From", "Alice Example <alice@sender.test>")
    msg["To"] = "bob@example.test"
    msg["Subject"] = overrides.get("Subject", "Minutes of Tuesday's meeting")
    msg["Date"] = overrides.get("Date", formatdate(NOW))
    msg["Message-ID"] = make_msgid(domain="sender.test")
    msg.set_content("Hello Bob,\nthe minutes are below. See https://sender.test/minutes\n")
    return msg


def section(msg: EmailMessage) -> bytes:
    data = msg.as_bytes()
    return data[: data.index(b"\r\n\r\n") + 4]


def test_gtube_is_found_anywhere_in_the_message() -> None:
    assert names(rules.gtube(b"Subject: x\r\n\r\nhello " + GTUBE + b" bye\r\n")) == {"GTUBE"}
    assert rules.gtube(b"Subject: x\r\n\r\nhello\r\n") == []


@pytest.mark.parametrize(
    ("helo", "peer", "expected"),
    [
        ("mail.sender.test", "192.0.2.7", set()),
        ("[192.0.2.7]", "192.0.2.7", set()),
        ("[IPv6:2001:db8::1]", "2001:db8::1", set()),
        ("[192.0.2.8]", "192.0.2.7", {"HELO_IP_MISMATCH"}),
        ("192.0.2.7", "192.0.2.7", {"HELO_BARE_IP"}),
        ("192.0.2.8", "192.0.2.7", {"HELO_BARE_IP", "HELO_IP_MISMATCH"}),
        ("localhost-pc", "192.0.2.7", {"HELO_NOT_FQDN"}),
        ("mx.example.test", "192.0.2.7", {"HELO_IS_OURS"}),
        ("", "192.0.2.7", {"HELO_NOT_FQDN"}),
    ],
)
def test_helo_rules(helo: str, peer: str, expected: set[str]) -> None:
    assert names(rules.helo(helo, peer, "mx.example.test")) == expected


@pytest.mark.parametrize(
    ("ip", "ptr", "confirmed", "expected"),
    [
        ("198.51.100.20", ["mail.sender.test"], True, set()),
        ("198.51.100.20", [], False, {"RDNS_NONE"}),
        ("198.51.100.20", ["mail.sender.test"], False, {"RDNS_NOT_CONFIRMED"}),
        ("198.51.100.20", ["198-51-100-20.pool.isp.test"], True, {"RDNS_DYNAMIC"}),
        ("198.51.100.20", ["dsl-77.isp.test"], True, {"RDNS_DYNAMIC"}),
        ("198.51.100.20", ["dynamic-host.isp.test"], True, {"RDNS_DYNAMIC"}),
    ],
)
def test_reverse_dns_rules(ip: str, ptr: list[str], confirmed: bool, expected: set[str]) -> None:
    assert names(rules.reverse_dns(ip, ptr, confirmed)) == expected


def test_a_well_formed_message_fires_no_header_or_mime_rule() -> None:
    msg = good_message()
    assert rules.headers(section(msg), NOW) == []
    assert rules.mime_structure(msg.as_bytes()) == []


def test_missing_required_fields() -> None:
    data = b"Subject: hi\r\n\r\nbody\r\n"
    assert names(rules.headers(data, NOW)) == {
        "MISSING_DATE",
        "MISSING_MID",
        "MISSING_FROM",
        "TO_MISSING",
    }


@pytest.mark.parametrize(
    ("delta", "expected"),
    [(timedelta(days=3), {"DATE_IN_FUTURE"}), (timedelta(days=-90), {"DATE_IN_PAST"})],
)
def test_dates_far_from_now(delta: timedelta, expected: set[str]) -> None:
    when = format_datetime(datetime.fromtimestamp(NOW, UTC) + delta)
    assert names(rules.headers(section(good_message(Date=when)), NOW)) == expected


def test_an_unparsable_date() -> None:
    assert names(rules.headers(section(good_message(Date="yesterday-ish")), NOW)) == {
        "INVALID_DATE"
    }


def test_all_capitals_subject_and_display_name_spoof() -> None:
    msg = good_message(
        Subject="URGENT ACCOUNT VERIFICATION NEEDED",
        From='"security@bank.test" <phish@attacker.test>',
    )
    assert names(rules.headers(section(msg), NOW)) == {"SUBJ_ALL_CAPS", "FROM_DISPLAY_SPOOF"}
    same = good_message(From='"alice@sender.test" <alice@sender.test>')
    assert rules.headers(section(same), NOW) == []


def test_html_only_image_only_ip_links_and_shorteners() -> None:
    msg = good_message()
    msg.set_content(
        '<html><body><a href="http://203.0.113.9/win"><img src="cid:x"></a>'
        '<a href="https://bit.ly/abc">go</a></body></html>',
        subtype="html",
    )
    assert names(rules.mime_structure(msg.as_bytes())) == {
        "MIME_HTML_ONLY",
        "HTML_IMAGE_ONLY",
        "URI_IP",
        "URI_SHORTENER",
    }


def test_html_with_a_text_alternative_is_not_html_only() -> None:
    msg = good_message()
    msg.add_alternative(
        "<p>" + "Plenty of words in this newsletter. " * 10 + "</p>", subtype="html"
    )
    assert rules.mime_structure(msg.as_bytes()) == []


def test_authentication_verdicts() -> None:
    bad = AuthVerdicts(spf="fail", dkim=("fail",), dmarc=(("fail", "none"),))
    assert names(rules.authentication(bad)) == {"SPF_FAIL", "DKIM_INVALID", "DMARC_FAIL_NONE"}
    good = AuthVerdicts(spf="pass", dkim=("pass", "fail"), dmarc=(("pass", "reject"),))
    hits = rules.authentication(good)
    assert names(hits) == {"DMARC_PASS"} and sum(h.score for h in hits) < 0
    assert names(rules.authentication(AuthVerdicts("softfail", (), ()))) == {"SPF_SOFTFAIL"}


@pytest.mark.parametrize(
    ("p", "name"),
    [
        (0.999, "BAYES_99"),
        (0.97, "BAYES_95"),
        (0.5, "BAYES_50"),
        (0.1, "BAYES_05"),
        (0.0, "BAYES_00"),
    ],
)
def test_bayes_bands(p: float, name: str) -> None:
    hit = rules.bayes(p)
    assert hit.name == name
    assert (hit.score > 0) == (p >= 0.6)


def test_rules_never_raise_on_garbage() -> None:
    import random

    rng = random.Random(5)
    for _ in range(200):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 600)))
        rules.headers(data, NOW)
        rules.mime_structure(data)
        rules.gtube(data)
