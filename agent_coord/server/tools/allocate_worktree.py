from __future__ import annotations

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

from agent_coord.engine.models import AllocationResult
from agent_coord.server.state import AppState
from agent_coord.server.tools._common import run_tool

DESCRIPTION = (
    "Get a git worktree of your own for `branch` from the warm pool (created from `base` if the branch is new). "
    "Work only inside the returned absolute `path`. Calling it again for a branch you hold returns the same "
    "worktree. Errors start with a code: BRANCH_CONFLICT, POOL_EXHAUSTED, ALLOCATION_TIMEOUT, INVALID_BRANCH, "
    "NOT_A_REPOSITORY, GIT_FAILED, INVALID_ARGUMENT."
)


def register(mcp: MCPServer, state: AppState) -> None:
    @mcp.tool(
        name="allocate_worktree",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    async def allocate_worktree(
        branch: str, base: str | None = None, repo: str | None = None, task: str | None = None
    ) -> AllocationResult:
        return await run_tool(state, state.coord.pool.allocate(branch, base=base, repo=repo, task=task))
