"""One `git worktree list` of a repository, indexed by real path, so that a validation can share it.

Git lists real paths; the store may hold another spelling of the same path (a symlink, a trailing
`/.`), so every lookup goes through `real_path`. Resolving touches the file system, so the batch
helpers do it in a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.engine.git.driver import GitDriver, WorktreeInfo


def real_path(path: str) -> str:
    """The canonical spelling of `path` (blocking: call it from a worker thread)."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        return path


def same_path(a: str, b: str) -> bool:
    """Git lists real paths; the store may hold another spelling of the same one (blocking)."""
    return a == b or real_path(a) == real_path(b)


async def real_paths(paths: Iterable[str]) -> dict[str, str]:
    """Each path → its real path, resolved in one worker thread."""
    wanted = list(paths)
    return await anyio.to_thread.run_sync(lambda: {p: real_path(p) for p in wanted})


@dataclass(frozen=True)
class WorktreeListing:
    """What `git worktree list` said at one moment. It ages: whoever acts on an entry must first check
    that the entry still holds (see `worktree_probe`), or list again."""

    entries: tuple[WorktreeInfo, ...]
    by_path: Mapping[str, WorktreeInfo]

    @classmethod
    async def read(cls, git: GitDriver, repo: Path) -> WorktreeListing:
        """List the repository's worktrees (raises GitError when git cannot)."""
        entries = tuple(await git.worktrees(repo))
        by_path = await anyio.to_thread.run_sync(lambda: {real_path(w.path): w for w in entries})
        return cls(entries, by_path)

    def at(self, resolved: str) -> WorktreeInfo | None:
        """The entry at a path already passed through `real_path`."""
        return self.by_path.get(resolved)

    def paths(self, *, without_prunable: bool = False) -> set[str]:
        """The real paths listed; `without_prunable` leaves out the unlocked entries whose directory is
        gone (what a successful `git worktree prune` has since removed)."""
        return {p for p, w in self.by_path.items() if not (without_prunable and w.prunable and not w.locked)}
