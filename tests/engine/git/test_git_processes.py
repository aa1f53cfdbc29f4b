"""How many git processes a warm allocate+release cycle runs: counted by a spy around the git driver."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.git import seal
from tests.conftest import git
from tests.engine.git.seal_support import index_not_racy, quiet_for_the_margin, short_margin

pytestmark = pytest.mark.anyio

# switch to allocate (its worktree list and the branch's refs read from git's files, its status spared by
# the release's seal, its unsaved-commit count by the release branch's ref file); status and switch
# --detach to release.
WARM_CYCLE_GIT_PROCESSES = 3


@contextmanager
def spied(driver: Any) -> Iterator[list[tuple[str, ...]]]:
    """Every git command the driver runs (its `run` and `run_input`), in order."""
    calls: list[tuple[str, ...]] = []
    run, run_input = driver.run, driver.run_input

    async def spy_run(cwd: Any, *args: str, **kw: Any) -> str:
        calls.append(args)
        return str(await run(cwd, *args, **kw))

    async def spy_input(cwd: Any, text: str, *args: str, **kw: Any) -> str:
        calls.append(args)
        return str(await run_input(cwd, text, *args, **kw))

    driver.run, driver.run_input = spy_run, spy_input
    try:
        yield calls
    finally:
        del driver.run, driver.run_input


async def test_a_warm_cycle_runs_one_status(coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short_margin(monkeypatch)
    first = await coord.pool.allocate("feat/warm-up")
    await index_not_racy(Path(first.path))  # written with its files by `worktree add`: git would re-read them
    await quiet_for_the_margin(Path(first.path))  # files just written by `worktree add` are too new to seal
    await coord.pool.release(worktree_id=first.worktree_id)
    with spied(coord.pool.git) as calls:
        again = await coord.pool.allocate("feat/cycle")
        allocate = list(calls)
        await coord.pool.release(worktree_id=again.worktree_id)
    release = calls[len(allocate) :]
    assert again.reused and again.worktree_id == first.worktree_id
    commands = [c[0] for c in calls]
    assert commands.count("status") == 1, commands
    assert [c[0] for c in release] == ["status", "switch"], commands
    assert len(calls) == WARM_CYCLE_GIT_PROCESSES, commands


async def test_a_slot_touched_within_the_margin_before_its_release_gets_a_status(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default margin: a file changed right before the release's mark (younger than the margin, by
    construction rather than by how fast the machine runs) means the seal is not trusted. The file is
    one git ignores, so the release finds the slot clean and does seal it."""
    first = await coord.pool.allocate("feat/fresh")
    wt = Path(first.path)
    await index_not_racy(wt)
    await quiet_for_the_margin(wt)  # the margin's only reason to refuse is the write below
    mark = seal.mark

    def write_then_mark(admin: Path) -> seal.SealMark:
        (wt / ".env").write_text("written just before the mark\n")
        return mark(admin)

    monkeypatch.setattr(seal, "mark", write_then_mark)
    await coord.pool.release(worktree_id=first.worktree_id)
    assert (Path(git(wt, "rev-parse", "--absolute-git-dir").strip()) / seal.SEAL_FILE).is_file()
    with spied(coord.pool.git) as calls:
        await coord.pool.allocate("feat/after-fresh")
    assert "status" in [c[0] for c in calls]
