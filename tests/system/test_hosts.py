"""Several hosts, one pool of branches, on one machine: two host ids, two clones of one origin, one
real PostgreSQL. Host A is a coordinator in this process (its validator driven check by check); host
B runs real agent processes with real servers, and is killed whole (every process SIGKILLed).

What must hold: a branch held on one host is a BRANCH_CONFLICT on the other, naming the host; a host
that disappears loses its branch claims only once its leases (its validator's and its agents') have
lapsed, and nothing on the other host touches its directories; when it comes back, its own validator
saves the work left in them (staged, unstaged, untracked) to a rescue ref.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.project_key import normalise_remote
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import SlotState
from agent_coord.engine.validate.hosts import host_lease
from agent_coord.store_target import PostgresUrl
from tests.agent_proc import agent_process, call_step, proc_env, wait_for
from tests.conftest import git, make_repo, run_agents

pytestmark = pytest.mark.anyio

LEASE_S = 3.0  # an agent's lease (AGENT_COORD_STALE_AFTER_S)
VALIDATE_S = 1.0  # a validation interval: a host's validator lease lasts 1.5 of them
DEADLINE_S = 120.0  # generous: conditions, never timings, under any load


def two_clones(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An origin and two clones of it, each in a directory of its own (its "host")."""
    source = make_repo(tmp_path, "source")
    origin = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(source), str(origin))
    clones = []
    for host in ("a", "b"):
        (tmp_path / host).mkdir()
        git(tmp_path / host, "clone", "-q", str(origin), "r")
        clones.append(tmp_path / host / "r")
    return origin, clones[0], clones[1]


def host_env(url: PostgresUrl, clone: Path, host: str) -> dict[str, str]:
    return {
        "AGENT_COORD_DB": url.secret_url(),
        "AGENT_COORD_REPO": str(clone),
        "AGENT_COORD_POOL_ROOT": str(clone.parent / "pool"),
        "AGENT_COORD_HOST_ID": host,
        "AGENT_COORD_STALE_AFTER_S": str(LEASE_S),
        "AGENT_COORD_VALIDATE_EVERY_S": str(VALIDATE_S),
        "AGENT_COORD_HEARTBEAT_ACTIVE_S": "0.5",
        "AGENT_COORD_RADAR_EVERY_S": "3600",
        "AGENT_COORD_MANICTIME_DB": "",
    }


@asynccontextmanager
async def host_coordinator(env: dict[str, str], agent_id: str) -> AsyncIterator[Coordinator]:
    settings = Settings(**{k.removeprefix("AGENT_COORD_").lower(): v for k, v in env.items()})
    async with Coordinator.open(settings, register=True, agent_id=agent_id) as coord:
        yield coord


async def conflict(coord: Coordinator, branch: str) -> str:
    with pytest.raises(CoordError) as refused:
        await coord.pool.allocate(branch)
    assert refused.value.code == ErrorCode.BRANCH_CONFLICT
    return str(refused.value)


