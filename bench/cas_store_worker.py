"""The store side of bench/store_cas.py: allocate+release cycles through agent-coord's `Store`,
counting the SQLITE_BUSY it absorbed and any that reached the caller.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.cas_cycle import LEASE_S, Pacer, Tally, slot_paths, wait_until


async def store_worker(db: Path, pool_max: int, duration: float, rate: float, start: float) -> dict[str, Any]:
    from agent_coord.engine.store import EventDraft, Store, StoreBusyError
    from agent_coord.engine.store import connection as connection_module
    from agent_coord.engine.store.records import Action, SlotState, freed

    busy_retried = 0
    original_is_busy = connection_module._is_busy

    def counting_is_busy(exc: BaseException) -> bool:
        nonlocal busy_retried
        hit = original_is_busy(exc)
        if hit:
            busy_retried += 1
        return hit

    connection_module._is_busy = counting_is_busy  # count the SQLITE_BUSY the store absorbed
    store = await Store.open(db)
    repo = await store.ensure_repo("/bench/repo", "/bench/pool")
    owner = f"bench-{os.getpid()}"
    branch = f"b-{os.getpid()}"
    paths = slot_paths(pool_max)
    await wait_until(start)
    pacer = Pacer(start, duration, rate)
    tally = Tally()
    while (delay := pacer.next_delay()) is not None:
        if delay > 0:
            await asyncio.sleep(delay)
        c0 = time.perf_counter()
        try:
            slot = None
            while slot is None:
                t = time.perf_counter()
                slot = await store.claim_any_free_slot(
                    repo.id, paths=paths, warmest=True, owner=owner, branch=branch, task=None, lease_s=LEASE_S
                )
                if slot is None:
                    slot = await store.claim_new_slot(
                        repo, owner=owner, branch=branch, task=None, lease_s=LEASE_S, pool_max=pool_max
                    )
                tally.op(t)
                if slot is None:
                    tally.lost += 1
            token = slot.fencing_token
            t = time.perf_counter()
            busy = await store.transition(
                slot.id,
                expect_state=SlotState.ALLOCATING,
                expect_token=token,
                changes={"state": SlotState.BUSY, "lease_expires_at": time.time() + LEASE_S, "setup_done": 1},
                events=[
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        agent_id=owner,
                        repo_id=repo.id,
                        worktree_id=slot.id,
                        branch=branch,
                        duration_ms=0.0,
                        fencing_token=token,
                    )
                ],
            )
            tally.op(t)
            assert busy is not None, "lost a CAS on a slot this process owns"
            t = time.perf_counter()
            released = await store.transition(
                slot.id,
                expect_state=SlotState.BUSY,
                expect_token=token,
                changes=freed(time.time()),  # what the pool's release writes
                events=[
                    EventDraft(
                        Action.RELEASE,
                        "ok",
                        agent_id=owner,
                        repo_id=repo.id,
                        worktree_id=slot.id,
                        branch=branch,
                        duration_ms=0.0,
                        fencing_token=token,
                    )
                ],
            )
            tally.op(t)
            assert released is not None, "lost a CAS on a slot this process owns"
        except (StoreBusyError, sqlite3.OperationalError):
            tally.busy_to_caller += 1
            continue
        tally.cycle(c0)
    elapsed = time.time() - start
    await store.close()
    return tally.result(busy_retried, elapsed)
