"""Reclamation keeps work: crashed agents and crashed allocations, with real processes and real git.

The two acceptance scenarios run real processes: an agent process (tests/agent_proc.py) that owns
its stdio server, SIGKILLed; and a server SIGKILLed between the two phases of an allocation. The
rest drive the reclaimer in-process against real repositories.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client

from agent_coord.engine.store.records import SlotState
from tests.agent_proc import (
    agent_process,
    call_step,
    events,
    process_name,
    query,
    reap,
    set_agent,
    wait_for,
    write_step,
)
from tests.conftest import git, server_params

pytestmark = pytest.mark.anyio

VALIDATE_EVERY_S = 1.0
# "Within one validation interval": the interval itself, plus the validation run and the polling, on
# a loaded two-core machine.
RECOVERY_PASSES = 2  # as the fault campaign's bound (bench/fault_check.py)


def git_bytes(cwd: Path, *args: str) -> bytes:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True).stdout


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    data: dict[str, Any] = result.structured_content
    return data


def dead_pid() -> tuple[int, float]:
    """A pid and create time of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, created


# ---- acceptance: an agent process SIGKILLed while it holds a clean and a dirty worktree -----------


README_BYTES = b"changed by the agent\n\x00\xff\xfe binary tail \x80\x81\n"
UNTRACKED_BYTES = bytes(range(256)) * 3 + b"\x00end"
UNICODE_NAME = "notes/d\u00e9j\u00e0 vu.txt"


