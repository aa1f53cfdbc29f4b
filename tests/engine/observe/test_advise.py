"""`advise`: synthetic months built through the store's own calls, each crossing one rule, give exactly
that recommendation, with its evidence, what it would have changed and how to apply it; a healthy
month gives none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.observe.advise import Advice, Current, advice_from_store
from agent_coord.engine.observe.metrics import history_start, report_from_totals
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Agent

pytestmark = pytest.mark.anyio

HOUR = 3600.0
DAY = 86400.0
MONTH = 30 * DAY
DEFAULTS = Current(
    pool_max=8, stale_after_s=300.0, heartbeat_active_s=10.0, heartbeat_idle_s=60.0, contention_threshold=3
)
RULES = ["pool_max", "stale_after", "heartbeat", "contention_threshold", "warm_slots"]


@dataclass(frozen=True)
class Month:
    """A month of two agents' work: two slots held around the clock (re-granted every hour), two agent
    sessions a day renewing their leases for an hour."""

    slots: int = 4
    strategy: str = "optimistic"
    level: int = 1
    lost_every: int = 0  # every n-th allocation lost one CAS race (0: none)
    jitter_ms: float = 0.0
    renew_every_s: float = 60.0
    long_gap_s: float = 0.0  # one live agent's renewal this late, once
    refusal_days: tuple[int, ...] = ()  # days the pool fills up and two agents are refused


async def build(store: Store, month: Month, now: float) -> None:
    start = now - MONTH + 60
    entries: list[tuple[float, EventDraft]] = []
    n = 0
    for hour in range(int(MONTH // HOUR) - 1):
        t = start + hour * HOUR
        for slot in ("wt-01", "wt-02"):
            n += 1
            lost = month.lost_every and n % month.lost_every == 0
            detail = {
                "strategy": month.strategy,
                "attempts": 2 if lost else 1,
                "jitter_ms": month.jitter_ms,
                "contention": {"level": month.level},
            }
            owner = f"agent-{hour // 24}-{slot}"
            entries.append(
                (
                    t,
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        agent_id=owner,
                        repo_id=1,
                        worktree_id=slot,
                        branch="b",
                        duration_ms=50.0,
                        detail=detail,
                    ),
                )
            )
    for day in month.refusal_days:
        t = start + day * DAY + 5 * HOUR + 60
        for i in range(3, 9):
            entries.append(
                (
                    t + i,
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        agent_id=f"burst-{i}",
                        repo_id=1,
                        worktree_id=f"wt-{i:02d}",
                        branch=f"b{i}",
                        duration_ms=900.0,
                    ),
                )
            )
        for who in ("late-1", "late-2", "late-1"):  # late-1 asks twice
            t += 20
            entries.append(
                (t, EventDraft(Action.ALLOCATE, "POOL_EXHAUSTED", agent_id=who, repo_id=1, branch="c", duration_ms=5.0))
            )
        for i in range(3, 9):
            entries.append(
                (
                    t + HOUR / 2 + i,
                    EventDraft(Action.RELEASE, "ok", agent_id=f"burst-{i}", repo_id=1, worktree_id=f"wt-{i:02d}"),
                )
            )
    await store.append_history(entries)
    for day in range(29):
        for k in range(2):
            t0 = start + day * DAY + k * 600
            agent_id = f"session-{day}-{k}"
            await store.register_agent(agent(agent_id, t0))
            times = [t0 + month.renew_every_s * (i + 1) for i in range(int(HOUR // month.renew_every_s))]
            if month.long_gap_s and day == 15 and k == 0:
                times = [t + month.long_gap_s - month.renew_every_s for t in times]
            await store.renewal_history(agent_id, 4_000_001, times, 300.0)


def agent(agent_id: str, t: float) -> Agent:
    return Agent(
        id=agent_id,
        host="h",
        boot_id="b",
        pid=4_000_000,
        pid_create_time=1.0,
        server_pid=4_000_001,
        server_create_time=1.0,
        repo_id=1,
        status="active",
        note=None,
        started_at=t,
        last_heartbeat=t,
        lease_expires_at=t + 300.0,
    )


async def advice_for(tmp_path: Path, month: Month, current: Current = DEFAULTS) -> Advice:
    store = await Store.open(tmp_path / "month.db")
    now = time.time()
    await build(store, month, now)
    totals = await store.metric_totals(now=now, window_s=MONTH, holds_since=history_start(now, MONTH))
    report = report_from_totals(totals, now=now, window_s=MONTH, slot_count=month.slots)
    advice = await advice_from_store(store, current, report, slot_count=month.slots, now=now)
    await store.close()
    return advice


async def test_a_healthy_month_needs_no_change(tmp_path: Path) -> None:
    advice = await advice_for(tmp_path, Month())
    assert advice.recommendations == [], [r.evidence for r in advice.recommendations]
    assert [c.rule for c in advice.checks] == [
        "pool_max",
        "stale_after",
        "heartbeat",
        "contention_threshold",
        "warm_slots",
    ]
    evidence = {c.rule: c.evidence for c in advice.checks}
    assert "no POOL_EXHAUSTED refusal" in evidence["pool_max"]
    assert "longest gap between two renewals of a live agent was 60 s" in evidence["stale_after"]
    assert "pool utilisation 50%" in evidence["warm_slots"]


@pytest.mark.parametrize(
    ("month", "current", "rule", "setting", "recommended", "would_have"),
    [
        (
            Month(refusal_days=(3, 10, 20)),
            DEFAULTS,
            "pool_max",
            "AGENT_COORD_POOL_MAX",
            10,  # 8 held and two agents waiting
            "none of the 9 refusals",
        ),
        (Month(long_gap_s=200.0), DEFAULTS, "stale_after", "AGENT_COORD_STALE_AFTER_S", 420, "0 agents renewed after"),
        (
            Month(renew_every_s=120.0),
            replace(DEFAULTS, heartbeat_idle_s=120.0),
            "heartbeat",
            "AGENT_COORD_HEARTBEAT_IDLE_S",
            75,
            "4 renewals per lease instead of 2.5",
        ),
        (
            Month(strategy="pessimistic", level=3, jitter_ms=250.0),
            DEFAULTS,
            "contention_threshold",
            "AGENT_COORD_CONTENTION_THRESHOLD",
            4,
            "1438 allocations at contention 3 would have been optimistic: 359.5 s of jitter not waited",
        ),
        (
            Month(level=2, lost_every=10),
            DEFAULTS,
            "contention_threshold",
            "AGENT_COORD_CONTENTION_THRESHOLD",
            2,
            "would have been pessimistic",
        ),
        (Month(slots=8), DEFAULTS, "warm_slots", "warm slots (the pool's size)", 4, "utilisation 50% with 4 slots"),
        (Month(slots=2), DEFAULTS, "warm_slots", "warm slots (the pool's size)", 4, "utilisation 50% with 4 slots"),
    ],
    ids=["pool_max", "stale_after", "heartbeat", "contention_up", "contention_down", "fewer_slots", "more_slots"],
)
async def test_a_month_that_crosses_one_rule_gets_exactly_that_recommendation(
    tmp_path: Path, month: Month, current: Current, rule: str, setting: str, recommended: float, would_have: str
) -> None:
    advice = await advice_for(tmp_path, month, current)
    (only,) = advice.recommendations
    assert (only.rule, only.setting, only.recommended) == (rule, setting, recommended), only.evidence
    assert would_have in only.would_have, only.would_have
    assert only.apply and only.evidence
    assert sorted([only.rule, *(c.rule for c in advice.checks)]) == sorted(RULES)  # every other rule: no change


async def test_advise_on_the_command_line(env: dict[str, str], tmp_path: Path) -> None:
    """Registered in the lazy command map; --json is the Advice document."""
    store = await Store.open(Path(env["AGENT_COORD_DB"]))
    await store.append_history(
        [(time.time() - 60, EventDraft(Action.ALLOCATE, "POOL_EXHAUSTED", agent_id="a", branch="x", duration_ms=5.0))]
    )
    await store.close()
    full: dict[str, Any] = {**os.environ, **env, "AGENT_COORD_POOL_MAX": "2"}
    run = subprocess.run(
        [sys.executable, "-m", "agent_coord", "advise", "--json"],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    advice = json.loads(run.stdout)
    assert [(r["rule"], r["recommended"]) for r in advice["recommendations"]] == [("pool_max", 3)]
    assert "AGENT_COORD_POOL_MAX=3" in advice["recommendations"][0]["apply"]
    text = subprocess.run(
        [sys.executable, "-m", "agent_coord", "advise"],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert text.stdout.startswith("AGENT_COORD_POOL_MAX: 2 -> 3")
