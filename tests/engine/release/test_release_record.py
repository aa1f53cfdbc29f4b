"""A release reads its slot's git record from the admin files; where they do not settle it, git's listing
decides. Either way a locked worktree is never released and a slot git does not list is not touched."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.worktree_record import WorktreeRecord, read_worktree_record
from agent_coord.engine.store.records import SlotState
from tests.conftest import git, make_repo


def record(repo: Path, path: Path) -> WorktreeRecord | None:
    return read_worktree_record(repo / ".git", path.resolve())


def listed(repo: Path, path: Path) -> Any:
    return next((w for w in anyio.run(GitDriver().worktrees, repo) if Path(w.path) == path.resolve()), None)


def test_the_record_agrees_with_git_worktree_list(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    plain, locked, bare_lock = tmp_path / "plain", tmp_path / "locked", tmp_path / "bare-lock"
    for wt in (plain, locked, bare_lock):
        git(repo, "worktree", "add", "-q", "--detach", str(wt))
    git(repo, "worktree", "lock", "--reason", "  a person is using it  ", str(locked))
    git(repo, "worktree", "lock", str(bare_lock))
    for wt in (plain, locked, bare_lock):
        info = listed(repo, wt)
        assert record(repo, wt) == WorktreeRecord(locked=info.locked, lock_reason=info.lock_reason), wt
    assert record(repo, locked) == WorktreeRecord(locked=True, lock_reason="a person is using it")


def test_what_the_files_do_not_settle_is_left_to_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    other = make_repo(tmp_path, "other")
    gone, copied, foreign = tmp_path / "gone", tmp_path / "copied", tmp_path / "foreign"
    git(repo, "worktree", "add", "-q", "--detach", str(gone))
    git(repo, "worktree", "add", "-q", "--detach", str(copied / "orig"))
    git(other, "worktree", "add", "-q", "--detach", str(foreign))
    (gone / ".git").unlink()  # git lists it as prunable
    shutil.copytree(copied / "orig", copied / "copy")  # its `.git` points at an admin dir naming another path
    assert record(repo, gone) is None and listed(repo, gone).prunable
    assert record(repo, copied / "copy") is None and listed(repo, copied / "copy") is None
    assert record(repo, foreign) is None  # another repository's worktree
    assert record(repo, repo) is None  # the main worktree: `.git` is a directory
    assert record(repo, tmp_path / "nothing-here") is None


@pytest.mark.anyio
async def test_a_lock_is_honoured_and_its_reason_named(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("locked-one")
    git(repo, "worktree", "lock", "--reason", "reviewing", a.path)
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert err.value.code == ErrorCode.WORKTREE_LOCKED and "reviewing" in err.value.message
    assert git(Path(a.path), "symbolic-ref", "--short", "HEAD").strip() == "locked-one"  # untouched
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY


@pytest.mark.anyio
async def test_a_slot_with_a_broken_git_file_is_still_judged_by_git(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("broken")
    git(repo, "worktree", "lock", "--reason", "kept", a.path)
    (Path(a.path) / ".git").write_text("not a gitdir line\n")  # the files no longer settle it: git's listing does
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert err.value.code == ErrorCode.WORKTREE_LOCKED and "kept" in err.value.message


def _admin_dir(repo: Path, slot: Path) -> Path:
    gitdir = (slot / ".git").read_text().strip().removeprefix("gitdir: ")
    return (slot / gitdir).resolve()


@pytest.mark.anyio
async def test_a_lock_that_is_not_a_plain_file_still_locks(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("odd-lock")
    (Path(a.path) / "work.txt").write_text("unsaved\n")
    (_admin_dir(repo, Path(a.path)) / "locked").symlink_to("/nonexistent/lock")  # git lstat()s it: locked
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert err.value.code == ErrorCode.WORKTREE_LOCKED
    assert (Path(a.path) / "work.txt").read_text() == "unsaved\n"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY


@pytest.mark.anyio
async def test_git_failing_to_list_refuses_the_release_and_keeps_the_record(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("unlistable")
    (Path(a.path) / "work.txt").write_text("unsaved\n")
    (_admin_dir(repo, Path(a.path)) / "locked").mkdir()  # `git worktree list` dies reading it
    (Path(a.path) / ".git").rename(Path(a.path) / ".git-aside")  # and the files no longer settle it
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert err.value.code == ErrorCode.GIT_FAILED and "nothing was released" in err.value.message
    assert (Path(a.path) / "work.txt").read_text() == "unsaved\n"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY
