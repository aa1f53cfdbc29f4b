"""How many lines each section gets on a terminal of a given height.

Rows are handed out by priority, so that an 80x24 terminal shows the slots first, then the pairs the
conflict radar flags (when there are any), then the latest events, then agents, contention and
metrics. Larger terminals get everything, and the metrics as a full table.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_AGENTS = 4  # agents shown before the events get their share
FIRST_CONFLICTS = 3  # predicted conflicts shown before the events get their share
FIRST_EVENTS = 6  # events shown before the remaining agents
TALL_EVENTS = 10  # events still shown when a tall terminal switches the metrics to a full table
MORE_ALERTS = 6  # alerts shown once the slots have their rows; the rest are counted on the last line


@dataclass
class RowPlan:
    """Lines given to each section (0: not shown). Headers are included in the table sections."""

    title: int = 0
    alerts: int = 0
    notes: int = 0
    slots: int = 0
    conflicts: int = 0
    agents: int = 0
    contention: int = 0
    metrics: int = 0
    events: int = 0
    metrics_table: bool = False
    spare: int = 0


def plan_rows(
    height: int | None,
    *,
    slots: int,
    agents: int,
    events: int,
    notes: int,
    metrics_compact: int,
    metrics_table: int,
    alerts: int = 0,
    conflicts: int = 0,
) -> RowPlan:
    """Hand out ``height`` lines: active alerts (up to two) and slots first, then predicted conflicts,
    then events, then the rest (more alerts first). ``None``: everything."""
    plan = RowPlan()
    if height is None:
        plan.title, plan.alerts, plan.notes, plan.contention = 1, alerts, notes, 1
        plan.slots, plan.agents, plan.events = 1 + max(1, slots), 1 + max(1, agents), 1 + max(1, events)
        plan.conflicts = 1 + max(1, conflicts)
        plan.metrics, plan.metrics_table = metrics_table, True
        return plan
    left = height

    def grant(name: str, lines: int, *, partial: bool = False) -> None:
        nonlocal left
        lines = min(lines, left) if partial else lines
        if lines <= 0 or lines > left:
            return
        setattr(plan, name, getattr(plan, name) + lines)
        left -= lines

    # Phase 1: the minimum of every section, most important first; a section that does not fit is left out.
    grant("title", 1)
    grant("alerts", min(alerts, 2), partial=True)
    grant("slots", 2)  # header and one row (or "no slots")
    if conflicts:  # nothing predicted: no section at all
        grant("conflicts", 1 + min(conflicts, FIRST_CONFLICTS), partial=True)
    grant("events", 1 + max(1, min(events, 3)), partial=True)
    grant("notes", min(notes, 1))
    grant("contention", 1)
    grant("metrics", metrics_compact)
    grant("agents", 1 + max(1, min(agents, 2)))
    # Phase 2: fill. Slots to the full pool; agents and events take turns; the rest to events.
    grant("slots", max(1, slots) + 1 - plan.slots, partial=True)
    grant("alerts", min(alerts, MORE_ALERTS) - plan.alerts, partial=True)
    if plan.agents:
        grant("agents", min(agents, FIRST_AGENTS) + 1 - plan.agents, partial=True)
    grant("events", min(events, FIRST_EVENTS) + 1 - plan.events, partial=True)
    if plan.agents:
        grant("agents", max(1, agents) + 1 - plan.agents, partial=True)
    if plan.conflicts:
        grant("conflicts", conflicts + 1 - plan.conflicts, partial=True)
    if plan.notes:
        grant("notes", min(notes, 3) - plan.notes, partial=True)
    # A tall terminal: the full metrics table instead of the compact lines, if events keep a fair share.
    more = metrics_table - plan.metrics
    if plan.metrics and left - more >= min(events + 1 - plan.events, TALL_EVENTS):
        left -= more
        plan.metrics, plan.metrics_table = metrics_table, True
    grant("events", max(1, events) + 1 - plan.events, partial=True)
    plan.spare = left
    return plan
