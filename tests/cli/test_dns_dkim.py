"""`mailward dns DOMAIN` and `mailward dkim rotate DOMAIN`, run in-process."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

from mailward.crypto import dkim
from mailward.queue.mta_sts import parse_policy, parse_txt
from tests.cli import test_cli
from tests.cli.test_cli import DOMAIN, Cli, assert_usage_error

# The fixtures of test_cli.py, shared (a data directory made by `mailward init`).
hasher = test_cli.hasher
cli = test_cli.cli
data = test_cli.data


def records(cli: Cli, data: Path, domain: str = DOMAIN) -> list[dict[str, str]]:
    result = cli("dns", domain, "--json", "--data", str(data))
    assert result.rc == 0, result.err
    out: list[dict[str, str]] = json.loads(result.text)["records"]
    return out


def test_dns_prints_every_record(cli: Cli, data: Path) -> None:
    result = cli("dns", DOMAIN, "--data", str(data))
    assert result.rc == 0, result.err
    text = result.text
    for purpose in ("MX", "SPF", "DKIM", "DMARC", "MTA-STS", "TLS-RPT", "DANE"):
        assert f"\n{purpose} " in text
    assert "example.org.  " in text and "10 mail.example.org." in text
    assert '"v=spf1 mx -all"' in text
    assert "p=quarantine" in text and "rua=mailto:postmaster@example.org" in text
    assert '"v=TLSRPTv1; rua=mailto:tlsrpt@example.org"' in text
    assert "_25._tcp.mail.example.org." in text
    assert "https://mta-sts.example.org/.well-known/mta-sts.txt" in text
    assert "    mode: testing" in text and "    mx: mail.example.org" in text
    assert "p=quarantine" in text.split("notes:")[1]  # the why is explained
    for line in text.splitlines():  # long TXT values split into <=255-octet strings
        for piece in line.split('"')[1::2]:
            assert len(piece) <= 255


def test_dns_json(cli: Cli, data: Path) -> None:
    result = cli("dns", "Example.ORG", "--json", "--data", str(data))
    assert result.rc == 0, result.err
    plan = json.loads(result.text)
    assert plan["domain"] == DOMAIN and plan["hostname"] == "mail.example.org"
    by_purpose: dict[str, list[dict[str, str]]] = {}
    for record in plan["records"]:
        by_purpose.setdefault(record["purpose"], []).append(record)
    assert [r["value"] for r in by_purpose["MX"]] == ["10 mail.example.org."]
    assert {r["name"].split(".")[0][-1] for r in by_purpose["DKIM"]} == {"e", "r"}
    assert by_purpose["DMARC"][0]["name"] == "_dmarc.example.org"
    assert by_purpose["TLS-RPT"][0]["name"] == "_smtp._tls.example.org"

    # MTA-STS: the TXT id comes from the policy, which our own parser accepts.
    sts = by_purpose["MTA-STS"][0]
    assert sts["name"] == "_mta-sts.example.org"
    policy_text = plan["mta_sts_policy"]["content"]
    policy = parse_policy(policy_text)
    assert policy.mode == "testing" and policy.mx_allowed("mail.example.org")
    assert parse_txt([sts["value"]]) == hashlib.sha256(policy_text.encode()).hexdigest()[:20]
    assert plan["mta_sts_policy"]["url"] == "https://mta-sts.example.org/.well-known/mta-sts.txt"

    # DANE-EE SPKI SHA-256 of the configured certificate.
    (dane,) = by_purpose["DANE"]
    assert dane["name"] == "_25._tcp.mail.example.org" and dane["type"] == "TLSA"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((data / "tls" / "cert.pem").read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert dane["value"] == f"3 1 1 {hashlib.sha256(spki).hexdigest()}"


def test_dns_spf_names_a_public_listen_address(cli: Cli, data: Path) -> None:
    assert cli("config", "set", "listen.address", "8.8.8.8", "--data", str(data)).rc == 0
    spf = [r for r in records(cli, data) if r["purpose"] == "SPF"]
    assert spf[0]["value"] == "v=spf1 mx ip4:8.8.8.8 -all"
    assert cli("config", "set", "listen.address", "127.0.0.1", "--data", str(data)).rc == 0
    spf = [r for r in records(cli, data) if r["purpose"] == "SPF"]
    assert spf[0]["value"] == "v=spf1 mx -all"  # a private address says nothing


def test_dns_without_a_readable_certificate(cli: Cli, data: Path) -> None:
    (data / "tls" / "cert.pem").write_text("not a certificate")
    result = cli("dns", DOMAIN, "--json", "--data", str(data))
    assert result.rc == 0, result.err
    plan = json.loads(result.text)
    assert not [r for r in plan["records"] if r["purpose"] == "DANE"]
    assert any("no TLSA record" in note for note in plan["notes"])


def test_dns_refusals(cli: Cli, data: Path, tmp_path: Path) -> None:
    assert_usage_error(cli("dns", "other.org", "--data", str(data)), "not a local domain")
    assert_usage_error(cli("dns", "../etc", "--data", str(data)), "invalid domain")
    assert_usage_error(cli("dns", DOMAIN, "--data", str(tmp_path)), "mailward init")
    assert_usage_error(cli("dns", "--data", str(data)), "domain")


def test_dkim_rotate(cli: Cli, data: Path) -> None:
    before = dkim.signing_keys(data, DOMAIN)
    old = {k.selector for k in before}
    result = cli("dkim", "rotate", DOMAIN, "--data", str(data))
    assert result.rc == 0, result.err
    after = dkim.signing_keys(data, DOMAIN)
    new = [k.selector for k in after]
    assert [k.algorithm for k in after] == ["ed25519", "rsa"]
    assert not old & set(new)
    assert f"signing with {new[0]}, {new[1]}" in result.text
    for key in after:
        assert f"{key.selector}._domainkey.example.org. 3600 IN TXT" in result.text
        assert stat.S_IMODE(key.private_key_path.stat().st_mode) == 0o600
    for key in before:  # old keys kept (and named, to be deleted later)
        assert key.private_key_path.exists() and str(key.private_key_path) in result.text
    state = data / "dkim" / DOMAIN / dkim.CURRENT_FILE
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert json.loads(state.read_text())["selectors"] == new

    # load_domain_keys: the current pair first; `dns` lists old and new selectors.
    assert [k.selector for k in dkim.load_domain_keys(data, DOMAIN)][:2] == new
    published = {r["name"].split(".")[0] for r in records(cli, data) if r["purpose"] == "DKIM"}
    assert published == old | set(new)

    # A second rotation the same day gets yet another pair.
    again = cli("dkim", "rotate", DOMAIN, "--data", str(data))
    assert again.rc == 0, again.err
    newest = [k.selector for k in dkim.signing_keys(data, DOMAIN)]
    assert len({*old, *new, *newest}) == 6


def test_dkim_rotate_refusals(cli: Cli, data: Path) -> None:
    assert_usage_error(cli("dkim", "rotate", "other.org", "--data", str(data)), "not a local")
    assert_usage_error(cli("dkim", "rotate", "a/b", "--data", str(data)), "invalid domain")
    assert_usage_error(cli("dkim", "frobnicate", DOMAIN, "--data", str(data)), "invalid choice")


def test_help(cli: Cli) -> None:
    for argv in (["dns", "--help"], ["dkim", "rotate", "--help"]):
        result = cli(*argv)
        assert result.rc == 0 and "examples:" in result.text


def test_signing_keys_without_state_file_are_the_newest(tmp_path: Path) -> None:
    # Data directories from before rotation existed: newest selector pair signs.
    dkim.generate_domain_keys(tmp_path, DOMAIN, selector_date="202401")
    dkim.generate_domain_keys(tmp_path, DOMAIN, selector_date="202502")
    assert [k.selector for k in dkim.signing_keys(tmp_path, DOMAIN)] == ["202502e", "202502r"]
    # A damaged state file falls back to the same.
    (tmp_path / "dkim" / DOMAIN / dkim.CURRENT_FILE).write_text("{")
    assert [k.selector for k in dkim.signing_keys(tmp_path, DOMAIN)] == ["202502e", "202502r"]
    # Naming an older pair makes it current, ahead of newer ones.
    (tmp_path / "dkim" / DOMAIN / dkim.CURRENT_FILE).write_text(
        '{"selectors": ["202401e", "202401r"]}'
    )
    assert [k.selector for k in dkim.load_domain_keys(tmp_path, DOMAIN)] == [
        "202401e",
        "202401r",
        "202502e",
        "202502r",
    ]
