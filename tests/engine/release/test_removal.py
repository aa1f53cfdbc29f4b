"""Removing a slot whose files cannot be deleted (engine/git/removal.py): retried with a bounded
back-off, then a coded refusal, and never a half-removed slot.

On Windows a file another program holds open cannot be deleted. Here the same failure is real file
system behaviour, not a mock: a file made immutable (`chattr +i`, as root, whom permissions do not
stop) or a folder without write permission (`chmod 0o500`, as anyone else) refuses `unlink`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.confinement import Bounds, check_slot
from agent_coord.engine.store.records import SlotState
from tests.conftest import git

pytestmark = pytest.mark.anyio


class Hold(Protocol):
    def __call__(self, path: Path, *, entries: bool = False) -> Callable[[], None]: ...


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.fixture
def hold(tmp_path: Path) -> Iterator[Hold]:
    """`hold(file)` makes `file` undeletable and returns the function that lets it go."""
    undo: list[Callable[[], None]] = []

    def make(path: Path, *, entries: bool = False) -> Callable[[], None]:
        """`entries`: `path` is a folder whose entries must not be deleted (rather than a file)."""
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or not _chattr("+i", path):
                pytest.skip("as root, an undeletable file needs chattr +i on a file system that has it")

            def let_go() -> None:
                _chattr("-i", path)
        else:
            parent = path if entries else path.parent
            mode = parent.stat().st_mode & 0o777
            parent.chmod(0o500)

            def let_go() -> None:
                parent.chmod(mode)

        undo.append(let_go)
        return let_go

    yield make
    for let_go in undo:
        let_go()


def listed(repo: Path, path: Path) -> bool:
    return f"worktree {path}\n" in git(repo, "worktree", "list", "--porcelain")


async def slot_with_work(coord: Any, repo: Path) -> tuple[Any, Path]:
    """An allocated slot holding committed work, a build output (ignored) and a nested folder."""
    a = await coord.pool.allocate("feat/removal")
    path = Path(a.path)
    (path / "src").mkdir()
    (path / "src" / "code.txt").write_text("committed work\n")
    git(path, "add", "src")
    git(path, "commit", "-q", "-m", "work")
    (path / "build").mkdir()
    (path / "build" / "out.bin").write_bytes(b"\x00build output")
    return a, path


def assert_whole_worktree(repo: Path, path: Path) -> None:
    """Git still knows it, it passes the guard, and every tracked file is there, unchanged."""
    assert listed(repo, path)
    check_slot(Bounds.of(repo, path.parent), path)
    assert git(path, "status", "--porcelain") == ""
    assert (path / "src" / "code.txt").read_text() == "committed work\n"
    assert (path / "README.md").read_text() == "hello\n"


@pytest.mark.parametrize("held_file", ["build/out.bin", "README.md"], ids=["ignored", "tracked"])
async def test_a_file_that_cannot_be_deleted_refuses_the_removal_and_leaves_a_whole_worktree(
    coord: Any, repo: Path, hold: Hold, held_file: str
) -> None:
    a, path = await slot_with_work(coord, repo)
    let_go = hold(path / held_file)
    started = time.monotonic()
    with pytest.raises(CoordError) as refused:
        await coord.pool.release(worktree_id=a.worktree_id, remove=True)
    assert refused.value.code == ErrorCode.GIT_FAILED
    assert "a program may hold it open" in refused.value.message and held_file in refused.value.message
    assert "nothing was removed" in refused.value.message
    assert time.monotonic() - started >= 3.0  # the back-off was waited through (0.1 s doubled, 5 pauses)
    (slot,) = [s for s in await coord.store.slots() if s.id == a.worktree_id]
    assert (slot.state, slot.owner, slot.branch) == (SlotState.BUSY, coord.agent_id, "feat/removal")
    assert_whole_worktree(repo, path)

    let_go()
    done = await coord.pool.release(worktree_id=a.worktree_id, remove=True)
    assert done.state == "REMOVED"
    assert not os.path.lexists(path) and not listed(repo, path)
    assert a.worktree_id not in {s.id for s in await coord.store.slots()}
    assert git(repo, "show", "feat/removal:src/code.txt") == "committed work\n"


async def test_a_file_let_go_during_the_back_off_is_removed_in_the_same_call(
    coord: Any, repo: Path, hold: Hold
) -> None:
    a, path = await slot_with_work(coord, repo)
    let_go = hold(path / "build" / "out.bin")

    def let_go_after_the_first_attempt() -> None:
        deadline = time.monotonic() + 30
        while (path / "README.md").exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # a condition polled, in a thread: the first pass deletes README.md
        let_go()

    helper = threading.Thread(target=let_go_after_the_first_attempt)
    helper.start()
    try:
        done = await coord.pool.release(worktree_id=a.worktree_id, remove=True)
    finally:
        helper.join()
    assert done.state == "REMOVED"
    assert not os.path.lexists(path) and not listed(repo, path)


async def test_when_the_files_cannot_be_put_back_the_slot_is_quarantined_not_forgotten(
    coord: Any, repo: Path, hold: Hold
) -> None:
    """A git holding the worktree's index lock stops the put-back: the slot stays recorded, git still
    knows it, and it is quarantined for a person; its committed work is in its branch."""
    a, path = await slot_with_work(coord, repo)
    hold(path / "build" / "out.bin")
    admin = Path(git(path, "rev-parse", "--absolute-git-dir").strip())

    def lock_the_index_after_the_first_attempt() -> None:
        deadline = time.monotonic() + 30
        while (path / "README.md").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        (admin / "index.lock").write_text("")

    helper = threading.Thread(target=lock_the_index_after_the_first_attempt)
    helper.start()
    try:
        with pytest.raises(CoordError) as refused:
            await coord.pool.release(worktree_id=a.worktree_id, remove=True)
    finally:
        helper.join()
    assert refused.value.code == ErrorCode.GIT_FAILED
    assert "quarantined for a person" in refused.value.message
    (slot,) = [s for s in await coord.store.slots() if s.id == a.worktree_id]
    assert slot.state == SlotState.QUARANTINED
    assert listed(repo, path) and (admin / "HEAD").exists()
    assert git(repo, "show", "feat/removal:src/code.txt") == "committed work\n"


@pytest.mark.parametrize("use_dir_fds", [True, False], ids=["dir_fds", "path_walk"])
async def test_emptying_a_work_tree_removes_links_and_never_what_they_point_at(
    coord: Any, repo: Path, tmp_path: Path, use_dir_fds: bool
) -> None:
    from agent_coord.engine.git.removal import empty_work_tree
    from bench.outside_check import Outside

    sibling = tmp_path / "sibling"
    (sibling / "deep").mkdir(parents=True)
    (sibling / "deep" / "notes.txt").write_text("a person's notes\n")
    _, path = await slot_with_work(coord, repo)
    (path / "to-sibling").symlink_to(sibling)
    (path / "src" / "to-deep").symlink_to(sibling / "deep")
    (path / "to-main").symlink_to(repo)
    seen = Outside(repo, sibling)
    left = empty_work_tree(Bounds.of(repo, path.parent).slot(path), use_dir_fds=use_dir_fds)
    assert left.failures == []
    assert sorted(p.name for p in path.iterdir()) == [".git"]
    seen.assert_unchanged()


@pytest.mark.parametrize("remove", [False, True], ids=["keep", "remove"])
async def test_a_symlink_where_a_folder_was_is_saved_and_never_followed(
    coord: Any, repo: Path, tmp_path: Path, remove: bool
) -> None:
    """An agent replaces the tracked folder `src` by a link to a person's folder: a forced release
    saves the link as a link, and neither the reset, the clean nor the removal reach through it."""
    from bench.outside_check import Outside

    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "notes.txt").write_text("a person's notes\n")
    a, path = await slot_with_work(coord, repo)
    shutil.rmtree(path / "src")
    (path / "src").symlink_to(sibling)
    seen = Outside(repo, sibling)
    done = await coord.pool.release(worktree_id=a.worktree_id, force=True, remove=remove)
    assert done.rescue_ref
    assert git(repo, "cat-file", "-p", f"{done.rescue_ref}:src") == str(sibling)  # the link itself
    seen.assert_unchanged()
    if remove:
        assert not os.path.lexists(path)
    else:
        assert (path / "src" / "code.txt").read_text() == "committed work\n" and not (path / "src").is_symlink()


async def test_staged_unstaged_and_untracked_work_at_once_is_saved_before_a_forced_removal(
    coord: Any, repo: Path
) -> None:
    a, path = await slot_with_work(coord, repo)
    (path / "src" / "code.txt").write_text("staged version\n")
    git(path, "add", "src/code.txt")
    (path / "src" / "code.txt").write_text("working version\n")
    (path / "staged-then-deleted.txt").write_text("only in the index\n")
    git(path, "add", "staged-then-deleted.txt")
    (path / "staged-then-deleted.txt").unlink()
    (path / "untracked.txt").write_text("untracked\n")
    done = await coord.pool.release(worktree_id=a.worktree_id, force=True, remove=True)
    ref = done.rescue_ref
    assert ref and done.state == "REMOVED" and not os.path.lexists(path)
    assert git(repo, "show", f"{ref}:src/code.txt") == "working version\n"
    assert git(repo, "show", f"{ref}:untracked.txt") == "untracked\n"
    assert git(repo, "show", f"{ref}^2:src/code.txt") == "staged version\n"  # the index commit
    assert git(repo, "show", f"{ref}^2:staged-then-deleted.txt") == "only in the index\n"


KILLED_RELEASE = """
import sys
import anyio
from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator

