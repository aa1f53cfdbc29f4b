"""Advice from measurements: settings recommended from what the window shows, each with its evidence,
what it would have changed over the window, and how to apply it. Nothing is changed here.

The rules (docs/alerts.md states them for users):

* **Pool maximum** (``AGENT_COORD_POOL_MAX``): only when allocations were refused POOL_EXHAUSTED. The
  demand at a refusal is the slots held in that repository plus the agents refused there within the
  last ``REFUSAL_WAIT_S`` that have not been granted one since (this one included); the
  recommendation is the peak demand, at which none of the window's refusals would have happened.
* **Stale after** (``AGENT_COORD_STALE_AFTER_S``): the lease-renewal gaps of live agents (every gap
  between two renewals by the same server: the agent was alive, it renewed). When the longest one
  exceeds half the setting, a live agent came within a factor of two of being judged stale (or was):
  recommend twice the longest gap, rounded up to 30 s. Only ever raised: dead processes are found at
  once by the process check, the lease only matters for hung servers and other hosts.
* **Heartbeat** (``AGENT_COORD_HEARTBEAT_IDLE_S``): when the 99th-percentile gap leaves fewer than
  ``RENEWALS_PER_LEASE`` renewals in a lease, and that gap is the configured idle interval (not longer
  stalls, which the stale-after rule answers): recommend a quarter of the lease.
* **Contention threshold** (``AGENT_COORD_CONTENTION_THRESHOLD``): the allocations the change would
  move. Pessimistic allocations at exactly the threshold that never lost a CAS race (at least
  ``MIN_ALLOCATIONS``): raise it by one, they would have skipped the jitter. Optimistic allocations one
  level below that lost a race in at least ``OPTIMISTIC_LOSS`` of cases: lower it by one.
* **Warm slots** (the pool's size): utilisation against the 40-80 % band. Outside it, the number of
  slots that would have put the window's average demand at 60 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from agent_coord.config import Settings
from agent_coord.engine.errors import ErrorCode
from agent_coord.engine.observe.metrics import Metric, MetricsReport, history_start, percentile_of_histogram
from agent_coord.engine.store import Store
from agent_coord.engine.store.alerts import LeaseGapRollup
from agent_coord.engine.store.records import Action, Event

REFUSAL_WAIT_S = 300.0
STALE_MARGIN = 2.0
STALE_STEP_S = 30.0
RENEWALS_PER_LEASE = 3
# A 99th-percentile gap up to this multiple of the idle interval is the interval itself, not a stall.
INTERVAL_SLACK = 1.5
MIN_ALLOCATIONS = 20
OPTIMISTIC_LOSS = 0.05
BAND = (0.40, 0.80)
BAND_TARGET = 0.60

_APPLY = (
    "set {env}={value} where the agents' servers get their environment (for Claude Code: the `env` of "
    "the agent-coord entry in .mcp.json), or `{key} = {value}` in the AGENT_COORD_CONFIG file; a server "
    "reads it when it starts"
)


class Recommendation(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule: str = Field(description="pool_max, stale_after, heartbeat, contention_threshold or warm_slots")
    setting: str = Field(description="what to change")
    current: float
    recommended: float
    evidence: str = Field(description="what the window showed")
    would_have: str = Field(description="what would have changed over the window had it been in force")
    apply: str = Field(description="how to apply it (nothing is changed by itself)")


class Check(BaseModel):
    model_config = ConfigDict(frozen=True)

    rule: str
    evidence: str = Field(description="why this rule recommends nothing")


class Advice(BaseModel):
    model_config = ConfigDict(frozen=True)

    window_s: float
    computed_at: float
    recommendations: list[Recommendation]
    checks: list[Check]


@dataclass(frozen=True)
class Current:
    """The settings in force."""

    pool_max: int
    stale_after_s: float
    heartbeat_active_s: float
    heartbeat_idle_s: float
    contention_threshold: int

    @classmethod
    def of(cls, settings: Settings) -> Current:
        return cls(
            pool_max=settings.pool_max,
            stale_after_s=settings.stale_after_s,
            heartbeat_active_s=settings.heartbeat_active_s,
            heartbeat_idle_s=settings.heartbeat_idle_s,
            contention_threshold=settings.contention_threshold,
        )


@dataclass(frozen=True)
class Measurements:
    events: Sequence[Event]  # `Store.advice_events` from before the window (holds already open)
    gaps: LeaseGapRollup
    utilization: Metric  # the metrics' pool_utilization over the window
    slot_count: int


async def advice_from_store(
    store: Store, current: Current, report: MetricsReport, *, slot_count: int, now: float
) -> Advice:
    """Read what the rules need over the report's window: the allocations and holds (from a day before
    it, to know the holds already open), the lease-gap rollups, and the report's utilisation."""
    window = report.window_s
    events = await store.advice_events(since=history_start(now, window), until=now)
    gaps = await store.lease_gaps(since=now - window)
    measured = Measurements(events, gaps, report.get("pool_utilization"), slot_count)
    return advise(current, measured, now=now, window_s=window)


