from __future__ import annotations

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import ReleaseResult
from agent_coord.server.tools.engine_tool import ToolInput, engine_tool

DESCRIPTION = (
    "Give a worktree you hold back to the pool, kept warm on a detached HEAD; your branch and its commits stay. "
    "Uncommitted or untracked changes are refused with WORKTREE_DIRTY, unless force=true: that saves them to "
    "the `rescue_ref` it returns, then clears them from the worktree. remove=true deletes the worktree's "
    "directory instead of keeping it warm."
)


ONE_OF = "At most one of worktree_id, path and branch; none: the one worktree you hold."


class ReleaseInput(ToolInput):
    worktree_id: str | None = Field(
        default=None, description=f"the worktree's id, as allocate_worktree returned it. {ONE_OF}"
    )
    path: str | None = Field(default=None, description=f"the worktree's absolute path. {ONE_OF}")
    branch: str | None = Field(default=None, description=f"the branch the worktree holds. {ONE_OF}")
    force: bool = Field(
        default=False, description="release your worktree despite uncommitted work, saved to `rescue_ref` first"
    )
    remove: bool = Field(default=False, description="delete the worktree's directory instead of keeping it warm")


async def release_worktree(args: ReleaseInput, coord: Coordinator) -> ReleaseResult:
    return await coord.pool.release(
        worktree_id=args.worktree_id, path=args.path, branch=args.branch, force=args.force, remove=args.remove
    )


TOOL = engine_tool(
    release_worktree,
    name="release_worktree",
    description=DESCRIPTION,
    # Destructive: force clears the worktree's changes (after saving them), remove deletes its directory.
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
    ),
)
