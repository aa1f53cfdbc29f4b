"""Git's record of one linked worktree, read from the files `git worktree list` reads, without git.

A release needs two facts about its slot: does git list a worktree there, and is it locked. Both
come from two small files: `<slot>/.git` (`gitdir: <admin dir>`, the admin dir being
`<repo>/.git/worktrees/<name>`), whose `gitdir` file names `<slot>/.git` back, and
`<admin dir>/locked`, whose presence is the lock and whose text its reason. When all of it is there
and agrees, git would list the slot, locked exactly when that file exists. Anything else (no `.git`,
a directory, a link, a path that does not point back, an admin dir of another repository, an
unreadable file) is not decided here: the caller asks `git worktree list`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorktreeRecord:
    locked: bool
    lock_reason: str | None


def _read(file: Path) -> str:
    return file.read_text(encoding="utf-8").strip()


def gitdir_of(path: Path) -> Path | None:
    """The admin directory that the linked worktree at `path` points at (`<path>/.git` is a file
    `gitdir: <admin dir>`; a relative target is relative to `path`, an absolute one replaces it), not
    resolved; None when `.git` says nothing of the kind. Raises OSError / UnicodeDecodeError when it
    cannot be read. Blocking."""
    line = _read(path / ".git")
    target = line.removeprefix("gitdir: ").strip()
    if not line.startswith("gitdir: ") or not target:
        return None
    return path / target


def read_worktree_record(common_dir: Path, path: Path) -> WorktreeRecord | None:
    """The record of the linked worktree at `path` (resolved) of the repository whose `.git` is
    `common_dir`, or None when these files do not settle it. Blocking: run it in a worker thread."""
    dotgit = path / ".git"
    try:
        if dotgit.is_symlink() or not dotgit.is_file():
            return None
        pointed = gitdir_of(path)
        if pointed is None:
            return None
        admin = pointed.resolve()
        if admin.parent != (common_dir / "worktrees").resolve():
            return None
        back = _read(admin / "gitdir")  # a bare path; git >= 2.48 may write it relative to the admin dir
        if not back or (admin / back).resolve() != dotgit.resolve():
            return None
        lock = admin / "locked"
        if not os.path.lexists(lock):
            return WorktreeRecord(locked=False, lock_reason=None)
        if lock.is_symlink() or not lock.is_file():
            # Whatever it is, it is there: locked (git's listing would die reading it, and a lock we
            # cannot read must still keep the worktree from being released).
            return WorktreeRecord(locked=True, lock_reason=None)
        reason = lock.read_text(encoding="utf-8", errors="replace").strip()
        return WorktreeRecord(locked=True, lock_reason=reason or None)
    except (OSError, UnicodeDecodeError, RuntimeError):
        return None
