"""The confinement guard's rules about names and paths, on pure paths only.

No file system is read here, so the rules can be proven for both flavours on any machine: POSIX
paths and Windows paths (`PureWindowsPath`: drive letters, UNC shares, both separators, names compared
without case). The guard (`confinement`) resolves what is real first and then asks these rules.

Windows reads some names as other names: it drops trailing dots and spaces (`wt-1. ` opens `wt-1`,
`.. ` opens the parent), opens a device for `NUL`, `CON`, `COM1`… (with any extension), and reads
`name:stream` as a stream of `name`. Such a name is refused wherever a path is Windows-flavoured; a
POSIX name may hold any byte but `/` and NUL, and only `.` and `..` are special there.
"""

from __future__ import annotations

import re
from pathlib import PurePath, PureWindowsPath

# Device names Windows opens whatever the extension (`nul.txt` is NUL), compared without case.
WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"com{i}" for i in "123456789¹²³"}
    | {f"lpt{i}" for i in "123456789¹²³"}
)
# Characters Windows refuses in a name (plus the control characters), and `:` (a stream or a drive).
WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*\\/\x00-\x1f]')


def name_problem(name: str, *, windows: bool = False) -> str | None:
    """Why `name` cannot be one entry of a path we create or act on, or None; `windows` adds the
    names Windows reads as other names."""
    if name in {"", ".", ".."}:
        return f"{name!r} is not a name"
    if "\x00" in name or "/" in name:
        return f"{name!r} holds a separator or a NUL byte"
    if not windows:
        return None
    if WINDOWS_FORBIDDEN.search(name):
        return f"{name!r} holds a character Windows reads as a separator, a drive or a stream"
    if name[-1] in ". ":
        return f"{name!r} ends in a dot or a space, which Windows drops (it would name another entry)"
    if name.split(".", 1)[0].rstrip(" ").casefold() in WINDOWS_DEVICES:
        return f"{name!r} is a device name on Windows"
    return None


def relative_parts(rel: str, flavour: type[PurePath] = PurePath) -> tuple[str, ...]:
    """The entries of `rel`, a path relative to a directory we write in, or ValueError saying why it
    could leave that directory or name another entry than it says: absolute, a drive or a share, `..`,
    or (Windows) a name Windows reads as another. `flavour` says how `rel` is split: `PureWindowsPath`
    splits on both slashes, as Windows does."""
    path = flavour(rel)
    if not rel or path.is_absolute() or path.anchor or path.drive:
        raise ValueError(f"{rel!r} is not a relative path")
    parts = tuple(path.parts)
    if not parts:
        raise ValueError(f"{rel!r} names the directory itself")
    for part in parts:
        problem = name_problem(part, windows=windows_flavoured(path))
        if problem is not None:
            raise ValueError(f"{rel!r}: {problem}")
    return parts


def same_or_inside(path: PurePath, root: PurePath) -> bool:
    """Is `path` `root` or below it? Both resolved, of one flavour (a Windows path compares without case)."""
    return path == root or root in path.parents


def entry_problem(pool_root: PurePath, repo: PurePath, common_dir: PurePath, entry: PurePath) -> str | None:
    """Why `entry` (its parent resolved, the entry itself not) is not a place for a slot, or None: it
    must be directly inside the pool root, carry a name no platform reads as another entry, and be
    neither the repository, an ancestor of it, nor its `.git`."""
    if not entry.is_absolute() or entry.parent != pool_root:
        return f"not directly inside the pool root {pool_root}"
    problem = name_problem(entry.name, windows=windows_flavoured(entry))
    if problem is not None:
        return problem
    if entry == repo or entry in repo.parents or same_or_inside(entry, common_dir):
        return "it is the repository or one of its ancestors"
    return None


def pool_root_problem(pool_root: PurePath, repo: PurePath, common_dir: PurePath) -> str | None:
    """Why a pool root (resolved) can never be one, whatever it holds: the repository, an ancestor of
    it, or inside its `.git`. None otherwise."""
    if pool_root == repo:
        return "is the repository itself"
    if pool_root in repo.parents:
        return f"contains the repository {repo}"
    if same_or_inside(pool_root, common_dir):
        return "is inside the repository's .git"
    return None


def windows_flavoured(path: PurePath) -> bool:
    return isinstance(path, PureWindowsPath)
