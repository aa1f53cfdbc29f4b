"""Fingerprints of what lies outside a pool: the main checkout, a sibling directory, another repository,
an enclosing repository. Taken before and after a run; any difference is something agent-coord touched
that it must not.

The main checkout's `.git` legitimately gains rescue refs, objects and worktree entries; what a person
has there (the working tree, the index, HEAD, the branches) must stay byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

# Inside a main checkout's `.git`, what agent-coord may add to (rescue refs and their objects, its
# worktrees' entries and logs); everything else there is compared.
GIT_DIR_GROWS = ("objects", "refs/agent-coord", "logs", "worktrees", "packed-refs")


def fingerprint(root: Path, *, main_checkout: bool = False, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every entry under `root` (not following symlinks): its kind, mode and a hash of its bytes. Names
    in `skip` at the top level are left out (the project and its pool, inside an enclosing repository)."""
    found: dict[str, str] = {}
    if not os.path.lexists(root):
        return {"": "absent"}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        if main_checkout and rel_dir == Path(".git"):
            dirnames[:] = [d for d in dirnames if d not in GIT_DIR_GROWS and not d.startswith("refs")]
            filenames = [f for f in filenames if f not in GIT_DIR_GROWS]
            found.update(_refs(root / ".git" / "refs" / "heads", ".git/refs/heads"))
        for name in [*filenames, *dirnames]:
            full = Path(dirpath) / name
            st = os.lstat(full)
            rel = (rel_dir / name).as_posix()
            if stat.S_ISLNK(st.st_mode):
                found[rel] = f"link:{os.readlink(full)}"
            elif stat.S_ISREG(st.st_mode):
                found[rel] = f"file:{st.st_mode & 0o777:o}:{hashlib.sha256(full.read_bytes()).hexdigest()}"
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = f"dir:{st.st_mode & 0o777:o}"
    return found


def _refs(root: Path, prefix: str) -> dict[str, str]:
    """Each branch ref file: a new branch may appear (an allocation makes one); an existing one must
    not move."""
    found: dict[str, str] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            full = Path(dirpath) / name
            found[f"{prefix}/{full.relative_to(root).as_posix()}"] = full.read_text()
    return found


class Outside:
    """Fingerprints of the places a pool must never change, taken now, compared by `unchanged`."""

    def __init__(self, main: Path, *others: Path, enclosing: Path | None = None) -> None:
        """`enclosing`: a repository around the main checkout and its pool; compared without them."""
        self.main = main
        self.others = others
        self.enclosing = enclosing
        self.before = self._take()

    def _take(self) -> dict[str, dict[str, str]]:
        taken = {"main": fingerprint(self.main, main_checkout=True)}
        taken.update({str(p): fingerprint(p) for p in self.others})
        if self.enclosing is not None:
            inner = frozenset({self.main.name, f"{self.main.name}.worktrees", "moved-away"})
            taken["enclosing"] = fingerprint(self.enclosing, skip=inner)
        return taken

    def changes(self) -> list[str]:
        after = self._take()
        found: list[str] = []
        for place, was in self.before.items():
            now = after[place]
            for rel in sorted(set(was) | set(now)):
                if place == "main" and rel not in was and rel.startswith(".git/refs/heads/"):
                    continue  # a branch made by an allocation
                if was.get(rel) != now.get(rel):
                    found.append(f"{place}:{rel}: {was.get(rel)} -> {now.get(rel)}")
        return found

    def assert_unchanged(self) -> None:
        changed = self.changes()
        assert not changed, "outside the pool changed:\n" + "\n".join(changed[:20])
