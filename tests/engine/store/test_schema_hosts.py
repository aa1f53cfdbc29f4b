"""Schema 7 (several hosts, one pool of branches) on both engines: the upgrade from 6 keeps every row,
leaves rows of the earlier version without a host until their host resolves them, and from then on
the database refuses a branch held twice in one project, whichever clone holds it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from agent_coord.engine.store import BranchHeldError, Store
from agent_coord.engine.store.records import SlotState
from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.engine.store.schema_pg import PG_MIGRATIONS
from agent_coord.store_target import PostgresUrl
from tests.pg_support import raw

Target = Path | PostgresUrl
UPGRADED_FROM = 6
pytestmark = pytest.mark.anyio


def at_schema_6(target: Target, version: int = UPGRADED_FROM, state: str = "BUSY") -> None:
    """A store as a previous version left it: schema 6 (or `version`), one repository with a BUSY slot
    (or one in `state`)."""
    if isinstance(target, PostgresUrl):
        import psycopg

        with psycopg.connect(target.secret_url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (0)")
            for script in PG_MIGRATIONS[:version]:
                conn.execute(script)  # type: ignore[arg-type] # a script of our own, no parameters
            conn.execute("UPDATE schema_version SET version = %s", (version,))
    else:
        with sqlite3.connect(target) as conn:
            for script in MIGRATIONS[:version]:
                conn.executescript(script)
            conn.execute(f"PRAGMA user_version = {version}")
    with raw(target) as db:
        db.execute("INSERT INTO repos (path, pool_root, created_at) VALUES ('/r', '/r.worktrees', 0)")
        db.execute(
            "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token, created_at)"
            " VALUES ('wt-01', (SELECT id FROM repos WHERE path = '/r'), '/r.worktrees/wt-01', ?, 3, 'a1',"
            " 'feat/x', 7, 0)",
            (state,),
        )


async def test_the_upgrade_from_6_keeps_the_rows_and_their_host_is_the_first_to_resolve_them(
    store_target: Target,
) -> None:
    at_schema_6(store_target)
    store = await Store.open(store_target)
    try:
        (repo,) = await store.repos()
        (slot,) = await store.slots()
        assert (repo.host, repo.project) == (None, None)
        assert (slot.state, slot.owner, slot.branch, slot.version, slot.host) == ("BUSY", "a1", "feat/x", 3, None)
        # The first host to resolve the clone makes it its own, slots included.
        mine = await store.ensure_repo("/r", "/ignored", host="host-a", project="p1")
        assert (mine.id, mine.host, mine.project, mine.pool_root) == (repo.id, "host-a", "p1", "/r.worktrees")
        (slot,) = await store.slots()
        assert (slot.host, slot.project) == ("host-a", "p1")
        # A slot inserted afterwards takes its repository's host and project from the database.
        made = await store.claim_new_slot(mine, owner="a2", branch="feat/y", task=None, lease_s=60, pool_max=8)
        assert made is not None and (made.host, made.project) == ("host-a", "p1")
    finally:
        await store.close()


async def test_a_branch_is_held_once_per_project_across_clones(store_target: Target) -> None:
    store = await Store.open(store_target)
    try:
        a = await store.ensure_repo("/a/r", "/a/r.worktrees", host="host-a", project="shared")
        b = await store.ensure_repo("/b/r", "/b/r.worktrees", host="host-b", project="shared")
        other = await store.ensure_repo("/c/r", "/c/r.worktrees", host="host-b", project="another")
        held = await store.claim_new_slot(a, owner="x", branch="feat/one", task=None, lease_s=60, pool_max=8)
        assert held is not None
        with pytest.raises(BranchHeldError) as refused:
            await store.claim_new_slot(b, owner="y", branch="feat/one", task=None, lease_s=60, pool_max=8)
        assert refused.value.holder.id == held.id and refused.value.holder.host == "host-a"
        # Another project may hold the same branch name.
        assert await store.claim_new_slot(other, owner="y", branch="feat/one", task=None, lease_s=60, pool_max=8)
        # The database itself refuses it too, past the store's own check.
        with raw(store_target) as db, pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO slots (id, repo_id, path, state, branch, created_at)"
                " VALUES ('wt-99', ?, '/b/r.worktrees/x', 'BUSY', 'feat/one', ?)",
                (b.id, time.time()),
            )
    finally:
        await store.close()


async def test_a_project_change_that_would_hold_a_branch_twice_is_not_recorded(store_target: Target) -> None:
    store = await Store.open(store_target)
    try:
        a = await store.ensure_repo("/a/r", "/a/r.worktrees", host="host-a", project="one")
        b = await store.ensure_repo("/b/r", "/b/r.worktrees", host="host-b", project="two")
        assert await store.claim_new_slot(a, owner="x", branch="feat/same", task=None, lease_s=60, pool_max=8)
        assert await store.claim_new_slot(b, owner="y", branch="feat/same", task=None, lease_s=60, pool_max=8)
        kept = await store.ensure_repo("/b/r", "/b/r.worktrees", host="host-b", project="one")
        assert kept.project == "two"
        assert {s.project for s in await store.slots(b.id)} == {"two"}
    finally:
        await store.close()


async def test_a_path_is_one_clone_per_host_and_a_sqlite_file_serves_one_host(store_target: Target) -> None:
    store = await Store.open(store_target)
    try:
        old = await store.ensure_repo("/r", "/r.worktrees", host="old-id", project="p")
        new = await store.ensure_repo("/r", "/r.worktrees", host="new-id", project="p")
        if isinstance(store_target, PostgresUrl):
            assert new.id != old.id and {r.host for r in await store.repos()} == {"old-id", "new-id"}
        else:  # the same machine under a changed AGENT_COORD_HOST_ID: the row follows it
            assert new.id == old.id and [r.host for r in await store.repos()] == ["new-id"]
    finally:
        await store.close()


async def test_a_slot_in_flight_at_the_upgrade_to_9_is_marked(store_target: Target) -> None:
    """An allocation under way while the schema moves to 9: marked then, no process recorded (judged
    by the old rule once the mark is old, validate/held.py)."""
    at_schema_6(store_target, version=8, state="ALLOCATING")
    store = await Store.open(store_target)
    try:
        (slot,) = await store.slots()
        mark = await store.worker(slot)
        assert mark is not None and (mark.version, mark.state, mark.process) == (3, SlotState.ALLOCATING, None)
    finally:
        await store.close()
