"""What `git worktree prune` does, but only to what was saved first.

Pruning deletes the administrative directory of a vanished worktree: its HEAD and its index. A
detached HEAD's own commits and anything staged would then be unreachable, so each prunable entry's
staged index and unsaved commits go to a verified rescue ref first. An entry that cannot be saved
(an index in the middle of a merge conflict, which `git write-tree` refuses) is kept, and the
others are still pruned: one stuck entry must not stop every later reclaim in the repository.

`git worktree prune` itself is not run: it deletes every vanished entry of the repository at the
moment it runs, also one whose directory went away after our saves (several git processes earlier),
or one another task or process is saving from right then. Instead exactly the administrative
directories that were saved are deleted, each re-judged just before as git would (still unlocked,
its worktree's `.git` still gone, still naming the same path). Whatever vanishes later is left to
the next prune, which saves it first. Prunes of one repository in this process also take turns, so
two reclaims do not save the same entries twice or delete what the other is reading.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.git.driver import RESCUE_NAMESPACE, GitError, WorktreeInfo
from agent_coord.engine.git.worktree_listing import WorktreeListing
from agent_coord.engine.git.worktree_probe import AdminDir, judge_admin_dir, scan_admin_dirs
from agent_coord.engine.reclaim.rescue import GoneWorktree, Whose, save_work
from agent_coord.engine.store.records import Repo


@dataclass(frozen=True)
class SavedEntry:
    path: str
    rescue_ref: str
    commit: str


@dataclass(frozen=True)
class PruneResult:
    rescue_refs: dict[str, str] = field(default_factory=dict)  # real worktree path → rescue ref
    ran: bool = True  # False: the prune could not look (git failed) or could not delete
    kept: frozenset[str] = frozenset()  # real worktree paths whose entry could not be saved: untouched

    @property
    def pruned(self) -> bool:
        """Every prunable entry was saved and git's entries of them are gone."""
        return self.ran and not self.kept

    def settled(self, real_path: str) -> bool:
        """The entry of the worktree at `real_path` was saved and removed, or was not there to prune."""
        return self.ran and real_path not in self.kept


class SafePruner(OverEngine):
    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        # One prune at a time per repository (keyed by its `.git`); made on first use, in the event loop.
        self._turns: dict[str, anyio.Lock] = {}

    async def prune(self, repo: Repo, reason: str, listing: WorktreeListing | None = None) -> PruneResult:
        """Save every prunable entry, then prune it. With the `listing` of an earlier `git worktree list`
        no new listing is taken, unless the administrative directories show an entry it lacks."""
        common = repo.git_dir
        turn = self._turns.setdefault(str(common), anyio.Lock())
        async with turn:
            # A prune that waited here sees what the one before it deleted: its scan comes after.
            return await self._prune(repo, common, reason, listing)

    async def _prune(self, repo: Repo, common: Path, reason: str, listing: WorktreeListing | None) -> PruneResult:
        repo_path = Path(repo.path)
        if listing is not None:
            admin = await anyio.to_thread.run_sync(scan_admin_dirs, common)
            entries = _still_doomed(listing, admin)
            if entries is not None:
                if not entries:
                    return PruneResult()  # nothing is prunable any more (an earlier prune of this run)
                return await self._save_then_prune(repo, entries, listing, admin, reason)
        try:
            listing = await WorktreeListing.read(self.git, repo_path)
        except GitError:
            return PruneResult(ran=False)
        # Read after the listing, so that every listed entry's admin directory (its index) is seen.
        admin = await anyio.to_thread.run_sync(scan_admin_dirs, common)
        entries = [w for w in listing.entries if w.prunable and not w.locked]
        if not entries:
            return PruneResult()
        return await self._save_then_prune(repo, entries, listing, admin, reason)

    async def _save_then_prune(
        self, repo: Repo, entries: list[WorktreeInfo], listing: WorktreeListing, admin: list[AdminDir], reason: str
    ) -> PruneResult:
        admin_of = {a.worktree: a for a in admin if a.worktree is not None}
        real = {id(w): p for p, w in listing.by_path.items()}
        saved: dict[str, str] = {}
        kept: set[str] = set()
        done: list[AdminDir] = []  # the admin directories whose worktree's work is now safe
        for info in entries:
            path = real.get(id(info))
            if path is None:
                # Two entries resolve to one real path (a symlink changed since): which admin directory
                # belongs to which is not certain, so neither is touched.
                kept.add(info.path)
                continue
            own = admin_of.get(path)
            try:
                entry = await self._save_entry(repo, info, own.path if own is not None else None, reason)
            except (GitError, OSError):
                kept.add(path)  # not saved, so not deleted; the others still are
                continue
            if entry is not None:
                saved[path] = entry.rescue_ref
            if own is not None:
                done.append(own)
        try:
            # Not `git worktree prune`: it would also delete entries that vanished after these saves
            # (see the module docstring). Only what was saved goes.
            await anyio.to_thread.run_sync(_delete_saved, done)
        except OSError:
            return PruneResult(saved, ran=False, kept=frozenset(kept))
        return PruneResult(saved, kept=frozenset(kept))

    async def _save_entry(self, repo: Repo, info: WorktreeInfo, admin: Path | None, reason: str) -> SavedEntry | None:
        repo_path = Path(repo.path)
        head = info.head if info.head and set(info.head) != {"0"} else None
        index: Path | None = None
        staged = False
        if admin is not None and await anyio.Path(admin / "index").is_file():
            # The index of the vanished worktree still names every staged blob (they are in the object
            # store). Read only: the comparison writes nothing back into it.
            index = admin / "index"
            on_index = {"GIT_INDEX_FILE": str(index)}
            if head is not None:
                diff = await self.git.run(repo_path, "diff-index", "--cached", "--name-only", "-z", head, env=on_index)
            else:
                diff = await self.git.run(repo_path, "ls-files", "-z", env=on_index)
            staged = bool(diff)
        unsaved = bool(head) and info.detached and await self._only_reachable_here(repo_path, head or "")
        if not staged and not unsaved:
            return None
        saved = await save_work(
            self.git,
            self.store,
            self.identity.agent_id,
            Whose(repo.id, None, info.branch),
            GoneWorktree(repo_path, info.path, index, head),
            reason,
            detail={"path": info.path, "saved": "staged index" if staged else "detached HEAD commits"},
        )
        return SavedEntry(info.path, saved.ref, saved.commit)

    async def _only_reachable_here(self, repo: Path, commit: str) -> bool:
        count = await self.git.run(
            repo,
            "rev-list",
            "--count",
            commit,
            "--not",
            "--branches",
            "--tags",
            "--remotes",
            f"--glob={RESCUE_NAMESPACE.removeprefix('refs/')}/*",
        )
        return int(count.strip() or 0) > 0


