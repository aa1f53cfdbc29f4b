"""Creating files in a slot, behind the confinement guard.

First-time setup copies files into a new slot (`.worktreeinclude`) and links the project's Claude Code
setup into it. Each of those writes is a path chosen partly by others (a pattern, a branch's tree), in
a directory an agent can change at any time. So every write here:

* starts from a slot that passed `check_slot`, opened once without following a link, and checked to
  be the very directory the guard looked at (same device and inode);
* walks down one folder at a time from that open directory, never following a link: a folder that is
  a symlink (`.claude` committed as a link to elsewhere, or swapped for one meanwhile) or a file stops
  the write;
* takes its relative path only if no entry is `..`, absolute, a drive, a share, or a name the platform
  reads as another (`path_rules.relative_parts`);
* creates, never replaces: what the slot already has (its branch's version, a file an agent wrote) wins.

Where the platform cannot open a directory relative to another one (Windows: no `dir_fd`), each folder
is looked at (`lstat`) right before the next step instead; a swap between that look and the write is
then not seen, as for the guard's own checks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path, PurePath
from types import TracebackType

from agent_coord.engine.git.confinement import Bounds, Unconfined, check_slot
from agent_coord.engine.git.path_rules import relative_parts

# Makes one entry in a folder (a descriptor, or a path where descriptors are not used); None if it exists.
_Maker = Callable[[int | Path, str], int | None]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIRECTORY = getattr(os, "O_DIRECTORY", 0)
BINARY = getattr(os, "O_BINARY", 0)


def dir_fds_supported() -> bool:
    return {os.open, os.mkdir, os.symlink, os.stat} <= os.supports_dir_fd and bool(NOFOLLOW and DIRECTORY)


class Refused(Exception):
    """This one path may not be written (the others may): it would leave the slot, or replace something."""


class SlotFiles:
    """Create files and links under one directory without leaving it. A context manager; blocking."""

    def __init__(self, root: Path, *, use_dir_fds: bool | None = None) -> None:
        self.root = root
        self.dir_fds = dir_fds_supported() if use_dir_fds is None else use_dir_fds
        self._fd: int | None = None
        self._opened = False

    @classmethod
    def of_slot(cls, bounds: Bounds, path: Path, *, use_dir_fds: bool | None = None) -> SlotFiles:
        """The slot at `path`, proven by the guard; raises Unconfined. The directory opened is the one
        the guard checked: a swap between the check and the open is refused."""
        checked = check_slot(bounds, path)
        files = cls(checked.path, use_dir_fds=use_dir_fds)
        files.open()
        try:
            seen = os.lstat(checked.path)
            opened = os.fstat(files._fd) if files._fd is not None else seen
            if (seen.st_dev, seen.st_ino) != (opened.st_dev, opened.st_ino):
                raise Unconfined(path, "it was replaced while it was being opened")
            check_slot(bounds, path)
        except BaseException:
            files.close()
            raise
        return files

    def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        if self.dir_fds:
            try:
                self._fd = os.open(self.root, os.O_RDONLY | DIRECTORY | NOFOLLOW)
            except OSError as exc:
                raise Unconfined(self.root, f"cannot be opened as a directory ({exc.strerror})") from exc
        elif not stat.S_ISDIR(os.lstat(self.root).st_mode):
            raise Unconfined(self.root, "it is not a directory")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._opened = False

    def __enter__(self) -> SlotFiles:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- the two kinds of write ------------------------------------------------------------------

    def copy_in(self, rel: str, source: Path) -> bool:
        """Copy the regular file or symlink `source` to `rel`. False when `rel` exists already or the
        source is neither; raises Refused when `rel` would leave the directory."""
        try:
            st = os.lstat(source)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            return self.link_in(rel, os.readlink(source))
        if not stat.S_ISREG(st.st_mode):
            return False
        parts = self._parts(rel)
        with open(source, "rb") as src:
            made = self._create(parts, lambda parent, name: self._new_file(parent, name, st.st_mode & 0o777))
            if made is None:
                return False
            with os.fdopen(made, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                if os.utime in os.supports_fd:
                    os.utime(dst.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
        return True

    def link_in(self, rel: str, target: str | Path) -> bool:
        """A symlink at `rel` pointing at `target` (which is not followed here). False when `rel` exists
        already; raises Refused when `rel` would leave the directory."""
        parts = self._parts(rel)
        return self._create(parts, lambda parent, name: self._new_link(parent, name, str(target))) is not None

    # ---- one step at a time ----------------------------------------------------------------------

    def _parts(self, rel: str) -> tuple[str, ...]:
        try:
            return relative_parts(rel, type(PurePath(self.root)))
        except ValueError as exc:
            raise Refused(str(exc)) from exc

    def _create(self, parts: tuple[str, ...], make: _Maker) -> int | None:
        """Walk to the folder of `parts[-1]` (creating folders), then `make` the entry there. None when
        the entry exists already."""
        if self.dir_fds:
            assert self._fd is not None
            parent = self._fd
            opened: list[int] = []
            try:
                for part in parts[:-1]:
                    parent = self._step_fd(parent, part)
                    opened.append(parent)
                return make(parent, parts[-1])
            finally:
                for fd in opened:
                    os.close(fd)
        folder = self.root
        for part in parts[:-1]:
            folder = self._step_path(folder, part)
        return make(folder, parts[-1])

    def _step_fd(self, parent: int, name: str) -> int:
        for _ in range(2):
            try:
                return os.open(name, os.O_RDONLY | DIRECTORY | NOFOLLOW, dir_fd=parent)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o777, dir_fd=parent)
                except FileExistsError:
                    continue  # made meanwhile: open what is there, still without following it
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file
                raise Refused(f"{name!r} is not a folder of the slot ({exc.strerror})") from exc
        return os.open(name, os.O_RDONLY | DIRECTORY | NOFOLLOW, dir_fd=parent)

    def _step_path(self, folder: Path, name: str) -> Path:
        path = folder / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or _is_link_or_junction(st):
            raise Refused(f"{name!r} is not a folder of the slot (a link or a file)")
        return path

    @staticmethod
    def _new_file(parent: int | Path, name: str, mode: int) -> int | None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | BINARY
        try:
            if isinstance(parent, int):
                return os.open(name, flags, mode, dir_fd=parent)
            return os.open(parent / name, flags, mode)
        except FileExistsError:
            return None

    @staticmethod
    def _new_link(parent: int | Path, name: str, target: str) -> int | None:
        try:
            if isinstance(parent, int):
                os.symlink(target, name, dir_fd=parent)
            else:
                os.symlink(target, parent / name)
        except FileExistsError:
            return None
        return -1  # made; there is no descriptor to hand back


def _is_link_or_junction(st: os.stat_result) -> bool:
    # A Windows junction is a reparse point that lstat does not call a link.
    reparse = getattr(stat, "FILE_ATTRIBUTE_REPARSE_POINT", 0)
    return stat.S_ISLNK(st.st_mode) or bool(getattr(st, "st_file_attributes", 0) & reparse)
