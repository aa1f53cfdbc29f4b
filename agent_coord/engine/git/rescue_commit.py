"""The rescue commit: everything a person could want back from a worktree, as one verified ref.

Shaped like `git stash`'s commit, so that the tools people know read it:

* parent 1 is HEAD (absent when HEAD is unborn);
* parent 2 is the *index commit*: a commit whose tree is the index, exactly as staged (content and
  modes, also files staged and then deleted from disk), parent HEAD;
* the rescue commit's own tree is the working tree: tracked files as they are on disk and untracked
  files that are not ignored.

So `git diff <ref>^1 <ref>^2` is what was staged, `git diff <ref>^2 <ref>` what was not, and
`git stash apply --index <ref>` puts both back into a worktree.

The index is read from a copy (a temporary `GIT_INDEX_FILE`): `git write-tree` writes its cache back
into the index it reads, and the agent's own index must stay exactly as found. Intent-to-add entries
(`git add -N`) have no content in the index; git leaves them out of any tree, so their paths are named
in the commit message and their bytes are in the working tree.

An index stopped in a merge conflict holds up to three versions of a conflicted path (base, ours,
theirs), which no tree can hold at one path. The index commit then records "ours" at the path (else
"theirs"), and gets a second parent, the *conflict commit*, whose tree holds every
version under `base/`, `ours/` and `theirs/`. (`git stash apply --index` reads only the index commit's
first parent, so the shape stays readable by it.)

Before the ref is written, what was built is checked against its sources (the index tree against the
index, the working tree's tree against the disk), and after, the ref is read back; only then may a
caller reset anything.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import Confined
from agent_coord.engine.git.driver import RESCUE_IDENTITY, GitDriver, GitError

EMPTY_BLOB = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
ZERO_OID = "0" * 40


@dataclass(frozen=True)
class RescueCommit:
    commit: str
    head: str | None
    index_commit: str
    index_tree: str
    worktree_tree: str
    intent_to_add: tuple[str, ...] = ()  # paths added with `git add -N`: no staged content, bytes on disk
    conflict_commit: str | None = None  # every version of each conflicted path, when the index had conflicts


class RescueFailed(GitError):
    """The work could not be saved and proved saved: nothing may be reset."""

    def __init__(self, reason: str) -> None:
        super().__init__(["rescue"], 1, f"fatal: {reason}")


class WorktreeChanged(RescueFailed):
    """The worktree or its index changed while it was read: someone is writing in it."""


async def rescue_worktree(git: GitDriver, worktree: Confined | Path, ref: str, message: str) -> RescueCommit:
    """Save HEAD, the index and the working tree of the worktree at `worktree` to the new ref `ref`.

    Every git call in a slot passes the confinement guard. The worktree, its index and its branch are
    left exactly as found."""
    out = await git.run(worktree, "rev-parse", "--path-format=absolute", "--git-path", "index")
    index_file = Path(out.strip())
    head = await _head(git, worktree, {})
    return await _build(git, worktree, ref, message, index_file=index_file, head=head, with_worktree=True, env={})


async def rescue_index(
    git: GitDriver, repo: Path, index_file: Path | None, head: str | None, ref: str, message: str
) -> RescueCommit:
    """Save what git holds of a worktree whose directory is gone: its HEAD and its index (`index_file`,
    in its administrative directory). There is no working tree: the rescue commit's tree is the index's."""
    return await _build(git, repo, ref, message, index_file=index_file, head=head, with_worktree=False, env={})


async def worktree_trees(git: GitDriver, worktree: Confined) -> tuple[str, str]:
    """(index tree, working tree's tree) of the worktree now, as a rescue would save them, with no
    commit or ref written: what a forced release compares with what it saved before it cleans.
    Raises RescueFailed when the worktree changes while it is read."""
    out = await git.run(worktree, "rev-parse", "--path-format=absolute", "--git-path", "index")
    head = await _head(git, worktree, {})
    with tempfile.TemporaryDirectory(prefix="agent-coord-rescue-") as tmp:
        copy = Path(tmp) / "index"
        have_index = await anyio.to_thread.run_sync(_copy_if_there, Path(out.strip()), copy)
        scratch = {"GIT_INDEX_FILE": str(copy), **RESCUE_IDENTITY}
        if not have_index and head is not None:
            await git.run(worktree, "read-tree", head, env=scratch)
        await _set_conflicts_aside(git, worktree, scratch, Path(tmp) / "conflicts")
        try:
            index_tree = (await git.run(worktree, "write-tree", env=scratch)).strip()
        except GitError as exc:
            raise RescueFailed(f"the index cannot be read as a tree ({exc.reason})") from exc
        return index_tree, await _worktree_tree(git, worktree, scratch)


async def _head(git: GitDriver, cwd: Confined | Path, env: dict[str, str]) -> str | None:
    out = await git.run(cwd, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False, env=env)
    return out.strip() or None


async def _build(
    git: GitDriver,
    cwd: Confined | Path,
    ref: str,
    message: str,
    *,
    index_file: Path | None,
    head: str | None,
    with_worktree: bool,
    env: dict[str, str],
) -> RescueCommit:
    with tempfile.TemporaryDirectory(prefix="agent-coord-rescue-") as tmp:
        copy = Path(tmp) / "index"
        have_index = index_file is not None and await anyio.to_thread.run_sync(_copy_if_there, index_file, copy)
        scratch = {**env, "GIT_INDEX_FILE": str(copy), **RESCUE_IDENTITY}
        if not have_index and head is not None:
            await git.run(cwd, "read-tree", head, env=scratch)  # no index yet: HEAD is what is staged
        conflict_tree = await _set_conflicts_aside(git, cwd, scratch, Path(tmp) / "conflicts")
        try:
            index_tree = (await git.run(cwd, "write-tree", env=scratch)).strip()
        except GitError as exc:
            raise RescueFailed(f"the index cannot be saved as a tree ({exc.reason})") from exc
        intent_to_add = await _verify_index_tree(git, cwd, index_tree, scratch)
        worktree_tree = index_tree
        if with_worktree:
            worktree_tree = await _worktree_tree(git, cwd, scratch)
    identity = {**env, **RESCUE_IDENTITY}
    head_parent = ["-p", head] if head is not None else []
    conflict_commit: str | None = None
    index_parents = list(head_parent)
    if conflict_tree is not None:
        conflict_commit = (
            await git.run(cwd, "commit-tree", conflict_tree, "-m", f"conflicted paths of: {message}", env=identity)
        ).strip()
        index_parents = [*head_parent, "-p", conflict_commit]
    index_commit = (
        await git.run(cwd, "commit-tree", index_tree, *index_parents, "-m", f"index of: {message}", env=identity)
    ).strip()
    text = message
    if intent_to_add:
        text += "\n\nIntent to add (git add -N), bytes in the working tree:\n" + "\n".join(intent_to_add)
    commit = (
        await git.run(cwd, "commit-tree", worktree_tree, *head_parent, "-p", index_commit, "-m", text, env=identity)
    ).strip()
    # The all-zero old value makes update-ref create only: an existing rescue is never overwritten.
    await git.run(cwd, "update-ref", "-m", "agent-coord rescue", ref, commit, ZERO_OID, env=env)
    saved = RescueCommit(commit, head, index_commit, index_tree, worktree_tree, intent_to_add, conflict_commit)
    await _verify_ref(git, cwd, ref, saved, env)
    return saved


STAGE_DIRS = {"1": "base", "2": "ours", "3": "theirs"}


async def _set_conflicts_aside(
    git: GitDriver, cwd: Confined | Path, scratch: dict[str, str], aside: Path
) -> str | None:
    """When the (copied) index has conflicted paths: a tree of every version of them (`base/<path>`,
    `ours/<path>`, `theirs/<path>`, in an index of its own at `aside`), and in the copy each such path
    made a plain entry of "ours" (else "theirs"), so that the copy can be written as a tree."""
    out = await git.run(cwd, "ls-files", "-z", "--unmerged", "--", ":/", env=scratch)
    entries = [e for e in out.split("\0") if e]
    if not entries:
        return None
    versions: dict[str, dict[str, tuple[str, str]]] = {}
    for entry in entries:
        meta, _, path = entry.partition("\t")
        mode, oid, stage = meta.split()
        versions.setdefault(path, {})[stage] = (mode, oid)
    stages = "".join(
        f"{mode} {oid} 0\t{STAGE_DIRS[stage]}/{path}\0"
        for path, by_stage in versions.items()
        for stage, (mode, oid) in by_stage.items()
    )
    await git.run_input(
        cwd, stages, "update-index", "-z", "--add", "--index-info", env={**scratch, "GIT_INDEX_FILE": str(aside)}
    )
    tree = (await git.run(cwd, "write-tree", env={**scratch, "GIT_INDEX_FILE": str(aside)})).strip()
    resolved = []
    for path, by_stage in versions.items():
        resolved.append(f"0 {ZERO_OID}\t{path}\0")
        for stage in ("2", "3"):  # deleted on both sides (a base only): deleted here too
            if stage in by_stage:
                mode, oid = by_stage[stage]
                resolved.append(f"{mode} {oid} 0\t{path}\0")
                break
    await git.run_input(cwd, "".join(resolved), "update-index", "-z", "--index-info", env=scratch)
    listed = await git.run(cwd, "ls-tree", "-r", "-z", "--full-tree", tree, env=scratch)
    if len([e for e in listed.split("\0") if e]) != len(entries):
        raise RescueFailed("the conflicted paths' versions did not all reach the conflict tree")
    return tree


def _copy_if_there(source: Path, target: Path) -> bool:
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError:
        return False
    _all_racy(target)
    return True


def _all_racy(index: Path) -> None:
    """Make git compare every entry's content, not trust its stat data. Git trusts an entry whose size
    and mtime (seconds) match the file unless the entry is as new as the index file ("racily clean");
    a copy made later is newer than every entry, so a file rewritten with the same size in the second
    it was staged would look unchanged and go unsaved (the filesystem campaign found this). An index
    dated one second after the epoch makes every entry racy (zero would switch the check off)."""
    os.utime(index, (1, 1))


async def _verify_index_tree(
    git: GitDriver, cwd: Confined | Path, index_tree: str, scratch: dict[str, str]
) -> tuple[str, ...]:
    """Prove the tree holds every staged entry of the (copied) index; return the intent-to-add paths,
    the only entries a tree leaves out (an empty blob "added" by the index that the tree lacks)."""
    out = await git.run(cwd, "diff-index", "--cached", "--no-renames", "-z", index_tree, env=scratch)
    fields = out.split("\0")
    intent: list[str] = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        parts = meta.split()
        if len(parts) == 5 and parts[4] == "A" and parts[3] == EMPTY_BLOB:
            intent.append(path)
            continue
        raise WorktreeChanged(f"the saved index differs from the index at {path!r} ({meta})")
    return tuple(intent)


async def _worktree_tree(git: GitDriver, cwd: Confined | Path, scratch: dict[str, str]) -> str:
    """The working tree as a tree: the index copy, updated with every tracked change and every untracked,
    not ignored, file; then proved equal to the disk (nothing modified, nothing untracked left)."""
    await git.run(cwd, "add", "--all", "--", ":/", env=scratch)
    await anyio.to_thread.run_sync(_all_racy, Path(scratch["GIT_INDEX_FILE"]))  # the proof reads content too
    dirty = await git.run(cwd, "diff-files", "--name-only", "-z", env=scratch)
    left = await git.run(cwd, "ls-files", "-z", "--others", "--exclude-standard", "--", ":/", env=scratch)
    if dirty or left:
        names = [n for n in (dirty + left).split("\0") if n][:5]
        raise WorktreeChanged(f"the working tree changed while it was being saved: {', '.join(names)}")
    return (await git.run(cwd, "write-tree", env=scratch)).strip()


async def _verify_ref(git: GitDriver, cwd: Confined | Path, ref: str, saved: RescueCommit, env: dict[str, str]) -> None:
    """Read the ref back: it names the commit, whose tree, first parent and index parent are the ones
    proved above. (With an unborn HEAD the index commit is the only parent.)"""
    index_parent = f"{ref}^2" if saved.head is not None else f"{ref}^1"
    names = [ref, f"{ref}^{{tree}}", index_parent, f"{index_parent}^{{tree}}"]
    want = [saved.commit, saved.worktree_tree, saved.index_commit, saved.index_tree]
    if saved.head is not None:
        names.append(f"{ref}^1")
        want.append(saved.head)
    out = await git.run(cwd, "rev-parse", *names, env=env, check=False)  # our own names: no option
    if out.split() != want:
        raise RescueFailed(f"rescue ref {ref} did not verify")
