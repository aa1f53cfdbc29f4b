"""Every git state a person can leave in a slot gets a clear answer: release refuses with a code that
says what to do (or puts things right where that is safe), validate reports it, and a quarantined
slot whose cause is gone comes back with `validate --repair`. Real repositories, real git."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store.records import SlotState
from tests.agent_proc import MIN_WAIT_S
from tests.conftest import git

pytestmark = pytest.mark.anyio


def commit(worktree: Path, name: str, text: str) -> None:
    (worktree / name).write_text(text)
    git(worktree, "add", "--", name)
    git(worktree, "commit", "-q", "-m", f"{name}: {text.strip()}")


def other_branch(repo: Path) -> None:
    """A branch `other` that adds `clash.txt`, for merges, cherry-picks and reverts to trip on."""
    git(repo, "branch", "other", "main")
    scratch = repo.parent / "scratch-other"
    git(repo, "worktree", "add", "-q", str(scratch), "other")
    commit(scratch, "clash.txt", "theirs\n")
    git(repo, "worktree", "remove", str(scratch))


def stop_rebase(wt: Path) -> None:
    commit(wt, "mine.txt", "one\n")
    env = {**os.environ, "GIT_SEQUENCE_EDITOR": "sed -i 1s/^pick/edit/"}
    subprocess.run(["git", "-C", str(wt), "rebase", "-i", "HEAD~1"], env=env, check=True, capture_output=True)


def stop_merge(wt: Path) -> None:
    git(wt, "merge", "--no-commit", "--no-ff", "other")


def stop_cherry_pick(wt: Path) -> None:
    commit(wt, "clash.txt", "ours\n")
    subprocess.run(["git", "-C", str(wt), "cherry-pick", "other"], capture_output=True)  # conflicts


def stop_revert(wt: Path) -> None:
    commit(wt, "mine.txt", "one\n")
    git(wt, "revert", "--no-commit", "HEAD")


def stop_bisect(wt: Path) -> None:
    commit(wt, "mine.txt", "one\n")
    commit(wt, "mine.txt", "two\n")
    git(wt, "bisect", "start", "HEAD", "HEAD~2")


def hold_index_lock(wt: Path) -> None:
    admin = Path(git(wt, "rev-parse", "--absolute-git-dir").strip())
    (admin / "index.lock").write_text("")


STATES: dict[str, Callable[[Path], None]] = {
    "rebase": stop_rebase,
    "merge": stop_merge,
    "cherry-pick": stop_cherry_pick,
    "revert": stop_revert,
    "bisect": stop_bisect,
    "index.lock": hold_index_lock,
}


@pytest.mark.parametrize("state", list(STATES))
async def test_release_refuses_an_operation_in_progress_and_validate_reports_it(
    coord: Any, repo: Path, state: str
) -> None:
    other_branch(repo)
    grant = await coord.pool.allocate(f"feat/{state.replace('.', '-')}")
    wt = Path(grant.path)
    STATES[state](wt)
    for force, remove in [(False, False), (True, False), (False, True), (True, True)]:
        with pytest.raises(CoordError) as refused:
            await coord.pool.release(worktree_id=grant.worktree_id, force=force, remove=remove)
        assert refused.value.code == ErrorCode.OPERATION_IN_PROGRESS, refused.value
        assert state.split(".")[0] in refused.value.message and "then release again" in refused.value.message
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.BUSY and slot.owner == coord.agent_id
    assert f"worktree {wt}\n" in git(repo, "worktree", "list", "--porcelain")  # nothing removed
    report = await coord.validate(repair=True)
    (seen,) = [f for f in report.skipped if f.kind == "operation_in_progress"]
    assert seen.worktree_id == grant.worktree_id
    assert (await coord.validate(repair=False)).findings == []


async def _state(coord: Any, worktree_id: str) -> SlotState:
    return next(s.state for s in await coord.store.slots() if s.id == worktree_id)


async def test_a_readers_index_lock_never_quarantines_a_free_slot(coord: Any) -> None:
    """An editor (or a person) runs `git status` in a FREE slot: git takes the index lock for a moment.
    Only a lock that persists (the same file at two passes, or one left long ago) quarantines."""
    grant = await coord.pool.allocate("feat/read-by-an-editor")
    await coord.pool.release(worktree_id=grant.worktree_id)
    wt, wid = Path(grant.path), grant.worktree_id
    lock = Path(git(wt, "rev-parse", "--absolute-git-dir").strip()) / "index.lock"

    # A real reader: `git status` with optional locks (GIT_OPTIONAL_LOCKS unset), over and over.
    env = {k: v for k, v in os.environ.items() if k != "GIT_OPTIONAL_LOCKS"}
    reader = subprocess.Popen(
        ["sh", "-c", "while :; do git status --porcelain >/dev/null 2>&1; done"],
        cwd=wt,
        env=env,
        start_new_session=True,  # its own group: the `git status` under way is waited for by it
    )
    try:
        with anyio.fail_after(MIN_WAIT_S):
            while not lock.exists():  # the reader's lock comes and goes
                await anyio.sleep(0.001)
        for _ in range(4):
            await coord.validate(repair=True)
            assert await _state(coord, wid) == SlotState.FREE
    finally:
        reader.kill()  # the loop; the `git status` under way finishes (killed, it would leave its lock)
        reader.wait()
    with anyio.fail_after(MIN_WAIT_S):
        while group_alive(reader.pid) or lock.exists():
            await anyio.sleep(0.01)

    lock.write_text("")  # appears right before a pass, and is gone before the next
    first = await coord.validate(repair=True)
    assert await _state(coord, wid) == SlotState.FREE
    assert [f.kind for f in first.skipped] == ["index_lock"]
    lock.unlink()
    assert not (await coord.validate(repair=True)).skipped

    lock.write_text("")  # stays: a git that was killed
    await coord.validate(repair=True)
    assert await _state(coord, wid) == SlotState.FREE
    second = await coord.validate(repair=True)
    (f,) = second.findings
    assert f.kind == "operation_in_progress" and "since the previous validation" in f.detail and f.repaired
    assert await _state(coord, wid) == SlotState.QUARANTINED
    lock.unlink()
    await coord.validate(repair=True)  # the cause is gone: healed
    assert await _state(coord, wid) == SlotState.FREE

    lock.write_text("")  # left long ago: counts at the first look (a one-shot `agent-coord validate`)
    old = time.time() - 600
    os.utime(lock, (old, old))
    (f,) = (await coord.validate(repair=True)).findings
    assert f.kind == "operation_in_progress" and await _state(coord, wid) == SlotState.QUARANTINED
    lock.unlink()


async def test_a_free_slot_left_in_a_bisect_is_quarantined_then_healed(coord: Any, repo: Path) -> None:
    grant = await coord.pool.allocate("feat/bisect-free")
    wt = Path(grant.path)
    commit(wt, "mine.txt", "one\n")
    commit(wt, "mine.txt", "two\n")
    await coord.pool.release(worktree_id=grant.worktree_id)
    git(wt, "bisect", "start", "HEAD", "HEAD~2")  # a person, in a FREE slot; the tree stays clean
    dry = await coord.validate(repair=False)
    assert [f.kind for f in dry.findings] == ["operation_in_progress"]
    assert "bisect" in dry.findings[0].detail
    fixed = await coord.validate(repair=True)
    assert fixed.findings[0].repaired
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.QUARANTINED
    # Never handed out while quarantined.
    other = await coord.pool.allocate("feat/next")
    assert other.worktree_id != grant.worktree_id
    await coord.pool.release(worktree_id=other.worktree_id)
    # The person finishes: the next repair gives the slot back, detached.
    git(wt, "bisect", "reset")
    healed = await coord.validate(repair=True)
    assert [(f.kind, f.repaired) for f in healed.findings] == [("quarantine_cleared", True)]
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.FREE
    assert (await coord.validate(repair=False)).findings == []


async def test_a_quarantined_slot_that_keeps_its_branch_is_healed(coord: Any, repo: Path) -> None:
    """A slot quarantined by a failed roll-back (a killed `git worktree add`) keeps its branch checked
    out; once the cause is gone, repair detaches it and frees the branch for anyone."""
    grant = await coord.pool.allocate("feat/kept")
    await coord.store.transition(
        grant.worktree_id,
        expect_state=SlotState.BUSY,
        expect_token=grant.fencing_token,
        changes={"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None},
    )
    healed = await coord.validate(repair=True)
    assert [(f.kind, f.repaired) for f in healed.findings] == [("quarantine_cleared", True)]
    assert git(Path(grant.path), "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"
    again = await coord.pool.allocate("feat/kept")
    assert again.worktree_id == grant.worktree_id and again.reused


async def test_a_dirty_quarantined_slot_stays_quarantined(coord: Any) -> None:
    grant = await coord.pool.allocate("feat/dirty-q")
    (Path(grant.path) / "work.txt").write_text("unsaved\n")
    await coord.store.transition(
        grant.worktree_id,
        expect_state=SlotState.BUSY,
        expect_token=grant.fencing_token,
        changes={"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None},
    )
    assert (await coord.validate(repair=True)).findings == []
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.QUARANTINED
    assert (Path(grant.path) / "work.txt").read_text() == "unsaved\n"


async def test_a_moved_worktree_is_reported_and_its_release_waits_for_a_person_to_move_it_back(
    coord: Any, repo: Path, tmp_path: Path
) -> None:
    """The moved worktree is outside the pool: nothing is run there, not even the move back."""
    grant = await coord.pool.allocate("feat/moved")
    elsewhere = tmp_path / "moved-away"
    git(repo, "worktree", "move", grant.path, str(elsewhere))
    (elsewhere / "work.txt").write_text("unsaved\n")
    report = await coord.validate(repair=True)
    (moved,) = [f for f in report.findings if f.kind == "moved_worktree"]
    assert str(elsewhere) in moved.detail and "git worktree move" in moved.action
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.BUSY  # the record is kept, the branch still its owner's
    for force in (False, True):
        with pytest.raises(CoordError) as refused:
            await coord.pool.release(worktree_id=grant.worktree_id, force=force)
        assert refused.value.code == ErrorCode.GIT_FAILED
        assert f"git worktree move -- {elsewhere} {grant.path}" in str(refused.value)
        assert (elsewhere / "work.txt").read_text() == "unsaved\n" and not Path(grant.path).exists()
    git(repo, "worktree", "move", str(elsewhere), grant.path)  # the person moves it back
    done = await coord.pool.release(worktree_id=grant.worktree_id, force=True)
    assert done.state == "FREE"
    assert Path(grant.path).is_dir() and not elsewhere.exists()
    assert git(Path(grant.path), "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"
    assert (await coord.validate(repair=False)).findings == []


async def test_a_persons_worktree_on_the_slots_branch_is_never_moved_into_the_pool(
    coord: Any, repo: Path, tmp_path: Path
) -> None:
    """The slot's directory is gone and a person checks its branch out in a worktree of their own,
    outside the pool: that worktree is not the slot moved away (its admin directory has another name),
    so neither validation nor the owner's release moves it, and its work stays where it is."""
    import shutil

    grant = await coord.pool.allocate("feat/hotfix")
    shutil.rmtree(grant.path)
    git(repo, "worktree", "prune")
    mine = tmp_path / "hotfix"
    git(repo, "worktree", "add", "-q", str(mine), "feat/hotfix")
    (mine / "mine.txt").write_text("a person's work\n")
    report = await coord.validate(repair=True)
    assert not [f for f in report.findings if f.kind == "moved_worktree"], report.findings
    with contextlib.suppress(CoordError):
        await coord.pool.release(worktree_id=grant.worktree_id)
    assert (mine / "mine.txt").read_text() == "a person's work\n"
    assert git(mine, "rev-parse", "--abbrev-ref", "HEAD").strip() == "feat/hotfix"
    assert not Path(grant.path).exists() or not (Path(grant.path) / "mine.txt").exists()


