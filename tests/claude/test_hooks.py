"""Claude Code's hooks through the real `agent-coord` console script, fed the payloads Claude Code sends.

Every hook here is a subprocess of the test process, as it would be of Claude Code: the test process
plays Claude Code (the agent process a hook is attributed to).
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_coord.claude.hooks import (
    SessionEndInput,
    WorktreeCreateInput,
    branch_for,
    hook_agent_id,
    parse_input,
    sanitize_name,
)
from agent_coord.config import Settings
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Agent, Slot, SlotState
from tests.conftest import git
from tests.paths import HOOK_HOST_OFF

AGENT_COORD = Path(sys.executable).parent / "agent-coord"
SESSION = "0123abcd-4567-89ef-aaaa-bbbbccccdddd"
OTHER_SESSION = "fedcba98-7654-3210-ffff-eeeeddddcccc"
AGENT = "claude-0123abcd-456"


def run(
    env: dict[str, str],
    args: list[str],
    stdin: str = "",
    *,
    cwd: Path | None = None,
    extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    full.update(env)
    full.update(extra or {})
    return subprocess.run(
        [str(AGENT_COORD), *args], input=stdin, capture_output=True, text=True, env=full, cwd=cwd, timeout=60
    )


def hook(
    env: dict[str, str], event: str, payload: dict[str, Any] | str, **extra: str
) -> subprocess.CompletedProcess[str]:
    # A hook that hangs fails on run()'s timeout; how fast hooks start is measured by bench/hooks.py,
    # not asserted against the wall clock of a shared machine.
    proc = run(env, ["hook", event], payload if isinstance(payload, str) else json.dumps(payload), extra=extra)
    return proc


def create_payload(repo: Path, name: str, session: str = SESSION, **more: Any) -> dict[str, Any]:
    """The shape the workflow runtime sends (`name`), plus whatever a newer release may add."""
    return {
        "session_id": session,
        "transcript_path": f"/home/u/.claude/projects/x/{session}.jsonl",
        "cwd": str(repo),
        "hook_event_name": "WorktreeCreate",
        "name": name,
        **more,
    }


def documented_payload(repo: Path, name: str, session: str = SESSION) -> dict[str, Any]:
    """The shape the hooks reference documents (`worktree_name`, `base_path`, `source_ref`)."""
    return {
        "session_id": session,
        "transcript_path": f"/home/u/.claude/projects/x/{session}.jsonl",
        "cwd": str(repo),
        "hook_event_name": "WorktreeCreate",
        "worktree_name": name,
        "source_ref": "main",
        "base_path": str(repo / ".claude" / "worktrees"),
    }


def session_payload(repo: Path, event: str, session: str = SESSION, **more: Any) -> dict[str, Any]:
    return {"session_id": session, "transcript_path": "/t.jsonl", "cwd": str(repo), "hook_event_name": event, **more}


def created_path(proc: subprocess.CompletedProcess[str]) -> Path:
    """The slot a successful create printed: the only line on stdout, an absolute existing directory."""
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, f"stdout must hold the path and nothing else: {proc.stdout!r}"
    path = Path(lines[-1])
    assert path.is_absolute() and path.is_dir(), path
    return path


def one_line_refusal(proc: subprocess.CompletedProcess[str], code: str) -> str:
    assert proc.returncode != 0, proc.stdout
    assert proc.stdout == "", "nothing on stdout when refusing"
    reason = proc.stderr.rstrip("\n")
    assert reason and "\n" not in reason, f"one line on stderr: {proc.stderr!r}"
    assert reason.startswith(f"{code}:"), reason
    return reason


def state(settings: Settings) -> tuple[dict[str, Slot], dict[str, Agent]]:
    async def read() -> tuple[dict[str, Slot], dict[str, Agent]]:
        store = await Store.open(settings.db)
        try:
            return {s.path: s for s in await store.slots()}, {a.id: a for a in await store.agents()}
        finally:
            await store.close()

    return anyio.run(read)


def assert_worktree_on(repo: Path, path: Path, branch: str) -> None:
    assert git(path, "symbolic-ref", "--short", "HEAD").strip() == branch
    listed = git(repo, "worktree", "list", "--porcelain")
    assert f"worktree {path}\n" in listed
    assert Path(git(path, "rev-parse", "--path-format=absolute", "--git-common-dir").strip()) == repo / ".git"


# ---- worktree-create ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["name", "documented"])
def test_create_allocates_and_prints_only_the_path(
    shape: str, env: dict[str, str], repo: Path, settings: Settings
) -> None:
    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".worktreeinclude").write_text(".env\n")
    if shape == "name":
        payload = create_payload(repo, "feature-auth", isolation_type="worktree", future={"nested": [1, 2]})
    else:
        payload = documented_payload(repo, "feature-auth")
    # A set-up command that talks on stdout must not reach Claude Code's stdout.
    setup = json.dumps(["sh -c 'echo installing; echo done > .setup-ran'"])

    path = created_path(hook(env, "worktree-create", payload, AGENT_COORD_POST_CREATE=setup))

    assert path.parent == Path(env["AGENT_COORD_POOL_ROOT"]).resolve()
    assert_worktree_on(repo, path, "worktree-feature-auth")
    assert (path / ".env").read_text() == "SECRET=1\n", ".worktreeinclude files are copied into a new slot"
    assert (path / ".setup-ran").is_file()
    slots, agents = state(settings)
    slot = slots[str(path)]
    assert slot.state == SlotState.BUSY and slot.owner == AGENT
    assert slot.task is not None and "feature-auth" in slot.task
    # Registered as Claude Code (the hook's parent, here the test process), and not "disconnected"
    # although the hook process has exited: the session goes on.
    assert agents[AGENT].pid == os.getpid()
    assert agents[AGENT].status == "active"
    assert agents[AGENT].lease_expires_at - time.time() > 86400, "no server renews a hook agent's lease"


def test_create_twice_in_a_session_returns_the_same_slot(env: dict[str, str], repo: Path) -> None:
    first = created_path(hook(env, "worktree-create", create_payload(repo, "again")))
    second = created_path(hook(env, "worktree-create", create_payload(repo, "again")))
    assert first == second


def test_parallel_subagents_get_a_slot_each(env: dict[str, str], repo: Path, settings: Settings) -> None:
    # Subagents with isolation: "worktree" start together: their hooks race in one session.
    full = {**{k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}, **env}
    procs = [
        subprocess.Popen(
            [str(AGENT_COORD), "hook", "worktree-create"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(json.dumps(create_payload(repo, f"agent-{i}")), timeout=60) for i, p in enumerate(procs)]
    paths = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        paths.append(Path(out.splitlines()[-1]))
    assert len(set(paths)) == 4
    for i, path in enumerate(paths):
        assert_worktree_on(repo, path, f"worktree-agent-{i}")
    assert {s.owner for s in state(settings)[0].values()} == {AGENT}


def test_a_subagents_slot_in_setup_survives_the_sessions_other_hooks_and_validation(
    env: dict[str, str], repo: Path, settings: Settings, tmp_path: Path
) -> None:
    """One session's hooks are one agent in many processes. While subagent A's slot is being set up,
    B's hook registers the agent and exits, then C's hook registers it again and a validation runs:
    the agent's last server (B) is gone, but A's process is not, so A's allocation is left to finish
    (it was rolled back and its slot handed to C while A's setup still ran in it)."""
    hold = tmp_path / "hold.py"
    hold.write_text(
        "import os, pathlib, time\n"
        f"here = pathlib.Path({str(tmp_path)!r})\n"
        "if any(here.glob('setup-*')):\n"
        "    raise SystemExit(0)  # only the first setup waits\n"
        "(here / f'setup-{os.getpid()}').touch()\n"
        "pathlib.Path('setup.txt').write_text('written by setup')\n"
        "while not (here / 'go').exists():\n"
        "    time.sleep(0.02)\n"
    )
    env = env | {"AGENT_COORD_POST_CREATE": json.dumps([shlex.join([sys.executable, str(hold)])])}
    full = {**{k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}, **env}
    payload = tmp_path / "a.json"
    payload.write_text(json.dumps(create_payload(repo, "a")))
    with payload.open() as stdin:
        a = subprocess.Popen(
            [str(AGENT_COORD), "hook", "worktree-create"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full,
        )
    try:
        wait_for_path(tmp_path, "setup-*")
        b = created_path(hook(env, "worktree-create", create_payload(repo, "b")))
        c = created_path(hook(env, "worktree-create", create_payload(repo, "c")))
        assert run(env, ["validate", "--repair"]).returncode == 0
        slots, _ = state(settings)
        (in_setup,) = [s for s in slots.values() if s.branch == "worktree-a"]
        assert in_setup.state == SlotState.ALLOCATING and Path(in_setup.path) not in (b, c)
        # What kept it: A's own process recorded as the one doing it (not B or C, which are gone).
        with sqlite3.connect(settings.db) as conn:
            (worker,) = conn.execute("SELECT pid FROM slot_workers WHERE slot_id = ?", (in_setup.id,)).fetchall()
        assert worker[0] == a.pid
    finally:
        (tmp_path / "go").touch()
    out, err = a.communicate(timeout=120)
    path = created_path(subprocess.CompletedProcess(a.args, a.returncode, out, err))
    assert (path / "setup.txt").read_text() == "written by setup"
    slots, _ = state(settings)
    assert slots[str(path)].state == SlotState.BUSY and slots[str(path)].branch == "worktree-a"
    assert not [e for e in events(settings) if e.action == "reclaim"]


def wait_for_path(where: Path, pattern: str) -> None:
    deadline = time.monotonic() + 120
    while not any(where.glob(pattern)):
        assert time.monotonic() < deadline, f"nothing matched {pattern} in {where}"
        time.sleep(0.02)


def events(settings: Settings) -> list[Any]:
    async def read() -> list[Any]:
        store = await Store.open(settings.db)
        try:
            return await store.events()
        finally:
            await store.close()

    return anyio.run(read)


def test_name_is_sanitized_and_prefix_is_configurable(env: dict[str, str], repo: Path) -> None:
    # Without AGENT_COORD_REPO the session's cwd is the repository, and the configured pool root
    # still applies to it (as it does for the MCP server started in that directory).
    proc = hook(
        env,
        "worktree-create",
        create_payload(repo, "Fix: login bug!"),
        AGENT_COORD_BRANCH_PREFIX="claude/",
        AGENT_COORD_REPO="",
    )
    path = created_path(proc)
    assert_worktree_on(repo, path, "claude/Fix-login-bug")
    assert path.parent == Path(env["AGENT_COORD_POOL_ROOT"]).resolve()


def test_exhausted_pool_refuses_in_one_line(env: dict[str, str], repo: Path) -> None:
    created_path(hook(env, "worktree-create", create_payload(repo, "one"), AGENT_COORD_POOL_MAX="1"))
    proc = hook(env, "worktree-create", create_payload(repo, "two", OTHER_SESSION), AGENT_COORD_POOL_MAX="1")
    reason = one_line_refusal(proc, "POOL_EXHAUSTED")
    assert str(repo) in reason


def test_refusals_name_their_code(env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    git(repo, "branch", "worktree-taken")
    git(repo, "switch", "-q", "worktree-taken")
    one_line_refusal(hook(env, "worktree-create", create_payload(repo, "taken")), "BRANCH_CONFLICT")
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    one_line_refusal(hook(env, "worktree-create", create_payload(elsewhere, "x")), "NOT_A_REPOSITORY")
    one_line_refusal(hook(env, "worktree-create", create_payload(repo, "../..")), "INVALID_BRANCH")
    one_line_refusal(hook(env, "worktree-create", {"cwd": str(repo), "session_id": SESSION}), "INVALID_ARGUMENT")
    assert not Path(env["AGENT_COORD_POOL_ROOT"]).exists() or not any(Path(env["AGENT_COORD_POOL_ROOT"]).iterdir())


@pytest.mark.parametrize(
    ("event", "bad"),
    [
        ("worktree-create", '{"name": "x",'),
        ("worktree-create", '["name"]'),
        ("worktree-remove", '{"worktree_path": '),
        ("worktree-remove", "{}"),  # worktree_path is required
        ("session-start", "not json"),
        ("session-end", '{"reason": '),
    ],
)
def test_malformed_input_is_refused_in_one_line(env: dict[str, str], event: str, bad: str) -> None:
    reason = one_line_refusal(hook(env, event, bad), "INVALID_ARGUMENT")
    assert "hook input" in reason


# ---- worktree-remove ----------------------------------------------------------------------------


def test_remove_releases_and_keeps_the_slot_warm(env: dict[str, str], repo: Path, settings: Settings) -> None:
    path = created_path(hook(env, "worktree-create", create_payload(repo, "warm")))
    (path / "work.txt").write_text("done\n")
    git(path, "add", "work.txt")
    git(path, "commit", "-q", "-m", "work")

    proc = hook(env, "worktree-remove", {**session_payload(repo, "WorktreeRemove"), "worktree_path": str(path)})

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    slot = state(settings)[0][str(path)]
    assert slot.state == SlotState.FREE and slot.owner is None
    assert path.is_dir(), "kept on disk, warm"
    assert git(path, "status", "--porcelain").strip() == ""
    assert git(repo, "rev-parse", "worktree-warm") == git(path, "rev-parse", "HEAD"), "the branch keeps its commit"
    # Removing it again is not an error (Claude Code may retry); then the next worktree is served
    # from the same warm directory.
    again = hook(env, "worktree-remove", {"worktree_path": str(path), "cwd": str(repo)})
    assert again.returncode == 0 and again.stdout == "", again.stderr
    assert created_path(hook(env, "worktree-create", create_payload(repo, "next", OTHER_SESSION))) == path


def test_remove_of_a_dirty_slot_keeps_the_work(env: dict[str, str], repo: Path, settings: Settings) -> None:
    path = created_path(hook(env, "worktree-create", create_payload(repo, "dirty")))
    (path / "notes.txt").write_text("unsaved\n")
    (path / "README.md").write_text("edited\n")

    proc = hook(env, "worktree-remove", {**session_payload(repo, "WorktreeRemove"), "worktree_path": str(path)})

    reason = one_line_refusal(proc, "WORKTREE_DIRTY")
    assert "notes.txt" in reason and "README.md" in reason
    assert (path / "notes.txt").read_text() == "unsaved\n"
    assert (path / "README.md").read_text() == "edited\n"
    slot = state(settings)[0][str(path)]
    assert slot.state == SlotState.BUSY and slot.owner == AGENT and slot.branch == "worktree-dirty"


def test_remove_leaves_other_agents_and_foreign_worktrees_alone(
    env: dict[str, str], repo: Path, settings: Settings, tmp_path: Path
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    async def allocate_as_other() -> str:
        async with Coordinator.open(settings, register=True, agent_id="agent-other") as coord:
            return (await coord.pool.allocate("theirs")).path

    theirs = Path(anyio.run(allocate_as_other))
    one_line_refusal(hook(env, "worktree-remove", {"worktree_path": str(theirs), "cwd": str(repo)}), "NOT_OWNER")
    assert state(settings)[0][str(theirs)].state == SlotState.BUSY

    foreign = tmp_path / "foreign"
    git(repo, "worktree", "add", "-q", str(foreign))
    reason = one_line_refusal(
        hook(env, "worktree-remove", {"worktree_path": str(foreign), "cwd": str(repo)}), "NOT_FOUND"
    )
    assert "left as is" in reason and foreign.is_dir()


# ---- session-start / session-end ----------------------------------------------------------------


def test_session_start_tells_the_worktree_and_session_end_releases(
    env: dict[str, str], repo: Path, settings: Settings
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    async def allocate_as_another_session() -> str:
        # Another Claude Code process: registered from here, its process is not the one the hooks
        # below run under (the test process).
        async with Coordinator.open(settings, register=True, agent_id=hook_agent_id(OTHER_SESSION, None)) as coord:
            return (await coord.pool.allocate("worktree-others")).path

    clean = created_path(hook(env, "worktree-create", create_payload(repo, "clean")))
    dirty = created_path(hook(env, "worktree-create", create_payload(repo, "dirty")))
    others = Path(anyio.run(allocate_as_another_session))
    (dirty / "wip.txt").write_text("wip\n")

    start = hook(env, "session-start", session_payload(repo, "SessionStart", source="resume"))
    assert start.returncode == 0, start.stderr
    (line,) = start.stdout.splitlines()
    assert str(clean) in line and str(dirty) in line and str(others) not in line
    assert "0 free, 3 busy" in line and "mcp__coord__allocate_worktree" in line

    end = hook(env, "session-end", session_payload(repo, "SessionEnd", reason="prompt_input_exit"))

    assert end.returncode == 0 and end.stdout == ""
    slots, agents = state(settings)
    assert slots[str(clean)].state == SlotState.FREE
    assert slots[str(dirty)].state == SlotState.BUSY, "dirty work stays held"
    assert (dirty / "wip.txt").read_text() == "wip\n"
    assert slots[str(others)].state == SlotState.BUSY and slots[str(others)].owner != AGENT
    assert "wip.txt" in end.stderr and dirty.name in end.stderr
    assert agents[AGENT].status == "disconnected"


def test_session_end_after_clear_keeps_the_worktree(env: dict[str, str], repo: Path, settings: Settings) -> None:
    path = created_path(hook(env, "worktree-create", create_payload(repo, "cleared")))
    end = hook(env, "session-end", session_payload(repo, "SessionEnd", reason="clear"))
    assert end.returncode == 0
    assert state(settings)[0][str(path)].state == SlotState.BUSY, "Claude Code works on in it after /clear"
    # The session that followed /clear runs in the same Claude Code process; when it ends, the
    # process ends, and what the cleared session left to it is released too.
    end = hook(env, "session-end", session_payload(repo, "SessionEnd", OTHER_SESSION, reason="logout"))
    assert end.returncode == 0, end.stderr
    assert state(settings)[0][str(path)].state == SlotState.FREE


def test_session_start_outside_a_repository_says_nothing(env: dict[str, str], tmp_path: Path) -> None:
    proc = hook(env, "session-start", {"cwd": str(tmp_path), "session_id": SESSION}, AGENT_COORD_REPO="")
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr


# ---- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "branch"),
    [
        ("feature-auth", "worktree-feature-auth"),
        ("bright running fox", "worktree-bright-running-fox"),
        ("feat/a..b", "worktree-feat/a.b"),
        ("-rf", "worktree-rf"),
        ("x.lock", "worktree-x"),
        ("a//b/.hidden/", "worktree-a/b/hidden"),
        ("@{u}", "worktree-u"),
    ],
)
def test_branch_for(name: str, branch: str) -> None:
    assert branch_for(name, "worktree-") == branch


@pytest.mark.parametrize("name", ["", "...", "/", "???", "-.-"])
def test_branch_for_refuses_names_with_nothing_usable(name: str) -> None:
    assert sanitize_name(name) == ""
    with pytest.raises(CoordError) as caught:
        branch_for(name, "worktree-")
    assert caught.value.code == ErrorCode.INVALID_BRANCH


def test_agent_id_is_stable_per_session() -> None:
    assert hook_agent_id(SESSION, None) == AGENT
    assert hook_agent_id(SESSION, "agent-pinned") == "agent-pinned"
    assert hook_agent_id(None, None) is None
    assert hook_agent_id("$$$", None) is None


def test_payload_parsing() -> None:
    parsed = parse_input(WorktreeCreateInput, json.dumps({"worktree_name": " w ", "extra": 1}).encode())
    assert parsed.requested_name == "w"
    assert parse_input(SessionEndInput, b"").reason is None, "nothing piped in: an empty payload"
    for raw in (b"{", b"3", b'{"reason": 3}'):
        with pytest.raises(CoordError) as caught:
            parse_input(SessionEndInput, raw)
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT


# ---- install-claude -----------------------------------------------------------------------------

THEIR_MCP = {"mcpServers": {"other": {"command": "npx", "args": ["-y", "@example/server"]}}}
THEIR_SETTINGS = {
    "permissions": {"allow": ["Bash(npm test)"], "deny": ["Read(./.env)"]},
    "hooks": {"SessionEnd": [{"hooks": [{"type": "command", "command": "echo bye"}]}]},
}


def _project(root: Path) -> Path:
    (root / ".claude").mkdir(parents=True)
    (root / ".mcp.json").write_text(json.dumps(THEIR_MCP, indent=4) + "\n")
    (root / ".claude" / "settings.json").write_text(json.dumps(THEIR_SETTINGS, indent=4) + "\n")
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_claude_keeps_theirs_adds_ours_and_is_idempotent(env: dict[str, str], tmp_path: Path) -> None:
    project = _project(tmp_path / "proj")
    # PATH reaches the agent-coord that runs through a link, as pipx and `uv tool install` make one:
    # install-claude writes the bare, portable name.
    links = tmp_path / "links"
    links.mkdir()
    (links / "agent-coord").symlink_to(AGENT_COORD)
    env = {**env, "PATH": os.pathsep.join([str(links), os.environ.get("PATH", "")])}
    before = _files(project)

    dry = run(env, ["install-claude", "--project", str(project), "--dry-run"])
    assert dry.returncode == 0 and dry.stdout.startswith("would change:"), dry.stderr
    assert _files(project) == before, "a dry run writes nothing"

    first = run(env, ["install-claude", "--project", str(project)])
    assert first.returncode == 0 and first.stdout.startswith("changed:"), first.stderr
    mcp = json.loads((project / ".mcp.json").read_text())
    assert mcp["mcpServers"]["other"] == THEIR_MCP["mcpServers"]["other"]
    assert mcp["mcpServers"]["coord"] == {"type": "stdio", "command": "agent-coord", "args": ["serve"]}
    settings = json.loads((project / ".claude" / "settings.json").read_text())
    assert settings["permissions"]["allow"][0] == "Bash(npm test)"
    assert "mcp__coord__allocate_worktree" in settings["permissions"]["allow"]
    assert settings["permissions"]["deny"] == ["Read(./.env)"]
    commands = [h["command"] for g in settings["hooks"]["SessionEnd"] for h in g["hooks"]]
    assert commands == ["echo bye", "agent-coord hook session-end"]
    assert settings["hooks"]["WorktreeCreate"][0]["hooks"][0]["command"] == "agent-coord hook worktree-create"
    assert (project / ".claude" / "skills" / "allocate-worktree" / "SKILL.md").is_file()

    installed = _files(project)
    second = run(env, ["install-claude"], cwd=project)  # the default project is the current directory
    assert second.returncode == 0 and second.stdout.startswith("up to date"), second.stdout
    assert _files(project) == installed


def test_install_claude_refuses_a_broken_file(env: dict[str, str], tmp_path: Path) -> None:
    project = _project(tmp_path / "proj")
    (project / ".mcp.json").write_text("{not json")
    before = _files(project)
    proc = run(env, ["install-claude", "--project", str(project)])
    assert proc.returncode == 1 and proc.stdout == ""
    assert str(project / ".mcp.json") in proc.stderr and "Nothing was changed" in proc.stderr
    assert _files(project) == before
