"""The second phase of an allocation: ALLOCATING → BUSY under the same fencing token, with its event,
and what the agent is told (also for a branch it already holds)."""

from __future__ import annotations

import time

from opentelemetry import trace

from agent_coord.engine.allocate.slot_git import Claim
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.models import AllocationResult, Contention
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Repo, Slot, SlotState

tracer = trace.get_tracer("agent-coord.pool")


async def grant(
    store: Store,
    agent_id: str,
    repo: Repo,
    claim: Claim,
    branch: str,
    *,
    strategy: str,
    attempts: int,
    jitter_ms: float,
    snapshot: Contention,
    started: float,
    lease_s: float,
    base: str | None = None,
) -> AllocationResult:
    latency = (time.monotonic() - started) * 1000
    token = claim.slot.fencing_token
    assert token is not None
    lease_until = time.time() + lease_s
    with tracer.start_as_current_span("cas.commit"):
        slot = await store.transition(
            claim.slot.id,
            expect_state=SlotState.ALLOCATING,
            expect_token=token,
            changes={"state": SlotState.BUSY, "lease_expires_at": lease_until, "setup_done": 1},
            events=[
                EventDraft(
                    Action.ALLOCATE,
                    "ok",
                    agent_id=agent_id,
                    repo_id=repo.id,
                    worktree_id=claim.slot.id,
                    branch=branch,
                    duration_ms=latency,
                    fencing_token=token,
                    detail={
                        "strategy": strategy,
                        "attempts": attempts,
                        "warm": claim.warm,
                        "jitter_ms": round(jitter_ms, 1),
                        "contention": snapshot.model_dump(mode="json"),
                        # What the conflict radar compares this allocation with (engine/radar).
                        **({"base": base} if base is not None else {}),
                    },
                )
            ],
        )
    if slot is None:
        raise CoordError(
            ErrorCode.ALLOCATION_TIMEOUT,
            f"{claim.slot.id} was rolled back by validation while git ran; nothing is held",
        )
    return AllocationResult(
        worktree_id=slot.id,
        path=slot.path,
        branch=branch,
        repo=repo.path,
        agent_id=agent_id,
        fencing_token=token,
        lease_expires_at=lease_until,
        reused=claim.warm,
        strategy=strategy,  # type: ignore[arg-type]
        attempts=attempts,
        latency_ms=round(latency, 2),
        contention=snapshot,
        jitter_ms=round(jitter_ms, 1),
    )


def existing(agent_id: str, repo: Repo, slot: Slot, snapshot: Contention, started: float) -> AllocationResult:
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
