"""The `[abuse]` section: defaults, and the ranges that keep every delay bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailward.config.load import ConfigError, load_config, set_key
from mailward.config.schema import AbuseConfig


def test_defaults_are_the_documented_ones() -> None:
    a = AbuseConfig()
    assert (a.connections_per_net, a.connection_rate, a.greeting_delay) == (100, 120, 1.0)
    assert (a.tarpit_step, a.tarpit_max, a.hello_timeout) == (0.5, 5.0, 60.0)
    assert (a.probe_window, a.probe_slowdown, a.probe_block, a.block_seconds) == (
        600.0,
        5,
        20,
        600.0,
    )
    assert (a.min_data_rate, a.data_rate_grace, a.auth_failures_per_net) == (256, 10.0, 50)
    assert (a.messages_per_day, a.new_recipients_per_day) == (1000, 200)
    assert (a.greylisting, a.greylist_delay, a.greylist_expiry) == (False, 60.0, 86400.0)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("abuse.greeting_delay", "31"),
        ("abuse.greeting_delay", "-1"),
        ("abuse.tarpit_max", "61"),
        ("abuse.tarpit_step", "61"),
        ("abuse.connections_per_net", "0"),
        ("abuse.hello_timeout", "0"),
        ("abuse.probe_window", "0"),
        ("abuse.greylist_delay", "0"),
        ("abuse.min_data_rate", "-5"),
        ("abuse.greylisting", "maybe"),
    ],
)
def test_out_of_range_values_are_refused(tmp_path: Path, key: str, value: str) -> None:
    path = tmp_path / "mailward.toml"
    with pytest.raises(ConfigError) as error:
        set_key(path, key, value)
    assert error.value.key == key


def test_values_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mailward.toml"
    set_key(path, "abuse.greeting_delay", "0")
    set_key(path, "abuse.greylisting", "true")
    set_key(path, "abuse.connection_rate", "0")
    abuse = load_config(path).abuse
    assert (abuse.greeting_delay, abuse.greylisting, abuse.connection_rate) == (0.0, True, 0)
