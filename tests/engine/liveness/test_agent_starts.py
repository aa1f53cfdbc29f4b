"""Schema 2's process starts since boot, beside servers of the previous version: a database of
schema 1 is migrated with its agents intact, the `agents` table keeps exactly the columns that
version reads, and a start counts only while the agent row still names the process it was taken of."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent_coord.engine.liveness.judge import Identity, judge
from agent_coord.engine.store import Store
from agent_coord.engine.store.schema import MIGRATIONS

pytestmark = pytest.mark.anyio

# What a server of schema 1 reads with `SELECT * FROM agents` into its record type, field for field.
SCHEMA_1_AGENT_COLUMNS = [
    "id",
    "host",
    "boot_id",
    "pid",
    "pid_create_time",
    "server_pid",
    "server_create_time",
    "repo_id",
    "status",
    "note",
    "started_at",
    "last_heartbeat",
    "lease_expires_at",
]


def _me() -> Identity:
    return Identity.detect("agent-starts", ())


def _schema_1_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    me = _me()
    conn.execute(
        f"INSERT INTO agents ({', '.join(SCHEMA_1_AGENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'active',"
        " NULL, 0, 0, 1e12)",
        ("old", me.host, me.boot_id, me.pid, me.pid_create_time, me.server_pid, me.server_create_time),
    )
    conn.commit()
    conn.close()


async def test_a_schema_1_database_is_migrated_and_its_agents_judged_as_before(tmp_path: Path) -> None:
    db = tmp_path / "coord.db"
    _schema_1_db(db)
    store = await Store.open(db)
    try:
        (old,) = await store.agents()
        assert old.id == "old" and old.pid_start_s is None and old.server_start_s is None
        me = _me()
        assert judge(old, host=me.host, boot=me.boot_id).alive  # by its wall-clock create time
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert [r[1] for r in conn.execute("PRAGMA table_info(agents)")] == SCHEMA_1_AGENT_COLUMNS
    finally:
        conn.close()


async def test_a_start_counts_only_while_the_row_names_its_process(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "coord.db")
    try:
        me = _me()
        agent = me.as_agent(repo_id=None, lease_s=60)
        assert agent.pid_start_s is not None and agent.server_start_s is not None
        await store.register_agent(agent)
        got = await store.agent(agent.id)
        assert got is not None and (got.pid_start_s, got.server_start_s) == (agent.pid_start_s, agent.server_start_s)

        # A server of schema 1 re-registers the id from another server process: it writes `agents`
        # only. The recorded server start was taken of the previous server and must not be used to
        # judge the new one (it would look like a reused pid); the agent process is unchanged.
        other = psutil.Process(1)
        conn = sqlite3.connect(tmp_path / "coord.db")
        conn.execute(
            "UPDATE agents SET server_pid = ?, server_create_time = ? WHERE id = ?",
            (other.pid, other.create_time(), agent.id),
        )
        conn.commit()
        conn.close()
        got = await store.agent(agent.id)
        assert got is not None and got.server_start_s is None and got.pid_start_s == agent.pid_start_s

        # Registering again (this version) records the starts of the processes it names.
        await store.register_agent(replace(agent, server_start_s=agent.server_start_s))
        got = await store.agent(agent.id)
        assert got is not None and got.server_start_s == agent.server_start_s
        assert [a.id for a in await store.agents()] == [agent.id]
    finally:
        await store.close()


async def test_a_generated_id_survives_a_clock_step_between_two_servers(make_settings: Any) -> None:
    """The generated id hashes the agent's wall-clock create time, which a clock step moves; a server
    restarted after one finds its agent's earlier id by the start counted from boot and keeps it."""
    from agent_coord.engine.coordinator import Coordinator

    settings = make_settings()
    async with Coordinator.open(settings, register=True) as first:
        assert first.identity.id_generated and first.agent_id.startswith("agent-")
        hashed = first.agent_id
    # As if the first server had hashed a create time from before a step: its row has another id,
    # and another create time, but the same start counted from boot.
    conn = sqlite3.connect(settings.db)
    for table, key in (("agents", "id"), ("agent_starts", "agent_id")):
        conn.execute(
            f"UPDATE {table} SET {key} = 'agent-before', pid_create_time = pid_create_time - 1 WHERE {key} = ?",
            (hashed,),
        )
    conn.commit()
    conn.close()
    async with Coordinator.open(settings, register=True) as second:
        assert second.agent_id == "agent-before"  # not the new hash
        assert [a.id for a in await second.store.agents()] == ["agent-before"]
    # An id given explicitly is never replaced.
    async with Coordinator.open(settings, register=True, agent_id="named") as named:
        assert named.agent_id == "named"
