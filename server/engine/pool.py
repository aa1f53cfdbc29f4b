"""Allocation and release: two-phase, compare-and-swap, git outside every transaction."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio
from opentelemetry import trace

from ..config import Settings
from .concurrency import gather
from .errors import CoordError, ErrorCode
from .git import BranchRefs, GitDriver, GitError, WorktreeInfo, reject_option_like
from .liveness import Identity
from .models import AllocationResult, Contention
from .records import Action, Repo, Slot, SlotState, freed
from .release import Releaser
from .repos import RepoResolver, confine
from .rescue import save_work
from .slot_setup import SetupError, copy_included_files, run_post_create
from .store import BranchHeldError, EventDraft, Store, StoreBusyError

tracer = trace.get_tracer("agent-coord.pool")

MAX_TEXT = 4096
BACKOFF_BASE_S = 0.05


class ContentionMonitor(Protocol):
    async def snapshot(self, repo: Repo) -> Contention: ...


@dataclass
class _Claim:
    slot: Slot
    warm: bool


def _make_room(path: Path) -> None:
    """A new slot's directory must not exist; an empty leftover is removed, anything else refused."""
    if path.is_symlink():
        raise GitError(["worktree", "add"], 1, f"fatal: {path} is a symlink; run validate --repair")
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise GitError(["worktree", "add"], 1, f"fatal: {path} already exists; run validate --repair")
    path.parent.mkdir(parents=True, exist_ok=True)


async def _none() -> None:
    return None


def _default_start(remotes: list[str] | None, head: str | None) -> str:
    """A new branch starts from its only remote-tracking namesake, else from the main worktree's HEAD."""
    if remotes is not None and len(remotes) == 1:
        return remotes[0]
    if head is None:
        raise GitError(["rev-parse", "HEAD"], 1, "fatal: the repository has no commit to start a branch from")
    return head