async def main() -> None:
    async with Coordinator.open(Settings(), register=True, agent_id="agent-killed") as c:
        a = await c.pool.allocate("feat/killed")
        print(a.worktree_id, a.path, flush=True)
        sys.stdin.readline()
        await c.pool.release(worktree_id=a.worktree_id, remove=True)

anyio.run(main)
"""


async def test_a_process_killed_in_the_middle_of_a_removal_leaves_a_slot_validation_restores(
    make_settings: Any, env: dict[str, str], repo: Path, tmp_path: Path, hold: Hold
) -> None:
    """The server is killed while it empties the work tree (a held file keeps it in the back-off):
    the slot is still a worktree git knows, and the next validation puts its files back."""
    import sys

    from agent_coord.engine.coordinator import Coordinator

    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_RELEASE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        slot_id, raw = child.stdout.readline().split(" ", 1)
        path = Path(raw.strip())
        (path / "src").mkdir()
        (path / "src" / "code.txt").write_text("committed work\n")
        git(path, "add", "src")
        git(path, "commit", "-q", "-m", "work")
        (path / "build").mkdir()
        (path / "build" / "out.bin").write_bytes(b"\x00")
        let_go = hold(path / "build" / "out.bin")
        child.stdin.write("go\n")
        child.stdin.flush()
        deadline = time.monotonic() + 60
        while (path / "README.md").exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not (path / "README.md").exists(), "the removal never started"
        child.kill()
    finally:
        child.kill()
        child.wait()
    let_go()
    assert listed(repo, path) and (path / ".git").is_file()  # half emptied, but still a worktree
    async with Coordinator.open(make_settings(), register=True, agent_id="agent-validator") as c:
        await c.validate(repair=True)
        (slot,) = [s for s in await c.store.slots() if s.id == slot_id]
        assert slot.state == SlotState.FREE, slot
    assert listed(repo, path)
    assert (path / "README.md").read_text() == "hello\n" and (path / "src" / "code.txt").exists()
    assert git(path, "status", "--porcelain") == ""
    assert git(repo, "show", "feat/killed:src/code.txt") == "committed work\n"


async def test_a_pool_root_that_refuses_the_last_deletion_still_ends_in_a_removed_slot(
    coord: Any, repo: Path, hold: Hold
) -> None:
    """Git drops its entry and then cannot delete the emptied folder (the pool root refuses): the slot
    is removed for git and for the store, and the empty folder left is validation's to tidy."""
    a, path = await slot_with_work(coord, repo)
    let_go = hold(path.parent, entries=True)
    try:
        done = await coord.pool.release(worktree_id=a.worktree_id, remove=True)
        assert done.state == "REMOVED"
        assert not listed(repo, path) and list(path.iterdir()) == []
    finally:
        let_go()
    assert a.worktree_id not in {s.id for s in await coord.store.slots()}
    await coord.validate(repair=True)
    assert not path.exists()
    assert git(repo, "show", "feat/removal:src/code.txt") == "committed work\n"
