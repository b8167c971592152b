"""Load, validate, render and edit the TOML configuration file (`mailward.toml`).

The schema lives in `config.schema` (frozen dataclasses: type, default and a one-line
doc per key); this module is the only code that reads or writes the file. The format
is TOML 1.0 (https://toml.io/en/v1.0.0), read with the standard library's `tomllib`.

Validation is strict, because a mail server that silently ignores a misspelt key runs
with a policy its administrator did not choose:

- unknown sections and keys are errors, never ignored;
- types are exact: a bool is not an int, an int is accepted where a float is expected;
- `Literal` keys accept only their listed values;
- numbers are never negative, and some have tighter ranges (see `_RANGES`);
- `listen.address` is "" or one IP address, `smtp.trusted_networks` are CIDRs, and
  `server.hostname` is a DNS name (RFC 1123 2.1, RFC 1035 2.3.4).

Every error is a `ConfigError` naming the file and the dotted key, so the CLI can print
it as-is. Writes are atomic (temp file, fsync, rename, directory fsync) and the file is
mode 0600 because it may later hold paths to secrets and site policy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w

from mailward.config.schema import (
    PORTS,
    Config,
    parse_duration,
    parse_nameservers,
    parse_zone,
)
from mailward.files import atomic_write


class ConfigError(Exception):
    """A configuration problem, safe to show to the administrator."""

    def __init__(self, file: Path, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}")
        self.file = file
        self.key = key
        self.message = message


# --------------------------------------------------------------------------- schema


def _sections() -> list[tuple[str, type[Any]]]:
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config)]


def _keys(section_cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(section_cls, include_extras=True)
    return [(f, hints[f.name]) for f in dataclasses.fields(section_cls)]


def _field_doc(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("doc", "")).strip()


def _is_list_of_str(tp: Any) -> bool:
    return get_origin(tp) is list and get_args(tp) == (str,)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if _is_list_of_str(tp):
        return "a list of strings"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, str(tp))


# --------------------------------------------------------------------------- checks

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def _hostname_problem(value: object) -> str | None:
    assert isinstance(value, str)
    name = value[:-1] if value.endswith(".") else value
    if not name:
        return "must be a DNS name such as mail.example.org"
    if len(name) > 253:
        return "is longer than 253 characters"
    labels = name.split(".")
    for label in labels:
        if not _DNS_LABEL.match(label):
            return (
                f"{value!r} is not a valid DNS name (labels are letters, digits and "
                "inner hyphens, 1-63 characters each)"
            )
    # RFC 1123 2.1: the top-level label is not all-numeric, so an IP is not a hostname.
    if labels[-1].isdigit():
        return f"{value!r} is not a DNS name (an IP address is not a hostname)"
    return None


def _address_problem(value: object) -> str | None:
    assert isinstance(value, str)
    if value == "":
        return None
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f'{value!r} is not an IP address (use "" for all addresses)'
    return None


def _networks_problem(value: object) -> str | None:
    assert isinstance(value, list)
    for item in value:
        try:
            ipaddress.ip_network(item, strict=True)
        except ValueError as e:
            return f"{item!r} is not a CIDR network such as 192.0.2.0/24 ({e})"
    return None


# Inclusive (minimum, maximum) per dotted key; every other number has minimum 0.
_RANGES: dict[str, tuple[float, float | None]] = {
    # Every listener port (offset + 25/587/465) must stay <= 65535, so 0..64948.
    "listen.port_offset": (0, 65535 - max(PORTS.values())),
    "limits.message_size": (1, None),
    "limits.recipients": (1, None),
    "limits.connections_per_ip": (1, None),
    "limits.connections": (1, None),
    "limits.commands_per_session": (1, None),
    "auth.lockout_failures": (1, None),
    "auth.hash_workers": (1, 64),
    "malware.timeout": (0.001, None),
    "spam.junk_score": (0.1, None),
    "spam.rspamd_timeout": (0.001, None),
    "attachments.max_archive_depth": (1, 64),
    "attachments.max_archive_members": (1, None),
    "attachments.max_expanded_size": (1, None),
    "attachments.max_compression_ratio": (1, None),
    # Abuse limits (pipeline/abuse): every delay is bounded, every window positive.
    "abuse.connections_per_net": (1, None),
    "abuse.greeting_delay": (0, 30),
    "abuse.hello_timeout": (1, None),
    "abuse.tarpit_step": (0, 60),
    "abuse.tarpit_max": (0, 60),
    "abuse.probe_window": (1, None),
    "abuse.block_seconds": (1, None),
    "abuse.data_rate_grace": (1, None),
    "abuse.greylist_delay": (1, None),
    "abuse.greylist_expiry": (1, None),
    "abuse.greylist_lifetime": (1, None),
}

# Timeouts of zero would either disable the bound or close every session at once.
_POSITIVE_SECTIONS = {"timeouts"}


def _durations_problem(value: object) -> str | None:
    assert isinstance(value, list)
    if not value:
        return "must list at least one duration"
    for item in value:
        try:
            parse_duration(item)
        except ValueError:
            return f"{item!r} is not a duration such as 90s, 15m, 2h or 1d"
    return None


def _nameservers_problem(value: object) -> str | None:
    assert isinstance(value, list)
    try:
        parse_nameservers(value)
    except ValueError:
        return f"{value!r}: each must be an IP address, optionally with :port"
    return None


def _clamd_problem(value: object) -> str | None:
    assert isinstance(value, str)
    if value == "" or "/" in value:
        return None  # off, or a UNIX socket path
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f'{value!r} is not "host:port" or a socket path ("" turns scanning off)'
    return None


def _zones_problem(value: object) -> str | None:
    assert isinstance(value, list)
    for spec in value:
        try:
            parse_zone(spec, 0.0)
        except ValueError as exc:
            return str(exc)
    return None


def _rspamd_problem(value: object) -> str | None:
    assert isinstance(value, str)
    if value and not re.fullmatch(
        r"http://[A-Za-z0-9.\-]+(:\d{1,5})?/?|http://\[[0-9a-fA-F:.]+\](:\d{1,5})?/?", value
    ):
        return f'{value!r} is not "http://host:port" ("" turns rspamd off)'
    return None


_CHECKS: dict[str, Callable[[object], str | None]] = {
    "server.hostname": _hostname_problem,
    "listen.address": _address_problem,
    "smtp.trusted_networks": _networks_problem,
    "delivery.retry_schedule": _durations_problem,
    "dns.resolvers": _nameservers_problem,
    "malware.clamd": _clamd_problem,
    "spam.dnsbl": _zones_problem,
    "spam.rhsbl": _zones_problem,
    "spam.rspamd": _rspamd_problem,
}


def _check_value(file: Path, key: str, tp: Any, value: object) -> object:
    """Check `value` against the field type; return it converted (int -> float)."""
    if get_origin(tp) is Literal:
        if not isinstance(value, str) or value not in get_args(tp):
            raise ConfigError(file, key, f"must be {_type_name(tp)}, not {value!r}")
        return value
    if _is_list_of_str(tp):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(file, key, f"must be {_type_name(tp)}, not {value!r}")
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, f"must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(file, key, f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise ConfigError(file, key, f"must be a finite number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"must be a string, not {value!r}")
        if "\x00" in value:
            raise ConfigError(file, key, "must not contain a NUL character")
        return value
    raise TypeError(f"config.schema: unsupported type {tp!r} for {key}")  # programming error


def _check_range(file: Path, key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    section = key.split(".", 1)[0]
    low, high = _RANGES.get(key, (0, None))
    if section in _POSITIVE_SECTIONS and value <= 0:
        raise ConfigError(file, key, f"must be greater than 0, not {value!r}")
    if high is not None and not low <= value <= high:
        raise ConfigError(file, key, f"must be between {low} and {high}, not {value!r}")
    if value < low:
        what = "must not be negative" if low == 0 else f"must be at least {low}"
        raise ConfigError(file, key, f"{what}, not {value!r}")


def _build(file: Path, raw: dict[str, Any]) -> Config:
    """Validate a parsed TOML document and build the `Config` it describes."""
    sections = dict(_sections())
    for name in raw:
        if name not in sections:
            known = ", ".join(sections)
            raise ConfigError(file, name, f"unknown section (known: {known})")
    built: dict[str, Any] = {}
    for name, section_cls in sections.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(file, name, f"must be a [{name}] table, not {table!r}")
        keys = {f.name: tp for f, tp in _keys(section_cls)}
        for key in table:
            if key not in keys:
                raise ConfigError(file, f"{name}.{key}", f"unknown key in [{name}]")
        values: dict[str, Any] = {}
        for key, tp in keys.items():
            if key not in table:
                continue
            dotted = f"{name}.{key}"
            value = _check_value(file, dotted, tp, table[key])
            _check_range(file, dotted, value)
            check = _CHECKS.get(dotted)
            problem = check(value) if check else None
            if problem:
                raise ConfigError(file, dotted, problem)
            values[key] = value
        built[name] = section_cls(**values)
    return Config(**built)


# --------------------------------------------------------------------------- public API


def load_config(path: Path) -> Config:
    """Read and validate `path`; a missing key takes its schema default."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(path, "(file)", f"cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, "(syntax)", f"not UTF-8 text (byte {e.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "(syntax)", str(e)) from None
    return _build(path, raw)


