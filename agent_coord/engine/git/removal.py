"""Removing a slot's worktree without ever leaving half of it.

`git worktree remove` deletes the work tree and then, whatever happened there, git's administrative
entry for it: when a file cannot be deleted (on Windows, any file another program holds open; on
POSIX, a folder without write permission or an immutable file), what is left is a folder that is no
longer a worktree, with part of its files gone, and a store record for a slot that git has forgotten.

So the removal goes in an order where every failure leaves a worktree git still knows:

1. The slot passes the guard and is clean (`git status`: nothing changed, untracked or only on a
   detached HEAD; a release saves and discards first), so every byte in it is in a commit or ignored.
2. Every entry of the work tree except `.git` is deleted, from the very directory the guard checked
   (opened without following a link, entries deleted relative to it). What cannot be deleted is tried
   again with a bounded back-off (a program that holds a file open for a moment closes it).
3. Only when nothing but `.git` is left does git remove the worktree (`--force`: its files are gone,
   on purpose) with its administrative entry. Should git drop its entry and then fail to delete the
   emptied folder (a pool root that refuses), the removal is done all the same: the folder holds at
   most `.git`, and an empty leftover is validation's to tidy.

When something still cannot be deleted after the last attempt, the tracked files are checked out again
(`git reset --hard`; the index was never touched) and `RemovalFailed` (a GitError) says which file
failed and why: the slot is what it was, minus ignored files (build output, which removal deletes
anyway). Should even that fail, `RemovalFailed.intact` is False and the caller quarantines the slot;
nothing is lost either way, since step 1 proved that everything else is in git.

A worktree with submodules is left to git alone, which refuses to remove one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import anyio

from agent_coord.engine.git.confinement import Confined, Unconfined, check_slot, inside_pool
from agent_coord.engine.git.driver import GitDriver, GitError

ATTEMPTS = 6
FIRST_PAUSE_S = 0.1  # then doubled: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 = 3.1 s at most between attempts
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class RemovalFailed(GitError):
    """The worktree could not be removed; `intact`: its tracked files were put back (else quarantine)."""

    def __init__(self, path: Path, why: str, *, intact: bool) -> None:
        self.intact = intact
        super().__init__(["worktree", "remove"], 1, f"fatal: could not remove {path}: {why}")


@dataclass
class Leftovers:
    failures: list[tuple[str, OSError]] = field(default_factory=list)

    def note(self, path: str, exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return  # gone meanwhile: that is the goal
        if isinstance(exc, OSError):
            self.failures.append((path, exc))
        else:
            raise exc

    def describe(self, root: Path) -> str:
        path, exc = self.failures[0]
        try:
            shown = str(Path(path).relative_to(root))
        except ValueError:
            shown = path
        more = f" (+{len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        return f"{shown}: {exc.strerror or exc}{more}"


def dir_fds_supported() -> bool:
    return shutil.rmtree.avoids_symlink_attacks and {os.open, os.unlink, os.rmdir} <= os.supports_dir_fd


def empty_work_tree(slot: Confined, *, use_dir_fds: bool | None = None) -> Leftovers:
    """Delete every entry of the checked slot but `.git`, never following a link (blocking). Returns
    what could not be deleted."""
    use_fds = dir_fds_supported() if use_dir_fds is None else use_dir_fds
    checked = check_slot(slot.bounds, slot.path)
    left = Leftovers()
    if not use_fds:
        for entry in os.scandir(checked.path):
            if entry.name != ".git":
                _delete_path(Path(entry.path), left)
        return left
    fd = os.open(checked.path, os.O_RDONLY | DIRECTORY | NOFOLLOW)
    try:
        st, seen = os.fstat(fd), os.lstat(checked.path)
        if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
            raise Unconfined(slot.path, "it was replaced while it was being removed")
        for name in os.listdir(fd):
            if name != ".git":
                _delete_at(fd, name, str(checked.path / name), left)
    finally:
        os.close(fd)
    return left


def _delete_at(parent: int, name: str, shown: str, left: Leftovers) -> None:
    try:
        st = os.lstat(name, dir_fd=parent)
        if stat.S_ISDIR(st.st_mode):
            _rmtree(name, left, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)
    except OSError as exc:
        left.note(shown, exc)


def _delete_path(path: Path, left: Leftovers) -> None:
    try:
        st = os.lstat(path)
        is_link = stat.S_ISLNK(st.st_mode) or bool(
            getattr(st, "st_file_attributes", 0) & getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0)
        )
        if stat.S_ISDIR(st.st_mode) and not is_link:
            _rmtree(str(path), left)
        elif stat.S_ISDIR(st.st_mode):
            os.rmdir(path)  # a junction: removed as a link, its target untouched
        else:
            os.unlink(path)
    except OSError as exc:
        left.note(str(path), exc)


def _rmtree(path: str, left: Leftovers, *, dir_fd: int | None = None) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, dir_fd=dir_fd, onexc=lambda _f, p, exc: left.note(p, exc))
    else:
        shutil.rmtree(path, dir_fd=dir_fd, onerror=lambda _f, p, info: left.note(p, info[1]))


async def remove_worktree(
    git: GitDriver,
    repo: Path,
    slot: Confined,
    *,
    attempts: int = ATTEMPTS,
    first_pause_s: float = FIRST_PAUSE_S,
    before_git_forgets: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Remove the clean worktree `slot` and git's entry for it, or raise with the slot still a worktree
    (see the module docstring). Raises Unconfined, GitError (git refused: dirty, locked, submodules),
    or RemovalFailed. `before_git_forgets` runs once the work tree is emptied, before git drops the
    worktree: what it raises puts the files back and is raised (a release records itself there)."""
    checked = await anyio.to_thread.run_sync(check_slot, slot.bounds, slot.path)
    if await anyio.Path(checked.admin / "modules").exists():
        await git.worktree_remove(repo, slot)  # git refuses a worktree with submodules: nothing removed
        return
    status = await git.status(slot)
    if status.dirty:
        changed = ", ".join(c[3:] for c in status.changed[:5]) or f"{status.unsaved_commits} unsaved commit(s)"
        raise GitError(["worktree", "remove"], 1, f"fatal: {slot.path} contains modified or untracked files: {changed}")
    pause = first_pause_s
    left = Leftovers()
    for attempt in range(attempts):
        left = await anyio.to_thread.run_sync(empty_work_tree, slot)
        if not left.failures:
            if before_git_forgets is not None:
                try:
                    await before_git_forgets()
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await _check_out_again(git, slot, "the removal was called off")
                    raise
            await _remove_emptied(git, repo, slot, checked.admin)
            return
        if attempt < attempts - 1:
            await anyio.sleep(pause)
            pause *= 2
    why = f"{left.describe(checked.path)} after {attempts} attempts; a program may hold it open, or it is read-only"
    await _put_back(git, slot, why)


