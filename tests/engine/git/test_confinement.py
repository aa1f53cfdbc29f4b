"""Nothing outside the pool is touched: one guard before every command that changes a worktree, an
index or a ref, or moves or deletes (agent_coord/engine/git/confinement.py).

Each attack puts something else in a slot's place: a symlink to the main checkout, to another
repository or to `/`, a regular file, another clone, or a `.git` pointer redirected into another
repository. Each operation (allocate, release with every flag, validate, validate --repair, reclaim,
the hooks) then meets it, and afterwards the main checkout, a sibling directory and the other
repository are byte for byte as they were (bench/outside_check.py), and the slot is QUARANTINED.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.errors import CoordError
from agent_coord.engine.git.confinement import PoolRootRefused
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.store.records import SlotState
from bench.outside_check import Outside
from tests.conftest import git, make_repo

pytestmark = pytest.mark.anyio


def other_repo(tmp_path: Path) -> Path:
    other = make_repo(tmp_path, "other")
    git(other, "worktree", "add", "-q", "--detach", str(tmp_path / "other-wt"))
    (other / "precious.txt").write_text("someone else's uncommitted work\n")
    return other


def sibling(tmp_path: Path) -> Path:
    d = tmp_path / "sibling"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("a person's notes\n")
    return d


def symlink_to_main(slot: Path, repo: Path, tmp_path: Path) -> None:
    shutil.rmtree(slot)
    slot.symlink_to(repo)


def symlink_to_other(slot: Path, repo: Path, tmp_path: Path) -> None:
    shutil.rmtree(slot)
    slot.symlink_to(tmp_path / "other")


def symlink_to_root(slot: Path, repo: Path, tmp_path: Path) -> None:
    shutil.rmtree(slot)
    slot.symlink_to("/")


def regular_file(slot: Path, repo: Path, tmp_path: Path) -> None:
    shutil.rmtree(slot)
    slot.write_text("a file where the slot was\n")


def another_clone(slot: Path, repo: Path, tmp_path: Path) -> None:
    shutil.rmtree(slot)
    subprocess.run(["git", "clone", "-q", str(tmp_path / "other"), str(slot)], check=True)
    (slot / "clone-work.txt").write_text("uncommitted in the clone\n")


def redirected_pointer(slot: Path, repo: Path, tmp_path: Path) -> None:
    """The slot's `.git` now names the other repository's worktree entry (and the work tree there)."""
    (slot / ".git").write_text(f"gitdir: {tmp_path / 'other' / '.git' / 'worktrees' / 'other-wt'}\n")


ATTACKS: dict[str, Callable[[Path, Path, Path], None]] = {
    "symlink_to_main": symlink_to_main,
    "symlink_to_other_repo": symlink_to_other,
    "symlink_to_root": symlink_to_root,
    "regular_file": regular_file,
    "another_clone": another_clone,
    "redirected_git_pointer": redirected_pointer,
}


def outside(repo: Path, tmp_path: Path) -> Outside:
    return Outside(repo, tmp_path / "other", tmp_path / "other-wt", sibling(tmp_path))


async def free_slot(coord: Any, branch: str = "warm") -> Path:
    """A warm FREE slot, dirty enough that a validation that trusted it would reset and clean."""
    a = await coord.pool.allocate(branch)
    await coord.pool.release(worktree_id=a.worktree_id)
    return Path(a.path)


async def slot_state(coord: Any, path: Path) -> SlotState | None:
    for s in await coord.store.slots():
        if Path(s.path) == path:
            state: SlotState = s.state
            return state
    return None


@pytest.mark.parametrize("attack", ATTACKS)
async def test_validate_and_repair_quarantine_a_free_slot_that_is_not_ours(
    coord: Any, repo: Path, tmp_path: Path, attack: str
) -> None:
    other_repo(tmp_path)
    slot = await free_slot(coord)
    ATTACKS[attack](slot, repo, tmp_path)
    (repo / "README.md").write_text("the person's uncommitted edit in the main checkout\n")
    seen = outside(repo, tmp_path)

    dry = await coord.validate(repair=False)
    assert any(f.kind == "unconfined_slot" for f in dry.findings), dry.findings
    repaired = await coord.validate(repair=True)
    assert [f.kind for f in repaired.findings if f.repaired] == ["unconfined_slot"]
    assert await slot_state(coord, slot) == SlotState.QUARANTINED
    again = await coord.validate(repair=True)  # left for a person, never touched
    assert again.findings == [] and [f.kind for f in again.skipped] == ["unconfined_slot"]
    seen.assert_unchanged()
    assert os.path.lexists(slot)


@pytest.mark.parametrize("attack", ATTACKS)
async def test_allocate_never_hands_out_or_runs_git_in_a_slot_that_is_not_ours(
    coord: Any, repo: Path, tmp_path: Path, attack: str
) -> None:
    other_repo(tmp_path)
    slot = await free_slot(coord)
    ATTACKS[attack](slot, repo, tmp_path)
    seen = outside(repo, tmp_path)
    try:
        got = await coord.pool.allocate("next")
    except CoordError as exc:
        assert exc.code.value == "GIT_FAILED", exc
        assert await slot_state(coord, slot) == SlotState.QUARANTINED
    else:
        assert Path(got.path) != slot
    seen.assert_unchanged()


@pytest.mark.parametrize("remove", [False, True])
@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("attack", ATTACKS)
async def test_release_with_every_flag_refuses_and_quarantines(
    coord: Any, repo: Path, tmp_path: Path, attack: str, force: bool, remove: bool
) -> None:
    other_repo(tmp_path)
    a = await coord.pool.allocate("held")
    slot = Path(a.path)
    (slot / "agent-work.txt").write_text("dirty, so force would rescue and reset\n")
    ATTACKS[attack](slot, repo, tmp_path)
    seen = outside(repo, tmp_path)
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id, force=force, remove=remove)
    assert err.value.code.value == "GIT_FAILED" and "quarantined" in err.value.message
    assert await slot_state(coord, slot) == SlotState.QUARANTINED
    seen.assert_unchanged()


@pytest.mark.parametrize("attack", ATTACKS)
async def test_reclaim_of_a_dead_agents_slot_quarantines(coord: Any, repo: Path, tmp_path: Path, attack: str) -> None:
    from tests.agent_proc import set_agent
    from tests.engine.reclaim.test_reclaim import dead_pid

    other_repo(tmp_path)
    a = await coord.pool.allocate("crashed")
    slot = Path(a.path)
    ATTACKS[attack](slot, repo, tmp_path)
    pid, created = dead_pid()
    set_agent({"AGENT_COORD_DB": str(coord.settings.db)}, coord.agent_id, pid=pid, pid_create_time=created)
    seen = outside(repo, tmp_path)
    (row,) = await coord.store.slots()
    assert await coord.reclaimer.reclaim(row, "test") == "quarantined"
    assert await slot_state(coord, slot) == SlotState.QUARANTINED
    seen.assert_unchanged()


class SwapAfterStatus(GitDriver):
    """The real driver; right after the first `git status` in the slot, the slot is swapped for a
    symlink to the main checkout: the next command must meet the guard, not the main checkout."""

    def __init__(self, slot: Path, repo: Path) -> None:
        super().__init__()
        self.slot, self.repo, self.swapped = slot, repo, False

    async def run(self, cwd: Any, *args: str, check: bool = True, env: Any = None) -> str:
        out = await super().run(cwd, *args, check=check, env=env)
        if args[:1] == ("status",) and not self.swapped:
            self.swapped = True
            shutil.move(str(self.slot), str(self.slot.parent / "moved-away"))
            self.slot.symlink_to(self.repo)
        return out


async def test_a_swap_during_a_forced_release_is_caught_before_the_next_command(
    coord: Any, repo: Path, tmp_path: Path
) -> None:
    a = await coord.pool.allocate("swapped")
    slot = Path(a.path)
    (slot / "work.txt").write_text("dirty\n")
    (repo / "mine.txt").write_text("untracked in the main checkout: clean -f would delete it\n")
    seen = outside(repo, tmp_path)
    coord.pool.releaser.ctx = replace(coord.ctx, git=SwapAfterStatus(slot, repo))
    with pytest.raises(CoordError, match="quarantined"):
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert await slot_state(coord, slot) == SlotState.QUARANTINED
    seen.assert_unchanged()
    assert (slot.parent / "moved-away" / "work.txt").read_text() == "dirty\n"


async def test_a_swap_during_a_reclaim_is_caught(coord: Any, repo: Path, tmp_path: Path) -> None:
    from tests.agent_proc import set_agent
    from tests.engine.reclaim.test_reclaim import dead_pid

    a = await coord.pool.allocate("swapped")
    slot = Path(a.path)
    (slot / "work.txt").write_text("dirty\n")
    (repo / "mine.txt").write_text("untracked in the main checkout\n")
    pid, created = dead_pid()
    set_agent({"AGENT_COORD_DB": str(coord.settings.db)}, coord.agent_id, pid=pid, pid_create_time=created)
    seen = outside(repo, tmp_path)
    coord.reclaimer.ctx = replace(coord.ctx, git=SwapAfterStatus(slot, repo))
    (row,) = await coord.store.slots()
    assert await coord.reclaimer.reclaim(row, "test") == "quarantined"
    seen.assert_unchanged()


# ---- the pool root -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    ["repo_parent", "repo_itself", "inside_dot_git", "holds_other_repo", "filesystem_root"],
)
async def test_a_pool_root_that_is_not_the_pools_alone_is_refused_at_start_up(
    make_settings: Any, repo: Path, tmp_path: Path, where: str
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    other_repo(tmp_path)
    root = {
        "repo_parent": tmp_path,
        "repo_itself": repo,
        "inside_dot_git": repo / ".git" / "pool",
        "holds_other_repo": tmp_path / "pool",
        "filesystem_root": Path("/"),
    }[where]
    if where == "holds_other_repo":
        root.mkdir()
        subprocess.run(["git", "clone", "-q", str(tmp_path / "other"), str(root / "someone")], check=True)
    seen = outside(repo, tmp_path)
    settings = make_settings(pool_root=root)
    with pytest.raises(PoolRootRefused, match="AGENT_COORD_POOL_ROOT"):
        async with Coordinator.open(settings, register=True):
            pass
    seen.assert_unchanged()


async def test_a_refused_pool_root_is_not_recorded_so_fixing_the_setting_is_enough(
    make_settings: Any, repo: Path, tmp_path: Path
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    with pytest.raises(PoolRootRefused):
        async with Coordinator.open(make_settings(pool_root=tmp_path), register=True):
            pass
    good = tmp_path / "good-pool"
    async with Coordinator.open(make_settings(pool_root=good), register=True) as coord:
        grant = await coord.pool.allocate("feat/after-the-fix")
    assert Path(grant.path).parent == good.resolve()


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    from tests.claude.test_hooks import run

    return run(env, list(args), stdin)


def test_the_cli_and_the_hooks_refuse_a_pool_root_around_the_repository(
    env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    other_repo(tmp_path)
    seen = outside(repo, tmp_path)
    bad = {**env, "AGENT_COORD_POOL_ROOT": str(tmp_path)}
    for args, stdin in [
        (("validate", "--repair"), ""),
        (("status",), ""),
        (("hook", "worktree-create"), json.dumps({"name": "x", "session_id": "s", "cwd": str(repo)})),
    ]:
        proc = cli(bad, *args, stdin=stdin)
        assert proc.returncode != 0 and "AGENT_COORD_POOL_ROOT" in proc.stderr, (args, proc.stderr)
    seen.assert_unchanged()
    assert not (tmp_path / ".lost+found").exists()


@pytest.mark.parametrize("attack", ["symlink_to_main", "another_clone"])
def test_the_hooks_never_touch_a_slot_that_is_not_ours(
    env: dict[str, str], repo: Path, tmp_path: Path, attack: str
) -> None:
    from tests.claude.test_hooks import create_payload, created_path, hook, session_payload

    other_repo(tmp_path)
    path = created_path(hook(env, "worktree-create", create_payload(repo, "hooked")))
    (path / "work.txt").write_text("the session's work\n")
    ATTACKS[attack](path, repo, tmp_path)
    seen = outside(repo, tmp_path)
    started = hook(env, "session-start", session_payload(repo, "SessionStart", source="startup"))
    assert started.returncode == 0, started.stderr
    removed = hook(env, "worktree-remove", {**session_payload(repo, "WorktreeRemove"), "worktree_path": str(path)})
    ended = hook(env, "session-end", session_payload(repo, "SessionEnd", reason="exit"))
    again = hook(env, "worktree-create", create_payload(repo, "second"))
    assert again.returncode == 0 and created_path(again) != path, (removed.stderr, ended.stderr, again.stderr)
    seen.assert_unchanged()
    assert os.path.lexists(path)
