"""The import rules of DESIGN.md 1, checked on the source (AST, nothing is imported):

- `mailward.proto` and `mailward.message` import only the standard library and each
  other (they are sans-I/O and must stay portable and fuzzable);
- only `mailward.app` (the composition root) and tests import `mailward.store.sqlite`;
- only `mailward.crypto` imports crypto libraries (cryptography, argon2, nacl, dkim).

Every import counts: at module level, inside functions, under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
CRYPTO_LIBRARIES = frozenset({"cryptography", "argon2", "nacl", "dkim"})


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement in `source` may bring in: for
    `from a.b import c` both `a.b` and `a.b.c` (c may be a submodule)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target
            for alias in node.names:
                if alias.name != "*":
                    yield f"{target}.{alias.name}"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def is_core(name: str) -> bool:
    return within(name, "mailward.proto") or within(name, "mailward.message")


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Rule breaks in `modules` (name -> (source, is_package)), as readable lines."""
    found = []
    for module, (source, is_package) in sorted(modules.items()):
        for name in imported_names(source, module, is_package):
            top = name.split(".")[0]
            if is_core(module) and not (top in STDLIB or is_core(name) or name == "mailward"):
                # ("mailward" alone is the package's own __init__, e.g. from
                # `from mailward import proto`, which also yields "mailward.proto".)
                found.append(f"{module} imports {name} (only stdlib, proto, message)")
            if (
                within(name, "mailward.store.sqlite")
                and not within(module, "mailward.app")
                and not within(module, "mailward.store.sqlite")
            ):
                found.append(f"{module} imports {name} (only mailward.app may)")
            if top in CRYPTO_LIBRARIES and not within(module, "mailward.crypto"):
                found.append(f"{module} imports {name} (only mailward.crypto may)")
    return sorted(set(found))


def source_modules() -> dict[str, tuple[str, bool]]:
    return {
        module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in (SRC / "mailward").rglob("*.py")
    }


def test_the_tree_keeps_the_layer_rules() -> None:
    modules = source_modules()
    # The scan really sees the package (a wrong SRC would pass vacuously).
    assert {"mailward", "mailward.app", "mailward.proto", "mailward.store.api"} <= set(modules)
    assert violations(modules) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("mailward.proto.smtp", "import dns.resolver", "imports dns.resolver"),
        ("mailward.proto.smtp", "from mailward.store import api", "imports mailward.store"),
        ("mailward.message.mime", "from ..net import listener", "imports mailward.net"),
        ("mailward.message.mime", "def f():\n    import rich\n", "imports rich"),
        ("mailward.net.smtp_server", "from mailward.store import sqlite", "only mailward.app"),
        ("mailward.pipeline.run", "import mailward.store.sqlite", "only mailward.app"),
        ("mailward.store.api", "from .sqlite import SqliteStore", "only mailward.app"),
        ("mailward.net.listener", "import cryptography.x509", "only mailward.crypto"),
        ("mailward.cli.main", "from argon2 import PasswordHasher", "only mailward.crypto"),
        ("mailward.pipeline.dkim", "import dkim", "only mailward.crypto"),
        ("mailward.app", "import nacl.signing", "only mailward.crypto"),
    ],
)
def test_the_checker_catches(module: str, source: str, expected: str) -> None:
    found = violations({module: (source, False)})
    assert any(expected in line for line in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mailward.proto.smtp", "import re\nfrom . import replies\nfrom .smtp_events import X"),
        ("mailward.message.mime", "from mailward.proto.replies import Reply\nimport email"),
        ("mailward.app", "from mailward.store.sqlite import SqliteStore"),
        ("mailward.store.sqlite.writer", "from mailward.store.sqlite import schema"),
        ("mailward.crypto.tls", "from cryptography import x509\nimport argon2"),
        ("mailward.pipeline.run", "from mailward.store.api import MailStore"),
    ],
)
def test_the_checker_allows(module: str, source: str) -> None:
    assert violations({module: (source, False)}) == []
