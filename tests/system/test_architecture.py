"""The import arrows of docs/architecture.md, checked by parsing every module's imports (no import is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import ROOT

PACKAGE = ROOT / "agent_coord"

# (importer, imported): a module under the first may not import anything under the second.
FORBIDDEN = [
    *(("agent_coord.engine", outer) for outer in ("agent_coord.server", "agent_coord.cli", "agent_coord.dashboard")),
    *(("agent_coord.engine", outer) for outer in ("agent_coord.demo", "agent_coord.claude", "agent_coord.pool_file")),
    ("agent_coord.engine", "mcp"),
    ("agent_coord.engine", "mcp_types"),
    *(("agent_coord.server", outer) for outer in ("agent_coord.cli", "agent_coord.dashboard", "agent_coord.demo")),
    ("agent_coord.server", "agent_coord.claude"),
    ("agent_coord.cli", "agent_coord.server.resources"),
    ("agent_coord.cli", "agent_coord.server.tools"),
    *(("agent_coord.pool_file", outer) for outer in ("agent_coord.server", "agent_coord.cli", "mcp")),
    *(("agent_coord.dashboard", outer) for outer in ("agent_coord.server", "agent_coord.cli", "mcp")),
    *(("agent_coord.claude", outer) for outer in ("agent_coord.server", "agent_coord.cli", "mcp")),
    *(("agent_coord.platform", inner) for inner in ("agent_coord.engine", "agent_coord.config")),
    # The two lower layers know no use case; the store knows no git, git no store.
    *(("agent_coord.engine.store", f"agent_coord.engine.{up}") for up in ("git", "allocate", "release", "reclaim")),
    *(("agent_coord.engine.store", f"agent_coord.engine.{up}") for up in ("validate", "coordinator", "context")),
    *(("agent_coord.engine.git", f"agent_coord.engine.{up}") for up in ("store", "allocate", "release", "reclaim")),
    *(("agent_coord.engine.git", f"agent_coord.engine.{up}") for up in ("validate", "coordinator", "context")),
    # Use cases call down, never up: allocate > release > reclaim; validate > reclaim; only the
    # coordinator composes them all.
    *(("agent_coord.engine.reclaim", f"agent_coord.engine.{up}") for up in ("allocate", "release", "validate")),
    *(("agent_coord.engine.release", f"agent_coord.engine.{up}") for up in ("allocate", "validate")),
    *(("agent_coord.engine.validate", f"agent_coord.engine.{up}") for up in ("allocate", "release")),
    *(
        (f"agent_coord.engine.{use_case}", "agent_coord.engine.coordinator")
        for use_case in ("allocate", "release", "reclaim", "validate", "liveness", "contention", "observe")
    ),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=[f"{a}-x->{b}" for a, b in FORBIDDEN])
def test_no_forbidden_arrow(importer: str, imported: str) -> None:
    offenders = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if under(module, importer)
        for name in names
        if under(name, imported)
    )
    assert offenders == []


def test_the_rules_see_the_package() -> None:
    assert "agent_coord.engine.allocate.pool" in MODULES
    assert any(under(name, "agent_coord.engine.store") for name in MODULES["agent_coord.engine.allocate.pool"])


def test_every_setting_is_in_the_readme() -> None:
    from agent_coord.config import Settings

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"AGENT_COORD_{name.upper()}" not in readme]
    assert missing == []


def test_nothing_refers_to_a_file_outside_the_repository() -> None:
    root = PACKAGE.parent
    texts = [*root.glob("*.md"), *(root / "docs").glob("*.md"), *PACKAGE.rglob("*.py"), *(root / "tests").rglob("*.py")]
    offenders = [
        str(path.relative_to(root))
        for path in texts
        for needle in ("DESIGN.md", "../shared")
        if needle in path.read_text(encoding="utf-8") and path.name != "test_architecture.py"
    ]
    assert offenders == []