async def test_clones_of_one_origin_are_one_project_and_a_held_branch_names_its_host(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    origin, clone_a, clone_b = two_clones(tmp_path)
    async with (
        host_coordinator(host_env(pg_url, clone_a, "host-a"), "agent-a") as a,
        host_coordinator(host_env(pg_url, clone_b, "host-b"), "agent-b") as b,
    ):
        repo_a, repo_b = await a.default_repo(), await b.default_repo()
        assert repo_a is not None and repo_b is not None
        assert repo_a.id != repo_b.id and (repo_a.host, repo_b.host) == ("host-a", "host-b")
        assert repo_a.project is not None and repo_a.project == repo_b.project
        assert repo_a.project.endswith("@" + normalise_remote(str(origin)))
        held = await a.pool.allocate("feat/shared")
        text = await conflict(b, "feat/shared")
        assert "on host host-a" in text and held.worktree_id in text and "agent-a" in text
        # The refusal changed nothing; other branches are free on either host, each in its own pool.
        other = await b.pool.allocate("feat/other")
        assert Path(other.path).parent == clone_b.parent / "pool"
        assert "on host host-b" in await conflict(a, "feat/other")
        # Released on A, the branch can be taken on B.
        await a.pool.release(worktree_id=held.worktree_id)
        again = await b.pool.allocate("feat/shared")
        assert Path(again.path).parent == clone_b.parent / "pool"
        # A's validation never looks at B's worktrees, and B's clone is not A's to release.
        result = await a.validate(repair=True)
        assert all(f.worktree_id not in (other.worktree_id, again.worktree_id) for f in result.findings)
        with pytest.raises(CoordError) as refused:
            await a.pool.release(worktree_id=other.worktree_id, force=True)
        assert refused.value.code in (ErrorCode.NOT_OWNER, ErrorCode.NOT_FOUND)


def kill_whole_host(procs: list[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)


async def test_a_host_killed_whole_loses_its_claims_once_its_leases_lapse_and_rescues_its_work_on_return(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    _, clone_a, clone_b = two_clones(tmp_path)
    env_a, env_b = host_env(pg_url, clone_a, "host-a"), host_env(pg_url, clone_b, "host-b")
    # Host A stays alive throughout (it renews its agent's lease), with a lease no stall outlasts.
    env_a["AGENT_COORD_STALE_AFTER_S"] = str(DEADLINE_S)
    async with host_coordinator(env_a, "agent-a") as a, anyio.create_task_group() as alive:
        alive.start_soon(a.run_heartbeats)
        await crash_and_return(a, env_b, clone_a, clone_b)
        alive.cancel_scope.cancel()


# A Claude Code session: the process its hooks run under (the agent process they are attributed to).
SESSION = (
    "import subprocess, sys, time\n"
    "out = subprocess.run(sys.argv[1:], input=sys.stdin.read(), capture_output=True, text=True)\n"
    "print(out.returncode, out.stdout.strip() or out.stderr.strip().replace(chr(10), ' '), flush=True)\n"
    "time.sleep(600)\n"
)


def hook_session(env: dict[str, str], clone: Path, name: str) -> tuple[subprocess.Popen[str], Path]:
    """A session whose `WorktreeCreate` hook made a worktree (the hook's claim, nothing renews it)."""
    payload = {"session_id": "5e55-10n", "cwd": str(clone), "hook_event_name": "WorktreeCreate", "name": name}
    hook = [str(Path(sys.executable).parent / "agent-coord"), "hook", "worktree-create"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SESSION, *hook],
        env=proc_env(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(payload))
    proc.stdin.close()
    code, out = proc.stdout.readline().split(" ", 1)
    assert code == "0", out
    return proc, Path(out.strip())


async def crash_and_return(a: Coordinator, env_b: dict[str, str], clone_a: Path, clone_b: Path) -> None:
    session, hooked = hook_session(env_b, clone_b, "hooked")
    try:
        await crash(a, env_b, session)
    finally:
        session.kill()
        session.wait()
    await lapse_and_return(a, env_b, clone_a, clone_b, hooked)


async def crash(a: Coordinator, env_b: dict[str, str], session: subprocess.Popen[str]) -> None:
    async with agent_process(
        env_b, [call_step("allocate_worktree", {"branch": "feat/crash"}, save="w")], AGENT_COORD_AGENT_ID="b-1"
    ) as agent:
        (step,) = await agent.until_ready(timeout=DEADLINE_S)
        assert step["ok"], step
        path = Path(step["result"]["path"])
        # Work of every kind: staged, unstaged (a staged file changed again), untracked.
        (path / "staged.txt").write_text("staged\n")
        (path / "both.txt").write_text("first\n")
        git(path, "add", "staged.txt", "both.txt")
        (path / "both.txt").write_text("first\nsecond, unstaged\n")
        (path / "untracked.txt").write_text("untracked\n")
        await wait_for(lambda: _held_lease(a.store, host_lease("host-b")), DEADLINE_S)
        assert "on host host-b" in await conflict(a, "feat/crash")
        # The whole host dies at once: the session, the agent and its server.
        kill_whole_host([psutil.Process(session.pid), psutil.Process(agent.pid), *agent.servers()])
        await agent.kill()


async def lapse_and_return(a: Coordinator, env_b: dict[str, str], clone_a: Path, clone_b: Path, hooked: Path) -> None:
    (crashed,) = [s for s in await a.store.slots() if s.host == "host-b" and s.owner == "b-1"]
    path = Path(crashed.path)
    (hook_slot,) = [s for s in await a.store.slots() if s.host == "host-b" and s.path == str(hooked)]
    assert hook_slot.owner is not None and hook_slot.branch is not None
    hook_agent = await a.store.agent(hook_slot.owner)
    assert hook_agent is not None  # its lease: 12 ordinary leases on a shared store (claude/hooks.py)
    assert hook_agent.lease_expires_at - hook_agent.last_heartbeat == pytest.approx(12 * LEASE_S)

    # Host B is gone. A's checks lapse its claims once both of its leases lapsed, never before.
    passes = 0

    async def claimable() -> bool:
        nonlocal passes
        await a.validator_loop.tick()
        passes += 1
        held = [s for s in await a.store.slots() if s.host == "host-b"]
        return all(s.state == SlotState.QUARANTINED for s in held)

    await wait_for(claimable, DEADLINE_S * 2, interval=VALIDATE_S / 3)
    lapses = {e.worktree_id: e for e in await a.store.events() if e.action == "reclaim" and e.outcome == "lapsed"}
    assert set(lapses) == {crashed.id, hook_slot.id}
    for slot_id, owner in ((crashed.id, "b-1"), (hook_slot.id, hook_slot.owner)):
        row = await a.store.agent(owner)
        assert row is not None and row.status == "stale"
        assert lapses[slot_id].ts >= row.lease_expires_at  # never before the owner's lease lapsed
        assert lapses[slot_id].detail["host"] == "host-b" and lapses[slot_id].detail["by_host"] == "host-a"
    assert passes >= 1
    for branch in ("feat/crash", hook_slot.branch):
        granted = await a.pool.allocate(branch)
        assert Path(granted.path).parent == clone_a.parent / "pool"
    # Nothing on A touched B's directory: the work is there, as it was left.
    assert await a.validate(repair=True) is not None
    assert (path / "untracked.txt").read_text() == "untracked\n"
    assert "staged.txt" in git(path, "diff", "--cached", "--name-only")

    # Host B comes back: its own validator finds the slot's writer gone and saves the work first.
    async with host_coordinator(env_b, "b-returns") as b:
        await wait_for(lambda: _rescued(b, path, hooked), DEADLINE_S, interval=VALIDATE_S / 3)
        (slot,) = [s for s in await b.store.slots() if s.path == str(path)]
        assert slot.state == SlotState.FREE and slot.rescue_ref
        ref = slot.rescue_ref
        assert "feat/crash" in ref
        assert git(clone_b, "show", f"{ref}:untracked.txt") == "untracked\n"
        assert git(clone_b, "show", f"{ref}:both.txt") == "first\nsecond, unstaged\n"
        assert git(clone_b, "show", f"{ref}^2:both.txt") == "first\n"  # the index, as staged
        assert git(clone_b, "show", f"{ref}^2:staged.txt") == "staged\n"
        # The branch is A's now (its agent is alive): B may not take it back.
        assert "on host host-a" in await conflict(b, "feat/crash")


async def _held_lease(store: Store, name: str) -> bool:
    return await store.lease(name) is not None


async def _rescued(coord: Coordinator, *paths: Path) -> bool:
    await coord.validator_loop.tick()
    slots = [s for s in await coord.store.slots() if s.path in {str(p) for p in paths}]
    return len(slots) == len(paths) and all(s.state == SlotState.FREE for s in slots)


# ---- a campaign with agents on both hosts ---------------------------------------------------------


REFUSALS = ("BRANCH_CONFLICT", "POOL_EXHAUSTED", "ALLOCATION_TIMEOUT")


@dataclass(frozen=True)
class Grant:
    host: str
    agent: str
    branch: str
    token: int
    answered: float  # monotonic: when the grant was answered
    releasing: float  # monotonic: when its release was asked for


def double_grants(grants: list[Grant]) -> list[str]:
    """Two agents told they hold one branch at once: their [answered, releasing] intervals overlap
    (a correct store grants a branch again only after the release that freed it was asked for)."""
    found = []
    by_branch: dict[str, list[Grant]] = {}
    for g in grants:
        by_branch.setdefault(g.branch, []).append(g)
    for branch, held in by_branch.items():
        held.sort(key=lambda g: g.answered)
        for before, after in itertools.pairwise(held):
            if after.answered < before.releasing or after.token <= before.token:
                found.append(f"{branch}: {before} and {after}")
    return found


async def campaign(pg_url: PostgresUrl, tmp_path: Path, *, agents: int, rounds: int, branches: int) -> None:
    _, clone_a, clone_b = two_clones(tmp_path)
    grants: list[Grant] = []
    refusals: list[str] = []

    def script_for(host: str) -> Any:
        async def script(client: Any, i: int) -> None:
            rng = random.Random(f"{host}-{i}")
            for _ in range(rounds):
                branch = f"feat/{rng.randrange(branches)}"
                result = await client.call_tool("allocate_worktree", {"branch": branch})
                answered = time.monotonic()
                if result.is_error:
                    text = result.content[0].text
                    code = text.split(":", 1)[0]
                    # GIT_FAILED "already exists": the branch was made in this clone between the plan and
                    # the git phase (a race of one host's agents, answered and rolled back).
                    assert code in REFUSALS or (code == "GIT_FAILED" and "already exists" in text), text
                    refusals.append(code)
                    continue
                got = result.structured_content
                await anyio.sleep(rng.uniform(0, 0.05))
                releasing = time.monotonic()
                grants.append(Grant(host, got["agent_id"], branch, got["fencing_token"], answered, releasing))
                released = await client.call_tool("release_worktree", {"worktree_id": got["worktree_id"]})
                assert not released.is_error, released.content

        return script

    async with anyio.create_task_group() as tg:
        for host, clone in (("host-a", clone_a), ("host-b", clone_b)):
            env = host_env(pg_url, clone, host)
            env["AGENT_COORD_STALE_AFTER_S"] = "300"  # nobody dies here: no lease may lapse under load
            tg.start_soon(partial(run_agents, env, agents, script_for(host), prefix=f"{host}-agent"))
    assert double_grants(grants) == []
    assert {g.host for g in grants} == {"host-a", "host-b"}, (len(grants), refusals)
    print(f"campaign: {len(grants)} grants, refusals {collections.Counter(refusals)}")


async def test_no_double_grant_with_agents_on_both_hosts(pg_url: PostgresUrl, tmp_path: Path) -> None:
    await campaign(pg_url, tmp_path, agents=3, rounds=6, branches=3)


@pytest.mark.slow
async def test_no_double_grant_with_agents_on_both_hosts_long(pg_url: PostgresUrl, tmp_path: Path) -> None:
    await campaign(pg_url, tmp_path, agents=6, rounds=40, branches=4)


def test_a_double_grant_is_seen() -> None:
    """The checker itself: overlapping holds of one branch, or tokens out of order, are reported."""
    ok = [Grant("a", "x", "b", 1, 0.0, 1.0), Grant("b", "y", "b", 2, 1.5, 2.0)]
    assert double_grants(ok) == []
    assert double_grants([ok[0], Grant("b", "y", "b", 2, 0.5, 2.0)])
    assert double_grants([ok[0], Grant("b", "y", "b", 1, 1.5, 2.0)])
