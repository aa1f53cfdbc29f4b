"""A worktree's whole working tree as a git tree, without touching the agent's index, HEAD or refs.

The agent's index is copied to a scratch file and git runs with `GIT_INDEX_FILE` pointing at the copy:
`git add -A` brings the copy up to the working tree (tracked changes, staged or not, deletions, and
untracked files that are not ignored) and `git write-tree` stores it. The copy carries the agent's
stat data, so only files changed since the agent's own git last looked are read and hashed. The
blobs land in the shared object database as loose objects that nothing references; `git gc` prunes
them after its grace period like any other.

The next snapshot of the same worktree can start from that scratch index instead, which already holds
the working tree as it was: given the directories that changed since (the radar's inotify watcher knows
them), `git add -A` looks only under those. Stat-ing and listing 5,000 files is most of a snapshot's
cost; a few directories cost a fraction of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
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


def _reuse(worktree: Path | Confined, scratch: Path, name: str) -> tuple[Path, str]:
    """(the scratch index a previous snapshot left, what HEAD holds). Blocking."""
    admin = admin_dir(worktree)
    kept = scratch / f"{name}.index"
    if not kept.is_file():
        raise SnapshotError(f"no scratch index {kept} to start from")
    return kept, (admin / "HEAD").read_text(encoding="utf-8").strip()


def pathspecs(top: Path, changed: Collection[str]) -> list[str] | None:
    """The directories to look under again (relative to `top`, each also covering what is below it):
    a directory gone is replaced by its nearest one still there, and one inside another is dropped.
    None when that is the top: everything. Blocking (stats the directories)."""
    found: set[str] = set()
    for relative in changed:
        parts = [p for p in relative.split("/") if p not in ("", ".")]
        if ".." in parts:
            return None
        while parts and not (top.joinpath(*parts).is_dir() and not top.joinpath(*parts).is_symlink()):
            parts.pop()  # deleted, or replaced by a file or a link: its parent holds the change
        if not parts:
            return None
        found.add("/".join(parts))
    return [d for d in sorted(found) if not any(d.startswith(other + "/") for other in found)]


async def snapshot(
    git: GitDriver, worktree: Path | Confined, scratch: Path, name: str, *, since: Collection[str] | None = None
) -> Snapshot:
    """Snapshot `worktree` using `scratch/<name>.index` as the scratch index.

    `since`: the directories (relative, "" the top) changed since the previous snapshot of this worktree
    made that scratch index; only they are looked at again. None: start from the agent's index and look
    at everything."""
    where = worktree.path if isinstance(worktree, Confined) else worktree
    try:
        if since is None:
            index, head = await anyio.to_thread.run_sync(_prepare, worktree, scratch, name)
            look: list[str] | None = None
        else:
            index, head = await anyio.to_thread.run_sync(_reuse, worktree, scratch, name)
            look = await anyio.to_thread.run_sync(pathspecs, Path(where), since)
    except (OSError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"cannot read the git files of {worktree}: {exc}") from exc
    env = {"GIT_INDEX_FILE": str(index)}
    if look is None:
        await git.run(worktree, "add", "-A", "--ignore-errors", env=env)
    elif look:
        # Names from the worktree, read as literal paths (no glob, no magic), NUL-separated on stdin.
        await git.run_input(
            worktree,
            "\0".join(look),
            "add",
            "-A",
            "--ignore-errors",
            "--pathspec-from-file=-",
            "--pathspec-file-nul",
            env={**env, "GIT_LITERAL_PATHSPECS": "1"},
        )
    out = await git.run(worktree, "write-tree", env=env)
    return Snapshot(head=head, tree=out.strip())