async def test_detached_commits_submodule_nested_repo_and_sparse_checkout(
    coord: Any, repo: Path, tmp_path: Path
) -> None:
    """The rest of what a person can leave: commits only on a detached HEAD and a nested repository
    are work (refused without force, saved with it, or quarantined when they cannot be saved); a
    submodule and a sparse checkout are a slot like any other."""
    # Commits only on a detached HEAD.
    grant = await coord.pool.allocate("feat/detached")
    wt = Path(grant.path)
    git(wt, "switch", "-q", "--detach")
    commit(wt, "detached.txt", "only here\n")
    with pytest.raises(CoordError) as refused:
        await coord.pool.release(worktree_id=grant.worktree_id)
    assert refused.value.code == ErrorCode.WORKTREE_DIRTY and "detached HEAD" in refused.value.message
    saved = await coord.pool.release(worktree_id=grant.worktree_id, force=True)
    assert saved.rescue_ref and git(repo, "show", f"{saved.rescue_ref}:detached.txt") == "only here\n"

    # A nested repository in the worktree: a rescue ref cannot hold it and the clean-up never deletes
    # it, so the release is refused, with force too, and says what to do; nothing is touched.
    grant = await coord.pool.allocate("feat/nested")
    wt = Path(grant.path)
    nested = wt / "vendor" / "lib"
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    commit(nested, "lib.txt", "nested\n")
    for force, remove in [(False, False), (True, False), (False, True), (True, True)]:
        with pytest.raises(CoordError) as refused:
            await coord.pool.release(worktree_id=grant.worktree_id, force=force, remove=remove)
        assert refused.value.code == ErrorCode.WORKTREE_DIRTY
        assert "cannot save: vendor/lib" in refused.value.message and "release again" in refused.value.message
    assert (nested / "lib.txt").read_text() == "nested\n"
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.BUSY and slot.owner == coord.agent_id
    git(repo, "worktree", "remove", "--force", "--force", str(wt))  # the person deals with it
    await coord.validate(repair=True)

    # A submodule and a sparse checkout: allocated, released clean, validated clean.
    sub = tmp_path / "sub-origin"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    commit(sub, "s.txt", "sub\n")
    subprocess.run(
        ["git", "-C", str(repo), "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub"],
        check=True,
        capture_output=True,
    )
    git(repo, "commit", "-q", "-m", "submodule")
    grant = await coord.pool.allocate("feat/sub", base="main")
    wt = Path(grant.path)
    subprocess.run(
        ["git", "-C", str(wt), "-c", "protocol.file.allow=always", "submodule", "update", "--init", "-q"],
        check=True,
        capture_output=True,
    )
    git(wt, "sparse-checkout", "set", "--no-cone", "/README.md", "/sub")
    assert (await coord.pool.release(worktree_id=grant.worktree_id)).state == "FREE"
    assert [f.kind for f in (await coord.validate(repair=False)).findings] == []


async def test_a_nested_repository_in_a_free_slot_never_reaches_the_next_agent(coord: Any, repo: Path) -> None:
    grant = await coord.pool.allocate("feat/first")
    await coord.pool.release(worktree_id=grant.worktree_id)
    nested = Path(grant.path) / "vendor" / "lib"  # written into the FREE slot behind the pool's back
    nested.mkdir(parents=True)
    git(nested, "init", "-q")
    commit(nested, "lib.txt", "nested\n")
    try:
        other = await coord.pool.allocate("feat/next")
    except CoordError as exc:
        assert exc.code == ErrorCode.GIT_FAILED and "vendor/lib" in exc.message
        other = await coord.pool.allocate("feat/next")
    assert not (Path(other.path) / "vendor").exists()
    slot = next(s for s in await coord.store.slots() if s.id == grant.worktree_id)
    assert slot.state == SlotState.QUARANTINED
    assert (nested / "lib.txt").read_text() == "nested\n"


def group_alive(pgid: int) -> bool:
    """Does any process of the group `pgid` still run (a zombie has ended)?"""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(
        p.info["status"] != psutil.STATUS_ZOMBIE for p in psutil.process_iter(["status"]) if _pgid(p.pid) == pgid
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None
