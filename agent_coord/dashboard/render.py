"""Human output for the CLI: aligned tables, colour only on a terminal (rich decides)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent_coord.engine.models import StatusResult, ValidateResult
from agent_coord.engine.observe.metrics import ROW_HEADER


def output_console() -> Console:
    """A terminal gets rich's own width and colour; a pipe gets no colour and lines never wrapped."""
    return Console() if sys.stdout.isatty() else Console(width=100_000)


console = output_console()


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = time.time() - ts
    return f"{delta:.0f}s" if delta < 120 else f"{delta / 60:.0f}m" if delta < 7200 else f"{delta / 3600:.1f}h"


def left(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = ts - time.time()
    return "expired" if delta < 0 else f"{delta:.0f}s"


ALERT_STYLE = {"failing": "bold red", "warning": "bold yellow"}


def print_status(s: StatusResult) -> None:
    for alert in s.alerts:  # first: what someone should act on
        # A Text, not markup: a message quotes paths and details that may hold brackets.
        style = ALERT_STYLE[alert.severity]
        console.print(Text.assemble((alert.severity.upper(), style), f" {alert.kind}: {alert.message}"))
    p = s.pool
    console.print(
        f"[bold]{s.repo or 'all repositories'}[/]  pool {p.size}/{p.max}  free {p.free}  busy {p.busy}"
        f"  quarantined {p.quarantined}  utilization {p.utilization:.0%}"
    )
    table = Table("worktree", "state", "agent", "branch", "age", "lease", "path", box=None)
    for w in s.worktrees:
        table.add_row(
            w.worktree_id,
            w.state,
            w.agent_id or "-",
            w.branch or "-",
            ago(w.since),
            left(w.lease_expires_at),
            w.path,
        )
    console.print(table)
    agents = Table("agent", "status", "alive", "reason", "pid", "heartbeat", box=None)
    for a in s.agents:
        agents.add_row(a.agent_id, a.status, "yes" if a.alive else "no", a.reason, str(a.pid), ago(a.last_heartbeat))
    console.print(agents)
    if s.contention:
        c = s.contention
        used = ", ".join(
            f"{src.name}{'' if src.used else ' (unavailable: ' + (src.reason or '?') + ')'}" for src in c.sources
        )
        console.print(
            f"contention {c.level} (threshold {c.threshold}): {c.live_agents} live agents, "
            f"{c.agent_processes if c.agent_processes is not None else '?'} agent processes, "
            f"user {c.user_presence}; sources: {used}"
        )


def print_findings(r: ValidateResult) -> None:
    if not r.findings:
        console.print(f"no drift ({r.duration_ms:.0f} ms)")
    table = Table("kind", "worktree", "path", "detail", "action", "repaired", box=None)
    for f in [*r.findings, *r.skipped]:
        table.add_row(f.kind, f.worktree_id or "-", f.path or "-", f.detail, f.action, "yes" if f.repaired else "no")
    if r.findings or r.skipped:
        console.print(table)


# A metric's state against its target, in the same colour wherever a metric is shown.
METRIC_STATE_STYLE = {"ok": "green", "warning": "yellow", "failing": "bold red", "not enough data": "dim"}
# The detail column needs ~40 more columns; narrower, it would squeeze the others to one word a line.
METRICS_WIDE = 120


def metric_header(width: int) -> tuple[str, ...]:
    """The columns of a metrics table (``MetricsReport.as_rows``) that fit in ``width``."""
    return ROW_HEADER if width >= METRICS_WIDE else ROW_HEADER[:-1]
