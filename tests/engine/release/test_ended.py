"""ALLOCATION_ENDED names where the work went, also a rescue ref whose event was never written (the
process that saved it was killed before logging it; its redo saved the same work again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.confinement import Bounds
from agent_coord.engine.git.rescue_commit import rescue_worktree
from agent_coord.engine.reclaim.rescue import grant_mark
from tests.conftest import git


@pytest.mark.anyio
async def test_a_rescue_ref_whose_event_was_lost_is_named_with_the_logged_one(make_settings: Any, repo: Path) -> None:
    from agent_coord.engine.coordinator import Coordinator

    settings = make_settings()
    async with (
        Coordinator.open(settings, register=True, agent_id="agent-owner") as owner,
        Coordinator.open(settings, register=True, agent_id="agent-person") as person,
    ):
        a = await owner.pool.allocate("feat/lost-log")
        (Path(a.path) / "unsaved.txt").write_text("work in progress\n")
        slot = await owner.store.slot(a.worktree_id)
        assert slot is not None and slot.fencing_token is not None
        # A reclaim killed between saving the work and logging it: its ref, no event.
        where = Bounds.of(repo, Path(a.path).parent).slot(Path(a.path))
        unlogged = await owner.git.free_rescue_ref(where, "feat/lost-log", a.worktree_id)
        subject = f"agent-coord rescue of {a.worktree_id} (feat/lost-log) {grant_mark(slot.fencing_token)}: killed"
        await rescue_worktree(owner.git, where, unlogged, subject)
        # Another grant's unlogged ref of the same branch is not this allocation's.
        git(
            repo,
            "update-ref",
            f"{unlogged}-x",
            git(
                repo,
                "commit-tree",
                "-m",
                f"agent-coord rescue of wt-09 (feat/lost-log) {grant_mark(slot.fencing_token + 1000)}: other",
                f"{unlogged}^{{tree}}",
            ).strip(),
        )
        taken = await person.pool.release(worktree_id=a.worktree_id, force=True, over_live_agent=True)
        assert taken.rescue_ref and taken.rescue_ref != unlogged
        with pytest.raises(CoordError) as ended:
            await owner.pool.release(branch="feat/lost-log")
    assert ended.value.code == ErrorCode.ALLOCATION_ENDED
    text = ended.value.message
    assert text.endswith(f"saved to {unlogged} and {taken.rescue_ref}"), text  # in the order saved
    assert f"{unlogged}-x" not in text
