"""The one guard between agent-coord and everything outside its pool.

Every git command whose working directory is a slot, and every move or deletion of a slot's directory,
goes through `check_slot` immediately before it runs: a `Confined` path is the only kind of path the git
driver accepts for a slot, and the driver checks it again at every call. A slot passes when

* its directory is strictly inside this repository's pool root (the entry itself is never followed:
  a symlink in place of a slot fails, whatever it points at);
* it is a linked worktree *of this repository*: its `.git` is a regular file naming an administrative
  directory `<common dir>/worktrees/<id>`, whose `gitdir` names this `.git` back and whose `commondir`
  leads to this repository's common directory;
* it is not the main worktree, nor an ancestor of it.

Git is then run with `GIT_DIR` (that administrative directory) and `GIT_WORK_TREE` (the slot's real
path) set, so it never discovers a repository by walking up from a directory that lost its `.git`.
What fails is never touched: the callers quarantine the slot and say why.

What remains is the moment between the check (file reads, microseconds) and git opening the directory:
a swap inside that moment is not seen. Every later command checks again.

The pool root itself is checked when a repository is resolved and at every validation pass
(`check_pool_root`): one that is the repository, an ancestor of it, inside its `.git`, that holds
another repository, or that holds anything agent-coord did not put there while it is not marked as
this repository's pool (`POOL_MARKER`), is refused.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.git_error import GitError
from agent_coord.engine.git.path_rules import entry_problem, pool_root_problem

LOST_AND_FOUND = ".lost+found"


class Unconfined(GitError):
    """A path failed the guard. A GitError, so that every caller's "git failed here" path (roll back,
    quarantine, refuse) applies, and never the path that goes on."""

    def __init__(self, path: Path, why: str, *, unreadable: bool = False) -> None:
        self.path = path
        self.why = why
        # The guard could not look (too many open files, permissions, a stale network handle): a fault
        # of the moment or of the machine, not proof that the entry is not a slot.
        self.unreadable = unreadable
        super().__init__(["confinement"], 1, f"fatal: {path} is not a slot of this pool: {why}")


class PoolRootRefused(CoordError):
    """A pool root that would put the repository, or other people's files, in the pool's hands."""

    def __init__(self, message: str) -> None:
        super().__init__(
            ErrorCode.INVALID_ARGUMENT,
            message,
            next_step=f"set {SETTING} to a folder agent-coord may own (one it created, or an empty one) "
            "that the user running it can read and write, then start again.",
        )


@dataclass(frozen=True)
class Bounds:
    """One repository's pool: where its slots may be, and whose worktrees they must be. Real paths."""

    repo: Path  # the main worktree
    common_dir: Path  # its `.git`
    pool_root: Path

    @classmethod
    def of(cls, repo: str | Path, pool_root: str | Path) -> Bounds:
        """Blocking (resolves paths): call it from a worker thread."""
        top = Path(os.path.realpath(repo))
        return cls(top, Path(os.path.realpath(top / ".git")), Path(os.path.realpath(pool_root)))

    def slot(self, path: str | Path) -> Confined:
        return Confined(self, Path(os.path.abspath(path)))


@dataclass(frozen=True)
class Confined:
    """A slot's path with the bounds it must be checked against; the git driver checks it at every call."""

    bounds: Bounds
    path: Path  # absolute, not resolved

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class CheckedSlot:
    path: Path  # real path of the slot's directory
    admin: Path  # real path of its administrative directory

    def git_env(self) -> dict[str, str]:
        return {"GIT_DIR": str(self.admin), "GIT_WORK_TREE": str(self.path)}


class Shape:
    """What is at a slot's path, for callers that must tell a vanished worktree from a foreign thing."""

    WORKTREE = "worktree"  # passes the guard
    ABSENT = "absent"  # nothing there
    BARE_DIRECTORY = "bare_directory"  # a real directory without any `.git`: a worktree that lost it


def inside_pool(bounds: Bounds, path: Path) -> Path:
    """The real path of the entry `path` names in the pool root, without following the entry itself."""
    real = Path(os.path.realpath(path.parent)) / path.name
    if path.name == LOST_AND_FOUND:
        raise Unconfined(path, f"{LOST_AND_FOUND} is where leftovers are kept, not a slot")
    problem = entry_problem(bounds.pool_root, bounds.repo, bounds.common_dir, real)
    if problem is not None:
        raise Unconfined(path, problem)
    return real


