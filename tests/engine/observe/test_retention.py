"""Retention: old events go (in small batches, the rollups keep counting them), young ones cannot be
deleted by anyone, and ended agents are retired after a day while live ones and slot owners stay."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent_coord.engine.observe.retention import Retention, prune
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Agent
from agent_coord.store_target import PostgresUrl
from tests.pg_support import raw

pytestmark = pytest.mark.anyio

DAY = 86400.0


def agent(agent_id: str, *, status: str, heartbeat: float, lease_s: float = 300.0) -> Agent:
    return Agent(
        id=agent_id,
        host="h",
        boot_id="b",
        pid=4_000_000,
        pid_create_time=1.0,
        server_pid=4_000_001,
        server_create_time=1.0,
        repo_id=None,
        status=status,
        note=None,
        started_at=heartbeat,
        last_heartbeat=heartbeat,
        lease_expires_at=heartbeat + lease_s,
    )


async def test_old_events_go_in_batches_and_the_metrics_still_count_them(store_target: Path | PostgresUrl) -> None:
    store = await Store.open(store_target)
    now = time.time()
    old = [(now - 6 * DAY + i, EventDraft(Action.ALLOCATE, "ok", agent_id="a", duration_ms=20.0)) for i in range(1200)]
    young = [(now - DAY + i, EventDraft(Action.ALLOCATE, "ok", agent_id="a", duration_ms=30.0)) for i in range(10)]
    await store.append_history([*old, *young])
    before = await store.metric_totals(now=now, window_s=7 * DAY, holds_since=0.0)
    retention = Retention(keep_s=2 * DAY, rollups_keep_s=8 * DAY)
    assert await prune(store, retention, now=now) == (1200, 0)
    left = await store.events()
    assert [e.action for e in left] == [Action.ALLOCATE] * 10 + [Action.PRUNE]
    assert left[-1].detail == {"events": 1200, "agents": 0, "keep_s": 2 * DAY}
    after = await store.metric_totals(now=now, window_s=7 * DAY, holds_since=0.0)
    assert after.attempts == before.attempts == 1210
    assert after.latency == before.latency
    await store.close()


async def test_no_one_deletes_an_event_inside_the_retention_period(store_target: Path | PostgresUrl) -> None:
    db = store_target
    store = await Store.open(db)
    now = time.time()
    await store.append_history([(now - 9 * DAY, EventDraft(Action.REGISTER, "ok")), (now, EventDraft("x", "ok"))])
    await store.close()
    with raw(db) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE action = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET outcome = 'no' WHERE action = 'register'")
        conn.execute("DELETE FROM events WHERE action = 'register'")  # older than the 8 days kept
        assert conn.execute("SELECT action FROM events") == [("x",)]


async def test_ended_agents_are_retired_after_a_day_and_no_longer_read(store_target: Path | PostgresUrl) -> None:
    db = store_target
    store = await Store.open(db)
    now = time.time()
    await store.register_agent(agent("gone", status="disconnected", heartbeat=now - 2 * DAY))
    await store.register_agent(agent("dead", status="dead", heartbeat=now - 2 * DAY))
    await store.register_agent(agent("silent", status="active", heartbeat=now - 2 * DAY))
    await store.register_agent(agent("recent", status="disconnected", heartbeat=now - 3600))
    await store.register_agent(agent("live", status="active", heartbeat=now))
    await store.register_agent(agent("owner", status="disconnected", heartbeat=now - 2 * DAY))
    with raw(db) as conn:
        conn.execute("INSERT INTO repos (id, path, pool_root, created_at) VALUES (1, '/r', '/p', 0)")
        conn.execute(
            "INSERT INTO slots (id, repo_id, path, state, owner, branch, created_at)"
            " VALUES ('wt-1', 1, '/p/wt-1', 'BUSY', 'owner', 'b', 0)"
        )
    assert {a.id for a in await store.live_agents()} == {"silent", "live", "owner"}
    retention = Retention(keep_s=8 * DAY, rollups_keep_s=8 * DAY)
    assert await prune(store, retention, now=now) == (0, 3)
    assert {a.id for a in await store.agents()} == {"recent", "live", "owner"}
    with raw(db) as conn:  # their recorded starts went with them
        assert conn.execute("SELECT COUNT(*) FROM agent_starts WHERE agent_id = 'gone'") == [(0,)]
    await store.close()
