"""Errors an agent can act on. The code is a stable contract; the text says what happened, then what to
do next (from `agent_coord.engine.guidance`, the one source of that advice)."""

from __future__ import annotations

from enum import StrEnum

MAX_TEXT = 4096  # the longest free text an argument may carry (base, task, note, a release selector)


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
    # Not in the design's list: the allocation a call names was released or reclaimed meanwhile.
    ALLOCATION_ENDED = "ALLOCATION_ENDED"


class CoordError(Exception):
    """A refusal with a stable code. `str()` is `CODE: what happened. Next: what to do`, the form agents
    read; `message` is what happened alone (for the event log and the command line)."""

    def __init__(self, code: ErrorCode, message: str, *, next_step: str | None = None) -> None:
        """`next_step` replaces the code's usual advice where the situation has a more exact one."""
        # Imported here: the guidance table is keyed by ErrorCode, defined above.
        from agent_coord.engine.guidance import guidance

        advice = f"Next: {next_step}" if next_step else guidance(code).advice()
        super().__init__(f"{code.value}: {message.rstrip('. ')}. {advice}")
        self.code = code
        self.message = message
