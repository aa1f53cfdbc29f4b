"""The whole screen for a snapshot and a terminal size: a pure function, so it is tested without a terminal."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console, Group
from rich.text import Text

from agent_coord.dashboard.conflicts import pair_views
from agent_coord.dashboard.formatting import cut
from agent_coord.dashboard.layout import plan_rows
from agent_coord.dashboard.metrics_view import metric_lines_compact, metric_table
from agent_coord.dashboard.sections import (
    AGENT_COLUMNS,
    CONFLICT_COLUMNS,
    EVENT_COLUMNS,
    SLOT_COLUMNS,
    agent_rows,
    alert_lines,
    conflict_rows,
    contention_line,
    event_rows,
    slot_rows,
    title_line,
)
from agent_coord.dashboard.snapshot import Snapshot, gone_agents
from agent_coord.dashboard.table import section_header, table_lines


def render_screen(
    snapshot: Snapshot,
    *,
    width: int,
    height: int | None,
    now: float | None = None,
    notes: Sequence[str] = (),
    gone: set[str] | None = None,
    hint: str = "q quit",
) -> Group:
    """The whole screen as lines, each at most ``width`` cells; at most ``height`` lines."""
    now = time.time() if now is None else now
    width = max(20, width)
    st = snapshot.status
    s_rows = slot_rows(st.worktrees, now)
    a_rows = agent_rows(st, now, gone or set())
    e_rows = event_rows(snapshot.events)
    c_rows = conflict_rows(pair_views(snapshot.conflicts, st.worktrees), now)
    compact = metric_lines_compact(snapshot.metrics, width)
    table = metric_table(snapshot.metrics, width) if snapshot.metrics else compact
    plan = plan_rows(
        height,
        slots=len(s_rows),
        agents=len(a_rows),
        events=len(e_rows),
        notes=len(notes),
        metrics_compact=len(compact),
        metrics_table=len(table),
        alerts=len(st.alerts),
        conflicts=len(c_rows),
    )
    lines: list[Text] = []
    if plan.title:
        lines.append(title_line(st, now, width, hint))
    lines += alert_lines(st.alerts, width, plan.alerts)
    for note in list(notes)[-plan.notes :] if plan.notes else []:
        lines.append(Text(cut("» " + note, width).rstrip(), style="bold yellow", no_wrap=True))
    if plan.slots:
        free = sum(1 for w in st.worktrees if w.state == "FREE")
        if s_rows:
            lines += table_lines(
                SLOT_COLUMNS, s_rows, width, plan.slots, more=lambda n: f"… {n} more slots ({free} free in total)"
            )
        else:
            lines += [section_header("SLOTS", width), Text("  (no slots yet: the pool fills on first allocation)")]
    if plan.conflicts:
        if c_rows:
            lines += table_lines(
                CONFLICT_COLUMNS, c_rows, width, plan.conflicts, more=lambda n: f"… {n} more predicted collisions"
            )
        else:
            lines += [section_header("RADAR", width), Text("  (no predicted merge conflicts)", style="dim")]
    if plan.agents:
        if a_rows:
            lines += table_lines(AGENT_COLUMNS, a_rows, width, plan.agents, more=lambda n: f"… {n} more agents")
        else:
            lines += [section_header("AGENTS", width), Text("  (no agents registered)", style="dim")]
    if plan.contention:
        lines.append(contention_line(st, width))
    if plan.metrics:
        lines += (table if plan.metrics_table else compact)[: plan.metrics]
    if plan.events:
        if e_rows:
            lines += table_lines(EVENT_COLUMNS, e_rows, width, plan.events)
        else:
            lines += [section_header("EVENTS", width), Text("  (no events yet)", style="dim")]
    return Group(*lines[: height if height is not None else len(lines)])


def print_snapshot(snapshot: Snapshot, console: Console, notes: Sequence[str] = (), *, host: str) -> None:
    """Everything once, for a pipe or a file (no screen to keep up to date); `host` is this host's id
    (only its agents' processes can be looked at)."""
    gone = gone_agents(snapshot.status.agents, host)
    console.print(render_screen(snapshot, width=console.width, height=None, notes=notes, gone=gone, hint=""))
