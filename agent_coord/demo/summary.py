"""The end of the demo: what happened, counted from the events, as JSON and as text for a person."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from agent_coord.dashboard.render import metric_header
from agent_coord.demo.plans import CRASHER
from agent_coord.demo.scenario import DemoResult
from agent_coord.demo.workspace import DemoPaths
from agent_coord.engine.errors import ErrorCode
from agent_coord.engine.observe.metrics import CALLER_ERRORS, MetricsReport
from agent_coord.engine.store.records import Action, Event


def count_events(events: list[Event]) -> dict[str, int]:
    attempts = [e for e in events if e.action == Action.ALLOCATE and e.outcome not in CALLER_ERRORS]
    return {
        "allocation_attempts": len(attempts),
        "allocations_ok": sum(1 for e in attempts if e.outcome == "ok"),
        "branch_conflicts": sum(1 for e in attempts if e.outcome == ErrorCode.BRANCH_CONFLICT),
        "cas_lost": sum(1 for e in events if e.action == Action.CAS_LOST),
        "releases_ok": sum(1 for e in events if e.action == Action.RELEASE and e.outcome == "ok"),
        "reclaims": sum(1 for e in events if e.action == Action.RECLAIM),
        "rescues": sum(1 for e in events if e.action == Action.RESCUE),
        "agent_dead": sum(1 for e in events if e.action == Action.AGENT_DEAD),
        "agent_stale": sum(1 for e in events if e.action == Action.AGENT_STALE),
    }


def summary_dict(
    *,
    result: DemoResult,
    report: MetricsReport | None,
    counts: dict[str, int],
    paths: DemoPaths,
    kept: bool,
    n_agents: int,
    elapsed_s: float,
) -> dict[str, Any]:
    crash = result.crash_reclaim
    return {
        "ok": result.finished and not result.problems and result.interrupted is None,
        "interrupted": result.interrupted,
        "duration_s": round(elapsed_s, 1),
        "agents": n_agents,
        "counts": counts,
        "crash": {
            "agent": CRASHER,
            "worktree_id": crash.worktree_id if crash else None,
            "reclaim_outcome": crash.outcome if crash else None,
            "rescue_ref": crash.detail.get("rescue_ref") if crash else None,
            "reclaimed_by": result.reclaimed_by if crash else None,
        },
        "problems": result.problems,
        "metrics": report.model_dump(mode="json") if report else None,
        "paths": paths.as_dict(),
        "kept": kept,
    }


def print_summary(console: Console, summary: dict[str, Any], report: MetricsReport | None) -> None:
    _print_story(console, summary)
    if report is not None:
        _print_metrics(console, report)
    _print_files(console, summary)


def _print_story(console: Console, summary: dict[str, Any]) -> None:
    c = summary["counts"]
    crash = summary["crash"]
    if summary["ok"]:
        head = "Demo finished"
    else:
        head = "Demo stopped" if summary["interrupted"] else "Demo finished with problems"
    console.print(
        f"[bold]{head}[/] in {summary['duration_s']} s: {summary['agents']} agents, "
        f"{c['allocations_ok']} allocations of {c['allocation_attempts']} attempts, "
        f"{c['branch_conflicts']} branch conflict(s), {c['agent_dead']} crash(es), {c['reclaims']} reclaim(s)."
    )
    if crash["worktree_id"]:
        console.print(
            f"The crashed agent {crash['agent']}'s {crash['worktree_id']} was {crash['reclaim_outcome']}"
            + (f"; its uncommitted work is at [cyan]{crash['rescue_ref']}[/]" if crash["rescue_ref"] else "")
        )
    for problem in summary["problems"]:
        console.print(f"[bold red]problem:[/] {problem}", highlight=False)


def _print_metrics(console: Console, report: MetricsReport) -> None:
    header = metric_header(console.width)
    table = Table(box=None, title=f"metrics (overall: {report.overall})", title_justify="left")
    for name in header:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    for row in report.as_rows():
        table.add_row(*row[: len(header)])
    console.print(table)
    console.print(
        "[dim](the collision is on purpose, and a handful of attempts makes one conflict a large share;"
        " time-based rates need an hour of history, so a fresh demo has 'not enough data' for them)[/]"
    )


def _print_files(console: Console, summary: dict[str, Any]) -> None:
    p = summary["paths"]
    kept = summary["kept"]
    if not kept:
        where = " [dim](removed on exit; run with --keep to keep them)[/]"
    elif summary["problems"]:
        where = " (kept so that you can look: see the agent logs)"
    else:
        where = ""
    console.print(f"Files{where}:", highlight=False)
    files = Table(box=None, show_header=False)
    for label, key in (
        ("repository", "repo"),
        ("pool", "pool"),
        ("database", "db"),
        ("activity file", "activity_file"),
        ("agent logs", "logs"),
    ):
        files.add_row(f"  {label}", p[key])
    console.print(files)
    if kept:
        console.print(
            f"Explore: AGENT_COORD_DB={p['db']} AGENT_COORD_REPO={p['repo']} agent-coord status"
            f"\n         git -C {p['repo']} for-each-ref refs/agent-coord/rescue",
            highlight=False,
            soft_wrap=True,
        )