def advise(current: Current, m: Measurements, *, now: float, window_s: float) -> Advice:
    start = now - window_s
    recommendations: list[Recommendation] = []
    checks: list[Check] = []
    sweep = _sweep(m.events, start)
    for outcome in (
        _pool_max(current, sweep),
        _stale_after(current, m.gaps),
        _heartbeat(current, m.gaps),
        _contention(current, [e for e in m.events if e.ts >= start]),
        _warm_slots(m.utilization, m.slot_count, sweep.peak_total),
    ):
        if isinstance(outcome, Recommendation):
            recommendations.append(outcome)
        else:
            checks.append(outcome)
    return Advice(window_s=window_s, computed_at=now, recommendations=recommendations, checks=checks)


@dataclass
class _Sweep:
    refusals: int = 0
    attempts: int = 0
    peak_demand: int = 0
    peak_held: int = 0  # in one repository
    peak_total: int = 0  # across repositories


def _sweep(events: Sequence[Event], start: float) -> _Sweep:
    """Replay holds (as the utilisation metric does) and refusals, in log order."""
    out = _Sweep()
    held: dict[int | None, set[str]] = {}
    waiting: dict[int | None, dict[str, float]] = {}
    for e in events:
        repo_holds = held.setdefault(e.repo_id, set())
        if e.action == Action.ALLOCATE and e.outcome not in (
            ErrorCode.INVALID_BRANCH,
            ErrorCode.NOT_A_REPOSITORY,
            ErrorCode.INVALID_ARGUMENT,
        ):
            out.attempts += e.ts >= start
        opens = (e.action == Action.ALLOCATE and e.outcome == "ok") or (
            e.action == Action.ADOPT and e.outcome == "BUSY"
        )
        closes = (e.action == Action.RELEASE and e.outcome == "ok") or e.action == Action.RECLAIM
        if e.worktree_id is not None and opens:
            repo_holds.add(e.worktree_id)
            if e.agent_id is not None:
                waiting.get(e.repo_id, {}).pop(e.agent_id, None)
        elif e.worktree_id is not None and closes:
            for holds in held.values():
                holds.discard(e.worktree_id)
        if e.ts < start:
            continue
        if e.action == Action.ALLOCATE and e.outcome == ErrorCode.POOL_EXHAUSTED:
            out.refusals += 1
            queue = waiting.setdefault(e.repo_id, {})
            for agent, since in list(queue.items()):
                if e.ts - since > REFUSAL_WAIT_S:
                    del queue[agent]
            queue[e.agent_id or f"event-{e.id}"] = e.ts
            out.peak_demand = max(out.peak_demand, len(repo_holds) + len(queue))
        out.peak_held = max(out.peak_held, len(repo_holds))
        out.peak_total = max(out.peak_total, sum(len(h) for h in held.values()))
    return out


def _setting_change(
    rule: str, key: str, current: float, wanted: float, *, evidence: str, would_have: str
) -> Recommendation:
    """A recommended value for the setting `key` (AGENT_COORD_<KEY> in the environment)."""
    env = f"AGENT_COORD_{key.upper()}"
    return Recommendation(
        rule=rule,
        setting=env,
        current=current,
        recommended=wanted,
        evidence=evidence,
        would_have=would_have,
        apply=_APPLY.format(env=env, key=key, value=f"{wanted:g}"),
    )


