"""The store: SQLite behind the transitions the pool needs."""

from agent_coord.engine.store.connection import StoreBusyError, StoreClosedError
from agent_coord.engine.store.rows import AdoptionConflictError, BranchHeldError, EventDraft, SlotAdoption
from agent_coord.engine.store.store import Store

__all__ = [
    "AdoptionConflictError",
    "BranchHeldError",
    "EventDraft",
    "SlotAdoption",
    "Store",
    "StoreBusyError",
    "StoreClosedError",
]
