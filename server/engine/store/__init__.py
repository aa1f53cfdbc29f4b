"""The store: SQLite behind the transitions the pool needs."""

from .connection import StoreBusyError, StoreClosedError
from .rows import AdoptionConflictError, BranchHeldError, EventDraft, SlotAdoption
from .store import Store

__all__ = [
    "AdoptionConflictError",
    "BranchHeldError",
    "EventDraft",
    "SlotAdoption",
    "Store",
    "StoreBusyError",
    "StoreClosedError",
]
