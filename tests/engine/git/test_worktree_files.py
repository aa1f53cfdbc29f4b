"""An allocation's worktree listing read from git's files agrees with `git worktree list`, or declines."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent_coord.engine.git.driver import GitDriver, WorktreeInfo
from agent_coord.engine.git.worktree_files import read_worktrees
from tests.conftest import git

pytestmark = pytest.mark.anyio


def facts(infos: list[WorktreeInfo]) -> dict[str, tuple[object, ...]]:
    return {str(Path(w.path).resolve()): (w.branch, w.detached, w.locked, w.lock_reason, w.prunable) for w in infos}


async def agrees_with_git(repo: Path) -> list[WorktreeInfo]:
    ours = read_worktrees(repo, repo / ".git")
    assert ours is not None
    theirs = await GitDriver().worktrees(repo)
    assert facts(ours) == facts(theirs)
    main = next(w for w in theirs if Path(w.path) == repo.resolve())
    assert ours[0].head == (main.head if main.head and main.head.strip("0") else None)
    return ours


async def test_every_kind_of_worktree_reads_as_git_lists_it(repo: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    git(repo, "worktree", "add", "-q", "-b", "on-branch", str(pool / "a"))
    git(repo, "worktree", "add", "-q", "--detach", str(pool / "b"))
    git(repo, "worktree", "add", "-q", "-b", "locked", str(pool / "c"))
    git(repo, "worktree", "lock", "--reason", "a person's", str(pool / "c"))
    git(repo, "worktree", "add", "-q", "-b", "gone", str(pool / "d"))
    shutil.rmtree(pool / "d")
    git(repo, "worktree", "add", "-q", "-b", "nested/name", str(pool / "e"))
    git(repo, "worktree", "add", "-q", "-b", "locked-gone", str(pool / "f"))
    git(repo, "worktree", "lock", str(pool / "f"))
    shutil.rmtree(pool / "f")
    await agrees_with_git(repo)
    git(repo, "pack-refs", "--all")  # the main worktree's branch tip from packed-refs
    await agrees_with_git(repo)
    git(repo, "switch", "-q", "--detach")
    await agrees_with_git(repo)


async def test_an_unborn_main_branch_has_no_head(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (listed,) = await agrees_with_git(repo)
    assert listed.head is None and listed.branch == "main"


async def test_what_git_might_read_differently_is_left_to_git(repo: Path, tmp_path: Path) -> None:
    git(repo, "worktree", "add", "-q", "-b", "x", str(tmp_path / "pool" / "x"))
    admin = repo / ".git" / "worktrees" / "x"
    gitdir = (admin / "gitdir").read_text()
    (admin / "gitdir").write_text("../../../pool/x/.git\n")  # relative (git >= 2.48 may write these)
    assert read_worktrees(repo, repo / ".git") is None
    (admin / "gitdir").write_text(gitdir)
    (repo / ".git" / "worktrees" / "stray-file").write_text("not a worktree\n")
    assert read_worktrees(repo, repo / ".git") is None
    (repo / ".git" / "worktrees" / "stray-file").unlink()
    (admin / "HEAD").write_text("ref: refs/remotes/origin/x\n")
    assert read_worktrees(repo, repo / ".git") is None
