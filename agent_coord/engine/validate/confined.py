"""Slots whose directory fails the confinement guard (git/confinement.py): a symlink, a file, another
repository or another repository's worktree in a slot's place. Nothing is run in them or moved: they
are quarantined for a person, and a pool root that is not the pool's alone stops the whole pass."""

from __future__ import annotations

from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import PoolRootRefused, Unconfined, check_pool_root, shape
from agent_coord.engine.models import Finding
from agent_coord.engine.store.records import Slot, SlotState
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun, slot_finding


async def pool_root_refused(run: ValidationRun, rp: RepoPass) -> bool:
    """True (and a finding) when the repository's pool root must not be touched at all."""
    assert rp.bounds is not None
    try:
        await anyio.to_thread.run_sync(check_pool_root, rp.bounds, {s.path for s in rp.slots})
    except PoolRootRefused as exc:
        run.findings.append(
            Finding(
                kind="pool_root_refused",
                path=rp.repo.pool_root,
                detail=exc.message,
                action="none: nothing is run in this pool until its root is a directory of its own",
            )
        )
        return True
    return False


async def check_confined(ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot) -> bool:
    """True when the slot's directory fails the guard; it is then quarantined (or left, if it already
    is) and no other check may touch it. A transition in flight is left to its own server, which meets
    the guard at its next git command, or to the stuck-transition check, whose reclaim quarantines."""
    if s.state in (SlotState.ALLOCATING, SlotState.RELEASING):
        return False
    assert rp.bounds is not None
    try:
        await anyio.to_thread.run_sync(shape, rp.bounds, Path(s.path))
    except Unconfined as exc:
        why = exc.why
    else:
        return False
    if s.state == SlotState.QUARANTINED:
        run.skipped.append(
            slot_finding(s, kind="unconfined_slot", detail=why, action="left for a person (quarantined)")
        )
        return True
    f = slot_finding(s, kind="unconfined_slot", detail=why, action="quarantine: nothing is run in it, moved or deleted")
    if run.repair:
        done = await ck.store.transition(
            s.id,
            expect_state=s.state,
            expect_version=s.version,
            changes={"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None},
            events=[ck.repair_event(s.repo_id, s.id, s.branch, kind=f.kind, detail=why, previous_owner=s.owner)],
        )
        f.repaired = done is not None
    run.findings.append(f)
    return True
