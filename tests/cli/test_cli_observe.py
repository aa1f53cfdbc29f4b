"""`agent-coord metrics` and `agent-coord activity` (including --follow across processes)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psutil
import pytest
from anyio.abc import ByteReceiveStream
from typer.testing import CliRunner

from agent_coord.cli import app  # every command registered
from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.observe.activity import parse_activity_line
from tests.agent_proc import MIN_WAIT_S, exited, process_name, wait_for

T = TypeVar("T")
CLI = [sys.executable, "-c", "from agent_coord.cli import main; main()"]


def with_coord(fn: Callable[[Coordinator], Awaitable[T]], agent_id: str = "agent-test") -> T:
    async def go() -> T:
        async with Coordinator.open(Settings(), register=True, agent_id=agent_id) as coord:
            return await fn(coord)

    return anyio.run(go)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_metrics_table_shows_every_metric_with_target_and_state(settings: Settings) -> None:
    with_coord(lambda c: c.pool.allocate("feat/m"))
    result = invoke("metrics")
    assert result.exit_code == 0, result.output
    out = result.stdout
    lines = out.splitlines()
    assert lines[0].startswith("metrics over 7 days: overall ")
    header = lines[1].split()
    assert header[:3] == ["metric", "value", "target"]
    for name, target in [
        ("allocation_success_rate", "> 95 %"),
        ("allocation_latency_p99", "< 10 000 ms"),
        ("conflict_rate", "< 1 %"),
        ("pool_utilization", "40-60 %"),
        ("agent_crash_rate", "< 1 /week"),
        ("stale_allocation_rate", "< 1 /day"),
    ]:
        row = next(line for line in lines if line.startswith(name))
        assert target in row
        assert "not enough data" in row  # one allocation a minute ago is not enough for any of them
    # Aligned: every row's target column starts where the header's does.
    column = lines[1].index("target")
    assert all(line[column:].startswith(("> ", "< ", "40-", "inf")) for line in lines[2:] if line.strip())
    assert "\x1b[" not in out  # no colour when stdout is not a terminal


def test_metrics_json_is_the_report(settings: Settings) -> None:
    result = invoke("metrics", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["overall"] == "not enough data"
    assert {m["name"] for m in data["metrics"]} >= {"allocation_success_rate", "conflict_rate", "pool_utilization"}
    assert all({"value", "target", "state", "samples"} <= set(m) for m in data["metrics"])


def test_activity_prints_the_latest_lines(settings: Settings) -> None:
    async def work(coord: Coordinator) -> None:
        await coord.pool.allocate("feat/one")
        await coord.pool.allocate("feat/two")

    with_coord(work)
    result = invoke("activity", "--limit", "3")
    assert result.exit_code == 0, result.output
    lines = [parse_activity_line(line) for line in result.stdout.splitlines()]
    assert [(a.action, a.branch, a.outcome, a.agent) for a in lines] == [
        ("allocate", "feat/one", "ok", "agent-test"),
        ("allocate", "feat/two", "ok", "agent-test"),
        ("disconnect", None, "ok", "agent-test"),
    ]
    data = json.loads(invoke("activity", "--json", "-n", "3").stdout)
    assert [e["action"] for e in data] == ["allocate", "allocate", "disconnect"]
    assert data[0]["line"] == result.stdout.splitlines()[0]
    assert invoke("activity", "--limit", "0").stdout == ""


def test_help_on_each_command() -> None:
    for command in ("metrics", "activity", "release", "import-pool", "export-pool"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "--help" in result.stdout, command


class Lines:
    """Line-buffered reader over a process's stdout."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive()
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


@pytest.mark.anyio
async def test_follow_shows_another_process_allocation_within_1s(coord: Any) -> None:
    env = dict(os.environ)
    async with await anyio.open_process([*CLI, "activity", "--follow", "--limit", "1"], env=env) as proc:
        try:
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            with anyio.fail_after(MIN_WAIT_S):
                first = parse_activity_line(await lines.next())
            assert first.action == "register" and first.agent == "agent-test"
            # The follower printed, so it reads: what comes next reaches it by its poll or its catch-up read.

            result = await coord.pool.allocate("feat/followed")
            done = time.monotonic()
            with anyio.fail_after(MIN_WAIT_S):
                line = await lines.next()
            latency = time.monotonic() - done
            parsed = parse_activity_line(line)
            assert (parsed.action, parsed.branch, parsed.outcome) == ("allocate", "feat/followed", "ok")
            assert parsed.duration_ms is not None and abs(parsed.duration_ms - result.latency_ms) <= 1
            print(f"activity --follow latency: {latency * 1000:.0f} ms")  # how soon is the bench's to say

            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(MIN_WAIT_S):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()


@pytest.mark.anyio
async def test_follow_json_lines_and_a_closed_pipe_end_quietly(coord: Any, tmp_path: Path) -> None:
    errors = tmp_path / "stderr.txt"
    follower = " ".join(shlex.quote(a) for a in [*CLI, "activity", "-f", "-n", "1", "--json"])
    pipeline = f"{follower} 2>{shlex.quote(str(errors))} | head -n 1"
    async with await anyio.open_process(["sh", "-c", pipeline], env=dict(os.environ)) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(MIN_WAIT_S):
            first = json.loads(await Lines(proc.stdout).next())
        assert first["action"] == "register" and first["line"].endswith(" | register | - | ok | -ms")

        def head_gone() -> bool:
            shell = psutil.Process(proc.pid)
            return not [p for p in shell.children() if process_name(p) == "head" and not exited(p)]

        await wait_for(head_gone, 30)
        # `head` has gone; the follower's next write meets the closed pipe and must end it quietly.
        await coord.pool.allocate("feat/after-close")
        try:
            with anyio.fail_after(MIN_WAIT_S):
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
    assert errors.read_text() == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


@pytest.mark.parametrize(
    "command", sorted({"conflicts", "advise", "web", "metrics", "status", "demo", "migrate-store"})
)
def test_each_command_runs_as_its_own_process(command: str, env: dict[str, str]) -> None:
    """A command imports only its own module: a module that defines one command is still a command of
    the group, not the program (`agent-coord conflicts` once read 'conflicts' as an extra argument)."""
    import subprocess

    from agent_coord.cli import COMMAND_MODULES

    assert command in COMMAND_MODULES
    done = subprocess.run([*CLI, command, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"agent-coord {command}" in " ".join(done.stdout.split()), done.stdout
