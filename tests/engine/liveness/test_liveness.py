"""Deterministic death detection, leases and the single background validator, with real processes."""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client

from agent_coord.engine.liveness.judge import Identity, judge, process_state, server_gone, start_since_boot
from agent_coord.engine.store.records import Agent, SlotState
from tests.agent_proc import MIN_WAIT_S, events, query, set_agent, start_server, stop_servers, wait_for
from tests.conftest import server_params
from tests.engine.store.test_host_writer_lock import lock_is_free

pytestmark = pytest.mark.anyio


def _me() -> Identity:
    me = psutil.Process()
    since = start_since_boot(me.pid)
    return Identity("agent-x", "this-host", "boot-1", me.pid, me.create_time(), me.pid, me.create_time(), since, since)


def _agent(**changes: Any) -> Agent:
    return replace(_me().as_agent(repo_id=None, lease_s=60), **changes)


def _judge(agent: Agent, now: float | None = None) -> Any:
    return judge(agent, host="this-host", boot="boot-1", now=now)


# ---- judge: the rules ------------------------------------------------------------------------------


def test_live_process_with_its_create_time_is_alive() -> None:
    assert _judge(_agent()).alive
    assert _judge(_agent()).reason == "alive"


def test_pid_reused_is_dead_at_once() -> None:
    """The pid runs, but it is another program: dead, however fresh the lease."""
    me = _me()
    assert me.pid_start_s is not None
    earlier = _agent(pid_create_time=me.pid_create_time - 1000, pid_start_s=me.pid_start_s - 1000)
    verdict = _judge(earlier)
    assert not verdict.alive and not verdict.stale and "pid reused" in verdict.reason
    other = subprocess.Popen(["sleep", "30"])
    try:
        # The pid points at another live process; the recorded create time is ours.
        verdict = _judge(_agent(pid=other.pid))
        assert not verdict.alive and "pid reused" in verdict.reason
    finally:
        other.kill()
        other.wait()


def test_exited_process_is_dead_even_unreaped() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    created, start = psutil.Process(proc.pid).create_time(), start_since_boot(proc.pid)
    assert _judge(_agent(pid=proc.pid, pid_create_time=created, pid_start_s=start)).alive
    proc.kill()
    # A zombie until reaped: gone all the same.
    deadline = time.monotonic() + 5
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_state(proc.pid, created) == "gone"
    assert process_state(proc.pid, created, start) == "gone"
    assert "is gone" in _judge(_agent(pid=proc.pid, pid_create_time=created, pid_start_s=start)).reason
    proc.wait()
    assert process_state(proc.pid, created) == "gone"


def test_other_boot_is_dead_other_host_only_by_lease() -> None:
    assert "rebooted" in _judge(_agent(boot_id="boot-0")).reason
    # Another host: its pid means nothing here; only the lease counts.
    remote = _agent(host="elsewhere", pid=999_999, pid_create_time=1.0)
    assert _judge(remote).alive
    later = remote.lease_expires_at + 1
    verdict = _judge(remote, now=later)
    assert not verdict.alive and verdict.stale and "lease expired" in verdict.reason


def test_a_silent_live_process_stays_alive_only_an_unprovable_one_goes_stale() -> None:
    """On its own host a live process is alive whatever its lease says (it keeps its slots); where
    the process cannot be checked (another host) the lapsed lease decides."""
    agent = _agent()
    silent = _judge(agent, now=agent.lease_expires_at + 0.1)
    assert silent.alive and silent.silent and not silent.stale and "silent" in silent.reason
    gone_quiet = _agent(status="disconnected")
    verdict = _judge(gone_quiet)
    assert verdict.alive and "disconnected" in verdict.reason
    assert _judge(gone_quiet, now=gone_quiet.lease_expires_at + 1).alive
    remote = _agent(host="elsewhere", status="disconnected")
    assert _judge(remote, now=remote.lease_expires_at + 1).stale