def _since(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "an unknown time"


class Pool:
    def __init__(
        self,
        store: Store,
        git: GitDriver,
        settings: Settings,
        identity: Identity,
        repos: RepoResolver,
        contention: ContentionMonitor,
    ) -> None:
        self.store = store
        self.git = git
        self.settings = settings
        self.identity = identity
        self.repos = repos
        self.contention = contention
        self._tokens: dict[str, int] = {}  # the fencing tokens this server was granted
        self.releaser = Releaser(store, git, identity, repos, self._tokens, lease_s=settings.stale_after_s)
        self.release = self.releaser.release
        self.find_slot = self.releaser.find_slot

    @property
    def me(self) -> str:
        return self.identity.agent_id

    # ---- allocate -----------------------------------------------------------------------------

    async def allocate(
        self, branch: str, base: str | None = None, repo: str | None = None, task: str | None = None
    ) -> AllocationResult:
        started = time.monotonic()
        with tracer.start_as_current_span("allocate") as span:
            span.set_attribute("agent.id", self.me)
            try:
                result = await self._allocate(branch, base, repo, task, started)
            except CoordError as exc:
                span.set_attribute("error.code", exc.code.value)
                span.set_status(trace.StatusCode.ERROR, exc.message)
                raise
            span.set_attribute("worktree.id", result.worktree_id)
            span.set_attribute("allocation.strategy", result.strategy)
            span.set_attribute("allocation.attempts", result.attempts)
            span.set_attribute("allocation.reused", result.reused)
            return result

    async def _allocate(
        self, branch: str, base: str | None, repo_arg: str | None, task: str | None, started: float
    ) -> AllocationResult:
        if base is not None:
            if not base or len(base) > MAX_TEXT:
                raise CoordError(ErrorCode.INVALID_ARGUMENT, "base must be 1..4096 characters")
            reject_option_like(base, "base")
        if task is not None and len(task) > MAX_TEXT:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "task must be at most 4096 characters")
        repo = await self.repos.resolve(repo_arg)
        # Independent reads at once: the name check, the base, git's worktrees and the store's slots.
        branch = await self.git.check_branch_name(branch)
        # Independent reads at once: the base, the branch's refs, git's worktrees and the store's slots.
        base_commit, refs, worktrees, slots = await gather(
            self._base_or_fail(repo, base) if base is not None else _none(),
            self.git.branch_refs(Path(repo.path), branch),
            self._worktrees_or_fail(repo),
            self.store.slots(repo.id),
        )
        if not refs.exists and refs.clash is not None:
            # Found now, not by git after a slot was claimed: a refused call changes nothing.
            await self._refuse(
                repo,
                branch,
                started,
                CoordError(
                    ErrorCode.INVALID_BRANCH,
                    f"branch {branch!r} cannot be created in {repo.path}: branch {refs.clash!r} exists "
                    "(git stores refs as files, so 'a' and 'a/b' cannot both exist); pick another name",
                ),
            )
        span = trace.get_current_span()
        span.set_attribute("repo.path", repo.path)
        span.set_attribute("branch", branch)

        for s in slots:
            if s.branch == branch and s.state in (SlotState.BUSY, SlotState.ALLOCATING, SlotState.RELEASING):
                if s.owner == self.me and s.state == SlotState.BUSY:
                    return await self._existing(repo, s, started)
                await self._refuse(repo, branch, started, self._conflict_from_slot(s))
        await self._check_git_conflict(repo, branch, slots, worktrees, started)
        listed = {Path(w.path) for w in worktrees if not w.prunable}

        snapshot = await self.contention.snapshot(repo)
        pessimistic = snapshot.level >= self.settings.contention_threshold
        strategy = "pessimistic" if pessimistic else "optimistic"
        span.set_attribute("contention.level", snapshot.level)
        span.set_attribute("allocation.strategy", strategy)
        attempts = 0
        jitter_ms = 0.0
        claim: _Claim | None = None
        try:
            with anyio.fail_after(self.settings.allocation_timeout_s):
                if pessimistic and not (snapshot.caller_focused and self.settings.focus_skips_jitter):
                    jitter_ms = random.uniform(0, self.settings.jitter_max_ms)
                    await anyio.sleep(jitter_ms / 1000)
                warmest = (not pessimistic) or snapshot.caller_focused
                for attempt in range(self.settings.retries + 1):
                    attempts = attempt + 1
                    # Shielded: once the row is claimed we must know it, to roll it back on any exit.
                    with anyio.CancelScope(shield=True):
                        claim = await self._claim(repo, branch, task, warmest, listed, started)
                    if claim is not None:
                        break
                    await self.store.log(
                        EventDraft(
                            Action.CAS_LOST,
                            "lost",
                            self.me,
                            repo.id,
                            None,
                            branch,
                            detail={"attempt": attempts, "strategy": strategy},
                        )
                    )
                    if pessimistic:
                        await anyio.sleep(BACKOFF_BASE_S * (2**attempt) * random.uniform(0.5, 1.5))
                if claim is None:
                    await self._refuse(
                        repo,
                        branch,
                        started,
                        CoordError(
                            ErrorCode.ALLOCATION_TIMEOUT,
                            f"the coordination database stayed locked through {attempts} attempts; retry shortly",
                        ),
                        attempts=attempts,
                        contention=snapshot,
                    )
                assert claim is not None
                await self._git_phase(repo, claim, branch, base_commit, refs)
            if not claim.slot.setup_done:
                # Outside the allocation timeout: a dependency install may take minutes (setup_timeout_s).
                await self._setup(repo, claim)
        except TimeoutError:
            if claim is not None:
                with anyio.CancelScope(shield=True):
                    await self._roll_back(repo, claim, "allocation timed out")
            await self._refuse(
                repo,
                branch,
                started,
                CoordError(
                    ErrorCode.ALLOCATION_TIMEOUT,
                    f"gave up after {self.settings.allocation_timeout_s:g}s; nothing was changed; retry",
                ),
                attempts=attempts,
                contention=snapshot,
            )
        except (GitError, SetupError, OSError) as exc:
            reason = exc.reason if isinstance(exc, GitError) else str(exc)
            assert claim is not None
            span.set_status(trace.StatusCode.ERROR, reason)
            with anyio.CancelScope(shield=True):
                await self._roll_back(repo, claim, reason)
            await self._refuse(
                repo,
                branch,
                started,
                CoordError(ErrorCode.GIT_FAILED, f"could not prepare {claim.slot.id}: {reason}"),
                attempts=attempts,
                contention=snapshot,
            )
        except BaseException:
            # Cancelled by the client, or refused after the claim: leave nothing half-done.
            if claim is not None:
                with anyio.CancelScope(shield=True):
                    await self._roll_back(repo, claim, "allocation abandoned")
            raise
        assert claim is not None
        return await self._finish(repo, claim, branch, strategy, attempts, jitter_ms, snapshot, started)

    async def _claim(
        self,
        repo: Repo,
        branch: str,
        task: str | None,
        warmest: bool,
        listed: set[Path],
        started: float,
    ) -> _Claim | None:
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
                    return _Claim(slot, warm=True)
                slot = await self.store.claim_new_slot(
                    repo,
                    owner=self.me,
                    branch=branch,
                    task=task,
                    lease_s=lease,
                    pool_max=self.settings.pool_max,
                )
            except BranchHeldError as exc:
                await self._refuse(repo, branch, started, self._conflict_from_slot(exc.holder))
            except StoreBusyError:
                return None  # the write lock stayed taken through the store's own retries: back off
            if slot is None:
                await self._refuse(
                    repo,
                    branch,
                    started,
                    CoordError(
                        ErrorCode.POOL_EXHAUSTED,
                        f"all {self.settings.pool_max} slots of {repo.path} are in use; wait for a release "
                        "or ask for AGENT_COORD_POOL_MAX to be raised",
                    ),
                )
            assert slot is not None
            return _Claim(slot, warm=False)

    async def _git_phase(self, repo: Repo, claim: _Claim, branch: str, base: str | None, refs: BranchRefs) -> None:
        """Between the phases: git runs with no transaction open. The caller rolls back on failure."""
        path = confine(Path(repo.pool_root), Path(claim.slot.path))
        with tracer.start_as_current_span("git.phase") as span:
            span.set_attribute("worktree.warm", claim.warm)
            repo_path = Path(repo.path)
            state, head = await gather(
                self.git.status(path, expect_detached=True) if claim.warm else _none(),
                self.git.head_commit(repo_path) if base is None and not refs.exists else _none(),
            )
            start = None if refs.exists else (base or _default_start(refs.remotes, head))
            if claim.warm:
                if state.dirty:
                    # A FREE slot is clean by invariant; if something wrote into it, save that, then clean.
                    await save_work(self.git, self.store, self.me, claim.slot, path, "stray changes in a free slot")
                    await self.git.discard_changes(path)
                await self.git.switch(path, branch, create_from=start)
            else:
                await self._make_room(path)
                await self.git.worktree_add(repo_path, path, branch=branch, create_from=start)

    async def _setup(self, repo: Repo, claim: _Claim) -> None:
        path = Path(claim.slot.path)
        with tracer.start_as_current_span("slot.setup"):
            await copy_included_files(self.git, Path(repo.path), path)
            await run_post_create(self.settings.post_create, path, self.settings.setup_timeout_s)

    async def _make_room(self, path: Path) -> None:
        await anyio.to_thread.run_sync(_make_room, path)

    async def _roll_back(self, repo: Repo, claim: _Claim, reason: str) -> None:
        """ALLOCATING → FREE (or gone, for a slot whose worktree was never made)."""
        slot = claim.slot
        token = slot.fencing_token
        path = Path(slot.path)
        registered = any(Path(w.path) == path for w in await self._safe_worktrees(Path(repo.path)))
        draft = EventDraft(
            Action.RECLAIM, "rolled_back", self.me, repo.id, slot.id, slot.branch, detail={"reason": reason}
        )
        if not registered:
            await self.store.transition(
                slot.id, expect_state=SlotState.ALLOCATING, expect_token=token, delete=True, events=[draft]
            )
            return
        try:
            status = await self.git.status(path)
            if status.dirty:
                # What setup or a half-done switch left behind: saved, never silently dropped.
                await save_work(self.git, self.store, self.me, slot, path, f"allocation rolled back: {reason}")
                await self.git.discard_changes(path)
            if status.branch is not None:
                await self.git.detach(path)
        except GitError as exc:
            await self.store.transition(
                slot.id,
                expect_state=SlotState.ALLOCATING,
                expect_token=token,
                changes={"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None},
                events=[
                    draft,
                    EventDraft(
                        Action.RECLAIM,
                        "quarantined",
                        self.me,
                        repo.id,
                        slot.id,
                        slot.branch,
                        detail={"error": exc.reason},
                    ),
                ],
            )
            return
        await self.store.transition(
            slot.id,
            expect_state=SlotState.ALLOCATING,
            expect_token=token,
            changes=freed(time.time()),
            events=[draft],
        )

    async def _finish(
        self,
        repo: Repo,
        claim: _Claim,
        branch: str,
        strategy: str,
        attempts: int,
        jitter_ms: float,
        snapshot: Contention,
        started: float,
    ) -> AllocationResult:
        latency = (time.monotonic() - started) * 1000
        token = claim.slot.fencing_token
        assert token is not None
        lease_until = time.time() + self.settings.stale_after_s
        with tracer.start_as_current_span("cas.commit"):
            slot = await self.store.transition(
                claim.slot.id,
                expect_state=SlotState.ALLOCATING,
                expect_token=token,
                changes={"state": SlotState.BUSY, "lease_expires_at": lease_until, "setup_done": 1},
                events=[
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        self.me,
                        repo.id,
                        claim.slot.id,
                        branch,
                        latency,
                        token,
                        detail={
                            "strategy": strategy,
                            "attempts": attempts,
                            "warm": claim.warm,
                            "jitter_ms": round(jitter_ms, 1),
                            "contention": snapshot.model_dump(mode="json"),
                        },
                    )
                ],
            )
        if slot is None:
            raise CoordError(
                ErrorCode.ALLOCATION_TIMEOUT,
                f"{claim.slot.id} was rolled back by validation while git ran; retry",
            )
        self._tokens[slot.id] = token
        return AllocationResult(
            worktree_id=slot.id,
            path=slot.path,
            branch=branch,
            repo=repo.path,
            agent_id=self.me,
            fencing_token=token,
            lease_expires_at=lease_until,
            reused=claim.warm,
            strategy=strategy,  # type: ignore[arg-type]
            attempts=attempts,
            latency_ms=round(latency, 2),
            contention=snapshot,
            jitter_ms=round(jitter_ms, 1),
        )

    async def _existing(self, repo: Repo, slot: Slot, started: float) -> AllocationResult:
        assert slot.fencing_token is not None and slot.branch is not None
        self._tokens[slot.id] = slot.fencing_token
        snapshot = await self.contention.snapshot(repo)
        return AllocationResult(
            worktree_id=slot.id,
            path=slot.path,
            branch=slot.branch,
            repo=repo.path,
            agent_id=self.me,
            fencing_token=slot.fencing_token,
            lease_expires_at=slot.lease_expires_at or 0.0,
            reused=True,
            strategy="existing",
            attempts=0,
            latency_ms=round((time.monotonic() - started) * 1000, 2),
            contention=snapshot,
        )

    async def _base_or_fail(self, repo: Repo, base: str) -> str:
        """A bad base is refused before anything is claimed, so the refusal changes nothing."""
        try:
            return await self.git.resolve_commit(Path(repo.path), base)
        except GitError as exc:
            raise CoordError(
                ErrorCode.GIT_FAILED, f"base {base!r} is not a commit of {repo.path}: {exc.reason}"
            ) from exc

    async def _worktrees_or_fail(self, repo: Repo) -> list[WorktreeInfo]:
        try:
            return await self.git.worktrees(Path(repo.path))
        except GitError as exc:
            raise CoordError(ErrorCode.GIT_FAILED, f"git worktree list failed: {exc.reason}") from exc

    async def _check_git_conflict(
        self, repo: Repo, branch: str, slots: list[Slot], worktrees: list[WorktreeInfo], started: float
    ) -> None:
        for wt in worktrees:
            if wt.branch == branch:
                known = next((s for s in slots if Path(s.path) == Path(wt.path)), None)
                where = f"worktree {known.id} ({wt.path})" if known else f"the worktree at {wt.path}"
                if Path(wt.path) == Path(repo.path):
                    where = f"the main worktree ({wt.path})"
                await self._refuse(
                    repo,
                    branch,
                    started,
                    CoordError(
                        ErrorCode.BRANCH_CONFLICT,
                        f"branch {branch!r} is checked out in {where}; pick another branch, or switch that "
                        "worktree away from it",
                    ),
                )

    def _conflict_from_slot(self, s: Slot) -> CoordError:
        return CoordError(
            ErrorCode.BRANCH_CONFLICT,
            f"branch {s.branch!r} is held by agent {s.owner} (worktree {s.id}, {s.path}) since {_since(s.since)}; "
            "pick another branch or wait for its release",
        )

    async def _refuse(
        self,
        repo: Repo,
        branch: str,
        started: float,
        error: CoordError,
        *,
        attempts: int = 0,
        contention: Contention | None = None,
    ) -> None:
        detail: dict[str, object] = {"message": error.message, "attempts": attempts}
        if contention is not None:
            detail["contention"] = contention.model_dump(mode="json")
        await self.store.log(
            EventDraft(
                Action.ALLOCATE,
                error.code.value,
                self.me,
                repo.id,
                None,
                branch,
                (time.monotonic() - started) * 1000,
                detail=detail,
            )
        )
        raise error

    async def _safe_worktrees(self, repo: Path) -> list[WorktreeInfo]:
        try:
            return await self.git.worktrees(repo)
        except GitError:
            return []
