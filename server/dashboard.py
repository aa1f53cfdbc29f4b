"""The live dashboard: one full screen that follows the store as any process commits.

Data flow. A ``ChangeWatcher`` (``PRAGMA data_version`` on a connection of its own) says when any
process committed; only then is a ``Snapshot`` read (status with contention and metrics, the latest
events). A one-second clock redraws from the last snapshot so that ages and lease countdowns move,
without touching the store. Rendering is a pure function of (snapshot, now, size), so it is tested
without a terminal.

Layout. Every row is exactly one line cut to the width (columns shrink, optional ones are dropped,
long values end in ``…``), and rows are handed out by priority so that an 80x24 terminal shows the
slots first, then the latest events, then agents, contention and metrics. Larger terminals get
everything, and the metrics as a full table.
"""

from __future__ import annotations

import math
import os
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import anyio
import psutil
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .engine.coordinator import Coordinator
from .engine.errors import CoordError
from .engine.metrics import MetricsReport
from .engine.models import AgentView, StatusResult, WorktreeView
from .engine.records import Action, Event
from .engine.store import StoreBusyError
from .engine.watch import ChangeWatcher

# How many events a snapshot reads: enough to fill a tall terminal after noise is filtered out.
EVENT_FETCH = 200
# Bookkeeping events that would crowd out the interesting ones (one per validation interval).
NOISE: frozenset[tuple[str, str]] = frozenset({(Action.VALIDATE.value, "started")})
TICK_S = 1.0
HELD = ("ALLOCATING", "BUSY", "RELEASING")
GAP = 2  # spaces between columns
FIRST_AGENTS = 4  # agents shown before the events get their share
FIRST_EVENTS = 6  # events shown before the remaining agents
TALL_EVENTS = 10  # events still shown when a tall terminal switches the metrics to a full table

STATE_STYLE = {
    "FREE": "green",
    "ALLOCATING": "yellow",
    "BUSY": "bold cyan",
    "RELEASING": "yellow",
    "QUARANTINED": "bold red",
}
METRIC_STYLE = {"ok": "green", "warning": "yellow", "failing": "bold red", "not enough data": "dim"}
METRIC_WORD = {"ok": "ok", "warning": "warn", "failing": "FAIL", "not enough data": "n/a"}
METRIC_SHORT = {
    "allocation_success_rate": "success",
    "allocation_latency_p50": "p50",
    "allocation_latency_p99": "p99",
    "conflict_rate": "conflicts",
    "pool_utilization": "utilization",
    "agent_crash_rate": "crashes",
    "stale_allocation_rate": "stale",
}
LIVENESS_STYLE = {"alive": "green", "dead": "bold red", "stale": "yellow", "left": "dim"}


# ---- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    status: StatusResult
    metrics: MetricsReport | None
    events: list[Event]  # oldest first, noise removed
    taken_at: float


async def take_snapshot(coord: Coordinator, repo: str | None) -> Snapshot:
    status = await coord.status(repo, with_contention=True)
    events = [e for e in await coord.store.events(limit=EVENT_FETCH, newest=True) if (e.action, e.outcome) not in NOISE]
    try:
        metrics = MetricsReport.model_validate(status.metrics) if status.metrics else None
    except ValueError:  # an older or newer server's shape: show the rest rather than nothing
        metrics = None
    return Snapshot(status=status, metrics=metrics, events=events, taken_at=time.time())


def gone_agents(agents: Sequence[AgentView], host: str) -> set[str]:
    """Agents the store still believes alive whose process on this host has exited.

    A crash commits nothing, so without this the screen would say "alive" until the next validation.
    ``pid_exists`` is one ``kill(pid, 0)``: cheap enough for every clock tick, and it reads no store.
    """
    return {a.agent_id for a in agents if a.alive and a.host == host and not psutil.pid_exists(a.pid)}


# ---- formatting helpers ------------------------------------------------------------------------


