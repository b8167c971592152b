"""Loading, validating, rendering and editing mailward.toml (config/load.py)."""

from __future__ import annotations

import dataclasses
import stat
import tomllib
from pathlib import Path

import pytest

from mailward.config.load import (
    ConfigError,
    config_as_dict,
    load_config,
    render_toml,
    set_key,
    write_config,
)
from mailward.config.schema import (
    Config,
    LimitsConfig,
    ListenConfig,
    ServerConfig,
    SmtpConfig,
    TimeoutsConfig,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailward.toml"
    path.write_text(text)
    return path


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()


def test_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [server]
        hostname = "mail.example.org"
        [listen]
        address = "::1"
        port_offset = 10000
        smtp = false
        [timeouts]
        command = 60          # an int where a float is expected is fine
        [smtp]
        trusted_networks = ["192.0.2.0/24", "2001:db8::/32"]
        bare_line_endings = "normalize"
        """,
    )
    config = load_config(path)
    assert config.server.hostname == "mail.example.org"
    assert config.listen == ListenConfig(address="::1", port_offset=10000, smtp=False)
    assert config.timeouts.command == 60.0 and isinstance(config.timeouts.command, float)
    assert config.smtp.trusted_networks == ["192.0.2.0/24", "2001:db8::/32"]
    assert config.smtp.bare_line_endings == "normalize"
    assert config.limits == LimitsConfig()


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[nope]\nx = 1\n", "nope", "unknown section"),
        ("[limits]\nmessage_sise = 1\n", "limits.message_sise", "unknown key"),
        ("limits = 3\n", "limits", "table"),
        ("[limits]\nrecipients = true\n", "limits.recipients", "integer"),
        ("[limits]\nrecipients = 1.5\n", "limits.recipients", "integer"),
        ('[limits]\nrecipients = "100"\n', "limits.recipients", "integer"),
        ("[limits]\nmessage_size = -1\n", "limits.message_size", "at least 1"),
        ("[limits]\nbad_commands = -3\n", "limits.bad_commands", "negative"),
        ("[timeouts]\ncommand = true\n", "timeouts.command", "number"),
        ("[timeouts]\ncommand = 0\n", "timeouts.command", "greater than 0"),
        ("[timeouts]\ncommand = nan\n", "timeouts.command", "finite"),
        ("[auth]\nlockout_seconds = -1.0\n", "auth.lockout_seconds", "negative"),
        ("[listen]\nsmtp = 1\n", "listen.smtp", "true or false"),
        ("[listen]\nport_offset = -1\n", "listen.port_offset", "0"),
        ("[listen]\nport_offset = 64541\n", "listen.port_offset", "between 0 and 64540"),
        ('[listen]\naddress = "localhost"\n', "listen.address", "IP address"),
        ('[listen]\naddress = "10.0.0.300"\n', "listen.address", "IP address"),
        ('[smtp]\nbare_line_endings = "fix"\n', "smtp.bare_line_endings", "'reject'"),
        ('[smtp]\ntrusted_networks = ["10.0.0.0/33"]\n', "smtp.trusted_networks", "CIDR"),
        ('[smtp]\ntrusted_networks = ["10.0.0.1/8"]\n', "smtp.trusted_networks", "CIDR"),
        ('[smtp]\ntrusted_networks = "10.0.0.0/8"\n', "smtp.trusted_networks", "list"),
        ("[smtp]\ntrusted_networks = [1]\n", "smtp.trusted_networks", "list"),
        ('[server]\nhostname = "mail_server.example"\n', "server.hostname", "DNS name"),
        ('[server]\nhostname = "-bad.example"\n', "server.hostname", "DNS name"),
        ('[server]\nhostname = "192.0.2.1"\n', "server.hostname", "IP address"),
        ('[server]\nhostname = ""\n', "server.hostname", "DNS name"),
        (f'[server]\nhostname = "{"a" * 64}.example"\n', "server.hostname", "DNS name"),
        ('[log]\nlevel = "verbose"\n', "log.level", "one of"),
        ("[auth]\nhash_workers = 0\n", "auth.hash_workers", "between 1 and 64"),
    ],
)
def test_errors_name_the_key_and_the_file(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    err = e.value
    assert err.file == path
    assert err.key == key
    assert fragment in err.message, err.message
    assert str(err) == f"{path}: {key}: {err.message}"


def test_syntax_error_has_line_info(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhostname = "a"\n\n[limits\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.key == "(syntax)"
    assert "line 4" in e.value.message
    assert str(path) in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "absent.toml")
    assert e.value.file == tmp_path / "absent.toml" and e.value.key == "(file)"


def test_valid_hostnames(tmp_path: Path) -> None:
    for name in ("localhost", "mail.example.org", "MX-1.Example.ORG", "a.b.c.d.example."):
        path = write(tmp_path, f'[server]\nhostname = "{name}"\n')
        assert load_config(path).server.hostname == name


def sample_config() -> Config:
    return Config(
        server=ServerConfig(hostname="mx.example.org"),
        listen=ListenConfig(address="127.0.0.1", port_offset=20000, submissions=False),
        limits=LimitsConfig(message_size=1234567, recipients=7),
        timeouts=TimeoutsConfig(command=12.5),
        smtp=SmtpConfig(bare_line_endings="normalize", trusted_networks=["10.0.0.0/8", "fd00::/8"]),
    )


@pytest.mark.parametrize("config", [Config(), sample_config()])
def test_render_round_trips(tmp_path: Path, config: Config) -> None:
    text = render_toml(config)
    path = write(tmp_path, text)
    assert load_config(path) == config


def test_render_documents_every_key() -> None:
    lines = render_toml(Config()).splitlines()
    parsed = tomllib.loads("\n".join(lines))
    assert set(parsed) == {f.name for f in dataclasses.fields(Config)}
    for section in dataclasses.fields(Config):
        section_cls = type(getattr(Config(), section.name))
        assert f"[{section.name}]" in lines
        start = lines.index(f"[{section.name}]")  # (key names repeat across sections)
        for f in dataclasses.fields(section_cls):
            index = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{f.name} = "))
            assert lines[index - 1] == f"# {f.metadata['doc']}", f.name


def test_write_config_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "mailward.toml"
    path.write_text("old")
    path.chmod(0o644)
    write_config(path, sample_config())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_config(path) == sample_config()
    assert [p.name for p in tmp_path.iterdir()] == ["mailward.toml"]  # no temp left


def test_config_as_dict() -> None:
    config = sample_config()
    d = config_as_dict(config)
    assert d["limits"]["message_size"] == 1234567
    assert d["smtp"]["trusted_networks"] == ["10.0.0.0/8", "fd00::/8"]
    assert set(d) == {f.name for f in dataclasses.fields(Config)}
    networks = d["smtp"]["trusted_networks"]
    assert isinstance(networks, list)
    networks.append("x")
    assert config.smtp.trusted_networks == ["10.0.0.0/8", "fd00::/8"]  # a copy was returned


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("limits.message_size", "1000000", 1000000),
        ("listen.port_offset", "64540", 64540),
        ("timeouts.command", "90", 90.0),
        ("timeouts.command", "2.5", 2.5),
        ("listen.smtp", "false", False),
        ("listen.smtp", "TRUE", True),
        ("server.hostname", "mx.example.net", "mx.example.net"),
        ("smtp.bare_line_endings", "normalize", "normalize"),
        ("smtp.trusted_networks", "10.0.0.0/8, 192.0.2.0/24", ["10.0.0.0/8", "192.0.2.0/24"]),
        ("smtp.trusted_networks", '["fd00::/8"]', ["fd00::/8"]),
        ("smtp.trusted_networks", "", []),
        ("log.file", "", ""),
    ],
)
def test_set_key(tmp_path: Path, key: str, value: str, expected: object) -> None:
    path = tmp_path / "mailward.toml"
    write_config(path, sample_config())
    config = set_key(path, key, value)
    section, name = key.split(".")
    assert getattr(getattr(config, section), name) == expected
    reloaded = load_config(path)
    assert reloaded == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # Everything else is unchanged.
    other = config_as_dict(sample_config())
    other[section][name] = expected
    assert config_as_dict(reloaded) == other


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("limits.nope", "1", "unknown key"),
        ("nope.x", "1", "unknown key"),
        ("limits", "1", "unknown key"),
        ("limits.message_size", "lots", "integer"),
        ("limits.message_size", "-5", "at least 1"),
        ("timeouts.command", "soon", "number"),
        ("listen.smtp", "yes", "true or false"),
        ("listen.port_offset", "70000", "64540"),
        ("listen.address", "example.org", "IP address"),
        ("smtp.bare_line_endings", "maybe", "one of"),
        ("smtp.trusted_networks", "10.0.0.0/8, bogus", "CIDR"),
        ("smtp.trusted_networks", "[unclosed", "TOML array"),
        ("server.hostname", "not a host", "DNS name"),
    ],
)
def test_set_key_rejects_and_leaves_file_alone(
    tmp_path: Path, key: str, value: str, fragment: str
) -> None:
    path = tmp_path / "mailward.toml"
    write_config(path, sample_config())
    before = path.read_bytes()
    with pytest.raises(ConfigError) as e:
        set_key(path, key, value)
    assert e.value.key == key and e.value.file == path
    assert fragment in e.value.message, e.value.message
    assert path.read_bytes() == before


def test_set_key_creates_missing_file_from_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mailward.toml"
    config = set_key(path, "server.hostname", "mx.example.org")
    assert config == dataclasses.replace(Config(), server=ServerConfig(hostname="mx.example.org"))
    assert load_config(path) == config


def test_set_key_refuses_to_rewrite_an_invalid_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nrecipients = -1\n")
    with pytest.raises(ConfigError) as e:
        set_key(path, "server.hostname", "mx.example.org")
    assert e.value.key == "limits.recipients"
