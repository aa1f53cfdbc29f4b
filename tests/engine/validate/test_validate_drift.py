"""Every kind of drift, produced for real: found by a dry run that changes nothing, fixed by a repair,
and gone on the second repair. Locked worktrees are left alone throughout."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent_coord.engine.liveness.judge import start_since_boot
from agent_coord.engine.store.records import SlotState
from tests.conftest import git

pytestmark = pytest.mark.anyio

ALL_KINDS = {
    "dead_agent",
    "stale_lease",
    "stuck_allocating",
    "stuck_releasing",
    "orphaned_allocation",
    "missing_worktree",
    "untracked_worktree",
    "branch_mismatch",
    "dirty_free_slot",
    "free_not_detached",
    "duplicate_path",
    "prunable_worktree",
    "leftover_directory",
}


def sql(env: dict[str, str], statement: str, args: tuple[Any, ...] = ()) -> None:
    """Edit the store behind the coordinator's back, as a crash, a bug or a person would."""
    conn = sqlite3.connect(env["AGENT_COORD_DB"], timeout=5)
    try:
        conn.execute(statement, args)
        conn.commit()
    finally:
        conn.close()


def snapshot(env: dict[str, str], repo: Path, pool: Path) -> dict[str, Any]:
    """Everything a validation could change: every table, git's worktrees and refs, every file under
    the pool root and in git's administrative directories (indexes included), byte for byte."""
    conn = sqlite3.connect(f"file:{env['AGENT_COORD_DB']}?mode=ro", uri=True)
    tables = {
        t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}")))
        for t in ("slots", "agents", "events", "leases", "meta", "repos")
    }
    conn.close()
    files: dict[str, str] = {}
    for root in (pool, repo / ".git" / "worktrees", Path(env["AGENT_COORD_DB"]).parent.parent / "elsewhere"):
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                files[str(path)] = "dir" if path.is_dir() else "other"
    files["index"] = hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()
    return {
        "tables": tables,
        "worktrees": git(repo, "worktree", "list", "--porcelain"),
        "refs": git(repo, "for-each-ref"),
        "files": files,
    }


async def _ghost(coord: Any, agent_id: str, *, dead: bool = False, stale: bool = False) -> None:
    """Register another agent: dead (its pid exited) or stale (on another host, where only its lease can
    speak for it, and the lease lapsed; a live process on this host is never stale)."""
    repo = await coord.default_repo()
    agent = replace(coord.identity.as_agent(repo_id=repo.id, lease_s=300), id=agent_id)
    if dead:
        proc = subprocess.Popen(["true"])
        created = psutil.Process(proc.pid).create_time()
        proc.wait()
        # A crashed agent's server is gone with it (its stdin closed).
        agent = replace(agent, pid=proc.pid, pid_create_time=created, server_pid=proc.pid, server_create_time=created)
    if stale:
        agent = replace(
            agent,
            pid=os.getpid(),
            pid_create_time=psutil.Process().create_time(),
            pid_start_s=start_since_boot(os.getpid()),
        )
        agent = replace(
            agent, host="another-host", last_heartbeat=time.time() - 600, lease_expires_at=time.time() - 300
        )
    await coord.store.register_agent(agent)


async def _give(coord: Any, env: dict[str, str], branch: str, owner: str, state: str = "BUSY") -> Any:
    alloc = await coord.pool.allocate(branch)
    sql(env, "UPDATE slots SET owner = ?, state = ? WHERE id = ?", (owner, state, alloc.worktree_id))
    # A transition in flight begun an hour ago by a process that never recorded itself.
    sql(env, "UPDATE slot_workers SET since = since - 3600 WHERE slot_id = ?", (alloc.worktree_id,))
    return alloc


