"""Every file first-time setup creates in a slot passes the confinement guard (engine/git/slot_files.py):
`.worktreeinclude` copies, post-create commands and the Claude Code setup links.

Each attack is made with real files: a slot folder replaced by a symlink, a folder inside the slot that
is a symlink to elsewhere (committed by a branch, or swapped in after the slot was opened), a file where
a folder should be, names with `..` or absolute ones. Afterwards nothing outside the slot changed
(bench/outside_check.py). Both ways of walking are run: by directory descriptors (POSIX) and by
looking at each folder first (what Windows, without `dir_fd`, uses).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PureWindowsPath
from typing import Any

import pytest

from agent_coord.engine.git.confinement import Bounds, Unconfined
from agent_coord.engine.git.path_rules import relative_parts
from agent_coord.engine.git.slot_files import Refused, SlotFiles, dir_fds_supported
from bench.outside_check import Outside
from tests.conftest import git

WALKS = pytest.mark.parametrize(
    "use_dir_fds",
    [
        pytest.param(True, id="dir_fds", marks=pytest.mark.skipif(not dir_fds_supported(), reason="POSIX")),
        pytest.param(False, id="lstat_walk"),
    ],
)


@pytest.fixture
def places(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(a directory to write in, a source file, a sibling directory that must not change)."""
    root, sibling = tmp_path / "slot", tmp_path / "sibling"
    root.mkdir()
    sibling.mkdir()
    (sibling / "notes.txt").write_text("a person's notes\n")
    source = tmp_path / "source.env"
    source.write_text("SECRET=1\n")
    return root, source, sibling


@WALKS
@pytest.mark.parametrize(
    "rel",
    ["../escape.env", "a/../../escape.env", "a/..", "/tmp/absolute.env", "", ".", "./..", "a/./../../x"],
)
def test_a_name_that_leaves_the_directory_is_refused(
    places: tuple[Path, Path, Path], tmp_path: Path, use_dir_fds: bool, rel: str
) -> None:
    root, source, sibling = places
    seen = Outside(sibling, tmp_path / "source.env")
    before = sorted(p.name for p in tmp_path.iterdir())
    with SlotFiles(root, use_dir_fds=use_dir_fds) as files:
        with pytest.raises(Refused):
            files.copy_in(rel, source)
        with pytest.raises(Refused):
            files.link_in(rel, source)
    seen.assert_unchanged()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert list(root.iterdir()) == []
    assert not Path("/tmp/absolute.env").exists()


@WALKS
def test_a_folder_of_the_slot_that_is_a_symlink_out_is_never_written_through(
    places: tuple[Path, Path, Path], tmp_path: Path, use_dir_fds: bool
) -> None:
    root, source, sibling = places
    (root / ".config").symlink_to(sibling)
    (root / "deep").mkdir()
    (root / "deep" / "link").symlink_to(sibling)
    seen = Outside(sibling)
    with SlotFiles(root, use_dir_fds=use_dir_fds) as files:
        for rel in [".config/local.env", "deep/link/local.env", "deep/link/new/dir/local.env"]:
            with pytest.raises(Refused):
                files.copy_in(rel, source)
            with pytest.raises(Refused):
                files.link_in(rel, source)
        assert files.copy_in("deep/fine/local.env", source)
    seen.assert_unchanged()
    assert (root / "deep" / "fine" / "local.env").read_text() == "SECRET=1\n"


@WALKS
def test_a_file_where_a_folder_should_be_stops_that_write(places: tuple[Path, Path, Path], use_dir_fds: bool) -> None:
    root, source, _ = places
    (root / "config").write_text("a file\n")
    with SlotFiles(root, use_dir_fds=use_dir_fds) as files, pytest.raises(Refused):
        files.copy_in("config/local.env", source)
    assert (root / "config").read_text() == "a file\n"