def _pool_max(current: Current, sweep: _Sweep) -> Recommendation | Check:
    if sweep.refusals == 0:
        return Check(
            rule="pool_max",
            evidence=f"no POOL_EXHAUSTED refusal in {sweep.attempts} allocation attempts; at most "
            f"{sweep.peak_held} of {current.pool_max} slots were held at once",
        )
    wanted = max(current.pool_max + 1, sweep.peak_demand)
    return _setting_change(
        "pool_max",
        "pool_max",
        current.pool_max,
        wanted,
        evidence=f"{sweep.refusals} of {sweep.attempts} allocation attempts were refused POOL_EXHAUSTED; the peak "
        f"demand was {sweep.peak_demand} slots (held, plus agents refused within {REFUSAL_WAIT_S:g} s and not "
        "served since)",
        would_have=f"none of the {sweep.refusals} refusals: each would have got a new slot (created cold the "
        "first time, warm after)",
    )


def _stale_after(current: Current, gaps: LeaseGapRollup) -> Recommendation | Check:
    if gaps.renewals == 0:
        return Check(rule="stale_after", evidence="no lease renewals of live agents recorded in the window")
    longest = gaps.max_s
    who = max(gaps.agents.items(), key=lambda kv: kv[1][1])[0]
    evidence = (
        f"{gaps.renewals} lease renewals by {len(gaps.agents)} agents; the longest gap between two renewals "
        f"of a live agent was {longest:.0f} s ({who})"
    )
    if longest * STALE_MARGIN <= current.stale_after_s:
        return Check(rule="stale_after", evidence=f"{evidence}, within half of {current.stale_after_s:g} s")
    wanted = math.ceil(longest * STALE_MARGIN / STALE_STEP_S) * STALE_STEP_S
    late = sum(1 for _, top in gaps.agents.values() if top > current.stale_after_s)
    near = sum(1 for _, top in gaps.agents.values() if top * STALE_MARGIN > current.stale_after_s)
    return _setting_change(
        "stale_after",
        "stale_after_s",
        current.stale_after_s,
        wanted,
        evidence=f"{evidence}: more than half of {current.stale_after_s:g} s",
        would_have=f"{late} agents renewed after their lease had lapsed (they could have been judged stale and "
        f"their worktrees reclaimed while they were alive) and {near} came within half of it; with {wanted:g} s "
        "every observed gap stays within half of the lease (a hung server's worktrees come back that much later)",
    )


def _heartbeat(current: Current, gaps: LeaseGapRollup) -> Recommendation | Check:
    if not gaps.histogram:
        return Check(rule="heartbeat", evidence="no lease renewals of live agents recorded in the window")
    p99 = percentile_of_histogram(gaps.histogram, 99)
    per_lease = current.stale_after_s / p99 if p99 > 0 else math.inf
    evidence = f"99 % of the {gaps.renewals} renewal gaps were at most {p99:.0f} s: {per_lease:.1f} renewals per lease"
    if per_lease >= RENEWALS_PER_LEASE:
        return Check(rule="heartbeat", evidence=f"{evidence} (at least {RENEWALS_PER_LEASE})")
    if p99 > current.heartbeat_idle_s * INTERVAL_SLACK:
        return Check(
            rule="heartbeat",
            evidence=f"{evidence}, but the gaps are longer than the idle interval ({current.heartbeat_idle_s:g} s): "
            "stalls, not the interval (see stale_after)",
        )
    wanted = max(5.0, math.floor(current.stale_after_s / (RENEWALS_PER_LEASE + 1) / 5) * 5)
    return _setting_change(
        "heartbeat",
        "heartbeat_idle_s",
        current.heartbeat_idle_s,
        wanted,
        evidence=f"{evidence}, fewer than {RENEWALS_PER_LEASE}: one late renewal lapses an idle agent's lease",
        would_have=f"{current.stale_after_s / wanted:.0f} renewals per lease instead of {per_lease:.1f}, at "
        f"{current.heartbeat_idle_s / wanted:.1f} times the renewal writes of idle agents",
    )