async def test_sigkilled_agent_clean_slot_freed_dirty_slot_rescued(env: dict[str, str], repo: Path) -> None:
    survivor_params = server_params(
        env, AGENT_COORD_AGENT_ID="survivor", AGENT_COORD_VALIDATE_EVERY_S=str(VALIDATE_EVERY_S)
    )
    async with Client(survivor_params, mode="legacy") as survivor:
        # The survivor validates first, so it holds the validator lease when the victim dies.
        await wait_for(lambda: any(e["agent_id"] == "survivor" for e in events(env, "validate")), 10)
        steps = [
            call_step("allocate_worktree", {"branch": "feat/clean"}, save="clean"),
            call_step("allocate_worktree", {"branch": "feat/dirty"}, save="dirty"),
            write_step("dirty", "README.md", README_BYTES),
            write_step("dirty", "new dir/blob.bin", UNTRACKED_BYTES),
            write_step("dirty", UNICODE_NAME, "caf\u00e9\n".encode()),
        ]
        async with agent_process(
            env, steps, AGENT_COORD_AGENT_ID="victim", AGENT_COORD_VALIDATE_EVERY_S=str(VALIDATE_EVERY_S)
        ) as victim:
            results = await victim.until_ready()
            assert all(r["ok"] for r in results), results
            clean, dirty = results[0]["result"], results[1]["result"]
            dirty_tip = git(repo, "rev-parse", "feat/dirty").strip()
            rows = {r["id"]: r for r in query(env, "SELECT * FROM slots")}
            assert {rows[clean["worktree_id"]]["state"], rows[dirty["worktree_id"]]["state"]} == {"BUSY"}
            (victim_row,) = query(env, "SELECT * FROM agents WHERE id = 'victim'")
            assert victim_row["pid"] == victim.pid  # the agent is the server's parent: this process

            await victim.kill()
            killed_at = time.time()  # the clock events are stamped with

            async def both_free() -> bool:
                status = structured(await survivor.call_tool("status", {}))
                states = {w["worktree_id"]: w["state"] for w in status["worktrees"]}
                return states.get(clean["worktree_id"]) == "FREE" and states.get(dirty["worktree_id"]) == "FREE"

            await wait_for(both_free, 60)
            # Within one check interval, counted in the validator's own passes (a loaded machine
            # stretches seconds, not passes): the death is noticed between passes and one starts at once.
            reclaimed = [
                e for e in events(env, "reclaim") if e["worktree_id"] in (clean["worktree_id"], dirty["worktree_id"])
            ]
            done_at = max(e["ts"] for e in reclaimed)
            passes = [
                e for e in events(env, "validate") if e["outcome"] == "started" and killed_at < e["ts"] <= done_at
            ]
            assert len(passes) <= RECOVERY_PASSES, f"reclaimed after {len(passes)} validation passes"

        status = structured(await survivor.call_tool("status", {}))
        views = {w["worktree_id"]: w for w in status["worktrees"]}
        ref = views[dirty["worktree_id"]]["rescue_ref"]
        assert ref and ref.startswith("refs/agent-coord/rescue/feat/dirty/")
        assert views[clean["worktree_id"]]["rescue_ref"] is None
        victim_view = next(a for a in status["agents"] if a["agent_id"] == "victim")
        assert victim_view["alive"] is False and "is gone" in victim_view["reason"]

        # Byte for byte, from the rescue ref alone; the rescue sits on the branch tip, which is unchanged.
        assert git_bytes(repo, "show", f"{ref}:README.md") == README_BYTES
        assert git_bytes(repo, "show", f"{ref}:new dir/blob.bin") == UNTRACKED_BYTES
        assert git_bytes(repo, "show", f"{ref}:{UNICODE_NAME}") == "caf\u00e9\n".encode()
        assert git(repo, "rev-parse", f"{ref}^").strip() == dirty_tip == git(repo, "rev-parse", "feat/dirty").strip()
        # The slot itself is clean and detached again, its branch kept.
        dirty_path = Path(dirty["path"])
        assert git(dirty_path, "status", "--porcelain", "--untracked-files=all") == ""
        assert not (dirty_path / "new dir").exists()
        assert git(dirty_path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"

        # The event log says what happened, and names the same ref.
        log = events(env)
        reclaims = {e["worktree_id"]: e for e in log if e["action"] == "reclaim"}
        assert reclaims[clean["worktree_id"]]["outcome"] == "freed"
        assert reclaims[dirty["worktree_id"]]["outcome"] == "rescued"
        assert reclaims[dirty["worktree_id"]]["detail"]["rescue_ref"] == ref
        assert all(reclaims[w]["detail"]["previous_owner"] == "victim" for w in reclaims)
        rescue = next(e for e in log if e["action"] == "rescue")
        assert rescue["detail"]["rescue_ref"] == ref and rescue["worktree_id"] == dirty["worktree_id"]
        assert set(rescue["detail"]["files"]) >= {"README.md", "new dir/blob.bin"}
        dead = [e for e in log if e["action"] == "agent_dead"]
        assert [e["agent_id"] for e in dead] == ["victim"] and "is gone" in dead[0]["detail"]["reason"]
        assert any(e["action"] == "disconnect" and e["agent_id"] == "victim" for e in log)  # its server saw EOF
        assert all(e["agent_id"] == "survivor" for e in log if e["action"] in {"reclaim", "rescue"})

        # Both slots are handed out again, warm; the clean one's branch can be taken up again.
        again = structured(await survivor.call_tool("allocate_worktree", {"branch": "feat/clean"}))
        other = structured(await survivor.call_tool("allocate_worktree", {"branch": "feat/next"}))
        assert again["reused"] and other["reused"]
        assert {again["worktree_id"], other["worktree_id"]} == {clean["worktree_id"], dirty["worktree_id"]}


# ---- acceptance: a server SIGKILLed between the two phases of an allocation -----------------------


async def test_server_killed_between_phases_is_rolled_back(env: dict[str, str], repo: Path) -> None:
    interval = {"AGENT_COORD_VALIDATE_EVERY_S": str(VALIDATE_EVERY_S)}
    # Setup runs in the git phase, after `git worktree add`: a sleeping post-create command holds the
    # allocation between its phases for as long as we need.
    steps = [call_step("allocate_worktree", {"branch": "feat/half"}, save="half")]
    async with agent_process(
        env,
        steps,
        AGENT_COORD_AGENT_ID="crasher",
        AGENT_COORD_POST_CREATE='["sleep 600"]',
        AGENT_COORD_VALIDATE_EVERY_S=str(VALIDATE_EVERY_S),
    ) as crasher:

        def in_setup() -> bool:
            return any(process_name(p) == "sleep" for p in crasher.servers())

        await wait_for(in_setup, 120)  # a server's start on a loaded machine; the sleep is killed with it
        (row,) = query(env, "SELECT * FROM slots")
        assert row["state"] == "ALLOCATING" and row["owner"] == "crasher"
        assert Path(row["path"], ".git").is_file()  # the git phase had run
        procs = crasher.servers()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):  # a git child may have finished meanwhile
                p.kill()
        await reap(procs)
        # Only its server died; the agent process lives on. With no server left to validate (none
        # runs: nothing else could change the row), the row stays half-done.
        assert crasher.servers() == [] and psutil.pid_exists(crasher.pid)
        (row,) = query(env, "SELECT * FROM slots")
        assert row["state"] == "ALLOCATING"

        # The next validation (a new server's, once the dead one's validator lease has lapsed)
        # rolls it back.
        async with Client(server_params(env, AGENT_COORD_AGENT_ID="survivor", **interval), mode="legacy") as survivor:
            try:
                await wait_for(lambda: query(env, "SELECT state FROM slots")[0]["state"] == "FREE", 60)
                runs = [e for e in events(env, "validate") if e["agent_id"] == "survivor" and e["outcome"] == "started"]
                (rolled,) = [e for e in events(env, "reclaim") if e["worktree_id"] == row["id"]]
                assert len([e for e in runs if e["ts"] <= rolled["ts"]]) == 1  # the survivor's first run did it
                assert rolled["outcome"] == "rolled_back" and rolled["detail"]["previous_state"] == "ALLOCATING"
                assert rolled["agent_id"] == "survivor" and "server process" in rolled["detail"]["reason"]
                assert crasher.proc.returncode is None  # the agent lived on: it was its server that was gone
            except (AssertionError, ValueError) as exc:
                # Seen once in ~10 full runs and not reproduced since: say everything that happened.
                happened = [(e["id"], e["agent_id"], e["action"], e["outcome"], e["detail"]) for e in events(env)]
                raise AssertionError(
                    f"{exc!r}; slots {[dict(r) for r in query(env, 'SELECT * FROM slots')]}; events {happened}"
                ) from exc

            again = structured(await survivor.call_tool("allocate_worktree", {"branch": "feat/half"}))
            assert again["worktree_id"] == row["id"] and again["reused"]
            assert git(Path(again["path"]), "branch", "--show-current").strip() == "feat/half"


