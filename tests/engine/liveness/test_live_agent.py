"""A process that is provably alive keeps its slots; two identities are two agents even under one
parent; a server orphaned before it registered is not alive. Real agent processes, real servers.

"Within one check" is counted in the validator's own checks (`ValidatorLoop.tick`), driven here one
at a time, never in wall-clock time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.liveness.judge import judge
from tests.agent_proc import agent_process, call_step, events, exited, proc_env, query, set_agent, wait_for
from tests.conftest import server_params

pytestmark = pytest.mark.anyio


def slot_row(env: dict[str, str], worktree_id: str) -> dict[str, Any]:
    (row,) = query(env, "SELECT state, owner, fencing_token FROM slots WHERE id = ?", (worktree_id,))
    return dict(row)


async def test_a_live_agent_keeps_its_slot_after_its_server_died_and_its_lease_lapsed(
    env: dict[str, str], settings: Settings
) -> None:
    async with agent_process(
        env, [call_step("allocate_worktree", {"branch": "feat/held"}, save="held")], AGENT_COORD_AGENT_ID="held"
    ) as agent:
        (result,) = await agent.until_ready()
        assert result["ok"], result
        grant = result["result"]
        (server_pid,) = agent.ready["server_pids"]
        server = psutil.Process(server_pid)
        os.kill(server_pid, signal.SIGKILL)  # the MCP server dies; the agent process works on
        await wait_for(lambda: exited(server), 10)
        set_agent(env, "held", lease_expires_at=time.time() - 1, last_heartbeat=time.time() - 120)

        async with (
            Coordinator.open(settings, register=False, agent_id="validator") as observer,
            Coordinator.open(settings, register=True, agent_id="other") as other,
        ):
            for _ in range(3):  # a full pass and further checks: nothing is taken from a live process
                await observer.validator_loop.tick()
            assert slot_row(env, grant["worktree_id"]) == {
                "state": "BUSY",
                "owner": "held",
                "fencing_token": grant["fencing_token"],
            }
            assert not [e for e in events(env) if e["action"] in ("reclaim", "rescue", "agent_stale", "agent_dead")]
            view = next(a for a in (await observer.status()).agents if a.agent_id == "held")
            assert view.alive and not view.stale and "silent" in view.reason and "--force" in view.reason

            # Not handed over, not released by another agent, not even with force.
            with pytest.raises(CoordError) as taken:
                await other.pool.allocate("feat/held")
            assert taken.value.code == ErrorCode.BRANCH_CONFLICT
            for force in (False, True):
                with pytest.raises(CoordError) as refused:
                    await other.pool.release(worktree_id=grant["worktree_id"], force=force)
                assert refused.value.code == ErrorCode.NOT_OWNER
            assert "alive" in refused.value.message and "agent-coord release" in refused.value.message
            assert slot_row(env, grant["worktree_id"])["owner"] == "held"

            # The agent process dies: the very next check finds it and its pass takes the slot back.
            await agent.kill()
            why = await observer.validator_loop.tick()
            assert why == "an owner died"
            assert slot_row(env, grant["worktree_id"])["state"] == "FREE"
            (reclaim,) = [e for e in events(env, "reclaim") if e["worktree_id"] == grant["worktree_id"]]
            assert "is gone" in reclaim["detail"]["reason"]


async def test_a_person_takes_a_live_agents_worktree_with_its_work_saved(env: dict[str, str], repo: Path) -> None:
    async with Client(server_params(env, AGENT_COORD_AGENT_ID="busy"), mode="legacy") as busy:
        grant = (await busy.call_tool("allocate_worktree", {"branch": "feat/person"})).structured_content
        (Path(grant["path"]) / "work.txt").write_text("unsaved\n")
        done = subprocess.run(
            [sys.executable, "-m", "agent_coord", "release", "--worktree", grant["worktree_id"], "--force", "--json"],
            env=proc_env(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        (event,) = [e for e in events(env, "release") if e["outcome"] == "ok"]
        assert event["detail"]["forced_from"] == "busy" and event["detail"]["rescue_ref"]
        shown = subprocess.run(
            ["git", "-C", str(repo), "show", f"{event['detail']['rescue_ref']}:work.txt"],
            capture_output=True,
            text=True,
        )
        assert shown.stdout == "unsaved\n"


@pytest.mark.parametrize("through_shell", [False, True])
async def test_two_named_agents_under_one_parent_are_two_agents(env: dict[str, str], through_shell: bool) -> None:
    """Both servers are children of this test process (directly, or each through `sh -c`, which is
    skipped as a wrapper): one agent process, two identities, two agents."""

    def params(agent_id: str) -> StdioServerParameters:
        base = server_params(env, AGENT_COORD_AGENT_ID=agent_id)
        if not through_shell:
            return base
        # `; true` keeps the shell alive between this process and the server.
        command = f'"{sys.executable}" -m agent_coord.server; true'
        return StdioServerParameters(command="sh", args=["-c", command], env=base.env)

    async with (
        Client(params("alpha"), mode="legacy") as alpha,
        Client(params("beta"), mode="legacy") as beta,
    ):
        rows = {r["id"]: r for r in query(env, "SELECT id, pid FROM agents")}
        assert rows["alpha"]["pid"] == rows["beta"]["pid"] == os.getpid()
        grant = (await alpha.call_tool("allocate_worktree", {"branch": "feat/alpha"})).structured_content
        for args in ({"worktree_id": grant["worktree_id"]}, {"branch": "feat/alpha"}, {"path": grant["path"]}):
            refused = await beta.call_tool("release_worktree", args)
            assert refused.is_error and refused.content[0].text.startswith("NOT_OWNER:"), args
        forced = await beta.call_tool("release_worktree", {"worktree_id": grant["worktree_id"], "force": True})
        assert forced.is_error and forced.content[0].text.startswith("NOT_OWNER:")
        taken = await beta.call_tool("allocate_worktree", {"branch": "feat/alpha"})
        assert taken.is_error and taken.content[0].text.startswith("BRANCH_CONFLICT:")
        assert slot_row(env, grant["worktree_id"]) == {
            "state": "BUSY",
            "owner": "alpha",
            "fencing_token": grant["fencing_token"],
        }


def registered(env: dict[str, str], agent_id: str) -> bool:
    try:
        return bool(query(env, "SELECT id FROM agents WHERE id = ?", (agent_id,)))
    except sqlite3.OperationalError:  # the server is still creating the schema
        return False


ORPHANER = """
import os, signal, subprocess, sys, time, psutil
db, stdin_fd = sys.argv[1], int(sys.argv[2])
server = subprocess.Popen([sys.executable, "-m", "agent_coord.server"], stdin=stdin_fd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(stdin_fd,))
print(server.pid, flush=True)
# As soon as the server has opened the database, stop it and leave: it registers after, orphaned.
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        if any(f.path.startswith(db) for f in psutil.Process(server.pid).open_files()):
            os.kill(server.pid, signal.SIGSTOP)
            break
    except psutil.Error:
        pass
    time.sleep(0.005)