def config_as_dict(config: Config) -> dict[str, dict[str, object]]:
    """`{section: {key: value}}` with lists copied, ready for JSON or TOML."""
    out: dict[str, dict[str, object]] = {}
    for name, _ in _sections():
        section = getattr(config, name)
        out[name] = {f.name: _copy(getattr(section, f.name)) for f in dataclasses.fields(section)}
    return out


def _copy(value: object) -> object:
    return list(value) if isinstance(value, list) else value


def _section_doc(section_cls: type[Any]) -> str:
    text = section_cls.__doc__ or ""
    # dataclasses invent "Name(field: type = ...)" when there is no docstring.
    if text.startswith(section_cls.__name__ + "("):
        return ""
    return " ".join(text.split())


def render_toml(config: Config) -> str:
    """A complete, commented TOML file for `config` (every key, with its doc)."""
    lines = [
        "# mailward configuration (TOML). Every key is shown; a missing key takes its",
        "# default. Relative paths are relative to the data directory.",
    ]
    for name, section_cls in _sections():
        section = getattr(config, name)
        lines.append("")
        lines.append(f"[{name}]")
        section_doc = _section_doc(section_cls)
        if section_doc:
            lines.append(f"# {section_doc}")
        for f, _ in _keys(section_cls):
            doc = _field_doc(f)
            lines.extend(f"# {line}".rstrip() for line in doc.splitlines())
            lines.append(tomli_w.dumps({f.name: _copy(getattr(section, f.name))}).rstrip("\n"))
    return "\n".join(lines) + "\n"


