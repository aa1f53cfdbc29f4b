"""The live dashboard: layout at 80x24 (pure rendering), and the real thing under a pseudo-terminal."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pexpect
import pytest
from rich.console import Console

from agent_coord.config import Settings
from agent_coord.dashboard import SLOT_COLUMNS, Snapshot, fit_columns, plan_rows, render_screen
from agent_coord.engine.models import AgentView, Contention, ContentionSource, PoolSummary, StatusResult, WorktreeView
from agent_coord.engine.observe.metrics import compute_metrics
from agent_coord.engine.radar.models import BaseBranch, Conflict, ConflictPair, ConflictReport, OtherAllocation
from agent_coord.engine.store.records import Event
from tests.agent_proc import MIN_WAIT_S
from tests.conftest import git
from tests.paths import HOOK_HOST_OFF

NOW = 1_800_000_000.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def agent_coord() -> str:
    """The console script of the environment running the tests."""
    beside = Path(sys.executable).with_name("agent-coord")
    return str(beside) if beside.exists() else (shutil.which("agent-coord") or "agent-coord")


# ---- pure rendering ----------------------------------------------------------------------------


def fake_snapshot(slots: int = 8, agents: int = 8, events: int = 120) -> Snapshot:
    names = [f"agent-with-a-long-name-{i}" for i in range(agents)]
    worktrees = [
        WorktreeView(
            worktree_id=f"wt-{i + 1:02d}",
            path=f"/home/someone/projects/a-rather-long-repository-name.worktrees/wt-{i + 1:02d}",
            branch=f"feature/some-very-long-branch-name-number-{i}" if i % 3 else None,
            state="BUSY" if i % 3 else "FREE",
            agent_id=names[i % agents] if i % 3 else None,
            fencing_token=i,
            lease_expires_at=NOW + 100 if i % 3 else None,
            since=NOW - 30 if i % 3 else None,
            repo="/home/someone/projects/a-rather-long-repository-name",
            task="a task description that goes on and on" if i % 3 else None,
        )
        for i in range(slots)
    ]
    agent_views = [
        AgentView(
            agent_id=name,
            status="active",
            alive=i != 1,
            reason="alive" if i != 1 else "agent process 4121 is gone",
            host="elsewhere",  # never judged against this machine's process table
            pid=4000 + i,
            last_heartbeat=NOW - 5,
            lease_expires_at=NOW + 60,
            focused=i == 0,
        )
        for i, name in enumerate(names)
    ]
    evs = [
        Event(
            id=i + 1,
            ts=NOW - (events - i),
            agent_id=names[i % agents],
            action="allocate" if i % 2 else "release",
            repo_id=1,
            worktree_id=f"wt-{i % 8 + 1:02d}",
            branch=f"feature/branch-{i}",
            outcome="ok" if i % 5 else "BRANCH_CONFLICT",
            duration_ms=12.4 * i,
            fencing_token=i,
        )
        for i in range(events)
    ]
    status = StatusResult(
        repo="/home/someone/projects/a-rather-long-repository-name",
        pool=PoolSummary(size=slots, free=slots // 3, busy=slots - slots // 3, max=8, utilization=0.6),
        worktrees=worktrees,
        agents=agent_views,
        contention=Contention(
            level=5,
            threshold=3,
            live_agents=agents - 1,
            agent_processes=2,
            sources=[ContentionSource(name="store", used=True), ContentionSource(name="manictime", used=False)],
        ),
    )
    metrics = compute_metrics(evs, now=NOW, window_s=7 * 86400, slot_count=slots)
    return Snapshot(status=status, metrics=metrics, events=evs, taken_at=NOW)


def with_radar(snapshot: Snapshot) -> Snapshot:
    """wt-02 and wt-03 conflict on app.py (lines 10-12 / 11), wt-05 overlaps its base on README.md."""
    w = {v.worktree_id: v for v in snapshot.status.worktrees}

    def other(wt: str) -> OtherAllocation:
        return OtherAllocation(worktree_id=wt, branch=w[wt].branch, agent_id=w[wt].agent_id, task=w[wt].task)

    def conflict(kind: str, paths: list[str], ranges: dict[str, list[tuple[int, int]]] | None, to: object) -> Conflict:
        return Conflict.model_validate({"kind": kind, "paths": paths, "ranges": ranges, "with": to, "since": NOW - 90})

    report = ConflictReport(
        repo=snapshot.status.repo,
        pairs=[
            ConflictPair(a="wt-02", b="wt-03", kind="conflict", paths=["app.py"], since=NOW - 90),
            ConflictPair(a="wt-05", b="base:main", kind="overlap", paths=["README.md"], since=NOW - 400),
        ],
        worktrees={
            "wt-02": [conflict("conflict", ["app.py"], {"app.py": [(10, 12)]}, other("wt-03"))],
            "wt-03": [conflict("conflict", ["app.py"], {"app.py": [(11, 11)]}, other("wt-02"))],
            "wt-05": [conflict("overlap", ["README.md"], None, BaseBranch(base="main"))],
        },
    )
    return Snapshot(
        status=snapshot.status, metrics=snapshot.metrics, events=snapshot.events, taken_at=NOW, conflicts=report
    )


def screen_text(snapshot: Snapshot, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, file=io.StringIO(), record=True, color_system=None)
    console.print(render_screen(snapshot, width=width, height=height, now=NOW))
    return console.export_text().rstrip("\n").split("\n")


@pytest.mark.parametrize(("width", "height"), [(80, 24), (100, 30), (160, 50), (60, 14)])
def test_the_screen_fits_and_shows_slots_then_events(width: int, height: int) -> None:
    lines = screen_text(fake_snapshot(), width, height)
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    text = "\n".join(lines)
    assert "agent-coord" in lines[0] and "pool 8/8" in lines[0]
    # Slots come first, and every slot is listed where there is room (80x24 has room for 8 slots).
    assert lines[1].startswith("SLOT")
    if height >= 24:
        assert all(f"wt-{i:02d}" in text for i in range(1, 9))
        assert "LIVENESS" in text and "dead" in text and "focus" in text
        assert "contention 5/3 pessimistic" in text
        assert ("conflicts" in text and "(<1%)" in text) or "conflict_rate" in text
    # The newest event (id 120: 1476 ms, wt-08) is always on screen, right under its header.
    header = next(i for i, line in enumerate(lines) if line.startswith("TIME"))
    assert ("1476" in lines[header + 1] and "wt-08" in lines[header + 1]) or width < 70


@pytest.mark.parametrize(("width", "height"), [(80, 24), (220, 50)])
def test_the_radar_pairs_come_right_after_the_slots(width: int, height: int) -> None:
    lines = screen_text(with_radar(fake_snapshot()), width, height)
    assert len(lines) <= height and all(len(line) <= width for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("RADAR"))
    assert header < next(i for i, line in enumerate(lines) if line.startswith("TIME"))
    conflict, overlap = lines[header + 1], lines[header + 2]
    # Conflicts first; each side's agent and branch, the file with both sides' lines, since when.
    assert conflict.startswith("conflict") and "app.py:10-12/11" in conflict and "90s" in conflict, conflict
    assert overlap.startswith("overlap") and "base main" in overlap and "README.md" in overlap, overlap
    if width >= 220:  # the whole names, and what to do, where there is room
        assert "agent-with-a-long-name-1 · feature/some-very-long-branch-name-number-1" in conflict, conflict
        assert "one keeps the lines" in conflict, conflict


def test_no_radar_section_without_predictions() -> None:
    lines = screen_text(fake_snapshot(), 80, 24)
    assert not any(line.startswith("RADAR") for line in lines)


def test_a_tall_terminal_gets_the_metrics_table() -> None:
    text = "\n".join(screen_text(fake_snapshot(), 140, 60))
    assert "allocation_success_rate" in text and "> 95 %" in text and "nearest-rank" in text


def test_plan_priorities_on_a_short_terminal() -> None:
    plan = plan_rows(8, slots=20, agents=5, events=50, notes=0, metrics_compact=2, metrics_table=8)
    # Title, then slots (header + rows), then events; the rest is left out.
    assert plan.title == 1 and plan.slots >= 2 and plan.events >= 2
    assert plan.title + plan.slots + plan.events + plan.agents + plan.contention + plan.metrics <= 8
    everything = plan_rows(None, slots=3, agents=2, events=4, notes=1, metrics_compact=2, metrics_table=8)
    assert everything.slots == 4 and everything.events == 5 and everything.metrics_table


def test_optional_columns_go_before_the_branch_is_squeezed() -> None:
    row = [
        ("wt-01", ""),
        ("BUSY", ""),
        ("agent-1", ""),
        ("feature/quite-a-long-branch", ""),
        ("3s", ""),
        ("5m", ""),
        ("a task", ""),
        ("/a/path/wt-01", ""),
    ]
    widths = dict(zip([c.header for c in SLOT_COLUMNS], fit_columns(SLOT_COLUMNS, [row], 70), strict=True))
    assert widths["PATH"] == 0 and widths["BRANCH"] == len("feature/quite-a-long-branch")


# ---- the real thing ----------------------------------------------------------------------------


def last_frame(raw: str) -> list[str]:
    """The screen as last drawn: rich starts each frame at the home position."""
    frame = raw.rsplit("\x1b[H", 1)[-1]
    return [ANSI.sub("", line) for line in frame.replace("\r", "").split("\n")]


def child_env(env: dict[str, str]) -> dict[str, str]:
    full = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF) and k not in {"COLUMNS", "LINES"}
    }
    return {**full, **env, "TERM": "xterm-256color"}


def read_until(child: pexpect.spawn, raw: list[str], done: Callable[[list[str]], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(pexpect.TIMEOUT):
            raw.append(child.read_nonblocking(65536, timeout=0.05))
        if done(last_frame("".join(raw))):
            return True
    return False


def test_dashboard_in_a_pty_shows_another_process_allocation_and_quits_on_q(
    env: dict[str, str], settings: Settings
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    child = pexpect.spawn(
        agent_coord(), ["dashboard"], env=child_env(env), dimensions=(24, 80), encoding="utf-8", timeout=10
    )
    try:
        raw: list[str] = []
        header = read_until(child, raw, lambda f: any(line.startswith("SLOT") for line in f), MIN_WAIT_S)
        assert header, "".join(raw)[-2000:]

        async def allocate() -> None:
            async with Coordinator.open(settings, register=True, agent_id="agent-pty") as coord:
                await coord.pool.allocate("feat/pty-dash", task="shown on the dashboard")

        anyio.run(allocate)
        # Phase one (ALLOCATING) may be drawn first; the finished allocation follows (how soon is the
        # bench's to say: this machine may be loaded).
        seen = read_until(
            child,
            raw,
            lambda f: any(line.split()[:4] == ["wt-01", "BUSY", "agent-pty", "feat/pty-dash"] for line in f),
            MIN_WAIT_S,
        )
        screen = last_frame("".join(raw))
        assert seen, "\n".join(screen)
        assert len(screen) <= 24 and all(len(line) <= 80 for line in screen)
        # The events too; a frame may be read half drawn, so wait for one that holds them.
        assert read_until(
            child,
            raw,
            lambda f: any("agent-pty" in line and ("register" in line or "allocate" in line) for line in f),
            MIN_WAIT_S,
        ), "\n".join(last_frame("".join(raw)))

        child.send("q")
        child.expect(pexpect.EOF, timeout=MIN_WAIT_S)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus)


def test_dashboard_without_a_terminal_prints_one_snapshot(env: dict[str, str], settings: Settings) -> None:
    from agent_coord.engine.coordinator import Coordinator

    async def allocate() -> None:
        async with Coordinator.open(settings, register=True, agent_id="agent-pipe") as coord:
            await coord.pool.allocate("feat/piped")

    anyio.run(allocate)
    done = subprocess.run(
        [agent_coord(), "dashboard"], env=child_env(env), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    row = next(line for line in done.stdout.splitlines() if "feat/piped" in line)
    assert "agent-pipe" in row and "BUSY" in row
    assert "METRICS" in done.stdout and "TIME" in done.stdout  # the full metrics table and the events
    assert "allocate" in done.stdout


def test_dashboard_shows_the_radar_pairs_of_real_worktrees(env: dict[str, str], settings: Settings) -> None:
    """Two agents edit the same lines uncommitted; after a radar pass the dashboard lists the pair with
    the file and each side's lines, in a pseudo-terminal as it updates and in the piped snapshot."""
    from agent_coord.engine.coordinator import Coordinator

    repo = Path(env["AGENT_COORD_REPO"])
    (repo / "app.py").write_text("".join(f"line {i}\n" for i in range(1, 31)))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")

    def edit(path: Path, line: int, text: str) -> None:
        lines = path.read_text().splitlines(keepends=True)
        lines[line - 1] = text + "\n"
        path.write_text("".join(lines))

    child = pexpect.spawn(
        agent_coord(), ["dashboard"], env=child_env(env), dimensions=(30, 140), encoding="utf-8", timeout=10
    )
    try:
        raw: list[str] = []
        header = read_until(child, raw, lambda f: any(line.startswith("SLOT") for line in f), MIN_WAIT_S)
        assert header, "".join(raw)[-2000:]

        async def collide() -> None:
            async with (
                Coordinator.open(settings, register=True, agent_id="agent-left") as a,
                Coordinator.open(settings, register=True, agent_id="agent-right") as b,
            ):
                wa = await a.pool.allocate("feat/left", task="rename things")
                wb = await b.pool.allocate("feat/right", task="fix things")
                edit(Path(wa.path) / "app.py", 7, "seven by left")
                edit(Path(wb.path) / "app.py", 7, "seven by right")
                report = await a.radar_loop.tick()
                assert report is not None and report.conflicts == 1, report

        anyio.run(collide)

        def radar_line(frame: list[str]) -> bool:
            return any(
                line.startswith("conflict") and "feat/left" in line and "feat/right" in line and "app.py:7" in line
                for line in frame
            )

        assert read_until(child, raw, radar_line, MIN_WAIT_S), "\n".join(last_frame("".join(raw)))
        screen = last_frame("".join(raw))
        assert any(line.startswith("RADAR") for line in screen)
        child.send("q")
        child.expect(pexpect.EOF, timeout=MIN_WAIT_S)
    finally:
        child.close(force=True)
    # The piped snapshot has it too, with what to do about it.
    done = subprocess.run(
        [agent_coord(), "dashboard"],
        env={**child_env(env), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("conflict"))
    assert "agent-left" in row and "agent-right" in row and "app.py:7" in row and "rebase" in row, row