os._exit(0)
"""


async def test_a_server_orphaned_before_it_registered_is_not_alive(env: dict[str, str], settings: Settings) -> None:
    read_end, write_end = os.pipe()  # the server's stdin: held open here, so it outlives its parent
    try:
        orphaner = subprocess.Popen(
            [sys.executable, "-c", ORPHANER, env["AGENT_COORD_DB"], str(read_end)],
            env=proc_env(env, AGENT_COORD_AGENT_ID="orphan"),
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(read_end,),
        )
        assert orphaner.stdout is not None
        server_pid = int(orphaner.stdout.readline())
        orphaner.wait(timeout=120)
        os.kill(server_pid, signal.SIGCONT)  # its parent is gone now: let it go on registering
        os.close(read_end)
        read_end = -1
        await wait_for(lambda: registered(env, "orphan"), 30)
        server = psutil.Process(server_pid)
        assert server.ppid() != orphaner.pid  # adopted by init or a subreaper, and still running
        (row,) = query(env, "SELECT pid FROM agents WHERE id = 'orphan'")
        assert row["pid"] == orphaner.pid != server.ppid(), "the adopter must never be taken for the agent"
        async with Coordinator.open(settings, register=False, agent_id="observer") as observer:
            agent = await observer.store.agent("orphan")
            assert agent is not None
            verdict = judge(agent, host=observer.identity.host, boot=observer.identity.boot_id)
            assert not verdict.alive and "gone" in verdict.reason
    finally:
        os.close(write_end)  # EOF: the orphaned server ends
        if read_end >= 0:
            os.close(read_end)
        try:
            psutil.Process(server_pid).wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(server_pid).kill()