# ---- in-process: what reclaiming does with every kind of worktree ---------------------------------


async def _owned_by_dead_agent(coord: Any, env: dict[str, str], branch: str) -> Any:
    alloc = await coord.pool.allocate(branch)
    pid, created = dead_pid()
    set_agent(env, coord.agent_id, pid=pid, pid_create_time=created)
    return alloc


async def test_unsaveable_work_is_quarantined_never_handed_out(coord: Any, env: dict[str, str], repo: Path) -> None:
    alloc = await _owned_by_dead_agent(coord, env, "feat/q")
    wt = Path(alloc.path)
    (wt / "precious.txt").write_bytes(b"only copy\x00")
    # A ref where the rescue namespace needs a directory: git cannot create the rescue ref.
    git(repo, "update-ref", "refs/agent-coord/rescue/feat/q", "HEAD")
    result = await coord.validate(repair=True)
    (f,) = result.findings
    assert (f.kind, f.action, f.repaired) == ("dead_agent", "reclaimed: quarantined", True)
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.QUARANTINED and slot.owner is None
    assert (wt / "precious.txt").read_bytes() == b"only copy\x00"  # nothing was discarded
    assert git(wt, "branch", "--show-current").strip() == "feat/q"
    (event,) = [e for e in await coord.store.events() if e.action == "reclaim"]
    assert event.outcome == "quarantined" and "refs/agent-coord/rescue/feat/q" in event.detail["error"]
    # Never handed out: the next allocation gets a new slot, and a second repair has nothing to do.
    set_agent(env, coord.agent_id, pid=os.getpid(), pid_create_time=psutil.Process().create_time())
    fresh = await coord.pool.allocate("feat/other")
    assert fresh.worktree_id != slot.id
    assert (await coord.validate(repair=True)).findings == []
    assert (await coord.status()).pool.quarantined == 1


