"""The store: the only code that knows SQL. It offers the transitions the pool needs, not tables.

Every state change is a compare-and-swap on (id, state, version or fencing token) inside
`BEGIN IMMEDIATE`, and writes its event in the same transaction, so the log never disagrees with
the state it describes.
"""

from __future__ import annotations

from pathlib import Path

from agent_coord.engine.store.adoption import Adoption
from agent_coord.engine.store.agents import AgentRecords
from agent_coord.engine.store.alerts import AlertRecords
from agent_coord.engine.store.connection import Connection
from agent_coord.engine.store.events import EventLog
from agent_coord.engine.store.radar import RadarRecords
from agent_coord.engine.store.slots import SlotTransitions


class Store(SlotTransitions, Adoption, AgentRecords, EventLog, RadarRecords, AlertRecords):
    """The one object the engine uses; its parts live in slots.py, adoption.py, agents.py, events.py."""

    def __init__(self, conn: Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Store:
        return cls(await Connection.open(path), path)

    async def close(self) -> None:
        await self._conn.close()