def test_server_gone_is_about_the_server_only() -> None:
    agent = _agent()
    assert server_gone(agent, host="this-host", boot="boot-1") is None
    proc = subprocess.Popen(["true"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    dead_server = _agent(server_pid=proc.pid, server_create_time=created)
    assert "is gone" in (server_gone(dead_server, host="this-host", boot="boot-1") or "")
    assert _judge(dead_server).alive  # the agent itself lives: its BUSY slots stay its own
    assert server_gone(_agent(host="elsewhere", server_pid=proc.pid), host="this-host", boot="boot-1") is None


def test_a_stepped_wall_clock_is_not_a_reused_pid() -> None:
    """After an NTP step the kernel's boot time, and with it every wall-clock create time, moves by
    whole seconds; the start counted from boot does not, and decides."""
    me = psutil.Process()
    since_boot = start_since_boot(me.pid)
    assert since_boot is not None and since_boot > 0
    stepped = _agent(pid_create_time=me.create_time() - 1.0, pid_start_s=since_boot)
    assert _judge(stepped).alive
    assert process_state(me.pid, me.create_time() + 7.0, since_boot) == "alive"
    # Without it (a row of an older version) a changed create time proves nothing here: the lease decides.
    old_row = _agent(pid_create_time=me.create_time() - 1.0, pid_start_s=None)
    assert process_state(me.pid, old_row.pid_create_time) == "unknown"
    assert _judge(old_row).alive and _judge(old_row, now=old_row.lease_expires_at + 1).stale
    assert process_state(me.pid, me.create_time()) == "alive"
    # And a start that differs by more than a clock tick is another process.
    assert process_state(me.pid, me.create_time(), since_boot - 0.5) == "reused"
    other = _agent(server_create_time=me.create_time() + 3.0, server_start_s=since_boot)
    assert server_gone(other, host="this-host", boot="boot-1") is None


def test_identity_records_the_start_since_boot() -> None:
    me = Identity.detect("agent-id", ())
    assert me.server_start_s == start_since_boot(os.getpid())
    agent = me.as_agent(repo_id=None, lease_s=60)
    assert agent.pid_start_s == me.pid_start_s is not None and agent.server_start_s == me.server_start_s


# ---- pid reuse end to end -----------------------------------------------------------------------


async def test_pid_reuse_makes_the_agent_dead_in_status_and_validation(coord: Any, env: dict[str, str]) -> None:
    alloc = await coord.pool.allocate("feat/reused")
    (Path(alloc.path) / "wip.txt").write_text("keep me")
    before = query(env, "SELECT * FROM agents JOIN agent_starts ON agent_id = id WHERE id = 'agent-test'")[0]
    assert before["pid_start_s"] is not None
    # Another process under the pid started later than the one recorded, by the wall clock and since boot.
    set_agent(
        env, "agent-test", pid_create_time=before["pid_create_time"] - 3600, pid_start_s=before["pid_start_s"] - 60
    )
    status = await coord.status()
    me = next(a for a in status.agents if a.agent_id == "agent-test")
    assert me.alive is False and "pid reused" in me.reason
    dry = await coord.validate(repair=False)
    assert [(f.kind, f.worktree_id) for f in dry.findings] == [("dead_agent", alloc.worktree_id)]
    assert "pid reused" in dry.findings[0].detail
    fixed = await coord.validate(repair=True)
    assert fixed.findings[0].action == "reclaimed: rescued"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE and slot.rescue_ref
    dead = [e for e in await coord.store.events() if e.action == "agent_dead"]
    assert len(dead) == 1 and "pid reused" in dead[0].detail["reason"]


# ---- leases: a silent agent is reclaimed, a heartbeating one never -------------------------------

HEARTBEAT_S = 0.1
STALE_S = 0.6
VALIDATE_S = 0.2
PASSES_AFTER = 5  # validation passes watched after the reclaim, the live agent renewing through them
RENEWALS_SEEN = 20


async def test_stale_lease_reclaimed_heartbeating_agent_never(env: dict[str, str]) -> None:
    """Two agents. One server is frozen with SIGSTOP and its agent recorded on another host, where
    its process cannot be checked: silent, its lease lapses and validation reclaims its slot. The
    other renews every 0.1 s and keeps its slot, untouched, through 20 renewals and 5 validation passes
    after the reclaim. (A silent agent whose process provably runs on this host keeps its slot:
    tests/engine/liveness/test_live_agent.py.)"""
    fast = {
        "AGENT_COORD_HEARTBEAT_ACTIVE_S": str(HEARTBEAT_S),
        "AGENT_COORD_STALE_AFTER_S": str(STALE_S),
        "AGENT_COORD_VALIDATE_EVERY_S": str(VALIDATE_S),
    }
    async with (
        Client(server_params(env, AGENT_COORD_AGENT_ID="live", **fast), mode="legacy") as live,
        Client(server_params(env, AGENT_COORD_AGENT_ID="silent", **fast), mode="legacy") as silent,
    ):
        mine = (await live.call_tool("allocate_worktree", {"branch": "feat/live"})).structured_content
        theirs = (await silent.call_tool("allocate_worktree", {"branch": "feat/silent"})).structured_content
        (silent_row,) = query(env, "SELECT server_pid FROM agents WHERE id = 'silent'")
        frozen = psutil.Process(silent_row["server_pid"])
        await suspend_outside_a_write(frozen, Path(env["AGENT_COORD_DB"]))
        set_agent(env, "silent", host="another-host")
        (frozen_row,) = query(env, "SELECT lease_expires_at FROM agents WHERE id = 'silent'")
        try:
            beats: set[float] = set()
            live_rows: list[tuple[str, str, int]] = []

            def watched() -> bool:
                """Watch the live agent's slot until the silent one's slot is reclaimed, validation has
                run PASSES_AFTER more passes and the live agent was seen renewing RENEWALS_SEEN times
                (the window is counted in passes and renewals, not seconds)."""
                beats.add(query(env, "SELECT last_heartbeat FROM agents WHERE id = 'live'")[0]["last_heartbeat"])
                r = {r["id"]: r for r in query(env, "SELECT * FROM slots")}[mine["worktree_id"]]
                live_rows.append((r["state"], r["owner"], r["fencing_token"]))
                reclaims = [e for e in events(env, "reclaim") if e["worktree_id"] == theirs["worktree_id"]]
                passes = [e for e in events(env, "validate") if e["outcome"] == "started"]
                after = [e for e in passes if reclaims and e["ts"] > reclaims[0]["ts"]]
                return len(after) >= PASSES_AFTER and len(beats) >= RENEWALS_SEEN

            await wait_for(watched, 120)
        finally:
            frozen.resume()
        assert set(live_rows) == {("BUSY", "live", mine["fencing_token"])}
        # Reclaimed by the first validation pass that started once the silent agent's lease had lapsed.
        (reclaimed,) = [e for e in events(env, "reclaim") if e["worktree_id"] == theirs["worktree_id"]]
        lapse = frozen_row["lease_expires_at"]
        passes = [e for e in events(env, "validate") if e["outcome"] == "started"]
        assert len([e for e in passes if lapse < e["ts"] <= reclaimed["ts"]]) <= 1, (lapse, passes, reclaimed)
        log = events(env)
        assert not [e for e in log if e["action"] == "reclaim" and e["worktree_id"] == mine["worktree_id"]]
        (reclaim,) = [e for e in log if e["action"] == "reclaim" and e["worktree_id"] == theirs["worktree_id"]]
        assert reclaim["outcome"] == "freed" and "lease expired" in reclaim["detail"]["reason"]
        assert [e["agent_id"] for e in log if e["action"] == "agent_stale"] == ["silent"]
        assert not [e for e in log if e["action"] in {"agent_dead", "agent_stale"} and e["agent_id"] == "live"]

        # The silent server wakes up: its grant is gone (fencing), and it can ask again for a new one.
        await wait_for(lambda: query(env, "SELECT status FROM agents WHERE id = 'silent'")[0]["status"] != "stale", 5)
        again = (await silent.call_tool("allocate_worktree", {"branch": "feat/silent"})).structured_content
        assert again["fencing_token"] > theirs["fencing_token"]
        assert again["strategy"] != "existing"


# ---- one background validator at a time -----------------------------------------------------------

# Long enough that a holder stalled by a loaded machine keeps its lease (1.5 intervals) through a pass.
INTERVAL_S = 1.0


async def test_two_servers_only_one_validates_per_interval(env: dict[str, str]) -> None:
    extra = {"AGENT_COORD_VALIDATE_EVERY_S": str(INTERVAL_S)}
    first = start_server(env, AGENT_COORD_AGENT_ID="v-1", **extra)
    second = start_server(env, AGENT_COORD_AGENT_ID="v-2", **extra)
    procs = [first, second]
    try:
        await wait_for(lambda: _db_ready(env) and len(query(env, "SELECT id FROM agents")) == 2, 20)
        # Both servers are up: watch until ten more runs have started (a window counted in runs).
        registered = max(r["ts"] for r in events(env, "register"))
        await wait_for(
            lambda: (
                len([e for e in events(env, "validate") if e["outcome"] == "started" and e["ts"] > registered]) >= 10
            ),
            60,
        )
        starts = [e for e in events(env, "validate") if e["outcome"] == "started"]
        times = [e["ts"] for e in starts]
        assert len(starts) >= 10
        # At most one run in any interval: counted in a window that slides over every start (shortened
        # by a quarter for the moment between taking the lease and logging the start).
        window = INTERVAL_S * 0.75
        per_window = [sum(1 for u in times if t <= u < t + window) for t in times]
        assert max(per_window) == 1, [round(b - a, 3) for a, b in itertools.pairwise(times)]
        # And over the whole run, about one per interval in total, not one per server.
        assert len(starts) <= (times[-1] - times[0]) / INTERVAL_S + 1
        assert {e["agent_id"] for e in starts} <= {"v-1", "v-2"}

        # The holder dies: its lease expires and the other server takes over.
        holder = starts[-1]["agent_id"]
        victim, heir = (first, "v-2") if holder == "v-1" else (second, "v-1")
        victim.kill()
        victim.wait()
        killed = time.time()
        await wait_for(
            lambda: any(e["agent_id"] == heir and e["ts"] > killed for e in events(env, "validate")),
            INTERVAL_S * 1.5 + INTERVAL_S + 3,
        )
    finally:
        await stop_servers(procs)


def _db_ready(env: dict[str, str]) -> bool:
    try:
        query(env, "SELECT 1 FROM agents")
    except sqlite3.Error:
        return False
    return True


async def test_lease_renewal_follows_active_and_idle(make_settings: Any) -> None:
    """The server renews by itself at the active interval, and at the idle one once the agent says so."""
    from agent_coord.engine.coordinator import Coordinator

    settings = make_settings(heartbeat_active_s=0.05, heartbeat_idle_s=0.5, stale_after_s=5)
    async with Coordinator.open(settings, register=True, agent_id="agent-beat") as c:
        seen: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.run_heartbeats)
            for _ in range(12):
                agent = await c.store.agent("agent-beat")
                assert agent is not None
                seen.append(agent.last_heartbeat)
                await anyio.sleep(0.05)
            active_renewals = len(set(seen))
            beat = await c.heartbeat("idle", note="thinking")
            assert beat.next_heartbeat_s == 0.5
            seen = []
            for _ in range(6):
                agent = await c.store.agent("agent-beat")
                assert agent is not None and agent.status == "idle" and agent.note == "thinking"
                seen.append(agent.last_heartbeat)
                await anyio.sleep(0.05)
            idle_renewals = len(set(seen))
            tg.cancel_scope.cancel()
        assert active_renewals >= 5
        assert idle_renewals <= 2
        agent = await c.store.agent("agent-beat")
        assert agent is not None and agent.lease_expires_at > time.time() + 4


def test_agent_process_is_the_servers_parent_not_a_wrapper(tmp_path: Path) -> None:
    """A server started through `sh -c` (as hooks are) is attributed to the shell's parent."""
    code = (
        "import json, os; from agent_coord.engine.liveness.judge import Identity;"
        "i = Identity.detect(None, ('sh', 'bash'));"
        "print(json.dumps([i.pid, i.server_pid, os.getpid()]))"
    )
    out = subprocess.run(
        ["sh", "-c", f"{sys.executable} -c {shlex.quote(code)}; true"], capture_output=True, text=True, check=True
    ).stdout
    agent_pid, server_pid, own = json.loads(out)
    assert server_pid == own and agent_pid == os.getpid()


async def suspend_outside_a_write(proc: psutil.Process, db: Path) -> None:
    """SIGSTOP `proc` at a moment it holds no write lock (the host's writer lock, SQLite's): stopped
    inside a write it would keep every other process from writing, which is not what is tested."""
    deadline = time.monotonic() + MIN_WAIT_S
    while True:
        proc.suspend()
        if writes_are_free(db):
            return
        proc.resume()
        assert time.monotonic() < deadline, "the process never left its writes"
        await anyio.sleep(0.01)


def writes_are_free(db: Path) -> bool:
    if Path(f"{db}-writer").exists() and not lock_is_free(db):
        return False
    conn = sqlite3.connect(db, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return True