async def test_every_drift_kind_found_dry_fixed_once(make_settings: Any, env: dict[str, str], repo: Path) -> None:
    from agent_coord.engine.coordinator import Coordinator

    pool = Path(env["AGENT_COORD_POOL_ROOT"])
    elsewhere = Path(env["AGENT_COORD_DB"]).parent.parent / "elsewhere"
    async with Coordinator.open(make_settings(pool_max=20), register=True, agent_id="agent-test") as coord:
        await _ghost(coord, "agent-dead", dead=True)
        await _ghost(coord, "agent-stale", stale=True)

        # Every slot is allocated first: a released slot would be handed out again (warm) by the next.
        dead = await _give(coord, env, "feat/dead", "agent-dead")
        stale = await _give(coord, env, "feat/stale", "agent-stale")
        stuck_a = await _give(coord, env, "feat/stuck-a", "agent-dead", "ALLOCATING")
        stuck_r = await _give(coord, env, "feat/stuck-r", "agent-dead", "RELEASING")
        locked = await _give(coord, env, "feat/locked", "agent-dead")
        orphan = await coord.pool.allocate("feat/orphan")
        gone_free = await coord.pool.allocate("feat/gone-free")
        mismatch = await coord.pool.allocate("feat/real")
        dirty_free = await coord.pool.allocate("feat/df")
        on_branch = await coord.pool.allocate("feat/nd")
        for free in (gone_free, dirty_free, on_branch):
            await coord.pool.release(worktree_id=free.worktree_id)

        # Crashed and silent agents holding worktrees (one dirty), and half-done transitions (above).
        (Path(dead.path) / "unsaved.bin").write_bytes(b"\x00\x01 dead agent's work")
        # The store's branch edited; free slots written into and switched by hand.
        sql(env, "UPDATE slots SET branch = 'feat/recorded' WHERE id = ?", (mismatch.worktree_id,))
        (Path(dirty_free.path) / "stray.txt").write_text("written into a free slot")
        git(Path(on_branch.path), "switch", "-q", "feat/nd")
        # The same path recorded twice (a different spelling of it).
        sql(
            env,
            "INSERT INTO slots (id, repo_id, path, state, version, created_at) "
            "SELECT 'wt-90', repo_id, path || '/.', 'FREE', 0, created_at FROM slots WHERE id = ?",
            (on_branch.worktree_id,),
        )
        # Worktrees git has and the store does not: by hand under the pool root, and a prunable one.
        git(repo, "worktree", "add", "-q", "-b", "manual-clean", str(pool / "manual-clean"))
        git(repo, "worktree", "add", "-q", "-b", "manual-dirty", str(pool / "manual-dirty"))
        (pool / "manual-dirty" / "draft.txt").write_text("someone's draft")
        git(repo, "worktree", "add", "-q", "-b", "elsewhere", str(elsewhere))
        shutil.rmtree(elsewhere)
        # A directory left behind, and locked worktrees: a dead agent's, and one the store never knew.
        (pool / "junk").mkdir()
        (pool / "junk" / "keep.txt").write_text("not ours to delete")
        (Path(locked.path) / "wip.txt").write_text("locked work")
        git(repo, "worktree", "lock", "--reason", "on a USB disk", locked.path)
        git(repo, "worktree", "add", "-q", "-b", "manual-locked", str(pool / "manual-locked"))
        git(repo, "worktree", "lock", str(pool / "manual-locked"))
        # Worktree directories deleted behind the store's back: held (orphaned) and free (missing).
        shutil.rmtree(orphan.path)
        shutil.rmtree(gone_free.path)
        locked_rows_before = [r for r in snapshot(env, repo, pool)["tables"]["slots"] if r[0] == locked.worktree_id]

        # ---- dry run: everything found, nothing changed ----
        before = snapshot(env, repo, pool)
        dry = await coord.validate(repair=False)
        after = snapshot(env, repo, pool)
        assert after == before
        kinds = {f.kind for f in dry.findings}
        assert kinds == ALL_KINDS, kinds ^ ALL_KINDS
        assert not any(f.repaired for f in dry.findings)
        by_slot = {f.worktree_id: f.kind for f in dry.findings if f.worktree_id}
        assert by_slot[dead.worktree_id] == "dead_agent"
        assert by_slot[stale.worktree_id] == "stale_lease"
        assert by_slot[stuck_a.worktree_id] == "stuck_allocating"
        assert by_slot[stuck_r.worktree_id] == "stuck_releasing"
        assert by_slot[orphan.worktree_id] == "orphaned_allocation"
        assert by_slot[gone_free.worktree_id] == "missing_worktree"
        assert by_slot[mismatch.worktree_id] == "branch_mismatch"
        assert by_slot[dirty_free.worktree_id] == "dirty_free_slot"
        assert by_slot[on_branch.worktree_id] == "free_not_detached"
        assert by_slot["wt-90"] == "duplicate_path"
        assert sorted(str(f.path) for f in dry.findings if f.kind == "untracked_worktree") == [
            str(pool / "manual-clean"),
            str(pool / "manual-dirty"),
        ]
        assert [f.path for f in dry.findings if f.kind == "prunable_worktree"] == [str(elsewhere)]
        assert [f.path for f in dry.findings if f.kind == "leftover_directory"] == [str(pool / "junk")]
        assert {f.path for f in dry.skipped} == {locked.path, str(pool / "manual-locked")}
        assert {f.kind for f in dry.skipped} == {"locked_worktree"}

        # ---- repair: everything fixed, work kept ----
        fixed = await coord.validate(repair=True)
        assert {f.kind for f in fixed.findings} == ALL_KINDS
        assert [f for f in fixed.findings if not f.repaired] == []
        slots = {s.id: s for s in await coord.store.slots()}
        for alloc in (dead, stale, stuck_a, stuck_r, dirty_free, on_branch):
            assert slots[alloc.worktree_id].state == SlotState.FREE, alloc.worktree_id
            assert git(Path(alloc.path), "status", "--porcelain") == ""
            assert git(Path(alloc.path), "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"
        dead_ref = slots[dead.worktree_id].rescue_ref
        assert dead_ref and git(repo, "show", f"{dead_ref}:unsaved.bin") == "\x00\x01 dead agent's work"
        stray_ref = slots[dirty_free.worktree_id].rescue_ref
        assert stray_ref and git(repo, "show", f"{stray_ref}:stray.txt") == "written into a free slot"
        assert orphan.worktree_id not in slots and gone_free.worktree_id not in slots and "wt-90" not in slots
        assert slots[mismatch.worktree_id].branch == "feat/real"
        adopted = {s.path: s for s in slots.values() if "manual" in s.path}
        assert adopted[str(pool / "manual-clean")].state == SlotState.FREE
        assert adopted[str(pool / "manual-dirty")].state == SlotState.QUARANTINED
        assert (pool / "manual-dirty" / "draft.txt").read_text() == "someone's draft"  # left as is
        assert "prunable" not in git(repo, "worktree", "list", "--porcelain")
        assert not (pool / "junk").exists()
        (moved,) = (pool / ".lost+found").iterdir()
        assert (moved / "keep.txt").read_text() == "not ours to delete"
        # Locked: the row, the files and the lock are exactly as they were.
        assert [r for r in snapshot(env, repo, pool)["tables"]["slots"] if r[0] == locked.worktree_id] == (
            locked_rows_before
        )
        assert (Path(locked.path) / "wip.txt").read_text() == "locked work"
        assert "on a USB disk" in git(repo, "worktree", "list", "--porcelain")
        # The event log has every action, and the crashed agent is marked.
        log = await coord.store.events()
        actions = {e.action for e in log}
        assert {"reclaim", "rescue", "repair", "adopt", "agent_dead", "agent_stale", "validate"} <= actions
        stuck_events = [e for e in log if e.action == "reclaim" and e.worktree_id == stuck_a.worktree_id]
        assert stuck_events[0].outcome == "rolled_back"

        # ---- second repair: nothing left ----
        again = await coord.validate(repair=True)
        assert again.findings == [], again.findings
        assert {f.path for f in again.skipped} == {locked.path, str(pool / "manual-locked")}


async def test_duplicates_are_prevented_then_repaired_in_an_old_database(coord: Any, env: dict[str, str]) -> None:
    a = await coord.pool.allocate("feat/one")
    b = await coord.pool.allocate("feat/two")
    (Path(b.path) / "work.txt").write_text("b's uncommitted work")
    # The database itself refuses a second live record of a branch, and a second record of a path.
    with pytest.raises(sqlite3.IntegrityError):
        sql(env, "UPDATE slots SET branch = 'feat/one' WHERE id = ?", (b.worktree_id,))
    with pytest.raises(sqlite3.IntegrityError):
        sql(
            env,
            "INSERT INTO slots (id, repo_id, path, state, created_at) SELECT 'wt-99', repo_id, path, 'FREE', 0"
            " FROM slots WHERE id = ?",
            (a.worktree_id,),
        )
    # An old database, from before the indexes: nothing stops the duplicate.
    sql(env, "DROP INDEX slots_branch_held")
    sql(env, "DROP INDEX slots_project_branch_held")
    sql(env, "UPDATE slots SET branch = 'feat/one' WHERE id = ?", (b.worktree_id,))

    dry = await coord.validate(repair=False)
    assert [(f.kind, f.worktree_id) for f in dry.findings] == [("duplicate_branch", b.worktree_id)]
    fixed = await coord.validate(repair=True)
    assert fixed.findings[0].repaired and fixed.findings[0].action == "reclaimed: rescued"
    slots = {s.id: s for s in await coord.store.slots()}
    # The record git agrees with is kept; the other is reclaimed, its work saved first.
    assert slots[a.worktree_id].state == SlotState.BUSY and slots[a.worktree_id].branch == "feat/one"
    assert slots[b.worktree_id].state == SlotState.FREE
    rescue = slots[b.worktree_id].rescue_ref
    assert rescue and git(Path(a.path), "show", f"{rescue}:work.txt") == "b's uncommitted work"
    assert (await coord.validate(repair=True)).findings == []


async def test_locked_worktree_of_a_dead_agent_is_never_touched(coord: Any, env: dict[str, str], repo: Path) -> None:
    await _ghost(coord, "agent-dead", dead=True)
    alloc = await _give(coord, env, "feat/locked", "agent-dead")
    (Path(alloc.path) / "mine.txt").write_text("do not touch")
    git(repo, "worktree", "lock", alloc.path)
    for repair in (False, True, True):
        result = await coord.validate(repair=repair)
        assert result.findings == []
        assert [(f.kind, f.worktree_id) for f in result.skipped] == [("locked_worktree", alloc.worktree_id)]
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY and slot.owner == "agent-dead"
    assert (Path(alloc.path) / "mine.txt").read_text() == "do not touch"
    # Unlocked, it is reclaimed like any other, its work saved.
    git(repo, "worktree", "unlock", alloc.path)
    (f,) = (await coord.validate(repair=True)).findings
    assert f.kind == "dead_agent" and f.action == "reclaimed: rescued"


async def test_detached_head_in_a_live_agents_worktree_is_its_business(coord: Any) -> None:
    """A rebase or bisect detaches HEAD for a while: not drift, and the branch stays reserved."""
    alloc = await coord.pool.allocate("feat/rebasing")
    git(Path(alloc.path), "switch", "-q", "--detach")
    assert (await coord.validate(repair=True)).findings == []
    (slot,) = await coord.store.slots()
    assert slot.branch == "feat/rebasing"


async def test_commits_only_on_a_free_slots_detached_head_are_found_and_saved(coord: Any, repo: Path) -> None:
    """A commit made on a FREE slot's detached HEAD is on no branch: found (one batched rev-list for
    the pool), and saved to a rescue ref before the slot is cleaned."""
    a = await coord.pool.allocate("commits-then-free")
    b = await coord.pool.allocate("stays-clean")
    await coord.pool.release(worktree_id=a.worktree_id)
    await coord.pool.release(worktree_id=b.worktree_id)
    wt = Path(a.path)
    (wt / "stray.txt").write_text("committed on a detached HEAD")
    git(wt, "add", "stray.txt")
    git(wt, "commit", "-q", "-m", "stray commit")
    stray = git(wt, "rev-parse", "HEAD").strip()
    dry = await coord.validate(repair=False)
    (f,) = dry.findings
    assert f.kind == "dirty_free_slot" and f.worktree_id == a.worktree_id and "commit(s)" in f.detail
    fixed = await coord.validate(repair=True)
    assert [x.worktree_id for x in fixed.findings] == [a.worktree_id] and fixed.findings[0].repaired
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue").split()
    contains = [
        subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", stray, r]).returncode == 0 for r in refs
    ]
    assert any(contains)
    assert (await coord.validate(repair=True)).findings == []
