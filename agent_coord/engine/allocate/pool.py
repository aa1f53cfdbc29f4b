"""Allocation: two-phase, compare-and-swap, git outside every transaction.

The control flow lives here: checks (pool_checks.py), the claim with its retries, git between the
phases (pool_git.py), first-time setup, and the grant (pool_grant.py). Release is release.py.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Protocol

import anyio
from opentelemetry import trace

from agent_coord.engine.allocate.checks import Checks, Plan, Progress, conflict_from_slot
from agent_coord.engine.allocate.grant import existing, grant
from agent_coord.engine.allocate.slot_git import Claim, add_cold_slot, roll_back, switch_warm_slot
from agent_coord.engine.allocate.slot_setup import SetupError, copy_included_files, run_post_create
from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.branch_names import MAX_REF_LENGTH
from agent_coord.engine.git.confinement import check_slot
from agent_coord.engine.git.driver import GitError
from agent_coord.engine.models import AllocationResult, Contention, ReleaseResult
from agent_coord.engine.radar.models import Conflict
from agent_coord.engine.radar.view import conflicts_for
from agent_coord.engine.release.releaser import Releaser
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import BranchHeldError, EventDraft, StoreBusyError
from agent_coord.engine.store.records import Action, Repo

tracer = trace.get_tracer("agent-coord.pool")
logger = logging.getLogger("agent-coord")

BACKOFF_BASE_S = 0.05


class ContentionMonitor(Protocol):
    async def snapshot(self, repo: Repo) -> Contention: ...


class Pool(OverEngine):
    def __init__(self, ctx: EngineContext, contention: ContentionMonitor) -> None:
        super().__init__(ctx)
        self.contention = contention
        self.checks = Checks(ctx)
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
                result = await self._allocate(progress, branch, base, repo, task, started)
            except CoordError as exc:
                span.set_attribute("error.code", exc.code.value)
                span.set_status(trace.StatusCode.ERROR, exc.message)
                await self._log_refusal(progress, exc, started)
                raise
            span.set_attribute("worktree.id", result.worktree_id)
            span.set_attribute("allocation.strategy", result.strategy)
            span.set_attribute("allocation.attempts", result.attempts)
            span.set_attribute("allocation.reused", result.reused)
        result.conflicts = await self.conflicts()
        return result

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
        result.conflicts = await self.conflicts()
        return result

    async def conflicts(self) -> list[Conflict]:
        """What the conflict radar last stored for this agent's live allocations (engine/radar)."""
        return conflicts_for(await self.store.live_pairs(), lambda side: side.agent_id == self.me)

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
        self, progress: Progress, branch: str, base: str | None, repo_arg: str | None, task: str | None, started: float
    ) -> AllocationResult:
        plan = await self.checks.plan(progress, branch, base, repo_arg, task)
        repo, branch = plan.repo, plan.branch
        if plan.held is not None:
            held = existing(self.me, repo, plan.held, await self.contention.snapshot(repo), started)
            self.ctx.granted.remember(held.worktree_id, held.fencing_token)
            return held

        span = trace.get_current_span()
        snapshot = await self.contention.snapshot(repo)
        pessimistic = snapshot.level >= self.settings.contention_threshold
        strategy = "pessimistic" if pessimistic else "optimistic"
        span.set_attribute("contention.level", snapshot.level)
        span.set_attribute("allocation.strategy", strategy)
        progress.contention = snapshot
        attempts = 0
        jitter_ms = 0.0
        claim: Claim | None = None
        try:
            with anyio.fail_after(self.settings.allocation_timeout_s):
                if pessimistic and not (snapshot.caller_focused and self.settings.focus_skips_jitter):
                    jitter_ms = random.uniform(0, self.settings.jitter_max_ms)
                    await anyio.sleep(jitter_ms / 1000)
                warmest = (not pessimistic) or snapshot.caller_focused
                for attempt in range(self.settings.retries + 1):
                    attempts = progress.attempts = attempt + 1
                    # Shielded: once the row is claimed we must know it, to roll it back on any exit.
                    with anyio.CancelScope(shield=True):
                        claim = await self._claim(repo, branch, task, warmest, plan.listed)
                    if claim is not None:
                        break
                    await self._log_lost(repo, branch, attempts, strategy)
                    if pessimistic:
                        await anyio.sleep(BACKOFF_BASE_S * (2**attempt) * random.uniform(0.5, 1.5))
                if claim is None:
                    # Every claim found the database locked by another process: the store's answer,
                    # as on every other call (docs/decisions.md, "One answer per situation").
                    raise StoreBusyError(self.store.path).refusal()
                await self._git_phase(repo, claim, plan)
            if not claim.slot.setup_done:
                # Outside the allocation timeout: a dependency install may take minutes (setup_timeout_s).
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
            span.set_status(trace.StatusCode.ERROR, reason)
            with anyio.CancelScope(shield=True):
                await self._roll_back(repo, claim, reason)
            raise CoordError(ErrorCode.GIT_FAILED, f"could not prepare {claim.slot.id}: {reason}") from exc
        except BaseException:
            # Cancelled by the client, or refused after the claim: leave nothing half-done.
            if claim is not None:
                with anyio.CancelScope(shield=True):
                    await self._roll_back(repo, claim, "allocation abandoned")
            raise
        assert claim is not None
        result = await grant(
            self.store,
            self.me,
            repo,
            claim,
            branch,
            strategy=strategy,
            attempts=attempts,
            jitter_ms=jitter_ms,
            snapshot=snapshot,
            started=started,
            lease_s=self.settings.stale_after_s,
            base=base,
        )
        self.ctx.granted.remember(result.worktree_id, result.fencing_token)
        return result

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

    async def _claim(
        self,
        repo: Repo,
        branch: str,
        task: str | None,
        warmest: bool,
        listed: set[Path],
    ) -> Claim | None:
        """Phase 1: one compare-and-swap. None when the database stayed locked (contention): retry.

        Only FREE slots that git lists as live worktrees (`listed`) are candidates: a slot whose
        directory was deleted is validation's to repair, not an allocation's to fail on."""
        with tracer.start_as_current_span("cas.claim"):
            lease = self.settings.stale_after_s
            try:
                # The FREE slot is chosen inside the claiming transaction, so this cannot lose to another
                # process while one exists. Warmest first for the focused or uncontended caller; under
                # contention the others take the coldest, leaving the warm one for the user's focus.
                slot = await self.store.claim_any_free_slot(
                    repo.id,
                    paths=sorted(str(p) for p in listed),
                    warmest=warmest,
                    owner=self.me,
                    branch=branch,
                    task=task,
                    lease_s=lease,
                )
                if slot is not None:
                    return Claim(slot, warm=True)
                slot = await self.store.claim_new_slot(
                    repo,
                    owner=self.me,
                    branch=branch,
                    task=task,
                    lease_s=lease,
                    pool_max=self.settings.pool_max,
                )
            except BranchHeldError as exc:
                raise conflict_from_slot(exc.holder) from exc
            except StoreBusyError:
                return None  # the write lock stayed taken through the store's own retries: back off
            if slot is None:
                raise CoordError(
                    ErrorCode.POOL_EXHAUSTED,
                    f"all {self.settings.pool_max} slots of {repo.path} are in use",
                )
            return Claim(slot, warm=False)

    async def _git_phase(self, repo: Repo, claim: Claim, plan: Plan) -> None:
        """Between the phases: git runs with no transaction open. The caller rolls back on failure."""
        # Every git command in the slot passes the confinement guard (git/confinement.py).
        path = (await bounds_of(repo)).slot(claim.slot.path)
        with tracer.start_as_current_span("git.phase") as span:
            span.set_attribute("worktree.warm", claim.warm)
            if claim.warm:
                await switch_warm_slot(
                    self.git,
                    self.store,
                    self.me,
                    claim.slot,
                    path,
                    plan.branch,
                    plan.start,
                )
            else:
                await add_cold_slot(self.git, Path(repo.path), path, plan.branch, plan.start)

    async def _setup(self, repo: Repo, claim: Claim) -> None:
        path = (await bounds_of(repo)).slot(claim.slot.path)
        with tracer.start_as_current_span("slot.setup"):
            await copy_included_files(self.git, Path(repo.path), path)
            await run_post_create(self.settings.post_create, path, self.settings.setup_timeout_s)
            # Setup takes long enough for the slot to be swapped under it: never grant what fails the guard.
            await anyio.to_thread.run_sync(check_slot, path.bounds, path.path)

    async def _roll_back(self, repo: Repo, claim: Claim, reason: str) -> None:
        await roll_back(self.git, self.store, self.me, repo, claim.slot, reason)
