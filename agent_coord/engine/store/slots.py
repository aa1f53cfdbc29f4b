"""Repositories and slots: the compare-and-swap transitions of allocation and release."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from agent_coord.engine.store.dialect import Db, is_postgres
from agent_coord.engine.store.records import Repo, Slot, SlotState, SlotWorker, WorkerProcess
from agent_coord.engine.store.rows import (
    SLOT_COLUMN_ORDER,
    SLOT_COLUMNS,
    BranchHeldError,
    EventDraft,
    _append,
    _event_values,
    _next_slot_id,
    _next_token,
    _raise_if_branch_held,
    _slot,
    _slot_by_id,
    _Tables,
)
from agent_coord.engine.store.schema import SQLITE_NOW

if TYPE_CHECKING:
    from agent_coord.engine.store.pg_connection import PgConnection, PgRow


class SlotTransitions(_Tables):
    """Every change is a CAS on (id, state, version or fencing token) that writes its events alongside.

    On PostgreSQL the three hot ones (claim_any_free_slot, claim_new_slot, transition) run as functions
    in the server (schema_pg's migration 8, through `PgConnection.call`): one round trip holds the
    cluster-wide writer lock for the function's run, not across the 4 to 6 round trips of a transaction
    function. The Python transaction function is the SQLite path (and the reference); the
    engine-parametrised tests keep the two equal.
    """

    def _pg(self) -> PgConnection | None:
        """The PostgreSQL connection when the store runs on one: the hot paths then call its functions."""
        return cast("PgConnection", self._conn) if self._conn.postgres else None

    async def ensure_repo(
        self, path: str, pool_root: str, *, host: str | None = None, project: str | None = None
    ) -> Repo:
        """The repository row of the clone at `path` on `host`, made or brought up to date: a row of an
        earlier version (no host yet) is this host's; `project` is recorded unless a live branch of
        this clone is held under that project elsewhere (then the row keeps its project, and the two
        must be reconciled by a person: see docs/hosts.md). Its slots follow the row. On SQLite (one
        host per file) a row at `path` recorded under another host id is this host's."""
        single_host = not self._conn.postgres

        def tx(conn: Db) -> Repo:
            row = conn.execute("SELECT * FROM repos WHERE path = ? AND host = ?", (path, host)).fetchone()
            if row is None:
                where = "path = ?" if single_host else "path = ? AND host IS NULL"
                row = conn.execute(f"SELECT * FROM repos WHERE {where}", (path,)).fetchone()  # noqa: S608
            if row is None:
                return _repo(
                    conn.execute(
                        "INSERT INTO repos (path, pool_root, created_at, host, project) VALUES (?, ?, ?, ?, ?)"
                        " RETURNING *",
                        (path, pool_root, time.time(), host, project),
                    ).fetchone()
                )
            keep = row["project"] if project is None or _project_taken(conn, row["id"], project) else project
            if row["host"] != host or row["project"] != keep:
                conn.execute("UPDATE repos SET host = ?, project = ? WHERE id = ?", (host, keep, row["id"]))
                conn.execute("UPDATE slots SET host = ?, project = ? WHERE repo_id = ?", (host, keep, row["id"]))
                row = conn.execute("SELECT * FROM repos WHERE id = ?", (row["id"],)).fetchone()
            return _repo(row)

        return await self._conn.write(tx)

    async def repos(self) -> list[Repo]:
        """Every repository of every host (a caller that touches directories keeps its own host's)."""

        def tx(conn: Db) -> list[Repo]:
            return [_repo(r) for r in conn.execute("SELECT * FROM repos ORDER BY id").fetchall()]

        return await self._conn.read(tx)

    # ---- reads ------------------------------------------------------------------------------

    async def slots(self, repo_id: int | None = None) -> list[Slot]:
        def tx(conn: Db) -> list[Slot]:
            if repo_id is None:
                cur = conn.execute("SELECT * FROM slots ORDER BY id")
            else:
                cur = conn.execute("SELECT * FROM slots WHERE repo_id = ? ORDER BY id", (repo_id,))
            return [_slot(r) for r in cur.fetchall()]

        return await self._conn.read(tx, quick=True)

    async def slot(self, slot_id: str) -> Slot | None:
        def tx(conn: Db) -> Slot | None:
            return _slot_by_id(conn, slot_id)

        return await self._conn.read(tx, quick=True)

    async def claim_any_free_slot(
        self,
        repo_id: int,
        *,
        paths: Sequence[str],
        warmest: bool,
        owner: str,
        branch: str,
        task: str | None,
        lease_s: float,
        worker: WorkerProcess | None = None,
    ) -> Slot | None:
        """Phase 1, warm: pick a FREE slot among `paths` and CAS it to ALLOCATING, in one transaction,
        with `worker` recorded as the process doing the allocation (validate/held.py).

        Choosing inside `BEGIN IMMEDIATE` means the claim cannot lose to another process while a FREE
        slot exists (agents no longer all race for the same one). `warmest` picks the most recently
        released slot, otherwise the least. None when no FREE slot is left.
        """
        now = time.time()
        order = "DESC" if warmest else "ASC"

        def tx(conn: Db) -> Slot | None:
            _raise_if_branch_held(conn, repo_id, branch)
            marks = ",".join("?" * len(paths))
            row = conn.execute(
                f"SELECT id FROM slots WHERE repo_id = ? AND state = 'FREE' AND path IN ({marks})"  # noqa: S608
                f" ORDER BY COALESCE(released_at, 0) {order}, id LIMIT 1",
                (repo_id, *paths),
            ).fetchone()
            if row is None:
                return None
            _to_allocating(conn, row["id"], None, owner, branch, task, now, lease_s)
            claimed = _slot_by_id(conn, row["id"])
            if claimed is not None and worker is not None:
                _record_worker(conn, claimed, worker, now)
            return claimed

        if not paths:
            return None
        if pg := self._pg():
            args = (repo_id, list(paths), warmest, owner, branch, task, now, now + lease_s)
            if worker is None:
                return _claimed(await pg.call(PG_CLAIM_ANY, args))
            return _claimed(await pg.call(PG_CLAIM_ANY_BY, (*args, *_worker_args(worker))))
        return await self._conn.write(tx, quick=True)

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
        worker: WorkerProcess | None = None,
    ) -> Slot | None:
        """Phase 1, cold: insert an ALLOCATING slot if the pool is below its maximum (None when full), with
        `worker` recorded as the process doing the allocation."""
        now = time.time()

        def tx(conn: Db) -> Slot | None:
            _raise_if_branch_held(conn, repo.id, branch)
            count_row = conn.execute(
                "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (repo.id,)
            ).fetchone()
            if count_row is not None and int(count_row[0]) >= pool_max:
                return None
            slot_id = _next_slot_id(conn, repo.pool_root)
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
            claimed = _slot_by_id(conn, slot_id)
            if claimed is not None and worker is not None:
                _record_worker(conn, claimed, worker, now)
            return claimed

        if pg := self._pg():
            prefix = str(Path(repo.pool_root) / "x")[:-1]  # + a slot id: str(Path(pool_root) / slot_id)
            args = (repo.id, prefix, pool_max, owner, branch, task, now, now + lease_s, *pg_event_arrays([event]))
            if worker is None:
                rows = await pg.call(PG_CLAIM_NEW, args)
            else:
                rows = await pg.call(PG_CLAIM_NEW_BY, (*args, *_worker_args(worker)))
            claimed = _claimed(rows)
            if claimed is not None and event is not None:
                event.fencing_token = claimed.fencing_token
                event.worktree_id = claimed.id
            return claimed
        return await self._conn.write(tx, quick=True)

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
        worker: WorkerProcess | None = None,
    ) -> Slot | None:
        """The general compare-and-swap: apply `changes` (or delete) only if the row still matches.
        `worker`: the process doing the transition this begins (into ALLOCATING or RELEASING), recorded in
        the same transaction, so that no moment exists where it is judged by another.

        Returns the new row (or the deleted one), None when the CAS lost.
        """
        states = [expect_state] if isinstance(expect_state, SlotState) else list(expect_state)
        now = time.time()

        def tx(conn: Db) -> Slot | None:
            where = f"id = ? AND state IN ({','.join('?' * len(states))})"
            args: list[Any] = [slot_id, *[s.value for s in states]]
            if expect_token is not None:
                where += " AND fencing_token = ?"
                args.append(expect_token)
            if expect_version is not None:
                where += " AND version = ?"
                args.append(expect_version)
            row = conn.execute(f"SELECT * FROM slots WHERE {where}", args).fetchone()  # noqa: S608
            if row is None:
                return None
            before = _slot(row)
            if delete:
                conn.execute("DELETE FROM slots WHERE id = ?", (slot_id,))
                after = before
            else:
                values = dict(changes or {})
                values = {k: (v.value if isinstance(v, SlotState) else v) for k, v in values.items()}
                unknown = set(values) - SLOT_COLUMNS
                if unknown:
                    raise ValueError(f"not slot columns: {sorted(unknown)}")
                sets = ", ".join([f"{k} = ?" for k in values] + ["version = version + 1"])
                conn.execute(f"UPDATE slots SET {sets} WHERE id = ?", (*values.values(), slot_id))  # noqa: S608
                updated = _slot_by_id(conn, slot_id)
                assert updated is not None
                after = updated
                if worker is not None and after.state in (SlotState.ALLOCATING, SlotState.RELEASING):
                    _record_worker(conn, after, worker, now)
            for draft in events:
                if draft.worktree_id is None:
                    draft.worktree_id = slot_id
                if draft.fencing_token is None:
                    draft.fencing_token = before.fencing_token
                _append(conn, draft, now)
            return after

        values = {k: (v.value if isinstance(v, SlotState) else v) for k, v in (changes or {}).items()}
        pg = self._pg()
        if pg is None or set(values) - SLOT_COLUMNS:  # unknown columns: the Python path says which
            return await self._conn.write(tx, quick=True)
        args = (
            slot_id,
            [s.value for s in states],
            expect_token,
            expect_version,
            delete,
            list(values),
            *(_value(values.get(column)) for column in SLOT_COLUMN_ORDER),
            now,
            *pg_event_arrays(events),
        )
        if worker is None:
            rows = await pg.call(PG_TRANSITION, args)
        else:
            rows = await pg.call(PG_TRANSITION_BY, (*args, *_worker_args(worker)))
        if not rows:
            return None
        before = _slot(rows[0])
        for draft in events:
            if draft.worktree_id is None:
                draft.worktree_id = slot_id
            if draft.fencing_token is None:
                draft.fencing_token = before.fencing_token
        return _slot(rows[-1])

    async def worker(self, slot: Slot) -> SlotWorker | None:
        """`slot`'s transition in flight as marked, with the process doing it once it recorded itself;
        None for a transition marked before this table existed."""

        def tx(conn: Db) -> SlotWorker | None:
            row = conn.execute(
                f"SELECT s.state, {_worker_columns(conn)} FROM slots s JOIN slot_workers w ON w.slot_id = s.id"  # noqa: S608
                " WHERE s.id = ?",
                (slot.id,),
            ).fetchone()
            return _worker(row, slot) if row is not None and row["state"] == slot.state.value else None

        return await self._conn.read(tx, quick=True)

    async def recorded_in_flight(self, owner: str) -> list[tuple[Slot, SlotWorker]]:
        """`owner`'s slots in ALLOCATING or RELEASING whose process doing it is recorded, with it: one read."""

        def tx(conn: Db) -> list[tuple[Slot, SlotWorker]]:
            rows = conn.execute(
                f"SELECT s.*, {_worker_columns(conn)} FROM slots s JOIN slot_workers w ON w.slot_id = s.id"  # noqa: S608
                " AND w.state = s.state WHERE s.owner = ? AND s.state IN ('ALLOCATING', 'RELEASING')"
                " AND w.pid IS NOT NULL ORDER BY s.id",
                (owner,),
            ).fetchall()
            slots = [_slot(row) for row in rows]
            return [(slot, _worker(row, slot)) for row, slot in zip(rows, slots, strict=True)]

        return await self._conn.read(tx, quick=True)

    async def lapse_claim(self, slot: Slot, *, host_lease: str, event: EventDraft) -> Slot | None:
        """Take the branch claim of `slot`, a slot of another host, as it was judged: QUARANTINED (not
        handed out, its branch free for every clone of the project), owner and work left for its host
        to rescue. Only when, inside this one write transaction, the slot is still at the judged
        version, its host's validator lease `host_lease` is lapsed or gone, and its owner's lease has
        lapsed (or the owner is gone). None when any of that no longer holds."""
        now = time.time()

        def tx(conn: Db) -> Slot | None:
            lease = conn.execute("SELECT expires_at FROM leases WHERE name = ?", (host_lease,)).fetchone()
            if lease is not None and float(lease[0]) >= now:
                return None
            if slot.owner is not None:
                owner = conn.execute("SELECT lease_expires_at FROM agents WHERE id = ?", (slot.owner,)).fetchone()
                if owner is not None and float(owner[0]) >= now:
                    return None
            cur = conn.execute(
                "UPDATE slots SET state = 'QUARANTINED', version = version + 1 WHERE id = ? AND version = ?"
                " AND state IN ('ALLOCATING', 'BUSY', 'RELEASING')",
                (slot.id, slot.version),
            )
            if not cur.rowcount:
                return None
            event.worktree_id = slot.id
            event.fencing_token = slot.fencing_token
            _append(conn, event, now)
            return _slot_by_id(conn, slot.id)

        return await self._conn.write(tx)

    async def insert_slot(
        self, repo: Repo, path: str, *, state: SlotState, branch: str | None, event: EventDraft
    ) -> Slot:
        """Adopt a worktree the store did not know (validation, import)."""
        now = time.time()

        def tx(conn: Db) -> Slot:
            slot_id = _next_slot_id(conn, repo.pool_root)
            conn.execute(
                "INSERT INTO slots (id, repo_id, path, state, version, branch, released_at, setup_done,"
                " created_at) VALUES (?, ?, ?, ?, 0, ?, ?, 1, ?)",
                (slot_id, repo.id, path, state.value, branch, now, now),
            )
            event.worktree_id = slot_id
            _append(conn, event, now)
            inserted = _slot_by_id(conn, slot_id)
            assert inserted is not None
            return inserted

        return await self._conn.write(tx)


