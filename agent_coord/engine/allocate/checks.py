"""What an allocation reads and refuses before anything is claimed (so that a refused allocation changes
nothing), and the answers it builds from what it read. The allocation itself, top to bottom, is
`Pool._allocate` (pool.py); its boundary (`Pool.allocate`) logs each refusal raised here once."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from agent_coord.engine.errors import MAX_TEXT, CoordError, ErrorCode
from agent_coord.engine.git.driver import BranchRefs, GitDriver, GitError, WorktreeInfo, reject_option_like
from agent_coord.engine.git.worktree_files import allocation_branch_refs, allocation_worktrees
from agent_coord.engine.models import AllocationResult, Contention
from agent_coord.engine.store.records import Repo, Slot


@dataclass
class Progress:
    """How far an allocation got: what its boundary logs with a refusal."""

    branch: str | None  # as asked while unchecked (None when too long to log), then as checked
    repo: Repo | None = None
    attempts: int = 0
    contention: Contention | None = None


def check_arguments(base: str | None, task: str | None) -> None:
    if base is not None:
        if not base or len(base) > MAX_TEXT:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "base must be 1..4096 characters")
        reject_option_like(base, "base")
    if task is not None and len(task) > MAX_TEXT:
        raise CoordError(ErrorCode.INVALID_ARGUMENT, "task must be at most 4096 characters")


async def base_commit(git: GitDriver, repo: Repo, base: str | None) -> str | None:
    """The commit `base` names; a bad base is refused before anything is claimed."""
    if base is None:
        return None
    try:
        return await git.resolve_commit(Path(repo.path), base)
    except GitError as exc:
        raise CoordError(ErrorCode.GIT_FAILED, f"base {base!r} is not a commit of {repo.path}: {exc.reason}") from exc


async def branch_refs_of(git: GitDriver, repo: Repo, branch: str) -> BranchRefs:
    """The branch's local ref, remote-tracking namesakes and clashes, read from git's files (or git)."""
    return await allocation_branch_refs(git, Path(repo.path), repo.git_dir, branch)


async def worktrees_of(git: GitDriver, repo: Repo) -> list[WorktreeInfo]:
    try:
        return await allocation_worktrees(git, Path(repo.path), repo.git_dir)
    except GitError as exc:
        raise CoordError(ErrorCode.GIT_FAILED, f"git worktree list failed: {exc.reason}") from exc


def claimable(worktrees: list[WorktreeInfo]) -> list[str]:
    """The live, unlocked worktrees git lists: the only FREE slots worth claiming (a slot whose
    directory was deleted is validation's to repair, not an allocation's to fail on). A locked one is
    a person's to keep (`git worktree lock`), and a slot handed out locked could not be released."""
    return sorted(str(Path(w.path)) for w in worktrees if not w.prunable and not w.locked)


async def new_branch_start(git: GitDriver, repo: Repo, refs: BranchRefs, worktrees: list[WorktreeInfo]) -> str:
    """Where a new branch starts without a base: its only remote-tracking namesake, else the main
    worktree's HEAD (from git's listing, no `rev-parse`). An unborn repository is refused here rather
    than found by git after a claim."""
    if len(refs.remotes) == 1:
        return refs.remotes[0]
    main = next((w for w in worktrees if Path(w.path) == Path(repo.path)), None)
    if main is None or main.head is None:
        head = await git.head_commit(Path(repo.path))  # listed under another spelling: ask git
    else:
        head = main.head if main.head.strip("0") else None  # an unborn HEAD is listed as all zeros
    if head is None:
        raise CoordError(ErrorCode.GIT_FAILED, "fatal: the repository has no commit to start a branch from")
    return head


def since(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "an unknown time"


def conflict_from_slot(s: Slot, here: str | None = None) -> CoordError:
    """The branch is held by `s`; one on another host than `here` (a clone of the same project) says so."""
    where = f" on host {s.host}" if here is not None and s.host is not None and s.host != here else ""
    return CoordError(
        ErrorCode.BRANCH_CONFLICT,
        f"branch {s.branch!r} is held by agent {s.owner}{where} (worktree {s.id}, {s.path}) since {since(s.since)}",
    )


def checked_out_elsewhere(repo: Repo, wt: WorktreeInfo, slots: list[Slot]) -> CoordError:
    known = next((s for s in slots if Path(s.path) == Path(wt.path)), None)
    where = f"worktree {known.id} ({wt.path})" if known else f"the worktree at {wt.path}"
    if Path(wt.path) == Path(repo.path):
        where = f"the main worktree ({wt.path})"
    return CoordError(ErrorCode.BRANCH_CONFLICT, f"branch {wt.branch!r} is checked out in {where}")


def clash(repo: Repo, refs: BranchRefs, branch: str) -> CoordError:
    # Found before any claim, not by git after one: a refused call changes nothing.
    return CoordError(
        ErrorCode.INVALID_BRANCH,
        f"branch {branch!r} cannot be created in {repo.path}: branch {refs.clash!r} exists "
        "(git stores refs as files, so 'a' and 'a/b' cannot both exist)",
    )


def held_answer(agent_id: str, repo: Repo, slot: Slot, snapshot: Contention, started: float) -> AllocationResult:
    """The caller already holds this branch: its allocation, as it is."""
    assert slot.fencing_token is not None and slot.branch is not None
    return AllocationResult(
        worktree_id=slot.id,
        path=slot.path,
        branch=slot.branch,
        repo=repo.path,
        agent_id=agent_id,
        fencing_token=slot.fencing_token,
        lease_expires_at=slot.lease_expires_at or 0.0,
        reused=True,
        strategy="existing",
        attempts=0,
        latency_ms=round((time.monotonic() - started) * 1000, 2),
        contention=snapshot,
    )
