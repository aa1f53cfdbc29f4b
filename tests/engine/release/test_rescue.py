"""A rescue saves everything a person could want back: HEAD, the index, the working tree, read back
byte for byte from the rescue ref (tests/rescue_check.py).

Each kind of change is an operation on its own file, so that any set of them can be combined: each
alone and all together run in CI, every other subset (247) with `-m slow`. A property test then mixes random
operations on a real repository, and the end-to-end tests take the issue's own case through a forced
release and a crash reclaim.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.git.driver import GitDriver, GitError
from agent_coord.engine.git.rescue_commit import rescue_worktree
from agent_coord.engine.store.records import SlotState
from tests.conftest import git, make_repo
from tests.rescue_check import assert_rescued, disk_state, index_entries, run

BINARY_A = bytes(range(256)) + b"\x00staged"
BINARY_B = b"\x00\xff\xfe worktree " + bytes(range(255, -1, -1))


def base_files(wt: Path) -> None:
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "g.txt", "h.txt", "f.sh"):
        (wt / name).write_text(f"{name} at HEAD\n")
    (wt / "e.bin").write_bytes(b"\x00binary at HEAD\xff")


def staged(wt: Path) -> None:
    """Version A staged, version B on disk: both must come back."""
    (wt / "a.txt").write_text("A: staged\n")
    git(wt, "add", "a.txt")
    (wt / "a.txt").write_text("B: edited after staging\n")


def unstaged(wt: Path) -> None:
    (wt / "b.txt").write_text("edited, not staged\n")


def untracked(wt: Path) -> None:
    (wt / "new dir").mkdir()
    (wt / "new dir" / "caf\u00e9.txt").write_text("untracked \u00e9\n")


def deleted(wt: Path) -> None:
    """Deleted from disk; removed with `git rm`; and a new file staged, then deleted from disk."""
    (wt / "c.txt").unlink()
    git(wt, "rm", "-q", "d.txt")
    (wt / "staged-then-gone.txt").write_text("only in the index\n")
    git(wt, "add", "staged-then-gone.txt")
    (wt / "staged-then-gone.txt").unlink()


def renamed(wt: Path) -> None:
    (wt / "moved").mkdir()
    git(wt, "mv", "g.txt", "moved/g2.txt")


def binary(wt: Path) -> None:
    (wt / "e.bin").write_bytes(BINARY_A)
    git(wt, "add", "e.bin")
    (wt / "e.bin").write_bytes(BINARY_B)


def mode_change(wt: Path) -> None:
    """A staged mode change, and one on disk only."""
    (wt / "f.sh").chmod(0o755)
    git(wt, "add", "f.sh")
    (wt / "f.sh").chmod(0o644)
    (wt / "h.txt").chmod(0o755)


def intent_to_add(wt: Path) -> None:
    (wt / "i.txt").write_text("added with -N\n")
    git(wt, "add", "-N", "i.txt")


OPERATIONS: dict[str, Callable[[Path], None]] = {
    "staged": staged,
    "unstaged": unstaged,
    "untracked": untracked,
    "deleted": deleted,
    "renamed": renamed,
    "binary": binary,
    "mode_change": mode_change,
    "intent_to_add": intent_to_add,
}
SINGLES_AND_ALL = [(name,) for name in OPERATIONS] + [tuple(OPERATIONS)]
EVERY_OTHER_SUBSET = [c for n in range(2, len(OPERATIONS)) for c in itertools.combinations(OPERATIONS, n)]


def worktree_with_base(tmp_path: Path) -> tuple[Path, Path]:
    repo = make_repo(tmp_path)
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "work", str(wt))
    base_files(wt)
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "base")
    return repo, wt


async def rescue_and_check(repo: Path, wt: Path) -> str:
    """Rescue `wt`; prove the ref holds its disk, index and HEAD, and that the worktree was not touched."""
    disk, index = disk_state(wt), index_entries(wt)
    head = git(wt, "rev-parse", "HEAD").strip()
    index_file = Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    index_bytes = index_file.read_bytes()
    status = git(wt, "status", "--porcelain=v2", "-z", "--untracked-files=all")
    ref = "refs/agent-coord/rescue/test/1"
    await rescue_worktree(GitDriver(), wt, ref, "test rescue")
    assert index_file.read_bytes() == index_bytes  # the agent's own index is never written
    assert disk_state(wt) == disk and git(wt, "status", "--porcelain=v2", "-z", "--untracked-files=all") == status
    assert_rescued(repo, ref, disk=disk, index=index, head=head)
    return ref


@pytest.mark.anyio
@pytest.mark.parametrize("ops", SINGLES_AND_ALL, ids="+".join)
async def test_each_change_alone_and_all_together_are_saved(tmp_path: Path, ops: tuple[str, ...]) -> None:
    repo, wt = worktree_with_base(tmp_path)
    for name in ops:
        OPERATIONS[name](wt)
    await rescue_and_check(repo, wt)


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("ops", EVERY_OTHER_SUBSET, ids="+".join)
async def test_every_combination_is_saved(tmp_path: Path, ops: tuple[str, ...]) -> None:
    repo, wt = worktree_with_base(tmp_path)
    for name in ops:
        OPERATIONS[name](wt)
    await rescue_and_check(repo, wt)


@pytest.mark.anyio
async def test_the_rescue_applies_back_with_git_stash(tmp_path: Path) -> None:
    """The shape is `git stash`'s: `git stash apply --index <ref>` on a clean checkout of HEAD puts the
    index and the working tree back as they were."""
    repo, wt = worktree_with_base(tmp_path)
    for op in (staged, unstaged, untracked, binary, mode_change):
        op(wt)
    disk, index = disk_state(wt), index_entries(wt)
    ref = await rescue_and_check(repo, wt)
    other = tmp_path / "other"
    git(repo, "worktree", "add", "-q", "--detach", str(other), "work")
    git(other, "stash", "apply", "--index", ref)
    assert disk_state(other) == disk and index_entries(other) == index


@pytest.mark.anyio
async def test_an_unborn_head_and_a_merge_conflict_are_saved(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    (empty / "first.txt").write_text("staged before any commit\n")
    git(empty, "add", "first.txt")
    (empty / "first.txt").write_text("and edited\n")
    disk, index = disk_state(empty), index_entries(empty)
    await rescue_worktree(GitDriver(), empty, "refs/agent-coord/rescue/t/1", "m")
    assert_rescued(empty, "refs/agent-coord/rescue/t/1", disk=disk, index=index, head=None)

    repo, wt = worktree_with_base(tmp_path)
    git(repo, "branch", "side", "work")
    (wt / "a.txt").write_text("ours\n")
    git(wt, "commit", "-qam", "ours")
    side = tmp_path / "side"
    git(repo, "worktree", "add", "-q", str(side), "side")
    (side / "a.txt").write_text("theirs\n")
    git(side, "commit", "-qam", "theirs")
    subprocess.run(["git", "-C", str(wt), "merge", "-q", "side"], capture_output=True)
    disk = disk_state(wt)
    ref = "refs/agent-coord/rescue/t/2"
    await rescue_worktree(GitDriver(), wt, ref, "m")
    assert run(repo, "show", f"{ref}:a.txt") == disk["a.txt"][1]  # the file with its conflict markers
    assert run(repo, "show", f"{ref}^2^2:ours/a.txt") == b"ours\n"
    assert run(repo, "show", f"{ref}^2^2:theirs/a.txt") == b"theirs\n"
    assert run(repo, "show", f"{ref}^2^2:base/a.txt") == b"a.txt at HEAD\n"


@pytest.mark.anyio
async def test_ignored_files_are_not_in_the_rescue(tmp_path: Path) -> None:
    """Ignored files (build output, `.env`) are caches the slot keeps; they are not saved and not removed
    (docs/decisions.md)."""
    repo, wt = worktree_with_base(tmp_path)
    (wt / "build").mkdir()
    (wt / "build" / "out.o").write_bytes(b"\x7fELF")
    (wt / "b.txt").write_text("changed\n")
    ref = await rescue_and_check(repo, wt)
    assert "build/out.o" not in git(repo, "ls-tree", "-r", "--name-only", ref)


@pytest.mark.anyio
async def test_a_force_added_ignored_file_is_saved(tmp_path: Path) -> None:
    """Staged with `git add -f` although ignored: a rescue that rebuilt the index from HEAD and `git add
    --all` skipped it, and `reset --hard` then deleted it. The index copy keeps it tracked."""
    repo, wt = worktree_with_base(tmp_path)
    (wt / "build").mkdir()
    (wt / "build" / "kept.cfg").write_text("forced in\n")
    git(wt, "add", "-f", "build/kept.cfg")
    (wt / "build" / "kept.cfg").write_text("forced in, then edited\n")
    ref = "refs/agent-coord/rescue/t/forced"
    await rescue_worktree(GitDriver(), wt, ref, "m")
    assert run(repo, "show", f"{ref}^2:build/kept.cfg") == b"forced in\n"
    assert run(repo, "show", f"{ref}:build/kept.cfg") == b"forced in, then edited\n"


@pytest.mark.anyio
async def test_a_file_rewritten_in_the_second_it_was_staged_is_saved(tmp_path: Path) -> None:
    """Found by the filesystem campaign: same size, same mtime second as its index entry, and the index
    written in that second too (racily clean). Git compares such an entry's content; a copy of the index
    made later made git trust the stat data, and the rescue kept the staged bytes for both trees."""
    repo, wt = worktree_with_base(tmp_path)
    git(repo, "config", "core.trustctime", "false")  # the ctime's second is then not a factor either
    target = wt / "a.txt"
    target.write_text("AAAA staged\n")
    earlier = target.stat().st_mtime_ns - 10 * 10**9  # "staged ten seconds ago", without waiting
    os.utime(target, ns=(earlier, earlier))
    git(wt, "add", "a.txt")
    target.write_text("BBBB ondisk\n")
    os.utime(target, ns=(earlier, earlier))
    index = Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    os.utime(index, ns=(earlier, earlier))  # written in that same second: racily clean
    # Git itself sees the change (and, with no optional locks, writes nothing back to the index).
    status = subprocess.run(
        ["git", "-C", str(wt), "status", "--porcelain"],
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
    )
    assert status.stdout.startswith("MM a.txt")
    ref = "refs/agent-coord/rescue/t/racy"
    await rescue_worktree(GitDriver(), wt, ref, "m")
    assert run(repo, "show", f"{ref}:a.txt") == b"BBBB ondisk\n"
    assert run(repo, "show", f"{ref}^2:a.txt") == b"AAAA staged\n"


# ---- the property: any mix of operations, every staged blob and every byte on disk come back ----------

PATHS = ["a.txt", "b.txt", "sub/c.txt", "sub/deeper/d.bin", "x y.txt"]
op_strategy = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), st.binary(max_size=64)),
    st.tuples(st.just("add"), st.sampled_from(PATHS), st.just(b"")),
    st.tuples(st.just("add_n"), st.sampled_from(PATHS), st.just(b"")),
    st.tuples(st.just("delete"), st.sampled_from(PATHS), st.just(b"")),
    st.tuples(st.just("rm_cached"), st.sampled_from(PATHS), st.just(b"")),
    st.tuples(st.just("chmod"), st.sampled_from(PATHS), st.just(b"")),
    st.tuples(st.just("mv"), st.sampled_from(PATHS), st.sampled_from([p.encode() for p in PATHS])),
    st.tuples(st.just("symlink"), st.sampled_from(PATHS), st.sampled_from([b"a.txt", b"/etc", b"missing"])),
    st.tuples(st.just("commit"), st.just(""), st.just(b"")),
)


def apply(wt: Path, op: tuple[str, str, bytes]) -> None:
    kind, path, data = op
    target = wt / path
    quiet = subprocess.DEVNULL
    if kind == "write":
        if target.is_symlink():
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    elif kind in ("add", "add_n", "rm_cached", "mv"):
        args = {
            "add": ["add", "-A", "--", path],
            "add_n": ["add", "-N", "--", path],
            "rm_cached": ["rm", "-q", "--cached", "--", path],
            "mv": ["mv", "-k", "--", path, data.decode()],
        }[kind]
        if kind == "mv":
            (wt / data.decode()).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "-C", str(wt), *args], stdout=quiet, stderr=quiet)  # may refuse: fine
    elif kind == "delete" and (target.is_file() or target.is_symlink()):
        target.unlink()
    elif kind == "chmod" and target.is_file() and not target.is_symlink():
        target.chmod(target.stat().st_mode ^ stat.S_IXUSR)
    elif kind == "symlink" and not target.exists() and not target.is_symlink():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(data, target)
    elif kind == "commit":
        subprocess.run(["git", "-C", str(wt), "commit", "-q", "--allow-empty", "-m", "c"], stdout=quiet, stderr=quiet)


@settings(
    max_examples=int(os.environ.get("RESCUE_PROPERTY_EXAMPLES", "10")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(op_strategy, min_size=1, max_size=14))
def test_any_mix_of_changes_is_recoverable_from_the_rescue_ref(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, bytes]]
) -> None:
    base = tmp_path_factory.mktemp("prop")
    repo, wt = worktree_with_base(base)
    for op in ops:
        apply(wt, op)
    anyio.run(rescue_and_check, repo, wt)
    shutil.rmtree(base)


# ---- end to end: the issue's case through a forced release and a crash reclaim ------------------------


def issue_case(wt: Path) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    """Stage version A, edit the copy to B, stage a new file and delete it from disk, stage a mode change."""
    (wt / "README.md").write_text("version A\n")
    git(wt, "add", "README.md")
    (wt / "README.md").write_text("version B\n")
    (wt / "staged-only.txt").write_text("staged, then deleted from disk\n")
    git(wt, "add", "staged-only.txt")
    (wt / "staged-only.txt").unlink()
    (wt / ".gitignore").chmod(0o755)
    git(wt, "add", ".gitignore")
    return disk_state(wt), index_entries(wt)


@pytest.mark.anyio
async def test_a_forced_release_saves_the_index_too(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("feat/staged")
    wt = Path(a.path)
    head = git(wt, "rev-parse", "HEAD").strip()
    disk, index = issue_case(wt)
    released = await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert released.rescue_ref
    assert_rescued(repo, released.rescue_ref, disk=disk, index=index, head=head)
    assert run(repo, "show", f"{released.rescue_ref}^2:README.md") == b"version A\n"
    assert run(repo, "show", f"{released.rescue_ref}:README.md") == b"version B\n"
    assert run(repo, "show", f"{released.rescue_ref}^2:staged-only.txt") == b"staged, then deleted from disk\n"


@pytest.mark.anyio
async def test_a_crash_reclaim_saves_the_index_too(coord: Any, repo: Path) -> None:
    from tests.agent_proc import set_agent
    from tests.engine.reclaim.test_reclaim import dead_pid

    a = await coord.pool.allocate("feat/crashed")
    wt = Path(a.path)
    head = git(wt, "rev-parse", "HEAD").strip()
    disk, index = issue_case(wt)
    pid, created = dead_pid()
    set_agent({"AGENT_COORD_DB": str(coord.settings.db)}, coord.agent_id, pid=pid, pid_create_time=created)
    await coord.validate(repair=True)
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE and slot.rescue_ref
    assert_rescued(repo, slot.rescue_ref, disk=disk, index=index, head=head)


class FailingRefGit(GitDriver):
    """The real driver, except that writing a rescue ref fails: nothing may be reset after that."""

    async def run(self, cwd: str | Path, *args: str, check: bool = True, env: Any = None) -> str:
        if args[:1] == ("update-ref",):
            raise GitError(list(args), 1, "fatal: refusing for the test")
        return await super().run(cwd, *args, check=check, env=env)


@pytest.mark.anyio
async def test_nothing_is_reset_when_the_rescue_fails(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("feat/unsaved")
    wt = Path(a.path)
    disk, index = issue_case(wt)
    index_file = Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    before = index_file.read_bytes()
    coord.pool.releaser.ctx = replace(coord.ctx, git=FailingRefGit())
    with pytest.raises(Exception, match="GIT_FAILED"):
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert disk_state(wt) == disk and index_entries(wt) == index and index_file.read_bytes() == before
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY
    await anyio.sleep(0)
