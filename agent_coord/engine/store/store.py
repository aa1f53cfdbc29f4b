"""The store: the only code that knows SQL. It offers the transitions the pool needs, not tables.

Every state change is a compare-and-swap on (id, state, version or fencing token) inside one
write transaction (SQLite's `BEGIN IMMEDIATE`, or PostgreSQL's under the store's writer lock: see
pg_connection.py), and writes its event in the same transaction, so the log never disagrees with
the state it describes.
"""

from __future__ import annotations

from pathlib import Path

from agent_coord.engine.store.adoption import Adoption
from agent_coord.engine.store.agents import AgentRecords
from agent_coord.engine.store.alerts import AlertRecords
from agent_coord.engine.store.connection import Connection, StoreUnavailableError
from agent_coord.engine.store.dialect import StoreConnection
from agent_coord.engine.store.events import EventLog
from agent_coord.engine.store.radar import RadarRecords
from agent_coord.engine.store.slots import SlotTransitions
from agent_coord.store_target import PostgresUrl


class Store(SlotTransitions, Adoption, AgentRecords, EventLog, RadarRecords, AlertRecords):
    """The one object the engine uses; its parts live in slots.py, adoption.py, agents.py, events.py."""

    def __init__(self, conn: StoreConnection, path: Path | PostgresUrl) -> None:
        self._conn = conn
        self.path = path  # where it lives: a SQLite file, or a PostgreSQL URL (printed without its password)

    @classmethod
    async def open(cls, target: Path | PostgresUrl, *, wait_s: float | None = None) -> Store:
        """The store at `target`, the value of AGENT_COORD_DB: a SQLite file or a PostgreSQL URL. The
        PostgreSQL driver is imported only for a URL, so the SQLite path never pays for it. `wait_s`: how
        long a SQLite transaction waits for another process's lock (`AGENT_COORD_STORE_WAIT_S`); PostgreSQL
        bounds its own waits (lock_timeout, the pool's connection wait)."""
        if isinstance(target, PostgresUrl):
            try:
                from agent_coord.engine.store.pg_connection import PgConnection
            except ImportError as exc:
                raise StoreUnavailableError(
                    target,
                    f"needs the PostgreSQL driver ({exc.name} is missing): pip install 'agent-coord[postgresql]'",
                ) from None
            return cls(await PgConnection.open(target), target)
        path = target.expanduser()  # noqa: ASYNC240 - the home directory from the environment, no disk I/O
        return cls(await Connection.open(path, wait_s=wait_s), path)

    @property
    def postgres(self) -> bool:
        return self._conn.postgres

    async def close(self) -> None:
        await self._conn.close()
