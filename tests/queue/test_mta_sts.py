"""MTA-STS (queue/mta_sts.py): TXT and policy parsing, mx patterns, the HTTPS fetch
against a local server, and the cache (RFC 8461 3, 4.1, 5.1)."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.crypto.tls import generate_self_signed
from mailward.queue.mta_sts import (
    MAX_AGE_LIMIT,
    HttpsPolicyFetcher,
    MtaStsCache,
    MtaStsError,
    MtaStsPolicy,
    mx_matches,
    parse_policy,
    parse_txt,
)
from mailward.testing.fake_dns import FakeResolver
from tests.queue.tls_fixtures import Response, https_server

DOMAIN = "example.test"
POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmx: *.mx.example.net\r\n"
    "max_age: 86400\r\n"
)
TEXT = [("Content-Type", "text/plain")]


# --------------------------------------------------------------------------- TXT


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1 ; id=abc ; ext_1=value;"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=x1"], "x1"),  # others are discarded
        ([], None),
        (["v=spf1 mx -all"], None),
        (["v=STSv10; id=abc"], None),  # not "v=STSv1;"
        (["v=stsv1; id=abc"], None),  # case-sensitive
    ],
)
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


@pytest.mark.parametrize(
    "records",
    [
        ["v=STSv1; id=a", "v=STSv1; id=b"],  # RFC 8461 3.1: exactly one
        ["v=STSv1;"],  # no id
        ["v=STSv1; id=" + "a" * 33],  # id is 1-32 characters
        ["v=STSv1; id=not-alnum"],
        ["v=STSv1; id=abc; bad field"],
    ],
)
def test_bad_txt_record(records: list[str]) -> None:
    with pytest.raises(MtaStsError):
        parse_txt(records)


# --------------------------------------------------------------------------- policy


def test_policy_parses() -> None:
    policy = parse_policy(POLICY)
    assert policy == MtaStsPolicy("enforce", 86400, ("mx1.example.test", "*.mx.example.net"))
    lf = parse_policy(
        "version: STSv1\nmode: testing\nmx: MX1.Example.Test.\nmax_age:604800\nfuture: x\n"
    )
    assert lf == MtaStsPolicy("testing", 604800, ("mx1.example.test",))
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 0").mode == "none"
    # For a repeated field other than mx, the first one counts.
    assert parse_policy(POLICY + "mode: none\r\n").mode == "enforce"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (POLICY.replace("STSv1", "STSv2"), "version"),
        (POLICY.replace("version: STSv1\r\n", ""), "version"),
        (POLICY.replace("enforce", "Enforce"), "mode"),
        (POLICY.replace("enforce", "reject"), "mode"),
        (POLICY.replace("86400", str(MAX_AGE_LIMIT + 1)), "exceeds"),
        (POLICY.replace("86400", "-1"), "max_age"),
        (POLICY.replace("86400", "1e5"), "max_age"),
        (POLICY.replace("86400", "12345678901"), "max_age"),
        (POLICY.replace("max_age: 86400\r\n", ""), "max_age"),
        ("version: STSv1\nmode: enforce\nmax_age: 10\n", "without any mx"),
        (POLICY.replace("*.mx.example.net", "*.*.example.net"), "mx pattern"),
        (POLICY.replace("*.mx.example.net", "mx..example.net"), "mx pattern"),
        (POLICY + "this line has no colon\r\n", "bad policy line"),
        ("<html><body>hello</body></html>", "bad policy line"),
    ],
)
def test_bad_policy(text: str, words: str) -> None:
    with pytest.raises(MtaStsError, match=words):
        parse_policy(text)


def test_max_age_bounds() -> None:
    assert parse_policy(POLICY.replace("86400", str(MAX_AGE_LIMIT))).max_age == MAX_AGE_LIMIT
    assert parse_policy(POLICY.replace("86400", "0")).max_age == 0


@pytest.mark.parametrize(
    ("pattern", "host", "ok"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.example.com.", True),
        ("mail.example.com.", "mail.example.com", True),
        ("mail.example.com", "mail2.example.com", False),
        ("*.example.com", "mail.example.com", True),
        ("*.example.com", "MX.Example.COM", True),
        ("*.example.com", "example.com", False),  # RFC 8461 4.1: one label, not zero
        ("*.example.com", "a.b.example.com", False),  # nor two
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mail.example.com.evil.test", False),
        ("example.com", "mail.example.com", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, ok: bool) -> None:
    assert mx_matches(pattern, host) is ok
    assert MtaStsPolicy("enforce", 1, (pattern,)).mx_allowed(host) is ok


# --------------------------------------------------------------------------- HTTPS fetch

NAMES = ["example", "redirect", "html", "big", "bigchunked", "bigclose", "missing", "charset"]


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, CA file) of an HTTPS server for mta-sts.<name>.test; the certificate is
    self-signed, so it is its own CA file."""
    directory = tmp_path_factory.mktemp("web")
    cert, key = directory / "cert.pem", directory / "key.pem"
    generate_self_signed([f"mta-sts.{n}.test" for n in NAMES], cert, key)
    big = b"version: STSv1\n" + b"x: y\n" * 14000  # 70 KB
    responses: dict[str, Response] = {
        "example.test": (200, TEXT, POLICY.encode()),
        "redirect.test": (301, [("Location", "https://mta-sts.example.test/")], b""),
        "html.test": (200, [("Content-Type", "text/html")], POLICY.encode()),
        "charset.test": (200, [("Content-Type", "Text/Plain; charset=utf-8")], POLICY.encode()),
        "big.test": (200, [*TEXT, ("Content-Length", str(len(big)))], big),
        "bigchunked.test": (200, [*TEXT, ("Transfer-Encoding", "chunked")], big),
        "bigclose.test": (200, TEXT, big),
    }
    with https_server(cert, key, responses) as port:
        yield port, cert


