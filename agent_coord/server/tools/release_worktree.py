from __future__ import annotations

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import ReleaseResult
from agent_coord.server.tools.engine_tool import ToolInput, engine_tool

DESCRIPTION = (
    "Give a worktree back to the pool (kept warm on a detached HEAD; your branch is kept). Name it by one of "
    "worktree_id, path or branch, or omit all three to release your only one. Uncommitted or untracked changes "
    "are refused with WORKTREE_DIRTY unless force=true, which first saves them to the `rescue_ref` it returns. "
    "remove=true deletes the slot's directory instead of keeping it warm. Release only worktrees you hold."
)


class ReleaseInput(ToolInput):
    worktree_id: str | None = Field(default=None, description="id of the worktree to release, as allocated")
    path: str | None = Field(default=None, description="absolute path of the worktree to release")
    branch: str | None = Field(default=None, description="branch of the worktree to release")
    force: bool = Field(default=False, description="release despite changes (saved to a rescue ref first)")
    remove: bool = Field(default=False, description="delete the worktree's directory instead of keeping it warm")


async def release_worktree(args: ReleaseInput, coord: Coordinator) -> ReleaseResult:
    return await coord.pool.release(
        worktree_id=args.worktree_id, path=args.path, branch=args.branch, force=args.force, remove=args.remove
    )


TOOL = engine_tool(
    release_worktree,
    name="release_worktree",
    description=DESCRIPTION,
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True),
)