@WALKS
def test_what_the_slot_has_is_never_replaced(
    places: tuple[Path, Path, Path], tmp_path: Path, use_dir_fds: bool
) -> None:
    root, source, sibling = places
    (root / "mine.env").write_text("the branch's own\n")
    (root / "dangling.env").symlink_to(sibling / "new-file.txt")  # a write through it would create this
    seen = Outside(sibling)
    with SlotFiles(root, use_dir_fds=use_dir_fds) as files:
        assert not files.copy_in("mine.env", source)
        assert not files.copy_in("dangling.env", source)
        assert not files.link_in("dangling.env", source)
        assert files.copy_in("nested/a/b.env", source)
        assert files.link_in("linked.env", source)
    seen.assert_unchanged()
    assert (root / "mine.env").read_text() == "the branch's own\n"
    assert os.readlink(root / "linked.env") == str(source)
    assert (root / "nested" / "a" / "b.env").read_text() == "SECRET=1\n"


@pytest.mark.skipif(not dir_fds_supported(), reason="directory descriptors: POSIX")
def test_a_slot_swapped_for_a_symlink_after_it_was_opened_is_not_followed(
    places: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """The walk starts from the directory that was opened: swapping the path for a link to elsewhere
    afterwards does not move the writes there."""
    root, source, sibling = places
    seen = Outside(sibling)
    with SlotFiles(root, use_dir_fds=True) as files:
        root.rename(tmp_path / "moved-away")
        root.symlink_to(sibling)
        assert files.copy_in("sub/local.env", source)
    seen.assert_unchanged()
    assert (tmp_path / "moved-away" / "sub" / "local.env").read_text() == "SECRET=1\n"


@pytest.mark.parametrize(
    "rel",
    [
        "..\\escape",
        "a\\..\\..\\x",
        "C:\\Windows\\x",
        "C:x",
        "\\\\server\\share\\x",
        "/x",
        "a/b. ",
        "nul.txt",
        "a:stream",
    ],
)
def test_windows_names_that_leave_or_alias_are_refused(rel: str) -> None:
    with pytest.raises(ValueError):
        relative_parts(rel, PureWindowsPath)


def test_windows_names_that_stay_are_split_on_both_slashes() -> None:
    assert relative_parts("a\\b/c.env", PureWindowsPath) == ("a", "b", "c.env")


# ---- through the guard, on real slots ------------------------------------------------------------


def swap_for_link(slot: Path, target: Path) -> None:
    shutil.rmtree(slot)
    slot.symlink_to(target)


@pytest.mark.anyio
async def test_setup_refuses_a_slot_replaced_by_a_symlink(coord: Any, repo: Path, tmp_path: Path) -> None:
    from agent_coord.claude.slot_setup import link_claude_setup
    from agent_coord.engine.allocate.slot_setup import copy_included_files, run_post_create

    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".worktreeinclude").write_text(".env\n")
    (repo / ".mcp.json").write_text("{}\n")
    a = await coord.pool.allocate("feat/setup")
    slot = Path(a.path)
    swap_for_link(slot, repo)
    os.remove(repo / ".env")  # were the copy to follow the link, it would land here again
    seen = Outside(repo)
    confined = Bounds.of(repo, Path(a.path).parent).slot(slot)
    marker = tmp_path / "post-create-ran"
    with pytest.raises(Unconfined):
        await copy_included_files(coord.git, repo, confined)
    with pytest.raises(Unconfined):
        await run_post_create([f"touch {marker}"], confined, 10)
    with pytest.raises(Unconfined):
        await link_claude_setup(coord.git, repo, confined)
    seen.assert_unchanged()
    assert not marker.exists() and not (repo / ".env").exists()


