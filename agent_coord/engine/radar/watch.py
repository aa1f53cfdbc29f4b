"""Which worktrees changed since the last pass, from Linux inotify: the radar's cheap change detection.

A pass must notice an unstaged edit of a tracked file, which neither the index's mtime nor HEAD shows;
git finds it only by stat-ing every tracked file (`git status`, `git add -A`: tens of ms per worktree
of 5,000 files). inotify tells us instead: every directory of a watched worktree, and its git admin
directory (index, HEAD), is watched; any event marks the worktree changed, and only changed worktrees
are snapshotted again. Each event also names the directory it happened in, so `touched()` tells a pass
which directories of a worktree to look at again (the snapshot then re-reads only those). Where it cannot
be trusted, the worktree counts as changed on every pass, with every directory to look at:

* not Linux, or inotify unavailable, or the watch limit (`fs.inotify.max_user_watches`) reached;
* the kernel's event queue overflowed (every worktree);
* the worktree's own index changed (an agent's `git add`, `rm --cached`, commit or checkout may change
  which files are tracked: only a snapshot from that index is sure to agree), or a `.gitignore` or
  `.gitattributes` did (a file the scratch index once took stays in it when it becomes ignored);
* and, as a safety net against anything missed (a directory created between its parent's event and our
  watch on it is re-walked, but a network filesystem sends no events at all), every
  `FULL_EVERY_PASSES` passes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from dataclasses import dataclass, field

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
HEADER = struct.Struct("iIII")
FULL_EVERY_PASSES = 30  # 5 minutes at the default interval
# Files of a worktree's git admin directory whose change leaves the working tree's content and what is
# tracked as they were (HEAD is re-read by every pass anyway).
ADMIN_HARMLESS = ("HEAD", "HEAD.lock", "ORIG_HEAD", "ORIG_HEAD.lock", "FETCH_HEAD", "COMMIT_EDITMSG", "logs")
# Files whose change alters how every file below them is read (ignored or not, filters): a file once
# added stays in an index even when it becomes ignored, so only a snapshot from the agent's index agrees.
RULE_FILES = (".gitignore", ".gitattributes")


@dataclass
class _Watched:
    wds: set[int] = field(default_factory=set)
    complete: bool = True  # every directory got its watch
    admin: str = ""


class WorktreeWatcher:
    """Tracks a set of worktrees; `changed()` returns those to snapshot again and forgets the marks."""

    def __init__(self) -> None:
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._watched: dict[str, _Watched] = {}  # worktree path -> its watches
        self._owner: dict[int, tuple[str, str]] = {}  # wd -> (worktree path, directory)
        self._dirty: set[str] = set()
        # Per dirty worktree, the directories (relative, "" the top) events happened in since the last
        # `changed()`; None: anything may have changed.
        self._dirs: dict[str, set[str] | None] = {}
        self._touched: dict[str, set[str] | None] = {}  # the same, as of the last `changed()`
        self._passes = 0

    def _open(self) -> None:
        """On first use, not at construction: every server has a watcher, only the radar's holder uses
        it, and inotify instances are few (`fs.inotify.max_user_instances`, 128 by default, per user)."""
        if self._fd >= 0 or not sys.platform.startswith("linux"):
            return
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = int(libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
            if fd >= 0:
                self._libc, self._fd = libc, fd

    @property
    def available(self) -> bool:
        return self._fd >= 0

    def close(self) -> None:
        """Drop every watch and the inotify instance (a later `changed()` starts afresh)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._watched.clear()
        self._owner.clear()
        self._dirty.clear()
        self._dirs.clear()
        self._touched.clear()

    def changed(self, worktrees: dict[str, str]) -> set[str]:
        """Of `worktrees` ({path: git admin dir}), those that may have changed since the last call.
        Starts watching new ones (which count as changed) and stops watching those no longer given."""
        self._passes += 1
        self._open()
        self._drain()
        for gone in set(self._watched) - set(worktrees):
            self._unwatch(gone)
        out: set[str] = set()
        full = self._passes % FULL_EVERY_PASSES == 0
        self._touched = {}
        for path, admin in worktrees.items():
            if path not in self._watched:
                self._watch(path, admin)
                out.add(path)
                self._touched[path] = None
            elif full or not self._watched[path].complete:
                out.add(path)
                self._touched[path] = None
            elif path in self._dirty:
                out.add(path)
                self._touched[path] = self._dirs.get(path)
            else:
                self._touched[path] = set()
        self._dirty -= out
        for path in out:
            self._dirs.pop(path, None)
        return out

    def touched(self, path: str) -> set[str] | None:
        """The directories of `path` (relative to it, "" its top) in which something changed, as of the
        last `changed()`: set() when nothing did, None when anything may have (look at everything)."""
        return self._touched.get(path)

    def pending(self) -> bool:
        """Whether a watched worktree changed since the last `changed()` (reads the queued events)."""
        self._drain()
        return bool(self._dirty)

    def mark(self, path: str) -> None:
        """Snapshot `path` again, all of it, at the next pass (a snapshot of it failed, say)."""
        self._dirty.add(path)
        self._dirs[path] = None

    # ---- inotify plumbing ----------------------------------------------------------------------

    def _add(self, worktree: str, directory: str) -> bool:
        if self._libc is None:
            return False
        wd = int(self._libc.inotify_add_watch(self._fd, os.fsencode(directory), MASK))
        if wd < 0:
            return False
        self._watched[worktree].wds.add(wd)
        self._owner[wd] = (worktree, directory)
        return True

    def _watch(self, worktree: str, admin: str) -> None:
        entry = self._watched[worktree] = _Watched(admin=admin)
        if not self.available:
            entry.complete = False
            return
        entry.complete = self._add(worktree, admin) and self._walk(worktree, worktree)

    def _walk(self, worktree: str, top: str) -> bool:
        complete = True
        for root, dirs, _ in os.walk(top):
            if ".git" in dirs:
                dirs.remove(".git")
            if not self._add(worktree, root):
                complete = False
                if ctypes.get_errno() == errno.ENOSPC:
                    return False  # the watch limit: this worktree falls back to a snapshot every pass
        return complete

    def _unwatch(self, worktree: str) -> None:
        entry = self._watched.pop(worktree)
        for wd in entry.wds:
            self._owner.pop(wd, None)
            if self._libc is not None:
                self._libc.inotify_rm_watch(self._fd, wd)
        self._dirty.discard(worktree)
        self._dirs.pop(worktree, None)

    def _drain(self) -> None:
        if not self.available:
            return
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset + HEADER.size <= len(data):
                wd, mask, _, length = HEADER.unpack_from(data, offset)
                name = data[offset + HEADER.size : offset + HEADER.size + length].rstrip(b"\0")
                offset += HEADER.size + length
                self._event(wd, mask, os.fsdecode(name))

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self._dirty.update(self._watched)
            self._dirs.update(dict.fromkeys(self._watched))
            return
        owner = self._owner.get(wd)
        if owner is None:
            return
        worktree, directory = owner
        self._dirty.add(worktree)
        self._note(worktree, directory, mask, name)
        if mask & IN_IGNORED:
            self._owner.pop(wd, None)
            if worktree in self._watched:
                self._watched[worktree].wds.discard(wd)
        elif (
            mask & IN_ISDIR
            and mask & (IN_CREATE | IN_MOVED_TO)
            and name != ".git"
            and worktree in self._watched
            # A new directory: watch it and everything already inside it.
            and not self._walk(worktree, os.path.join(directory, name))
        ):
            self._watched[worktree].complete = False

    def _note(self, worktree: str, directory: str, mask: int, name: str) -> None:
        """Remember where in `worktree` the event happened (see `touched`)."""
        entry = self._watched.get(worktree)
        seen = self._dirs.get(worktree, set())
        if seen is None or entry is None:
            self._dirs[worktree] = None
            return
        if directory == entry.admin:
            if name not in ADMIN_HARMLESS:
                self._dirs[worktree] = None  # the index: what is tracked may have changed
            else:
                self._dirs[worktree] = seen
            return
        if (directory == worktree and mask & (IN_DELETE_SELF | IN_MOVE_SELF)) or name in RULE_FILES:
            self._dirs[worktree] = None
            return
        relative = os.path.relpath(directory, worktree)
        seen.add("" if relative == os.curdir else relative.replace(os.sep, "/"))
        self._dirs[worktree] = seen
