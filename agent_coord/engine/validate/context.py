"""What the checks of a validation share: the run's findings, one repository's snapshot, and the
helpers every repair goes through (judging an owner, logging a repair, dropping a record, reclaiming).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import anyio

from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.git.confinement import Bounds, Confined
from agent_coord.engine.git.driver import WorktreeInfo
from agent_coord.engine.git.worktree_listing import WorktreeListing, real_path, real_paths
from agent_coord.engine.liveness.judge import Liveness, judge
from agent_coord.engine.models import Finding
from agent_coord.engine.reclaim.lost_and_found import move_aside
from agent_coord.engine.reclaim.reclaimer import REPAIRED_OUTCOMES, Reclaimer
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import Action, Agent, Repo, Slot

RECLAIM_CONCURRENCY = 4


def slot_finding(s: Slot, *, kind: str, detail: str, action: str) -> Finding:
    """A finding about one recorded slot, naming it, its path and its holder."""
    return Finding(kind=kind, worktree_id=s.id, path=s.path, agent_id=s.owner, detail=detail, action=action)


@dataclass
class ValidationRun:
    """One validation, across repositories."""

    repair: bool
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)
    # Owners judged not alive in this run, so that their agent rows can be marked after repair.
    gone: dict[str, tuple[Agent, Liveness]] = field(default_factory=dict)


@dataclass
class RepoPass:
    """One repository in a run: the store's slots, read before git was listed (a settled row only
    exists once its worktree does, so a settled row missing from the listing is really missing), and
    the one `git worktree list` every check and every reclaim of this pass uses."""

    repo: Repo
    slots: list[Slot]
    listing: WorktreeListing
    real: dict[str, str]  # slot path → real path
    # Reclaims of slots that git still lists (dead owners, dirty free slots): each touches only its own
    # worktree, so they run together after the checks (RECLAIM_CONCURRENCY at a time).
    reclaims: list[tuple[Slot, Finding, str]] = field(default_factory=list)
    # Slots without a worktree, to be dropped after the one prune of this pass (when git has an entry).
    missing: list[tuple[Slot, WorktreeInfo | None, Finding]] = field(default_factory=list)
    pruned: bool = False  # a prune of this pass succeeded: the listing's prunable entries are gone
    bounds: Bounds | None = None  # the confinement bounds of the repository's pool

    @classmethod
    async def start(cls, repo: Repo, slots: list[Slot], listing: WorktreeListing) -> RepoPass:
        return cls(repo, slots, listing, await real_paths(s.path for s in slots), bounds=await bounds_of(repo))

    def slot_dir(self, path: str) -> Confined:
        """A slot's path for the git driver, which checks it against the confinement guard at every call."""
        assert self.bounds is not None
        return self.bounds.slot(path)

    def info(self, slot: Slot) -> WorktreeInfo | None:
        return self.listing.at(self.real[slot.path])

    @property
    def pool_root(self) -> Path:
        return Path(self.repo.pool_root)


class Checker(OverEngine):
    def __init__(self, ctx: EngineContext, reclaimer: Reclaimer, allocating_grace_s: float | None) -> None:
        super().__init__(ctx)
        self.reclaimer = reclaimer
        # An allocation gives up after its timeout and rolls itself back; an ALLOCATING row older than
        # this was abandoned (a cancelled or wedged server) even though its owner is alive.
        self.allocating_grace_s = allocating_grace_s
        # The `index.lock` seen in each slot at the previous pass (git_states.persistent_index_lock).
        self.index_locks: dict[str, tuple[int, int, int]] = {}

    async def owner(self, owner_id: str | None, run: ValidationRun) -> tuple[Agent | None, Liveness]:
        """The owner as it is *now*: a snapshot from the start of a long run would call a live agent
        stale whose heartbeat landed since."""
        agent = await self.store.agent(owner_id) if owner_id else None
        if agent is None:
            return None, Liveness(False, f"agent {owner_id} is not registered")
        verdict = judge(agent, host=self.identity.host, boot=self.identity.boot_id)
        if not verdict.alive:
            run.gone[agent.id] = (agent, verdict)
        return agent, verdict

    def repair_event(
        self, repo_id: int | None, worktree_id: str | None, branch: str | None, **detail: object
    ) -> EventDraft:
        return EventDraft(
            Action.REPAIR,
            "ok",
            agent_id=self.me,
            repo_id=repo_id,
            worktree_id=worktree_id,
            branch=branch,
            detail=dict(detail),
        )

    async def drop(self, s: Slot, f: Finding, repo: Repo, *, move_directory: bool) -> bool:
        """Delete the record (a CAS on the judged version); with `move_directory`, set aside a directory
        left at its path unless another record holds that path."""
        gone = await self.store.transition(
            s.id,
            expect_state=s.state,
            expect_version=s.version,
            delete=True,
            events=[
                self.repair_event(s.repo_id, s.id, s.branch, kind=f.kind, previous_owner=s.owner, state=s.state.value)
            ],
        )
        path = Path(s.path)
        if gone is not None and move_directory and await anyio.Path(path).exists():
            others = await self.store.slots()
            if not await anyio.to_thread.run_sync(lambda: real_path(s.path) in {real_path(o.path) for o in others}):
                moved = await anyio.to_thread.run_sync(move_aside, path, await bounds_of(repo))
                if moved is not None:
                    f.action += f"; its directory was moved to {moved}"
        return gone is not None

    async def reclaim(self, s: Slot, f: Finding, reason: str, listing: WorktreeListing) -> None:
        outcome = await self.reclaimer.reclaim(s, reason, listing=listing)
        f.repaired = outcome in REPAIRED_OUTCOMES
        f.action = f"reclaimed: {outcome}"

    async def reclaim_deferred(self, rp: RepoPass) -> None:
        """The deferred reclaims, concurrently: a repair of many dead agents' slots is git-bound."""
        jobs, rp.reclaims = rp.reclaims, []
        limiter = anyio.CapacityLimiter(RECLAIM_CONCURRENCY)

        async def one(s: Slot, f: Finding, reason: str) -> None:
            async with limiter:
                await self.reclaim(s, f, reason, rp.listing)

        async with anyio.create_task_group() as tg:
            for s, f, reason in jobs:
                tg.start_soon(one, s, f, reason)