def write_config(path: Path, config: Config) -> None:
    """Write `render_toml(config)` to `path` atomically, mode 0600."""
    atomic_write(path, render_toml(config).encode("utf-8"))


def _parse_string(file: Path, key: str, tp: Any, text: str) -> object:
    """Turn a command-line string into a value of the field's type (checked later)."""
    s = text.strip()
    if tp is bool:
        if s.lower() in ("true", "false"):
            return s.lower() == "true"
        raise ConfigError(file, key, f"must be true or false, not {text!r}")
    if tp is int:
        try:
            return int(s, 10)
        except ValueError:
            raise ConfigError(file, key, f"must be an integer, not {text!r}") from None
    if tp is float:
        try:
            return float(s)
        except ValueError:
            raise ConfigError(file, key, f"must be a number, not {text!r}") from None
    if _is_list_of_str(tp):
        if s.startswith("["):
            try:
                return tomllib.loads(f"v = {s}")["v"]
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(file, key, f"not a TOML array: {e}") from None
        return [item.strip() for item in s.split(",") if item.strip()]
    return text  # str and Literal: taken verbatim


def set_key(path: Path, dotted_key: str, value: str) -> Config:
    """Set one key in the file at `path` (created from defaults if missing).

    The whole resulting configuration is validated before anything is written, so a
    bad value leaves the file untouched. The file is rewritten from the schema, so
    comments the administrator added by hand are not kept.
    """
    section_name, _, key = dotted_key.partition(".")
    sections = dict(_sections())
    if section_name not in sections or not key:
        raise ConfigError(path, dotted_key, "unknown key (expected section.key)")
    keys = {f.name: tp for f, tp in _keys(sections[section_name])}
    if key not in keys:
        raise ConfigError(path, dotted_key, f"unknown key in [{section_name}]")
    current = load_config(path) if path.exists() else Config()
    raw: dict[str, Any] = config_as_dict(current)
    raw[section_name][key] = _parse_string(path, dotted_key, keys[key], value)
    config = _build(path, raw)
    write_config(path, config)
    return config
