"""An allocation's branch refs read from git's files agree with `git for-each-ref`, or decline."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.worktree_files import read_branch_refs
from tests.conftest import git, make_repo

pytestmark = pytest.mark.anyio

NAMES = ["a", "a/b", "a/b/c", "feat", "feat/x", "x"]


async def agrees_with_git(repo: Path, branch: str) -> None:
    ours = read_branch_refs(repo / ".git", branch)
    assert ours is not None
    assert ours == await GitDriver().branch_refs(repo, branch), branch


# Each ref is created loose or packed, as a local branch or under one of two remotes; refs that clash
# (`a` beside `a/b`) cannot both exist, so a layout keeps the ones git accepts, in order.
layouts = st.lists(
    st.tuples(st.sampled_from(["heads", "remotes/origin", "remotes/up"]), st.sampled_from(NAMES), st.booleans()),
    max_size=6,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts, branch=st.sampled_from(NAMES))
async def test_any_layout_of_loose_and_packed_refs_reads_as_git_lists_it(
    layout: list[tuple[str, str, bool]], branch: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp))
        for where, name, packed in layout:
            ref = f"refs/{where}/{name}"
            made = subprocess.run(["git", "-C", str(repo), "update-ref", ref, "HEAD"], capture_output=True)
            if packed and made.returncode == 0:
                git(repo, "pack-refs", "--all")
        await agrees_with_git(repo, branch)


async def test_a_repository_with_thousands_of_branches_is_read_without_git(repo: Path) -> None:
    lines = "".join(f"create refs/heads/old-{i} HEAD\n" for i in range(2000))
    subprocess.run(["git", "-C", str(repo), "update-ref", "--stdin"], input=lines, text=True, check=True)
    git(repo, "pack-refs", "--all")
    git(repo, "update-ref", "refs/heads/feat/x", "HEAD")
    git(repo, "update-ref", "refs/remotes/origin/feat", "HEAD")
    for branch in ("feat", "feat/x", "old-7", "new"):
        await agrees_with_git(repo, branch)


async def test_what_the_files_cannot_settle_is_left_to_git(repo: Path) -> None:
    (repo / ".git" / "refs" / "heads" / "odd").symlink_to(repo / ".git" / "refs" / "heads" / "main")
    assert read_branch_refs(repo / ".git", "odd") is None
    (repo / ".git" / "reftable").mkdir()
    assert read_branch_refs(repo / ".git", "main") is None


async def test_a_case_blind_file_system_is_left_to_git(repo: Path) -> None:
    """Where `head` opens `HEAD` (macOS, Windows), `Feat`'s file would be found for `feat`: git answers."""
    (repo / ".git" / "head").write_text((repo / ".git" / "HEAD").read_text())
    assert read_branch_refs(repo / ".git", "feat") is None


async def test_the_clash_named_is_the_ref_git_names(repo: Path) -> None:
    git(repo, "update-ref", "refs/heads/own/z", "HEAD")
    git(repo, "update-ref", "refs/heads/own/a/b", "HEAD")
    (repo / ".git" / "refs" / "heads" / "own" / ".DS_Store").write_text("")
    await agrees_with_git(repo, "own")


async def test_a_broken_loose_ref_is_left_to_git(repo: Path) -> None:
    (repo / ".git" / "refs" / "heads" / "broken").write_text("not a commit\n")
    assert read_branch_refs(repo / ".git", "broken") is None
