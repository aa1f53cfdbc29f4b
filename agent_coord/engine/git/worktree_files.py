"""An allocation's `git worktree list`, read from the files git itself reads, without a git process.

An allocation needs, of every worktree: its path, the branch it has checked out (none when detached),
whether it is locked and whether it is prunable (its directory gone); and of the main worktree, its
HEAD commit. All of it is in small files:

* `<common dir>/HEAD` and `<common dir>/worktrees/<id>/HEAD`: `ref: refs/heads/<branch>` or a commit;
* `<common dir>/worktrees/<id>/gitdir`: `<worktree>/.git`, whose absence makes the entry prunable;
* `<common dir>/worktrees/<id>/locked`: the lock (any kind of entry: git reads it with `lstat`);
* the main worktree's branch tip: its loose ref file, else its line in `packed-refs`.

Anything this reader does not settle the way git would (an entry that is not a directory, a relative
or odd `gitdir`, a HEAD that is neither a branch nor a commit, a ref found neither loose nor packed,
a reftable repository, an unreadable file) returns None, and the caller asks `git worktree list`.
Only allocations use it; validation and repairs keep git's own listing. Blocking: run it in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from agent_coord.engine.git.driver import GitDriver, WorktreeInfo


class _Unsettled(Exception):
    """Something git might read differently: the caller asks git."""


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unsettled(str(path)) from exc


def _is_commit(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


def _head(head_file: Path) -> tuple[str | None, str | None]:
    """(branch, commit): one of them, from a HEAD file."""
    text = _text(head_file).strip()
    if text.startswith("ref: refs/heads/"):
        branch = text.removeprefix("ref: refs/heads/")
        if not branch or branch == ".invalid":  # reftable's placeholder
            raise _Unsettled(str(head_file))
        return branch, None
    if _is_commit(text):
        return None, text
    raise _Unsettled(str(head_file))


def branch_tip(common_dir: Path, branch: str) -> str | None:
    """The commit `branch` points at (loose ref, else `packed-refs`); None when it does not exist (an
    unborn branch). Raises _Unsettled when the ref is something else (a symbolic ref, a directory)."""
    parts = branch.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _Unsettled(branch)
    loose = common_dir.joinpath("refs", "heads", *parts)
    if os.path.lexists(loose):
        if os.path.islink(loose) or not os.path.isfile(loose):
            raise _Unsettled(str(loose))
        text = _text(loose).strip()
        if not _is_commit(text):
            raise _Unsettled(str(loose))
        return text
    packed = common_dir / "packed-refs"
    if not os.path.lexists(packed):
        return None
    wanted = f" refs/heads/{branch}"
    for line in _text(packed).splitlines():
        if line.endswith(wanted) and _is_commit(sha := line[: -len(wanted)]):
            return sha
    return None


def _linked(admin: Path) -> WorktreeInfo:
    if os.path.islink(admin) or not os.path.isdir(admin):
        raise _Unsettled(str(admin))
    lock = admin / "locked"
    locked = os.path.lexists(lock)
    reason: str | None = None
    if locked and os.path.isfile(lock) and not os.path.islink(lock):
        reason = _text(lock).strip() or None
    gitdir_file = admin / "gitdir"
    if not os.path.lexists(gitdir_file):
        raise _Unsettled(str(gitdir_file))  # git calls it prunable without a path to list: ask git
    gitdir = _text(gitdir_file).strip()
    if not gitdir.startswith("/") or not gitdir.endswith("/.git"):
        raise _Unsettled(str(gitdir_file))
    branch, commit = _head(admin / "HEAD")
    return WorktreeInfo(
        path=gitdir.removesuffix("/.git"),
        head=commit,
        branch=branch,
        detached=branch is None,
        bare=False,
        locked=locked,
        lock_reason=reason,
        prunable=not locked and not os.path.lexists(gitdir),
    )


def read_worktrees(repo: Path, common_dir: Path) -> list[WorktreeInfo] | None:
    """The repository's worktrees as `git worktree list` would give them to an allocation, or None."""
    try:
        if os.path.lexists(common_dir / "reftable"):
            return None
        branch, commit = _head(common_dir / "HEAD")
        main = WorktreeInfo(
            path=str(repo),
            head=commit if branch is None else branch_tip(common_dir, branch),
            branch=branch,
            detached=branch is None,
            bare=False,
            locked=False,
            lock_reason=None,
            prunable=False,
        )
        entries = [main]
        worktrees = common_dir / "worktrees"
        if os.path.lexists(worktrees):
            with os.scandir(worktrees) as it:
                names = sorted(entry.name for entry in it)
            entries += [_linked(worktrees / name) for name in names]
        return entries
    except (_Unsettled, OSError):
        return None


async def allocation_worktrees(git: GitDriver, repo: Path, common_dir: Path) -> list[WorktreeInfo]:
    """`read_worktrees`, or `git worktree list` where the files do not settle it (raises GitError)."""
    found = await anyio.to_thread.run_sync(read_worktrees, repo, common_dir)
    return found if found is not None else await git.worktrees(repo)
