"""Git states a person can leave in a slot that `git status` does not show as changes: an operation
stopped half-way (rebase, merge, cherry-pick, revert, bisect), a left-over `index.lock`, a worktree
moved away with `git worktree move`; and quarantined slots whose cause has gone since.

* a FREE slot in such a state is quarantined (never handed out: git would refuse to switch it); an
  `index.lock` counts only once it persists (the same file at two passes, or older than
  `STALE_INDEX_LOCK_S`): any reader with optional locks (an editor's `git status`) takes one for a moment;
* a BUSY slot's operation is its owner's business: reported under `skipped`, left alone;
* a moved worktree keeps its record (its release is refused until a person moves it back); reported;
* a QUARANTINED slot that is clean again (no changes, no commits only on its HEAD, no operation, no
  lock) goes back to the pool through the reclaimer, which detaches it first.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from agent_coord.engine.git.driver import GitError
from agent_coord.engine.git.operations import INDEX_LOCK, describe, index_lock, moved_worktree, operation_in_progress
from agent_coord.engine.store.records import Slot, SlotState
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun, slot_finding

HEAL_REASON = "quarantine cleared: the worktree is clean and no git operation is in progress"
# A reader's lock lives milliseconds, a slow `git status` seconds; one older than this was left by a git
# that is gone (it counts at once, also for a one-shot `agent-coord validate`).
STALE_INDEX_LOCK_S = 60.0


async def stopped_operation(s: Slot) -> str | None:
    found = await anyio.to_thread.run_sync(lambda: operation_in_progress(Path(s.path), with_index_lock=True))
    return describe(found, Path(s.path)) if found is not None else None


async def persistent_index_lock(ck: Checker, s: Slot) -> str | None:
    """Why the slot's `index.lock` is no reader's passing lock, or None (no lock, or a new one).

    The lock counts when the very file (device, inode, mtime) was there at this validator's previous
    pass, or when it is older than STALE_INDEX_LOCK_S. A lock file does not name the process that holds
    it, so persistence is the proof that no reader is about to drop it."""
    lock = await anyio.to_thread.run_sync(index_lock, Path(s.path), ck.ctx.now())
    seen = ck.index_locks.pop(s.id, None)
    if lock is None:
        return None
    ck.index_locks[s.id] = lock.identity
    if lock.identity != seen and lock.age_s < STALE_INDEX_LOCK_S:
        return None
    how_long = "since the previous validation" if lock.identity == seen else f"for {lock.age_s:.0f}s"
    return f"{describe((INDEX_LOCK, lock.marker), Path(s.path))} (there {how_long})"


async def check_free_operation(ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot) -> bool:
    """Quarantine a FREE slot with an operation stopped in it, or a lock that persists; True when there
    was one. A new `index.lock` is reported under `skipped` and judged again at the next pass."""
    found = await anyio.to_thread.run_sync(lambda: operation_in_progress(Path(s.path)))
    why = describe(found, Path(s.path)) if found is not None else await persistent_index_lock(ck, s)
    if why is None:
        if s.id in ck.index_locks:
            run.skipped.append(
                slot_finding(
                    s,
                    kind="index_lock",
                    detail=f"free slot has an index.lock ({INDEX_LOCK.marker}): a git reading it, or one killed",
                    action="left alone: quarantined if the same lock is still there at the next validation",
                )
            )
        return False
    now = await ck.store.slot(s.id)
    if now is None or now.state != SlotState.FREE or now.version != s.version:
        return True  # claimed since the snapshot: the git at work there is the allocation's
    f = slot_finding(
        s,
        kind="operation_in_progress",
        detail=f"free slot: {why}",
        action="quarantine it (git would refuse to switch it to the next agent's branch)",
    )
    if run.repair:
        done = await ck.store.transition(
            s.id,
            expect_state=SlotState.FREE,
            expect_version=s.version,
            changes={"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None},
            events=[ck.repair_event(s.repo_id, s.id, s.branch, kind=f.kind, detail=why)],
        )
        f.repaired = done is not None
    run.findings.append(f)
    return True


async def note_busy_operation(run: ValidationRun, s: Slot) -> None:
    why = await stopped_operation(s)
    if why is not None:
        run.skipped.append(
            slot_finding(
                s,
                kind="operation_in_progress",
                detail=why,
                action="left alone: its owner's to finish; the slot cannot be released until then",
            )
        )


def note_moved(run: ValidationRun, rp: RepoPass, s: Slot) -> bool:
    """A slot whose worktree git lists elsewhere (`git worktree move`): report it, keep the record."""
    moved = moved_worktree(rp.listing, s.path, s.branch)
    if moved is None:
        return False
    run.findings.append(
        slot_finding(
            s,
            kind="moved_worktree",
            detail=f"{s.state.value} slot's worktree was moved to {moved.path}",
            action=f"none: a person moves it back (git worktree move -- {moved.path} {s.path}); until then "
            "its release is refused",
        )
    )
    return True


async def heal_quarantined(ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot) -> None:
    """A quarantined slot whose cause is gone goes back to the pool (repair), else stays as it is.
    One that still names an agent (a forced release it kept writing through) waits for that agent:
    once it is gone, the slot is reclaimed as a dead agent's is, what it wrote saved first."""
    if await stopped_operation(s) is not None:
        return
    if s.owner is not None:
        _, verdict = await ck.owner(s.owner, run)
        if verdict.alive:
            return
        f = slot_finding(
            s,
            kind="quarantine_cleared",
            detail=f"quarantined while its agent wrote in it; the agent is gone ({verdict.reason})",
            action="save what it wrote since to a rescue ref, then return it to the pool",
        )
        if run.repair:
            rp.reclaims.append((s, f, f"{HEAL_REASON}; its writer is gone: {verdict.reason}"))
        run.findings.append(f)
        return
    try:
        status = await ck.git.status(rp.slot_dir(s.path))
    except GitError:
        return
    if status.dirty:
        return
    f = slot_finding(
        s,
        kind="quarantine_cleared",
        detail="quarantined, but clean now: no changes, no commits only on its HEAD, no git operation",
        action="return it to the pool on a detached HEAD",
    )
    if run.repair:
        rp.reclaims.append((s, f, HEAL_REASON))
    run.findings.append(f)
