from __future__ import annotations

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import AllocationResult
from agent_coord.server.tools.engine_tool import REPO_FIELD, ToolInput, engine_tool

DESCRIPTION = (
    "Get a git worktree of your own for `branch` from the warm pool. Work only inside the returned absolute "
    "`path`. Calling it again for a branch you hold returns the same worktree. Touches no other agent's work. "
    "A refusal starts with its code and says what to do next."
)


class AllocateInput(ToolInput):
    branch: str = Field(description="the branch to work on: checked out if it exists, else created from `base`")
    base: str | None = Field(
        default=None,
        description="start point of a new branch: a branch, tag or commit (default: its only `origin/<branch>`, "
        "else the main checkout's HEAD); ignored when the branch exists",
    )
    repo: str | None = REPO_FIELD
    task: str | None = Field(default=None, description="one line on what you do, shown to other agents in status")


async def allocate_worktree(args: AllocateInput, coord: Coordinator) -> AllocationResult:
    return await coord.pool.allocate(args.branch, base=args.base, repo=args.repo, task=args.task)


TOOL = engine_tool(
    allocate_worktree,
    name="allocate_worktree",
    description=DESCRIPTION,
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
    ),
)
