"""The dashboard's chart series, computed from the event log. Pure: the caller reads the events.

* Allocation latency: a histogram of the ``duration_ms`` of allocation attempts in the window (caller
  errors excluded, as the metrics do), in buckets that double, so 20 ms and 8 s fit one chart.
* Pool utilisation: for each hour of the observed span, busy slot-seconds / (slots x seconds), with the
  busy intervals the ``pool_utilization`` metric uses (a grant or a busy adoption opens one, a release
  or reclaim closes it).
* Per hour: successful allocations, allocation conflicts (``BRANCH_CONFLICT`` and ``cas_lost``) and
  predicted merge conflicts, kept apart: the conflict radar's ``radar`` events, one when a pair starts to
  conflict, and one when it clears (``resolved`` before either side was released, or ``released``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, Field

from agent_coord.engine.errors import ErrorCode
from agent_coord.engine.observe.metrics import CALLER_ERRORS, busy_intervals
from agent_coord.engine.store.records import Action, Event

HOUR_S = 3600.0
# Bucket upper bounds in ms: 25, 50, 100 ... ~ 51 s, then everything slower.
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(25.0 * 2**i for i in range(12))
# The band the seed asks utilisation to stay in.
UTILISATION_BAND = (0.40, 0.80)


class LatencyBucket(BaseModel):
    upper_ms: float | None = Field(description="inclusive upper bound; None for the last, open bucket")
    count: int = Field(description="allocation attempts whose duration falls in this bucket")


class HourPoint(BaseModel):
    start: float = Field(description="start of the hour, seconds since the epoch")
    utilisation: float | None = Field(description="busy share of the pool in this hour, None before the log starts")
    allocations: int = Field(description="successful allocations in this hour")
    allocation_conflicts: int = Field(description="branch conflicts and lost compare-and-swaps in this hour")
    merge_conflicts: int = Field(default=0, description="predicted merge conflicts that appeared in this hour")
    merge_conflicts_resolved: int = Field(
        default=0, description="predicted merge conflicts resolved in this hour while both sides were still held"
    )


class Charts(BaseModel):
    window_start: float = Field(description="start of the charted span, seconds since the epoch")
    now: float = Field(description="end of the charted span")
    latency: list[LatencyBucket] = Field(description="allocation latency histogram")
    latency_samples: int = Field(description="how many timed allocation attempts the histogram holds")
    hours: list[HourPoint] = Field(description="one point per hour, oldest first")
    band: tuple[float, float] = Field(description="the utilisation band to stay in (low, high)")


def latency_histogram(durations: Sequence[float]) -> list[LatencyBucket]:
    counts = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for d in durations:
        i = next((k for k, bound in enumerate(LATENCY_BOUNDS_MS) if d <= bound), len(LATENCY_BOUNDS_MS))
        counts[i] += 1
    bounds: list[float | None] = [*LATENCY_BOUNDS_MS, None]
    return [LatencyBucket(upper_ms=b, count=c) for b, c in zip(bounds, counts, strict=True)]


def compute_charts(events: Sequence[Event], *, now: float, window_s: float, slot_count: int) -> Charts:
    window_start = now - window_s
    seen = [e.ts for e in events if e.ts <= now]
    span_start = max(window_start, min(seen)) if seen else now
    # Whole hours, the last one ending now: at most the window, at least one.
    n_hours = max(1, min(math.ceil((now - span_start) / HOUR_S), math.ceil(window_s / HOUR_S)))
    first = now - n_hours * HOUR_S
    hours = [
        HourPoint(start=first + i * HOUR_S, utilisation=None, allocations=0, allocation_conflicts=0)
        for i in range(n_hours)
    ]

    def hour_of(ts: float) -> int | None:
        i = math.floor((ts - first) / HOUR_S)
        return i if 0 <= i < n_hours else (n_hours - 1 if ts == now else None)

    durations: list[float] = []
    for e in events:
        if not window_start <= e.ts <= now:
            continue
        i = hour_of(e.ts)
        if e.action == Action.ALLOCATE and e.outcome not in CALLER_ERRORS:
            if e.duration_ms is not None and math.isfinite(e.duration_ms):
                durations.append(e.duration_ms)
            if i is not None and e.outcome == "ok":
                hours[i].allocations += 1
            if i is not None and e.outcome == ErrorCode.BRANCH_CONFLICT:
                hours[i].allocation_conflicts += 1
        elif e.action == Action.CAS_LOST and i is not None:
            hours[i].allocation_conflicts += 1
        elif e.action == Action.RADAR and i is not None:
            if e.outcome == "conflict":
                hours[i].merge_conflicts += 1
            elif e.outcome == "cleared" and isinstance(e.detail, dict) and e.detail.get("reason") == "resolved":
                hours[i].merge_conflicts_resolved += 1

    busy = [0.0] * n_hours
    for start, end in busy_intervals(events, now):
        lo, hi = max(start, first), min(end, now)
        if hi <= lo:
            continue
        for i in range(max(0, math.floor((lo - first) / HOUR_S)), min(n_hours, math.ceil((hi - first) / HOUR_S))):
            h0 = first + i * HOUR_S
            busy[i] += max(0.0, min(hi, h0 + HOUR_S) - max(lo, h0))
    slots = max(1, slot_count)
    for i, point in enumerate(hours):
        h0 = max(point.start, span_start)
        length = point.start + HOUR_S - h0
        if length > 0 and seen:
            point.utilisation = min(1.0, busy[i] / (slots * length))
    return Charts(
        window_start=first,
        now=now,
        latency=latency_histogram(durations),
        latency_samples=len(durations),
        hours=hours,
        band=UTILISATION_BAND,
    )
