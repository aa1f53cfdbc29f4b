"""Rows to records, event drafts, and the SQL helpers the transitions share."""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from agent_coord.engine.store.dialect import Db, StoreConnection, sql
from agent_coord.engine.store.records import HELD_STATES, Agent, Event, Slot, SlotState

# The columns a transition may set, in the order of the PostgreSQL transition function's parameters.
SLOT_COLUMN_ORDER = (
    "state",
    "owner",
    "branch",
    "fencing_token",
    "lease_expires_at",
    "since",
    "released_at",
    "task",
    "rescue_ref",
    "setup_done",
)
SLOT_COLUMNS = frozenset(SLOT_COLUMN_ORDER)


@dataclass
class EventDraft:
    action: str
    outcome: str
    _: KW_ONLY  # the rest by name: a row of positional Nones is unreadable
    agent_id: str | None = None
    repo_id: int | None = None
    worktree_id: str | None = None
    branch: str | None = None
    duration_ms: float | None = None
    fencing_token: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _slot(row: Any) -> Slot:
    return Slot(
        id=row["id"],
        repo_id=row["repo_id"],
        path=row["path"],
        state=SlotState(row["state"]),
        version=row["version"],
        owner=row["owner"],
        branch=row["branch"],
        fencing_token=row["fencing_token"],
        lease_expires_at=row["lease_expires_at"],
        since=row["since"],
        released_at=row["released_at"],
        task=row["task"],
        rescue_ref=row["rescue_ref"],
        setup_done=bool(row["setup_done"]),
        created_at=row["created_at"],
        host=row["host"],
        project=row["project"],
    )


def _agent(row: Any) -> Agent:
    return Agent(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row is not a Mapping


def _event(row: Any) -> Event:
    data = {k: row[k] for k in row.keys()}  # noqa: SIM118
    data["detail"] = json.loads(data["detail"] or "{}")
    return Event(**data)


# Every agent read: the row, and the starts since boot recorded for the very processes it names.
AGENT_SELECT = (
    # The columns by name: a stray column of the same name in `agents` must never shadow the checked one.
    "SELECT a.id, a.host, a.boot_id, a.pid, a.pid_create_time, a.server_pid, a.server_create_time,"
    " a.repo_id, a.status, a.note, a.started_at, a.last_heartbeat, a.lease_expires_at,"
    " CASE WHEN s.pid = a.pid AND s.pid_create_time = a.pid_create_time THEN s.pid_start_s END AS pid_start_s,"
    " CASE WHEN s.server_pid = a.server_pid AND s.server_create_time = a.server_create_time"
    " THEN s.server_start_s END AS server_start_s,"
    " CASE WHEN o.pid = a.pid AND o.pid_create_time = a.pid_create_time THEN o.origin END AS origin"
    " FROM agents a LEFT JOIN agent_starts s ON s.agent_id = a.id LEFT JOIN agent_origins o ON o.agent_id = a.id"
)


def upsert(conn: Db, table: str, key: str, row: dict[str, Any]) -> None:
    """Insert `row`, or update every other column of the row with the same `key`. One statement for
    both engines (SQLite has had `ON CONFLICT … DO UPDATE` since 3.24)."""
    columns = ", ".join(row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in row if c != key)
    conn.execute(
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})"  # noqa: S608 (names are ours)
        f" ON CONFLICT ({key}) DO UPDATE SET {updates}",
        tuple(row.values()),
    )


def _record_starts(conn: Db, agent: Agent) -> None:
    upsert(
        conn,
        "agent_starts",
        "agent_id",
        {
            "agent_id": agent.id,
            "pid": agent.pid,
            "pid_create_time": agent.pid_create_time,
            "pid_start_s": agent.pid_start_s,
            "server_pid": agent.server_pid,
            "server_create_time": agent.server_create_time,
            "server_start_s": agent.server_start_s,
        },
    )


