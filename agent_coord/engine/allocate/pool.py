"""Allocation: two-phase, compare-and-swap, git outside every transaction.

`Pool._allocate` is the whole use case, top to bottom: the checks (helpers in checks.py), the claim
with its retries, git between the phases (slot_git.py), first-time setup (slot_setup.py), and the
grant. Its boundary, `Pool.allocate`, logs every refusal once. Release is engine/release.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Protocol

import anyio
from opentelemetry import trace

from agent_coord.engine.allocate.checks import (
    Progress,
    base_commit,
    branch_refs_of,
    check_arguments,
    checked_out_elsewhere,
    claimable,
    clash,
    conflict_from_slot,
    held_answer,
    new_branch_start,
    worktrees_of,
)
from agent_coord.engine.allocate.slot_git import Claim, add_cold_slot, roll_back, switch_warm_slot
from agent_coord.engine.allocate.slot_setup import SetupError, copy_included_files, run_post_create
from agent_coord.engine.concurrency import gather
from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.branch_names import MAX_REF_LENGTH, check_branch_name
from agent_coord.engine.git.confinement import Unconfined, check_slot
from agent_coord.engine.git.driver import GitError
from agent_coord.engine.models import AllocationResult, Contention, ReleaseResult
from agent_coord.engine.radar.models import Conflict
from agent_coord.engine.radar.view import conflicts_for
from agent_coord.engine.release.releaser import Releaser
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import BranchHeldError, EventDraft, StoreBusyError
from agent_coord.engine.store.connection import StoreUnavailableError
from agent_coord.engine.store.records import Action, Repo, Slot, SlotState

tracer = trace.get_tracer("agent-coord.pool")
logger = logging.getLogger("agent-coord")

BACKOFF_BASE_S = 0.05


class BranchAppeared(CoordError):
    """git refused to create the branch: it was created after our checks (rolled back, nothing held)."""

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.GIT_FAILED, f"the branch was created by someone else meanwhile: {reason}")


class SlotUnusable(CoordError):
    """The claimed slot failed the confinement guard (a symlink or another repository in its place): it
    was rolled back and quarantined, nothing held; another slot may serve."""

    def __init__(self, slot_id: str, reason: str) -> None:
        super().__init__(ErrorCode.GIT_FAILED, f"could not prepare {slot_id}: {reason}")


# Allocations decided again after a rollback that left nothing held (BranchAppeared, SlotUnusable).
DECIDE_AGAIN = 3


class ContentionMonitor(Protocol):
    async def snapshot(self, repo: Repo, slots: list[Slot] | None = None) -> Contention: ...


class Pool(OverEngine):
    def __init__(self, ctx: EngineContext, contention: ContentionMonitor) -> None:
        super().__init__(ctx)
        self.contention = contention
        self.releaser = Releaser(ctx)
        self.find_slot = self.releaser.find_slot

    async def allocate(
        self, branch: str, base: str | None = None, repo: str | None = None, task: str | None = None
    ) -> AllocationResult:
        """The boundary of the use case: every refusal, whichever step found it, is logged here once."""
        started = time.monotonic()
        progress = Progress(branch if len(branch) <= MAX_REF_LENGTH else None)
        with tracer.start_as_current_span("allocate") as span:
            span.set_attribute("agent.id", self.me)
            try:
                result = await self._allocate_deciding_again(progress, branch, base, repo, task, started)
            except CoordError as exc:
                span.set_attribute("error.code", exc.code.value)
                span.set_status(trace.StatusCode.ERROR, exc.message)
                await self._log_refusal(progress, exc, started)
                raise
            span.set_attribute("worktree.id", result.worktree_id)
            span.set_attribute("allocation.strategy", result.strategy)
            span.set_attribute("allocation.attempts", result.attempts)
            span.set_attribute("allocation.reused", result.reused)
        result.conflicts = await self._conflicts_after_done()
        return result

    async def _allocate_deciding_again(
        self, progress: Progress, branch: str, base: str | None, repo: str | None, task: str | None, started: float
    ) -> AllocationResult:
        """`_allocate`, decided again from what git and the store say now when it rolled back with nothing
        held: another agent created the branch after our checks (once: it may hold it now), or the slot
        it claimed was not fit to use (quarantined by the rollback, so another is claimed)."""
        branch_appeared = False
        first = time.monotonic()
        for attempt in range(DECIDE_AGAIN):
            # One allocation timeout for every decision together, as its refusal says (the first has
            # all of it, as an allocation decided once).
            timeout_s = self.settings.allocation_timeout_s
            budget_s = timeout_s if attempt == 0 else max(0.0, timeout_s - (time.monotonic() - first))
            try:
                return await self._allocate(progress, branch, base, repo, task, started, budget_s)
            except BranchAppeared:
                if branch_appeared or attempt == DECIDE_AGAIN - 1:
                    raise
                branch_appeared = True
            except SlotUnusable:
                if attempt == DECIDE_AGAIN - 1:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def release(
        self,
        *,
        worktree_id: str | None = None,
        path: str | None = None,
        branch: str | None = None,
        force: bool = False,
        remove: bool = False,
        over_live_agent: bool = False,
    ) -> ReleaseResult:
        result = await self.releaser.release(
            worktree_id=worktree_id,
            path=path,
            branch=branch,
            force=force,
            remove=remove,
            over_live_agent=over_live_agent,
        )
        result.conflicts = await self._conflicts_after_done()
        return result

    async def conflicts(self) -> list[Conflict]:
        """What the conflict radar last stored for this agent's live allocations (engine/radar)."""
        return conflicts_for(await self.store.live_pairs(), lambda side: side.agent_id == self.me)

    async def _conflicts_after_done(self) -> list[Conflict]:
        """The radar's pairs for the answer to a grant or release already made: a store that cannot be read
        now must not turn it into a refusal (an agent told its done release failed writes on in a worktree
        that is no longer its own; one told its grant failed leaves a slot held). Without them, then."""
        try:
            return await self.conflicts()
        except (StoreUnavailableError, StoreBusyError) as exc:
            logger.warning("answered without the radar's conflicts: %s", exc)
            return []

    async def _log_refusal(self, progress: Progress, error: CoordError, started: float) -> None:
        detail: dict[str, object] = {"message": error.message, "attempts": progress.attempts}
        if progress.contention is not None:
            detail["contention"] = progress.contention.model_dump(mode="json")
        draft = EventDraft(
            Action.ALLOCATE,
            error.code.value,
            agent_id=self.me,
            repo_id=progress.repo.id if progress.repo else None,
            branch=progress.branch,
            duration_ms=(time.monotonic() - started) * 1000,
            detail=detail,
        )
        try:
            with anyio.CancelScope(shield=True):
                await self.store.log(draft)
        except StoreBusyError:  # the agent still gets its refusal; the log missing one is the lesser loss
            logger.warning("could not log the refused allocation of %r: the database stayed busy", progress.branch)

    async def _allocate(
        self,
        progress: Progress,
        branch: str,
        base: str | None,
        repo_arg: str | None,
        task: str | None,
        started: float,
        budget_s: float,
    ) -> AllocationResult:
        """The use case, top to bottom: check (nothing claimed yet), claim a slot (phase 1), git with no
        transaction open, first-time setup, grant (phase 2). After the claim, any failure or
        cancellation rolls the slot back before the error goes on."""
        span = trace.get_current_span()

        # Checks: a refusal here has changed nothing.
        check_arguments(base, task)
        repo = progress.repo = await self.repos.resolve(repo_arg)
        branch = progress.branch = await check_branch_name(branch, self.git)
        # Independent reads at once: the base, the branch's refs, git's worktrees and the store's slots.
        start, refs, worktrees, slots = await gather(
            base_commit(self.git, repo, base),
            branch_refs_of(self.git, repo, branch),
            worktrees_of(self.git, repo),
            self.store.slots(repo.id),
        )
        if not refs.exists and refs.clash is not None:
            raise clash(repo, refs, branch)
        span.set_attribute("repo.path", repo.path)
        span.set_attribute("branch", branch)
        for s in slots:
            if s.branch == branch and s.state in (SlotState.BUSY, SlotState.ALLOCATING, SlotState.RELEASING):
                if s.owner == self.me and s.state == SlotState.BUSY:
                    held = held_answer(self.me, repo, s, await self.contention.snapshot(repo), started)
                    self.ctx.granted.remember(held.worktree_id, held.fencing_token)
                    return held
                raise conflict_from_slot(s)
        for wt in worktrees:
            if wt.branch == branch:
                raise checked_out_elsewhere(repo, wt, slots)
        if refs.exists:
            start = None  # an existing branch is checked out as it is
        elif start is None:
            start = await new_branch_start(self.git, repo, refs, worktrees)

        # The strategy: optimistic, or under contention pessimistic (jitter, backoff, the coldest slot).
        snapshot = progress.contention = await self.contention.snapshot(repo, slots)
        pessimistic = snapshot.level >= self.settings.contention_threshold
        strategy = "pessimistic" if pessimistic else "optimistic"
        span.set_attribute("contention.level", snapshot.level)
        span.set_attribute("allocation.strategy", strategy)
        # Warmest first for the focused or uncontended caller; under contention the others take the
        # coldest, leaving the warm one for the user's focus.
        warmest = (not pessimistic) or snapshot.caller_focused
        lease_s = self.settings.stale_after_s
        attempts = 0
        jitter_ms = 0.0
        claim: Claim | None = None
        set_up = False  # setup has begun: the branch is checked out in the slot
        try:
            with anyio.fail_after(budget_s):
                if pessimistic and not (snapshot.caller_focused and self.settings.focus_skips_jitter):
                    jitter_ms = random.uniform(0, self.settings.jitter_max_ms)
                    await anyio.sleep(jitter_ms / 1000)

                # Phase 1: one compare-and-swap per attempt, FREE (or new) → ALLOCATING. The FREE slot is
                # chosen inside the claiming transaction, so it cannot lose to another process while one
                # exists; only slots git lists as live worktrees are candidates. Shielded: once the row
                # is claimed we must know it, to roll it back on any exit.
                for attempt in range(self.settings.retries + 1):
                    attempts = progress.attempts = attempt + 1
                    with anyio.CancelScope(shield=True), tracer.start_as_current_span("cas.claim"):
                        try:
                            slot = await self.store.claim_any_free_slot(
                                repo.id,
                                paths=claimable(worktrees),
                                warmest=warmest,
                                owner=self.me,
                                branch=branch,
                                task=task,
                                lease_s=lease_s,
                                worker=self.identity.as_worker(),
                            )
                            warm = slot is not None
                            slot = slot or await self.store.claim_new_slot(
                                repo,
                                owner=self.me,
                                branch=branch,
                                task=task,
                                lease_s=lease_s,
                                pool_max=self.settings.pool_max,
                                worker=self.identity.as_worker(),
                            )
                        except BranchHeldError as exc:
                            raise conflict_from_slot(exc.holder, self.identity.host) from exc
                        except StoreBusyError:
                            slot = None  # the write lock stayed taken through the store's own retries
                        else:
                            if slot is None:
                                raise CoordError(
                                    ErrorCode.POOL_EXHAUSTED,
                                    f"all {self.settings.pool_max} slots of {repo.path} are in use",
                                )
                            claim = Claim(slot, warm)
                    if claim is not None:
                        break
                    await self._log_lost(repo, branch, attempts, strategy)
                    if pessimistic:
                        await anyio.sleep(BACKOFF_BASE_S * (2**attempt) * random.uniform(0.5, 1.5))
                if claim is None:
                    # Every claim found the database locked by another process: the store's answer,
                    # as on every other call (docs/decisions.md, "One answer per situation").
                    raise StoreBusyError(self.store.path).refusal()

                # Between the phases: git, with no transaction open. Every git command in the slot passes
                # the confinement guard (git/confinement.py).
                slot_dir = (await bounds_of(repo)).slot(claim.slot.path)
                with tracer.start_as_current_span("git.phase") as git_span:
                    git_span.set_attribute("worktree.warm", claim.warm)
                    if claim.warm:
                        await switch_warm_slot(self.git, self.store, self.me, claim.slot, slot_dir, branch, start)
                    else:
                        await add_cold_slot(self.git, Path(repo.path), slot_dir, branch, start)
            if not claim.slot.setup_done:
                # Outside the allocation timeout: a dependency install may take minutes (setup_timeout_s).
                set_up = True
                await self._setup(repo, claim)
        except TimeoutError:
            if claim is not None:
                with anyio.CancelScope(shield=True):
                    await self._roll_back(repo, claim, "allocation timed out")
            elif attempts > 0:
                raise StoreBusyError(self.store.path).refusal() from None  # every claim so far found it locked
            raise CoordError(
                ErrorCode.ALLOCATION_TIMEOUT,
                f"gave up after {self.settings.allocation_timeout_s:g}s; nothing was changed",
            ) from None
        except (GitError, SetupError, OSError) as exc:
            reason = exc.reason if isinstance(exc, GitError) else str(exc)
            assert claim is not None
            # An event, not the span's status: the allocation may be decided again and end in a grant
            # (the boundary, `allocate`, sets the status of a refusal).
            span.add_event("rolled back", {"reason": reason, "worktree.id": claim.slot.id})
            with anyio.CancelScope(shield=True):
                left = await self._roll_back(repo, claim, reason)
            if isinstance(exc, GitError) and start is not None and "already exists" in reason:
                raise BranchAppeared(reason) from exc
            if isinstance(exc, Unconfined) and not exc.unreadable and left == SlotState.QUARANTINED and not set_up:
                # Refused before our git changed the slot: another slot may serve. (Refused during setup,
                # the branch stays checked out in the quarantined slot: deciding again would only say so.)
                raise SlotUnusable(claim.slot.id, reason) from exc
            raise CoordError(ErrorCode.GIT_FAILED, f"could not prepare {claim.slot.id}: {reason}") from exc
        except BaseException:
            # Cancelled by the client, or refused after the claim: leave nothing half-done.
            if claim is not None:
                with anyio.CancelScope(shield=True):
                    await self._roll_back(repo, claim, "allocation abandoned")
            raise

        # Phase 2: ALLOCATING → BUSY under the same fencing token, with its event.
        latency_ms = (time.monotonic() - started) * 1000
        token = claim.slot.fencing_token
        assert token is not None
        lease_until = time.time() + lease_s
        with tracer.start_as_current_span("cas.commit"):
            granted = await self.store.transition(
                claim.slot.id,
                expect_state=SlotState.ALLOCATING,
                expect_token=token,
                changes={"state": SlotState.BUSY, "lease_expires_at": lease_until, "setup_done": 1},
                events=[
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        agent_id=self.me,
                        repo_id=repo.id,
                        worktree_id=claim.slot.id,
                        branch=branch,
                        duration_ms=latency_ms,
                        fencing_token=token,
                        detail={
                            "strategy": strategy,
                            "attempts": attempts,
                            "warm": claim.warm,
                            "jitter_ms": round(jitter_ms, 1),
                            "contention": snapshot.model_dump(mode="json"),
                            # What the conflict radar compares this allocation with (engine/radar).
                            **({"base": base} if base is not None else {}),
                        },
                    )
                ],
            )
        if granted is None:
            raise CoordError(
                ErrorCode.ALLOCATION_TIMEOUT,
                f"{claim.slot.id} was rolled back by validation while git ran; nothing is held",
            )
        self.ctx.granted.remember(granted.id, token)
        return AllocationResult(
            worktree_id=granted.id,
            path=granted.path,
            branch=branch,
            repo=repo.path,
            agent_id=self.me,
            fencing_token=token,
            lease_expires_at=lease_until,
            reused=claim.warm,
            strategy=strategy,  # type: ignore[arg-type]
            attempts=attempts,
            latency_ms=round(latency_ms, 2),
            contention=snapshot,
            jitter_ms=round(jitter_ms, 1),
        )

    async def _log_lost(self, repo: Repo, branch: str, attempts: int, strategy: str) -> None:
        draft = EventDraft(
            Action.CAS_LOST,
            "lost",
            agent_id=self.me,
            repo_id=repo.id,
            branch=branch,
            detail={"attempt": attempts, "strategy": strategy},
        )
        try:
            await self.store.log(draft)
        except StoreBusyError:  # the lock that lost the claim: the next attempt decides, not the log
            logger.warning("could not log the lost claim of %r: the database stayed locked", branch)

    async def _setup(self, repo: Repo, claim: Claim) -> None:
        path = (await bounds_of(repo)).slot(claim.slot.path)
        with tracer.start_as_current_span("slot.setup"):
            await copy_included_files(self.git, Path(repo.path), path)
            await run_post_create(self.settings.post_create, path, self.settings.setup_timeout_s)
            # Setup takes long enough for the slot to be swapped under it: never grant what fails the guard.
            await anyio.to_thread.run_sync(check_slot, path.bounds, path.path)

    async def _roll_back(self, repo: Repo, claim: Claim, reason: str) -> SlotState | None:
        return await roll_back(self.git, self.store, self.me, repo, claim.slot, reason)