async def test_merge_in_progress_is_saved_and_quarantined(coord: Any, env: dict[str, str], repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "side")
    (repo / "README.md").write_text("side\n")
    git(repo, "commit", "-q", "-am", "side")
    git(repo, "switch", "-q", "main")
    alloc = await coord.pool.allocate("feat/m")
    wt = Path(alloc.path)
    (wt / "README.md").write_text("mine\n")
    git(wt, "commit", "-q", "-am", "mine")
    subprocess.run(["git", "-C", str(wt), "merge", "side"], capture_output=True)  # conflicts
    (wt / "scratch.txt").write_text("uncommitted")
    pid, created = dead_pid()
    set_agent(env, coord.agent_id, pid=pid, pid_create_time=created)
    (f,) = (await coord.validate(repair=True)).findings
    assert f.action == "reclaimed: quarantined"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.QUARANTINED and slot.rescue_ref
    assert git(repo, "show", f"{slot.rescue_ref}:scratch.txt") == "uncommitted"
    # The merge is the person's to finish: its state and the conflicted file are untouched.
    assert (wt / "scratch.txt").exists()
    assert git(wt, "rev-parse", "-q", "--verify", "MERGE_HEAD").strip()


async def test_detached_commits_and_staged_index_survive_a_deleted_directory(
    coord: Any, env: dict[str, str], repo: Path
) -> None:
    """A worktree deleted behind the store's back: its git entry still holds a detached HEAD's own
    commits and a staged index. Pruning would drop both; they are saved to rescue refs first."""
    a = await coord.pool.allocate("feat/detached")
    b = await coord.pool.allocate("feat/staged")
    wa, wb = Path(a.path), Path(b.path)
    git(wa, "switch", "-q", "--detach")
    (wa / "only-here.txt").write_text("commit on a detached HEAD")
    git(wa, "add", "only-here.txt")
    git(wa, "commit", "-q", "-m", "detached work")
    lonely = git(wa, "rev-parse", "HEAD").strip()
    (wb / "staged.txt").write_bytes(b"staged \x00 bytes")
    git(wb, "add", "staged.txt")
    subprocess.run(["rm", "-rf", str(wa), str(wb)], check=True)

    dry = await coord.validate(repair=False)
    assert sorted(f.kind for f in dry.findings) == ["orphaned_allocation", "orphaned_allocation"]
    repaired = await coord.validate(repair=True)
    assert all(f.repaired for f in repaired.findings)
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue").split()
    assert len(refs) == 2
    # A rescue commit's first parent is the HEAD it saved (docs/decisions.md, "What a rescue ref holds").
    assert any(git(repo, "rev-parse", f"{r}^1").strip() == lonely for r in refs)
    staged_ref = next(r for r in refs if "feat/staged" in r)
    assert git_bytes(repo, "show", f"{staged_ref}:staged.txt") == b"staged \x00 bytes"
    assert "prunable" not in git(repo, "worktree", "list", "--porcelain")
    assert (await coord.validate(repair=True)).findings == []
    rescues = [e for e in await coord.store.events() if e.action == "rescue"]
    assert sorted(e.detail["saved"] for e in rescues) == ["detached HEAD commits", "staged index"]


async def _claimed_by_dead_ghost(coord: Any) -> Any:
    """A new slot claimed (phase 1) for `feat/ghost` by an agent "ghost" whose process is gone."""
    from dataclasses import replace

    repo_row = await coord.default_repo()
    pid, created = dead_pid()
    agent = coord.identity.as_agent(repo_id=repo_row.id, lease_s=300)
    await coord.store.register_agent(replace(agent, id="ghost", pid=pid, pid_create_time=created))
    claimed = await coord.store.claim_new_slot(
        repo_row, owner="ghost", branch="feat/ghost", task=None, lease_s=300, pool_max=8
    )
    assert claimed is not None
    return claimed


async def test_stuck_allocating_without_worktree_is_rolled_back(coord: Any, env: dict[str, str]) -> None:
    """Killed after phase 1 and before `git worktree add`: an ALLOCATING row with nothing on disk."""
    claimed = await _claimed_by_dead_ghost(coord)
    assert claimed.state == SlotState.ALLOCATING
    (f,) = (await coord.validate(repair=False)).findings
    assert (f.kind, f.worktree_id) == ("stuck_allocating", claimed.id)
    (f,) = (await coord.validate(repair=True)).findings
    assert f.action == "reclaimed: rolled_back"
    assert await coord.store.slots() == []
    assert (await coord.pool.allocate("feat/ghost")).branch == "feat/ghost"


