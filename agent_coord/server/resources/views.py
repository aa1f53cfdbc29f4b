"""Rendering shared by the resources and the CLI (`export-pool` serves exactly `coord://pool.md`)."""

from __future__ import annotations

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import StatusResult
from agent_coord.engine.observe.activity import format_activity_line
from agent_coord.engine.store.records import SlotState
from agent_coord.pool_file.markdown import PoolRow, render_pool_markdown

ACTIVITY_LINES = 50


def pool_markdown(status: StatusResult) -> str:
    rows = [
        PoolRow(
            worktree_id=w.worktree_id,
            path=w.path,
            state=SlotState(w.state),
            agent_id=w.agent_id,
            branch=w.branch,
            since=w.since,
            lease_expires_at=w.lease_expires_at,
            fencing_token=w.fencing_token,
        )
        for w in status.worktrees
    ]
    return render_pool_markdown(rows)


async def activity_lines(coord: Coordinator, limit: int = ACTIVITY_LINES) -> list[str]:
    events = await coord.store.events(limit=limit, newest=True)
    return [format_activity_line(e) for e in events]