def fetcher(web: tuple[int, Path], *, trusted: bool = True) -> HttpsPolicyFetcher:
    port, ca = web
    return HttpsPolicyFetcher(
        cafile=ca if trusted else None, port=port, connect_host="127.0.0.1", timeout=20
    )


def test_fetch_a_policy(web: tuple[int, Path]) -> None:
    assert asyncio.run(fetcher(web)("example.test")) == POLICY
    assert asyncio.run(fetcher(web)("charset.test")) == POLICY


@pytest.mark.parametrize(
    ("domain", "words"),
    [
        ("redirect.test", "redirect refused"),
        ("html.test", "text/html"),
        ("missing.test", "HTTP status 404"),
        ("big.test", "larger than 65536"),
        ("bigchunked.test", "larger than 65536"),
        ("bigclose.test", "larger than 65536"),
    ],
)
def test_fetch_refusals(web: tuple[int, Path], domain: str, words: str) -> None:
    with pytest.raises(MtaStsError, match=words):
        asyncio.run(fetcher(web)(domain))


def test_fetch_needs_a_valid_certificate(web: tuple[int, Path]) -> None:
    with pytest.raises(MtaStsError, match="certificate not valid"):
        asyncio.run(fetcher(web, trusted=False)("example.test"))


def test_fetch_connection_refused() -> None:
    fetch = HttpsPolicyFetcher(port=1, connect_host="127.0.0.1")
    with pytest.raises(MtaStsError):
        asyncio.run(fetch("example.test"))


# --------------------------------------------------------------------------- cache


class FakeFetch:
    def __init__(self, text: str = POLICY) -> None:
        self.text = text
        self.calls: list[str] = []
        self.error: Exception | None = None

    async def __call__(self, domain: str) -> str:
        self.calls.append(domain)
        if self.error is not None:
            raise self.error
        return self.text


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns() -> FakeResolver:
    return FakeResolver({f"_mta-sts.{DOMAIN}": {"TXT": ["v=STSv1; id=one"]}})


def lookup(cache: MtaStsCache, dns: FakeResolver, domain: str = DOMAIN) -> MtaStsPolicy | None:
    return asyncio.run(cache.lookup(domain, dns)).policy


def test_cache_honours_max_age_and_id(tmp_path: Path, dns: FakeResolver) -> None:
    fetch, clock = FakeFetch(), Clock()
    cache = MtaStsCache(tmp_path / "sts", fetch, clock)
    first = lookup(cache, dns)
    assert first is not None and first.mode == "enforce"
    assert lookup(cache, dns) == first and len(fetch.calls) == 1  # same id: cached
    clock.now += 86399
    assert lookup(cache, dns) == first and len(fetch.calls) == 1
    clock.now += 1  # max_age reached: fetched again
    assert lookup(cache, dns) == first and len(fetch.calls) == 2
    fetch.text = POLICY.replace("enforce", "testing")
    assert lookup(cache, dns) == first and len(fetch.calls) == 2  # id unchanged
    dns.clear(f"_mta-sts.{DOMAIN}", "TXT")
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=two")
    changed = lookup(cache, dns)  # id changed: fetched at once
    assert changed is not None and changed.mode == "testing" and len(fetch.calls) == 3


def test_cache_survives_a_restart(tmp_path: Path, dns: FakeResolver) -> None:
    fetch, clock = FakeFetch(), Clock()
    lookup(MtaStsCache(tmp_path / "sts", fetch, clock), dns)
    directory = tmp_path / "sts"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    file = directory / f"{DOMAIN}.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert json.loads(file.read_text())["id"] == "one"
    again = MtaStsCache(directory, fetch, clock)
    assert lookup(again, dns) is not None and len(fetch.calls) == 1


