from __future__ import annotations

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import AllocationResult
from agent_coord.server.tools.engine_tool import ToolInput, engine_tool

DESCRIPTION = (
    "Get a git worktree of your own for `branch` from the warm pool (created from `base` if the branch is new). "
    "Work only inside the returned absolute `path`. Calling it again for a branch you hold returns the same "
    "worktree. Errors start with a code: BRANCH_CONFLICT, POOL_EXHAUSTED, ALLOCATION_TIMEOUT, INVALID_BRANCH, "
    "NOT_A_REPOSITORY, GIT_FAILED, INVALID_ARGUMENT."
)


class AllocateInput(ToolInput):
    branch: str = Field(description="branch to work on; created from `base` when it does not exist")
    base: str | None = Field(default=None, description="start point of a new branch (default: the repo's HEAD)")
    repo: str | None = Field(default=None, description="absolute path of the repository (default: configured)")
    task: str | None = Field(default=None, description="what the worktree is for, shown in status")


async def allocate_worktree(args: AllocateInput, coord: Coordinator) -> AllocationResult:
    return await coord.pool.allocate(args.branch, base=args.base, repo=args.repo, task=args.task)


TOOL = engine_tool(
    allocate_worktree,
    name="allocate_worktree",
    description=DESCRIPTION,
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
)
