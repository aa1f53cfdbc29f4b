"""The store: the only code that knows SQL. It offers the transitions the pool needs, not tables.

Every state change is a compare-and-swap on (id, state, version or fencing token) inside
`BEGIN IMMEDIATE`, and writes its event in the same transaction, so the log never disagrees with
the state it describes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from ..records import HELD_STATES, Agent, Event, Repo, Slot, SlotState
from .connection import Connection

SLOT_COLUMNS = frozenset(
    {
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
    }
)


@dataclass
class EventDraft:
    action: str
    outcome: str
    agent_id: str | None = None
    repo_id: int | None = None
    worktree_id: str | None = None
    branch: str | None = None
    duration_ms: float | None = None
    fencing_token: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _slot(row: sqlite3.Row) -> Slot:
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
    )


def _agent(row: sqlite3.Row) -> Agent:
    return Agent(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row is not a Mapping


def _event(row: sqlite3.Row) -> Event:
    data = {k: row[k] for k in row.keys()}  # noqa: SIM118
    data["detail"] = json.loads(data["detail"] or "{}")
    return Event(**data)


async def _append(conn: aiosqlite.Connection, draft: EventDraft, now: float) -> None:
    await conn.execute(
        "INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,"
        " fencing_token, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            draft.agent_id,
            draft.action,
            draft.repo_id,
            draft.worktree_id,
            draft.branch,
            draft.outcome,
            draft.duration_ms,
            draft.fencing_token,
            json.dumps(draft.detail, default=str, sort_keys=True),
        ),
    )


class Store:
    def __init__(self, conn: Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Store:
        return cls(await Connection.open(path), path)

    async def close(self) -> None:
        await self._conn.close()

    # ---- change detection -------------------------------------------------------------------

    async def data_version(self) -> int:
        """Changes whenever *another* connection commits (any process): a few µs to ask."""
        return await self._conn.scalar("PRAGMA data_version")

    # ---- events -----------------------------------------------------------------------------

    async def log(self, draft: EventDraft) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await _append(conn, draft, time.time())

        await self._conn.write(tx)

    async def events(
        self,
        *,
        after_id: int = 0,
        since_ts: float | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[Event]:
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after_id]
        if since_ts is not None:
            sql += " AND ts >= ?"
            args.append(since_ts)
        sql += " ORDER BY id DESC" if newest else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)

        async def tx(conn: aiosqlite.Connection) -> list[Event]:
            rows = await (await conn.execute(sql, args)).fetchall()
            return [_event(r) for r in rows]

        result = await self._conn.read(tx)
        return list(reversed(result)) if newest else result

    # ---- repositories -----------------------------------------------------------------------

    async def ensure_repo(self, path: str, pool_root: str) -> Repo:
        async def tx(conn: aiosqlite.Connection) -> Repo:
            await conn.execute(
                "INSERT INTO repos (path, pool_root, created_at) VALUES (?, ?, ?) ON CONFLICT(path) DO NOTHING",
                (path, pool_root, time.time()),
            )
            row = await (await conn.execute("SELECT * FROM repos WHERE path = ?", (path,))).fetchone()
            assert row is not None
            return Repo(id=row["id"], path=row["path"], pool_root=row["pool_root"])

        return await self._conn.write(tx)

    async def repos(self) -> list[Repo]:
        async def tx(conn: aiosqlite.Connection) -> list[Repo]:
            rows = await (await conn.execute("SELECT * FROM repos ORDER BY id")).fetchall()
            return [Repo(id=r["id"], path=r["path"], pool_root=r["pool_root"]) for r in rows]

        return await self._conn.read(tx)

    # ---- reads ------------------------------------------------------------------------------

    async def slots(self, repo_id: int | None = None) -> list[Slot]:
        async def tx(conn: aiosqlite.Connection) -> list[Slot]:
            if repo_id is None:
                cur = await conn.execute("SELECT * FROM slots ORDER BY id")
            else:
                cur = await conn.execute("SELECT * FROM slots WHERE repo_id = ? ORDER BY id", (repo_id,))
            return [_slot(r) for r in await cur.fetchall()]

        return await self._conn.read(tx)

    async def slot(self, slot_id: str) -> Slot | None:
        async def tx(conn: aiosqlite.Connection) -> Slot | None:
            row = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,))).fetchone()
            return _slot(row) if row else None

        return await self._conn.read(tx)

    async def agents(self) -> list[Agent]:
        async def tx(conn: aiosqlite.Connection) -> list[Agent]:
            rows = await (await conn.execute("SELECT * FROM agents ORDER BY id")).fetchall()
            return [_agent(r) for r in rows]

        return await self._conn.read(tx)

    async def agent(self, agent_id: str) -> Agent | None:
        async def tx(conn: aiosqlite.Connection) -> Agent | None:
            row = await (await conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,))).fetchone()
            return _agent(row) if row else None

        return await self._conn.read(tx)

    # ---- agents -----------------------------------------------------------------------------

    async def register_agent(self, agent: Agent) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute(
                "INSERT INTO agents (id, host, boot_id, pid, pid_create_time, server_pid, server_create_time,"
                " repo_id, status, note, started_at, last_heartbeat, lease_expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET host=excluded.host, boot_id=excluded.boot_id, pid=excluded.pid,"
                " pid_create_time=excluded.pid_create_time, server_pid=excluded.server_pid,"
                " server_create_time=excluded.server_create_time, repo_id=excluded.repo_id,"
                " status=excluded.status, started_at=excluded.started_at,"
                " last_heartbeat=excluded.last_heartbeat, lease_expires_at=excluded.lease_expires_at",
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
            await _append(
                conn,
                EventDraft(
                    action="register",
                    outcome="ok",
                    agent_id=agent.id,
                    repo_id=agent.repo_id,
                    detail={"pid": agent.pid, "server_pid": agent.server_pid, "host": agent.host},
                ),
                agent.started_at,
            )

        await self._conn.write(tx)

    async def heartbeat(
        self, agent_id: str, *, status: str | None, note: str | None, lease_s: float, server_pid: int
    ) -> tuple[Agent | None, int]:
        """Renew the agent's lease and the leases of the slots it holds. Returns (agent, slots renewed).

        Only the server that registered the agent renews it (server_pid), so a stale server cannot keep
        alive an id that a newer server took over.
        """
        now = time.time()
        until = now + lease_s

        async def tx(conn: aiosqlite.Connection) -> tuple[Agent | None, int]:
            sets = "last_heartbeat = ?, lease_expires_at = ?"
            args: list[Any] = [now, until]
            if status is not None:
                sets += ", status = ?"
                args.append(status)
            if note is not None:
                sets += ", note = ?"
                args.append(note)
            cur = await conn.execute(
                # Only fixed column names are interpolated; every value is bound.
                f"UPDATE agents SET {sets} WHERE id = ? AND server_pid = ?",  # noqa: S608
                (*args, agent_id, server_pid),
            )
            if cur.rowcount == 0:
                return None, 0
            cur = await conn.execute(
                "UPDATE slots SET lease_expires_at = ? WHERE owner = ? AND state IN ('BUSY', 'ALLOCATING')",
                (until, agent_id),
            )
            renewed = cur.rowcount
            row = await (await conn.execute("SELECT * FROM agents WHERE id = ?", (agent_id,))).fetchone()
            return (_agent(row) if row else None), renewed

        return await self._conn.write(tx)

    async def set_agent_status(
        self, agent_id: str, status: str, *, server_pid: int | None, event: EventDraft | None
    ) -> bool:
        async def tx(conn: aiosqlite.Connection) -> bool:
            if server_pid is None:
                cur = await conn.execute("UPDATE agents SET status = ? WHERE id = ?", (status, agent_id))
            else:
                cur = await conn.execute(
                    "UPDATE agents SET status = ? WHERE id = ? AND server_pid = ?",
                    (status, agent_id, server_pid),
                )
            if cur.rowcount and event is not None:
                await _append(conn, event, time.time())
            return cur.rowcount > 0

        return await self._conn.write(tx)

    # ---- allocation (two-phase) -------------------------------------------------------------

    async def holder_of_branch(self, repo_id: int, branch: str) -> Slot | None:
        async def tx(conn: aiosqlite.Connection) -> Slot | None:
            row = await (
                await conn.execute(
                    "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)",
                    (repo_id, branch, *HELD_STATES),
                )
            ).fetchone()
            return _slot(row) if row else None

        return await self._conn.read(tx)

    async def claim_free_slot(
        self,
        slot_id: str,
        expected_version: int,
        *,
        owner: str,
        branch: str,
        task: str | None,
        lease_s: float,
        event: EventDraft | None = None,
    ) -> Slot | None:
        """Phase 1, warm: CAS FREE → ALLOCATING with a new fencing token. None when the CAS lost.

        Raises `BranchHeld` with the holder when the branch was taken in the meantime.
        """
        now = time.time()

        async def tx(conn: aiosqlite.Connection) -> Slot | None:
            slot_row = await (await conn.execute("SELECT repo_id FROM slots WHERE id = ?", (slot_id,))).fetchone()
            if slot_row is None:
                return None
            await _raise_if_branch_held(conn, slot_row["repo_id"], branch)
            token = await _next_token(conn)
            cur = await conn.execute(
                "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
                " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
                " WHERE id = ? AND state = 'FREE' AND version = ?",
                (owner, branch, token, now + lease_s, now, task, slot_id, expected_version),
            )
            if cur.rowcount == 0:
                # Roll the token back with the rest: a lost CAS must not burn a number.
                raise _LostCas
            if event is not None:
                event.fencing_token = token
                event.worktree_id = slot_id
                await _append(conn, event, now)
            row = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,))).fetchone()
            return _slot(row) if row else None

        try:
            return await self._conn.write(tx)
        except _LostCas:
            return None

    async def claim_new_slot(
        self,
        repo: Repo,
        *,
        owner: str,
        branch: str,
        task: str | None,
        lease_s: float,
        pool_max: int,
        event: EventDraft | None = None,
    ) -> Slot | None:
        """Phase 1, cold: insert an ALLOCATING slot if the pool is below its maximum. None when full."""
        now = time.time()

        async def tx(conn: aiosqlite.Connection) -> Slot | None:
            await _raise_if_branch_held(conn, repo.id, branch)
            count_row = await (
                await conn.execute(
                    "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (repo.id,)
                )
            ).fetchone()
            if count_row is not None and int(count_row[0]) >= pool_max:
                return None
            slot_id = await _next_slot_id(conn, repo.pool_root)
            path = str(Path(repo.pool_root) / slot_id)
            token = await _next_token(conn)
            await conn.execute(
                "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
                " lease_expires_at, since, task, created_at) VALUES (?, ?, ?, 'ALLOCATING', 0, ?, ?, ?, ?, ?, ?, ?)",
                (slot_id, repo.id, path, owner, branch, token, now + lease_s, now, task, now),
            )
            if event is not None:
                event.fencing_token = token
                event.worktree_id = slot_id
                await _append(conn, event, now)
            row = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,))).fetchone()
            return _slot(row) if row else None

        return await self._conn.write(tx)

    async def transition(
        self,
        slot_id: str,
        *,
        expect_state: SlotState | Sequence[SlotState],
        expect_token: int | None = None,
        expect_version: int | None = None,
        changes: dict[str, Any] | None = None,
        delete: bool = False,
        events: Sequence[EventDraft] = (),
    ) -> Slot | None:
        """The general compare-and-swap: apply `changes` (or delete) only if the row still matches.

        Returns the new row (or the deleted one), None when the CAS lost.
        """
        states = [expect_state] if isinstance(expect_state, SlotState) else list(expect_state)
        now = time.time()

        async def tx(conn: aiosqlite.Connection) -> Slot | None:
            where = f"id = ? AND state IN ({','.join('?' * len(states))})"
            args: list[Any] = [slot_id, *[s.value for s in states]]
            if expect_token is not None:
                where += " AND fencing_token = ?"
                args.append(expect_token)
            if expect_version is not None:
                where += " AND version = ?"
                args.append(expect_version)
            row = await (await conn.execute(f"SELECT * FROM slots WHERE {where}", args)).fetchone()  # noqa: S608
            if row is None:
                return None
            before = _slot(row)
            if delete:
                await conn.execute("DELETE FROM slots WHERE id = ?", (slot_id,))
                after = before
            else:
                values = dict(changes or {})
                values = {k: (v.value if isinstance(v, SlotState) else v) for k, v in values.items()}
                unknown = set(values) - SLOT_COLUMNS
                if unknown:
                    raise ValueError(f"not slot columns: {sorted(unknown)}")
                sets = ", ".join([f"{k} = ?" for k in values] + ["version = version + 1"])
                await conn.execute(f"UPDATE slots SET {sets} WHERE id = ?", (*values.values(), slot_id))  # noqa: S608
                new_row = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,))).fetchone()
                assert new_row is not None
                after = _slot(new_row)
            for draft in events:
                if draft.worktree_id is None:
                    draft.worktree_id = slot_id
                if draft.fencing_token is None:
                    draft.fencing_token = before.fencing_token
                await _append(conn, draft, now)
            return after

        return await self._conn.write(tx)

    async def insert_slot(
        self, repo: Repo, path: str, *, state: SlotState, branch: str | None, event: EventDraft
    ) -> Slot:
        """Adopt a worktree the store did not know (validation, import)."""
        now = time.time()

        async def tx(conn: aiosqlite.Connection) -> Slot:
            slot_id = await _next_slot_id(conn, repo.pool_root)
            await conn.execute(
                "INSERT INTO slots (id, repo_id, path, state, version, branch, released_at, setup_done,"
                " created_at) VALUES (?, ?, ?, ?, 0, ?, ?, 1, ?)",
                (slot_id, repo.id, path, state.value, branch, now, now),
            )
            event.worktree_id = slot_id
            await _append(conn, event, now)
            row = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,))).fetchone()
            assert row is not None
            return _slot(row)

        return await self._conn.write(tx)

    async def adopt_slots(
        self, repo: Repo, adoptions: Sequence[SlotAdoption], *, lease_s: float, agents: Sequence[Agent] = ()
    ) -> list[Slot]:
        """Take existing worktrees into the pool in one transaction: all of them or none (pool import).

        A BUSY adoption gets a new fencing token and a lease of `lease_s`, like a grant. `agents` are
        holders to record when no agent of that id is registered (a registered one is never
        overwritten). A path named like a slot (``wt-07``) keeps that id when it is free, and the slot
        sequence moves past every such name, so `claim_new_slot` never picks a path already taken.
        Raises `AdoptionConflictError` for a path the store knows and `BranchHeldError` for a branch
        held by another slot; nothing is written then.
        """
        now = time.time()

        async def tx(conn: aiosqlite.Connection) -> list[Slot]:
            for agent in agents:
                await conn.execute(
                    "INSERT INTO agents (id, host, boot_id, pid, pid_create_time, server_pid, server_create_time,"
                    " repo_id, status, note, started_at, last_heartbeat, lease_expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
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
            named: dict[int, int] = {}  # adoption index -> number taken from its directory name
            for i, a in enumerate(adoptions):
                name = Path(a.path).name
                if name.startswith("wt-") and name[3:].isdigit() and name == f"wt-{int(name[3:]):02d}":
                    named[i] = int(name[3:])
            if named:
                await conn.execute(
                    "UPDATE meta SET value = MAX(value, ?) WHERE key = 'slot_seq'", (max(named.values()),)
                )
            taken: set[str] = set()
            result: list[Slot] = []
            for i, a in enumerate(adoptions):
                known = await (await conn.execute("SELECT id FROM slots WHERE path = ?", (a.path,))).fetchone()
                if known is not None:
                    raise AdoptionConflictError(a.path, f"already in the pool as {known['id']}")
                if a.state == SlotState.BUSY and a.branch is not None:
                    await _raise_if_branch_held(conn, repo.id, a.branch)
                slot_id = f"wt-{named[i]:02d}" if i in named else None
                while slot_id is None or slot_id in taken or await _slot_exists(conn, slot_id):
                    seq_row = await (
                        await conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value")
                    ).fetchone()
                    assert seq_row is not None
                    slot_id = f"wt-{int(seq_row[0]):02d}"
                taken.add(slot_id)
                held = a.state == SlotState.BUSY
                token = await _next_token(conn) if held else None
                await conn.execute(
                    "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
                    " lease_expires_at, since, released_at, setup_done, created_at)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (
                        slot_id,
                        repo.id,
                        a.path,
                        a.state.value,
                        a.owner if held else None,
                        a.branch,
                        token,
                        now + lease_s if held else None,
                        now if held else None,
                        None if held else now,
                        now,
                    ),
                )
                a.event.worktree_id = slot_id
                a.event.fencing_token = token
                await _append(conn, a.event, now)
                row = await (await conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,))).fetchone()
                assert row is not None
                result.append(_slot(row))
            return result

        return await self._conn.write(tx)

    async def integrity_check(self) -> str:
        async def tx(conn: aiosqlite.Connection) -> str:
            row = await (await conn.execute("PRAGMA integrity_check")).fetchone()
            return str(row[0]) if row else "no answer"

        return await self._conn.read(tx)

    # ---- cursors (exactly one process handles each event, e.g. the activity mirror) ----------

    async def claim_events(self, cursor: str, upto: int) -> tuple[int, int] | None:
        """Move the named cursor to `upto` by CAS; return the claimed range (after, upto], or None when
        another process already claimed past it. Each event is thereby handled by exactly one process."""

        async def tx(conn: aiosqlite.Connection) -> tuple[int, int] | None:
            key = f"cursor:{cursor}"
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, (SELECT COALESCE(MAX(id), 0) FROM events WHERE id < ?))"
                " ON CONFLICT(key) DO NOTHING",
                (key, upto),
            )
            row = await (await conn.execute("SELECT value FROM meta WHERE key = ?", (key,))).fetchone()
            after = int(row[0]) if row else 0
            if after >= upto:
                return None
            await conn.execute("UPDATE meta SET value = ? WHERE key = ? AND value = ?", (upto, key, after))
            return after, upto

        return await self._conn.write(tx)

    # ---- leases (one background validator at a time) ----------------------------------------

    async def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew a named lease by CAS; True when `holder` has it until now + ttl."""
        now = time.time()

        async def tx(conn: aiosqlite.Connection) -> bool:
            await conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (name, holder, now + ttl_s),
            )
            cur = await conn.execute(
                "UPDATE leases SET holder = ?, expires_at = ?, version = version + 1"
                " WHERE name = ? AND (holder = ? OR expires_at < ?)",
                (holder, now + ttl_s, name, holder, now),
            )
            return cur.rowcount > 0

        return await self._conn.write(tx)

    async def release_lease(self, name: str, holder: str) -> None:
        async def tx(conn: aiosqlite.Connection) -> None:
            await conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._conn.write(tx)


