"""The store: SQLite behind the transitions the pool needs."""

from .connection import StoreBusyError
from .store import BranchHeldError, EventDraft, Store

__all__ = ["BranchHeldError", "EventDraft", "Store", "StoreBusyError"]
