"""Prototype (for measurement only): the store with one thread hop per transaction.

agent-coord's `Connection` runs every statement of a transaction as its own round trip to the
aiosqlite thread (BEGIN, each execute, each fetch, COMMIT: ~8 hops per transaction, ~31 per
allocate+release cycle). Between hops the process may be descheduled while it holds SQLite's write
lock, so on a busy machine every other process waits in busy_timeout's sleeps.

This prototype keeps the same SQL, the same schema, the same `BEGIN IMMEDIATE` … `COMMIT` and the
same retry on SQLITE_BUSY, but runs the whole transaction as one synchronous function in one worker
thread call (`anyio.to_thread.run_sync`). It implements just what `bench.store_cas` needs (slots,
claim_free_slot, claim_new_slot, transition) as subclass overrides of `Store`, so the bench can put
"before" and "after" side by side in one run. The proposed engine change is the same shape for
every method of the store (see BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio

from server.engine.records import HELD_STATES, Repo, Slot, SlotState
from server.engine.store import BranchHeldError, EventDraft, Store, StoreBusyError
from server.engine.store.connection import BUSY_RETRIES, BUSY_TIMEOUT_MS, _is_busy

# Self-contained on purpose (the store's private helpers move as the engine is refactored).
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


def _slot(row: sqlite3.Row) -> Slot:
    """A `Slot` from a `slots` row, whatever the columns' order."""
    data = {f.name: row[f.name] for f in dataclasses.fields(Slot)}
    data["state"] = SlotState(data["state"])
    data["setup_done"] = bool(data["setup_done"])
    return Slot(**data)


T = TypeVar("T")


