"""RFC 5321 4.1.2 / 4.1.3 path grammar (proto.address)."""

from __future__ import annotations

import pytest

from mailward.proto.address import (
    AddressError,
    ParsedPath,
    parse_address_literal,
    parse_domain,
    parse_mail_params,
    parse_path,
    split_path,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<user@example.org>", ParsedPath("user", "example.org", False, (), "user@example.org")),
        ("user@example.org", ParsedPath("user", "example.org", False, (), "user@example.org")),
        ("<user%other@local>", ParsedPath("user%other", "local", False, (), "user%other@local")),
        ("<a!b@c.d>", ParsedPath("a!b", "c.d", False, (), "a!b@c.d")),
        (
            "<first.last+tag@x.y>",
            ParsedPath("first.last+tag", "x.y", False, (), "first.last+tag@x.y"),
        ),
        ('<"a b"@x.y>', ParsedPath("a b", "x.y", True, (), '"a b"@x.y')),
        ('<"a\\"b@c"@x.y>', ParsedPath('a"b@c', "x.y", True, (), '"a\\"b@c"@x.y')),
        ('<""@x.y>', ParsedPath("", "x.y", True, (), '""@x.y')),
        ("<u@[192.0.2.1]>", ParsedPath("u", "[192.0.2.1]", False, (), "u@[192.0.2.1]")),
        (
            "<u@[IPv6:2001:db8::1]>",
            ParsedPath("u", "[IPv6:2001:db8::1]", False, (), "u@[IPv6:2001:db8::1]"),
        ),
        ("<u@[x-tag:any]>", ParsedPath("u", "[x-tag:any]", False, (), "u@[x-tag:any]")),
        ("<@a.b,@c.d:u@e.f>", ParsedPath("u", "e.f", False, ("a.b", "c.d"), "u@e.f")),
        ("<U@EXAMPLE.ORG>", ParsedPath("U", "EXAMPLE.ORG", False, (), "U@EXAMPLE.ORG")),
    ],
)
def test_parse_path_valid(text: str, expected: ParsedPath) -> None:
    assert parse_path(text, utf8=False) == expected


@pytest.mark.parametrize(
    "text",
    [
        "<>",
        "<user>",
        "<user@>",
        "<@example.org>",
        "<user@example.org.>",  # trailing dot
        "<user@example..org>",  # empty label
        "<user@-example.org>",
        "<user@example-.org>",
        "<a@b@c.d>",  # "@" in an unquoted local part
        "<a..b@c.d>",
        "<.a@c.d>",
        "<a.@c.d>",
        "<a b@c.d>",
        "<user@exa_mple.org>",
        "<user@example.org",
        "user@example.org>",
        "<<user@example.org>>",
        "<u@[192.0.2.256]>",
        "<u@[192.0.2]>",
        "<u@[IPv6:2001:db8:::1]>",
        "<u@[IPv6:1:2:3:4:5:6:7]>",
        "<u@[IPv6:1::2::3]>",
        "<u@[IPv6:zz::1]>",
        "<u@[]>",
        "<u@[tag:]>",
        "<@a.b:@c.d:u@e.f>",
        "<@a.b,c.d:u@e.f>",
        '<"unterminated@x.y>',
        '<"a"b@x.y>',
        "<jörg@example.de>",  # UTF-8 needs SMTPUTF8
        "<u@bücher.example>",
    ],
)
def test_parse_path_invalid(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text, utf8=False)


def test_utf8_only_with_smtputf8() -> None:
    p = parse_path("<jörg@bücher.example>", utf8=True)
    assert (p.local_part, p.domain) == ("jörg", "bücher.example")
    assert parse_path('<"ü x"@a.b>', utf8=True).local_part == "ü x"
    with pytest.raises(AddressError):
        parse_path("<jörg@bücher.example>", utf8=False)


def test_postmaster_special_case() -> None:
    p = parse_path("<PostMaster>", utf8=False, postmaster=True)
    assert (p.local_part, p.domain, p.mailbox) == ("PostMaster", "", "PostMaster")
    with pytest.raises(AddressError):
        parse_path("<postmaster>", utf8=False)


