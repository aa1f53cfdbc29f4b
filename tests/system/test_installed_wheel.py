"""agent-coord installed from its wheel, not editable, into a fresh virtual environment (as pip, pipx
and `uv tool install` install it): the wheel carries the Claude Code configuration, and install-claude,
the hooks and the server all run from that installation, outside this checkout."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.claude.test_hooks import create_payload, session_payload
from tests.conftest import git
from tests.installed import Installed
from tests.paths import HOOK_HOST_OFF

# Every test of the installed wheel on one worker: the wheel is built and installed once, not per worker.
pytestmark = pytest.mark.xdist_group("installed-wheel")

SKILLS = {"allocate-worktree", "release-worktree", "multi-agent-conflict", "parallel-agent-coordination"}
TOOLS = {"allocate_worktree", "release_worktree", "heartbeat", "status", "validate"}
EVENTS = {
    "WorktreeCreate": "worktree-create",
    "WorktreeRemove": "worktree-remove",
    "SessionStart": "session-start",
    "SessionEnd": "session-end",
}


def _system_path() -> str:
    """A PATH with git but without any agent-coord (not this test's venv, not the installed one)."""
    return os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not (Path(p) / "agent-coord").exists()
    )


def _env(env: dict[str, str], path: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    return {**base, **env, "PATH": path}


def _run(
    installed: Installed, args: list[str], env: dict[str, str], cwd: Path, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(installed.agent_coord), *args], input=stdin, capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_the_wheel_carries_the_claude_config_and_claims_one_name(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        top_level = wheel.read(next(n for n in names if n.endswith(".dist-info/top_level.txt"))).decode().split()
    config = "agent_coord/claude_config/"
    for name in (".mcp.json", "settings.json", "CLAUDE.md", *(f"skills/{s}/SKILL.md" for s in SKILLS)):
        assert config + name in names, name
    assert top_level == ["agent_coord"]
    assert {n.split("/")[0] for n in names} == {"agent_coord", installed.wheel.name.split("-py3")[0] + ".dist-info"}


def test_install_claude_from_the_wheel(installed: Installed, env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    run_env = _env(env, _system_path())
    where = subprocess.run(
        [str(installed.bin / "python"), "-c", "from agent_coord.claude.install import default_source as d; print(d())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=run_env,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(installed.venv) and "site-packages" in where

    before = sorted(p.name for p in repo.iterdir())
    dry = _run(installed, ["install-claude", "--dry-run"], run_env, repo)
    assert dry.returncode == 0 and dry.stdout.startswith("would change:"), dry.stderr
    assert f"{installed.agent_coord} hook worktree-create" in dry.stdout
    assert sorted(p.name for p in repo.iterdir()) == before, "a dry run writes nothing"

    first = _run(installed, ["install-claude"], run_env, repo)
    assert first.returncode == 0 and first.stdout.startswith("changed:"), first.stderr
    # Not on PATH: the absolute path of the installation that ran, for the server and every hook.
    mcp = json.loads((repo / ".mcp.json").read_text())
    assert mcp["mcpServers"]["coord"] == {"type": "stdio", "command": str(installed.agent_coord), "args": ["serve"]}
    settings = json.loads((repo / ".claude" / "settings.json").read_text())
    for event, sub in EVENTS.items():
        (command,) = [h["command"] for g in settings["hooks"][event] for h in g["hooks"]]
        assert command == f"{shlex.quote(str(installed.agent_coord))} hook {sub}"
    assert {p.parent.name for p in (repo / ".claude" / "skills").glob("*/SKILL.md")} == SKILLS
    again = _run(installed, ["install-claude"], run_env, repo)
    assert again.returncode == 0 and again.stdout.startswith("up to date"), again.stdout

    # Only its own scripts folder on PATH (an activated venv, uvx): still the absolute path.
    venv_project = tmp_path / "venv-project"
    venv_project.mkdir()
    activated = _env(env, f"{installed.bin}{os.pathsep}{_system_path()}")
    assert _run(installed, ["install-claude"], activated, venv_project).returncode == 0
    mcp = json.loads((venv_project / ".mcp.json").read_text())
    assert mcp["mcpServers"]["coord"]["command"] == str(installed.agent_coord)

    # Linked onto PATH (pipx, `uv tool install`): the portable bare name.
    links = tmp_path / "links"
    links.mkdir()
    (links / "agent-coord").symlink_to(installed.agent_coord)
    tool_project = tmp_path / "tool-project"
    tool_project.mkdir()
    linked = _env(env, f"{links}{os.pathsep}{_system_path()}")
    on_path = subprocess.run(
        [str(links / "agent-coord"), "install-claude"], cwd=tool_project, env=linked, capture_output=True, text=True
    )
    assert on_path.returncode == 0, on_path.stderr
    assert json.loads((tool_project / ".mcp.json").read_text())["mcpServers"]["coord"]["command"] == "agent-coord"


@pytest.mark.anyio
async def test_hooks_and_server_from_the_wheel(installed: Installed, env: dict[str, str], repo: Path) -> None:
    run_env = _env(env, _system_path())
    assert _run(installed, ["install-claude"], run_env, repo).returncode == 0

    created = _run(installed, ["hook", "worktree-create"], run_env, repo, json.dumps(create_payload(repo, "wheel")))
    assert created.returncode == 0, created.stderr
    slot = Path(created.stdout.strip())
    assert git(slot, "symbolic-ref", "--short", "HEAD").strip() == "worktree-wheel"
    assert (slot / ".claude" / "settings.json").is_symlink() and (slot / ".mcp.json").is_symlink()
    assert git(slot, "status", "--porcelain") == ""

    started = _run(
        installed, ["hook", "session-start"], run_env, slot, json.dumps(session_payload(slot, "SessionStart"))
    )
    assert started.returncode == 0 and "your worktree: wt-" in started.stdout, started.stderr

    params = StdioServerParameters(command=str(installed.agent_coord), args=["serve"], env=run_env, cwd=str(repo))
    async with Client(params) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == TOOLS
        status: Any = (await client.call_tool("status", {})).structured_content
        assert [w["branch"] for w in status["worktrees"] if w["state"] == "BUSY"] == ["worktree-wheel"]

    payload = session_payload(slot, "SessionEnd", reason="other")
    ended = _run(installed, ["hook", "session-end"], run_env, slot, json.dumps(payload))
    assert ended.returncode == 0 and "released" in ended.stderr, ended.stderr