class OneHopConnection:
    """A stdlib sqlite3 connection used from worker threads, one transaction per thread call."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        self._lock = anyio.Lock()
        self._thread_lock = threading.Lock()
        self.busy_retried = 0

    def _run(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        with self._thread_lock:
            self._db.execute(begin)
            try:
                result = fn(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            return result

    async def _tx(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        for attempt in range(BUSY_RETRIES):
            try:
                async with self._lock:
                    return await anyio.to_thread.run_sync(self._run, fn, begin)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self.busy_retried += 1
                await anyio.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise StoreBusyError("the database stayed locked through every retry")

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._tx(fn, "BEGIN IMMEDIATE")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._tx(fn, "BEGIN")

    async def close(self) -> None:
        self._db.close()


class _LostCasError(Exception):
    pass


def _append(conn: sqlite3.Connection, draft: EventDraft, now: float) -> None:
    import json

    conn.execute(
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


def _raise_if_branch_held(conn: sqlite3.Connection, repo_id: int, branch: str) -> None:
    row = conn.execute(
        "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)", (repo_id, branch, *HELD_STATES)
    ).fetchone()
    if row is not None:
        raise BranchHeldError(_slot(row))


def _next_token(conn: sqlite3.Connection) -> int:
    row = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value").fetchone()
    return int(row[0])


class OneHopStore(Store):
    """`Store` with the four methods the CAS bench uses rewritten as one-hop synchronous transactions."""

    def __init__(self, conn: OneHopConnection, path: Path) -> None:  # type: ignore[override]
        self._conn = conn  # type: ignore[assignment]
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> OneHopStore:
        # The schema is made by the real store first (the bench does), so no migration here.
        return cls(OneHopConnection(path), path)

    async def ensure_repo(self, path: str, pool_root: str) -> Repo:
        def tx(conn: sqlite3.Connection) -> Repo:
            conn.execute(
                "INSERT INTO repos (path, pool_root, created_at) VALUES (?, ?, ?) ON CONFLICT(path) DO NOTHING",
                (path, pool_root, time.time()),
            )
            row = conn.execute("SELECT * FROM repos WHERE path = ?", (path,)).fetchone()
            return Repo(id=row["id"], path=row["path"], pool_root=row["pool_root"])

        return await self._conn.write(tx)  # type: ignore[arg-type]

    async def slots(self, repo_id: int | None = None) -> list[Slot]:
        def tx(conn: sqlite3.Connection) -> list[Slot]:
            if repo_id is None:
                rows = conn.execute("SELECT * FROM slots ORDER BY id").fetchall()
            else:
                rows = conn.execute("SELECT * FROM slots WHERE repo_id = ? ORDER BY id", (repo_id,)).fetchall()
            return [_slot(r) for r in rows]

        return await self._conn.read(tx)  # type: ignore[arg-type]

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
        now = time.time()

        def tx(conn: sqlite3.Connection) -> Slot | None:
            slot_row = conn.execute("SELECT repo_id FROM slots WHERE id = ?", (slot_id,)).fetchone()
            if slot_row is None:
                return None
            _raise_if_branch_held(conn, slot_row["repo_id"], branch)
            token = _next_token(conn)
            cur = conn.execute(
                "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
                " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
                " WHERE id = ? AND state = 'FREE' AND version = ?",
                (owner, branch, token, now + lease_s, now, task, slot_id, expected_version),
            )
            if cur.rowcount == 0:
                raise _LostCasError
            if event is not None:
                event.fencing_token = token
                event.worktree_id = slot_id
                _append(conn, event, now)
            row = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
            return _slot(row) if row else None

        try:
            return await self._conn.write(tx)  # type: ignore[arg-type]
        except _LostCasError:
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
        now = time.time()

        def tx(conn: sqlite3.Connection) -> Slot | None:
            _raise_if_branch_held(conn, repo.id, branch)
            count = conn.execute(
                "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (repo.id,)
            ).fetchone()
            if count is not None and int(count[0]) >= pool_max:
                return None
            seq = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()
            slot_id = f"wt-{int(seq[0]):02d}"
            path = str(Path(repo.pool_root) / slot_id)
            token = _next_token(conn)
            conn.execute(
                "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
                " lease_expires_at, since, task, created_at) VALUES (?, ?, ?, 'ALLOCATING', 0, ?, ?, ?, ?, ?, ?, ?)",
                (slot_id, repo.id, path, owner, branch, token, now + lease_s, now, task, now),
            )
            if event is not None:
                event.fencing_token = token
                event.worktree_id = slot_id
                _append(conn, event, now)
            row = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
            return _slot(row) if row else None

        return await self._conn.write(tx)  # type: ignore[arg-type]

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
        states = [expect_state] if isinstance(expect_state, SlotState) else list(expect_state)
        now = time.time()

        def tx(conn: sqlite3.Connection) -> Slot | None:
            where = f"id = ? AND state IN ({','.join('?' * len(states))})"
            args: list[Any] = [slot_id, *[s.value for s in states]]
            if expect_token is not None:
                where += " AND fencing_token = ?"
                args.append(expect_token)
            if expect_version is not None:
                where += " AND version = ?"
                args.append(expect_version)
            row = conn.execute(f"SELECT * FROM slots WHERE {where}", args).fetchone()
            if row is None:
                return None
            before = _slot(row)
            if delete:
                conn.execute("DELETE FROM slots WHERE id = ?", (slot_id,))
                after = before
            else:
                values = {k: (v.value if isinstance(v, SlotState) else v) for k, v in (changes or {}).items()}
                unknown = set(values) - SLOT_COLUMNS
                if unknown:
                    raise ValueError(f"not slot columns: {sorted(unknown)}")
                sets = ", ".join([f"{k} = ?" for k in values] + ["version = version + 1"])
                conn.execute(f"UPDATE slots SET {sets} WHERE id = ?", (*values.values(), slot_id))
                after = _slot(conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone())
            for draft in events:
                if draft.worktree_id is None:
                    draft.worktree_id = slot_id
                if draft.fencing_token is None:
                    draft.fencing_token = before.fencing_token
                _append(conn, draft, now)
            return after

        return await self._conn.write(tx)  # type: ignore[arg-type]


class PickInTxStore(OneHopStore):
    """One hop per transaction, and the slot is chosen inside the claiming transaction.

    `Pool._claim` reads the slots, picks the warmest FREE one and then CASes it; between the read and
    the CAS another process takes the same slot (every process prefers the same warmest slot), the CAS
    is lost and the whole round is retried. Choosing inside `BEGIN IMMEDIATE` cannot lose: the write
    lock is held from the choice to the update, so one transaction does what took two or more.
    """

    async def claim_warmest_or_new(
        self, repo: Repo, *, owner: str, branch: str, task: str | None, lease_s: float, pool_max: int, warmest: bool
    ) -> Slot | None:
        now = time.time()
        order = "DESC" if warmest else "ASC"

        def tx(conn: sqlite3.Connection) -> Slot | None:
            _raise_if_branch_held(conn, repo.id, branch)
            free = conn.execute(
                "SELECT id FROM slots WHERE repo_id = ? AND state = 'FREE'"
                f" ORDER BY COALESCE(released_at, 0) {order}, id LIMIT 1",
                (repo.id,),
            ).fetchone()
            token = _next_token(conn)
            if free is not None:
                row = conn.execute(
                    "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
                    " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
                    " WHERE id = ? AND state = 'FREE' RETURNING *",
                    (owner, branch, token, now + lease_s, now, task, free["id"]),
                ).fetchone()
                return _slot(row)
            count = conn.execute(
                "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (repo.id,)
            ).fetchone()
            if int(count[0]) >= pool_max:
                raise _LostCasError  # roll the token back: a full pool must not burn a number
            seq = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()
            slot_id = f"wt-{int(seq[0]):02d}"
            row = conn.execute(
                "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
                " lease_expires_at, since, task, created_at) VALUES (?, ?, ?, 'ALLOCATING', 0, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING *",
                (
                    slot_id,
                    repo.id,
                    str(Path(repo.pool_root) / slot_id),
                    owner,
                    branch,
                    token,
                    now + lease_s,
                    now,
                    task,
                    now,
                ),
            ).fetchone()
            return _slot(row)

        try:
            return await self._conn.write(tx)  # type: ignore[arg-type]
        except _LostCasError:
            return None