def test_fetch_failure_uses_the_cached_policy(tmp_path: Path, dns: FakeResolver) -> None:
    fetch, clock = FakeFetch(), Clock()
    cache = MtaStsCache(tmp_path / "sts", fetch, clock)
    cached = lookup(cache, dns)
    dns.clear(f"_mta-sts.{DOMAIN}", "TXT")
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=two")
    fetch.error = MtaStsError("HTTP status 500")
    result = asyncio.run(cache.lookup(DOMAIN, dns))
    assert result.policy == cached and "cached policy (RFC 8461 5.1)" in result.note
    fetch.error = None
    fetch.text = "garbage"  # a policy that does not parse counts as a failed fetch
    assert lookup(cache, dns) == cached
    clock.now += 86400  # expired: nothing to fall back on
    result = asyncio.run(cache.lookup(DOMAIN, dns))
    assert result.policy is None and "no cached policy" in result.note


def test_dns_trouble_or_a_removed_record_uses_the_cached_policy(
    tmp_path: Path, dns: FakeResolver
) -> None:
    fetch, clock = FakeFetch(), Clock()
    cache = MtaStsCache(tmp_path / "sts", fetch, clock)
    cached = lookup(cache, dns)
    dns.fail(f"_mta-sts.{DOMAIN}", "TXT")
    assert lookup(cache, dns) == cached
    dns.clear(f"_mta-sts.{DOMAIN}", "TXT")  # record removed: policy lives out max_age
    assert lookup(cache, dns) == cached
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=a")
    dns.add(f"_mta-sts.{DOMAIN}", "TXT", "v=STSv1; id=b")  # two: invalid (RFC 8461 3.1)
    assert lookup(cache, dns) == cached
    clock.now += 86400
    assert lookup(cache, dns) is None
    assert len(fetch.calls) == 1


def test_no_policy_without_txt_or_cache(tmp_path: Path) -> None:
    fetch = FakeFetch()
    cache = MtaStsCache(tmp_path / "sts", fetch, Clock())
    resolver = FakeResolver()
    assert asyncio.run(cache.lookup(DOMAIN, resolver)).policy is None
    resolver.fail(f"_mta-sts.{DOMAIN}", "TXT")
    result = asyncio.run(cache.lookup(DOMAIN, resolver))
    assert result.policy is None and "TXT lookup failed" in result.note
    assert fetch.calls == []


@pytest.mark.parametrize("domain", ["../../etc", "a/b.test", "x", "", "exa mple.test"])
def test_hostile_domain_names_never_touch_files(tmp_path: Path, domain: str) -> None:
    fetch = FakeFetch()
    cache = MtaStsCache(tmp_path / "sts", fetch, Clock())
    result = asyncio.run(cache.lookup(domain, FakeResolver()))
    assert result.policy is None and fetch.calls == []
    assert not (tmp_path / "sts").exists()


def test_damaged_cache_file_is_ignored(tmp_path: Path, dns: FakeResolver) -> None:
    directory = tmp_path / "sts"
    directory.mkdir()
    (directory / f"{DOMAIN}.json").write_text("{not json")
    fetch = FakeFetch()
    assert lookup(MtaStsCache(directory, fetch, Clock()), dns) is not None
    assert len(fetch.calls) == 1


def test_concurrent_lookups_fetch_once(tmp_path: Path, dns: FakeResolver) -> None:
    fetch = FakeFetch()
    cache = MtaStsCache(tmp_path / "sts", fetch, Clock())

    async def many() -> list[MtaStsPolicy | None]:
        results = await asyncio.gather(*(cache.lookup(DOMAIN, dns) for _ in range(5)))
        return [r.policy for r in results]

    policies = asyncio.run(many())
    assert all(p is not None and p.mode == "enforce" for p in policies)
    assert len(fetch.calls) == 1


def test_cache_with_the_real_fetcher(tmp_path: Path, web: tuple[int, Path]) -> None:
    cache = MtaStsCache(tmp_path / "sts", fetcher(web), Clock())
    dns = FakeResolver({"_mta-sts.example.test": {"TXT": ["v=STSv1; id=1"]}})
    policy = lookup(cache, dns)
    assert policy is not None and policy.mx_allowed("a.mx.example.net")
    dns.add("_mta-sts.redirect.test", "TXT", "v=STSv1; id=1")
    result = asyncio.run(cache.lookup("redirect.test", dns))
    assert result.policy is None and "redirect refused" in result.note