def _level(e: Event) -> int | None:
    contention = e.detail.get("contention")
    level = contention.get("level") if isinstance(contention, dict) else None
    return level if isinstance(level, int) else None


def _lost(e: Event) -> bool:
    attempts = e.detail.get("attempts")
    return isinstance(attempts, int) and attempts > 1


def _contention(current: Current, events: Sequence[Event]) -> Recommendation | Check:
    granted = [e for e in events if e.action == Action.ALLOCATE and e.outcome == "ok" and _level(e) is not None]
    pessimistic = [e for e in granted if e.detail.get("strategy") == "pessimistic"]
    at_threshold = [e for e in pessimistic if _level(e) == current.contention_threshold]
    below = [
        e for e in granted if e.detail.get("strategy") == "optimistic" and _level(e) == current.contention_threshold - 1
    ]
    lost_pessimistic = sum(map(_lost, pessimistic))
    lost_below = sum(map(_lost, below))
    evidence = (
        f"pessimistic allocations: {len(pessimistic)}, {lost_pessimistic} of which lost a CAS race; at the "
        f"threshold ({current.contention_threshold}): {len(at_threshold)}, {sum(map(_lost, at_threshold))} lost; "
        f"optimistic one level below it: {len(below)}, {lost_below} lost"
    )
    if len(at_threshold) >= MIN_ALLOCATIONS and not any(map(_lost, at_threshold)):
        waited_s = sum(float(e.detail.get("jitter_ms") or 0.0) for e in at_threshold) / 1000
        wanted = current.contention_threshold + 1
        why = "pessimism at the threshold never met a race"
        would_have = (
            f"the {len(at_threshold)} allocations at contention {current.contention_threshold} would have "
            f"been optimistic: {waited_s:.1f} s of jitter not waited, and the warmest slot instead of the coldest"
        )
    elif (
        current.contention_threshold > 1
        and len(below) >= MIN_ALLOCATIONS
        and lost_below >= OPTIMISTIC_LOSS * len(below)
    ):
        wanted = current.contention_threshold - 1
        why = f"{lost_below / len(below):.0%} of the optimistic ones just below it lost a race"
        would_have = (
            f"the {len(below)} allocations at contention {wanted} would have been pessimistic (jittered, "
            f"backed off, coldest slot first), {lost_below} of which lost a CAS race optimistically"
        )
    else:
        return Check(rule="contention_threshold", evidence=evidence)
    return _setting_change(
        "contention_threshold",
        "contention_threshold",
        current.contention_threshold,
        wanted,
        evidence=f"{evidence}: {why}",
        would_have=would_have,
    )


def _warm_slots(utilization: Metric, slot_count: int, peak: int) -> Recommendation | Check:
    if utilization.value is None or slot_count <= 0:
        return Check(rule="warm_slots", evidence=f"pool utilisation unknown: {utilization.detail}")
    u = utilization.value
    busy = u * slot_count
    evidence = f"pool utilisation {u:.0%} ({utilization.detail}); band {BAND[0]:.0%}-{BAND[1]:.0%}"
    wanted = max(1, math.ceil(busy / BAND_TARGET))
    if BAND[0] <= u <= BAND[1] or wanted == slot_count:
        return Check(rule="warm_slots", evidence=evidence)
    fewer = wanted < slot_count
    would = f"utilisation {busy / wanted:.0%} with {wanted} slots"
    if fewer and peak > wanted:
        would += f"; at the peak ({peak} held at once) {peak - wanted} allocations would have made a cold slot"
    apply = (
        f"remove {slot_count - wanted} FREE slots: `agent-coord release --worktree <id> --remove` for each "
        "(the pool grows back by itself when demand needs it)"
        if fewer
        else f"the pool grows to {wanted} by itself when that many allocations overlap (the first time cold); "
        f"AGENT_COORD_POOL_MAX must allow {wanted}"
    )
    return Recommendation(
        rule="warm_slots",
        setting="warm slots (the pool's size)",
        current=slot_count,
        recommended=wanted,
        evidence=f"{evidence}: {'below' if fewer else 'above'} it",
        would_have=would + (", no slot kept warm for nothing" if fewer else ", fewer allocations without a warm slot"),
        apply=apply,
    )
