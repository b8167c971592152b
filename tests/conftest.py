"""Shared fixtures: a real mailward server on loopback, in a temp dir, on free ports.

`server` (function scope) has two accounts and one alias:

    alice@example.test   (ACCOUNTS password)
    bob@example.test
    sales@example.test -> alice@example.test

A test can change the server's config before it starts with
`@pytest.mark.server_config({"limits.message_size": "10000"})`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailward.testing.server import RunningServer, mail_server

ACCOUNTS = {
    "alice@example.test": "correct-horse-battery-staple-42",
    "bob@example.test": "Quartz-lantern-meadow-ferry-97",
}
ALIASES = {"sales@example.test": "alice@example.test"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "server_config(dict): config keys set before the `server` fixture starts"
    )


@pytest.fixture
def accounts() -> dict[str, str]:
    """Address -> password of the accounts the `server` fixture creates."""
    return dict(ACCOUNTS)


@pytest.fixture
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    marker = request.node.get_closest_marker("server_config")
    config: dict[str, str] = dict(marker.args[0]) if marker else {}
    with mail_server(tmp_path, users=ACCOUNTS, config=config) as srv:
        for alias, target in ALIASES.items():
            srv.cli("alias", "add", alias, target)
        yield srv
