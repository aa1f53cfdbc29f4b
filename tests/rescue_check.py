"""Reading a worktree and a rescue ref back, byte for byte, to prove the ref holds the worktree's work.

Used by the rescue tests and the fault campaign's checker: the working tree as the disk has it, the
index as git has it, and the same two read from a rescue commit (its tree, and its second parent's).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

IGNORED_TOP = {".git", ".env", "build"}  # tests/conftest.py's .gitignore: `.env`, `build/`
Entry = tuple[str, bytes]  # (git mode, content; a symlink's content is its target)


def run(cwd: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, input=stdin).stdout


def disk_state(worktree: Path) -> dict[str, Entry]:
    """Every file and symlink of the working tree, except `.git` and the ignored names of the test repos."""
    found: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(worktree):
        rel_dir = Path(dirpath).relative_to(worktree)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_TOP]
        for name in [*filenames, *(d for d in dirnames if (Path(dirpath) / d).is_symlink())]:
            full = Path(dirpath) / name
            rel = (rel_dir / name).as_posix()
            if rel in IGNORED_TOP:
                continue
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("120000", os.fsencode(os.readlink(full)))
            else:
                found[rel] = ("100755" if st.st_mode & 0o100 else "100644", full.read_bytes())
    return found


def tree_state(repo: Path, rev: str) -> dict[str, Entry]:
    """Every blob of a tree, with its mode and bytes."""
    out = run(repo, "ls-tree", "-r", "-z", "--full-tree", rev)
    entries: list[tuple[str, str, str]] = []
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, _, path = item.partition(b"\t")
        mode, kind, oid = meta.decode().split()
        if kind == "blob":
            entries.append((path.decode("utf-8", "surrogateescape"), mode, oid))
    contents = blobs(repo, [oid for _, _, oid in entries])
    return {path: (mode, contents[oid]) for path, mode, oid in entries}


def blobs(repo: Path, oids: list[str]) -> dict[str, bytes]:
    """The bytes of each blob, read by one `git cat-file --batch`."""
    wanted = sorted(set(oids))
    if not wanted:
        return {}
    out = run(repo, "cat-file", "--batch", stdin="".join(f"{o}\n" for o in wanted).encode())
    found: dict[str, bytes] = {}
    pos = 0
    for oid in wanted:
        header_end = out.index(b"\n", pos)
        size = int(out[pos:header_end].split()[2])
        found[oid] = out[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1
    return found


def index_entries(worktree: Path) -> dict[str, tuple[str, str]]:
    """The stage-0 entries of the worktree's index: path → (mode, blob id)."""
    out = run(worktree, "ls-files", "-s", "-z")
    found: dict[str, tuple[str, str]] = {}
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, _, path = item.partition(b"\t")
        mode, oid, stage = meta.decode().split()
        if stage == "0":
            found[path.decode("utf-8", "surrogateescape")] = (mode, oid)
    return found


def tree_entries(repo: Path, rev: str) -> dict[str, tuple[str, str]]:
    out = run(repo, "ls-tree", "-r", "-z", "--full-tree", rev)
    found: dict[str, tuple[str, str]] = {}
    for item in out.split(b"\0"):
        if not item:
            continue
        meta, _, path = item.partition(b"\t")
        mode, _, oid = meta.decode().split()
        found[path.decode("utf-8", "surrogateescape")] = (mode, oid)
    return found


def assert_rescued(
    repo: Path, ref: str, *, disk: dict[str, Entry], index: dict[str, tuple[str, str]], head: str | None
) -> None:
    """The rescue ref holds `disk` as its tree, `index` (minus intent-to-add entries, which have no
    content: their bytes are in `disk`) as its second parent's tree, and `head` as its first parent."""
    assert tree_state(repo, ref) == disk
    index_rev = f"{ref}^2" if head is not None else f"{ref}^1"
    saved_index = tree_entries(repo, index_rev)
    empty = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    message = run(repo, "log", "-1", "--format=%B", ref).decode()
    for path, entry in index.items():
        if path not in saved_index and entry[1] == empty:
            assert path in message, f"intent-to-add entry {path} is not named in the rescue commit"
            continue
        assert saved_index.get(path) == entry, path
    assert set(saved_index) <= set(index)
    if head is not None:
        assert run(repo, "rev-parse", f"{ref}^1").decode().strip() == head
