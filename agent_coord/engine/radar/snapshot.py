"""A worktree's whole working tree as a git tree, without touching the agent's index, HEAD or refs.

The agent's index is copied to a scratch file and git runs with `GIT_INDEX_FILE` pointing at the copy:
`git add -A` brings the copy up to the working tree (tracked changes, staged or not, deletions, and
untracked files that are not ignored) and `git write-tree` stores it. The copy carries the agent's
stat data, so only files changed since the agent's own git last looked are read and hashed. The
blobs land in the shared object database as loose objects that nothing references; `git gc` prunes
them after its grace period like any other.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import Confined, check_slot
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.worktree_record import gitdir_of


@dataclass(frozen=True)
class Snapshot:
    head: str  # what HEAD holds: "ref: refs/heads/<branch>" or a commit id (see Predictor.resolve_head)
    tree: str  # the working tree, uncommitted and untracked work included


class SnapshotError(Exception):
    pass


def admin_dir(worktree: Path | Confined) -> Path:
    """The git administrative directory of a worktree; a pool slot must pass the confinement guard
    first (a slot swapped for a symlink or another repository's worktree is never read). Blocking."""
    if isinstance(worktree, Confined):
        return check_slot(worktree.bounds, worktree.path).admin
    admin = gitdir_of(worktree) if (worktree / ".git").is_file() else worktree / ".git"
    if admin is None:
        raise SnapshotError(f"{worktree} is not a git worktree")
    return admin


def _prepare(worktree: Path | Confined, scratch: Path, name: str) -> tuple[Path, str]:
    """(copy of the agent's index, what HEAD holds). Blocking."""
    admin = admin_dir(worktree)
    copy = scratch / f"{name}.index"
    try:
        shutil.copyfile(admin / "index", copy)
    except FileNotFoundError:
        copy.unlink(missing_ok=True)  # no index yet: git starts from an empty one
    head = (admin / "HEAD").read_text(encoding="utf-8").strip()
    return copy, head


async def snapshot(git: GitDriver, worktree: Path | Confined, scratch: Path, name: str) -> Snapshot:
    """Snapshot `worktree` using `scratch/<name>.index` as the scratch index."""
    try:
        copy, head = await anyio.to_thread.run_sync(_prepare, worktree, scratch, name)
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"cannot read the git files of {worktree}: {exc}") from exc
    env = {"GIT_INDEX_FILE": str(copy)}
    await git.run(worktree, "add", "-A", "--ignore-errors", env=env)
    out = await git.run(worktree, "write-tree", env=env)
    return Snapshot(head=head, tree=out.strip())
