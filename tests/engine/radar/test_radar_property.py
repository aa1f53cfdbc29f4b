"""The radar's merge prediction (libgit2, in-process) against git's own merge (`git merge-tree`, merge-ort)
on the same snapshots of two real worktrees: the same paths conflict, whatever the two sides did."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.radar.predict import Predictor
from agent_coord.engine.radar.snapshot import snapshot
from tests.conftest import git, make_repo

FILES = [f"f{i}.txt" for i in range(4)]
LINES = 12

Op = tuple[str, str, int, str]  # (kind, file, line, text)

_ops = st.lists(
    st.tuples(
        st.sampled_from(["edit", "edit", "edit", "delete", "add", "binary"]),
        st.sampled_from([*FILES, "new.txt"]),
        st.integers(1, LINES),
        st.sampled_from(["x", "y", "z"]),
    ),
    max_size=4,
)


def _base_text(name: str) -> str:
    return "".join(f"{name} line {i}\n" for i in range(1, LINES + 1))


def _apply(worktree: Path, ops: list[Op]) -> None:
    for kind, name, line, text in ops:
        path = worktree / name
        if kind == "delete":
            path.unlink(missing_ok=True)
        elif kind == "binary":
            path.write_bytes(b"\x00" + text.encode() * 40)
        elif kind == "add" or not path.exists():
            path.write_text(f"{text}\n{text} added\n")
        else:
            lines = path.read_bytes().split(b"\n")
            if line - 1 < len(lines):
                lines[line - 1] = text.encode()
            path.write_bytes(b"\n".join(lines))


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("radar-property")
    repo = make_repo(root)
    for name in FILES:
        (repo / name).write_text(_base_text(name))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    a, b = root / "a", root / "b"
    git(repo, "worktree", "add", "-q", "-b", "side-a", str(a))
    git(repo, "worktree", "add", "-q", "-b", "side-b", str(b))
    return repo, a, b


def _reset(worktree: Path) -> None:
    git(worktree, "reset", "-q", "--hard", "main")
    git(worktree, "clean", "-q", "-fdx")


def _git_conflicts(repo: Path, head: str, tree_a: str, tree_b: str) -> set[str]:
    commits = [git(repo, "commit-tree", tree, "-p", head, "-m", "snapshot").strip() for tree in (tree_a, tree_b)]
    out = subprocess.run(
        ["git", "-C", str(repo), "merge-tree", "--write-tree", "--name-only", "--no-messages", *commits],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return {line for line in out.stdout.splitlines()[1:] if line}


def check(sides: tuple[Path, Path, Path], ops_a: list[Op], ops_b: list[Op]) -> None:
    repo, a, b = sides
    for worktree, ops in ((a, ops_a), (b, ops_b)):
        _reset(worktree)
        _apply(worktree, ops)
    scratch = repo.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    driver = GitDriver()

    async def both() -> tuple[str, str]:
        snap_a = await snapshot(driver, a, scratch, "a")
        snap_b = await snapshot(driver, b, scratch, "b")
        return snap_a.tree, snap_b.tree

    tree_a, tree_b = anyio.run(both)
    predictor = Predictor(str(repo))
    head = git(repo, "rev-parse", "main").strip()
    prediction = predictor.predict(predictor.tree_of(head), tree_a, tree_b)
    expected = _git_conflicts(repo, head, tree_a, tree_b)
    assert set(prediction.a.conflict) == expected, (ops_a, ops_b)
    assert set(prediction.b.conflict) == expected, (ops_a, ops_b)
    assert (prediction.kind == "conflict") == bool(expected)


_quick = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_long = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_quick
@given(ops_a=_ops, ops_b=_ops)
def test_conflicting_paths_match_git_merge_tree(
    sides: tuple[Path, Path, Path], ops_a: list[Op], ops_b: list[Op]
) -> None:
    check(sides, ops_a, ops_b)


@pytest.mark.slow
@_long
@given(ops_a=_ops, ops_b=_ops)
def test_conflicting_paths_match_git_merge_tree_campaign(
    sides: tuple[Path, Path, Path], ops_a: list[Op], ops_b: list[Op]
) -> None:
    check(sides, ops_a, ops_b)
