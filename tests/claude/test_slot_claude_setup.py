"""A slot made by the WorktreeCreate hook has the project's Claude Code setup, committed or not, and
stays clean: the uncommitted files are linked in and excluded from git's view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from agent_coord.config import Settings
from agent_coord.engine.store.records import SlotState
from tests.claude.test_hooks import AGENT_COORD, create_payload, created_path, hook, run, session_payload, state
from tests.conftest import git
from tests.paths import HOOK_HOST_OFF

UNCOMMITTED = (
    ".mcp.json",
    ".claude/settings.json",
    ".claude/skills/allocate-worktree/SKILL.md",
    ".claude/settings.local.json",
    "CLAUDE.md",
)


def _install(env: dict[str, str], repo: Path) -> None:
    proc = run(env, ["install-claude", "--project", str(repo), "--launcher", "agent-coord"])
    assert proc.returncode == 0, proc.stderr
    (repo / "CLAUDE.md").write_text("# the project's notes\n")
    (repo / ".claude" / "settings.local.json").write_text('{"env": {"MINE": "1"}}\n')


def test_slot_gets_the_uncommitted_setup_linked_and_stays_clean(
    env: dict[str, str], repo: Path, settings: Settings
) -> None:
    _install(env, repo)
    (repo / ".claude" / "commands").mkdir()
    (repo / ".claude" / "commands" / "ship.md").write_text("committed command\n")
    git(repo, "add", ".claude/commands/ship.md")
    git(repo, "commit", "-qm", "a committed command")

    slot = created_path(hook(env, "worktree-create", create_payload(repo, "setup")))
    for rel in UNCOMMITTED:
        assert (slot / rel).is_symlink(), rel
        assert os.readlink(slot / rel) == str(repo / rel)
    settings_in_slot = json.loads((slot / ".claude" / "settings.json").read_text())
    assert "SessionEnd" in settings_in_slot["hooks"]
    assert not (slot / ".claude" / "commands" / "ship.md").is_symlink(), "committed files come from the branch"
    assert git(slot, "status", "--porcelain", "--untracked-files=all") == "", "the links are not changes"
    exclude = (repo / ".git" / "info" / "exclude").read_text()
    assert all(f"/{rel}\n" in exclude for rel in UNCOMMITTED)

    # The session ends: a clean slot (links and all) goes back to the pool at once.
    ended = hook(env, "session-end", session_payload(slot, "SessionEnd", reason="other"))
    assert ended.returncode == 0, ended.stderr
    slots, _ = state(settings)
    assert slots[str(slot)].state == SlotState.FREE


def test_a_warm_slot_keeps_its_links_and_a_branch_file_wins(
    env: dict[str, str], repo: Path, settings: Settings
) -> None:
    _install(env, repo)
    slot = created_path(hook(env, "worktree-create", create_payload(repo, "first")))
    assert hook(env, "session-end", session_payload(slot, "SessionEnd", reason="other")).returncode == 0
    exclude_before = (repo / ".git" / "info" / "exclude").read_text()

    # A branch that commits its own CLAUDE.md: the switch overwrites the ignored link, no refusal.
    git(repo, "switch", "-qc", "worktree-own-notes")
    (repo / "CLAUDE.md").rename(repo / "CLAUDE.keep")
    (repo / "CLAUDE.md").write_text("# the branch's notes\n")
    git(repo, "add", "-f", "CLAUDE.md")
    git(repo, "commit", "-qm", "notes")
    git(repo, "switch", "-q", "main")
    (repo / "CLAUDE.keep").rename(repo / "CLAUDE.md")

    again = created_path(hook(env, "worktree-create", create_payload(repo, "own-notes", session="x" * 36)))
    assert again == slot, "the warm slot is reused"
    slots, _ = state(settings)
    assert slots[str(slot)].state == SlotState.BUSY
    assert (slot / ".mcp.json").is_symlink()
    assert not (slot / "CLAUDE.md").is_symlink() and "branch's notes" in (slot / "CLAUDE.md").read_text()
    assert (repo / ".git" / "info" / "exclude").read_text() == exclude_before, "no line is written twice"


def test_a_dirty_slot_is_kept_at_session_end(env: dict[str, str], repo: Path, settings: Settings) -> None:
    _install(env, repo)
    slot = created_path(hook(env, "worktree-create", create_payload(repo, "work")))
    (slot / "new.txt").write_text("uncommitted work\n")
    ended = hook(env, "session-end", session_payload(slot, "SessionEnd", reason="other"))
    assert ended.returncode == 0 and "kept" in ended.stderr, ended.stderr
    slots, _ = state(settings)
    assert slots[str(slot)].state == SlotState.BUSY
    assert (slot / "new.txt").read_text() == "uncommitted work\n"


# Plays Claude Code: runs the WorktreeCreate hook with CLAUDE_PID naming itself, prints the slot, waits.
FAKE_CLAUDE = """
import os, subprocess, sys, time
env = {**os.environ, "CLAUDE_PID": str(os.getpid())}
hook = subprocess.run(
    [sys.argv[1], "hook", "worktree-create"], input=sys.argv[2], env=env, capture_output=True, text=True
)
print(hook.stdout.strip() or "FAILED " + hook.stderr.replace(chr(10), " "), flush=True)
time.sleep(120)
"""


def test_the_slot_comes_back_when_claude_dies_without_session_end(
    env: dict[str, str], repo: Path, settings: Settings
) -> None:
    _install(env, repo)
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)} | env
    payload = json.dumps(create_payload(repo, "crash"))
    claude = subprocess.Popen(
        [sys.executable, "-c", FAKE_CLAUDE, str(AGENT_COORD), payload], env=full, stdout=subprocess.PIPE, text=True
    )
    try:
        assert claude.stdout is not None
        slot = Path(claude.stdout.readline().strip())
        assert slot.is_dir(), slot
        slots, _ = state(settings)
        assert slots[str(slot)].state == SlotState.BUSY
    finally:
        claude.kill()  # SIGKILL: no SessionEnd, as when Claude Code crashes
        claude.wait()
        claude.stdout.close()  # type: ignore[union-attr]

    deadline = time.monotonic() + 120.0
    while (now := state(settings)[0][str(slot)].state) != SlotState.FREE and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now == SlotState.FREE, f"slot still {now} 120 s after its Claude Code process died"
