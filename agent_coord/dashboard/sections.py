"""The dashboard's sections as rows of cells: slots, agents, events, plus the title and contention lines."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from agent_coord.dashboard.conflicts import PairView, file_text
from agent_coord.dashboard.formatting import age, clock, cut, elide_start, lease_left
from agent_coord.dashboard.table import Cell, Column
from agent_coord.engine.models import AgentView, AlertView, StatusResult, WorktreeView
from agent_coord.engine.store.records import Action, Event

HELD = ("ALLOCATING", "BUSY", "RELEASING")
STATE_STYLE = {
    "FREE": "green",
    "ALLOCATING": "yellow",
    "BUSY": "bold cyan",
    "RELEASING": "yellow",
    "QUARANTINED": "bold red",
}
LIVENESS_STYLE = {"alive": "green", "dead": "bold red", "stale": "yellow", "left": "dim"}

SLOT_COLUMNS = (
    Column("SLOT", 5, 8),
    Column("STATE", 4, 11),
    Column("AGENT", 6, 24, shrink=2),
    Column("BRANCH", 8, None, shrink=3),
    Column("AGE", 3, 5, right=True),
    Column("LEASE", 4, 7, right=True),
    Column("TASK", 8, 30, shrink=4, drop=2, extra=True),
    Column("PATH", 10, 60, shrink=5, keep_end=True, drop=3, extra=True),
)
AGENT_COLUMNS = (
    Column("AGENT", 6, 24, shrink=1),
    Column("LIVENESS", 4, 8),
    Column("STATUS", 4, 12, drop=2),
    Column("FOCUS", 5, 5, drop=3),
    Column("BEAT", 4, 5, right=True),
    Column("PID", 3, 7, right=True, drop=4, extra=True),
    Column("REASON / NOTE", 8, None, shrink=3),
)
EVENT_COLUMNS = (
    Column("TIME", 8, 8),
    Column("AGENT", 5, 20, shrink=2),
    Column("ACTION", 6, 11, shrink=1),
    Column("BRANCH", 6, 30, shrink=3),
    Column("OUTCOME", 6, 16, shrink=2),
    Column("MS", 3, 6, right=True),
    Column("SLOT", 5, 6, drop=2),
)

ALERT_STYLE = {"failing": "bold red", "warning": "bold yellow"}


def alert_lines(alerts: Sequence[AlertView], width: int, lines: int) -> list[Text]:
    """The active alerts, worst first, one line each; the last line counts those that did not fit."""
    if lines <= 0 or not alerts:
        return []
    shown = list(alerts) if len(alerts) <= lines else list(alerts)[: lines - 1]
    out = [
        Text(cut(f"! {a.severity.upper()} {a.message}", width).rstrip(), style=ALERT_STYLE[a.severity], no_wrap=True)
        for a in shown
    ]
    if len(shown) < len(alerts):
        more = f"! … {len(alerts) - len(shown)} more alerts (agent-coord status)"
        out.append(Text(cut(more, width).rstrip(), style="bold", no_wrap=True))
    return out


CONFLICT_COLUMNS = (
    Column("RADAR", 7, 8),
    Column("BETWEEN", 8, None, shrink=2),
    Column("AND", 8, None, shrink=2),
    Column("FILES:LINES", 10, None, shrink=2),
    Column("AGE", 3, 5, right=True),
    Column("WHAT TO DO", 10, None, shrink=4, drop=1),
)
KIND_STYLE = {"conflict": "bold red", "overlap": "yellow"}

_SLOT_ORDER = {"BUSY": 0, "ALLOCATING": 0, "RELEASING": 0, "QUARANTINED": 1, "FREE": 2}


def slot_rows(worktrees: Sequence[WorktreeView], now: float) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for w in sorted(worktrees, key=lambda w: (_SLOT_ORDER.get(w.state, 3), w.worktree_id)):
        held = w.state in HELD
        lease, lease_style = lease_left(w.lease_expires_at, now) if held else ("-", "dim")
        rows.append(
            [
                (w.worktree_id, ""),
                (w.state, STATE_STYLE.get(w.state, "")),
                (w.agent_id or "-", "" if w.agent_id else "dim"),
                # A reclaimed slot says so here; where its work went fits only in the wide TASK column.
                (w.branch or ("(rescued)" if w.rescue_ref else "-"), "" if w.branch else "yellow"),
                (age(w.since, now) if held else "-", ""),
                (lease, lease_style),
                (w.task or (f"work saved to {w.rescue_ref}" if w.rescue_ref else "-"), "dim"),
                (w.path, "dim"),
            ]
        )
    return rows


def conflict_rows(pairs: Sequence[PairView], now: float) -> list[list[Cell]]:
    """One line per pair the radar flags: conflicts first (the order of ``pair_views``)."""
    rows: list[list[Cell]] = []
    for p in pairs:
        files = ", ".join(file_text(f) for f in p.files)
        if p.also:
            files += f" (+ {len(p.also)} overlapping)"
        rows.append(
            [
                (p.kind, KIND_STYLE.get(p.kind, "")),
                (p.a.label, ""),
                (p.b.label, "cyan" if p.with_base else ""),
                (files, ""),
                (age(p.since, now), ""),
                (p.short_advice, "dim"),
            ]
        )
    return rows


def liveness(agent: AgentView, gone: set[str], holders: set[str]) -> tuple[str, str]:
    """(word, reason): alive, dead, stale, or left (disconnected cleanly and holds nothing)."""
    if agent.agent_id in gone:
        return "dead", f"process {agent.pid} exited; not yet reclaimed"
    if agent.alive:
        return "alive", agent.reason
    if agent.status == "stale" or "lease expired" in agent.reason:
        return "stale", agent.reason
    if agent.status == "disconnected" and agent.agent_id not in holders:
        return "left", "disconnected"
    return "dead", agent.reason


def _agent_rank(agent: AgentView, word: str, holds: bool) -> int:
    """What needs attention first: a dead holder (its slots await reclaim), the focused agent, holders."""
    if word in {"dead", "stale"}:
        return 0 if holds else 4
    if agent.focused:
        return 1
    if word == "alive":
        return 2 if holds else 3
    return 5


def agent_rows(status: StatusResult, now: float, gone: set[str]) -> list[list[Cell]]:
    holders = {w.agent_id for w in status.worktrees if w.agent_id and w.state in HELD}
    judged = [(a, *liveness(a, gone, holders)) for a in status.agents]
    judged.sort(key=lambda x: (_agent_rank(x[0], x[1], x[0].agent_id in holders), x[0].agent_id))
    rows: list[list[Cell]] = []
    for a, word, reason in judged:
        text = reason if word != "alive" or not a.note else a.note
        rows.append(
            [
                (a.agent_id, "bold" if a.agent_id in holders else ""),
                (word, LIVENESS_STYLE[word]),
                (a.status, "dim"),
                ("focus" if a.focused else "", "bold magenta"),
                (age(a.last_heartbeat, now), ""),
                (str(a.pid), "dim"),
                (text, "dim" if word in {"alive", "left"} else LIVENESS_STYLE[word]),
            ]
        )
    return rows


def event_rows(events: Sequence[Event]) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for e in reversed(events):  # newest first: truncation drops the oldest
        ok = e.outcome in {"ok", "freed", "saved", "FREE"}
        bad = e.outcome.isupper() or e.action in {Action.AGENT_DEAD, Action.AGENT_STALE}
        style = "green" if ok else "bold red" if bad else "yellow"
        rows.append(
            [
                (clock(e.ts), "dim"),
                (e.agent_id or "-", ""),
                (e.action, ""),
                (e.branch or "-", ""),
                (e.outcome, style),
                ("-" if e.duration_ms is None else f"{math.floor(e.duration_ms + 0.5)}", "dim"),
                (e.worktree_id or "-", "dim"),
            ]
        )
    return rows


def contention_line(status: StatusResult, width: int) -> Text:
    c = status.contention
    text = Text(no_wrap=True)
    text.append("contention ", style="bold")
    if c is None:
        text.append("not measured", style="dim")
        return text
    mode = "pessimistic" if c.level >= c.threshold else "optimistic"
    text.append(f"{c.level}/{c.threshold} ", style="bold red" if c.level >= c.threshold else "green")
    text.append(f"{mode} · {c.live_agents} live agents · ")
    text.append(f"{'?' if c.agent_processes is None else c.agent_processes} agent procs · user {c.user_presence}")
    if c.focused_window:
        text.append(f" · focus {c.focused_window}", style="magenta")
    text.append(" · sources ")
    for src in c.sources:
        text.append(f"{src.name}{'✓' if src.used else '✗'} ", style="green" if src.used else "dim")
    text.rstrip()
    text.truncate(width, overflow="ellipsis")
    return text


def title_line(status: StatusResult, now: float, width: int, hint: str) -> Text:
    p = status.pool
    left = Text(no_wrap=True)
    left.append(" agent-coord ", style="bold reverse")
    left.append(" ")
    right = Text(no_wrap=True)
    right.append(f"pool {p.size}/{p.max}: {p.busy} busy {p.free} free", style="bold")
    if p.quarantined:
        right.append(f" {p.quarantined} quarantined", style="bold red")
    right.append(f"  {clock(now)}")
    if hint:
        right.append(f"  {hint}", style="dim")
    room = width - len(left) - len(right) - 1
    repo = status.repo or "all repositories"
    if room >= 6:
        left.append(elide_start(repo, room), style="cyan")
        left.append(" " * (width - len(left) - len(right)))
        left.append_text(right)
    else:
        left.append_text(right)
    left.truncate(width, overflow="ellipsis")
    return left
