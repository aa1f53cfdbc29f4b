"""A repair lists each repository's worktrees once and hands that listing to its reclaims and its prune.

The listing ages while the repair runs, so each test here changes the worktrees behind it (locks one,
deletes one with staged work, adds one by hand) at the worst moment, with real git, and checks that
nothing is lost or wrongly moved. The git driver is the real one, instrumented only to count the
processes it starts and to run a person's action right after git listed the worktrees.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent_coord.engine.git.driver import GitDriver, WorktreeInfo
from agent_coord.engine.git.worktree_listing import WorktreeListing
from agent_coord.engine.reclaim.reclaimer import Reclaimer
from agent_coord.engine.store.records import Slot, SlotState
from agent_coord.engine.validate.validator import Validator
from tests.agent_proc import set_agent
from tests.conftest import git, make_repo

pytestmark = pytest.mark.anyio

Hook = Callable[[], None]


class CountingGit(GitDriver):
    """The real driver; counts the git processes it starts, and runs `after_listing` once, right after
    the first `git worktree list`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, ...]] = []
        self.after_listing: Hook | None = None

    async def run(self, cwd: str | Path, *args: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        self.calls.append(args)
        return await super().run(cwd, *args, check=check, env=env)

    async def worktrees(self, repo: Path) -> list[WorktreeInfo]:
        listed = await super().worktrees(repo)
        hook, self.after_listing = self.after_listing, None
        if hook is not None:
            hook()
        return listed

    def listings(self) -> int:
        return sum(1 for a in self.calls if a[:2] == ("worktree", "list"))


class HookedReclaimer(Reclaimer):
    """The real reclaimer; runs `before` once, just before its first reclaim starts."""

    before: Hook | None = None

    async def reclaim(self, slot: Slot, reason: str, *, listing: WorktreeListing | None = None) -> str:
        hook, self.before = self.before, None
        if hook is not None:
            hook()
        return await super().reclaim(slot, reason, listing=listing)


def instrumented(coord: Any) -> tuple[Validator, HookedReclaimer, CountingGit]:
    counting = CountingGit()
    ctx = replace(coord.ctx, git=counting)
    reclaimer = HookedReclaimer(ctx)
    return Validator(ctx, reclaimer), reclaimer, counting


def kill_agent(env: dict[str, str], agent_id: str) -> None:
    """Record a process that has exited as the agent's: its slots are a dead agent's."""
    proc = subprocess.Popen(["true"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    set_agent(env, agent_id, pid=proc.pid, pid_create_time=created)


def revive_agent(env: dict[str, str], agent_id: str) -> None:
    set_agent(env, agent_id, pid=psutil.Process().pid, pid_create_time=psutil.Process().create_time(), status="active")


def rescue_refs(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue").split()


async def test_a_repair_lists_each_repository_once(coord: Any, env: dict[str, str], repo: Path) -> None:
    pool = Path(env["AGENT_COORD_POOL_ROOT"])
    held = [await coord.pool.allocate(f"feat/held-{i}") for i in range(4)]
    free = [await coord.pool.allocate(f"feat/free-{i}") for i in range(3)]
    for a in free:
        await coord.pool.release(worktree_id=a.worktree_id)
    (Path(held[0].path) / "work.txt").write_text("a dead agent's work")
    (Path(free[0].path) / "stray.txt").write_text("written into a free slot")
    git(Path(free[1].path), "switch", "-q", "-c", "drift")
    shutil.rmtree(free[2].path)
    git(repo, "worktree", "add", "-q", "--detach", str(pool / "by-hand"))
    (pool / "junk").mkdir()
    kill_agent(env, coord.agent_id)
    validator, _, counting = instrumented(coord)

    dry = await validator.validate(repair=False)
    assert counting.listings() == 1
    counting.calls.clear()
    fixed = await validator.validate(repair=True)
    assert sorted(f.kind for f in fixed.findings) == sorted(
        ["dead_agent"] * 4
        + ["dirty_free_slot", "free_not_detached", "missing_worktree", "untracked_worktree", "leftover_directory"]
    )
    assert [f.kind for f in fixed.findings] == [f.kind for f in dry.findings]
    assert all(f.repaired for f in fixed.findings), fixed.findings
    # Six reclaims, a prune, an adoption and a leftover, on one listing.
    assert counting.listings() == 1
    ref = (await coord.store.slot(held[0].worktree_id)).rescue_ref
    assert ref and git(repo, "show", f"{ref}:work.txt") == "a dead agent's work"
    revive_agent(env, coord.agent_id)
    assert (await validator.validate(repair=True)).findings == []


async def test_a_worktree_locked_after_the_listing_is_not_touched(coord: Any, env: dict[str, str], repo: Path) -> None:
    alloc = await coord.pool.allocate("feat/lock-late")
    wt = Path(alloc.path)
    (wt / "wip.txt").write_text("locked work")
    kill_agent(env, coord.agent_id)
    validator, reclaimer, counting = instrumented(coord)
    reclaimer.before = lambda: git(repo, "worktree", "lock", "--reason", "by hand", str(wt))
    (before,) = await coord.store.slots()

    (f,) = (await validator.validate(repair=True)).findings
    # The listing said unlocked; the reclaim's own check of the disk saw the lock, without listing again.
    assert (f.kind, f.action, f.repaired) == ("dead_agent", "reclaimed: locked", False)
    assert counting.listings() == 1
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY and slot.owner == coord.agent_id and slot.version == before.version
    assert (wt / "wip.txt").read_text() == "locked work"
    assert git(wt, "branch", "--show-current").strip() == "feat/lock-late"
    assert rescue_refs(repo) == []

    git(repo, "worktree", "unlock", str(wt))
    (f,) = (await validator.validate(repair=True)).findings
    assert f.action == "reclaimed: rescued"


async def test_a_worktree_deleted_after_the_listing_keeps_its_staged_work(
    coord: Any, env: dict[str, str], repo: Path
) -> None:
    alloc = await coord.pool.allocate("feat/vanishing")
    wt = Path(alloc.path)
    (wt / "staged.txt").write_bytes(b"staged \x00 before the directory went")
    git(wt, "add", "staged.txt")
    kill_agent(env, coord.agent_id)
    validator, reclaimer, counting = instrumented(coord)
    reclaimer.before = lambda: shutil.rmtree(wt)

    (f,) = (await validator.validate(repair=True)).findings
    assert (f.kind, f.action, f.repaired) == ("dead_agent", "reclaimed: removed", True)
    # The disk disagreed with the listing, so the reclaim listed again and took the vanished path.
    assert counting.listings() == 2
    (ref,) = rescue_refs(repo)
    assert subprocess.run(["git", "-C", str(repo), "show", f"{ref}:staged.txt"], capture_output=True).stdout == (
        b"staged \x00 before the directory went"
    )
    assert await coord.store.slots() == []
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")
    revive_agent(env, coord.agent_id)
    assert (await validator.validate(repair=True)).findings == []


async def test_a_prune_saves_a_worktree_that_vanished_after_the_listing(
    coord: Any, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """`git worktree prune` deletes every vanished entry at once, also one the listing saw alive."""
    gone = await coord.pool.allocate("feat/gone")
    await coord.pool.release(worktree_id=gone.worktree_id)
    shutil.rmtree(gone.path)  # a missing slot: the repair prunes
    elsewhere = tmp_path / "elsewhere"
    git(repo, "worktree", "add", "-q", "-b", "side", str(elsewhere))
    (elsewhere / "draft.txt").write_text("staged outside the pool")
    git(elsewhere, "add", "draft.txt")
    validator, _, counting = instrumented(coord)
    counting.after_listing = lambda: shutil.rmtree(elsewhere)

    (f,) = (await validator.validate(repair=True)).findings
    assert (f.kind, f.repaired) == ("missing_worktree", True)
    assert counting.listings() == 2  # the prune saw an entry the listing had not, and listed again
    (ref,) = rescue_refs(repo)
    assert "side" in ref and git(repo, "show", f"{ref}:draft.txt") == "staged outside the pool"
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")


async def test_a_worktree_added_by_hand_after_the_listing_is_no_leftover(
    coord: Any, env: dict[str, str], repo: Path
) -> None:
    pool = Path(env["AGENT_COORD_POOL_ROOT"])
    await coord.pool.allocate("feat/any")  # makes the pool root
    (pool / "junk").mkdir()
    validator, _, counting = instrumented(coord)
    counting.after_listing = lambda: git(repo, "worktree", "add", "-q", "--detach", str(pool / "late"))

    (f,) = (await validator.validate(repair=True)).findings
    assert (f.kind, f.path, f.repaired) == ("leftover_directory", str(pool / "junk"), True)
    assert counting.listings() == 2  # an unknown entry with a `.git`: git was asked again
    assert (pool / "late" / ".git").is_file() and str(pool / "late") in git(repo, "worktree", "list")
    # The next pass sees it in git's listing and adopts it.
    (f,) = (await validator.validate(repair=True)).findings
    assert (f.kind, f.path, f.repaired) == ("untracked_worktree", str(pool / "late"), True)


async def test_a_standalone_reclaim_lists_for_itself(coord: Any, env: dict[str, str], repo: Path) -> None:
    alloc = await coord.pool.allocate("feat/alone")
    (Path(alloc.path) / "wip.txt").write_text("work")
    (slot,) = await coord.store.slots()
    _, reclaimer, counting = instrumented(coord)
    assert await reclaimer.reclaim(slot, "a dead agent's slot, found by someone else") == "rescued"
    assert counting.listings() == 1
    (after,) = await coord.store.slots()
    assert after.state == SlotState.FREE and git(repo, "show", f"{after.rescue_ref}:wip.txt") == "work"


def test_the_disk_probe_agrees_with_git(repo: Path, tmp_path: Path) -> None:
    """What `probe_worktree` and `scan_admin_dirs` read from the disk is what git lists."""
    from agent_coord.engine.git.worktree_probe import OnDisk, probe_worktree, scan_admin_dirs

    linked, locked, gone = tmp_path / "linked", tmp_path / "locked", tmp_path / "gone"
    for wt in (linked, locked, gone):
        git(repo, "worktree", "add", "-q", "--detach", str(wt))
    git(repo, "worktree", "lock", str(locked))
    shutil.rmtree(gone)
    copy = tmp_path / "copy"
    shutil.copytree(linked, copy)  # its `.git` names linked's admin directory, which names linked back
    nested = tmp_path / "nested"
    git(tmp_path, "init", "-q", str(nested))
    assert probe_worktree(linked) is OnDisk.WORKTREE
    assert probe_worktree(locked) is OnDisk.LOCKED
    assert probe_worktree(gone) is OnDisk.NOTHING
    assert probe_worktree(tmp_path / "never") is OnDisk.NOTHING
    assert probe_worktree(copy) is OnDisk.OTHER
    assert probe_worktree(nested) is OnDisk.OTHER

    listed = {w.split(" ", 1)[1]: w for w in git(repo, "worktree", "list", "--porcelain").split("\n\n") if w}
    porcelain = {path.split("\n", 1)[0]: entry for path, entry in listed.items()}
    admin = {a.worktree: a for a in scan_admin_dirs(repo / ".git")}
    assert set(admin) == {str(p.resolve()) for p in (linked, locked, gone)}
    for path, a in admin.items():
        assert a.locked == ("\nlocked" in porcelain[path])
        assert a.prunable == ("\nprunable" in porcelain[path])


def test_a_lock_is_what_git_calls_one(repo: Path, tmp_path: Path) -> None:
    """Git tests `locked` with lstat: a dangling link or a directory in its place is a lock too."""
    from agent_coord.engine.git.worktree_probe import OnDisk, probe_worktree, scan_admin_dirs

    dangling, directory = tmp_path / "dangling", tmp_path / "directory"
    for wt in (dangling, directory):
        git(repo, "worktree", "add", "-q", "--detach", str(wt))
    admin = repo / ".git" / "worktrees"
    (admin / "dangling" / "locked").symlink_to(tmp_path / "nowhere")
    (admin / "directory" / "locked").mkdir()
    assert probe_worktree(dangling) is OnDisk.LOCKED
    assert probe_worktree(directory) is OnDisk.LOCKED
    for wt in (dangling, directory):
        shutil.rmtree(wt)
    judged = scan_admin_dirs(repo / ".git")
    assert len(judged) == 2 and all(a.locked and not a.prunable for a in judged)
    git(repo, "worktree", "prune")  # git agrees: it keeps both
    assert sorted(d.name for d in admin.iterdir()) == ["dangling", "directory"]


def test_a_worktree_of_another_repository_is_not_ours(repo: Path, tmp_path: Path) -> None:
    """A slot's path re-created as a linked worktree of another repository after the listing."""
    from agent_coord.engine.git.worktree_probe import OnDisk, probe_worktree

    slot = tmp_path / "slot"
    git(repo, "worktree", "add", "-q", "--detach", str(slot))
    link = tmp_path / "link"
    link.symlink_to(repo)
    assert probe_worktree(slot, repo / ".git") is OnDisk.WORKTREE
    assert probe_worktree(slot, link / ".git") is OnDisk.WORKTREE  # another spelling of the same `.git`
    git(repo, "worktree", "remove", str(slot))
    other = make_repo(tmp_path, "other")
    git(other, "worktree", "add", "-q", "--detach", str(slot))
    assert probe_worktree(slot, repo / ".git") is OnDisk.OTHER
    assert probe_worktree(slot, other / ".git") is OnDisk.WORKTREE
    assert probe_worktree(slot) is OnDisk.WORKTREE  # a caller that does not say which repository
