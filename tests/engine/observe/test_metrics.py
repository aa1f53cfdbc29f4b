"""Metrics from constructed event histories whose answers are worked out by hand."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_coord.engine.observe.metrics import (
    ROW_HEADER,
    MetricsReport,
    compute_metrics,
    history_start,
    percentile_nearest_rank,
)
from agent_coord.engine.store.records import Action, Event

NOW = 1_800_000_000.0
H = 3600.0
DAY = 86400.0
_ids = itertools.count(1)


def ev(ts: float, action: str, outcome: str = "ok", **kw: Any) -> Event:
    fields: dict[str, Any] = {
        "agent_id": "a1",
        "repo_id": 1,
        "worktree_id": None,
        "branch": None,
        "duration_ms": None,
        "fencing_token": None,
    }
    fields.update(kw)
    return Event(id=next(_ids), ts=ts, action=action, outcome=outcome, **fields)


def allocs(n: int, outcome: str = "ok", ts: float = NOW - H, duration_ms: float | None = 100.0) -> list[Event]:
    return [ev(ts, Action.ALLOCATE, outcome, duration_ms=duration_ms) for _ in range(n)]


def report(events: list[Event], **kw: Any) -> MetricsReport:
    kw.setdefault("slot_count", 4)
    return compute_metrics(events, now=NOW, **kw)


def test_empty_history_is_all_not_enough_data() -> None:
    r = report([])
    assert len(r.metrics) == 8  # predicted_merge_conflicts (the conflict radar) included
    assert all(m.state == "not enough data" and m.value is None for m in r.metrics)
    assert r.overall == "not enough data"
    assert r.computed_at == NOW
    assert r.window_s == 7 * DAY


def test_too_few_allocations_is_not_enough_data() -> None:
    r = report(allocs(4))
    for name in ("allocation_success_rate", "allocation_latency_p50", "allocation_latency_p99"):
        assert r.get(name).state == "not enough data"
        assert r.get(name).samples == 4
    assert report(allocs(4), min_samples=4).get("allocation_success_rate").value == 1.0


@pytest.mark.parametrize(
    ("ok", "failed", "value", "state"),
    [
        (20, 0, 1.0, "ok"),
        (96, 4, 0.96, "ok"),
        (19, 1, 0.95, "warning"),
        (9, 1, 0.9, "warning"),
        (8, 2, 0.8, "failing"),
    ],
)
def test_success_rate(ok: int, failed: int, value: float, state: str) -> None:
    m = report(allocs(ok) + allocs(failed, "POOL_EXHAUSTED")).get("allocation_success_rate")
    assert m.value == pytest.approx(value)
    assert m.state == state
    assert m.samples == ok + failed


def test_caller_errors_are_not_attempts() -> None:
    events = (
        allocs(18)
        + allocs(2, "GIT_FAILED")
        + allocs(5, "INVALID_BRANCH")
        + allocs(1, "NOT_A_REPOSITORY")
        + allocs(1, "INVALID_ARGUMENT")
    )
    r = report(events)
    assert r.get("allocation_success_rate").value == pytest.approx(0.9)
    assert r.get("allocation_success_rate").samples == 20
    assert r.get("allocation_latency_p50").samples == 20
    assert r.get("conflict_rate").samples == 20


def test_nearest_rank_percentile() -> None:
    data = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile_nearest_rank(data, 5) == 15
    assert percentile_nearest_rank(data, 30) == 20
    assert percentile_nearest_rank(data, 40) == 20
    assert percentile_nearest_rank(data, 50) == 35
    assert percentile_nearest_rank(data, 100) == 50
    with pytest.raises(ValueError):
        percentile_nearest_rank([], 50)


def test_latency_percentiles_include_failures_and_skip_missing_durations() -> None:
    events = [ev(NOW - H, Action.ALLOCATE, "ok", duration_ms=float(d)) for d in range(1, 91)]
    events += [ev(NOW - H, Action.ALLOCATE, "ALLOCATION_TIMEOUT", duration_ms=float(d)) for d in range(91, 101)]
    events += allocs(3, duration_ms=None)
    r = report(events)
    p50, p99 = r.get("allocation_latency_p50"), r.get("allocation_latency_p99")
    assert (p50.value, p50.samples, p50.state) == (50, 100, "ok")
    assert (p99.value, p99.samples, p99.state) == (99, 100, "ok")


@pytest.mark.parametrize(("ms", "state"), [(5000.0, "ok"), (6000.0, "warning"), (10000.0, "failing")])
def test_latency_p99_thresholds(ms: float, state: str) -> None:
    m = report(allocs(10, duration_ms=ms)).get("allocation_latency_p99")
    assert m.value == ms
    assert m.state == state


def test_conflict_rate() -> None:
    events = allocs(97) + allocs(1, "BRANCH_CONFLICT") + [ev(NOW - H, Action.CAS_LOST) for _ in range(2)]
    m = report(events).get("conflict_rate")
    assert m.value == pytest.approx(3 / 100)
    assert m.samples == 100
    assert m.state == "warning"
    assert report(allocs(200)).get("conflict_rate").state == "ok"
    assert report(allocs(10) + allocs(1, "BRANCH_CONFLICT")).get("conflict_rate").state == "failing"


def test_utilization_over_full_window() -> None:
    events = [
        ev(NOW - 10 * H, Action.ALLOCATE, worktree_id="wt-1"),
        ev(NOW - 5 * H, Action.RELEASE, worktree_id="wt-1"),
        ev(NOW - 4 * H, Action.ALLOCATE, worktree_id="wt-2"),  # still held at `now`
    ]
    m = report(events, window_s=10 * H, slot_count=2).get("pool_utilization")
    assert m.value == pytest.approx(9 / 20)
    assert m.state == "ok"
    assert m.samples == 2


def test_utilization_clips_a_grant_from_before_the_window() -> None:
    events = [
        ev(NOW - 12 * H, Action.ALLOCATE, worktree_id="wt-1"),
        ev(NOW - 8 * H, Action.RELEASE, worktree_id="wt-1"),
        ev(NOW - 11 * H, Action.ALLOCATE, worktree_id="wt-2"),
        ev(NOW - 10.5 * H, Action.RELEASE, worktree_id="wt-2"),  # entirely before the window
    ]
    m = report(events, window_s=10 * H, slot_count=1).get("pool_utilization")
    assert m.value == pytest.approx(2 / 10)
    assert m.state == "warning"
    assert m.samples == 1


def test_utilization_span_starts_at_first_event() -> None:
    events = [
        ev(NOW - 2 * H, Action.ALLOCATE, worktree_id="wt-1"),
        ev(NOW - 1 * H, Action.RELEASE, worktree_id="wt-1"),
    ]
    assert report(events, slot_count=1).get("pool_utilization").value == pytest.approx(0.5)


def test_utilization_interval_ends() -> None:
    events = [
        ev(NOW - 10 * H, Action.REGISTER),
        ev(NOW - 10 * H, Action.ALLOCATE, worktree_id="wt-1"),
        ev(NOW - 9 * H, Action.RELEASE, "WORKTREE_DIRTY", worktree_id="wt-1"),  # refused: still busy
        ev(NOW - 8 * H, Action.RECLAIM, "rescued", worktree_id="wt-1"),  # 2 h
        ev(NOW - 8 * H, Action.ALLOCATE, worktree_id="wt-2"),
        ev(NOW - 7 * H, Action.ALLOCATE, worktree_id="wt-2"),  # re-grant closes the first: 1 h
        ev(NOW - 6 * H, Action.RELEASE, worktree_id="wt-2"),  # 1 h
        ev(NOW - 5 * H, Action.RELEASE, worktree_id="wt-3"),  # no grant seen: ignored
        ev(NOW + H, Action.ALLOCATE, worktree_id="wt-4"),  # in the future: ignored
    ]
    m = report(events, window_s=10 * H, slot_count=1).get("pool_utilization")
    assert m.value == pytest.approx(4 / 10)
    assert m.samples == 3


@pytest.mark.parametrize(
    ("busy_h", "state"),
    [
        (0, "failing"),
        (1.9, "failing"),
        (2, "warning"),
        (4, "ok"),
        (6, "ok"),
        (7, "warning"),
        (8.5, "failing"),
    ],
)
def test_utilization_thresholds(busy_h: float, state: str) -> None:
    events = [ev(NOW - 10 * H, Action.REGISTER)]
    if busy_h:
        events += [
            ev(NOW - 10 * H, Action.ALLOCATE, worktree_id="wt-1"),
            ev(NOW - 10 * H + busy_h * H, Action.RELEASE, worktree_id="wt-1"),
        ]
    assert report(events, window_s=10 * H, slot_count=1).get("pool_utilization").state == state


def test_utilization_is_capped_when_the_pool_shrank() -> None:
    events = [ev(NOW - 2 * H, Action.ALLOCATE, worktree_id=f"wt-{i}") for i in range(3)]
    assert report(events, slot_count=2).get("pool_utilization").value == 1.0
    assert report(events, slot_count=0).get("pool_utilization").state == "not enough data"


def test_time_rates_need_an_hour_of_span() -> None:
    events = [ev(NOW - 0.5 * H, Action.AGENT_DEAD), ev(NOW - 0.5 * H, Action.AGENT_STALE)]
    r = report(events)
    for name in ("pool_utilization", "agent_crash_rate", "stale_allocation_rate"):
        assert r.get(name).state == "not enough data"
        assert r.get(name).value is None


@pytest.mark.parametrize(("crashes", "state"), [(0, "ok"), (1, "warning"), (2, "warning"), (3, "failing")])
def test_crash_rate_per_week(crashes: int, state: str) -> None:
    events = [ev(NOW - 7 * DAY, Action.REGISTER)] + [ev(NOW - DAY, Action.AGENT_DEAD) for _ in range(crashes)]
    m = report(events).get("agent_crash_rate")
    assert m.value == pytest.approx(crashes)
    assert m.state == state
    assert m.samples == crashes


def test_crash_rate_scales_to_the_observed_span() -> None:
    events = [ev(NOW - DAY, Action.REGISTER), ev(NOW - H, Action.AGENT_DEAD)]
    assert report(events).get("agent_crash_rate").value == pytest.approx(7.0)


def test_stale_rate_per_day() -> None:
    events = [ev(NOW - 2 * DAY, Action.REGISTER), ev(NOW - DAY, Action.AGENT_STALE)]
    m = report(events).get("stale_allocation_rate")
    assert m.value == pytest.approx(0.5)
    assert m.state == "ok"


def test_window_clipping_of_counted_events() -> None:
    old = NOW - 8 * DAY
    events = allocs(10, "POOL_EXHAUSTED", ts=old) + allocs(10) + [ev(old, Action.AGENT_DEAD)]
    events += allocs(10, "GIT_FAILED", ts=NOW + 1)
    r = report(events)
    assert r.get("allocation_success_rate").value == 1.0
    assert r.get("agent_crash_rate").value == 0.0
    assert history_start(NOW, 7 * DAY) == NOW - 8 * DAY


def test_overall_is_the_worst_known_state_and_rows_render() -> None:
    events = [ev(NOW - 7 * DAY, Action.REGISTER), *allocs(8), *allocs(2, "GIT_FAILED")]
    r = report(events, slot_count=2)
    assert r.get("allocation_success_rate").state == "failing"
    assert r.overall == "failing"
    rows = r.as_rows()
    assert len(rows) == 8 and all(len(row) == len(ROW_HEADER) for row in rows)
    assert rows[0][:4] == ("allocation_success_rate", "80.0 %", "> 95 %", "failing")
    assert report([]).as_rows()[0][1] == "-"
    with pytest.raises(KeyError):
        r.get("nope")


_outcomes = st.sampled_from(
    ["ok", "BRANCH_CONFLICT", "POOL_EXHAUSTED", "GIT_FAILED", "INVALID_BRANCH", "freed", "rescued", "x"]
)
_events = st.builds(
    Event,
    id=st.integers(0, 10**6),
    ts=st.floats(NOW - 10 * DAY, NOW + DAY),
    agent_id=st.none() | st.sampled_from(["a1", "a2"]),
    action=st.sampled_from([a.value for a in Action] + ["other"]),
    repo_id=st.just(1),
    worktree_id=st.none() | st.sampled_from(["wt-1", "wt-2", "wt-3"]),
    branch=st.none(),
    outcome=_outcomes,
    duration_ms=st.none() | st.floats(0, 1e6),
    fencing_token=st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_events, max_size=60),
    slot_count=st.integers(0, 4),
    window_s=st.floats(1.0, 9 * DAY),
    min_samples=st.integers(0, 6),
)
def test_ratios_stay_in_bounds(events: list[Event], slot_count: int, window_s: float, min_samples: int) -> None:
    r = compute_metrics(events, now=NOW, window_s=window_s, slot_count=slot_count, min_samples=min_samples)
    for name in ("allocation_success_rate", "conflict_rate", "pool_utilization"):
        value = r.get(name).value
        assert value is None or 0.0 <= value <= 1.0, (name, value)
    for m in r.metrics:
        assert (m.value is None) == (m.state == "not enough data")
        assert m.value is None or m.value >= 0