def _still_doomed(listing: WorktreeListing, admin: list[AdminDir]) -> list[WorktreeInfo] | None:
    """The listed entries a prune would delete now, or None when the listing is stale.

    Why this is enough: git prunes exactly the unlocked admin directories whose worktree's `.git` is
    gone, which is what `admin` was just read from. If each of them is an entry the listing saw as
    prunable (a vanished worktree's HEAD and index do not change), saving those entries saves
    everything the prune deletes. An entry that vanished after the listing fails the check, and the
    caller lists again. An admin directory whose `gitdir` cannot be read is left out: git does not list
    it, so nothing tells whose work its index holds, and `_delete_saved` never deletes it.
    """
    doomed = [a for a in admin if a.prunable and a.worktree is not None]
    if any(a.worktree is None or (w := listing.at(a.worktree)) is None or not w.prunable for a in doomed):
        return None
    # The locks are the scan's, not the listing's: a worktree unlocked since is pruned, so it is saved.
    found = {a.worktree: listing.at(a.worktree) for a in doomed if a.worktree is not None}
    return [w for w in found.values() if w is not None]


def _delete_saved(saved: list[AdminDir]) -> None:
    """Delete each saved admin directory that git would still prune (blocking: a worker thread).

    Re-judged right before, from the files `git worktree prune` reads: one locked since, or whose
    worktree is back, or which names another path now, is not what was saved, so it stays. The span
    between that check and the deletion is the one git's own prune has; it is file reads, no process.
    """
    for was in saved:
        now = judge_admin_dir(was.path)
        # `stamp` (the directory's identity, its HEAD, its index's size and time) tells a directory
        # that was pruned and made again under the same name by someone else since the save.
        if now.prunable and now.worktree is not None and now.worktree == was.worktree and now.stamp == was.stamp:
            if sys.version_info >= (3, 12):
                shutil.rmtree(was.path, onexc=_gone_is_fine_exc)
            else:
                shutil.rmtree(was.path, onerror=_gone_is_fine)


def _gone_is_fine(func: object, path: str, exc_info: tuple[type[BaseException], BaseException, object]) -> None:
    _gone_is_fine_exc(func, path, exc_info[1])


def _gone_is_fine_exc(func: object, path: str, exc: BaseException) -> None:
    # Another process pruning the same entry at once removes some files first: that is the goal too.
    if not isinstance(exc, FileNotFoundError):
        raise exc
