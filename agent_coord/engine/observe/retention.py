"""Retention: the event log keeps raw events for a period, the metrics their hourly rollups; ended
agents are retired after a day. Run by the one validating server, in small transactions."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import anyio.lowlevel

from agent_coord.engine.observe.metrics import LOOKBACK_S
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action

RETIRE_AFTER_S = 86400.0
BATCH = 500
# At most this many batches per pass, so a first pass over a long history does not hold the validator
# for minutes; the next pass goes on where it stopped.
MAX_BATCHES = 40


@dataclass(frozen=True)
class Retention:
    keep_s: float  # raw events younger than this are kept (and cannot be deleted)
    rollups_keep_s: float  # the metrics window plus the look-back: what the metrics read
    retire_after_s: float = RETIRE_AFTER_S

    @classmethod
    def of(cls, metrics_window_s: float, keep_days: float | None) -> Retention:
        rollups = metrics_window_s + LOOKBACK_S
        return cls(keep_s=keep_days * 86400.0 if keep_days is not None else rollups, rollups_keep_s=rollups)


async def prune(store: Store, retention: Retention, *, now: float | None = None) -> tuple[int, int]:
    """Delete old events and retire ended agents; returns (events, agents) removed. Logs one `prune`
    event when anything went."""
    now = time.time() if now is None else now
    events = agents = 0
    for _ in range(MAX_BATCHES):
        went = await store.prune_events(
            now=now, keep_s=retention.keep_s, rollups_keep_s=retention.rollups_keep_s, batch=BATCH
        )
        events += went
        if went < BATCH:
            break
        await anyio.lowlevel.checkpoint()  # let the other writers in between two batches
    for _ in range(MAX_BATCHES):
        went = await store.retire_agents(now=now, after_s=retention.retire_after_s, batch=BATCH)
        agents += went
        if went < BATCH:
            break
        await anyio.lowlevel.checkpoint()
    if events or agents:
        await store.log(
            EventDraft(Action.PRUNE, "ok", detail={"events": events, "agents": agents, "keep_s": retention.keep_s})
        )
    return events, agents
