"""A FREE slot's seal: what lets the next allocation skip its own `git status` when nothing has
touched the slot since the release that found it clean.

A release runs `git status` on the slot anyway (to refuse or save uncommitted work). When that status
is clean and the slot is then detached in place, the release writes a seal into the slot's admin
directory (`.git/worktrees/<name>/agent-coord-seal`): the time taken just before the status started,
less a margin, the detached commit, and the identity of the slot's index file (device, inode, size,
modification and change times in ns).

The next allocation trusts the status the release ran, instead of running its own, only when all of
this holds at once:

* HEAD still names the sealed commit (read from the admin directory's `HEAD`), no `index.lock` and no
  stopped operation (rebase, merge, …) is there;
* the index file is the same file, unchanged: a staged change (`git add`, `git rm --cached`) writes a
  new index, which has another inode or change time;
* no file or directory of the worktree changed since the seal's time: `find <slot> -newerct @<time>`
  prints nothing. The kernel sets an inode's change time (ctime) on every write, chmod, rename or
  link, and nobody can set it back; a file edited in place has a new ctime, a new or deleted file
  gives its directory one.

Any doubt (no seal, a seal that does not parse, a `find` that fails or prints anything) means the
allocation runs `git status` as before: the seal only ever spares work, it never decides on its own
that something is dirty.

The margin (`MARGIN_NS`) covers the kernel's coarse timestamps (a clock tick late, at most) and small
clock steps. A seal is written only when the slot and its admin directory are on one file system
and the seal file's own change time is not older than the seal's time (a file system whose clock runs
behind ours, an NFS server, would stamp later writes as older). What a seal cannot see: a change of
what git ignores (`.git/info/exclude`, `core.excludesFile`) that turns an old ignored file into an
untracked one; that file was in the slot before, untouched.

Blocking functions (file reads and writes): call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.engine.child_process import run_child
from agent_coord.engine.git.confinement import Confined, check_slot
from agent_coord.engine.git.operations import OPERATIONS

SEAL_FILE = "agent-coord-seal"
MARGIN_NS = 1_000_000_000
SEAL_VERSION = 1

FileId = tuple[int, int, int, int, int]  # device, inode, size, mtime ns, ctime ns


@dataclass(frozen=True)
class SealMark:
    """Taken right before the release's `git status`."""

    since_ns: int  # everything that changes in the worktree from now on has a ctime after this
    index: FileId | None  # None: the slot has no index file (nothing staged, nothing to compare)


@dataclass(frozen=True)
class Seal:
    since_ns: int
    head: str
    index: FileId | None
    branch: str | None  # the branch the release detached the slot from, at `head` then


@dataclass(frozen=True)
class Proof:
    """What an allocation may take as its status: clean, detached at `head`."""

    head: str
    saved_by_branch: bool  # `head` is still its release branch's tip: no commit only HEAD holds


def _file_id(path: Path) -> FileId | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def mark(admin: Path) -> SealMark:
    """Before the release's status; an older seal goes (a seal proves only what the last release saw)."""
    drop(admin)
    return SealMark(time.time_ns() - MARGIN_NS, _file_id(admin / "index"))


def _head(admin: Path) -> str | None:
    try:
        text = (admin / "HEAD").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text) else None


def _busy(admin: Path) -> bool:
    """An `index.lock` (a git at work, or a killed one) or a stopped operation: not for a seal."""
    return any(os.path.lexists(admin / m) for m in ("index.lock", *(op.marker for op in OPERATIONS)))