# The calls of schema_pg's functions (migration 8), every parameter cast to the function's type; the
# last nine are the events' arrays (pg_event_arrays).
PG_CLAIM_ANY = (
    "SELECT o_tag AS tag, (o_slot).* FROM agent_coord_claim_any(%s::bigint, %s::text[], %s::boolean, %s::text,"
    " %s::text, %s::text, %s::float8, %s::float8)"
)
PG_CLAIM_NEW = (
    "SELECT o_tag AS tag, (o_slot).* FROM agent_coord_claim_new(%s::bigint, %s::text, %s::bigint, %s::text,"
    " %s::text, %s::text, %s::float8, %s::float8,"
    " %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::bigint[], %s::text[])"
)
_WORKER_CASTS = " %s::text, %s::text, %s::bigint, %s::float8, %s::float8"
PG_CLAIM_ANY_BY = PG_CLAIM_ANY[:-1] + "," + _WORKER_CASTS + ")"
PG_CLAIM_NEW_BY = PG_CLAIM_NEW[:-1] + "," + _WORKER_CASTS + ")"
PG_TRANSITION = (
    "SELECT o_tag AS tag, (o_slot).* FROM agent_coord_transition(%s::text, %s::text[], %s::bigint, %s::bigint,"
    " %s::boolean, %s::text[], %s::text, %s::text, %s::text, %s::bigint, %s::float8, %s::float8, %s::float8,"
    " %s::text, %s::text, %s::integer, %s::float8,"
    " %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::float8[], %s::bigint[], %s::text[])"
)
PG_TRANSITION_BY = PG_TRANSITION[:-1] + "," + _WORKER_CASTS + ")"


