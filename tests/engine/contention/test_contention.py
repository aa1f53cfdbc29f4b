"""The adaptive strategy: contention from the store, the process table and ManicTime drives allocation."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.coordinator import Coordinator
from tests.conftest import run_agents
from tests.manictime_fixture import APPS, USAGE, FixtureActivity, build_manictime_db

pytestmark = pytest.mark.anyio


async def _agents(stack: AsyncExitStack, settings: Any, n: int) -> list[Coordinator]:
    return [
        await stack.enter_async_context(Coordinator.open(settings, register=True, agent_id=f"agent-{i}"))
        for i in range(n)
    ]


def _focus_db(path: Path, title: str) -> None:
    """A ManicTime database whose focused window, right now, is a terminal titled `title`."""
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(minutes=10), now + timedelta(minutes=5)
    build_manictime_db(
        path,
        activities=[
            FixtureActivity(USAGE, start, end, "Active", "Active"),
            FixtureActivity(APPS, start - timedelta(minutes=20), start, "Slack", "general - Slack"),
            FixtureActivity(APPS, start, end, "Windows Terminal", title),
        ],
    )


async def test_two_live_agents_is_optimistic_one_attempt(make_settings: Any) -> None:
    settings = make_settings()
    async with AsyncExitStack() as stack:
        me, _ = await _agents(stack, settings, 2)
        result = await me.pool.allocate("calm")
        assert result.strategy == "optimistic" and result.attempts == 1 and result.jitter_ms == 0
        assert result.contention.live_agents == 2 and result.contention.level == 2
        event = [e for e in await me.store.events() if e.action == "allocate"][-1]
        assert event.detail["strategy"] == "optimistic"
        assert event.detail["contention"]["live_agents"] == 2


async def test_five_live_agents_is_pessimistic_with_jitter(make_settings: Any) -> None:
    settings = make_settings(jitter_max_ms=200)
    async with AsyncExitStack() as stack:
        me, *_ = await _agents(stack, settings, 5)
        jitters = []
        for i in range(4):
            result = await me.pool.allocate(f"busy-{i}")
            assert result.strategy == "pessimistic"
            assert result.contention.live_agents == 5
            jitters.append(result.jitter_ms)
        assert all(0 <= j <= 200 for j in jitters) and any(j > 0 for j in jitters)
        events = [e for e in await me.store.events() if e.action == "allocate"]
        assert all(e.detail["strategy"] == "pessimistic" for e in events)
        assert all(e.detail["contention"]["level"] == 5 for e in events)


async def test_focused_caller_skips_jitter_and_gets_the_warmest_slot(make_settings: Any, tmp_path: Path) -> None:
    db = tmp_path / "ManicTimeReports.db"
    _focus_db(db, "u@box: claude — agent-0 — feat/focus")
    settings = make_settings(manictime_db=db, jitter_max_ms=400)
    async with AsyncExitStack() as stack:
        me, other, *_ = await _agents(stack, settings, 5)
        # Two free slots: the warmest is the one released last.
        a = await other.pool.allocate("warm-a")
        b = await other.pool.allocate("warm-b")
        await other.pool.release(worktree_id=a.worktree_id)
        time.sleep(0.01)
        await other.pool.release(worktree_id=b.worktree_id)
        result = await me.pool.allocate("feat/focus")
        assert result.strategy == "pessimistic"
        assert result.contention.caller_focused and result.contention.focused_agent == "agent-0"
        assert result.contention.user_presence == "active"
        assert result.jitter_ms == 0
        assert result.worktree_id == b.worktree_id  # the most recently released
        event = [e for e in await me.store.events() if e.action == "allocate"][-1]
        assert event.detail["jitter_ms"] == 0 and event.detail["contention"]["caller_focused"] is True
        # An unfocused agent under the same contention takes the coldest free slot instead.
        await me.pool.release(worktree_id=result.worktree_id)
        c = await other.pool.allocate("not-focused")
        assert c.contention.caller_focused is False
        assert c.worktree_id == a.worktree_id


async def test_status_without_manictime_says_why(coord: Any) -> None:
    status = await coord.status()
    assert status.contention is not None
    sources = {s.name: s for s in status.contention.sources}
    assert sources["store"].used
    assert sources["processes"].used
    assert not sources["manictime"].used and "no ManicTime database configured" in (sources["manictime"].reason or "")


async def test_manictime_locked_does_not_block_allocation(make_settings: Any, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "ManicTimeReports.db"
    _focus_db(db, "agent-0 terminal")
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        settings = make_settings(manictime_db=db)
        async with Coordinator.open(settings, register=True, agent_id="agent-0") as me:
            started = time.monotonic()
            result = await me.pool.allocate("while-locked")
            assert time.monotonic() - started < settings.allocation_timeout_s
            manictime = next(s for s in result.contention.sources if s.name == "manictime")
            assert not manictime.used and "locked" in (manictime.reason or "")
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_six_processes_race_for_three_slots(env: dict[str, str]) -> None:
    async def script(client: Any, i: int) -> Any:
        return await client.call_tool("allocate_worktree", {"branch": f"race-{i}"})

    # Each call ends within the server's own allocation timeout, or answers ALLOCATION_TIMEOUT.
    results = await run_agents(env, 6, script, prefix="pess", AGENT_COORD_POOL_MAX="3")
    wins = [r.structured_content for r in results if not r.is_error]
    losses = [r.content[0].text for r in results if r.is_error]
    assert len(wins) == 3
    assert all(w["strategy"] == "pessimistic" for w in wins)
    assert all(text.startswith("POOL_EXHAUSTED:") for text in losses), losses
    assert len({w["worktree_id"] for w in wins}) == 3


async def test_focus_rules_are_settings(make_settings: Any, tmp_path: Path) -> None:
    db = tmp_path / "ManicTimeReports.db"
    _focus_db(db, "u@box: claude — agent-0")
    matched = make_settings(manictime_db=db)
    ignored = make_settings(manictime_db=db, focus_match=("worktree_path", "branch"))
    for settings, expected in ((matched, "agent-0"), (ignored, None)):
        async with Coordinator.open(settings, register=True, agent_id="agent-0") as me:
            snapshot = await me.contention.snapshot(await me.default_repo())
            assert snapshot.focused_agent == expected
