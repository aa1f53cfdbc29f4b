"""`agent-coord demo`: real agents and servers, run unattended the way CI and the README run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil

from agent_coord.demo import CRASHER, FAST, build_plans
from tests.paths import HOOK_HOST_OFF
from tests.ui.test_dashboard import agent_coord


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def processes_using(root: Path) -> list[psutil.Process]:
    """Processes whose AGENT_COORD_DB lies under ``root``: the demo's agents and servers."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("AGENT_COORD_DB", "").startswith(str(root)):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def metric(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in summary["metrics"]["metrics"] if m["name"] == name)


def test_the_plans_collide_once_and_crash_once() -> None:
    plans = build_plans(5, FAST)
    assert [p.agent_id for p in plans] == ["alice", "bob", "carol", "dave", "erin"]
    assert sum(t.crash for p in plans for t in p.tasks) == 1
    assert next(p for p in plans if any(t.crash for t in p.tasks)).agent_id == CRASHER
    (collider,) = [t for p in plans for t in p.tasks if t.wait_until_held]
    holder = [t for p in plans for t in p.tasks if t.branch == collider.branch and not t.wait_until_held]
    assert len(holder) == 1 and holder[0].hold_until_conflict_s > 0
    assert len({t.branch for p in plans for t in p.tasks}) == sum(len(p.tasks) for p in plans) - 1


def test_demo_fast_runs_unattended_and_shows_allocations_a_conflict_and_a_reclaimed_crash() -> None:
    done = subprocess.run(
        [agent_coord(), "demo", "--fast", "--json"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["ok"] and not summary["problems"], summary
    agents = summary["agents"]
    counts = summary["counts"]
    assert counts["allocations_ok"] >= agents
    assert counts["branch_conflicts"] == 1
    assert counts["agent_dead"] == 1 and counts["reclaims"] == 1 and counts["rescues"] == 1
    crash = summary["crash"]
    assert crash["agent"] == CRASHER and crash["reclaimed_by"] == "servers"
    assert crash["reclaim_outcome"] == "rescued" and crash["rescue_ref"].startswith("refs/agent-coord/rescue/")
    # The final metrics say the same.
    assert metric(summary, "allocation_success_rate")["samples"] >= agents
    conflict = metric(summary, "conflict_rate")
    assert conflict["value"] > 0 and "1 branch conflicts" in conflict["detail"]
    assert metric(summary, "agent_crash_rate")["samples"] == 1
    # Progress went to stderr, one line per event; nothing is left behind.
    assert "| bob | allocate | feature/login | BRANCH_CONFLICT |" in done.stderr
    assert f"| {CRASHER} | agent_dead |" in done.stderr
    root = Path(summary["paths"]["root"])
    assert not root.exists()
    assert processes_using(root) == []


def test_demo_interrupted_stops_every_process_it_started() -> None:
    proc = subprocess.Popen(
        [agent_coord(), "demo", "--agents", "3"],  # normal pace: plenty of time to interrupt it
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    root: Path | None = None
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "demo files under " in line:
                root = Path(line.split("demo files under ", 1)[1].strip())
            if "agents started" in line:
                break
        assert root is not None, "".join(seen)
        assert len(processes_using(root)) >= 6  # 3 agents and their 3 servers
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "Demo stopped" in rest
    assert not root.exists()
    assert processes_using(root) == []
