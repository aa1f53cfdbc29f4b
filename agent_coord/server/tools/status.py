from __future__ import annotations

from mcp_types import ToolAnnotations

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import StatusResult
from agent_coord.server.tools.engine_tool import REPO_FIELD, ToolInput, engine_tool

DESCRIPTION = (
    "The pool at a glance: every worktree with its state, branch, holder and lease; every agent with whether it "
    "is alive and why (`alive: false`: `validate` with `repair: true` reclaims its worktrees); the contention "
    "seen; the health metrics. Read-only."
)


class StatusInput(ToolInput):
    repo: str | None = REPO_FIELD


async def status(args: StatusInput, coord: Coordinator) -> StatusResult:
    return await coord.status(args.repo)


TOOL = engine_tool(
    status,
    name="status",
    description=DESCRIPTION,
    annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
)
