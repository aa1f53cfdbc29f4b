"""The append-only event log, cursors over it, named leases, and database health."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from agent_coord.engine.store.records import Event
from agent_coord.engine.store.rows import EventDraft, _append, _event, _Tables

# The newest event that ended an allocation: a release that happened, or a reclaim.
LAST_END_OF_SLOT = (
    "SELECT * FROM events WHERE worktree_id = ? "
    "AND ((action = 'release' AND outcome = 'ok') OR action = 'reclaim') ORDER BY id DESC LIMIT 1"
)
LAST_END_OF_BRANCH = (
    "SELECT * FROM events WHERE branch = ? "
    "AND ((action = 'release' AND outcome = 'ok') OR action = 'reclaim') ORDER BY id DESC LIMIT 1"
)


class EventLog(_Tables):
    """Events are written in the same transaction as the change they describe (see slots.py)."""

    # ---- change detection -------------------------------------------------------------------

    async def data_version(self) -> int:
        """Changes whenever *another* connection commits (any process): a few µs to ask."""
        return await self._conn.scalar("PRAGMA data_version")

    # ---- events -----------------------------------------------------------------------------

    async def log(self, draft: EventDraft) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            _append(conn, draft, time.time())

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

        def tx(conn: sqlite3.Connection) -> list[Event]:
            rows = conn.execute(sql, args).fetchall()
            return [_event(r) for r in rows]

        result = await self._conn.read(tx)
        return list(reversed(result)) if newest else result

    async def last_end(self, *, worktree_id: str | None = None, branch: str | None = None) -> Event | None:
        """The newest event that ended an allocation of that slot or branch: a release or a reclaim."""
        by_slot = worktree_id is not None
        sql, value = (LAST_END_OF_SLOT, worktree_id) if by_slot else (LAST_END_OF_BRANCH, branch)

        def tx(conn: sqlite3.Connection) -> Event | None:
            row = conn.execute(sql, (value,)).fetchone()
            return None if row is None else _event(row)

        return await self._conn.read(tx)

    async def rescue_refs(self, fencing_token: int) -> list[str]:
        """Every rescue ref saved from the grant with this fencing token (tokens are never reused), also
        by a reclaim or release that died before recording its end."""

        def tx(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT * FROM events WHERE action = 'rescue' AND fencing_token = ? ORDER BY id", (fencing_token,)
            ).fetchall()
            return [str(e.detail["rescue_ref"]) for e in map(_event, rows) if e.detail.get("rescue_ref")]

        return await self._conn.read(tx)

    # ---- repositories -----------------------------------------------------------------------

    async def integrity_check(self) -> str:
        def tx(conn: sqlite3.Connection) -> str:
            row = conn.execute("PRAGMA integrity_check").fetchone()
            return str(row[0]) if row else "no answer"

        return await self._conn.read(tx)

    # ---- cursors (exactly one process handles each event, e.g. the activity mirror) ----------

    async def claim_events(self, cursor: str, upto: int) -> tuple[int, int] | None:
        """Move the named cursor to `upto` by CAS; return the claimed range (after, upto], or None when
        another process already claimed past it. Each event is thereby handled by exactly one process."""

        def tx(conn: sqlite3.Connection) -> tuple[int, int] | None:
            key = f"cursor:{cursor}"
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, (SELECT COALESCE(MAX(id), 0) FROM events WHERE id < ?))"
                " ON CONFLICT(key) DO NOTHING",
                (key, upto),
            )
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            after = int(row[0]) if row else 0
            if after >= upto:
                return None
            conn.execute("UPDATE meta SET value = ? WHERE key = ? AND value = ?", (upto, key, after))
            return after, upto

        return await self._conn.write(tx)

    # ---- leases (one background validator at a time) ----------------------------------------

    async def lease(self, name: str) -> tuple[str, float] | None:
        """(holder, expires_at) of a named lease, or None when nobody holds it."""

        def tx(conn: sqlite3.Connection) -> tuple[str, float] | None:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            return (str(row[0]), float(row[1])) if row else None

        return await self._conn.read(tx)

    async def take_lease(self, name: str, holder: str, ttl_s: float, *, replace: str | None = None) -> bool:
        """Take or renew a named lease by CAS; True when `holder` has it until now + ttl.

        It is free to take when nobody holds it or its holder let it lapse; `replace` names a holder
        the caller judged gone, whose lease may be taken before it lapses (only while it still holds it).
        """
        now = time.time()

        def tx(conn: sqlite3.Connection) -> bool:
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (name, holder, now + ttl_s),
            )
            cur = conn.execute(
                "UPDATE leases SET holder = ?, expires_at = ?, version = version + 1"
                " WHERE name = ? AND (holder = ? OR expires_at < ? OR holder = ?)",
                (holder, now + ttl_s, name, holder, now, replace),
            )
            return cur.rowcount > 0

        return await self._conn.write(tx)

    async def release_lease(self, name: str, holder: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._conn.write(tx)
