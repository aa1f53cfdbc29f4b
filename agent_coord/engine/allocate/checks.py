"""Before anything is claimed: the arguments, the branch name, the base and the branch checked against
the store and git, so that a refused allocation changes nothing. Refusals are raised; the
allocation's boundary (`Pool.allocate`) logs each one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import trace

from agent_coord.engine.concurrency import gather
from agent_coord.engine.context import OverEngine
from agent_coord.engine.errors import MAX_TEXT, CoordError, ErrorCode
from agent_coord.engine.git.driver import BranchRefs, GitError, WorktreeInfo, reject_option_like
from agent_coord.engine.models import Contention
from agent_coord.engine.store.records import Repo, Slot, SlotState


@dataclass
class Progress:
    """How far an allocation got: what its boundary logs with a refusal."""

    branch: str | None  # as asked while unchecked (None when too long to log), then as checked
    repo: Repo | None = None
    attempts: int = 0
    contention: Contention | None = None


@dataclass(frozen=True)
class Plan:
    """What an allocation found before claiming anything."""

    repo: Repo
    branch: str
    refs: BranchRefs
    worktrees: list[WorktreeInfo]
    start: str | None  # where a new branch starts; None when the branch exists and is checked out as it is
    held: Slot | None  # the caller's own BUSY allocation of this branch: answered as it is

    @property
    def listed(self) -> set[Path]:
        """The live, unlocked worktrees git lists: the only FREE slots worth claiming. A locked one is
        a person's to keep (`git worktree lock`), and a slot handed out locked could not be released."""
        return {Path(w.path) for w in self.worktrees if not w.prunable and not w.locked}


def since(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "an unknown time"


def conflict_from_slot(s: Slot) -> CoordError:
    return CoordError(
        ErrorCode.BRANCH_CONFLICT,
        f"branch {s.branch!r} is held by agent {s.owner} (worktree {s.id}, {s.path}) since {since(s.since)}",
    )


def default_start(remotes: list[str] | None, head: str | None) -> str:
    """A new branch starts from its only remote-tracking namesake, else from the main worktree's HEAD."""
    if remotes is not None and len(remotes) == 1:
        return remotes[0]
    if head is None:
        raise GitError(["rev-parse", "HEAD"], 1, "fatal: the repository has no commit to start a branch from")
    return head


class Checks(OverEngine):
    async def plan(
        self, progress: Progress, branch: str, base: str | None, repo_arg: str | None, task: str | None
    ) -> Plan:
        if base is not None:
            if not base or len(base) > MAX_TEXT:
                raise CoordError(ErrorCode.INVALID_ARGUMENT, "base must be 1..4096 characters")
            reject_option_like(base, "base")
        if task is not None and len(task) > MAX_TEXT:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "task must be at most 4096 characters")
        repo = progress.repo = await self.repos.resolve(repo_arg)
        branch = progress.branch = await self.git.check_branch_name(branch)
        # Independent reads at once: the base, the branch's refs, git's worktrees and the store's slots.
        base_commit, refs, worktrees, slots = await gather(
            self._base_or_fail(repo, base),
            self.git.branch_refs(Path(repo.path), branch),
            self._worktrees_or_fail(repo),
            self.store.slots(repo.id),
        )
        if not refs.exists and refs.clash is not None:
            # Found now, not by git after a slot was claimed: a refused call changes nothing.
            raise CoordError(
                ErrorCode.INVALID_BRANCH,
                f"branch {branch!r} cannot be created in {repo.path}: branch {refs.clash!r} exists "
                "(git stores refs as files, so 'a' and 'a/b' cannot both exist)",
            )
        span = trace.get_current_span()
        span.set_attribute("repo.path", repo.path)
        span.set_attribute("branch", branch)
        for s in slots:
            if s.branch == branch and s.state in (SlotState.BUSY, SlotState.ALLOCATING, SlotState.RELEASING):
                if s.owner == self.me and s.state == SlotState.BUSY:
                    return Plan(repo, branch, refs, worktrees, None, held=s)
                raise conflict_from_slot(s)
        self._check_git_conflict(repo, branch, slots, worktrees)
        start = base_commit
        if start is None and not refs.exists:
            try:
                start = default_start(refs.remotes, await self._main_head(repo, refs, worktrees))
            except GitError as exc:
                # An unborn repository: refused here rather than found by git after a claim.
                raise CoordError(ErrorCode.GIT_FAILED, exc.reason) from exc
        return Plan(repo, branch, refs, worktrees, None if refs.exists else start, held=None)

    async def _main_head(self, repo: Repo, refs: BranchRefs, worktrees: list[WorktreeInfo]) -> str | None:
        """The main worktree's HEAD commit, from git's listing (no `rev-parse`); None when unborn."""
        if len(refs.remotes) == 1:
            return None  # not needed: the branch starts from its remote namesake
        main = next((w for w in worktrees if Path(w.path) == Path(repo.path)), None)
        if main is None or main.head is None:
            return await self.git.head_commit(Path(repo.path))  # listed under another spelling: ask git
        return main.head if main.head.strip("0") else None  # an unborn HEAD is listed as all zeros

    async def _base_or_fail(self, repo: Repo, base: str | None) -> str | None:
        """A bad base is refused before anything is claimed, so the refusal changes nothing."""
        if base is None:
            return None
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

    def _check_git_conflict(self, repo: Repo, branch: str, slots: list[Slot], worktrees: list[WorktreeInfo]) -> None:
        for wt in worktrees:
            if wt.branch == branch:
                known = next((s for s in slots if Path(s.path) == Path(wt.path)), None)
                where = f"worktree {known.id} ({wt.path})" if known else f"the worktree at {wt.path}"
                if Path(wt.path) == Path(repo.path):
                    where = f"the main worktree ({wt.path})"
                raise CoordError(
                    ErrorCode.BRANCH_CONFLICT,
                    f"branch {branch!r} is checked out in {where}",
                )
