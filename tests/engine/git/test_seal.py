"""The seal a release leaves on a clean slot lets the next allocation skip `git status`, and never
hides a change: an unstaged edit of a tracked file, a new untracked file and a staged change made
between the release and the next allocation each send the allocation back to `git status`, which
saves the change to a rescue ref before the switch (git/seal.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.git import seal
from tests.conftest import git
from tests.engine.git.seal_support import (
    beside,
    file_clock_past,
    index_not_racy,
    newest_file_mtime_ns,
    quiet_for_the_margin,
    short_margin,
)
from tests.engine.git.test_git_processes import spied

pytestmark = pytest.mark.anyio


def admin_of(wt: Path) -> Path:
    return Path(git(wt, "rev-parse", "--absolute-git-dir").strip())


async def sealed_slot(coord: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A FREE slot whose release sealed it (its files older than the margin when it was released)."""
    short_margin(monkeypatch)
    first = await coord.pool.allocate("feat/sealed")
    wt = Path(first.path)
    (wt / "tracked.txt").write_text("as committed\n")
    git(wt, "add", "tracked.txt")
    git(wt, "commit", "-q", "-m", "a tracked file")
    await index_not_racy(wt)
    await quiet_for_the_margin(wt)
    await coord.pool.release(worktree_id=first.worktree_id)
    assert (admin_of(wt) / seal.SEAL_FILE).is_file()
    return first.worktree_id, wt


def unstaged_edit(wt: Path) -> str:
    (wt / "tracked.txt").write_text("edited in place\n")
    return "tracked.txt"


def unstaged_edit_same_size_old_mtime(wt: Path) -> str:
    # Same size, and the modification time put back: only the change time tells.
    st = os.stat(wt / "tracked.txt")
    with open(wt / "tracked.txt", "r+") as f:
        f.write("AS")
    os.utime(wt / "tracked.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    return "tracked.txt"


def new_untracked_file(wt: Path) -> str:
    (wt / "deep").mkdir()
    (wt / "deep" / "new.txt").write_text("untracked\n")
    return "deep/new.txt"


def staged_change(wt: Path) -> str | None:
    # Staged only: the index changes, the file on disk does not (the rescue holds the same files).
    git(wt, "rm", "-q", "--cached", "tracked.txt")
    return None


@pytest.mark.parametrize("touch", [unstaged_edit, unstaged_edit_same_size_old_mtime, new_untracked_file, staged_change])
async def test_a_change_since_the_seal_is_caught(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch, touch: Callable[[Path], str | None]
) -> None:
    slot_id, wt = await sealed_slot(coord, monkeypatch)
    changed = touch(wt)
    with spied(coord.pool.git) as calls:
        again = await coord.pool.allocate("feat/next")
    assert again.worktree_id == slot_id
    assert "status" in [c[0] for c in calls]
    rescues = [e for e in await coord.store.events() if e.action == "rescue"]
    assert [e.detail["reason"] for e in rescues] == ["stray changes in a free slot"]
    ref = rescues[0].detail["rescue_ref"]
    if changed is not None:
        assert changed in git(repo, "diff", "--name-only", "feat/sealed", ref).split()
    # Nothing followed the slot into the new agent's branch.
    assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(wt, "symbolic-ref", "--short", "HEAD").strip() == "feat/next"


async def test_an_untouched_sealed_slot_skips_the_status(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slot_id, wt = await sealed_slot(coord, monkeypatch)
    with spied(coord.pool.git) as calls:
        again = await coord.pool.allocate("feat/next")
    assert again.worktree_id == slot_id and "status" not in [c[0] for c in calls]
    assert not (admin_of(wt) / seal.SEAL_FILE).exists()  # used once
    assert [e for e in await coord.store.events() if e.action == "rescue"] == []


async def test_commits_only_on_a_sealed_slots_head_are_rescued(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The branch the slot was released from is deleted after the seal: its commits are saved all the same."""
    slot_id, wt = await sealed_slot(coord, monkeypatch)
    lonely = git(wt, "rev-parse", "HEAD").strip()
    git(repo, "branch", "-D", "feat/sealed")
    again = await coord.pool.allocate("feat/next")
    assert again.worktree_id == slot_id
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue").split()
    assert any(
        subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", lonely, r]).returncode == 0 for r in refs
    )


@pytest.mark.parametrize("during", ["write", "stage"])
async def test_a_change_while_the_release_runs_leaves_no_seal_that_hides_it(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch, during: str
) -> None:
    """Written (or staged) after the release's status and before its seal: the next allocation still
    sees it."""
    short_margin(monkeypatch)
    first = await coord.pool.allocate("feat/busy")
    wt = Path(first.path)
    await quiet_for_the_margin(wt)
    detach = coord.pool.git.detach

    async def detach_then_touch(slot: Any) -> None:
        await detach(slot)
        if during == "write":
            (wt / "README.md").write_text("written during the release\n")
        else:
            git(wt, "rm", "-q", "--cached", "README.md")

    monkeypatch.setattr(coord.pool.git, "detach", detach_then_touch)
    await coord.pool.release(worktree_id=first.worktree_id)
    monkeypatch.undo()
    again = await coord.pool.allocate("feat/after")
    assert again.worktree_id == first.worktree_id
    rescues = [e for e in await coord.store.events() if e.action == "rescue"]
    assert [e.detail["reason"] for e in rescues] == ["stray changes in a free slot"]
    assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""


async def test_a_packed_release_branch_is_asked_of_git(coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a loose ref file naming HEAD spares the unsaved-commit count; a packed ref is git's to read."""
    slot_id, _ = await sealed_slot(coord, monkeypatch)
    git(repo, "pack-refs", "--all")
    with spied(coord.pool.git) as calls:
        again = await coord.pool.allocate("feat/next")
    commands = [c[0] for c in calls]
    assert again.worktree_id == slot_id and "rev-list" in commands and "status" not in commands
    assert [e for e in await coord.store.events() if e.action == "rescue"] == []


async def test_a_racily_clean_index_is_refreshed_by_a_status_before_it_is_trusted(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files written in the second their index was (a fresh worktree): git re-reads them at every status
    until the index is written back, so the allocation runs its status (which writes it) rather than
    skip it; the next one is spared."""
    short_margin(monkeypatch)
    first = await coord.pool.allocate("feat/racy")
    wt = Path(first.path)
    index = admin_of(wt) / "index"
    racy = os.lstat(index).st_mtime_ns // 10**9 <= newest_file_mtime_ns(wt) // 10**9
    # From now on a status that writes the index stamps it in a later second than every file: not racy.
    await file_clock_past(newest_file_mtime_ns(wt), beside(wt))
    await quiet_for_the_margin(wt)
    await coord.pool.release(worktree_id=first.worktree_id)
    with spied(coord.pool.git) as calls:
        second = await coord.pool.allocate("feat/after-racy")
    assert ("status" in [c[0] for c in calls]) == racy
    await quiet_for_the_margin(wt)
    await coord.pool.release(worktree_id=second.worktree_id)
    with spied(coord.pool.git) as calls:
        await coord.pool.allocate("feat/spared")
    assert "status" not in [c[0] for c in calls]
