"""What `agent-coord import-pool` reports, and the small judgements it makes about each row.

The importer (pool_import.py) does the checking and the one adopting transaction; this module holds
its result models, its plan of one row, and the path and message helpers, so each file has one job.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import anyio
import anyio.to_thread
from pydantic import BaseModel, Field

from agent_coord.engine.git.driver import GitError, WorktreeStatus
from agent_coord.engine.store import AdoptionConflictError, BranchHeldError
from agent_coord.engine.store.records import HELD_STATES, SlotState
from agent_coord.pool_file.markdown import ParsedPoolRow, PoolFileError

MAX_LISTED_CHANGES = 5


class PoolImportError(ValueError):
    """Every problem found in the file, one per line of the message, each naming its line."""

    def __init__(self, problems: list[PoolFileError]) -> None:
        self.problems = sorted(problems, key=lambda p: p.line)
        super().__init__("\n".join(str(p) for p in self.problems))


class ImportRow(BaseModel):
    line: int
    path: str = Field(description="the worktree's resolved absolute path")
    action: str = Field(description="adopt, or skip (the store already knows this path)")
    state: str = Field(description="the state the slot has after the import")
    agent_id: str | None
    branch: str | None
    worktree_id: str | None = Field(default=None, description="assigned on adoption; null in a dry run")
    note: str = ""


class ImportResult(BaseModel):
    repo: str
    pool_root: str
    source: str
    dry_run: bool
    adopted: int
    skipped: int
    placeholder_agents: list[str] = Field(description="agent ids recorded for BUSY rows the store did not know")
    lease_s: float
    rows: list[ImportRow]


@dataclass
class ImportPlan:
    row: ParsedPoolRow
    path: Path
    state: SlotState
    branch: str | None
    owner: str | None
    detach_from: str | None = None  # a FREE worktree on this branch is detached before adoption
    known_as: str | None = None  # the store already has this path (skip)


def target_state(listed: SlotState) -> SlotState:
    # ALLOCATING/RELEASING are moments of a live process; in a file they can only mean "held".
    return SlotState.BUSY if listed in HELD_STATES else listed


def resolved(path: str) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(path)


def _absolute_sync(text: str, base_dir: Path) -> Path:
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~name" for a user that does not exist: taken literally, then not found
        path = Path(text)
    return resolved(str(path if path.is_absolute() else base_dir / path))


async def absolute(text: str, base_dir: Path) -> Path:
    # expanduser() and resolve() read the environment and the filesystem: keep them off the event loop.
    return await anyio.to_thread.run_sync(_absolute_sync, text, base_dir)


def dirty_message(path: Path, status: WorktreeStatus) -> str:
    parts: list[str] = []
    if status.changed:
        files = ", ".join(c[3:] for c in status.changed[:MAX_LISTED_CHANGES])
        more = (
            f" (+{len(status.changed) - MAX_LISTED_CHANGES} more)" if len(status.changed) > MAX_LISTED_CHANGES else ""
        )
        parts.append(f"uncommitted or untracked changes: {files}{more}")
    if status.unsaved_commits:
        parts.append(f"{status.unsaved_commits} commit(s) only on its detached HEAD")
    return (
        f"{path} is listed as FREE but has {'; '.join(parts)}; commit or remove them, or list it as BUSY with its agent"
    )


def store_problem(exc: Exception, plans: list[ImportPlan]) -> PoolFileError:
    """Another process changed the pool between our checks and our write: name the row it hit."""
    if isinstance(exc, AdoptionConflictError):
        line = next((p.row.line for p in plans if str(p.path) == exc.path), 0)
        return PoolFileError(line, f"{exc.path} was added to the pool meanwhile ({exc.reason}); nothing was imported")
    if isinstance(exc, BranchHeldError):
        line = next((p.row.line for p in plans if p.branch == exc.holder.branch), 0)
        return PoolFileError(
            line,
            f"branch {exc.holder.branch!r} was taken by agent {exc.holder.owner} ({exc.holder.id}) meanwhile; "
            "nothing was imported",
        )
    assert isinstance(exc, GitError)
    return PoolFileError(0, f"git failed while detaching a FREE worktree: {exc.reason}; nothing was imported")


def windows_path(text: str) -> PureWindowsPath | None:
    """A pool file written on Windows (`C:/…`, `C:\\…`, `\\\\server\\share\\…`) read on another system."""
    if sys.platform == "win32":
        return None  # a native path: read as any other
    path = PureWindowsPath(text)
    return path if path.drive else None


def windows_name(path: PureWindowsPath) -> str:
    # Windows drops trailing dots and spaces from a file name: `wt-01. ` names the folder `wt-01`.
    return path.name.rstrip(" .")


def map_windows_path(path: PureWindowsPath, pool_root: Path, worktrees: set[Path]) -> Path | None:
    """The worktree of this machine's pool that a Windows path names: the pool root's child of the same
    name (Windows compares names without case, so a unique case-insensitive match counts too)."""
    name = windows_name(path)
    if not name:
        return None
    exact = pool_root / name
    if exact in worktrees:
        return exact
    folded = [w for w in worktrees if w.parent == pool_root and w.name.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def unmapped_windows_path(text: str, path: PureWindowsPath, pool_root: Path) -> str:
    name = windows_name(path)
    looked = f"looked for {pool_root / name}" if name else "it names no folder"
    return (
        f"{text} is a Windows path and no worktree of this pool matches it ({looked}); "
        "write the worktree's path on this machine into the row, or remove the row"
    )
