"""The composition root: turns a data directory into running objects.

Only this module (and tests) import concrete store backends; everything else talks to
`store.api.MailStore` (DESIGN.md 1).
"""

from __future__ import annotations

from pathlib import Path

from mailward.store.api import MailStore


async def open_store(data_dir: Path) -> MailStore:
    """Open the embedded store of `data_dir` (creating its files if missing)."""
    from mailward.store.sqlite import SqliteStore

    return await SqliteStore.open(data_dir)


def serve(data_dir: Path) -> int:
    """Run every listener until SIGTERM/SIGINT; returns the process exit status."""
    raise NotImplementedError("serve is being built in net/ and app.py")
