"""Which folders may be a pool root (engine/git/confinement.py `check_pool_root`, docs/decisions.md).

A pool root is a folder of agent-coord's own: made by it, or empty when first used, and then marked
(`.agent-coord-pool`). A folder that holds anything agent-coord did not put there (a `~/src` of other
projects, plain or git; the repository's parent or any ancestor; the repository; another repository;
another pool) is refused at start-up with INVALID_ARGUMENT naming AGENT_COORD_POOL_ROOT, through a
symlink as well, and nothing in it is touched: no marker, no `.lost+found`, no move.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.errors import ErrorCode
from agent_coord.engine.git.confinement import POOL_MARKER, PoolRootRefused
from agent_coord.engine.store.records import SlotState
from bench.outside_check import Outside, fingerprint
from tests.conftest import git, make_repo

pytestmark = pytest.mark.anyio


def projects_folder(tmp_path: Path) -> Path:
    """A `~/src` of other projects: plain folders and files, nothing of this repository."""
    src = tmp_path / "src"
    (src / "website").mkdir(parents=True)
    (src / "website" / "index.html").write_text("<p>someone's site</p>\n")
    (src / "scratch.txt").write_text("notes\n")
    return src


def another_checkout(tmp_path: Path) -> Path:
    """Another repository's own folder: its files are plain entries, its `.git` a hidden one."""
    return make_repo(tmp_path, "elsewhere")


def folder_with_a_clone(tmp_path: Path) -> Path:
    root = tmp_path / "clones"
    root.mkdir()
    other = make_repo(tmp_path, "upstream")
    subprocess.run(["git", "clone", "-q", str(other), str(root / "upstream")], check=True)
    return root


def other_pool(tmp_path: Path) -> Path:
    root = tmp_path / "their-pool"
    root.mkdir()
    (root / POOL_MARKER).write_text("agent-coord pool of /somewhere/else\n")
    return root


PLACES = {
    "projects_folder": projects_folder,
    "repo_parent": lambda tmp_path: tmp_path,
    "repo_itself": lambda tmp_path: tmp_path / "repo",
    "grandparent": lambda tmp_path: tmp_path.parent,
    "another_checkout": another_checkout,
    "folder_with_a_clone": folder_with_a_clone,
    "another_pool": other_pool,
}


def place(tmp_path: Path, where: str, via_symlink: bool) -> tuple[Path, Path]:
    """(the pool root setting, the real folder it names)."""
    real = PLACES[where](tmp_path)
    if not via_symlink:
        return real, real
    link = tmp_path / f"link-to-{where}"
    link.symlink_to(real)
    return link, real


