"""The packages import downward only: what may use what, read from every import statement.

    cli/  (the command line, `up`, the demo)          bench/ (benchmarks, soaks)
      pipelines/ (the code location)                     |
        assets/                                          |
          resources/ (Dagster resources)              serving/ (Ray Serve)
            driftloop/ (the core: no Dagster, no Ray, nothing above it)

Imports inside functions count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from driftloop.settings import PROJECT_ROOT

OURS = ("driftloop", "resources", "assets", "pipelines", "serving", "bench", "cli")
# What each package may import, of ours and of the two engines.
ALLOWED: dict[str, set[str]] = {
    "driftloop": set(),
    "resources": {"driftloop", "dagster"},
    "assets": {"driftloop", "resources", "dagster"},
    "pipelines": {"driftloop", "resources", "assets", "dagster"},
    "serving": {"driftloop", "ray"},
    "bench": {"driftloop", "serving", "ray"},
    "cli": {"driftloop", "resources", "assets", "pipelines", "serving", "bench", "dagster", "ray"},
}
WATCHED = {*OURS, "dagster", "ray"}


def imported_tops(path: Path) -> set[str]:
    """The top-level names `path` imports (absolute imports; ours use no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    # dagster_aws, dagster_postgres, ray's own subpackages: the same engine.
    return {"dagster" if top.startswith("dagster") else top for top in found}


def _modules() -> list[Path]:
    return sorted(p for package in OURS for p in (PROJECT_ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_imports_point_downward(path: Path) -> None:
    package = path.relative_to(PROJECT_ROOT).parts[0]
    upward = (imported_tops(path) & WATCHED) - ALLOWED[package] - {package}
    assert not upward, f"{package}/ may not import {sorted(upward)}"


def test_the_rules_see_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from pipelines.launch import run_training\n")
    assert imported_tops(module) == {"pipelines"}
