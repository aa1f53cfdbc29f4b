"""Health metrics computed from the event log. Pure: the caller reads the events, we only count.

What the caller must pass
-------------------------
Every event with ``ts >= history_start(now, window_s)`` (``now - window_s - LOOKBACK_S``), not only
those inside the window. Counting metrics ignore events outside ``[now - window_s, now]``; pool
utilization needs the earlier ones to see the grant of a slot that was already busy when the window
opened. A grant older than the look-back is invisible, so such a slot counts as free until its
release: leases lapse after minutes, so a hold longer than a day without any event is not expected.

Definitions
-----------
* **Allocation attempts** are ``allocate`` events except caller errors (``CALLER_ERRORS``: a bad
  branch name, not a repository, bad arguments). Those are refused before the coordinator does any
  work, so they say nothing about its health and would otherwise hide real failures or flatter
  latency. Every other outcome, contention (``BRANCH_CONFLICT``, ``POOL_EXHAUSTED``) included, is an
  attempt; only ``ok`` is a success.
* **Latency** uses the ``duration_ms`` of the same attempts, successful or not (events without a
  duration are skipped). Percentiles are nearest-rank: the smallest sample such that at least p % of
  the samples are <= it, i.e. ``sorted(x)[ceil(p/100 * n) - 1]``. No interpolation, so the value is
  always a latency that really happened.
* **Conflict rate** = (``BRANCH_CONFLICT`` attempts + ``cas_lost`` events) / (attempts + ``cas_lost``).
* **Pool utilization**: a slot is busy from an ``allocate`` ``ok`` event for its ``worktree_id``
  until the next ``release`` ``ok`` or ``reclaim`` (any outcome) for it, or ``now``. A second grant
  of a slot that was never released closes the first interval (a slot is never held twice).
  Intervals are clipped to the observed span, from ``max(window start, first event ts)`` to ``now``,
  and the busy time is divided by ``slot_count`` x span. The result is capped at 1 because
  ``slot_count`` is today's pool size and the pool may have been larger earlier in the window.
* **Predicted merge conflicts** (the conflict radar, apart from ``conflict_rate``, which counts
  allocation contention): ``radar`` ``conflict`` events per allocation-hour (busy slot-hours as for
  utilization); the detail says how many were resolved before release (a ``cleared`` event with
  reason ``resolved``) and how many were still standing when a side was released. Informational.
* **Crash rate** (per week) and **stale rate** (per day) are ``agent_dead`` / ``agent_stale`` counts in
  the window divided by the observed span. They need at least an hour of span; below that a single
  event would extrapolate to an absurd rate.

States: "not enough data" when fewer than ``min_samples`` samples (allocation metrics) or a span
shorter than an hour (time-based metrics). Per-week and per-day rates have only a target; we call
them "warning" up to three times the target and "failing" beyond. The median latency has no target
and is informational ("ok" whenever it can be computed). ``overall`` is the worst known state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agent_coord.engine.errors import ErrorCode
from agent_coord.engine.store.records import Action, Event, MetricTotals

MetricState = Literal["ok", "warning", "failing", "not enough data"]

CALLER_ERRORS: frozenset[str] = frozenset(
    {ErrorCode.INVALID_BRANCH, ErrorCode.NOT_A_REPOSITORY, ErrorCode.INVALID_ARGUMENT}
)
LOOKBACK_S = 86400.0
MIN_SPAN_S = 3600.0
WEEK_S = 7 * 86400.0
DAY_S = 86400.0
# Beyond this multiple of a per-time target, a rate is failing rather than a warning.
RATE_FAILING_FACTOR = 3.0

ROW_HEADER: tuple[str, str, str, str, str, str] = ("metric", "value", "target", "state", "samples", "detail")

_SEVERITY: dict[str, int] = {"not enough data": -1, "ok": 0, "warning": 1, "failing": 2}


class Metric(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    value: float | None
    unit: str  # "ratio" (0..1, shown as %), "ms", "per_week", "per_day"
    target: str
    state: MetricState
    samples: int
    detail: str


class MetricsReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    window_s: float
    computed_at: float
    metrics: list[Metric]
    overall: MetricState

    def get(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(name)

    def as_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """One row of display strings per metric, in the order of ``ROW_HEADER``."""
        return [
            (m.name, format_value(m.value, m.unit), m.target, m.state, str(m.samples), m.detail) for m in self.metrics
        ]


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        return f"{value * 100:.1f} %"
    if unit == "ms":
        return f"{value:.0f} ms"
    if unit == "per_week":
        return f"{value:.2f} /week"
    if unit == "per_day":
        return f"{value:.2f} /day"
    if unit == "per_allocation_hour":
        return f"{value:.2f} /alloc-h"
    return f"{value:g} {unit}".rstrip()


def history_start(now: float, window_s: float) -> float:
    """Oldest event timestamp ``compute_metrics`` needs to see."""
    return now - window_s - LOOKBACK_S


def percentile_nearest_rank(samples: Sequence[float], p: float) -> float:
    if not samples:
        raise ValueError("no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def totals_from_events(events: Sequence[Event], *, now: float, window_s: float) -> MetricTotals:
    window_start = now - window_s
    in_window = [e for e in events if window_start <= e.ts <= now]
    seen = [e.ts for e in events if e.ts <= now]
    span_start = max(window_start, min(seen)) if seen else now
    attempts = [e for e in in_window if e.action == Action.ALLOCATE and e.outcome not in CALLER_ERRORS]
    durations = sorted(e.duration_ms for e in attempts if e.duration_ms is not None and math.isfinite(e.duration_ms))
    busy, intervals = _busy_seconds(events, span_start, now)
    radar = [e for e in in_window if e.action == Action.RADAR]
    cleared = [e.detail.get("reason") for e in radar if e.outcome == "cleared"]
    return MetricTotals(
        span_start=span_start,
        attempts=len(attempts),
        successes=sum(1 for e in attempts if e.outcome == "ok"),
        branch_conflicts=sum(1 for e in attempts if e.outcome == ErrorCode.BRANCH_CONFLICT),
        cas_lost=sum(1 for e in in_window if e.action == Action.CAS_LOST),
        agent_dead=sum(1 for e in in_window if e.action == Action.AGENT_DEAD),
        agent_stale=sum(1 for e in in_window if e.action == Action.AGENT_STALE),
        latency=tuple((d, 1) for d in durations),
        busy_s=busy,
        busy_intervals=intervals,
        radar_conflicts=sum(1 for e in radar if e.outcome == "conflict"),
        radar_resolved=cleared.count("resolved"),
        radar_released=cleared.count("released"),
    )


def compute_metrics(
    events: Sequence[Event],
    *,
    now: float,
    window_s: float = 7 * 86400,
    slot_count: int,
    min_samples: int = 5,
) -> MetricsReport:
    totals = totals_from_events(events, now=now, window_s=window_s)
    return report_from_totals(totals, now=now, window_s=window_s, slot_count=slot_count, min_samples=min_samples)


def report_from_totals(
    totals: MetricTotals, *, now: float, window_s: float, slot_count: int, min_samples: int = 5
) -> MetricsReport:
    # Zero samples is never enough, whatever the caller asks for: there would be nothing to divide by.
    min_samples = max(1, min_samples)
    span = now - totals.span_start
    metrics = [
        _success_rate(totals.attempts, totals.successes, min_samples),
        _latency("allocation_latency_p50", totals.latency, 50, min_samples),
        _latency("allocation_latency_p99", totals.latency, 99, min_samples),
        _conflict_rate(totals.attempts, totals.branch_conflicts, totals.cas_lost, min_samples),
        _utilization(totals.busy_s, totals.busy_intervals, span, slot_count),
        _predicted_conflicts(totals),
        _rate_over_span("agent_crash_rate", totals.agent_dead, span, WEEK_S, "per_week", "agent_dead"),
        _rate_over_span("stale_allocation_rate", totals.agent_stale, span, DAY_S, "per_day", "agent_stale"),
    ]
    return MetricsReport(window_s=window_s, computed_at=now, metrics=metrics, overall=overall_state(metrics))


def percentile_of_histogram(histogram: Sequence[tuple[float, int]], p: float, total: int | None = None) -> float:
    """Nearest-rank percentile of ``(value, count)`` pairs in ascending order of value (``total``:
    their counts' sum, when the caller has it)."""
    total = sum(n for _, n in histogram) if total is None else total
    if total <= 0:
        raise ValueError("no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    rank = max(1, math.ceil(p / 100 * total))
    seen = 0
    for value, n in histogram:
        seen += n
        if seen >= rank:
            return value
    return histogram[-1][0]


def overall_state(metrics: Sequence[Metric]) -> MetricState:
    worst: MetricState = "not enough data"
    for metric in metrics:
        if _SEVERITY[metric.state] > _SEVERITY[worst]:
            worst = metric.state
    return worst


def _not_enough(name: str, unit: str, target: str, samples: int, detail: str) -> Metric:
    return Metric(
        name=name,
        value=None,
        unit=unit,
        target=target,
        state="not enough data",
        samples=samples,
        detail=detail,
    )


def _grade(value: float, ok: Callable[[float], bool], warning: Callable[[float], bool]) -> MetricState:
    if ok(value):
        return "ok"
    return "warning" if warning(value) else "failing"


def _success_rate(attempts: int, ok: int, min_samples: int) -> Metric:
    name, unit, target = "allocation_success_rate", "ratio", "> 95 %"
    n = attempts
    if n < min_samples:
        return _not_enough(name, unit, target, n, f"{n} allocation attempts, need {min_samples}")
    rate = ok / n
    return Metric(
        name=name,
        value=rate,
        unit=unit,
        target=target,
        state=_grade(rate, lambda v: v > 0.95, lambda v: v >= 0.90),
        samples=n,
        detail=f"{ok} of {n} allocations succeeded (caller errors excluded)",
    )


def _latency(name: str, histogram: Sequence[tuple[float, int]], p: int, min_samples: int) -> Metric:
    unit = "ms"
    target = "< 10 000 ms" if p == 99 else "informational"
    n = sum(count for _, count in histogram)
    if n < min_samples:
        return _not_enough(name, unit, target, n, f"{n} timed allocations, need {min_samples}")
    value = percentile_of_histogram(histogram, p, n)
    state: MetricState = "ok"
    if p == 99:
        state = _grade(value, lambda v: v <= 5000, lambda v: v < 10000)
    return Metric(
        name=name,
        value=value,
        unit=unit,
        target=target,
        state=state,
        samples=n,
        detail=f"nearest-rank p{p} of {n} allocations",
    )


def _conflict_rate(attempts: int, branch: int, cas_lost: int, min_samples: int) -> Metric:
    name, unit, target = "conflict_rate", "ratio", "< 1 %"
    n = attempts + cas_lost
    if n < min_samples:
        return _not_enough(name, unit, target, n, f"{n} allocation attempts and lost CAS, need {min_samples}")
    rate = (branch + cas_lost) / n
    return Metric(
        name=name,
        value=rate,
        unit=unit,
        target=target,
        state=_grade(rate, lambda v: v < 0.01, lambda v: v <= 0.05),
        samples=n,
        detail=f"{branch} branch conflicts and {cas_lost} lost CAS out of {n}",
    )


def busy_intervals(events: Sequence[Event], now: float) -> list[tuple[float, float]]:
    """(start, end) of every time a slot was held up to `now`, by the rules of `pool_utilization`."""
    held_since: dict[str, float] = {}
    out: list[tuple[float, float]] = []
    # Same-timestamp events keep log order (ids increase with insertion).
    for e in sorted((e for e in events if e.ts <= now), key=lambda e: (e.ts, e.id)):
        wid = e.worktree_id
        if wid is None:
            continue
        # A grant, or a busy worktree taken into the pool by import, opens a busy interval.
        if (e.action == Action.ALLOCATE and e.outcome == "ok") or (e.action == Action.ADOPT and e.outcome == "BUSY"):
            if wid in held_since:
                out.append((held_since[wid], e.ts))
            held_since[wid] = e.ts
        elif ((e.action == Action.RELEASE and e.outcome == "ok") or e.action == Action.RECLAIM) and wid in held_since:
            out.append((held_since.pop(wid), e.ts))
    out.extend((start, now) for start in held_since.values())
    return out


def _busy_seconds(events: Sequence[Event], span_start: float, now: float) -> tuple[float, int]:
    """Busy slot-seconds inside [span_start, now] and the number of intervals that overlap it."""
    inside = [end - max(start, span_start) for start, end in busy_intervals(events, now)]
    overlapping = [seconds for seconds in inside if seconds > 0]
    return sum(overlapping), len(overlapping)


def _utilization(busy: float, intervals: int, span: float, slot_count: int) -> Metric:
    name, unit, target = "pool_utilization", "ratio", "40-60 %"
    if slot_count <= 0:
        return _not_enough(name, unit, target, 0, "the pool has no slots")
    if span < MIN_SPAN_S:
        return _not_enough(name, unit, target, 0, f"observed span {span / 3600:.2f} h, need 1 h")
    value = min(1.0, busy / (slot_count * span))
    return Metric(
        name=name,
        value=value,
        unit=unit,
        target=target,
        state=_grade(value, lambda v: 0.40 <= v <= 0.60, lambda v: 0.20 <= v <= 0.80),
        samples=intervals,
        detail=f"{busy / 3600:.1f} busy slot-hours of {slot_count} slots x {span / 3600:.1f} h",
    )


def _predicted_conflicts(totals: MetricTotals) -> Metric:
    name, unit, target = "predicted_merge_conflicts", "per_allocation_hour", "informational"
    predicted = totals.radar_conflicts
    hours = totals.busy_s / 3600
    detail = f"{predicted} predicted over {hours:.1f} allocation-hours; "
    detail += f"{totals.radar_resolved} resolved before release, {totals.radar_released} still standing at release"
    if hours <= 0:
        return _not_enough(name, unit, target, predicted, detail)
    return Metric(
        name=name, value=predicted / hours, unit=unit, target=target, state="ok", samples=predicted, detail=detail
    )


def _rate_over_span(name: str, count: int, span: float, per_s: float, unit: str, action: str) -> Metric:
    period = "week" if per_s == WEEK_S else "day"
    target = f"< 1 /{period}"
    if span < MIN_SPAN_S:
        return _not_enough(name, unit, target, count, f"observed span {span / 3600:.2f} h, need 1 h")
    rate = count * per_s / span
    return Metric(
        name=name,
        value=rate,
        unit=unit,
        target=target,
        state=_grade(rate, lambda v: v < 1, lambda v: v < RATE_FAILING_FACTOR),
        samples=count,
        detail=f"{count} {action} events over {span / 3600:.1f} h",
    )