class _LostCas(Exception):
    pass


class BranchHeldError(Exception):
    def __init__(self, holder: Slot) -> None:
        super().__init__(holder.branch)
        self.holder = holder


async def _raise_if_branch_held(conn: aiosqlite.Connection, repo_id: int, branch: str) -> None:
    row = await (
        await conn.execute(
            "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)",
            (repo_id, branch, *HELD_STATES),
        )
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


async def _next_slot_id(conn: aiosqlite.Connection, pool_root: str) -> str:
    """The next `wt-NN` whose id and default path are both unused (adopted worktrees keep odd names)."""
    while True:
        row = await (
            await conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value")
        ).fetchone()
        assert row is not None
        slot_id = f"wt-{int(row[0]):02d}"
        path = str(Path(pool_root) / slot_id)
        taken = await (await conn.execute("SELECT 1 FROM slots WHERE id = ? OR path = ?", (slot_id, path))).fetchone()
        if taken is None:
            return slot_id


async def _slot_exists(conn: aiosqlite.Connection, slot_id: str) -> bool:
    return await (await conn.execute("SELECT 1 FROM slots WHERE id = ?", (slot_id,))).fetchone() is not None


async def _next_token(conn: aiosqlite.Connection) -> int:
    row = await (
        await conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value")
    ).fetchone()
    assert row is not None
    return int(row[0])
