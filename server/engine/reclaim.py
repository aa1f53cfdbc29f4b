"""Taking slots back from dead or stale agents without losing a byte of their work.

The reclaimer first moves the slot to RELEASING under its own name (a CAS on the version), so a
reclaimer that dies half-way leaves a row that the next validation reclaims again; each step is
idempotent. A locked worktree is never touched.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from opentelemetry import trace

from .git import GitDriver, GitError, rescue_ref_name
from .liveness import Identity
from .records import Action, Slot, SlotState
from .repos import RepoResolver
from .store import EventDraft, Store

tracer = trace.get_tracer("agent-coord.reclaim")


class Reclaimer:
    def __init__(self, store: Store, git: GitDriver, repos: RepoResolver, identity: Identity) -> None:
        self.store = store
        self.git = git
        self.repos = repos
        self.identity = identity

    async def reclaim(self, slot: Slot, reason: str) -> str:
        """Return what happened: freed, rescued, quarantined, removed, locked, lost_race."""
        with tracer.start_as_current_span("reclaim") as span:
            span.set_attribute("worktree.id", slot.id)
            span.set_attribute("reclaim.reason", reason)
            outcome = await self._reclaim(slot, reason)
            span.set_attribute("reclaim.outcome", outcome)
            return outcome

    async def _reclaim(self, slot: Slot, reason: str) -> str:
        repo = await self.repos.by_id(slot.repo_id)
        path = Path(slot.path)
        worktrees = await self.git.worktrees(Path(repo.path))
        info = next((w for w in worktrees if Path(w.path) == path), None)
        if info is not None and info.locked:
            return "locked"
        me = self.identity.agent_id
        held = await self.store.transition(
            slot.id,
            expect_state=slot.state,
            expect_version=slot.version,
            changes={"state": SlotState.RELEASING, "owner": me},
        )
        if held is None:
            return "lost_race"
        base = {"reason": reason, "previous_owner": slot.owner, "previous_state": slot.state.value}

        def event(outcome: str, **extra: object) -> EventDraft:
            return EventDraft(
                Action.RECLAIM,
                outcome,
                me,
                repo.id,
                slot.id,
                slot.branch,
                None,
                slot.fencing_token,
                detail={**base, **extra},
            )

        if info is None or not await anyio.Path(path).is_dir():
            if info is not None or await anyio.Path(path).exists():
                await self.git.worktree_prune(Path(repo.path))
            await self.store.transition(
                slot.id,
                expect_state=SlotState.RELEASING,
                expect_version=held.version,
                delete=True,
                events=[event("removed", note="worktree was gone")],
            )
            return "removed"
        rescue: str | None = None
        try:
            status = await self.git.status(path)
            if status.dirty:
                rescue = rescue_ref_name(slot.branch, slot.id)
                commit = await self.git.rescue(
                    path, rescue, f"agent-coord rescue of {slot.id} ({slot.branch or 'detached'}): {reason}"
                )
                await self.store.log(
                    EventDraft(
                        Action.RESCUE,
                        "saved",
                        me,
                        repo.id,
                        slot.id,
                        slot.branch,
                        None,
                        slot.fencing_token,
                        detail={
                            "rescue_ref": rescue,
                            "commit": commit,
                            "reason": reason,
                            "owner": slot.owner,
                        },
                    )
                )
                await self.git.discard_changes(path)
            if status.branch is not None:
                await self.git.detach(path)
            after = await self.git.status(path)
            if after.dirty:
                raise GitError(["status"], 1, f"still dirty after rescue: {', '.join(after.changed[:5])}")
        except GitError as exc:
            await self.store.transition(
                slot.id,
                expect_state=SlotState.RELEASING,
                expect_version=held.version,
                changes={
                    "state": SlotState.QUARANTINED,
                    "owner": None,
                    "lease_expires_at": None,
                    "rescue_ref": rescue,
                },
                events=[event("quarantined", error=exc.reason, rescue_ref=rescue)],
            )
            return "quarantined"
        outcome = "rescued" if rescue else "freed"
        await self.store.transition(
            slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=held.version,
            changes={
                "state": SlotState.FREE,
                "owner": None,
                "branch": None,
                "lease_expires_at": None,
                "since": None,
                "released_at": time.time(),
                "task": None,
                "rescue_ref": rescue,
            },
            events=[event(outcome, rescue_ref=rescue)],
        )
        return outcome
