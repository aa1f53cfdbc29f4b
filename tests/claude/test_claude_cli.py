"""The real Claude Code CLI against agent-coord installed from its wheel, in a throwaway HOME and project.

`.ci/run` installs a pinned `@anthropic-ai/claude-code` into `.ci/claude` (AGENT_COORD_CLAUDE names
another binary). There is no API key: `claude -p` stops at "Not logged in", but only after the
WorktreeCreate, SessionStart and SessionEnd hooks ran, which is what these tests look at. Locally they
skip when the CLI is not installed; in CI (CI=true) a missing CLI is a failure.

Nothing of the configuration is committed in the project: install-claude writes it, and the slot a
`claude --worktree` session gets has it only because the WorktreeCreate hook linked it in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_coord.claude.hook_host import running_hosts
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Action, Event, Slot, SlotState
from tests.conftest import git, make_repo
from tests.installed import Installed
from tests.paths import ROOT

# Every test of the installed wheel on one worker: the wheel is built and installed once, not per worker.
pytestmark = pytest.mark.xdist_group("installed-wheel")

LOCAL_CLAUDE = ROOT / ".ci" / "claude" / "node_modules" / ".bin" / "claude"
RUN_TIMEOUT_S = 120.0
SESSION_EVENTS = ("SessionStart", "SessionEnd")


def _claude() -> Path:
    for candidate in (os.environ.get("AGENT_COORD_CLAUDE"), str(LOCAL_CLAUDE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    reason = (
        f"Claude Code CLI not installed (AGENT_COORD_CLAUDE unset, {LOCAL_CLAUDE} missing); "
        "`bash .ci/run` installs the pinned version with npm"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Setup:
    claude: Path
    installed: Installed
    project: Path
    home: Path
    env: dict[str, str]  # what `claude` (and so our server and hooks) runs with
    payloads: Path  # every SessionStart/SessionEnd payload, as Claude Code sent it

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.claude), *args],
            cwd=cwd or self.project,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )

    def trust(self) -> None:
        """Accept the workspace trust dialog the way Claude Code records it, in $HOME/.claude.json."""
        state = self.home / ".claude.json"
        data: dict[str, Any] = json.loads(state.read_text()) if state.is_file() else {}
        data.setdefault("projects", {}).setdefault(str(self.project), {})["hasTrustDialogAccepted"] = True
        state.write_text(json.dumps(data, indent=2))


@pytest.fixture
def setup(installed: Installed, tmp_path: Path) -> Iterator[Setup]:
    claude = _claude()
    home = tmp_path / "home"
    home.mkdir()
    project = make_repo(tmp_path, "proj")
    payloads = tmp_path / "payloads.jsonl"
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if not (Path(p) / "agent-coord").exists()
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENT_COORD_", "ANTHROPIC_", "CLAUDE"))}
    env.update(
        HOME=str(home),
        PATH=path,  # no agent-coord on it: .mcp.json and the hooks name the installed one by its path
        DISABLE_AUTOUPDATER="1",
        MCP_TIMEOUT="60000",  # how long Claude Code waits for our server to connect: a loaded machine
        AGENT_COORD_DB=str(tmp_path / "state" / "coord.db"),
        AGENT_COORD_POOL_ROOT=str(tmp_path / "pool"),
        AGENT_COORD_MANICTIME_DB="",
        AGENT_COORD_HOOK_HOST_IDLE_S="0",  # on in test_a_second_session_is_answered_by_the_hook_host
    )
    installer = subprocess.run(
        [str(installed.agent_coord), "install-claude"], cwd=project, env=env, capture_output=True, text=True
    )
    assert installer.returncode == 0, installer.stderr
    # The owner's own hooks, uncommitted too: they record each session payload Claude Code sends.
    record = f"tee -a {shlex.quote(str(payloads))} >/dev/null"
    local = {"hooks": {e: [{"hooks": [{"type": "command", "command": record}]}] for e in SESSION_EVENTS}}
    (project / ".claude" / "settings.local.json").write_text(json.dumps(local))
    assert git(project, "status", "--porcelain", "--untracked-files=all").count("??") >= 4, "nothing is committed"
    yield Setup(claude, installed, project, home, env, payloads)
    for line in git(project, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree ") and Path(line[9:]) != project:
            subprocess.run(["git", "-C", str(project), "worktree", "remove", "--force", line[9:]], check=False)


def _store(db: str) -> tuple[list[Slot], list[Event]]:
    async def read() -> tuple[list[Slot], list[Event]]:
        store = await Store.open(Path(db))
        try:
            return await store.slots(), await store.events()
        finally:
            await store.close()

    return anyio.run(read)


def _payloads(path: Path) -> list[dict[str, Any]]:
    text, found, decoder, at = path.read_text() if path.is_file() else "", [], json.JSONDecoder(), 0
    while (at := len(text) - len(text[at:].lstrip())) < len(text):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
    return found


def test_mcp_list_shows_coord_connected_once_the_project_is_trusted(setup: Setup) -> None:
    command = f"{setup.installed.agent_coord} serve"
    untrusted = setup.run("mcp", "list")
    assert f"coord: {command} - ⏸ Pending approval" in untrusted.stdout, untrusted.stdout + untrusted.stderr

    setup.trust()
    listed = setup.run("mcp", "list")
    assert f"coord: {command} - ✔ Connected" in listed.stdout, listed.stdout + listed.stderr

    got = setup.run("mcp", "get", "coord")
    assert got.returncode == 0, got.stderr
    assert "Status: ✔ Connected" in got.stdout
    assert f"Command: {setup.installed.agent_coord}\n" in got.stdout
    assert re.search(r"^\s*Args: serve$", got.stdout, re.MULTILINE), got.stdout


def test_claude_worktree_session_gets_a_slot_with_our_setup_and_gives_it_back(setup: Setup, tmp_path: Path) -> None:
    setup.trust()
    debug = tmp_path / "claude-debug.log"
    proc = setup.run("--worktree", "e2e", "-p", "hi", "--debug-file", str(debug))
    ended = time.monotonic()
    log = debug.read_text() if debug.is_file() else ""
    assert "Not logged in" in proc.stdout, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{log[-3000:]}"

    # Our WorktreeCreate hook made the worktree: a pool slot on branch worktree-e2e.
    created = re.search(r"Created hook-based worktree at: (\S+)", log)
    assert created, log[-3000:]
    slot = Path(created.group(1))
    assert slot.parent == tmp_path / "pool", slot
    assert f"WorktreeCreate [{setup.installed.agent_coord} hook worktree-create] completed with status 0" in log
    slots, events = _store(setup.env["AGENT_COORD_DB"])
    (held,) = [s for s in slots if Path(s.path) == slot]
    (allocated,) = [e for e in events if e.action == Action.ALLOCATE and e.outcome == "ok"]
    assert (allocated.worktree_id, allocated.branch) == (held.id, "worktree-e2e")
    assert git(setup.project, "rev-parse", "--verify", "--quiet", "refs/heads/worktree-e2e")
    # With the project's setup, uncommitted as it is, and nothing for git to see.
    for rel in (".mcp.json", ".claude/settings.json", ".claude/settings.local.json"):
        assert (slot / rel).is_symlink() and (slot / rel).resolve() == (setup.project / rel).resolve(), rel
    assert (slot / ".claude" / "skills" / "allocate-worktree" / "SKILL.md").is_file()
    assert git(slot, "status", "--porcelain", "--untracked-files=all") == ""
    # The session starts our server from the project's .mcp.json (whether it finishes connecting
    # before a session without login ends depends on the machine's speed; `mcp list` checks that).
    assert 'MCP server "coord": Starting connection' in log, log[-3000:]

    # SessionStart and SessionEnd ran there, from the slot's (linked) settings: ours and the owner's.
    for event, ours in (("SessionStart:startup", "session-start"), (r"SessionEnd:\w+", "session-end")):
        ran = rf"{event} \[{re.escape(str(setup.installed.agent_coord))} hook {ours}\] \w+ with status 0"
        assert re.search(ran, log), f"{event} hook did not run:\n{log[-3000:]}"
    assert f"your worktree: {held.id} at {slot} (branch worktree-e2e)" in log, "the context SessionStart gave"
    payloads = _payloads(setup.payloads)
    assert [p["hook_event_name"] for p in payloads] == list(SESSION_EVENTS), payloads
    assert {p["cwd"] for p in payloads} == {str(slot)}
    assert len({p["session_id"] for p in payloads}) == 1
    assert payloads[0]["source"] == "startup" and "reason" in payloads[1]

    # Given back once claude is gone, with no other agent-coord process started to notice.
    deadline = ended + 120.0
    while True:
        slots, events = _store(setup.env["AGENT_COORD_DB"])
        (state,) = [s.state for s in slots if Path(s.path) == slot]
        if state == SlotState.FREE or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state == SlotState.FREE, f"slot still {state} 120 s after claude exited"
    given_back = [e for e in events if e.worktree_id == held.id and e.action in (Action.RELEASE, Action.RECLAIM)]
    assert given_back and given_back[-1].outcome in ("ok", "freed"), given_back


def test_a_second_session_is_answered_by_the_hook_host(setup: Setup, tmp_path: Path) -> None:
    """The first `claude --worktree` works in-process (no server runs before its session starts) and
    leaves the hook host behind; the next session's WorktreeCreate is answered by it."""
    setup.trust()
    run_dir = Path(tempfile.mkdtemp(prefix="ac-"))  # private and short, as XDG_RUNTIME_DIR is
    setup.env.update(AGENT_COORD_HOOK_HOST_IDLE_S="120", XDG_RUNTIME_DIR=str(run_dir))
    sockets = run_dir / "agent-coord"
    try:
        first = setup.run("--worktree", "first", "-p", "hi")
        assert "Not logged in" in first.stdout, first.stdout + first.stderr
        deadline = time.monotonic() + 60
        while not list(sockets.glob("host-*.sock")):
            assert time.monotonic() < deadline, "no hook host started"
            time.sleep(0.05)
        debug = tmp_path / "second.log"
        second = setup.run("--worktree", "second", "-p", "hi", "--debug-file", str(debug))
        assert "Not logged in" in second.stdout, second.stdout + second.stderr
        log = debug.read_text()
        assert f"WorktreeCreate [{setup.installed.agent_coord} hook worktree-create] completed with status 0" in log
        created = re.search(r"Created hook-based worktree at: (\S+)", log)
        assert created and Path(created.group(1)).parent == tmp_path / "pool", log[-3000:]
        answered = "".join(p.read_text() for p in sockets.glob("host-*.log"))
        assert "answered worktree-create for process" in answered, answered
        _, events = _store(setup.env["AGENT_COORD_DB"])
        allocated = {e.branch for e in events if e.action == Action.ALLOCATE and e.outcome == "ok"}
        assert allocated == {"worktree-first", "worktree-second"}
    finally:
        for proc in running_hosts(str(run_dir)):
            proc.kill()
        shutil.rmtree(run_dir, ignore_errors=True)