async def _put_back(git: GitDriver, slot: Confined, why: str) -> NoReturn:
    """Check the tracked files out again (the index was never touched) and refuse; quarantine-worthy
    (`intact=False`) when even that fails."""
    await _check_out_again(git, slot, why)
    raise RemovalFailed(slot.path, f"{why}; its files were put back, nothing was removed", intact=True)


async def _check_out_again(git: GitDriver, slot: Confined, why: str) -> None:
    """The tracked files back in the emptied work tree; RemovalFailed (`intact=False`) when that fails."""
    try:
        # ctime not trusted: what held a file (an immutable flag, an ACL, a scanner) changed only its
        # ctime, and git would otherwise rewrite that file, which fails for the same reason it was held.
        await git.run(slot, "-c", "core.trustctime=false", "reset", "--hard", "--quiet")
    except GitError as exc:
        raise RemovalFailed(slot.path, f"{why}; putting its files back failed too: {exc.reason}", intact=False) from exc


async def _remove_emptied(git: GitDriver, repo: Path, slot: Confined, admin: Path) -> None:
    """Git removes the emptied worktree. When git fails before dropping its entry, the files are put
    back (RemovalFailed); when it dropped its entry but not the folder (a pool root that refuses the
    deletion), the worktree is gone for git and the folder holds at most `.git`: the removal is done,
    and what is left of the folder is tidied here or, failing that, by validation (an empty leftover)."""
    try:
        await git.worktree_remove(repo, slot, force=True)
    except GitError as exc:
        if await anyio.Path(admin).exists():
            await _put_back(git, slot, exc.reason)
        await anyio.to_thread.run_sync(_tidy_leftover, slot)


def _tidy_leftover(slot: Confined) -> None:
    with contextlib.suppress(OSError, Unconfined):
        real = inside_pool(slot.bounds, slot.path)
        if stat.S_ISDIR(os.lstat(real).st_mode):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.lstat(real / ".git").st_mode):
                    os.unlink(real / ".git")
            os.rmdir(real)