@pytest.mark.parametrize("via_symlink", [False, True], ids=["direct", "symlink"])
@pytest.mark.parametrize("where", PLACES)
async def test_a_folder_that_is_not_the_pools_own_is_refused_at_start_up_and_left_as_it_was(
    make_settings: Any, repo: Path, tmp_path: Path, where: str, via_symlink: bool
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    setting, real = place(tmp_path, where, via_symlink)
    (repo / "README.md").write_text("a person's uncommitted edit\n")
    seen = Outside(repo, real) if where not in ("repo_parent", "grandparent", "repo_itself") else Outside(repo)
    for _ in range(2):  # and again: a refusal records nothing that a second start would trust
        with pytest.raises(PoolRootRefused, match="AGENT_COORD_POOL_ROOT") as refused:
            async with Coordinator.open(make_settings(pool_root=setting), register=True):
                pass
        assert refused.value.code == ErrorCode.INVALID_ARGUMENT
    seen.assert_unchanged()
    assert not (real / POOL_MARKER).exists() or where == "another_pool"
    assert not (real / ".lost+found").exists()


def test_the_cli_and_the_hooks_refuse_a_projects_folder_and_move_nothing(
    env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    from tests.claude.test_hooks import run

    src = projects_folder(tmp_path)
    before = fingerprint(src)
    bad = {**env, "AGENT_COORD_POOL_ROOT": str(src)}
    for args, stdin in [
        (["validate", "--repair"], ""),
        (["status"], ""),
        (["hook", "worktree-create"], json.dumps({"name": "x", "session_id": "s", "cwd": str(repo)})),
    ]:
        proc = run(bad, args, stdin)
        assert proc.returncode != 0 and "did not make" in proc.stderr, (args, proc.stderr)
    assert fingerprint(src) == before


@pytest.mark.parametrize("kind", ["new", "empty"])
async def test_a_new_or_empty_folder_becomes_the_pool_and_is_marked(
    make_settings: Any, repo: Path, tmp_path: Path, kind: str
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    root = tmp_path / "new" / "pool"
    if kind == "empty":
        root = tmp_path / "empty"
        root.mkdir()
        (root / ".DS_Store").write_bytes(b"\0finder")  # desktop litter is no reason to refuse
    async with Coordinator.open(make_settings(pool_root=root), register=True, agent_id="agent-mark") as c:
        a = await c.pool.allocate("feat/first")
        await c.pool.release(worktree_id=a.worktree_id)
    assert (root / POOL_MARKER).read_text() == f"agent-coord pool of {repo.resolve()}\n"
    # The pool's own folder may then gain leftovers: they are moved aside, not a reason to stop.
    (root / "leftover").mkdir()
    (root / "leftover" / "keep.txt").write_text("kept\n")
    async with Coordinator.open(make_settings(pool_root=root), register=True, agent_id="agent-mark") as c:
        fixed = await c.validate(repair=True)
    assert [f.kind for f in fixed.findings if f.repaired] == ["leftover_directory"]
    (moved,) = (root / ".lost+found").iterdir()
    assert (moved / "keep.txt").read_text() == "kept\n"


async def test_a_pool_made_before_the_marker_is_marked_when_it_holds_only_its_slots(
    make_settings: Any, repo: Path, tmp_path: Path
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    root = tmp_path / "pool"
    async with Coordinator.open(make_settings(pool_root=root), register=True, agent_id="agent-old") as c:
        a = await c.pool.allocate("feat/old")
    (root / POOL_MARKER).unlink()
    async with Coordinator.open(make_settings(pool_root=root), register=True, agent_id="agent-old") as c:
        assert (root / POOL_MARKER).exists()
        assert [s.path for s in await c.store.slots()] == [a.path]


async def test_a_persons_own_worktrees_in_an_unmarked_folder_are_left_alone_until_imported(
    make_settings: Any, repo: Path, tmp_path: Path
) -> None:
    """Worktrees of this repository that a person made in the folder are tolerated, not adopted: no
    repair detaches them; import-pool is how they join the pool, and the folder is then its own."""
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.pool_file.importer import PoolImporter

    root = tmp_path / "mine"
    git(repo, "worktree", "add", "-q", "-b", "feat/mine", str(root / "mine"))
    (root / "mine" / "draft.txt").write_text("a person's draft\n")
    seen = Outside(root / "mine")
    async with Coordinator.open(make_settings(pool_root=root), register=True, agent_id="agent-p") as c:
        report = await c.validate(repair=True)
        assert [f.kind for f in report.findings] == []
        assert [(f.kind, f.action) for f in report.skipped] == [
            ("untracked_worktree", "left alone (agent-coord import-pool adopts it)")
        ]
        assert await c.store.slots() == []
        assert not (root / POOL_MARKER).exists()
        seen.assert_unchanged()
        importer = PoolImporter(c.store, c.git, c.repos, c.identity)
        table = f"| Worktree | Status | Agent |\n|---|---|---|\n| {root / 'mine'} | busy | agent-p |\n"
        await importer.import_text(table, base_dir=tmp_path, source="t", lease_s=60)
        (slot,) = await c.store.slots()
        assert slot.state == SlotState.BUSY and slot.branch == "feat/mine"
    assert (root / POOL_MARKER).exists()
    seen.assert_unchanged()


async def test_a_pool_root_this_user_cannot_write_to_is_used_unmarked(
    make_settings: Any, repo: Path, tmp_path: Path
) -> None:
    """Marking is best effort: `status` on a pool root that refuses new entries still starts."""
    from agent_coord.engine.coordinator import Coordinator

    root = tmp_path / "locked-pool"
    root.mkdir()
    if os.geteuid() == 0:
        assert subprocess.run(["chattr", "+i", str(root)]).returncode == 0
    else:
        root.chmod(0o500)
    try:
        async with Coordinator.open(make_settings(pool_root=root), register=False) as c:
            assert await c.default_repo() is not None
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        root.chmod(0o700)
    assert list(root.iterdir()) == []
