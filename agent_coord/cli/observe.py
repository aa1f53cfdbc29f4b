"""Observing the pool: `metrics` (health against targets), `activity` (the event log, live with --follow)
and `advise` (settings recommended from the measurements; nothing is changed)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Annotated, Any, TextIO

import anyio
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from agent_coord.cli.common import app, emit_json, run_with_coordinator
from agent_coord.dashboard.render import METRIC_STATE_STYLE, metric_header, output_console
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.observe.activity import format_activity_line, format_time
from agent_coord.engine.observe.advise import Advice, Current, advice_from_store
from agent_coord.engine.observe.metrics import ROW_HEADER, MetricsReport
from agent_coord.engine.observe.watch import ChangeWatcher
from agent_coord.engine.store.records import Event
from agent_coord.platform.signals import next_stop_signal

DEFAULT_LIMIT = 50  # as many as `coord://activity` shows


@app.command()
def metrics(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Health metrics over the window (default 7 days), each with its target and state."""

    async def read(coord: Coordinator) -> MetricsReport:
        report: MetricsReport = await coord.metrics()
        return report

    report = run_with_coordinator(read)
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    print_metrics(report, output_console())


def print_metrics(report: MetricsReport, console: Console) -> None:
    days = report.window_s / 86400
    window = f"{days:g} days" if days >= 1 else f"{report.window_s / 3600:g} h"
    overall = METRIC_STATE_STYLE.get(report.overall, "")
    console.print(f"metrics over {window}: overall [{overall}]{report.overall}[/]")
    # The detail column needs ~40 more columns; on a narrow terminal it would squeeze to one word a
    # line, so there it is left out (`--json` has it) and names, values and targets stay whole.
    columns = metric_header(console.width)
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in ("value", "samples") else "left", no_wrap=True)
    for row in report.as_rows():
        cells = [
            f"[{METRIC_STATE_STYLE.get(cell, '')}]{cell}[/]" if name == "state" else cell
            for name, cell in zip(ROW_HEADER, row, strict=True)
        ]
        table.add_row(*cells[: len(columns)])
    console.print(table)


def event_json(e: Event) -> dict[str, Any]:
    return {**dataclasses.asdict(e), "time": format_time(e.ts), "line": format_activity_line(e)}


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    # Flush every batch: a reader on a pipe must see each line as it is committed, not when a buffer fills.
    out.flush()


@app.command()
def activity(
    limit: Annotated[int, typer.Option("--limit", "-n", min=0, help="how many of the latest events to show")] = (
        DEFAULT_LIMIT
    ),
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="keep printing new events as any process commits them")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print JSON: an array, or one object per line with --follow")
    ] = False,
) -> None:
    """The latest events, one line each: time | agent | action | branch | outcome | duration."""
    if not follow:

        async def latest(coord: Coordinator) -> list[Event]:
            return await coord.store.events(limit=limit, newest=True) if limit else []

        events = run_with_coordinator(latest)
        if as_json:
            emit_json([event_json(e) for e in events])
        else:
            try:
                _write(sys.stdout, "".join(f"{format_activity_line(e)}\n" for e in events))
            except BrokenPipeError:  # `activity | head -3`: the reader has what it wanted
                _silence_stdout()
        return
    try:
        run_with_coordinator(lambda coord: _follow(coord, limit, as_json))
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        raise typer.Exit(130) from None


async def _follow(coord: Coordinator, limit: int, as_json: bool) -> None:
    """Print the latest `limit` events, then every event committed after them, until SIGINT/SIGTERM
    or until the reader goes away (a closed pipe ends the stream quietly, as `tail -f | head` expects)."""
    settings = coord.settings
    newest = await coord.store.events(limit=max(limit, 1), newest=True)
    last_id = newest[-1].id if newest else 0
    lock = anyio.Lock()
    watcher = ChangeWatcher(coord.store.path, settings.watch_interval_s)

    def render(events: list[Event]) -> str:
        if as_json:
            return "".join(json.dumps(event_json(e), default=str) + "\n" for e in events)
        return "".join(f"{format_activity_line(e)}\n" for e in events)

    async with anyio.create_task_group() as tg:

        async def emit(events: list[Event]) -> None:
            if not events:
                return
            try:
                # A slow reader blocks the write; do it in a worker thread so the loop keeps watching.
                await anyio.to_thread.run_sync(_write, sys.stdout, render(events))
            except BrokenPipeError:
                _silence_stdout()
                tg.cancel_scope.cancel()

        async def drain() -> None:
            nonlocal last_id
            async with lock:  # one reader at a time, so no event is printed twice or out of order
                new = await coord.store.events(after_id=last_id)
                if new:
                    last_id = new[-1].id
                    await emit(new)

        async def watch() -> None:
            async for _ in watcher.changes():
                await drain()

        async def catch_up() -> None:
            # The watcher takes its baseline on its first poll; a commit between our first read and
            # that poll would not count as a change. One more read once the baseline is surely taken.
            await anyio.sleep(settings.watch_interval_s * 3)
            await drain()

        async def stop_on_signal() -> None:
            if await next_stop_signal() is not None:
                tg.cancel_scope.cancel()

        tg.start_soon(stop_on_signal)
        async with lock:
            await emit(newest[-limit:] if limit else [])
        tg.start_soon(watch)
        tg.start_soon(catch_up)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@app.command()
def advise(
    days: Annotated[
        float | None, typer.Option(min=0.05, help="the window in days (default: the metrics window)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Recommend settings from what the window measured (pool maximum, stale-after, heartbeat,
    contention threshold, warm slots), each with its evidence and what it would have changed."""

    async def read(coord: Coordinator) -> Advice:
        now = time.time()
        report = await coord.metrics(now=now, window_s=days * 86400 if days is not None else None)
        slots = len(await coord.store.slots())
        return await advice_from_store(coord.store, Current.of(coord.settings), report, slot_count=slots, now=now)

    result = run_with_coordinator(read)
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    console = output_console()
    window = result.window_s / 86400
    if not result.recommendations:
        console.print(f"no change recommended over the last {window:g} days")
    for r in result.recommendations:
        console.print(Text.assemble((f"{r.setting}: {r.current:g} -> {r.recommended:g}", "bold"), f"  ({r.rule})"))
        console.print(Text(f"  evidence: {r.evidence}"))
        console.print(Text(f"  over the last {window:g} days it would have meant: {r.would_have}"))
        console.print(Text(f"  to apply: {r.apply}"))
    for c in result.checks:
        console.print(Text(f"{c.rule}: no change; {c.evidence}", style="dim"))
