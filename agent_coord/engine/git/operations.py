"""Git operations stopped half-way in a worktree (a rebase, a merge, …), read from its admin files.

A worktree in such a state looks clean to `git status` (a rebase stopped at an `edit` step has no
changes), yet git refuses to switch it to another branch: released or freed so, it breaks the next
allocation. The markers live in the worktree's own admin directory (`.git/worktrees/<name>/`, or
`.git/` for a main worktree), which `<worktree>/.git` names; reading them costs a few `stat`s and no
git process. Blocking: call from a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent_coord.engine.git.driver import WorktreeInfo
from agent_coord.engine.git.worktree_listing import WorktreeListing
from agent_coord.engine.git.worktree_record import gitdir_of


@dataclass(frozen=True)
class Operation:
    name: str  # "rebase", "merge", …
    marker: str  # the admin file or directory that says so
    finish: str  # what a person or agent does about it, in that worktree


# In the order git would report them; the first found names the operation.
OPERATIONS = (
    Operation("rebase", "rebase-merge", "git rebase --continue, or git rebase --abort"),
    Operation("rebase or am", "rebase-apply", "git rebase --continue / git am --continue, or --abort"),
    Operation("merge", "MERGE_HEAD", "commit the merge, or git merge --abort"),
    Operation("cherry-pick", "CHERRY_PICK_HEAD", "git cherry-pick --continue, or git cherry-pick --abort"),
    Operation("revert", "REVERT_HEAD", "git revert --continue, or git revert --abort"),
    Operation("cherry-pick or revert sequence", "sequencer", "git cherry-pick --continue or --abort (or revert)"),
    Operation("bisect", "BISECT_START", "git bisect reset"),
    Operation("bisect", "BISECT_LOG", "git bisect reset"),
)
INDEX_LOCK = Operation(
    "git command (index.lock)",
    "index.lock",
    "wait for it to finish; if no git process runs there, delete the index.lock file",
)


def admin_dir(worktree: Path) -> Path | None:
    """The worktree's own git directory, or None when `<worktree>/.git` does not say."""
    dotgit = worktree / ".git"
    try:
        if dotgit.is_dir() and not dotgit.is_symlink():
            return dotgit
        return gitdir_of(worktree)
    except (OSError, UnicodeDecodeError):
        return None


def operation_in_progress(worktree: Path, *, with_index_lock: bool = False) -> tuple[Operation, Path] | None:
    """The operation stopped in `worktree` and the marker that says so, or None. With
    `with_index_lock`, a git command holding (or a killed one having left) the index lock counts."""
    admin = admin_dir(worktree)
    if admin is None:
        return None
    candidates = (*OPERATIONS, INDEX_LOCK) if with_index_lock else OPERATIONS
    for operation in candidates:
        marker = admin / operation.marker
        if os.path.lexists(marker):
            return operation, marker
    return None


@dataclass(frozen=True)
class IndexLock:
    """An `index.lock` seen in a worktree: which file it is (a new lock is a new file) and how old."""

    marker: Path
    identity: tuple[int, int, int]  # device, inode, modification time in ns
    age_s: float


def index_lock(worktree: Path, now: float) -> IndexLock | None:
    """The worktree's `index.lock`, or None. Any git that reads the index with optional locks (an
    editor's `git status`, a person's) holds one for milliseconds; a killed git leaves one for good."""
    admin = admin_dir(worktree)
    if admin is None:
        return None
    marker = admin / INDEX_LOCK.marker
    try:
        st = os.lstat(marker)
    except OSError:
        return None
    return IndexLock(marker, (st.st_dev, st.st_ino, st.st_mtime_ns), max(0.0, now - st.st_mtime))


def describe(found: tuple[Operation, Path], worktree: Path) -> str:
    operation, marker = found
    return f"a {operation.name} is in progress in {worktree} ({marker}); {operation.finish}"


def moved_worktree(listing: WorktreeListing, slot_path: str, branch: str | None) -> WorktreeInfo | None:
    """The worktree git lists elsewhere that was the slot's at `slot_path` before someone ran `git
    worktree move`. git keeps a moved worktree's administrative directory, named after the slot, so that
    name identifies it; the branch alone does not (a person's own worktree elsewhere may have the slot's
    branch checked out, and it must never be moved into the pool). The main worktree never matches."""
    for info in listing.entries:
        if Path(info.path) == Path(slot_path):
            return None
    name = Path(slot_path).name
    for info in listing.entries:
        admin = admin_dir(Path(info.path))
        if admin is None or admin.parent.name != "worktrees" or admin.name != name:
            continue
        if (info.branch == branch) if branch is not None else info.detached:
            return info
    return None


def unsaveable_work(worktree: Path, changed: list[str]) -> list[str]:
    """The changed entries (`git status` lines, "XY path") whose contents a rescue ref cannot hold: a
    nested git repository, or a submodule with changes inside. Each has its own `.git`; a rescue
    records at most its commit, and the clean-up never deletes it (`git clean` without `-ff`), so
    such a slot can be neither saved nor cleaned. Blocking."""
    found: list[str] = []
    for line in changed:
        name = line[3:].rstrip("/")
        if name and os.path.lexists(worktree / name / ".git"):
            found.append(name)
    return found
