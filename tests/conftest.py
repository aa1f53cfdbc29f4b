"""Shared fixtures: real git repositories in temporary directories, real databases, real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent_coord.config import Settings

from .installed import installed  # noqa: F401  (a session fixture: the wheel, built and installed once)
from .paths import HOOK_HOST_OFF
from .pg_support import pg_cluster, pg_url, store_target  # noqa: F401  (a real PostgreSQL: see pg_support.py)

# Commits made by tests need an identity, whatever the machine's git config says.
os.environ.update(
    {
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "Test Committer",
        "GIT_COMMITTER_EMAIL": "committer@example.com",
    }
)
# Keep tests away from the developer's real state and ManicTime.
os.environ.pop("LOCALAPPDATA", None)
# Run from inside a Claude Code session, hooks would start exit watchers for that session's process.
os.environ.pop("CLAUDE_PID", None)
for key in list(os.environ):
    if key.startswith("AGENT_COORD_") and key not in ("AGENT_COORD_INSPECTOR", "AGENT_COORD_CLAUDE"):
        del os.environ[key]
os.environ[HOOK_HOST_OFF] = "0"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True).stdout


def make_repo(root: Path, name: str = "repo") -> Path:
    repo = root / name
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    (repo / ".gitignore").write_text(".env\nbuild/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path)


@pytest.fixture
def env(tmp_path: Path, repo: Path) -> dict[str, str]:
    """The AGENT_COORD_* environment of one test deployment (servers started by tests get it)."""
    return {
        "AGENT_COORD_DB": str(tmp_path / "state" / "coord.db"),
        "AGENT_COORD_REPO": str(repo),
        "AGENT_COORD_POOL_ROOT": str(tmp_path / "pool"),
        "AGENT_COORD_MANICTIME_DB": "",
    }


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture
def make_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return Settings(**overrides)

    return make


@pytest.fixture
async def coord(settings: Settings) -> AsyncIterator[Any]:
    from agent_coord.engine.coordinator import Coordinator

    async with Coordinator.open(settings, register=True, agent_id="agent-test") as c:
        yield c


def server_params(env: dict[str, str], **extra: str) -> Any:
    from mcp.client.stdio import StdioServerParameters

    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    full.update(env)
    full.update(extra)
    return StdioServerParameters(command=sys.executable, args=["-m", "agent_coord.server"], env=full)


async def run_agents(
    env: dict[str, str], n: int, script: Callable[[Any, int], Any], *, prefix: str = "racer", **extra: str
) -> list[Any]:
    """Start n real stdio servers at once (one task owns each client for its whole life), release them
    together when all are up, and return what `script(client, i)` returned for each."""
    import anyio
    from mcp import Client

    results: list[Any] = [None] * n
    ready = 0
    all_ready = anyio.Event()

    async def agent(i: int) -> None:
        nonlocal ready
        params = server_params(env, AGENT_COORD_AGENT_ID=f"{prefix}-{i}", **extra)
        async with Client(params, mode="legacy") as client:
            ready += 1
            if ready == n:
                all_ready.set()
            await all_ready.wait()
            results[i] = await script(client, i)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(agent, i)
    return results
