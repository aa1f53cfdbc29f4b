"""Between the two phases of an allocation: git puts the branch in the claimed slot, with no transaction
open; and when anything fails after the claim, the slot goes back to FREE without losing a byte."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import Bounds, Confined, Shape, mark_pool_root, shape
from agent_coord.engine.git.driver import GitDriver, GitError, WorktreeInfo, WorktreeStatus
from agent_coord.engine.git.seal import untouched
from agent_coord.engine.git.worktree_probe import clear_confined_add_marker, index_locked
from agent_coord.engine.reclaim.rescue import save_work
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Repo, Slot, SlotState, freed


@dataclass
class Claim:
    slot: Slot
    warm: bool


def make_room(bounds: Bounds, slot: Path) -> None:
    """A new slot's directory must not exist; an empty leftover is removed, anything else refused. Its
    place must be inside the pool root (the confinement guard)."""
    if shape(bounds, slot) == Shape.WORKTREE:
        raise GitError(["worktree", "add"], 1, f"fatal: {slot} already exists; run validate --repair")
    path = bounds.pool_root / slot.name
    if path.is_symlink():
        raise GitError(["worktree", "add"], 1, f"fatal: {path} is a symlink; run validate --repair")
    if path.exists():
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        else:
            raise GitError(["worktree", "add"], 1, f"fatal: {path} already exists; run validate --repair")
    if not bounds.pool_root.exists():
        mark_pool_root(bounds, create=True)  # made by us, so the pool's own


async def switch_warm_slot(
    git: GitDriver,
    store: Store,
    agent_id: str,
    slot: Slot,
    path: Confined,
    branch: str,
    start: str | None,
) -> None:
    """A FREE slot is clean by invariant; if something wrote into it, that is saved to a rescue ref and
    cleaned before the switch, so it never follows the slot into the next agent's branch.

    The unsaved-commit count runs beside the status, right before the switch, every time: judging
    "HEAD is at a branch tip, so nothing is unsaved" from refs read before the claim would trust a
    picture up to the allocation timeout old, and a branch deleted or moved meanwhile would leave the
    slot's commits only in a reflog that the next `worktree remove` deletes."""
    # Its release's seal, when it proves nothing touched the slot since, spares a `git status` (git/seal.py).
    # Commits only its HEAD holds are counted all the same (the branch it was released from may have been
    # deleted since), unless that branch's ref file still names HEAD.
    proof = await untouched(path)
    if proof is None:
        state = await git.status(path, expect_detached=True)
    else:
        unsaved = 0 if proof.saved_by_branch else await git.unsaved_commits(path)
        state = WorktreeStatus(changed=[], unsaved_commits=unsaved, branch=None, head=proof.head)
    if state.dirty:
        await save_work(git, store, agent_id, slot, path, "stray changes in a free slot")
        await git.discard_changes(path)
        await _clean_or_fail(git, path)
    if (
        start is not None
        and start == state.head
        and state.branch is None
        and not await anyio.to_thread.run_sync(index_locked, path.path)
    ):
        # The slot already sits, detached, at the start commit (released where the next branch starts)
        # and is clean, as just checked: only the branch is new. Not on a branch (its upstream settings
        # could be inherited), and not with an `index.lock` left in it, which `switch -c <b>` alone
        # would not notice (the full switch fails on it, and the allocation is rolled back).
        await git.branch_at_head(path, branch)
    else:
        await git.switch(path, branch, create_from=start)


async def add_cold_slot(git: GitDriver, repo: Path, path: Confined, branch: str, start: str | None) -> None:
    await anyio.to_thread.run_sync(make_room, path.bounds, path.path)
    await git.worktree_add(repo, path.bounds.pool_root / path.name, branch=branch, create_from=start)


async def roll_back(
    git: GitDriver, store: Store, agent_id: str, repo: Repo, slot: Slot, reason: str
) -> SlotState | None:
    """ALLOCATING → FREE (or gone, for a slot whose worktree was never made: None); QUARANTINED when
    what the failed allocation left behind cannot be saved or the slot fails the confinement guard.
    Returns the state it wrote (None: the row is gone, or another process moved it first)."""
    token = slot.fencing_token
    path = Path(slot.path)
    slot_dir = (await bounds_of(repo)).slot(path)
    listed = await _worktrees_or_none(git, Path(repo.path))
    # Without git's listing, a directory in the slot's place may hold the allocation's worktree: it is
    # checked below (and quarantined if it fails), never dropped with its row.
    if listed is None:
        registered = await anyio.to_thread.run_sync(os.path.lexists, path)
    else:
        registered = any(Path(w.path) == path for w in listed)
    draft = EventDraft(
        Action.RECLAIM,
        "rolled_back",
        agent_id=agent_id,
        repo_id=repo.id,
        worktree_id=slot.id,
        branch=slot.branch,
        detail={"reason": reason},
    )
    if not registered:
        await store.transition(
            slot.id, expect_state=SlotState.ALLOCATING, expect_token=token, delete=True, events=[draft]
        )
        return None
    if slot.since is not None and await anyio.to_thread.run_sync(clear_confined_add_marker, slot_dir, slot.since):
        # Our `git worktree add` was killed (a cancelled request kills its git): its own lock would
        # otherwise stay on a FREE slot that the next agent then cannot release.
        draft.detail["cleared"] = "git worktree add's 'initializing' lock"
    try:
        # Every command here passes the confinement guard: a slot that fails it (a symlink put in its
        # place, another repository) is quarantined below, and git never runs in it.
        status = await git.status(slot_dir)
        if status.dirty:
            # What setup or a half-done switch left behind: saved, never silently dropped.
            await save_work(git, store, agent_id, slot, slot_dir, f"allocation rolled back: {reason}")
            await git.discard_changes(slot_dir)
            await _clean_or_fail(git, slot_dir)  # else quarantined below: never FREE with work in it
        if status.branch is not None:
            await git.detach(slot_dir)
    except GitError as exc:
        quarantined = await store.transition(
            slot.id,
            expect_state=SlotState.ALLOCATING,
            expect_token=token,
            changes={"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None},
            events=[
                draft,
                EventDraft(
                    Action.RECLAIM,
                    "quarantined",
                    agent_id=agent_id,
                    repo_id=repo.id,
                    worktree_id=slot.id,
                    branch=slot.branch,
                    detail={"error": exc.reason},
                ),
            ],
        )
        return SlotState.QUARANTINED if quarantined is not None else None
    freed_slot = await store.transition(
        slot.id,
        expect_state=SlotState.ALLOCATING,
        expect_token=token,
        changes=freed(time.time()),
        events=[draft],
    )
    return SlotState.FREE if freed_slot is not None else None


async def _clean_or_fail(git: GitDriver, path: Confined) -> None:
    """After a rescue and clean-up the slot must be clean; what is left (a nested repository, changes
    inside a submodule: the clean-up never deletes them) would follow the slot to the next agent."""
    after = await git.status(path)
    if after.dirty:
        left = ", ".join(c[3:] for c in after.changed[:5])
        raise GitError(["status"], 1, f"fatal: still not clean after the rescue ({left}): left for a person")


async def _worktrees_or_none(git: GitDriver, repo: Path) -> list[WorktreeInfo] | None:
    try:
        return await git.worktrees(repo)
    except GitError:
        return None