def _value(v: Any) -> Any:
    """A value as the Python path binds it (pg_connection._value), one element of an array too."""
    from agent_coord.engine.store.pg_connection import _value as bound

    return bound(v)


def pg_event_arrays(drafts: Sequence[EventDraft | None]) -> list[list[Any]]:
    """The events for a function of schema_pg's migration 8: one array per column (rows._event_values)."""
    rows = [[_value(v) for v in _event_values(d)] for d in drafts if d is not None]
    columns: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(9)]
    columns[6] = [None if d is None else float(d) for d in columns[6]]  # one element type: int and float mixed
    return columns


def _worker_columns(conn: Db) -> str:
    """A slot's mark and recorded process (`w`), aliased; its age by the clock that stamped it (the
    database server's, on PostgreSQL)."""
    now = "extract(epoch FROM clock_timestamp())" if is_postgres(conn) else SQLITE_NOW
    return (
        f"w.version AS w_version, {now} - w.since AS w_age, w.host AS w_host, w.boot_id AS w_boot,"
        " w.pid AS w_pid, w.create_time AS w_create_time, w.start_s AS w_start_s"
    )


def _worker(row: Any, slot: Slot) -> SlotWorker:
    process = None
    if row["w_pid"] is not None:
        start_s = None if row["w_start_s"] is None else float(row["w_start_s"])
        process = WorkerProcess(
            str(row["w_host"]), str(row["w_boot"]), int(row["w_pid"]), float(row["w_create_time"]), start_s
        )
    return SlotWorker(slot.id, int(row["w_version"]), slot.state, float(row["w_age"]), process)


