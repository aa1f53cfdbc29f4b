from __future__ import annotations

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

from agent_coord.engine.models import ReleaseResult
from agent_coord.server.state import AppState
from agent_coord.server.tools._common import run_tool

DESCRIPTION = (
    "Give a worktree back to the pool (kept warm on a detached HEAD; your branch is kept). Name it by one of "
    "worktree_id, path or branch, or omit all three to release your only one. Uncommitted or untracked changes "
    "are refused with WORKTREE_DIRTY unless force=true, which first saves them to the `rescue_ref` it returns. "
    "remove=true deletes the slot's directory instead of keeping it warm. Release only worktrees you hold."
)


def register(mcp: MCPServer, state: AppState) -> None:
    @mcp.tool(
        name="release_worktree",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
    )
    async def release_worktree(
        worktree_id: str | None = None,
        path: str | None = None,
        branch: str | None = None,
        force: bool = False,
        remove: bool = False,
    ) -> ReleaseResult:
        return await run_tool(
            state,
            state.coord.pool.release(worktree_id=worktree_id, path=path, branch=branch, force=force, remove=remove),
        )
