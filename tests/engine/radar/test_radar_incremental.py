"""The radar's incremental snapshot (its previous scratch index, looked at again only in the directories
inotify names) against a snapshot made from scratch (the agent's index, everything looked at), on a real
worktree after any sequence of changes: the same tree, every time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.radar.snapshot import admin_dir, snapshot
from agent_coord.engine.radar.watch import WorktreeWatcher
from tests.conftest import git, make_repo

DIRS = ["", "d0", "d1/sub", "d1/sub/deep", "new", "new/inner"]
NAMES = ["a.txt", "b.py", "x.log", "build"]

Op = tuple[str, str, str]  # (kind, directory, name)

_ops = st.lists(
    st.tuples(
        st.sampled_from(["write", "write", "append", "delete", "rmdir", "move_dir", "chmod", "ignore", "to_file"]),
        st.sampled_from(DIRS),
        st.sampled_from(NAMES),
    ),
    min_size=1,
    max_size=6,
)


def _apply(top: Path, op: Op) -> None:
    kind, directory, name = op
    where = top / directory if directory else top
    path = where / name
    if kind in ("write", "append"):
        if path.is_dir():
            return
        try:
            where.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a file where a directory would be: skip
            return
        with open(path, "a" if kind == "append" else "w", encoding="utf-8") as fh:
            fh.write(f"{kind} {directory}/{name}\n")
    elif kind == "delete":
        if path.is_file():
            path.unlink()
    elif kind == "rmdir":
        if directory and where.is_dir():
            shutil.rmtree(where)
    elif kind == "move_dir":
        if directory and where.is_dir() and not (top / "moved").exists():
            where.rename(top / "moved")
    elif kind == "chmod":
        if path.is_file():
            path.chmod(path.stat().st_mode ^ 0o111)
    elif kind == "ignore":  # a .gitignore that starts or stops ignoring a name
        gitignore = where / ".gitignore"
        if where.is_dir():
            if gitignore.is_file():
                gitignore.unlink()
            else:
                gitignore.write_text(f"{name}\n", encoding="utf-8")
    elif kind == "to_file" and directory and where.is_dir():
        shutil.rmtree(where)
        where.write_text("a file where a directory was\n", encoding="utf-8")


@pytest.fixture(scope="module")
def worktree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("radar-incremental")
    repo = make_repo(root)  # .gitignore: .env, build/
    for directory in ("d0", "d1/sub", "d1/sub/deep"):
        (repo / directory).mkdir(parents=True)
        for name in ("a.txt", "b.py"):
            (repo / directory / name).write_text(f"{directory}/{name}\n", encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tree")
    top = root / "wt"
    git(repo, "worktree", "add", "-q", "-b", "side", str(top))
    return top


def check(top: Path, ops: list[Op]) -> None:
    git(top, "reset", "-q", "--hard", "main")
    git(top, "clean", "-q", "-fdx")
    scratch = top.parent / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    driver = GitDriver()
    watcher = WorktreeWatcher()
    admins = {str(top): str(admin_dir(top))}

    async def run() -> None:
        watcher.changed(admins)  # starts watching
        await snapshot(driver, top, scratch, "kept")
        for op in ops:
            _apply(top, op)
            changed = watcher.changed(admins)
            touched = watcher.touched(str(top))
            if touched is None:  # no inotify here: every snapshot is a whole one, nothing to compare
                return
            assert (str(top) in changed) == bool(touched)
            incremental = await snapshot(driver, top, scratch, "kept", since=touched)
            whole = await snapshot(driver, top, scratch, f"whole-{os.getpid()}")
            assert incremental == whole, (ops, op, touched)

    try:
        anyio.run(run)
    finally:
        watcher.close()


_quick = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_long = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_quick
@given(ops=_ops)
def test_an_incremental_snapshot_is_the_whole_snapshot(worktree: Path, ops: list[Op]) -> None:
    check(worktree, ops)


@pytest.mark.slow
@_long
@given(ops=_ops)
def test_an_incremental_snapshot_is_the_whole_snapshot_campaign(worktree: Path, ops: list[Op]) -> None:
    check(worktree, ops)


def test_the_agents_own_index_changing_means_a_whole_snapshot(worktree: Path) -> None:
    """`git add -f` of an ignored file changes what is tracked without touching the working tree."""
    git(worktree, "reset", "-q", "--hard", "main")
    git(worktree, "clean", "-q", "-fdx")
    watcher = WorktreeWatcher()
    admins = {str(worktree): str(admin_dir(worktree))}
    try:
        watcher.changed(admins)
        if not watcher.available:
            pytest.skip("inotify unavailable here (the per-user instance limit)")
        assert watcher.changed(admins) == set() and watcher.touched(str(worktree)) == set()
        (worktree / "d0" / "a.txt").write_text("edited\n", encoding="utf-8")
        assert watcher.changed(admins) == {str(worktree)} and watcher.touched(str(worktree)) == {"d0"}
        (worktree / "build").mkdir()
        (worktree / "build" / "out.bin").write_bytes(b"\x00")
        watcher.changed(admins)
        git(worktree, "add", "-f", "build/out.bin")
        assert watcher.changed(admins) == {str(worktree)} and watcher.touched(str(worktree)) is None
    finally:
        watcher.close()