def _record_origin(conn: Db, agent: Agent) -> None:
    if agent.origin is None:
        conn.execute("DELETE FROM agent_origins WHERE agent_id = ?", (agent.id,))
        return
    upsert(
        conn,
        "agent_origins",
        "agent_id",
        {"agent_id": agent.id, "origin": agent.origin, "pid": agent.pid, "pid_create_time": agent.pid_create_time},
    )


def _insert_agent(conn: Db, agent: Agent, *, on_conflict: str) -> None:
    """Insert an agent row; `on_conflict` (fixed text from our code) says what an existing id gets."""
    columns = (
        "id, host, boot_id, pid, pid_create_time, server_pid, server_create_time, repo_id, status, note,"
        " started_at, last_heartbeat, lease_expires_at"
    )
    sql = f"INSERT INTO agents ({columns}) VALUES ({', '.join('?' * 13)}) ON CONFLICT(id) {on_conflict}"  # noqa: S608
    conn.execute(
        sql,
        (
            agent.id,
            agent.host,
            agent.boot_id,
            agent.pid,
            agent.pid_create_time,
            agent.server_pid,
            agent.server_create_time,
            agent.repo_id,
            agent.status,
            agent.note,
            agent.started_at,
            agent.last_heartbeat,
            agent.lease_expires_at,
        ),
    )


def _event_values(draft: EventDraft) -> tuple[Any, ...]:
    """An event's columns after `ts`, as `_append` writes them (and schema_pg's functions, in arrays)."""
    return (
        draft.agent_id,
        draft.action,
        draft.repo_id,
        draft.worktree_id,
        draft.branch,
        draft.outcome,
        draft.duration_ms,
        draft.fencing_token,
        json.dumps(draft.detail, default=str, sort_keys=True),
    )


def _append(conn: Db, draft: EventDraft, now: float) -> None:
    conn.execute(
        "INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,"
        " fencing_token, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (now, *_event_values(draft)),
    )


class BranchHeldError(Exception):
    def __init__(self, holder: Slot) -> None:
        super().__init__(holder.branch)
        self.holder = holder


def _raise_if_branch_held(conn: Db, repo_id: int, branch: str) -> None:
    """A live allocation of `branch` in this repository or in any clone of its project, on any host."""
    row = conn.execute(
        "SELECT * FROM slots WHERE branch = ? AND state IN (?, ?, ?)"
        " AND (repo_id = ? OR project = (SELECT project FROM repos WHERE id = ?)) ORDER BY repo_id != ? LIMIT 1",
        (branch, *HELD_STATES, repo_id, repo_id, repo_id),
    ).fetchone()
    if row is not None:
        raise BranchHeldError(_slot(row))


@dataclass
class SlotAdoption:
    """One worktree for `Store.adopt_slots`: FREE, BUSY (with `owner`) or QUARANTINED."""

    path: str
    state: SlotState
    branch: str | None
    event: EventDraft  # worktree_id and fencing_token are filled in by the store
    owner: str | None = None


class AdoptionConflictError(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _next_slot_id(conn: Db, pool_root: str) -> str:
    """The next `wt-NN` whose id and default path are both unused (adopted worktrees keep odd names)."""
    while True:
        row = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()
        assert row is not None
        slot_id = f"wt-{int(row[0]):02d}"
        path = str(Path(pool_root) / slot_id)
        taken = conn.execute("SELECT 1 FROM slots WHERE id = ? OR path = ?", (slot_id, path)).fetchone()
        if taken is None:
            return slot_id


def _slot_by_id(conn: Db, slot_id: str) -> Slot | None:
    row = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
    return _slot(row) if row else None


def _slot_exists(conn: Db, slot_id: str) -> bool:
    return conn.execute("SELECT 1 FROM slots WHERE id = ?", (slot_id,)).fetchone() is not None


def _next_token(conn: Db) -> int:
    """The next fencing token: strictly greater than every one handed out before."""
    row = conn.execute(
        sql(
            conn,
            sqlite="UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value",
            postgresql="SELECT nextval('fencing_tokens')",
        )
    ).fetchone()
    assert row is not None
    return int(row[0])


class _Tables:
    """What every part of the store shares: one connection (see connection.py for its rules)."""

    _conn: StoreConnection