def _worker_args(process: WorkerProcess) -> tuple[Any, ...]:
    return (process.host, process.boot_id, process.pid, process.create_time, process.start_s)


def _record_worker(conn: Db, slot: Slot, process: WorkerProcess, now: float) -> None:
    """`process` does `slot`'s transition (the row as it is now): into the database's mark of it, or in
    place of an earlier record (a takeover that changes neither state, owner nor token is no new mark)."""
    conn.execute(
        "INSERT INTO slot_workers (slot_id, version, state, since, host, boot_id, pid, create_time, start_s)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (slot_id) DO UPDATE SET version = excluded.version,"
        " state = excluded.state, host = excluded.host, boot_id = excluded.boot_id, pid = excluded.pid,"
        " create_time = excluded.create_time, start_s = excluded.start_s",
        (
            slot.id,
            slot.version,
            slot.state.value,
            now,
            process.host,
            process.boot_id,
            process.pid,
            process.create_time,
            process.start_s,
        ),
    )


def _claimed(rows: list[PgRow]) -> Slot | None:
    """A claim function's answer: the claimed slot, None, or the branch's holder (raised)."""
    if not rows:
        return None
    if rows[0]["tag"] == "held":
        raise BranchHeldError(_slot(rows[0]))
    return _slot(rows[0])