def drop(admin: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(admin / SEAL_FILE)


def write(slot_dir: Path, admin: Path, before: SealMark, head: str, branch: str | None) -> bool:
    """Seal a slot found clean by a status that started after `before`, and since detached at `head`
    (from `branch`, when it was on one). False (and no seal) when what the status saw may have
    changed: another index, another HEAD."""
    drop(admin)
    try:
        if os.lstat(slot_dir).st_dev != os.lstat(admin).st_dev:
            return False  # two file systems: two clocks
        if _head(admin) != head or _file_id(admin / "index") != before.index or _busy(admin):
            return False
        body = {
            "version": SEAL_VERSION,
            "since_ns": before.since_ns,
            "head": head,
            "index": before.index,
            "branch": branch,
        }
        tmp = admin / f"{SEAL_FILE}.tmp"
        tmp.write_text(json.dumps(body), encoding="utf-8")
        os.replace(tmp, admin / SEAL_FILE)
        if os.lstat(admin / SEAL_FILE).st_ctime_ns < before.since_ns:
            drop(admin)  # this file system stamps writes older than our clock: ctimes prove nothing
            return False
    except OSError:
        drop(admin)
        return False
    return True


def read(admin: Path) -> Seal | None:
    """The slot's seal if it still holds as far as the admin directory tells (HEAD, index, no lock or
    operation); the worktree itself is `untouched`'s to check. Consumed: a seal is used once."""
    try:
        raw = (admin / SEAL_FILE).read_bytes()
    except OSError:
        return None
    drop(admin)
    try:
        body = json.loads(raw)
        if body["version"] != SEAL_VERSION:
            return None
        index = body["index"]
        dev, ino, size, mtime, ctime = (int(v) for v in index) if index is not None else (0, 0, 0, 0, 0)
        branch = body["branch"]
        seal = Seal(
            int(body["since_ns"]),
            str(body["head"]),
            None if index is None else (dev, ino, size, mtime, ctime),
            None if branch is None else str(branch),
        )
    except (KeyError, TypeError, ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return None
    if _head(admin) != seal.head or _file_id(admin / "index") != seal.index or _busy(admin):
        return None
    return seal


def branch_tip_is(common_dir: Path, branch: str, head: str) -> bool:
    """Does `branch` point at `head`, as its loose ref file says? Only a yes is trusted (a loose ref
    overrides a packed one); a packed or missing ref, a reftable repository, a symbolic ref or
    anything odd is a no, and the caller asks git."""
    parts = branch.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return False
    ref = common_dir.joinpath("refs", "heads", *parts)
    try:
        if not os.path.isfile(ref) or os.path.islink(ref):
            return False
        return ref.read_text(encoding="ascii").strip() == head
    except (OSError, UnicodeDecodeError):
        return False


def _instant(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"@{seconds}.{rest:09d}"


def find_expression(seal: Seal) -> list[str]:
    """What `find` prints when the seal may not be trusted: an entry changed since the seal's time, or
    a file whose modification time falls in the second the index was written. Git re-reads such
    "racily clean" files at every status until something rewrites the index; the allocation's own
    status (which may write it back) does so, where a skipped one would leave every later release
    paying for it. Files written later than that second are not racy: git compares their stat data."""
    changed = ["-newerct", _instant(seal.since_ns)]
    if seal.index is None:
        return changed
    second = seal.index[3] // 1_000_000_000 * 1_000_000_000
    racy = ["!", "-type", "d", "-newermt", _instant(second - 1), "!", "-newermt", _instant(second + 999_999_999)]
    return ["(", *changed, "-o", "(", *racy, ")", ")"]


def _read_checked(slot: Confined) -> tuple[Path, Seal, bool] | None:
    checked = check_slot(slot.bounds, slot.path)
    seal = read(checked.admin)
    if seal is None:
        return None
    saved = seal.branch is not None and branch_tip_is(slot.bounds.common_dir, seal.branch, seal.head)
    return checked.path, seal, saved


async def untouched(slot: Confined) -> Proof | None:
    """Proof that the slot is clean and detached at the sealed commit: its admin files as sealed and no
    entry of its worktree changed since (one `find`, which stops at the first). None when anything is
    in doubt: the caller then runs `git status`."""
    found = await anyio.to_thread.run_sync(_read_checked, slot)
    if found is None:
        return None
    path, seal, saved = found
    result = await run_child(
        ["find", str(path), *find_expression(seal), "-print", "-quit"], env={**os.environ, "LC_ALL": "C"}
    )
    if result.returncode != 0 or result.stdout.strip() or result.stderr.strip():
        return None
    return Proof(seal.head, saved)


async def seal_after_release(slot: Confined, before: SealMark, head: str, branch: str | None) -> bool:
    def seal() -> bool:
        checked = check_slot(slot.bounds, slot.path)
        return write(checked.path, checked.admin, before, head, branch)

    return await anyio.to_thread.run_sync(seal)


async def mark_before_status(slot: Confined) -> SealMark:
    return await anyio.to_thread.run_sync(lambda: mark(check_slot(slot.bounds, slot.path).admin))
