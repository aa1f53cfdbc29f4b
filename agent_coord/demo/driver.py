"""`agent-coord demo` from start to end: set up, run the agents under a read-only observer, sum up, clean up."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import anyio
from rich.console import Console

from agent_coord.dashboard import Dashboard, cancel_on_stop_signal
from agent_coord.demo.agents import AgentProc, read_agent, start_agent
from agent_coord.demo.cleanup import stop_agents
from agent_coord.demo.plans import FAST, NORMAL, Pace, agent_count, build_plans
from agent_coord.demo.progress import EventTap, Narrator, write_lines
from agent_coord.demo.scenario import DemoResult, scenario
from agent_coord.demo.summary import count_events, print_summary, summary_dict
from agent_coord.demo.workspace import DemoPaths, demo_env, make_demo_repo, observer_settings
from agent_coord.engine.coordinator import Coordinator


@dataclass(frozen=True)
class DemoOptions:
    agents: int = 4
    fast: bool = False
    keep: bool = False
    as_json: bool = False
    live: bool | None = None  # None: the live dashboard when stdout is a terminal (and not --json)


class DemoSetupError(Exception):
    pass


async def run_demo(opts: DemoOptions) -> int:
    if sys.platform == "win32":
        sys.stderr.write("agent-coord demo needs a POSIX system (Linux, macOS, WSL)\n")
        return 1
    n = agent_count(opts.agents)
    pace = FAST if opts.fast else NORMAL
    live = opts.live if opts.live is not None else (sys.stdout.isatty() and not opts.as_json)
    # With --json, stdout carries exactly one line (the summary); everything human goes to stderr.
    human_out: TextIO = sys.stderr if opts.as_json else sys.stdout
    console = Console(file=human_out)
    started = time.monotonic()
    root = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="agent-coord-demo-")))
    paths = DemoPaths.under(root)
    await anyio.Path(paths.logs).mkdir(parents=True)
    result = DemoResult()
    narrator = Narrator(None if live else human_out)
    try:
        if shutil.which("git") is None:
            raise DemoSetupError("git is not on PATH; the demo needs it")
        await make_demo_repo(paths.repo)
        await play(paths, pace, n, narrator, result, screen=console if live else None, echo=None if live else human_out)
    except Exception as exc:  # the README's first command: a clear message and the logs, not a traceback
        result.problems.append(f"{type(exc).__name__}: {exc}")
        await anyio.to_thread.run_sync(_log_traceback, paths.logs / "demo.log")
    finally:
        if not result.finished and result.interrupted is None:
            result.interrupted = "error"
        # Something went wrong: keep the files, the agents' logs are the way to find out what.
        keep = opts.keep or (bool(result.problems) and result.interrupted not in {"signal", "quit"})
        summary = summary_dict(
            result=result,
            report=result.report,
            counts=result.counts or count_events([]),
            paths=paths,
            kept=keep,
            n_agents=n,
            elapsed_s=time.monotonic() - started,
        )
        if not keep:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(paths.root, ignore_errors=True))
    print_summary(console, summary, result.report)
    if opts.as_json:
        await write_lines(sys.stdout, [json.dumps(summary, separators=(",", ":"))])
    if result.interrupted in {"signal", "quit"}:
        return 130 if result.interrupted == "signal" else 0
    return 0 if summary["ok"] else 1


async def play(
    paths: DemoPaths,
    pace: Pace,
    n: int,
    narrator: Narrator,
    result: DemoResult,
    *,
    screen: Console | None,
    echo: TextIO | None,
) -> None:
    """Start the agents and follow the scenario, watched by a read-only coordinator on the same database.

    ``screen``: show the live dashboard there; ``echo``: print one line per event there instead.
    Every agent is stopped on the way out, and the final metrics and counts land in ``result``.
    """
    agents: list[AgentProc] = []
    env = demo_env(paths, pace, n)
    async with Coordinator.open(observer_settings(paths, n), register=False) as coord:
        await coord.default_repo()  # record the repository before the agents race to
        tap = EventTap(coord, echo)
        await narrator.say(f"demo files under {paths.root}")

        def on_signal() -> None:
            result.interrupted = "signal"

        try:
            with anyio.fail_after(pace.deadline_s):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(cancel_on_stop_signal, tg.cancel_scope, on_signal)
                    tg.start_soon(tap.follow)
                    if screen is not None:
                        dashboard = Dashboard(coord, notes=narrator.notes, console=screen, hint="q stops the demo")
                        narrator.dashboard = dashboard
                        tg.start_soon(_run_dashboard, dashboard, tg.cancel_scope, result)
                    for plan in build_plans(n, pace):
                        agents.append(await start_agent(plan, env, paths))
                        tg.start_soon(read_agent, agents[-1], narrator)
                    await scenario(coord, agents, tap, narrator, pace, result)
                    tg.cancel_scope.cancel()
        except TimeoutError:
            result.interrupted = f"deadline of {pace.deadline_s:g}s passed"
        finally:
            narrator.dashboard = None
            with anyio.CancelScope(shield=True):
                await stop_agents(agents)
                await tap.drain()
                result.report = await coord.metrics()
                result.counts = count_events(tap.events)


async def _run_dashboard(dashboard: Dashboard, scope: anyio.CancelScope, result: DemoResult) -> None:
    if await dashboard.run() == "quit":
        result.interrupted = "quit"
        scope.cancel()


def _log_traceback(path: Path) -> None:
    import traceback

    with path.open("a") as fh:
        traceback.print_exc(file=fh)