def test_length_limits() -> None:
    # RFC 5321 4.5.3.1.1: local part <= 64 octets
    parse_path(f"<{'a' * 64}@x.y>", utf8=False)
    with pytest.raises(AddressError):
        parse_path(f"<{'a' * 65}@x.y>", utf8=False)
    # 4.5.3.1.3: path <= 256 octets including "<" and ">"
    domain = ".".join(["d" * 60] * 3) + "." + "e" * 56  # 239 octets
    ok = f"<{'a' * 14}@{domain}>"
    assert len(ok) == 256
    parse_path(ok, utf8=False)
    with pytest.raises(AddressError):
        parse_path(f"<{'a' * 15}@{domain}>", utf8=False)
    with pytest.raises(AddressError):
        parse_path(f"{'a' * 15}@{domain}", utf8=False)  # unbracketed counts the same
    # octets, not characters, under SMTPUTF8
    with pytest.raises(AddressError):
        parse_path(f"<{'ü' * 33}@x.y>", utf8=True)
    # RFC 1035 2.3.4 labels <= 63 octets
    parse_domain("a" * 63 + ".b", utf8=False)
    with pytest.raises(AddressError):
        parse_domain("a" * 64 + ".b", utf8=False)


@pytest.mark.parametrize(
    "literal",
    [
        "[0.0.0.0]",
        "[255.255.255.255]",
        "[IPv6:::]",
        "[IPv6:::1]",
        "[IPv6:1::]",
        "[ipv6:1:2:3:4:5:6:7:8]",
        "[IPv6:1:2:3::4:5:6]",
        "[IPv6:1:2::3]",
        "[IPv6:::192.0.2.1]",
        "[IPv6:1:2:3:4:5:6:192.0.2.1]",
        "[IPv6:1:2:3:4::192.0.2.1]",
    ],
)
def test_address_literals_valid(literal: str) -> None:
    assert parse_address_literal(literal) == literal


@pytest.mark.parametrize(
    "literal",
    [
        "[256.1.1.1]",
        "[1.2.3.4.5]",
        "[IPv6:1:2:3:4:5:6:7:8:9]",
        "[IPv6:1:2:3:4:5:6:7::8]",  # 8 groups besides "::"
        "[IPv6:1:2:3:4:5:6::7]",  # 7 groups besides "::"
        "[IPv6:1:2:3:4:5::192.0.2.1]",  # 5 groups besides "::" and IPv4
        "[IPv6:1:2:3:4:5:192.0.2.1]",
        "[IPv6:12345::1]",
        "[IPv6::1]",
        "[IPv6:1.2.3.4]",
        "[-:x]",
        "1.2.3.4",
    ],
)
def test_address_literals_invalid(literal: str) -> None:
    with pytest.raises(AddressError):
        parse_address_literal(literal)


def test_parse_domain() -> None:
    assert parse_domain("mx.example.org", utf8=False) == "mx.example.org"
    assert parse_domain("localhost", utf8=False) == "localhost"
    assert parse_domain("[192.0.2.1]", utf8=False) == "[192.0.2.1]"
    for bad in ("", "a.", ".a", "a..b", "a_b", "-a", "a-", "[192.0.2.1", "a b"):
        with pytest.raises(AddressError):
            parse_domain(bad, utf8=False)
    with pytest.raises(AddressError):
        parse_domain("[192.0.2.1]", utf8=False, literal=False)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<a@b.c>", ("<a@b.c>", "")),
        ("<a@b.c> SIZE=10 BODY=8BITMIME", ("<a@b.c>", "SIZE=10 BODY=8BITMIME")),
        ('<"x> y"@b.c> SIZE=1', ('<"x> y"@b.c>', "SIZE=1")),
        ("<a@[x:>]> P", ("<a@[x:>]>", "P")),
        ("a@b.c SIZE=1", ("a@b.c", "SIZE=1")),
        ('"a b"@c.d X', ('"a b"@c.d', "X")),
        ("<>", ("<>", "")),
    ],
)
def test_split_path(arg: str, expected: tuple[str, str]) -> None:
    assert split_path(arg) == expected


@pytest.mark.parametrize("arg", ["", " <a@b.c>", "<a@b.c", "<a@b.c>x", "<a@b.c> ", '<"a@b.c>'])
def test_split_path_invalid(arg: str) -> None:
    with pytest.raises(AddressError):
        split_path(arg)


def test_parse_mail_params() -> None:
    assert parse_mail_params("", utf8=False) == {}
    assert parse_mail_params("size=10 Body=8BITMIME SMTPUTF8", utf8=False) == {
        "SIZE": "10",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }
    assert parse_mail_params("AUTH=<>", utf8=False) == {"AUTH": "<>"}
    assert parse_mail_params("X=ü", utf8=True) == {"X": "ü"}
    for bad in ("SIZE=", "SIZE=1  BODY=7BIT", " SIZE=1", "-X=1", "X=a=b", "X=a b=", "S=1 s=2"):
        with pytest.raises(AddressError):
            parse_mail_params(bad, utf8=False)
    with pytest.raises(AddressError):
        parse_mail_params("X=ü", utf8=False)
