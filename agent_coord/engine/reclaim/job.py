"""The work of one reclaim, once the slot is ours (RELEASING under the reclaimer's name).

* worktree gone (directory or git entry): whatever git still holds of it is saved and the entry
  pruned (`safe_prune`), a directory git does not know is moved aside, and the record dropped; an
  ALLOCATING row whose worktree was never made is simply rolled back;
* worktree present: uncommitted and untracked changes are saved to a verified rescue ref, and only
  then discarded; the branch is kept and the slot goes back to FREE on a detached HEAD;
* anything that cannot be made safe (saving failed, a rebase or merge in progress, still dirty
  afterwards) raises `Unsafe`, and the slot is QUARANTINED: never handed out, left for a person.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from agent_coord.engine.git.confinement import Confined, Shape, Unconfined, shape
from agent_coord.engine.git.driver import WorktreeInfo
from agent_coord.engine.git.operations import operation_in_progress
from agent_coord.engine.git.worktree_listing import WorktreeListing, real_paths
from agent_coord.engine.reclaim.lost_and_found import move_aside
from agent_coord.engine.reclaim.rescue import save_work
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import Action, Repo, Slot, SlotState, freed

if TYPE_CHECKING:
    from agent_coord.engine.reclaim.reclaimer import Reclaimer


class Unsafe(Exception):
    """The worktree cannot be returned to the pool safely; quarantine it."""


class ReclaimJob:
    """One reclaim of one slot, after the CAS made it ours (RELEASING, owner = us)."""

    def __init__(
        self,
        rc: Reclaimer,
        repo: Repo,
        slot: Slot,
        held: Slot,
        info: WorktreeInfo | None,
        listing: WorktreeListing,
        reason: str,
    ) -> None:
        self.rc = rc
        self.repo = repo
        self.slot = slot  # the row as it was judged
        self.held = held  # the row as the CAS left it (ours)
        self.info = info  # git's entry for the slot's path, checked against the disk just before the CAS
        self.listing = listing
        self.reason = reason
        self.rescue: str | None = None

    def event(self, outcome: str, **extra: object) -> EventDraft:
        s = self.slot
        return EventDraft(
            Action.RECLAIM,
            outcome,
            agent_id=self.rc.identity.agent_id,
            repo_id=self.repo.id,
            worktree_id=s.id,
            branch=s.branch,
            fencing_token=s.fencing_token,
            detail={
                "reason": self.reason,
                "previous_owner": s.owner,
                "previous_state": s.state.value,
                "rescue_ref": self.rescue,
                **extra,
            },
        )

    async def run(self) -> str:
        bounds = await bounds_of(self.repo)
        path = bounds.slot(self.slot.path)
        try:
            # A symlink, a file, another repository or its worktree in the slot's place: never touched.
            form = await anyio.to_thread.run_sync(shape, bounds, path.path)
        except Unconfined as exc:
            raise Unsafe(exc.reason) from exc
        if self.info is None or self.info.prunable or form != Shape.WORKTREE:
            return await self._gone(path)
        git = self.rc.git
        status = await git.status(path)
        if status.dirty:
            self.rescue = await self._save(path, status.changed, status.unsaved_commits)
        operation = await self._operation_in_progress(path)
        if operation is not None:
            # The work is saved (above); the operation's own state is the person's to finish or abort.
            raise Unsafe(f"a {operation} is in progress")
        if status.dirty:
            await git.discard_changes(path)
        if status.branch is not None:
            await git.detach(path)
        after = await git.status(path)
        if after.dirty:
            raise Unsafe(f"still dirty after the rescue: {', '.join(after.changed[:5])}")
        outcome = "rolled_back" if self.slot.state == SlotState.ALLOCATING else "freed"
        if self.rescue:
            outcome = "rescued"
        done = await self.rc.store.transition(
            self.slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=self.held.version,
            changes=freed(time.time(), self.rescue),
            events=[self.event(outcome)],
        )
        return outcome if done is not None else "lost_race"

    async def _gone(self, slot: Confined) -> str:
        """The worktree is gone: save what git still holds of it, prune, set aside the directory, drop."""
        rc = self.rc
        note = "worktree was gone"
        if self.info is not None:
            result = await rc.prune(self.repo, self.reason, self.listing)
            real = (await real_paths([self.info.path]))[self.info.path]
            self.rescue = result.rescue_refs.get(real)
            if not result.settled(real):
                raise Unsafe("could not save the git entry of the vanished worktree")
        path = slot.path
        if await anyio.Path(path).exists():
            # A directory git does not know (its .git file was lost): user files may be in it. Move it
            # aside rather than leave it to block the slot's path, and say where.
            moved = await anyio.to_thread.run_sync(move_aside, path, slot.bounds)
            if moved is None:
                raise Unsafe(f"could not move {path} aside")
            note = f"directory was not a git worktree; moved to {moved}"
        outcome = "rolled_back" if self.slot.state == SlotState.ALLOCATING else "removed"
        done = await rc.store.transition(
            self.slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=self.held.version,
            delete=True,
            events=[self.event(outcome, note=note)],
        )
        return outcome if done is not None else "lost_race"

    async def _save(self, path: Confined, changed: list[str], unsaved_commits: int) -> str:
        detail = {"files": [c[3:] for c in changed[:20]], "unsaved_commits": unsaved_commits}
        saved = await save_work(
            self.rc.git, self.rc.store, self.rc.identity.agent_id, self.slot, path, self.reason, detail=detail
        )
        return saved.ref

    async def _operation_in_progress(self, path: Confined) -> str | None:
        # Resetting under a rebase or merge would leave the slot unusable (git refuses to switch) and
        # lose the operation's own state (git/operations.py).
        found = await anyio.to_thread.run_sync(operation_in_progress, path.path)
        return found[0].name if found is not None else None

    async def quarantine(self, why: str) -> str:
        done = await self.rc.store.transition(
            self.slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=self.held.version,
            changes={
                "state": SlotState.QUARANTINED,
                "owner": None,
                "lease_expires_at": None,
                "rescue_ref": self.rescue,
            },
            events=[self.event("quarantined", error=why[:500])],
        )
        return "quarantined" if done is not None else "lost_race"
