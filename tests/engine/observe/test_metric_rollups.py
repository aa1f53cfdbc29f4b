"""The hourly metrics rollups (schema 4) agree with the metrics computed from the raw events.

Events go in through SQL, as any writer's would (the rollups are a trigger's work, so a server of
the previous schema appending the same way keeps them right), at chosen timestamps.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import pytest

from agent_coord.engine.observe.metrics import totals_from_events
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Action, Event, MetricTotals
from agent_coord.engine.store.schema import BUCKET_S, MIGRATIONS
from agent_coord.store_target import PostgresUrl
from tests.pg_support import raw

pytestmark = pytest.mark.anyio

# The trigger tells readers about events stamped into old buckets by the real clock: the log ends now.
NOW = float(int(time.time())) + 0.5
DAY = 86400.0
WINDOW = 7 * DAY

_OUTCOMES = {
    Action.ALLOCATE: ["ok", "ok", "ok", "BRANCH_CONFLICT", "POOL_EXHAUSTED", "INVALID_BRANCH", "GIT_FAILED"],
    Action.RELEASE: ["ok", "ok", "DIRTY"],
    Action.RECLAIM: ["freed", "rescued"],
    Action.ADOPT: ["BUSY", "FREE"],
    Action.RADAR: ["conflict", "cleared"],
}
_CLEARED_REASONS = ["resolved", "released"]


def history(seed: int, n: int) -> list[Event]:
    """A random log over ten days, in time order, ids in insertion order."""
    rng = random.Random(seed)
    stamps = sorted(rng.uniform(NOW - 10 * DAY, NOW) for _ in range(n))
    events = []
    for i, ts in enumerate(stamps, start=1):
        action = rng.choice([*_OUTCOMES, Action.CAS_LOST, Action.AGENT_DEAD, Action.AGENT_STALE, Action.REGISTER])
        outcome = rng.choice(_OUTCOMES.get(action, ["ok"]))
        duration = rng.choice([None, rng.uniform(0.0, 3000.0), rng.uniform(5.0, 60.0)])
        worktree = rng.choice([None, "wt-1", "wt-2", "wt-3", "wt-4"])
        detail = {"reason": rng.choice(_CLEARED_REASONS)} if outcome == "cleared" else {}
        events.append(Event(i, ts, "a1", action, 1, worktree, None, outcome, duration, None, detail))
    return events


def insert(db: Path | PostgresUrl, events: list[Event]) -> None:
    with raw(db) as conn:
        conn.executemany(
            "INSERT INTO events (id, ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    e.id,
                    e.ts,
                    e.agent_id,
                    e.action,
                    e.repo_id,
                    e.worktree_id,
                    e.branch,
                    e.outcome,
                    e.duration_ms,
                    json.dumps(e.detail),
                )
                for e in events
            ],
        )


def assert_agrees(rolled: MetricTotals, events: list[Event]) -> None:
    # The rollups' window starts at the top of the hour: compare with the exact totals over that window.
    aligned = NOW - (NOW - WINDOW) // BUCKET_S * BUCKET_S
    exact = totals_from_events(events, now=NOW, window_s=aligned)
    assert rolled.span_start == pytest.approx(exact.span_start)
    counts = ("attempts", "successes", "branch_conflicts", "cas_lost", "agent_dead", "agent_stale")
    for field in (*counts, "radar_conflicts", "radar_resolved", "radar_released"):
        assert getattr(rolled, field) == getattr(exact, field), field
    assert rolled.busy_s == pytest.approx(exact.busy_s, abs=1e-3)
    assert rolled.busy_intervals == exact.busy_intervals
    assert sum(n for _, n in rolled.latency) == len(exact.latency)
    # Every value is a real sample; within its two-significant-digit bin of the exact percentile.
    samples = {d for d, _ in exact.latency}
    assert all(value in samples for value, _ in rolled.latency)
    values = [d for d, _ in exact.latency]
    for p in (0.5, 0.99):
        rank = max(1, -(-int(p * 100) * len(values) // 100))
        true = values[rank - 1]
        seen = 0
        for value, n in rolled.latency:
            seen += n
            if seen >= rank:
                assert true <= value <= true * 1.1 + 0.1
                break


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_rollups_written_by_the_trigger_agree_with_the_events(
    store_target: Path | PostgresUrl, seed: int
) -> None:
    db = store_target
    store = await Store.open(db)
    events = history(seed, 600)
    insert(db, events)
    rolled = await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0)
    await store.close()
    assert_agrees(rolled, events)


@pytest.mark.parametrize("previous", [2, 3])
async def test_the_upgrade_from_an_earlier_schema_rolls_up_the_existing_log(tmp_path: Path, previous: int) -> None:
    db = tmp_path / "c.db"
    with sqlite3.connect(db) as conn:
        for script in MIGRATIONS[:previous]:
            conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {previous}")
    events = history(7, 600)
    insert(db, events[:400])  # a server of the earlier schema wrote these
    store = await Store.open(db)
    insert(db, events[400:])
    rolled = await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0)
    await store.close()
    assert_agrees(rolled, events)


async def test_an_empty_log_has_no_totals(store_target: Path | PostgresUrl) -> None:
    store = await Store.open(store_target)
    rolled = await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0)
    await store.close()
    assert rolled == MetricTotals(span_start=NOW)


async def test_the_sealed_hours_are_read_once_and_a_late_event_is_still_counted(
    store_target: Path | PostgresUrl,
) -> None:
    db = store_target
    store = await Store.open(db)
    events = history(4, 300)
    insert(db, events)
    first = await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0)
    assert await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0) == first
    # An allocation stamped three days ago lands in a sealed bucket (a clock step, an import).
    late = Event(10_000, NOW - 3 * DAY, "a1", Action.ALLOCATE, 1, None, None, "GIT_FAILED", 12.5, None, {})
    insert(db, [late])
    again = await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0)
    assert again.attempts == first.attempts + 1
    assert_agrees(again, [*events, late])
    # And one in the current hour joins the latency histogram merged at the previous read.
    fresh = Event(10_001, NOW - 1, "a1", Action.ALLOCATE, 1, None, None, "ok", 7777.0, None, {})
    insert(db, [fresh])
    last = await store.metric_totals(now=NOW, window_s=WINDOW, holds_since=0.0)
    await store.close()
    assert sum(n for _, n in last.latency) == sum(n for _, n in again.latency) + 1
    assert_agrees(last, [*events, late, fresh])


async def test_the_radar_count_reads_only_radar_events_through_their_index(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    await (await Store.open(db)).close()
    with sqlite3.connect(db) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM events WHERE action = 'radar' AND ts >= ? AND ts <= ?",
            (NOW - WINDOW, NOW),
        ).fetchall()
    assert any("events_radar_ts" in str(row[-1]) for row in plan), plan
