"""FREE slots: clean and on a detached HEAD by invariant. One written into, committed on, or switched
to a branch is reclaimed (its work saved to a rescue ref first)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio

from agent_coord.engine.git.driver import GitError, WorktreeStatus
from agent_coord.engine.models import Finding
from agent_coord.engine.store.records import Slot, SlotState
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun

STATUS_CONCURRENCY = 8


async def check_free_slots(ck: Checker, run: ValidationRun, rp: RepoPass, free: list[Slot]) -> None:
    statuses = await _statuses(ck, rp, free)
    suspects = [
        s
        for s in free
        if s.id in statuses and not ((st := statuses[s.id]) is not None and not st.dirty and st.branch is None)
    ]
    if not suspects:
        return
    # A slot claimed since the snapshot is being switched to its new branch right now: not drift.
    current = {c.id: c for c in await ck.store.slots(rp.repo.id)}
    for s in suspects:
        now_row = current.get(s.id)
        if now_row is None or now_row.state != SlotState.FREE or now_row.version != s.version:
            continue
        st = statuses[s.id]
        if st is not None and st.dirty:
            detail = "free slot has changes: " + ", ".join(c[3:] for c in st.changed[:5])
            if st.unsaved_commits:
                detail += f" ({st.unsaved_commits} commit(s) only on its detached HEAD)"
        elif st is not None:
            detail = f"free slot has branch {st.branch!r} checked out"
        else:
            detail = "git status failed"
        f = Finding(
            kind="dirty_free_slot" if st is None or st.dirty else "free_not_detached",
            worktree_id=s.id,
            path=s.path,
            detail=detail,
            action="save any work to a rescue ref, then detach",
        )
        if run.repair:
            rp.reclaims.append((s, f, detail))
        run.findings.append(f)


async def _statuses(ck: Checker, rp: RepoPass, free: list[Slot]) -> dict[str, WorktreeStatus | None]:
    """`git status` of every FREE slot git lists (None where it failed), with the commits only on each
    detached HEAD counted."""
    statuses: dict[str, WorktreeStatus | None] = {}
    limiter = anyio.CapacityLimiter(STATUS_CONCURRENCY)

    async def probe(s: Slot) -> None:
        async with limiter:
            try:
                statuses[s.id] = await ck.git.status(rp.slot_dir(s.path), count_unsaved=False)
            except GitError:
                statuses[s.id] = None

    async with anyio.create_task_group() as tg:
        for s in free:
            info = rp.info(s)
            if info is not None and not info.locked and not info.prunable:
                tg.start_soon(probe, s)
    # Commits only on a detached HEAD: one rev-list for the whole pool, not one per slot.
    detached = {sid: st.head for sid, st in statuses.items() if st and st.branch is None and st.head}
    try:
        unsaved = await ck.git.heads_with_unsaved_commits(Path(rp.repo.path), list(detached.values()))
    except GitError:
        unsaved = set(detached.values())  # cannot tell: treat as unsaved, so the reclaim saves them
    for sid, head in detached.items():
        st = statuses[sid]
        if st is not None and head in unsaved:
            statuses[sid] = dataclasses.replace(st, unsaved_commits=max(st.unsaved_commits, 1))
    return statuses
