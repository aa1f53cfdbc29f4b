"""`agent-coord demo`: a throw-away repository, several real agents, one collision, one crash.

The driver creates a repository (a few files, a few commits), a database and a pool under a new
temporary directory, then starts N simulated agents (``server/demo_agent.py``), each of which runs
its own real ``python -m server`` over stdio through the official MCP client. The script:

* every agent allocates a branch, commits a few files in its worktree, releases, and takes a
  second task;
* bob waits until alice holds ``feature/login``, asks for it anyway, gets ``BRANCH_CONFLICT`` and
  takes ``feature/login-bob``;
* carol leaves uncommitted work in her worktree and the driver SIGKILLs her process; the
  servers' own validation (every second in the demo) finds her dead and reclaims the worktree,
  saving the work to a rescue ref first.

The driver only observes (a read-only coordinator on the same database): the live dashboard when
stdout is a terminal, otherwise one line per event. It ends with the metrics and where the files
are. Every process it starts is stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import anyio
import psutil
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream
from rich.console import Console
from rich.table import Table

from .config import Settings
from .dashboard import NOISE, Dashboard
from .demo_agent import Plan, Task
from .engine.activity import format_activity_line
from .engine.coordinator import Coordinator
from .engine.errors import ErrorCode
from .engine.metrics import CALLER_ERRORS, ROW_HEADER, MetricsReport
from .engine.records import Action, Event
from .engine.watch import ChangeWatcher

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj")
MIN_AGENTS, MAX_AGENTS = 3, len(NAMES)
CRASHER = "carol"
EXTRA_BRANCHES = (
    ("refactor/api", "docs/guide"),
    ("test/flaky-login", "perf/cache"),
    ("build/ci", "feat/export"),
    ("fix/logging", "ui/theme"),
    ("chore/deps", "feat/search-filters"),
    ("fix/timezone", "docs/api"),
    ("feat/billing", "test/billing"),
    ("perf/startup", "fix/memory"),
    ("feat/i18n", "chore/lint"),
)
GIT_QUIET = {
    # A demo must not stop for the user's signing key or hooks: these apply to every git we and
    # our servers run (GIT_CONFIG_* needs git >= 2.31; older gits ignore them).
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "commit.gpgsign",
    "GIT_CONFIG_VALUE_0": "false",
    "GIT_CONFIG_KEY_1": "core.hooksPath",
    "GIT_CONFIG_VALUE_1": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


@dataclass(frozen=True)
class Pace:
    step_s: float  # between two commits of a task
    files: int  # commits per task
    kill_after_s: float  # how long the crasher visibly holds its dirty worktree before the kill
    linger_s: float  # the final state stays on screen this long
    stagger_s: float  # extra agents start this much apart
    reclaim_timeout_s: float  # then the driver validates itself (never needed when servers run)
    deadline_s: float  # the whole demo, whatever happens
    jitter_max_ms: int


NORMAL = Pace(
    step_s=3.0,
    files=3,
    kill_after_s=4.0,
    linger_s=5.0,
    stagger_s=1.5,
    reclaim_timeout_s=15.0,
    deadline_s=150.0,
    jitter_max_ms=500,
)
FAST = Pace(
    step_s=0.2,
    files=2,
    kill_after_s=0.5,
    linger_s=0.3,
    stagger_s=0.1,
    reclaim_timeout_s=8.0,
    deadline_s=60.0,
    jitter_max_ms=100,
)


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    repo: Path
    pool: Path
    db: Path
    activity: Path
    logs: Path

    @classmethod
    def under(cls, root: Path) -> DemoPaths:
        return cls(
            root=root,
            repo=root / "repo",
            pool=root / "repo.worktrees",
            db=root / "state" / "coord.db",
            activity=root / "worktrees.activity.md",
            logs=root / "logs",
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "root": str(self.root),
            "repo": str(self.repo),
            "pool": str(self.pool),
            "db": str(self.db),
            "activity_file": str(self.activity),
            "logs": str(self.logs),
        }


def build_plans(n: int, pace: Pace) -> list[Plan]:
    """alice and bob collide on feature/login, carol crashes, the others just work."""
    n = max(MIN_AGENTS, min(MAX_AGENTS, n))
    step, files = pace.step_s, pace.files
    plans = [
        Plan(
            agent_id="alice",
            tasks=[
                Task(
                    branch="feature/login",
                    description="login form",
                    files=files,
                    step_s=step,
                    hold_until_conflict_s=20.0,
                ),
                Task(branch="fix/typo", description="typo in README", files=max(1, files - 1), step_s=step),
            ],
        ),
        Plan(
            agent_id="bob",
            tasks=[
                Task(
                    branch="feature/login",
                    description="login validation",
                    files=files,
                    step_s=step,
                    wait_until_held=True,
                ),
                Task(branch="docs/changelog", description="changelog", files=max(1, files - 1), step_s=step),
            ],
        ),
        Plan(
            agent_id=CRASHER,
            start_delay_s=pace.stagger_s,
            tasks=[Task(branch="feature/search", description="search index", files=files, step_s=step, crash=True)],
        ),
    ]
    for i in range(3, n):
        first, second = EXTRA_BRANCHES[(i - 3) % len(EXTRA_BRANCHES)]
        plans.append(
            Plan(
                agent_id=NAMES[i],
                start_delay_s=pace.stagger_s * (i - 1),
                tasks=[
                    Task(branch=first, description=first.split("/")[-1].replace("-", " "), files=files, step_s=step),
                    Task(branch=second, description=second.split("/")[-1].replace("-", " "), files=files, step_s=step),
                ],
            )
        )
    return plans


async def make_demo_repo(repo: Path) -> None:
    """A small project with some history, so that branches have something to start from."""
    files = {
        "README.md": "# shop\n\nA tiny web shop, used by `agent-coord demo`.\n",
        "src/app.py": "def main() -> None:\n    print('shop')\n",
        "src/login.py": "def login(user: str) -> bool:\n    return bool(user)\n",
        "src/search.py": "def search(query: str) -> list[str]:\n    return []\n",
        "docs/guide.md": "# Guide\n\nRun `python -m src.app`.\n",
        ".gitignore": "__pycache__/\n.env\n",
    }
    env = {**os.environ, **GIT_QUIET, **_identity("agent-coord demo")}

    async def git(*args: str) -> None:
        await anyio.run_process(["git", "-C", str(repo), *args], env=env, check=True)

    await anyio.Path(repo).mkdir(parents=True)
    await git("init", "-q")
    await git("symbolic-ref", "HEAD", "refs/heads/main")  # whatever init.defaultBranch says
    history = (
        ("initial layout", ["README.md", ".gitignore", "src/app.py"]),
        ("login stub", ["src/login.py"]),
        ("search stub and guide", ["src/search.py", "docs/guide.md"]),
    )
    for message, names in history:
        for name in names:
            target = anyio.Path(repo / name)
            await target.parent.mkdir(parents=True, exist_ok=True)
            await target.write_text(files[name])
        await git("add", "--", *names)
        await git("commit", "-q", "-m", message)


def _identity(name: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": "demo@agent-coord.invalid",
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": "demo@agent-coord.invalid",
    }


def demo_env(paths: DemoPaths, pace: Pace, n: int) -> dict[str, str]:
    """The environment of every agent and server: this demo's files, fast validation, no ManicTime."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env.update(GIT_QUIET)
    env.update(_identity("agent-coord demo"))
    env.update(
        {
            "AGENT_COORD_DB": str(paths.db),
            "AGENT_COORD_REPO": str(paths.repo),
            "AGENT_COORD_POOL_ROOT": str(paths.pool),
            "AGENT_COORD_POOL_MAX": str(max(8, n + 2)),
            "AGENT_COORD_ACTIVITY_FILE": str(paths.activity),
            "AGENT_COORD_MANICTIME_DB": "",
            # Validation every second finds the crash at once. Short leases (renewed every 2 s) so that
            # an agent whose server hangs goes stale within the demo rather than after five minutes.
            "AGENT_COORD_VALIDATE_EVERY_S": "1",
            "AGENT_COORD_STALE_AFTER_S": "15",
            "AGENT_COORD_HEARTBEAT_ACTIVE_S": "2",
            "AGENT_COORD_HEARTBEAT_IDLE_S": "4",
            "AGENT_COORD_JITTER_MAX_MS": str(pace.jitter_max_ms),
            "AGENT_COORD_WATCH_INTERVAL_S": "0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def observer_settings(paths: DemoPaths, n: int) -> Settings:
    # Everything explicit: the user's own AGENT_COORD_* variables must not point the demo elsewhere.
    return Settings(
        db=paths.db,
        repo=paths.repo,
        pool_root=paths.pool,
        pool_max=max(8, n + 2),
        manictime_db=None,
        activity_file=None,
        validate_every_s=1.0,
        stale_after_s=15.0,
        watch_interval_s=0.1,
    )


# ---- output ------------------------------------------------------------------------------------


class Narrator:
    """The demo's own commentary: a line on the live screen, or a line of output."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.notes: list[str] = []
        self.dashboard: Dashboard | None = None
        self.started = time.monotonic()

    async def say(self, text: str) -> None:
        stamp = f"{time.monotonic() - self.started:5.1f}s"
        self.notes.append(f"{stamp} {text}")
        if self.dashboard is not None:
            self.dashboard.poke()
        elif self.out is not None:
            await write_lines(self.out, [f"demo {stamp}: {text}"])


async def write_lines(out: TextIO, lines: list[str]) -> None:
    def write() -> None:
        out.write("".join(f"{line}\n" for line in lines))
        out.flush()

    await anyio.to_thread.run_sync(write)


class EventTap:
    """Every event committed to the demo's database, as it is committed (by any process)."""

    def __init__(self, coord: Coordinator, echo: TextIO | None) -> None:
        self.coord = coord
        self.echo = echo
        self.events: list[Event] = []
        self._last_id = 0
        self._changed = anyio.Event()
        self._lock = anyio.Lock()  # two drains at once would both read past the same id

    async def drain(self) -> None:
        async with self._lock:
            new = await self.coord.store.events(after_id=self._last_id)
            if not new:
                return
            self._last_id = new[-1].id
            self.events.extend(new)
            self._changed.set()
            self._changed = anyio.Event()
            if self.echo is not None:
                lines = [format_activity_line(e) for e in new if (e.action, e.outcome) not in NOISE]
                if lines:
                    await write_lines(self.echo, lines)

    async def follow(self) -> None:
        await self.drain()
        async for _ in ChangeWatcher(self.coord.store.path, 0.1).changes():
            await self.drain()

    async def wait_for(self, match: Callable[[Event], bool], timeout_s: float) -> Event | None:
        with anyio.move_on_after(timeout_s):
            seen = 0
            while True:
                for e in self.events[seen:]:
                    if match(e):
                        return e
                seen = len(self.events)
                changed = self._changed
                await changed.wait()
        return None


# ---- agents ------------------------------------------------------------------------------------


@dataclass
class AgentProc:
    plan: Plan
    process: Process
    log: IO[bytes]
    server_pids: list[tuple[int, float]] = field(default_factory=list)  # (pid, create time)
    ready: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)  # its tasks finished (or it failed)
    dirty: anyio.Event = field(default_factory=anyio.Event)
    dirty_worktree: str | None = None
    errors: list[str] = field(default_factory=list)
    killed: bool = False

    @property
    def name(self) -> str:
        return self.plan.agent_id

    @property
    def pid(self) -> int:
        return self.process.pid


async def start_agent(plan: Plan, env: dict[str, str], paths: DemoPaths) -> AgentProc:
    log = await anyio.to_thread.run_sync(lambda: (paths.logs / f"{plan.agent_id}.log").open("ab"))
    process = await anyio.open_process(
        [sys.executable, "-m", "server.demo_agent", plan.model_dump_json()],
        env={**env, "AGENT_COORD_AGENT_ID": plan.agent_id},
        cwd=str(paths.root),  # not the repository: `python -m` puts the cwd first on sys.path
        stderr=log,
        # Its own process group: Ctrl-C reaches only the driver, which then stops agents in order.
        start_new_session=True,
    )
    return AgentProc(plan=plan, process=process, log=log)


async def read_agent(agent: AgentProc, narrator: Narrator, events: dict[str, list[dict[str, Any]]]) -> None:
    """Follow one agent's JSON lines until it exits."""
    assert agent.process.stdout is not None
    buffer = ""
    try:
        async for chunk in TextReceiveStream(agent.process.stdout):
            *lines, buffer = (buffer + chunk).split("\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                events.setdefault(agent.name, []).append(msg)
                await on_agent_message(agent, msg, narrator)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        agent.done.set()
        agent.ready.set()


async def on_agent_message(agent: AgentProc, msg: dict[str, Any], narrator: Narrator) -> None:
    kind = msg.get("event")
    if kind == "ready":
        try:
            me = psutil.Process(agent.pid)
            agent.server_pids = [(c.pid, c.create_time()) for c in me.children(recursive=True)]
        except psutil.Error:
            pass
        agent.ready.set()
    elif kind == "allocated":
        await narrator.say(f"{agent.name} got {msg.get('worktree_id')} on {msg.get('branch')}")
    elif kind == "conflict":
        await narrator.say(
            f"{agent.name} collided on {msg.get('branch')} (BRANCH_CONFLICT) and takes {msg.get('alternative')}"
        )
    elif kind == "dirty":
        agent.dirty_worktree = str(msg.get("worktree_id"))
        await narrator.say(f"{agent.name} has uncommitted work in {agent.dirty_worktree} ({msg.get('branch')})")
        agent.dirty.set()
    elif kind == "done":
        agent.done.set()
    elif kind == "error":
        agent.errors.append(str(msg.get("message")))
        await narrator.say(f"{agent.name} failed: {msg.get('message')}")
        agent.done.set()


def _alive(pid: int, created: float) -> bool:
    try:
        return bool(abs(psutil.Process(pid).create_time() - created) < 0.05)
    except psutil.Error:
        return False


async def stop_agents(agents: list[AgentProc], grace_s: float = 6.0) -> None:
    """Close stdin (the agents release and exit), then SIGTERM, then SIGKILL; their servers too."""
    for agent in agents:
        if agent.process.stdin is not None:
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await agent.process.stdin.aclose()

    async def exited(pids: Callable[[], list[int]], timeout_s: float) -> bool:
        with anyio.move_on_after(timeout_s):
            # Polling, not wait(): the servers are our grandchildren, with no handle to wait on.
            while pids():  # noqa: ASYNC110
                await anyio.sleep(0.05)
            return True
        return False

    def running_agents() -> list[int]:
        return [a.pid for a in agents if a.process.returncode is None]

    def running_servers() -> list[int]:
        return [pid for a in agents for pid, created in a.server_pids if _alive(pid, created)]

    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for pid in running_agents():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, sig)  # the group we created for this agent, and nothing else
        if await exited(running_agents, grace_s if sig is None else 2.0):
            break
    # Servers stop by themselves when their agent's pipe closes; make sure of it.
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            for pid in running_servers():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        if await exited(running_servers, 4.0 if sig is None else 2.0):
            break
    for agent in agents:
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await agent.process.aclose()
        agent.log.close()


# ---- the scenario ------------------------------------------------------------------------------


@dataclass
class DemoResult:
    finished: bool = False  # the scenario ran to its end
    interrupted: str | None = None
    crash_reclaim: Event | None = None
    reclaimed_by: str = "servers"  # or "driver" when the fallback validation had to run
    problems: list[str] = field(default_factory=list)


async def scenario(
    coord: Coordinator,
    agents: list[AgentProc],
    tap: EventTap,
    narrator: Narrator,
    pace: Pace,
    result: DemoResult,
) -> None:
    crasher = next(a for a in agents if a.name == CRASHER)
    with anyio.move_on_after(30):
        for agent in agents:
            await agent.ready.wait()
    await narrator.say(f"{len(agents)} agents started, each with its own agent-coord server")
    with anyio.move_on_after(30):
        await crasher.dirty.wait()
    if not crasher.dirty.is_set():
        result.problems.append(f"{CRASHER} never reached its crash point: {crasher.errors or 'no error reported'}")
    else:
        await anyio.sleep(pace.kill_after_s)
        await narrator.say(f"crash: SIGKILL {CRASHER} (pid {crasher.pid}) while it holds {crasher.dirty_worktree}")
        crasher.killed = True
        try:
            os.kill(crasher.pid, signal.SIGKILL)
        except ProcessLookupError:
            result.problems.append(f"{CRASHER} had already exited")
        wid = crasher.dirty_worktree

        def reclaimed(e: Event) -> bool:
            return e.action == Action.RECLAIM and e.worktree_id == wid and e.detail.get("previous_owner") == CRASHER

        event = await tap.wait_for(reclaimed, pace.reclaim_timeout_s)
        if event is None:
            await narrator.say("no server reclaimed it in time: the demo runs validation itself")
            result.reclaimed_by = "driver"
            await coord.validate(repair=True)
            await tap.drain()
            event = await tap.wait_for(reclaimed, 2.0)
        if event is None:
            result.problems.append(f"{wid} of the killed agent was not reclaimed")
        else:
            # The same validation pass records the death right after the reclaim; let it land.
            await tap.wait_for(lambda e: e.action == Action.AGENT_DEAD and e.agent_id == CRASHER, 5.0)
            result.crash_reclaim = event
            ref = event.detail.get("rescue_ref")
            await narrator.say(
                f"{event.agent_id}'s validation found {CRASHER} dead and reclaimed {wid}: {event.outcome}"
                + (f", work saved to {ref}" if ref else "")
            )
    with anyio.move_on_after(pace.deadline_s):
        for agent in agents:
            if agent is not crasher:
                await agent.done.wait()
    for agent in agents:
        result.problems += [f"{agent.name}: {e}" for e in agent.errors]
    if not any(e.action == Action.ALLOCATE and e.outcome == ErrorCode.BRANCH_CONFLICT for e in tap.events):
        result.problems.append("no agent collided on a branch")
    await narrator.say("all agents are done" + (" (with problems)" if result.problems else ""))
    await anyio.sleep(pace.linger_s)
    result.finished = True


# ---- summary -----------------------------------------------------------------------------------


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
    if report is not None:
        # One line per metric: the detail column only where there is room for it.
        header = ROW_HEADER if console.width >= 120 else ROW_HEADER[:-1]
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


# ---- the command -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    agents: int = 4
    fast: bool = False
    keep: bool = False
    as_json: bool = False
    live: bool | None = None  # None: the live dashboard when stdout is a terminal (and not --json)


async def run_demo(opts: DemoOptions) -> int:
    if sys.platform == "win32":
        sys.stderr.write("agent-coord demo needs a POSIX system (Linux, macOS, WSL)\n")
        return 1
    n = max(MIN_AGENTS, min(MAX_AGENTS, opts.agents))
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
    agents: list[AgentProc] = []
    report: MetricsReport | None = None
    counts: dict[str, int] = {}
    narrator = Narrator(None if live else human_out)
    try:
        if shutil.which("git") is None:
            raise DemoSetupError("git is not on PATH; the demo needs it")
        await make_demo_repo(paths.repo)
        env = demo_env(paths, pace, n)
        async with Coordinator.open(observer_settings(paths, n), register=False) as coord:
            await coord.default_repo()  # record the repository before the agents race to
            tap = EventTap(coord, None if live else human_out)
            await narrator.say(f"demo files under {paths.root}")
            try:
                with anyio.fail_after(pace.deadline_s):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_stop_on_signal, tg.cancel_scope, result)
                        tg.start_soon(tap.follow)
                        if live:
                            dashboard = Dashboard(coord, notes=narrator.notes, console=console, hint="q stops the demo")
                            narrator.dashboard = dashboard
                            tg.start_soon(_run_dashboard, dashboard, tg.cancel_scope, result)
                        agent_events: dict[str, list[dict[str, Any]]] = {}
                        for plan in build_plans(n, pace):
                            agents.append(await start_agent(plan, env, paths))
                            tg.start_soon(read_agent, agents[-1], narrator, agent_events)
                        await scenario(coord, agents, tap, narrator, pace, result)
                        tg.cancel_scope.cancel()
            except TimeoutError:
                result.interrupted = f"deadline of {pace.deadline_s:g}s passed"
            finally:
                narrator.dashboard = None
                with anyio.CancelScope(shield=True):
                    await stop_agents(agents)
                    await tap.drain()
                    report = await coord.metrics()
                    counts = count_events(tap.events)
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
            report=report,
            counts=counts or count_events([]),
            paths=paths,
            kept=keep,
            n_agents=n,
            elapsed_s=time.monotonic() - started,
        )
        if not keep:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(paths.root, ignore_errors=True))
    print_summary(console, summary, report)
    if opts.as_json:
        await write_lines(sys.stdout, [json.dumps(summary, separators=(",", ":"))])
    if result.interrupted in {"signal", "quit"}:
        return 130 if result.interrupted == "signal" else 0
    return 0 if summary["ok"] else 1


class DemoSetupError(Exception):
    pass


def _log_traceback(path: Path) -> None:
    import traceback

    with path.open("a") as fh:
        traceback.print_exc(file=fh)


async def _stop_on_signal(scope: anyio.CancelScope, result: DemoResult) -> None:
    if sys.platform == "win32":
        return
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            result.interrupted = "signal"
            scope.cancel()
            return


async def _run_dashboard(dashboard: Dashboard, scope: anyio.CancelScope, result: DemoResult) -> None:
    if await dashboard.run() == "quit":
        result.interrupted = "quit"
        scope.cancel()