def shape(bounds: Bounds, path: Path) -> str:
    """`Shape.WORKTREE`, `Shape.ABSENT` or `Shape.BARE_DIRECTORY`; raises Unconfined for anything else
    (a symlink, a file, another repository, another repository's worktree). Blocking."""
    real = inside_pool(bounds, path)
    try:
        st = os.lstat(real)
    except FileNotFoundError:
        return Shape.ABSENT
    except OSError as exc:
        raise Unconfined(path, f"cannot be read ({exc.strerror})", unreadable=True) from exc
    if stat.S_ISLNK(st.st_mode):
        raise Unconfined(path, f"it is a symlink (to {os.readlink(real)})")
    if not stat.S_ISDIR(st.st_mode):
        raise Unconfined(path, "it is not a directory")
    if not os.path.lexists(real / ".git"):
        return Shape.BARE_DIRECTORY
    check_slot(bounds, path)
    return Shape.WORKTREE


def check_slot(bounds: Bounds, path: Path) -> CheckedSlot:
    """Prove that `path` is a linked worktree of this repository inside its pool root (see the module
    docstring), or raise Unconfined. Blocking: small file reads."""
    real = inside_pool(bounds, path)
    try:
        st = os.lstat(real)
        if stat.S_ISLNK(st.st_mode):
            raise Unconfined(path, f"it is a symlink (to {os.readlink(real)})")
        if not stat.S_ISDIR(st.st_mode):
            raise Unconfined(path, "it is not a directory")
        dotgit = real / ".git"
        gst = os.lstat(dotgit)
        if stat.S_ISDIR(gst.st_mode):
            raise Unconfined(path, "it is a repository of its own (.git is a directory)")
        if not stat.S_ISREG(gst.st_mode):
            raise Unconfined(path, "its .git is not a regular file")
        line = dotgit.read_text(encoding="utf-8").strip()
        target = line.removeprefix("gitdir: ").strip()
        if not line.startswith("gitdir: ") or not target:
            raise Unconfined(path, "its .git does not name a git directory")
        admin = Path(os.path.realpath(real / target))
        if admin.parent != bounds.common_dir / "worktrees":
            raise Unconfined(path, f"its .git points into another repository ({admin})")
        back = (admin / "gitdir").read_text(encoding="utf-8").strip()
        if not back or Path(os.path.realpath(admin / back)) != dotgit:
            raise Unconfined(path, f"git's entry {admin.name} names another directory ({back})")
        common = (admin / "commondir").read_text(encoding="utf-8").strip()
        if Path(os.path.realpath(admin / common)) != bounds.common_dir:
            raise Unconfined(path, f"git's entry {admin.name} belongs to another repository")
    except FileNotFoundError as exc:
        raise Unconfined(path, f"{exc.filename} is missing") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Unconfined(path, f"cannot be read ({exc})", unreadable=True) from exc
    return CheckedSlot(real, admin)


def check_entry(bounds: Bounds, path: Path) -> Path:
    """An entry directly inside the pool root that may be moved aside: returns its (unresolved, real
    parent) path. The entry itself is renamed, never followed, so a symlink moves as a link. Blocking."""
    real = inside_pool(bounds, path)
    target = Path(os.path.realpath(real))
    if target == bounds.repo or target in bounds.repo.parents or bounds.common_dir in (target, *target.parents):
        # Only reachable through a link; the link would move, but a person made it: leave it.
        raise Unconfined(path, "it leads to the repository")
    return real


POOL_MARKER = ".agent-coord-pool"
# What a desktop leaves in any folder a person opened; never a reason to refuse a pool root.
DESKTOP_LITTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
SETTING = "AGENT_COORD_POOL_ROOT"


def marker_text(bounds: Bounds) -> str:
    return f"agent-coord pool of {bounds.repo}\n"


def pool_marker(bounds: Bounds) -> str | None:
    """The marker's text when the pool root carries one (a regular file, never followed), else None."""
    marker = bounds.pool_root / POOL_MARKER
    try:
        fd = os.open(marker, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # a link or something unreadable: a marker, but not ours
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)