@pytest.mark.anyio
async def test_a_branch_that_commits_a_folder_as_a_link_out_gets_nothing_written_through_it(
    make_settings: Any, repo: Path, tmp_path: Path
) -> None:
    """A base whose tree has `.config` as a symlink to a directory outside the pool: the new slot's
    `.worktreeinclude` copy and the Claude Code setup links skip every path through it."""
    from agent_coord.claude.slot_setup import link_claude_setup
    from agent_coord.engine.coordinator import Coordinator

    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "notes.txt").write_text("a person's notes\n")
    scratch = tmp_path / "scratch"
    git(repo, "worktree", "add", "-q", "-b", "evil", str(scratch))
    (scratch / ".config").symlink_to(sibling)
    (scratch / ".claude").symlink_to(sibling)
    git(scratch, "add", ".config", ".claude")
    git(scratch, "commit", "-q", "-m", "folders as links out")
    git(repo, "worktree", "remove", str(scratch))
    (repo / ".config").mkdir()
    (repo / ".config" / "local.env").write_text("LOCAL=1\n")
    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".claude").mkdir()
    (repo / ".claude" / "settings.json").write_text("{}\n")
    (repo / ".worktreeinclude").write_text(".env\n.config/\n")
    seen = Outside(sibling)  # the main checkout's info/exclude gains the setup's lines, by design
    async with Coordinator.open(make_settings(), register=True, agent_id="agent-evil") as c:
        a = await c.pool.allocate("feat/from-evil", base="evil")
        slot = Path(a.path)
        assert (slot / ".env").read_text() == "SECRET=1\n"
        assert os.readlink(slot / ".config") == str(sibling)
        linked = await link_claude_setup(c.git, repo, Bounds.of(repo, slot.parent).slot(slot))
        assert ".claude/settings.json" not in linked
    seen.assert_unchanged()


@pytest.mark.anyio
async def test_a_slot_swapped_during_its_setup_is_never_granted(make_settings: Any, repo: Path, tmp_path: Path) -> None:
    """A post-create step long enough for the slot to be swapped for a link to the main checkout
    (done here by the step itself): the allocation refuses, the slot is quarantined, the main checkout
    is untouched."""
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.errors import CoordError, ErrorCode
    from agent_coord.engine.store.records import SlotState

    swap = f'sh -c \'d="$(pwd)"; mv "$d" "{tmp_path / "moved-away"}"; ln -s "{repo}" "$d"\''
    (repo / "README.md").write_text("a person's uncommitted edit\n")
    seen = Outside(repo)
    async with Coordinator.open(make_settings(post_create=(swap,)), register=True, agent_id="agent-sw") as c:
        with pytest.raises(CoordError) as refused:
            await c.pool.allocate("feat/swapped")
        assert refused.value.code == ErrorCode.GIT_FAILED
        (slot,) = await c.store.slots()
        assert slot.state == SlotState.QUARANTINED
    seen.assert_unchanged()


@pytest.mark.anyio
async def test_worktreeinclude_patterns_that_point_outside_copy_nothing_outside(
    make_settings: Any, repo: Path, tmp_path: Path
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    sibling = tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "notes.txt").write_text("a person's notes\n")
    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".worktreeinclude").write_text(f".env\n../sibling/notes.txt\n../**\n{sibling}/*\n/etc/passwd\n..\n")
    seen = Outside(sibling)
    async with Coordinator.open(make_settings(), register=True, agent_id="agent-inc") as c:
        a = await c.pool.allocate("feat/patterns")
    slot = Path(a.path)
    assert (slot / ".env").read_text() == "SECRET=1\n"
    assert sorted(p.name for p in slot.iterdir()) == [".env", ".git", ".gitignore", "README.md"]
    seen.assert_unchanged()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool", "repo", "sibling", "state"]


@pytest.mark.anyio
async def test_free_slots_replaced_by_symlinks_are_quarantined_and_another_slot_serves(
    coord: Any, repo: Path, tmp_path: Path
) -> None:
    """Each FREE slot swapped for a link to the repository is claimed, refused by the guard, rolled back
    and quarantined, and the allocation decides again: it ends in a new slot, the repository untouched."""
    from agent_coord.engine.store.records import SlotState

    made = [await coord.pool.allocate(f"feat/{n}") for n in ("a", "b")]
    for result in made:
        await coord.pool.release(worktree_id=result.worktree_id)
    for result in made:
        swap_for_link(Path(result.path), repo)
    seen = Outside(repo)
    result = await coord.pool.allocate("feat/c")
    assert result.worktree_id not in {m.worktree_id for m in made}
    assert git(Path(result.path), "branch", "--show-current").strip() == "feat/c"
    states = {s.id: s.state for s in await coord.store.slots()}
    assert [states[m.worktree_id] for m in made] == [SlotState.QUARANTINED, SlotState.QUARANTINED]
    seen.assert_unchanged()
    assert git(repo, "branch", "--show-current").strip() == "main"
    assert git(repo, "status", "--porcelain") == ""