def duration(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 100:
        return f"{s:.0f}s"
    if s < 6000:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def age(ts: float | None, now: float) -> str:
    return "-" if not ts else duration(now - ts)


def lease_left(ts: float | None, now: float) -> tuple[str, str]:
    if not ts:
        return "-", "dim"
    left = ts - now
    if left < 0:
        return "expired", "bold red"
    return duration(left), "yellow" if left < 30 else ""


def elide_start(text: str, width: int) -> str:
    """Keep the end of ``text`` (the informative part of a path) within ``width`` cells."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :] if width > 1 else "…"[:width]


def short_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ratio":
        pct = value * 100
        return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"
    if unit == "ms":
        return f"{value:.0f}ms" if value < 10000 else f"{value / 1000:.1f}s"
    if unit == "per_week":
        return f"{value:.1f}/wk"
    if unit == "per_day":
        return f"{value:.1f}/day"
    return f"{value:g}"


def short_target(target: str) -> str:
    return target.replace(" ", "").replace("10000ms", "10s").replace("/week", "/wk")


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


# ---- columns -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    min_width: int
    max_width: int | None = None  # None: as wide as the content
    shrink: int = 0  # weight when the row is too wide; 0 never shrinks below its natural width
    right: bool = False
    keep_end: bool = False  # elide at the start (paths)
    drop: int = 0  # when even the minimums do not fit, the highest drop goes first; 0 is never dropped
    extra: bool = False  # shown only where every column fits at its natural width (never squeezed)


Cell = tuple[str, str]  # (text, style)


def fit_columns(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int) -> list[int]:
    """Width of each column (0: dropped) so that one row fits in ``width`` cells."""
    natural: list[int] = []
    for i, col in enumerate(columns):
        content = max([len(col.header), *(len(r[i][0]) for r in rows)])
        natural.append(min(content, col.max_width) if col.max_width else content)
    mins = [min(c.min_width, n) for c, n in zip(columns, natural, strict=True)]
    active = list(range(len(columns)))

    def total(ws: Sequence[int]) -> int:
        return sum(ws[i] for i in active) + GAP * max(0, len(active) - 1)

    # Extras go first, so that the essential columns are not squeezed to make room for them.
    while total(natural) > width and any(columns[i].extra for i in active):
        victim = max((i for i in active if columns[i].extra), key=lambda i: columns[i].drop)
        active.remove(victim)
    while total(mins) > width and any(columns[i].drop for i in active):
        victim = max((i for i in active if columns[i].drop), key=lambda i: columns[i].drop)
        active.remove(victim)
    widths = [natural[i] if i in active else 0 for i in range(len(columns))]
    excess = total(widths) - width
    # Shrink by weight: the column furthest above its minimum, relative to its weight, gives a cell.
    while excess > 0:
        candidates = [i for i in active if columns[i].shrink and widths[i] > mins[i]]
        if not candidates:
            candidates = [i for i in active if widths[i] > mins[i]]
        if not candidates:
            break
        i = max(candidates, key=lambda j: (widths[j] - mins[j]) * max(1, columns[j].shrink))
        widths[i] -= 1
        excess -= 1
    return widths


def cut(text: str, width: int, *, keep_end: bool = False, right: bool = False) -> str:
    if len(text) > width:
        text = elide_start(text, width) if keep_end else (text[: width - 1] + "…" if width > 1 else text[:width])
    return text.rjust(width) if right else text.ljust(width)


def table_lines(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int,
    limit: int,
    more: Callable[[int], str] | None = None,
    header_style: str = "bold",
) -> list[Text]:
    """Header plus at most ``limit`` lines of rows; when rows are cut, the last line says how many."""
    if limit <= 0:
        return []
    widths = fit_columns(columns, rows, width)
    shown = [i for i, w in enumerate(widths) if w > 0]

    def line(cells: Sequence[Cell], base: str = "") -> Text:
        text = Text(no_wrap=True, overflow="ellipsis", style=base)
        for n, i in enumerate(shown):
            if n:
                text.append(" " * GAP)
            value, style = cells[i]
            text.append(cut(value, widths[i], keep_end=columns[i].keep_end, right=columns[i].right), style=style)
        text.truncate(width)
        return text

    out = [line([(c.header, "") for c in columns], header_style)]
    body = limit - 1
    if len(rows) <= body:
        out += [line(r) for r in rows]
    elif body > 0:
        keep = body - 1 if more is not None else body
        out += [line(r) for r in rows[:keep]]
        if more is not None:
            out.append(Text(cut(more(len(rows) - keep), width), style="dim", no_wrap=True))
    return out


# ---- sections ----------------------------------------------------------------------------------

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
METRIC_COLUMNS = (
    Column("METRIC", 8, 24),
    Column("VALUE", 5, 10, right=True),
    Column("TARGET", 6, 12),
    Column("STATE", 4, 15),
    Column("N", 1, 6, right=True),
    Column("DETAIL", 8, None, shrink=3, drop=1),
)

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
                (time.strftime("%H:%M:%S", time.localtime(e.ts)), "dim"),
                (e.agent_id or "-", ""),
                (e.action, ""),
                (e.branch or "-", ""),
                (e.outcome, style),
                ("-" if e.duration_ms is None else f"{math.floor(e.duration_ms + 0.5)}", "dim"),
                (e.worktree_id or "-", "dim"),
            ]
        )
    return rows


def metric_chunks(report: MetricsReport) -> list[Text]:
    chunks: list[Text] = []
    for m in report.metrics:
        chunk = Text(no_wrap=True)
        chunk.append(METRIC_SHORT.get(m.name, m.name) + " ", style="bold")
        if m.value is None:
            chunk.append(f"n={m.samples}", style="dim")
        else:
            chunk.append(short_value(m.value, m.unit))
        if m.target != "informational":
            chunk.append(f" ({short_target(m.target)})", style="dim")
        if m.target != "informational" or m.value is None:
            chunk.append(" " + METRIC_WORD[m.state], style=METRIC_STYLE[m.state])
        chunks.append(chunk)
    return chunks


def pack(prefix: Text, chunks: Sequence[Text], width: int, sep: str = " · ", indent: int = 2) -> list[Text]:
    """Chunks laid out left to right, wrapping between chunks (never inside one)."""
    lines = [prefix.copy()]
    fresh = True  # no chunk on the current line yet
    for chunk in chunks:
        current = lines[-1]
        if not fresh and len(current) + len(sep) + len(chunk) > width:
            current = Text(" " * indent, no_wrap=True)
            lines.append(current)
            fresh = True
        if not fresh:
            current.append(sep, style="dim")
        current.append_text(chunk)
        fresh = False
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines


def metric_lines_compact(report: MetricsReport | None, width: int) -> list[Text]:
    if report is None:
        return [Text("metrics unavailable", style="dim")]
    prefix = Text("metrics ", style="bold")
    prefix.append(METRIC_WORD[report.overall], style=METRIC_STYLE[report.overall])
    prefix.append(": ")
    return pack(prefix, metric_chunks(report), width)


def metric_table(report: MetricsReport, width: int) -> list[Text]:
    rows: list[list[Cell]] = [
        [
            (m.name, ""),
            (short_value(m.value, m.unit), ""),
            (m.target, "dim"),
            (m.state, METRIC_STYLE[m.state]),
            (str(m.samples), "dim"),
            (m.detail, "dim"),
        ]
        for m in report.metrics
    ]
    window = duration(report.window_s)
    cols = (Column(f"METRICS ({window}) {report.overall}", 8, 30), *METRIC_COLUMNS[1:])
    return table_lines(cols, rows, width, len(rows) + 1)


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
    right.append(f"  {time.strftime('%H:%M:%S', time.localtime(now))}")
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


def section_header(title: str, width: int) -> Text:
    return Text(cut(title, width), style="bold", no_wrap=True)


# ---- row planning ------------------------------------------------------------------------------


@dataclass
class RowPlan:
    """Lines given to each section (0: not shown). Headers are included in the table sections."""

    title: int = 0
    notes: int = 0
    slots: int = 0
    agents: int = 0
    contention: int = 0
    metrics: int = 0
    events: int = 0
    metrics_table: bool = False
    spare: int = 0
    order: list[str] = field(default_factory=list)


def plan_rows(
    height: int | None,
    *,
    slots: int,
    agents: int,
    events: int,
    notes: int,
    metrics_compact: int,
    metrics_table: int,
) -> RowPlan:
    """Hand out ``height`` lines: slots first, then events, then the rest. ``None``: everything."""
    plan = RowPlan()
    if height is None:
        plan.title, plan.notes, plan.contention = 1, notes, 1
        plan.slots, plan.agents, plan.events = 1 + max(1, slots), 1 + max(1, agents), 1 + max(1, events)
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
    grant("slots", 2)  # header and one row (or "no slots")
    grant("events", 1 + max(1, min(events, 3)), partial=True)
    grant("notes", min(notes, 1))
    grant("contention", 1)
    grant("metrics", metrics_compact)
    grant("agents", 1 + max(1, min(agents, 2)))
    # Phase 2: fill. Slots to the full pool; agents and events take turns; the rest to events.
    grant("slots", max(1, slots) + 1 - plan.slots, partial=True)
    if plan.agents:
        grant("agents", min(agents, FIRST_AGENTS) + 1 - plan.agents, partial=True)
    grant("events", min(events, FIRST_EVENTS) + 1 - plan.events, partial=True)
    if plan.agents:
        grant("agents", max(1, agents) + 1 - plan.agents, partial=True)
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


# ---- the screen --------------------------------------------------------------------------------


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
    )
    lines: list[Text] = []
    if plan.title:
        lines.append(title_line(st, now, width, hint))
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


def print_snapshot(snapshot: Snapshot, console: Console, notes: Sequence[str] = ()) -> None:
    """Everything once, for a pipe or a file (no screen to keep up to date)."""
    gone = gone_agents(snapshot.status.agents, socket.gethostname())
    console.print(render_screen(snapshot, width=console.width, height=None, notes=notes, gone=gone, hint=""))


# ---- the terminal ------------------------------------------------------------------------------


@contextmanager
def cbreak(fd: int) -> Iterator[bool]:
    """Keys arrive one at a time without echo; Ctrl-C still signals. Restored however we leave."""
    if fd < 0 or not os.isatty(fd):
        yield False
        return
    if sys.platform == "win32":  # msvcrt reads keys one at a time already
        yield True
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _stdin_fd() -> int:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):  # closed, or replaced by something without a descriptor
        return -1


def _wait_for_key(fd: int, stop: threading.Event) -> bytes:
    """Runs in a worker thread; select with a short timeout so that ``stop`` is noticed promptly."""
    if sys.platform == "win32":
        import msvcrt

        while not stop.is_set():
            if msvcrt.kbhit():
                return msvcrt.getwch().encode()
            time.sleep(0.05)
        return b""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            return os.read(fd, 64)
    return b""


class Dashboard:
    """The live view of one store. ``run`` returns when the user presses q (or is cancelled)."""

    def __init__(
        self,
        coord: Coordinator,
        *,
        repo: str | None = None,
        console: Console | None = None,
        notes: Sequence[str] | None = None,
        tick_s: float = TICK_S,
        watch_interval_s: float | None = None,
        hint: str = "q quit",
    ) -> None:
        self.coord = coord
        self.repo = repo
        self.console = console or Console()
        self.notes = notes if notes is not None else []
        self.tick_s = tick_s
        self.hint = hint
        self.watch_interval_s = watch_interval_s or coord.settings.watch_interval_s
        self.host = socket.gethostname()
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self.redraws = 0
        self.reloads = 0
        self._wake = anyio.Event()
        self._data_changed = True

    def poke(self) -> None:
        """Redraw soon (the notes changed); the store is not read again."""
        self._wake.set()

    async def run(self, *, keys: bool = True) -> Literal["quit", "stopped"]:
        stop_keys = threading.Event()
        stdin_fd = _stdin_fd() if keys else -1
        outcome: list[Literal["quit", "stopped"]] = []
        with (
            cbreak(stdin_fd) as have_keys,
            Live(
                console=self.console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            ) as live,
        ):
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch)
                    if have_keys:
                        tg.start_soon(self._keys, stdin_fd, stop_keys, tg.cancel_scope, outcome)
                    if sys.platform != "win32":
                        tg.start_soon(self._on_resize)
                    await self._loop(live)
            finally:
                stop_keys.set()
        return outcome[0] if outcome else "stopped"

    async def _loop(self, live: Live) -> None:
        while True:
            if self._data_changed:
                self._data_changed = False
                try:
                    self.snapshot = await take_snapshot(self.coord, self.repo)
                    self.error = None
                except (CoordError, StoreBusyError, sqlite3.Error) as exc:
                    if self.snapshot is None:
                        raise
                    # Keep showing the last good state, and say why it may be old.
                    taken = time.strftime("%H:%M:%S", time.localtime(self.snapshot.taken_at))
                    self.error = f"showing the state of {taken}: {exc}"
                self.reloads += 1
            await self._draw(live)
            # Wake on a commit, a poke, or the next whole second (so the clock ticks evenly).
            with anyio.move_on_after(self.tick_s - (time.time() % self.tick_s) + 0.01):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _draw(self, live: Live) -> None:
        snapshot = self.snapshot
        if snapshot is None:
            return
        notes = [*self.notes, self.error] if self.error else list(self.notes)

        def draw() -> None:
            # Terminal writes can block (a slow ssh link): keep them off the event loop.
            width, height = self.console.size
            gone = gone_agents(snapshot.status.agents, self.host)
            screen = render_screen(snapshot, width=width, height=height, notes=notes, gone=gone, hint=self.hint)
            live.update(screen, refresh=True)

        await anyio.to_thread.run_sync(draw)
        self.redraws += 1

    async def _watch(self) -> None:
        async for _ in ChangeWatcher(self.coord.store.path, self.watch_interval_s).changes():
            self._data_changed = True
            self._wake.set()

    async def _keys(
        self, fd: int, stop: threading.Event, scope: anyio.CancelScope, outcome: list[Literal["quit", "stopped"]]
    ) -> None:
        while True:
            data = await anyio.to_thread.run_sync(_wait_for_key, fd, stop, abandon_on_cancel=True)
            if not data:  # stdin closed: keep showing, Ctrl-C still quits
                return
            if b"q" in data.lower():
                outcome.append("quit")
                scope.cancel()
                return
            if b"r" in data.lower():
                self._data_changed = True
                self._wake.set()

    async def _on_resize(self) -> None:
        with anyio.open_signal_receiver(signal.SIGWINCH) as signals:
            async for _ in signals:
                self._wake.set()


async def run_dashboard(coord: Coordinator, repo: str | None, console: Console) -> str:
    """The `dashboard` command on a terminal: until q, Ctrl-C or SIGTERM."""
    dashboard = Dashboard(coord, repo=repo, console=console)
    result = "signal"
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            if sys.platform == "win32":
                return
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        result = await dashboard.run()
        tg.cancel_scope.cancel()
    return result
