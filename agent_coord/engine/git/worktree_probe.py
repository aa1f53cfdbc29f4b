"""Cheap re-checks of what an earlier `git worktree list` said, from the files git itself reads.

A listing is a few milliseconds of git per call, and a repair used to list again before every
reclaim. What a reclaim or a prune acts on is decided by a handful of files, which these functions
read directly (no git process):

* `<worktree>/.git`, a file `gitdir: <admin dir>` (`.git/worktrees/<name>`), and that admin
  directory's `gitdir` file naming `<worktree>/.git` back: git lists the worktree iff the admin
  directory names it, and calls it *prunable* iff that `.git` is gone;
* `<admin dir>/locked`: `git worktree lock`, which git's listing reports and `git worktree prune`
  honours.

They are blocking (small file reads): run them in a worker thread.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from agent_coord.engine.git.confinement import Confined, Unconfined, check_slot
from agent_coord.engine.git.driver import WorktreeInfo
from agent_coord.engine.git.worktree_listing import real_path
from agent_coord.engine.git.worktree_record import gitdir_of


class OnDisk(enum.Enum):
    WORKTREE = "worktree"  # a linked worktree git lists at this path
    LOCKED = "locked"  # the same, locked
    NOTHING = "nothing"  # no `.git` at the path: no worktree, or one git would call prunable
    OTHER = "other"  # a `.git` that is no linked worktree of a listing (a copy, a repository, unreadable)


def probe_worktree(path: Path, common_dir: Path | None = None) -> OnDisk:
    """What is at `path` now, as far as `git worktree list` of the repository whose `.git` is
    `common_dir` is concerned.

    Without `common_dir` a linked worktree of any repository counts: the path may have been re-created
    as a worktree of another repository since the listing was taken, and acting on it would run
    status, rescue or discard against that repository. Callers that know the repository pass it."""
    dotgit = path / ".git"
    try:
        if not os.path.lexists(dotgit):
            return OnDisk.NOTHING
        if not dotgit.is_file():
            return OnDisk.OTHER
        admin = gitdir_of(path)
        if admin is None:
            return OnDisk.OTHER
        # Resolved whole, as in `worktree_record`: a link in place of the admin directory counts as its target.
        if common_dir is not None and admin.resolve().parent != (common_dir / "worktrees").resolve():
            return OnDisk.OTHER  # an admin directory of another repository
        back = (admin / "gitdir").read_text(encoding="utf-8").strip()
        if not back or real_path(str(admin / back)) != real_path(str(dotgit)):
            return OnDisk.OTHER
        # lexists, as git (lstat): a dangling link or a directory named `locked` is a lock too.
        return OnDisk.LOCKED if os.path.lexists(admin / "locked") else OnDisk.WORKTREE
    except (OSError, UnicodeDecodeError, RuntimeError):  # RuntimeError: a symlink loop
        return OnDisk.OTHER


def listing_holds(info: WorktreeInfo | None, now: OnDisk) -> bool:
    """Whether what the listing said of a path (`info`) still holds, given what is there now."""
    if info is None or info.prunable:
        return now is OnDisk.NOTHING
    return now in (OnDisk.WORKTREE, OnDisk.LOCKED)


@dataclass(frozen=True)
class AdminDir:
    """One `.git/worktrees/<name>` directory, judged as `git worktree prune` (no `--expire`) would."""

    path: Path
    worktree: str | None  # the real path of its worktree; None when its `gitdir` file is unreadable
    locked: bool
    prunable: bool  # what `git worktree prune` removes: unlocked, and its worktree's `.git` is gone
    # Which directory this is: its (device, inode) and its HEAD. A directory pruned and made again
    # under the same name by someone else differs. (Not the index: our own `write-tree` rewrites it.)
    stamp: tuple[object, ...] = ()


def scan_admin_dirs(common_dir: Path) -> list[AdminDir]:
    """Every worktree administrative directory of a repository (`common_dir` is its `.git`)."""
    base = common_dir / "worktrees"
    if not base.is_dir():
        return []
    # A symlink in place of an admin directory is nothing git made: it is left alone, never deleted.
    return [judge_admin_dir(d) for d in sorted(base.iterdir()) if d.is_dir() and not d.is_symlink()]


def judge_admin_dir(d: Path) -> AdminDir:
    """One administrative directory `d`, as `git worktree prune` would judge it now. A directory that
    is gone by now reads as prunable with no worktree (its `gitdir` is unreadable)."""
    locked = os.path.lexists(d / "locked")  # git tests the lock with lstat
    try:
        gitfile = (d / "gitdir").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        gitfile = ""
    stamp = _stamp(d)
    if not gitfile:
        return AdminDir(d, None, locked, not locked, stamp)
    target = d / gitfile  # git ≥ 2.48 may write it relative to the admin directory
    prunable = not locked and not os.path.lexists(target)
    return AdminDir(d, real_path(str(target.parent)), locked, prunable, stamp)


def _stamp(d: Path) -> tuple[object, ...]:
    try:
        st = os.lstat(d)
        identity: object = (st.st_dev, st.st_ino)
    except OSError:
        identity = None
    try:
        head: object = (d / "HEAD").read_bytes()
    except OSError:
        head = None
    return (identity, head)


def index_locked(path: Path) -> bool:
    """Does the linked worktree at `path` have an `index.lock` (a git at work in it, or one that was
    killed)? True also when that cannot be read: the caller then takes the path that lets git decide."""
    try:
        admin = gitdir_of(path)
        return admin is None or os.path.lexists(admin / "index.lock")
    except (OSError, UnicodeDecodeError):
        return True


# What `git worktree add` writes to `<admin dir>/locked` while it populates a new worktree, and deletes
# when it is done (builtin/worktree.c; our git runs with LC_ALL=C). An add that was killed leaves it.
GIT_ADD_MARKER = "initializing"


def clear_add_marker(path: Path, since: float) -> bool:
    """Remove the lock an interrupted `git worktree add` left on the worktree at `path`, if that add was
    ours: the marker's exact text, written no earlier than `since` (the claim that ran the add). A lock
    with any other reason, or older, is a person's and stays. True when one was removed."""
    try:
        admin = gitdir_of(path)
        if admin is None:
            return False
        lock = admin / "locked"
        if lock.is_symlink() or not lock.is_file():
            return False
        if lock.read_text(encoding="utf-8").strip() != GIT_ADD_MARKER or lock.stat().st_mtime < since - 1:
            return False
        lock.unlink()
        return True
    except (OSError, UnicodeDecodeError):
        return False


def clear_confined_add_marker(slot: Confined, since: float) -> bool:
    """`clear_add_marker`, only in a slot that passes the confinement guard: it deletes a file in the
    administrative directory that the slot's `.git` names, which must be this repository's."""
    try:
        check_slot(slot.bounds, slot.path)
    except Unconfined:
        return False
    return clear_add_marker(slot.path, since)
