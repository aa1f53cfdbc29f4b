"""Taking slots back from dead or stale agents without losing a byte of their work.

The reclaimer first moves the slot to RELEASING under its own name (a CAS on the version), so two
reclaimers never work on one slot, and one that dies half-way leaves a row the next validation takes
over (its lease lapses, or its server is gone); each step is idempotent. What it then does with the
worktree is `job.py`'s business; pruning vanished worktrees is `safe_prune.py`'s.

A `git worktree lock`ed worktree is never touched.

Which `git worktree list` a reclaim acts on: a standalone reclaim lists the worktrees itself. A
validation lists each repository once and hands that listing to every reclaim it makes; each reclaim
then checks its own slot's entry against the disk (`worktree_probe`) instead of listing again.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import anyio
from opentelemetry import trace

from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.git.driver import GitError, WorktreeInfo
from agent_coord.engine.git.worktree_listing import WorktreeListing, real_paths, same_path
from agent_coord.engine.git.worktree_probe import (
    OnDisk,
    clear_confined_add_marker,
    listing_holds,
    probe_worktree,
)
from agent_coord.engine.reclaim.job import ReclaimJob
from agent_coord.engine.reclaim.lost_and_found import LOST_AND_FOUND, move_aside
from agent_coord.engine.reclaim.safe_prune import PruneResult, SafePruner, SavedEntry
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store.records import Repo, Slot, SlotState

# Re-exported: these were importable from here before the split.
__all__ = [
    "DEFAULT_RECLAIM_LEASE_S",
    "LOST_AND_FOUND",
    "REPAIRED_OUTCOMES",
    "PruneResult",
    "Reclaimer",
    "SavedEntry",
    "move_aside",
    "same_path",
]

tracer = trace.get_tracer("agent-coord.reclaim")

# Nothing renews a RELEASING row; if the reclaimer dies, this lease lapsing lets the next validation
# take the slot over. Longer than any rescue takes, short enough that a slot does not stay stuck long.
DEFAULT_RECLAIM_LEASE_S = 300.0
# Outcomes after which a finding counts as repaired.
REPAIRED_OUTCOMES = frozenset({"freed", "rescued", "rolled_back", "removed", "quarantined"})


class Reclaimer(OverEngine):
    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        self.lease_s = ctx.settings.stale_after_s
        self.pruner = SafePruner(ctx)

    async def reclaim(self, slot: Slot, reason: str, *, listing: WorktreeListing | None = None) -> str:
        """Return what happened: freed, rescued, rolled_back, quarantined, removed, locked, lost_race, failed.

        `listing` is a `git worktree list` of the slot's repository taken earlier (by a validation);
        without it the reclaim lists the worktrees itself.
        """
        with tracer.start_as_current_span("reclaim") as span:
            span.set_attribute("worktree.id", slot.id)
            span.set_attribute("reclaim.reason", reason)
            span.set_attribute("reclaim.shared_listing", listing is not None)
            outcome = await self._reclaim(slot, reason, listing)
            span.set_attribute("reclaim.outcome", outcome)
            return outcome

    async def prune(self, repo: Repo, reason: str, listing: WorktreeListing | None = None) -> PruneResult:
        """`git worktree prune`, once what git holds of every prunable entry is saved (see `safe_prune`)."""
        return await self.pruner.prune(repo, reason, listing)

    async def _reclaim(self, slot: Slot, reason: str, listing: WorktreeListing | None) -> str:
        repo = await self.repos.by_id(slot.repo_id)
        # An allocation that can never finish (its server is gone) may have been killed inside `git
        # worktree add`, whose own lock is not a person's: see worktree_probe.clear_add_marker.
        since = slot.since if slot.state == SlotState.ALLOCATING else None
        if since is not None and await anyio.to_thread.run_sync(
            clear_confined_add_marker, (await bounds_of(repo)).slot(slot.path), since
        ):
            listing = None  # the shared listing still shows the lock
        found = await self._entry(repo, slot, listing)
        if found is None:
            return "failed"  # nothing was touched; the next validation tries again
        listing, info, locked = found
        if locked:
            return "locked"
        changes: dict[str, object] = {
            "state": SlotState.RELEASING,
            "owner": self.identity.agent_id,
            "lease_expires_at": time.time() + self.lease_s,
        }
        worker = self.identity.as_worker()
        try:
            held = await self.store.transition(
                slot.id, expect_state=slot.state, expect_version=slot.version, changes=changes, worker=worker
            )
        except sqlite3.IntegrityError:
            if slot.state != SlotState.QUARANTINED:
                raise
            # A quarantined slot's branch was taken meanwhile (a gone host's claim lapsed, and a clone
            # on another host took it): the reclaim holds the slot without it; the work is saved
            # under the branch it was judged with.
            held = await self.store.transition(
                slot.id,
                expect_state=slot.state,
                expect_version=slot.version,
                changes={**changes, "branch": None},
                worker=worker,
            )
        if held is None:
            return "lost_race"
        job = ReclaimJob(self, repo, slot, held, info, listing, reason)
        try:
            return await job.run()
        except Exception as exc:  # whatever went wrong after we took the slot: park it, never lose it
            return await job.quarantine(f"{type(exc).__name__}: {exc}")

    async def _entry(
        self, repo: Repo, slot: Slot, listing: WorktreeListing | None
    ) -> tuple[WorktreeListing, WorktreeInfo | None, bool] | None:
        """(the listing to act on, git's entry for the slot's path, whether it is locked), or None when
        git cannot list the worktrees.

        A shared listing is older than this reclaim: a person may have locked, deleted or re-created
        the worktree since. What the reclaim acts on is whether git has a worktree at the path, whether
        its directory is gone (prunable), and whether it is locked; `probe_worktree` reads exactly the
        files git derives those from. It runs where the reclaimer's own listing used to run (just
        before the CAS), so the span between checking and acting is no longer than it was with a fresh
        listing. If the disk disagrees with the shared listing, it is stale for this slot: list again.
        """
        path = Path(slot.path)
        real = (await real_paths([slot.path]))[slot.path]
        if listing is not None:
            info = listing.at(real)
            if info is not None and info.locked:
                return listing, info, True  # never unlocked by us; a later validation sees an unlock
            now = await anyio.to_thread.run_sync(probe_worktree, path, repo.git_dir)
            if listing_holds(info, now):
                return listing, info, now is OnDisk.LOCKED
        try:
            fresh = await WorktreeListing.read(self.git, Path(repo.path))
        except GitError:
            return None
        info = fresh.at(real)
        return fresh, info, info is not None and info.locked
