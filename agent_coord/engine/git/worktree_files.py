"""An allocation's `git worktree list` and branch refs, read from the files git itself reads, without
a git process.

An allocation needs, of every worktree: its path, the branch it has checked out (none when detached),
whether it is locked and whether it is prunable (its directory gone); and of the main worktree, its
HEAD commit. All of it is in small files:

* `<common dir>/HEAD` and `<common dir>/worktrees/<id>/HEAD`: `ref: refs/heads/<branch>` or a commit;
* `<common dir>/worktrees/<id>/gitdir`: `<worktree>/.git`, whose absence makes the entry prunable;
* `<common dir>/worktrees/<id>/locked`: the lock (any kind of entry: git reads it with `lstat`);
* the main worktree's branch tip: its loose ref file, else its line in `packed-refs`.

Of the branch to allocate (`read_branch_refs`, what `GitDriver.branch_refs` asks `for-each-ref`): its
loose ref file and the files or directories above and below it under `refs/heads`, the same name under
each `refs/remotes/<remote>`, and their lines in `packed-refs`. Git's own `for-each-ref` reads every
loose branch to answer, whatever its patterns: in a repository that has lived (thousands of branches)
that cost an allocation more than its switch.

Anything this reader does not settle the way git would (an entry that is not a directory, a relative
or odd `gitdir`, a HEAD that is neither a branch nor a commit, a ref found neither loose nor packed,
a reftable repository, an unreadable file) returns None, and the caller asks `git worktree list`.
Only allocations use it; validation and repairs keep git's own listing. Blocking: run it in a thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio

from agent_coord.engine.git.driver import BranchRefs, GitDriver, WorktreeInfo


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


def _loose_ref(path: Path) -> bool:
    """Is there a ref file at `path` (False: nothing there, or a directory)? Raises _Unsettled on
    anything else (a symbolic link, a special file)."""
    if not os.path.lexists(path) or (os.path.isdir(path) and not os.path.islink(path)):
        return False
    if os.path.islink(path) or not os.path.isfile(path):
        raise _Unsettled(str(path))
    return True


def _first_ref_below(directory: Path) -> str | None:
    """The first ref file below `directory` in git's order (its full path), or None. Names git would not
    take for a ref (a lock, a hidden file such as `.DS_Store`) are not refs."""
    found = [
        Path(root, name).as_posix()
        for root, _, files in os.walk(directory)
        for name in files
        if not name.endswith(".lock") and not name.startswith(".")
    ]
    return min(found) if found else None


def _is_ref_file(path: Path) -> bool:
    """Does the loose ref file at `path` hold a ref (a commit id, or a symbolic `ref: …`)? Raises
    _Unsettled when it does not: git skips a broken ref, which the caller leaves to git."""
    text = _text(path).strip()
    if _is_commit(text) or text.startswith("ref: refs/"):
        return True
    raise _Unsettled(str(path))


def read_branch_refs(common_dir: Path, branch: str) -> BranchRefs | None:
    """`GitDriver.branch_refs` read from the files, or None where git must answer."""
    try:
        parts = branch.split("/")
        if os.path.lexists(common_dir / "reftable") or any(part in ("", ".", "..") for part in parts):
            return None
        if os.path.lexists(common_dir / "head"):
            # A file system that ignores case (macOS, Windows) would find `Feat`'s file for `feat`;
            # git's refs are case-sensitive names, which only git's own listing gets right there.
            return None
        heads = common_dir / "refs" / "heads"
        own = f"refs/heads/{branch}"
        parents = [f"refs/heads/{'/'.join(parts[:i])}" for i in range(1, len(parts))]
        exists = _loose_ref(heads.joinpath(*parts)) and _is_ref_file(heads.joinpath(*parts))
        clashes: list[str] = [ref for ref in parents if _loose_ref(common_dir.joinpath(*ref.split("/")))]
        below = heads.joinpath(*parts)
        if os.path.isdir(below) and not os.path.islink(below) and (child := _first_ref_below(below)):
            clashes.append(Path(child).relative_to(common_dir).as_posix())
        remotes: set[str] = set()
        remote_root = common_dir / "refs" / "remotes"
        if os.path.isdir(remote_root) and not os.path.islink(remote_root):
            with os.scandir(remote_root) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False) and _loose_ref(remote_root.joinpath(entry.name, *parts)):
                        remotes.add(f"{entry.name}/{branch}")
        packed = common_dir / "packed-refs"
        if os.path.lexists(packed):
            for line in _text(packed).splitlines():
                if line.startswith(("#", "^")):
                    continue
                sha, _, ref = line.partition(" ")
                if not _is_commit(sha):
                    raise _Unsettled(str(packed))
                if ref == own:
                    exists = True
                elif ref in parents or ref.startswith(f"{own}/"):
                    clashes.append(ref)
                elif (
                    ref.startswith("refs/remotes/")
                    and (short := ref.removeprefix("refs/remotes/")).partition("/")[2] == branch
                ):
                    remotes.add(short)
    except (_Unsettled, OSError):
        return None
    clash = min(clashes).removeprefix("refs/heads/") if clashes else None
    return BranchRefs(exists, sorted(remotes), clash)


async def allocation_branch_refs(git: GitDriver, repo: Path, common_dir: Path, branch: str) -> BranchRefs:
    """`read_branch_refs`, or `git for-each-ref` where the files do not settle it (raises GitError)."""
    found = await anyio.to_thread.run_sync(read_branch_refs, common_dir, branch)
    return found if found is not None else await git.branch_refs(repo, branch)
