"""A release cut short after the slot went RELEASING (the store went away before its last write, the
call was cancelled) leaves the row RELEASING under its own agent, with nobody at work on it. The
agent's next release of it, on the same server, finishes it: it is neither told the allocation ended
nor kept waiting for a release that nobody runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store.connection import StoreUnavailableError
from agent_coord.engine.store.records import SlotState
from tests.conftest import git

pytestmark = pytest.mark.anyio


def fail_the_release_s_last_write(coord: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store goes away between RELEASING and FREE: the release's last transition fails, once."""
    transition = coord.store.transition

    async def failing(slot_id: str, **kw: Any) -> Any:
        if kw.get("expect_state") == SlotState.RELEASING:
            monkeypatch.setattr(coord.store, "transition", transition)
            raise StoreUnavailableError(Path("coord.db"), "cannot be used (the test took it away)")
        return await transition(slot_id, **kw)

    monkeypatch.setattr(coord.store, "transition", failing)


@pytest.mark.parametrize("dirty", [False, True])
async def test_a_release_cut_short_by_the_store_is_finished_by_the_retry(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch, dirty: bool
) -> None:
    alloc = await coord.pool.allocate("feat/cut-short")
    wt = Path(alloc.path)
    if dirty:
        (wt / "work.txt").write_text("unsaved work\n")
    fail_the_release_s_last_write(coord, monkeypatch)
    with pytest.raises(CoordError) as cut:
        await coord.pool.release(worktree_id=alloc.worktree_id, force=dirty)
    assert cut.value.code == ErrorCode.STORE_UNAVAILABLE
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.RELEASING and slot.owner == coord.agent_id

    again = await coord.pool.release(worktree_id=alloc.worktree_id, force=dirty)
    assert again.state == "FREE"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE and slot.owner is None
    assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    if dirty:
        refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue/").split()
        assert any("work.txt" in git(repo, "ls-tree", "-r", "--name-only", r).split() for r in refs)
    releases = [e for e in await coord.store.events() if e.action == "release" and e.outcome == "ok"]
    assert len(releases) == 1


async def test_a_cancelled_release_is_finished_by_the_retry(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call is cancelled while git detaches the slot (a client gave up on it)."""
    alloc = await coord.pool.allocate("feat/cancelled")
    detaching = anyio.Event()
    detach = coord.pool.git.detach

    async def detach_until_cancelled(slot: Any) -> None:
        detaching.set()
        await anyio.sleep_forever()

    monkeypatch.setattr(coord.pool.git, "detach", detach_until_cancelled)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: coord.pool.release(worktree_id=alloc.worktree_id))
        await detaching.wait()
        tg.cancel_scope.cancel()
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.RELEASING
    monkeypatch.setattr(coord.pool.git, "detach", detach)

    again = await coord.pool.release(worktree_id=alloc.worktree_id)
    assert again.state == "FREE"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE
    assert git(Path(alloc.path), "rev-parse", "--abbrev-ref", "HEAD").strip() == "HEAD"  # detached


async def test_a_removing_release_cut_short_by_the_store_leaves_the_worktree_whole(
    coord: Any, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removal cannot be undone, so the release is recorded before it: answered STORE_UNAVAILABLE, the
    agent still has its worktree to work on in (what it writes then is saved by the retry)."""
    alloc = await coord.pool.allocate("feat/remove-cut-short")
    wt = Path(alloc.path)
    (wt / "work.txt").write_text("unsaved work\n")
    fail_the_release_s_last_write(coord, monkeypatch)
    with pytest.raises(CoordError) as cut:
        await coord.pool.release(worktree_id=alloc.worktree_id, force=True, remove=True)
    assert cut.value.code == ErrorCode.STORE_UNAVAILABLE
    assert wt.is_dir() and (wt / ".git").exists()
    (wt / "after.txt").write_text("written after the answer\n")

    again = await coord.pool.release(worktree_id=alloc.worktree_id, force=True, remove=True)
    assert again.state == "REMOVED" and again.removed and not wt.exists()
    assert await coord.store.slots() == []
    assert again.rescue_ref is not None
    assert "after.txt" in git(repo, "ls-tree", "-r", "--name-only", again.rescue_ref).split()
    releases = [e for e in await coord.store.events() if e.action == "release" and e.outcome == "ok"]
    assert len(releases) == 1
