"""agent-coord as users install it: a wheel built from this checkout, installed (not editable) into a
fresh virtual environment. Built once per test session; the tests that need it share it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def agent_coord(self) -> Path:
        return self.bin / "agent-coord"


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def build_and_install(work: Path) -> Installed:
    # Built from a copy, so the checkout gets no build/ or egg-info of ours.
    src = work / "src"
    src.mkdir()
    shutil.copytree(ROOT / "agent_coord", src / "agent_coord", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(src)], work)
    (wheel,) = dist.glob("agent_coord-*.whl")
    venv = work / "venv"
    # The venv gets no pip of its own (ensurepip alone takes seconds); this pip installs into it, the
    # wheel and its declared dependencies, so a dependency missing from pyproject.toml fails here.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work)
    _run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet", str(wheel)], work
    )
    return Installed(wheel=wheel, venv=venv)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    yield build_and_install(tmp_path_factory.mktemp("installed"))
