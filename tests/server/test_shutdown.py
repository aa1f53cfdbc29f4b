"""Shutdown: on stdin EOF or SIGTERM a server stops renewing, records its agent as disconnected and
exits (its shutdown work bounded to 1.5 s by the server itself); a resumed agent (same id) picks its
allocation up again."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agent_coord.engine.store.records import SlotState
from tests.agent_proc import MIN_WAIT_S, events, query, start_server, stop_servers, wait_for
from tests.conftest import git, server_params

pytestmark = pytest.mark.anyio

# The promise (2 s) is the server's own bound on its shutdown work (1.5 s); how long the interpreter
# then takes to exit is the machine's, and tests do not time the machine: they fail on a hang.


def _status(env: dict[str, str], agent_id: str) -> str | None:
    try:
        rows = query(env, "SELECT status FROM agents WHERE id = ?", (agent_id,))
    except Exception:  # the database may not exist yet
        return None
    return rows[0]["status"] if rows else None


async def _running(env: dict[str, str], proc: subprocess.Popen[bytes], agent_id: str) -> None:
    """Until the server has registered and taken its first turn at validation (its lifespan is up)."""
    await wait_for(lambda: _status(env, agent_id) == "active", 30)
    await wait_for(lambda: any(e["agent_id"] == agent_id for e in events(env, "validate")), 30)
    assert proc.poll() is None


async def _exit_time(proc: subprocess.Popen[bytes], limit: float) -> float:
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < limit:
        await anyio.sleep(0.01)
    return time.monotonic() - started


async def test_stdin_eof_records_disconnect_and_exits_fast(env: dict[str, str]) -> None:
    proc = start_server(env, AGENT_COORD_AGENT_ID="eof-agent")
    try:
        await _running(env, proc, "eof-agent")
        assert proc.stdin is not None
        proc.stdin.close()
        took = await _exit_time(proc, MIN_WAIT_S)
        assert proc.returncode == 0, f"still running {took:.1f}s after stdin closed"
        assert _status(env, "eof-agent") == "disconnected"
        (disconnect,) = [e for e in events(env, "disconnect") if e["agent_id"] == "eof-agent"]
        # No renewal after the disconnect: the heartbeat stopped first.
        (row,) = query(env, "SELECT last_heartbeat FROM agents WHERE id = 'eof-agent'")
        assert row["last_heartbeat"] <= disconnect["ts"]
    finally:
        await stop_servers([proc])


async def test_sigterm_records_disconnect_and_exits_fast(env: dict[str, str]) -> None:
    proc = start_server(env, AGENT_COORD_AGENT_ID="term-agent")
    try:
        await _running(env, proc, "term-agent")
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        await wait_for(lambda: _status(env, "term-agent") == "disconnected", MIN_WAIT_S)
        await _exit_time(proc, MIN_WAIT_S)
        took = time.monotonic() - sent
        assert proc.poll() is not None, f"still running {took:.1f}s after SIGTERM"
        assert proc.returncode == 0
    finally:
        await stop_servers([proc])


async def test_resumed_agent_picks_its_allocation_up_again(env: dict[str, str], repo: Path) -> None:
    params = server_params(env, AGENT_COORD_AGENT_ID="resumer")
    async with Client(params, mode="legacy") as first:
        grant = (await first.call_tool("allocate_worktree", {"branch": "feat/resume"})).structured_content
        (Path(grant["path"]) / "half-done.txt").write_text("work in progress")
    # The server is gone (its client closed stdin); the agent process (this test) lives on.
    assert _status(env, "resumer") == "disconnected"
    (slot,) = query(env, "SELECT * FROM slots")
    assert (slot["state"], slot["owner"]) == ("BUSY", "resumer")

    async with (
        Client(server_params(env, AGENT_COORD_AGENT_ID="other"), mode="legacy") as other,
        Client(params, mode="legacy") as resumed,
    ):
        status = (await other.call_tool("status", {})).structured_content
        view = next(a for a in status["agents"] if a["agent_id"] == "resumer")
        # Whichever registered last: the resumed server may already be up.
        assert view["alive"] is True
        taken = await other.call_tool("allocate_worktree", {"branch": "feat/resume"})
        assert taken.is_error and getattr(taken.content[0], "text", "").startswith("BRANCH_CONFLICT")
        found = (await other.call_tool("validate", {})).structured_content
        assert found["findings"] == []

        again = (await resumed.call_tool("allocate_worktree", {"branch": "feat/resume"})).structured_content
        assert again["strategy"] == "existing"
        assert (again["worktree_id"], again["fencing_token"]) == (grant["worktree_id"], grant["fencing_token"])
        assert (Path(again["path"]) / "half-done.txt").read_text() == "work in progress"
        beat = (await resumed.call_tool("heartbeat", {})).structured_content
        assert beat["allocations"] == [grant["worktree_id"]]
        assert _status(env, "resumer") == "active"
        released = await resumed.call_tool("release_worktree", {"worktree_id": grant["worktree_id"], "force": True})
        assert not released.is_error, released.content
    assert git(repo, "show", f"{released.structured_content['rescue_ref']}:half-done.txt") == "work in progress"


async def test_disconnected_agent_keeps_its_slot_until_the_lease_lapses(make_settings: Any) -> None:
    from agent_coord.engine.coordinator import Coordinator

    settings = make_settings(stale_after_s=0.5)
    async with Coordinator.open(settings, register=True, agent_id="agent-leaving") as leaving:
        grant = await leaving.pool.allocate("feat/leaving")
    async with Coordinator.open(settings, register=False, agent_id="agent-observer") as observer:
        assert (await observer.validate(repair=True)).findings == []  # still within its lease

        async def lapsed() -> bool:
            agent = await observer.store.agent("agent-leaving")
            return agent is not None and agent.lease_expires_at < time.time()

        await wait_for(lapsed, 30)
        # Its agent process (this test's parent) lives on: on this host that keeps the slot, lease or not.
        assert (await observer.validate(repair=True)).findings == []
        # Where the process cannot be checked (another host), the lapsed lease decides.
        with contextlib.closing(sqlite3.connect(settings.db)) as raw:
            raw.execute("UPDATE agents SET host = 'another-host' WHERE id = 'agent-leaving'")
            raw.commit()
        (f,) = (await observer.validate(repair=True)).findings
        assert (f.kind, f.worktree_id, f.action) == ("stale_lease", grant.worktree_id, "reclaimed: freed")
        (slot,) = await observer.store.slots()
        assert slot.state == SlotState.FREE