def mark_pool_root(bounds: Bounds, *, create: bool) -> None:
    """Mark the pool root as this repository's pool, once `check_pool_root` found it the pool's own (or
    it is about to be made): a later pass then knows that what it finds there was put into the pool's
    own folder. `create` makes the folder too. Blocking."""
    root = bounds.pool_root
    if create:
        root.mkdir(parents=True, exist_ok=True)
    elif not root.is_dir():
        return
    if os.path.lexists(root / POOL_MARKER):
        return
    # Written whole under another name, then linked into place (never over a marker already there): a
    # process killed half-way leaves no empty marker, which would read as another pool's. Best effort:
    # a pool root this user cannot write to stays unmarked, which only keeps its checks strict.
    draft = root / f"{POOL_MARKER}.{os.getpid()}.tmp"
    try:
        draft.write_text(marker_text(bounds), encoding="utf-8")
        try:
            os.link(draft, root / POOL_MARKER)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    except OSError:
        return


def check_pool_root(bounds: Bounds, recorded: set[str]) -> bool:
    """Refuse a pool root agent-coord may not act in (PoolRootRefused, naming the setting). Blocking.

    * Never the repository, an ancestor of it, or a folder inside its `.git`.
    * Never one that holds another repository (a directory with its own `.git`, or another
      repository's worktree), nor one marked as another repository's pool.
    * A folder agent-coord has not marked as its own (`mark_pool_root`) holds only the slots the store
      records, this repository's own worktrees (a person's, left alone until imported), `.lost+found`
      and desktop litter: a folder of other projects, the home directory or a download folder is
      refused, never adopted or tidied. A marked pool root may hold anything else: a leftover there is
      moved to `.lost+found`, a worktree of this repository adopted.

    Returns whether the pool root is the pool's own: marked, or holding nothing but recorded slots
    (the caller may then mark it)."""
    root, repo = bounds.pool_root, bounds.repo
    problem = pool_root_problem(root, repo, bounds.common_dir)
    if problem is not None:
        raise PoolRootRefused(
            f"{SETTING} {root} {problem}; use a directory of its own, such as "
            f"{repo.parent / (repo.name + '.worktrees')}"
        )
    try:
        entries = sorted(root.iterdir())
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise PoolRootRefused(f"{SETTING} {root} cannot be read: {exc.strerror}") from exc
    marker = pool_marker(bounds)
    if marker is not None and marker != marker_text(bounds):
        raise PoolRootRefused(
            f"{SETTING} {root} is marked as another pool ({POOL_MARKER}: {marker.strip()[:200]!r}); "
            "use a directory of its own"
        )
    real_recorded = {os.path.realpath(p) for p in recorded}
    strangers: list[str] = []
    unmade: list[str] = []
    persons = False
    for entry in entries:
        if entry.name in (LOST_AND_FOUND, POOL_MARKER) or entry.name in DESKTOP_LITTER:
            continue
        if entry.name.startswith(POOL_MARKER + ".") and entry.name.endswith(".tmp"):  # being marked
            continue
        if str(entry) in recorded or str(entry) in real_recorded:
            continue
        if not entry.is_symlink() and os.path.lexists(entry / ".git"):
            try:
                check_slot(bounds, entry)
            except Unconfined:
                strangers.append(entry.name)
            else:
                persons = True
            continue
        unmade.append(entry.name)
    if strangers:
        raise PoolRootRefused(
            f"{SETTING} {root} holds other repositories ({', '.join(strangers[:5])}); a pool root holds "
            "only this repository's worktrees: use a directory of its own"
        )
    if marker is None and unmade:
        more = f" and {len(unmade) - 5} more" if len(unmade) > 5 else ""
        raise PoolRootRefused(
            f"{SETTING} {root} holds files agent-coord did not make ({', '.join(unmade[:5])}{more}); "
            "a pool root is an empty or new directory of its own, such as "
            f"{repo.parent / (repo.name + '.worktrees')}"
        )
    return marker is not None or not (persons or unmade)


def pool_root_is_marked(bounds: Bounds) -> bool:
    """Blocking."""
    return pool_marker(bounds) == marker_text(bounds)
