"""Errors an agent can act on. The code is a stable contract; the text says what to do next."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    BRANCH_CONFLICT = "BRANCH_CONFLICT"
    POOL_EXHAUSTED = "POOL_EXHAUSTED"
    ALLOCATION_TIMEOUT = "ALLOCATION_TIMEOUT"
    INVALID_BRANCH = "INVALID_BRANCH"
    NOT_A_REPOSITORY = "NOT_A_REPOSITORY"
    NOT_OWNER = "NOT_OWNER"
    WORKTREE_DIRTY = "WORKTREE_DIRTY"
    WORKTREE_LOCKED = "WORKTREE_LOCKED"
    NOT_FOUND = "NOT_FOUND"
    GIT_FAILED = "GIT_FAILED"
    # Not in the design's list: arguments of the wrong type or shape. See docs/decisions.md.
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    # Not in the design's list: the coordination database cannot be used (damaged, read-only, full, …).
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    # Not in the design's list: a rebase, merge, cherry-pick, revert or bisect is stopped in the
    # worktree, or git is running in it; releasing it so would break the next allocation.
    OPERATION_IN_PROGRESS = "OPERATION_IN_PROGRESS"


class CoordError(Exception):
    """A refusal with a stable code. `str()` is `CODE: message`, the form agents parse."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