def _repo(row: Any) -> Repo:
    return Repo(id=row["id"], path=row["path"], pool_root=row["pool_root"], host=row["host"], project=row["project"])


def _project_taken(conn: Db, repo_id: int, project: str) -> bool:
    """Does another clone of `project` hold a branch that this repository's slots hold too?"""
    held = "('ALLOCATING', 'BUSY', 'RELEASING')"
    row = conn.execute(
        f"SELECT 1 FROM slots a JOIN slots b ON b.branch = a.branch WHERE a.repo_id = ? AND a.state IN {held}"  # noqa: S608
        f" AND b.project = ? AND b.repo_id != ? AND b.state IN {held} LIMIT 1",
        (repo_id, project, repo_id),
    ).fetchone()
    return row is not None


def _to_allocating(
    conn: Db,
    slot_id: str,
    version: int | None,
    owner: str,
    branch: str,
    task: str | None,
    now: float,
    lease_s: float,
) -> int | None:
    """CAS a FREE slot (at `version`, when given) to ALLOCATING with a new fencing token; the token,
    or None when the row was not FREE at that version (the caller rolls the transaction back)."""
    if is_postgres(conn):
        # The token is drawn from the sequence only for the row that matched: a lost CAS draws none.
        row = conn.execute(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
            " fencing_token = nextval('fencing_tokens'), lease_expires_at = ?, since = ?, task = ?,"
            " rescue_ref = NULL WHERE id = ? AND state = 'FREE' AND version = COALESCE(?, version)"
            " RETURNING fencing_token",
            (owner, branch, now + lease_s, now, task, slot_id, version),
        ).fetchone()
        return int(row[0]) if row else None
    token = _next_token(conn)
    cur = conn.execute(
        "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
        " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
        " WHERE id = ? AND state = 'FREE' AND (? IS NULL OR version = ?)",
        (owner, branch, token, now + lease_s, now, task, slot_id, version, version),
    )
    return token if cur.rowcount else None
