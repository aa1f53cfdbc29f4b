"""Agents: registration, heartbeats (lease renewal), status."""

from __future__ import annotations

import time
from typing import Any

from agent_coord.engine.store.dialect import Db
from agent_coord.engine.store.records import Agent
from agent_coord.engine.store.rows import (
    AGENT_SELECT,
    EventDraft,
    _agent,
    _append,
    _insert_agent,
    _record_origin,
    _record_starts,
    _Tables,
)

_LIVE = " WHERE a.status IN ('active', 'idle') OR a.id IN (SELECT owner FROM slots WHERE owner IS NOT NULL)"
LIVE_AGENT_SELECT = AGENT_SELECT + _LIVE + " ORDER BY a.id"


class AgentRecords(_Tables):
    """The agents table. Only the server that registered an id renews it."""

    async def agents(self) -> list[Agent]:
        def tx(conn: Db) -> list[Agent]:
            rows = conn.execute(f"{AGENT_SELECT} ORDER BY a.id").fetchall()
            return [_agent(r) for r in rows]

        return await self._conn.read(tx)

    async def agent(self, agent_id: str) -> Agent | None:
        def tx(conn: Db) -> Agent | None:
            row = conn.execute(f"{AGENT_SELECT} WHERE a.id = ?", (agent_id,)).fetchone()
            return _agent(row) if row else None

        return await self._conn.read(tx, quick=True)

    async def live_agents(self) -> list[Agent]:
        """The agents that may still be running or hold a slot: not disconnected, dead or stale, or
        owning a slot in any state. Ended sessions accumulate; nothing that judges liveness on every
        call should read them."""

        def tx(conn: Db) -> list[Agent]:
            rows = conn.execute(LIVE_AGENT_SELECT).fetchall()
            return [_agent(r) for r in rows]

        return await self._conn.read(tx, quick=True)

    async def retire_agents(self, *, now: float, after_s: float, batch: int = 500) -> int:
        """Delete up to `batch` ended agents: no slot, and disconnected, dead or stale for `after_s`,
        or silent (lease lapsed) that long. A server whose row went re-registers at its next
        heartbeat (`Coordinator.heartbeat`). Returns how many went."""
        cutoff = now - after_s

        def tx(conn: Db) -> int:
            return int(
                conn.execute(
                    "DELETE FROM agents WHERE id IN (SELECT id FROM agents WHERE last_heartbeat < :cutoff"
                    " AND (status NOT IN ('active', 'idle') OR lease_expires_at < :cutoff)"
                    " AND id NOT IN (SELECT owner FROM slots WHERE owner IS NOT NULL) LIMIT :batch)",
                    {"cutoff": cutoff, "batch": batch},
                ).rowcount
            )

        return await self._conn.write(tx)

    # ---- agents -----------------------------------------------------------------------------

    async def register_agent(self, agent: Agent) -> None:
        def tx(conn: Db) -> None:
            _insert_agent(
                conn,
                agent,
                on_conflict="DO UPDATE SET host=excluded.host, boot_id=excluded.boot_id, pid=excluded.pid,"
                " pid_create_time=excluded.pid_create_time, server_pid=excluded.server_pid,"
                " server_create_time=excluded.server_create_time, repo_id=excluded.repo_id,"
                " status=excluded.status, started_at=excluded.started_at,"
                " last_heartbeat=excluded.last_heartbeat, lease_expires_at=excluded.lease_expires_at",
            )
            _record_starts(conn, agent)
            _record_origin(conn, agent)
            _append(
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
        self,
        agent_id: str,
        *,
        status: str | None,
        note: str | None,
        lease_s: float,
        server_pid: int,
        now: float | None = None,
    ) -> tuple[Agent | None, int]:
        """Renew the agent's lease and the leases of the slots it holds. Returns (agent, slots renewed).

        Only the server that registered the agent renews it (server_pid), so a stale server cannot keep
        alive an id that a newer server took over. The gap since the previous renewal is rolled up by
        the database (schema 5, for `advise`); `now` stamps a renewal of a history being built.
        """
        now = time.time() if now is None else now
        until = now + lease_s

        def tx(conn: Db) -> tuple[Agent | None, int]:
            sets = "last_heartbeat = ?, lease_expires_at = ?"
            args: list[Any] = [now, until]
            if status is not None:
                sets += ", status = ?"
                args.append(status)
            if note is not None:
                sets += ", note = ?"
                args.append(note)
            cur = conn.execute(
                # Only fixed column names are interpolated; every value is bound.
                f"UPDATE agents SET {sets} WHERE id = ? AND server_pid = ?",  # noqa: S608
                (*args, agent_id, server_pid),
            )
            if cur.rowcount == 0:
                return None, 0
            cur = conn.execute(
                "UPDATE slots SET lease_expires_at = ?"
                " WHERE owner = ? AND state IN ('BUSY', 'ALLOCATING', 'RELEASING')",
                (until, agent_id),
            )
            renewed = cur.rowcount
            row = conn.execute(f"{AGENT_SELECT} WHERE a.id = ?", (agent_id,)).fetchone()
            return (_agent(row) if row else None), renewed

        return await self._conn.write(tx)

    async def set_agent_status(
        self, agent_id: str, status: str, *, server_pid: int | None, event: EventDraft | None
    ) -> bool:
        def tx(conn: Db) -> bool:
            if server_pid is None:
                cur = conn.execute("UPDATE agents SET status = ? WHERE id = ?", (status, agent_id))
            else:
                cur = conn.execute(
                    "UPDATE agents SET status = ? WHERE id = ? AND server_pid = ?",
                    (status, agent_id, server_pid),
                )
            if cur.rowcount and event is not None:
                _append(conn, event, time.time())
            return cur.rowcount > 0

        return await self._conn.write(tx)

    # ---- allocation (two-phase) -------------------------------------------------------------