async def test_a_server_killed_inside_worktree_add_leaves_no_lock_behind(
    coord: Any, env: dict[str, str], repo: Path
) -> None:
    """Killed inside `git worktree add`: git's own 'initializing' lock stays on the new worktree. The
    roll-back by validation removes it (a lock of any other reason, or older than the claim, stays)."""
    claimed = await _claimed_by_dead_ghost(coord)
    git(repo, "worktree", "add", "-q", "-b", "feat/ghost", claimed.path)
    marker = Path(git(Path(claimed.path), "rev-parse", "--path-format=absolute", "--git-path", "locked").strip())
    marker.write_text("initializing\n")
    (f,) = (await coord.validate(repair=True)).findings
    assert (f.kind, f.action) == ("stuck_allocating", "reclaimed: rolled_back")
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE and not marker.exists()
    assert (await coord.pool.allocate("feat/next")).worktree_id == slot.id


async def test_allocating_row_of_an_earlier_server_of_a_live_agent_is_rolled_back(
    coord: Any, env: dict[str, str], settings: Any
) -> None:
    """The agent lives and restarted its server (same id): the old server's half-allocation can never
    finish, and the resumed agent must be able to take that branch again. A transition no process
    recorded itself doing (an earlier version's) is judged by the agent's registrations once past the
    grace for a record about to be written."""
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.validate.held import UNRECORDED_GRACE_S

    repo_row = await coord.default_repo()
    claimed = await coord.store.claim_new_slot(
        repo_row, owner="agent-test", branch="feat/resume", task=None, lease_s=300, pool_max=8
    )
    assert claimed is not None and claimed.since is not None
    since = claimed.since
    await wait_for(lambda: time.time() > since, 5)  # the new server registers strictly after the claim
    conn = sqlite3.connect(env["AGENT_COORD_DB"], timeout=5)
    # Marked longer ago than a process takes to record itself, and never recorded.
    conn.execute("UPDATE slot_workers SET since = since - ? WHERE slot_id = ?", (2 * UNRECORDED_GRACE_S, claimed.id))
    conn.commit()
    conn.close()
    async with Coordinator.open(settings, register=True, agent_id="agent-test") as resumed:
        (f,) = (await resumed.validate(repair=True)).findings
        assert f.kind == "stuck_allocating" and "last registered" in f.detail
        assert (await resumed.pool.allocate("feat/resume")).branch == "feat/resume"


async def test_an_agent_registering_again_rolls_back_what_its_killed_server_left(
    coord: Any, settings: Any, repo: Path
) -> None:
    """The server that was allocating for an agent was killed during setup (a hook host, a session
    server): the agent carrying on in a new process gets its branch, not a BRANCH_CONFLICT from its own
    half-made claim, and what was in the slot is saved first. No validation runs in between."""
    from dataclasses import replace

    from agent_coord.engine.coordinator import Coordinator

    repo_row = await coord.default_repo()
    pid, created = dead_pid()
    killed = replace(coord.identity.as_worker(), pid=pid, create_time=created, start_s=None)
    claimed = await coord.store.claim_new_slot(
        repo_row, owner="agent-back", branch="feat/back", task=None, lease_s=300, pool_max=8, worker=killed
    )
    assert claimed is not None
    git(repo, "worktree", "add", "-q", "-b", "feat/back", claimed.path)
    (Path(claimed.path) / "half.txt").write_text("written before the kill")

    async with Coordinator.open(settings, register=True, agent_id="agent-back") as back:
        (reclaim,) = [e for e in await back.store.events() if e.action == "reclaim"]
        assert reclaim.worktree_id == claimed.id and "can never finish" in reclaim.detail["reason"]
        rescued = [e for e in await back.store.events() if e.action == "rescue"]
        assert rescued and git(repo, "show", f"{rescued[0].detail['rescue_ref']}:half.txt") == "written before the kill"
        assert (await back.pool.allocate("feat/back")).branch == "feat/back"


