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
from .git import GitDriver, GitError, WorktreeInfo, reject_option_like, rescue_ref_name
from .liveness import Identity
from .models import AllocationResult, Contention, ReleaseResult
from .records import Action, Repo, Slot, SlotState
from .repos import RepoResolver, confine
from .slot_setup import SetupError, copy_included_files, run_post_create
from .store import BranchHeldError, EventDraft, Store

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
        # Independent reads at once: the name check, git's worktrees and the store's slots.
        branch, worktrees, slots = await gather(
            self.git.check_branch_name(branch), self._worktrees_or_fail(repo), self.store.slots(repo.id)
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
                    claim = await self._claim(repo, branch, task, warmest, strategy, started)
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
                            f"lost the compare-and-swap {attempts} times to other agents; retry shortly",
                        ),
                        attempts=attempts,
                        contention=snapshot,
                    )
                assert claim is not None
                await self._git_phase(repo, claim, branch, base)
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
        assert claim is not None
        return await self._finish(repo, claim, branch, strategy, attempts, jitter_ms, snapshot, started)

    async def _claim(
        self, repo: Repo, branch: str, task: str | None, warmest: bool, strategy: str, started: float
    ) -> _Claim | None:
        """Phase 1: one compare-and-swap. None when another process won the race for the slot."""
        with tracer.start_as_current_span("cas.claim"):
            slots = await self.store.slots(repo.id)
            free = [s for s in slots if s.state == SlotState.FREE]
            # Warmest (most recently released) first for the focused or uncontended caller;
            # under contention others take the coldest, leaving the warm one for the user's focus.
            free.sort(key=lambda s: s.released_at or 0.0, reverse=warmest)
            lease = self.settings.stale_after_s
            try:
                if free:
                    slot = await self.store.claim_free_slot(
                        free[0].id, free[0].version, owner=self.me, branch=branch, task=task, lease_s=lease
                    )
                    return _Claim(slot, warm=True) if slot else None
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

    async def _git_phase(self, repo: Repo, claim: _Claim, branch: str, base: str | None) -> None:
        """Between the phases: git runs with no transaction open. Failure rolls the slot back."""
        path = confine(Path(repo.pool_root), Path(claim.slot.path))
        with tracer.start_as_current_span("git.phase") as span:
            span.set_attribute("worktree.warm", claim.warm)
            try:
                repo_path = Path(repo.path)
                exists, state, remotes, head = await gather(
                    self.git.branch_exists(repo_path, branch),
                    self.git.status(path) if claim.warm else _none(),
                    self.git.remote_branches(repo_path, branch) if base is None else _none(),
                    self.git.head_commit(repo_path) if base is None else _none(),
                )
                start = None if exists else (base or _default_start(remotes, head))
                if claim.warm:
                    if state.dirty:
                        # A FREE slot is clean by invariant; if someone wrote into it, save that first.
                        await self._rescue(repo, claim.slot, path, reason="stray changes in a free slot")
                    await self.git.switch(path, branch, create_from=start)
                else:
                    await self._make_room(path)
                    await self.git.worktree_add(Path(repo.path), path, branch=branch, create_from=start)
                if not claim.slot.setup_done:
                    await copy_included_files(self.git, Path(repo.path), path)
                    await run_post_create(self.settings.post_create, path, self.settings.setup_timeout_s)
            except (GitError, SetupError, OSError) as exc:
                reason = exc.reason if isinstance(exc, GitError) else str(exc)
                span.set_status(trace.StatusCode.ERROR, reason)
                with anyio.CancelScope(shield=True):
                    await self._roll_back(repo, claim, reason)
                raise CoordError(ErrorCode.GIT_FAILED, f"git failed while preparing {claim.slot.id}: {reason}") from exc

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
            if status.branch is not None and not status.dirty:
                await self.git.detach(path)
        except GitError:
            pass
        await self.store.transition(
            slot.id,
            expect_state=SlotState.ALLOCATING,
            expect_token=token,
            changes={
                "state": SlotState.FREE,
                "owner": None,
                "branch": None,
                "lease_expires_at": None,
                "since": None,
                "released_at": time.time(),
                "task": None,
            },
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

    # ---- release ------------------------------------------------------------------------------

    async def find_slot(
        self, *, worktree_id: str | None, path: str | None, branch: str | None, repo_arg: str | None = None
    ) -> Slot:
        given = [v for v in (worktree_id, path, branch) if v is not None]
        if len(given) > 1:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "give one of worktree_id, path or branch, not several")
        for value, what in ((worktree_id, "worktree_id"), (path, "path"), (branch, "branch")):
            if value is not None:
                if not value or len(value) > MAX_TEXT:
                    raise CoordError(ErrorCode.INVALID_ARGUMENT, f"{what} must be 1..4096 characters")
                reject_option_like(value, what)
        slots = await self.store.slots()
        if worktree_id is not None:
            found = [s for s in slots if s.id == worktree_id]
            what = f"worktree {worktree_id!r}"
        elif path is not None:
            target = Path(await (await anyio.Path(path).expanduser()).resolve())
            found = [s for s in slots if Path(s.path) == target]
            what = f"a worktree at {path!r}"
        elif branch is not None:
            found = [s for s in slots if s.branch == branch and s.state != SlotState.FREE]
            if len(found) > 1:
                mine = [s for s in found if s.owner == self.me]
                found = mine or found
            what = f"an allocation of branch {branch!r}"
        else:
            found = [s for s in slots if s.owner == self.me and s.state == SlotState.BUSY]
            if len(found) > 1:
                ids = ", ".join(s.id for s in found)
                raise CoordError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"you hold {len(found)} worktrees ({ids}); name the one to release",
                )
            what = "an allocation held by you"
        if not found:
            raise CoordError(ErrorCode.NOT_FOUND, f"there is no {what}; call status to see the pool")
        return found[0]

    async def release(
        self,
        *,
        worktree_id: str | None = None,
        path: str | None = None,
        branch: str | None = None,
        force: bool = False,
        remove: bool = False,
    ) -> ReleaseResult:
        started = time.monotonic()
        with tracer.start_as_current_span("release") as span:
            slot = await self.find_slot(worktree_id=worktree_id, path=path, branch=branch)
            span.set_attribute("worktree.id", slot.id)
            repo = await self.repos.by_id(slot.repo_id)
            try:
                return await self._release(repo, slot, force, remove, started)
            except CoordError as exc:
                span.set_attribute("error.code", exc.code.value)
                await self.store.log(
                    EventDraft(
                        Action.RELEASE,
                        exc.code.value,
                        self.me,
                        repo.id,
                        slot.id,
                        slot.branch,
                        (time.monotonic() - started) * 1000,
                        slot.fencing_token,
                        detail={"message": exc.message},
                    )
                )
                raise

    async def _release(self, repo: Repo, slot: Slot, force: bool, remove: bool, started: float) -> ReleaseResult:
        if slot.state == SlotState.FREE:
            if not remove:
                return ReleaseResult(worktree_id=slot.id, path=slot.path, branch=None, state="FREE", dirty=False)
        elif slot.state != SlotState.BUSY:
            raise CoordError(
                ErrorCode.NOT_FOUND,
                f"{slot.id} is {slot.state.value}, not an allocation that can be released",
            )
        forced_from: str | None = None
        if slot.state == SlotState.BUSY and slot.owner != self.me:
            if not force:
                raise CoordError(
                    ErrorCode.NOT_OWNER,
                    f"{slot.id} is held by agent {slot.owner}; pass force=true to take it back "
                    "(its changes are saved to a rescue ref first)",
                )
            forced_from = slot.owner
        token = self._tokens.get(slot.id, slot.fencing_token) if forced_from is None else slot.fencing_token
        path = confine(Path(repo.pool_root), Path(slot.path))
        worktrees = await self._safe_worktrees(Path(repo.path))
        info = next((w for w in worktrees if Path(w.path) == path), None)
        if info is not None and info.locked:
            raise CoordError(
                ErrorCode.WORKTREE_LOCKED,
                f"{slot.id} is locked ({info.lock_reason or 'git worktree lock'}); "
                f"unlock it with: git worktree unlock {path}",
            )
        status = await self.git.status(path) if info is not None and path.is_dir() else None
        dirty = bool(status and status.dirty)
        if dirty and not force:
            assert status is not None
            files = [c[3:] for c in status.changed][:20]
            more = f" (+{len(status.changed) - 20} more)" if len(status.changed) > 20 else ""
            commits = f"; {status.unsaved_commits} commit(s) only on a detached HEAD" if status.unsaved_commits else ""
            raise CoordError(
                ErrorCode.WORKTREE_DIRTY,
                f"{slot.id} has uncommitted or untracked changes: {', '.join(files)}{more}{commits}; "
                "commit them, or pass force=true to save them to a rescue ref",
            )
        original = slot.state
        if original == SlotState.BUSY:
            held = await self.store.transition(
                slot.id,
                expect_state=SlotState.BUSY,
                expect_token=token,
                changes={"state": SlotState.RELEASING},
            )
        else:
            held = await self.store.transition(
                slot.id,
                expect_state=SlotState.FREE,
                expect_version=slot.version,
                changes={"state": SlotState.RELEASING, "owner": self.me},
            )
        if held is None:
            raise CoordError(
                ErrorCode.NOT_OWNER,
                f"{slot.id} changed hands while releasing (fencing token {token} is stale)",
            )
        rescue: str | None = None
        try:
            if dirty:
                rescue = await self._rescue(repo, slot, path, reason="forced release")
                await self.git.discard_changes(path)
            if info is not None:
                if remove:
                    await self.git.worktree_remove(Path(repo.path), path)
                elif status is not None and status.branch is not None:
                    await self.git.detach(path)
            elif remove or not path.exists():
                await self.git.worktree_prune(Path(repo.path))
        except GitError as exc:
            with anyio.CancelScope(shield=True):
                await self.store.transition(
                    slot.id,
                    expect_state=SlotState.RELEASING,
                    expect_token=token,
                    changes={"state": original, "owner": slot.owner},
                )
            raise CoordError(ErrorCode.GIT_FAILED, f"git failed while releasing {slot.id}: {exc.reason}") from exc
        gone = remove or info is None
        detail: dict[str, object] = {"remove": remove, "force": force}
        if forced_from:
            detail["forced_from"] = forced_from
        if rescue:
            detail["rescue_ref"] = rescue
        event = EventDraft(
            Action.RELEASE,
            "ok",
            self.me,
            repo.id,
            slot.id,
            slot.branch,
            (time.monotonic() - started) * 1000,
            token,
            detail=detail,
        )
        await self.store.transition(
            slot.id,
            expect_state=SlotState.RELEASING,
            expect_token=token,
            delete=gone,
            changes=None
            if gone
            else {
                "state": SlotState.FREE,
                "owner": None,
                "branch": None,
                "lease_expires_at": None,
                "since": None,
                "released_at": time.time(),
                "task": None,
                "rescue_ref": rescue,
            },
            events=[event],
        )
        self._tokens.pop(slot.id, None)
        return ReleaseResult(
            worktree_id=slot.id,
            path=slot.path,
            branch=slot.branch,
            state="REMOVED" if gone else "FREE",
            dirty=dirty,
            rescue_ref=rescue,
            removed=gone,
        )

    async def _rescue(self, repo: Repo, slot: Slot, path: Path, *, reason: str) -> str:
        ref = rescue_ref_name(slot.branch, slot.id)
        commit = await self.git.rescue(
            path, ref, f"agent-coord rescue of {slot.id} ({slot.branch or 'detached'}): {reason}"
        )
        await self.store.log(
            EventDraft(
                Action.RESCUE,
                "saved",
                self.me,
                repo.id,
                slot.id,
                slot.branch,
                None,
                slot.fencing_token,
                detail={"rescue_ref": ref, "commit": commit, "reason": reason, "owner": slot.owner},
            )
        )
        return ref
