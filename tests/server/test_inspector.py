"""The MCP Inspector CLI, a client nobody here wrote, against the real server.

`.ci/run` installs @modelcontextprotocol/inspector@0.15.0 (the last release that runs on Node 20)
into `.ci/inspector`. Locally the tests skip when it is not installed; in CI (CI=true) a missing
inspector is a failure, so the check cannot silently stop running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.paths import HOOK_HOST_OFF, ROOT

LOCAL_INSPECTOR = ROOT / ".ci" / "inspector" / "node_modules" / ".bin" / "mcp-inspector"
MCP_JSON = ROOT / "agent_coord" / "claude_config" / ".mcp.json"
TOOLS = {"allocate_worktree", "release_worktree", "heartbeat", "status", "validate"}


def _inspector() -> Path:
    # conftest.py strips AGENT_COORD_* from the environment before this module is imported, so the
    # variable .ci/run exports is usually gone by now; .ci/run installs to LOCAL_INSPECTOR anyway.
    for candidate in (os.environ.get("AGENT_COORD_INSPECTOR"), str(LOCAL_INSPECTOR)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    reason = f"MCP Inspector not installed (AGENT_COORD_INSPECTOR unset, {LOCAL_INSPECTOR} missing); run .ci/run"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def inspector() -> Path:
    return _inspector()


def _base_env() -> dict[str, str]:
    """This environment without any agent-coord setting (conftest removed them; be explicit)."""
    return {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}


def _inspect(inspector: Path, args: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [str(inspector), "--cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=90
    )
    assert proc.returncode == 0, f"inspector failed ({proc.returncode}): {proc.stderr}"
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


def _check_status(result: dict[str, Any], repo: Path) -> None:
    # The inspector prints tool errors as results with isError (and exits 0): check both.
    assert not result.get("isError"), result
    status = result["structuredContent"]
    assert status["repo"] == str(repo.resolve())
    assert {"size", "free", "busy", "max"} <= set(status["pool"])
    assert '"pool"' in result["content"][0]["text"]


def test_inspector_lists_tools_and_calls_status(
    inspector: Path, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    # The server's settings go through the inspector's own `-e KEY=VALUE` flags.
    flags = [arg for key, value in env.items() if value for arg in ("-e", f"{key}={value}")]
    server = [*flags, sys.executable, "-m", "agent_coord.server"]

    listed = _inspect(inspector, [*server, "--method", "tools/list"], _base_env(), tmp_path)
    assert {tool["name"] for tool in listed["tools"]} == TOOLS
    called = _inspect(inspector, [*server, "--method", "tools/call", "--tool-name", "status"], _base_env(), tmp_path)
    _check_status(called, repo)


def test_inspector_driven_by_the_shipped_mcp_json(
    inspector: Path, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    # The shipped file, unchanged: it runs `agent-coord serve` from PATH, as Claude Code would. The
    # inspector hands its environment to the server, so the settings travel in the environment.
    before = MCP_JSON.read_bytes()
    run_env = {**_base_env(), **{k: v for k, v in env.items() if v}}
    run_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), run_env.get("PATH", "")])
    config = ["--config", str(MCP_JSON), "--server", "coord"]

    listed = _inspect(inspector, [*config, "--method", "tools/list"], run_env, tmp_path)
    assert {tool["name"] for tool in listed["tools"]} == TOOLS
    called = _inspect(inspector, [*config, "--method", "tools/call", "--tool-name", "status"], run_env, tmp_path)
    _check_status(called, repo)
    assert MCP_JSON.read_bytes() == before


def test_separate_inspector_calls_keep_one_identity(inspector: Path, env: dict[str, str], tmp_path: Path) -> None:
    # Each CLI call starts and stops its own server. With AGENT_COORD_AGENT_ID fixed, every call acts
    # as the same agent, so the allocation made by one call is released, as its owner's, by the next.
    flags = [arg for key, value in env.items() if value for arg in ("-e", f"{key}={value}")]
    server = [*flags, "-e", "AGENT_COORD_AGENT_ID=inspector-me", sys.executable, "-m", "agent_coord.server"]
    call = [*server, "--method", "tools/call", "--tool-name"]

    allocated = _inspect(
        inspector, [*call, "allocate_worktree", "--tool-arg", "branch=feat/cli"], _base_env(), tmp_path
    )
    assert not allocated.get("isError"), allocated
    assert allocated["structuredContent"]["agent_id"] == "inspector-me"
    worktree = allocated["structuredContent"]["worktree_id"]

    released = _inspect(inspector, [*call, "release_worktree", "--tool-arg", "branch=feat/cli"], _base_env(), tmp_path)
    assert not released.get("isError"), released
    assert (released["structuredContent"]["worktree_id"], released["structuredContent"]["state"]) == (worktree, "FREE")


def test_a_short_lived_client_is_told_how_its_allocation_ended(
    inspector: Path, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """The Inspector CLI starts a server per call: its allocation outlives its agent process and is
    reclaimed; the next call about it answers ALLOCATION_ENDED, from the event log, with the rescue ref."""
    flags = [arg for key, value in env.items() if value for arg in ("-e", f"{key}={value}")]
    server = [*flags, sys.executable, "-m", "agent_coord.server", "--method", "tools/call"]

    def call(tool: str, *args: str) -> dict[str, Any]:
        pairs = [a for arg in args for a in ("--tool-arg", arg)]
        return _inspect(inspector, [*server, "--tool-name", tool, *pairs], _base_env(), tmp_path)

    allocated = call("allocate_worktree", "branch=feat/short")
    assert not allocated.get("isError"), allocated
    path = Path(allocated["structuredContent"]["path"])
    (path / "unsaved.txt").write_text("work in progress\n")
    repaired = call("validate", "repair=true")  # the agent process (that inspector) is gone: reclaimed
    assert not repaired.get("isError"), repaired
    ended = call("release_worktree", "branch=feat/short")
    assert ended.get("isError"), ended
    text = ended["content"][0]["text"]
    assert text.startswith("ALLOCATION_ENDED: the allocation of branch 'feat/short'"), text
    # Its agent process is gone; or, when the validation a server starts with began that reclaim and
    # the server was ended mid-way, its server process is: either way the work is in the rescue ref.
    assert "reclaimed by agent " in text and " process " in text and " is gone" in text, text
    refs = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue/feat/short/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    # A reclaim ended mid-way and done again saves the same work twice: every ref is named.
    assert refs and f"saved to {refs[0]}" in text and all(ref in text for ref in refs), (refs, text)