async def test_a_release_its_process_has_not_recorded_yet_is_left_alone_for_a_moment(
    coord: Any, env: dict[str, str]
) -> None:
    """A hook's agent: its last server (a hook) is gone, the agent lives. A release just begun whose
    process has not recorded itself yet is not judged by that gone server; once its mark is older than
    any record takes, it is (a process killed before recording: the old rule)."""
    from dataclasses import replace

    from agent_coord.engine.validate.held import UNRECORDED_GRACE_S

    pid, created = dead_pid()
    agent = coord.identity.as_agent(repo_id=None, lease_s=300)
    await coord.store.register_agent(replace(agent, id="hooky", server_pid=pid, server_create_time=created))
    grant = await coord.pool.allocate("feat/hooky")
    with sqlite3.connect(env["AGENT_COORD_DB"], timeout=5) as conn:
        conn.execute("UPDATE slots SET owner = 'hooky', state = 'RELEASING' WHERE id = ?", (grant.worktree_id,))
    assert (await coord.validate(repair=False)).findings == []
    with sqlite3.connect(env["AGENT_COORD_DB"], timeout=5) as conn:
        conn.execute("UPDATE slot_workers SET since = since - ?", (2 * UNRECORDED_GRACE_S,))
    (f,) = (await coord.validate(repair=False)).findings
    assert f.kind == "stuck_releasing" and f"process {pid} is gone" in f.detail


async def test_live_allocation_in_flight_is_not_drift(coord: Any, make_settings: Any, tmp_path: Path) -> None:
    """Validation running beside an allocation that sits in its git phase sees nothing to repair."""
    from agent_coord.engine.coordinator import Coordinator

    # The post-create command holds the allocation in its git phase until the validations are done.
    go = tmp_path / "go"
    wait_for_go = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)"
    hold = shlex.join([sys.executable, "-c", wait_for_go])
    async with Coordinator.open(make_settings(post_create=(hold,)), register=True, agent_id="agent-slow") as slow:
        async with anyio.create_task_group() as tg:
            tg.start_soon(slow.pool.allocate, "feat/slow")
            await wait_for(lambda: _has_state(slow, SlotState.ALLOCATING), 30)
            for _ in range(3):
                result = await coord.validate(repair=True)
                assert result.findings == [], result.findings
                assert await _has_state(slow, SlotState.ALLOCATING)  # the pass ran beside the allocation
            go.touch()
        (slot,) = await slow.store.slots()
        assert slot.state == SlotState.BUSY and slot.owner == "agent-slow"


async def _has_state(c: Any, state: SlotState) -> bool:
    return any(s.state == state for s in await c.store.slots())


async def test_a_stale_releasing_row_is_taken_over(coord: Any, env: dict[str, str]) -> None:
    """A reclaimer that died half-way leaves RELEASING under its name; its lease lapsing frees it."""
    alloc = await coord.pool.allocate("feat/rel")
    conn = sqlite3.connect(env["AGENT_COORD_DB"], timeout=5)
    conn.execute(
        "UPDATE slots SET state = 'RELEASING', owner = 'agent-test', lease_expires_at = ? WHERE id = ?",
        (time.time() - 1, alloc.worktree_id),
    )
    conn.commit()
    conn.close()
    (f,) = (await coord.validate(repair=True)).findings
    assert f.kind == "stuck_releasing" and "lease lapsed" in f.detail and f.repaired
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE


async def test_sigterm_to_the_agent_process_is_a_death_too(env: dict[str, str]) -> None:
    """Not only SIGKILL: any end of the agent process makes its slots reclaimable at once."""
    steps = [call_step("allocate_worktree", {"branch": "feat/term"}, save="t")]
    async with agent_process(env, steps, AGENT_COORD_AGENT_ID="termed") as agent:
        await agent.until_ready()
        agent.proc.send_signal(signal.SIGTERM)
        await agent.proc.wait()
    async with Client(server_params(env, AGENT_COORD_AGENT_ID="observer"), mode="legacy") as observer:
        status = structured(await observer.call_tool("status", {}))
        termed = next(a for a in status["agents"] if a["agent_id"] == "termed")
        assert termed["alive"] is False
        findings = structured(await observer.call_tool("validate", {"repair": True}))["findings"]
        if findings:
            (f,) = findings
            assert f["kind"] == "dead_agent" and f["action"] == "reclaimed: freed"
        else:
            # The observer's own start-up validation (it took the lease the dead server handed on) was
            # first, and may still be reclaiming: wait for its event.
            with anyio.fail_after(5):
                while True:
                    activity = (await observer.read_resource("coord://activity")).contents[0].text
                    if any("| reclaim | feat/term | freed |" in line for line in activity.splitlines()):
                        break
                    await anyio.sleep(0.1)
