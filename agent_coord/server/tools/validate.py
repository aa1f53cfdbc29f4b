from __future__ import annotations

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import ValidateResult
from agent_coord.server.tools.engine_tool import REPO_FIELD, ToolInput, engine_tool

DESCRIPTION = (
    "Compare the pool's records with git and the disk: crashed or silent agents holding worktrees, worktrees "
    "missing or unknown, branch drift, leftovers. repair=false (default) only reports and changes nothing. "
    "repair=true also changes what is safe to change: it reclaims the worktrees of dead or lapsed agents "
    "(their uncommitted work saved to rescue refs first), rolls back transitions that can never finish, records "
    "git's branch, and moves unknown directories aside; locked worktrees are left alone."
)


class ValidateInput(ToolInput):
    repair: bool = Field(default=False, description="false: report only; true: also fix what is safe (see above)")
    repo: str | None = REPO_FIELD


async def validate(args: ValidateInput, coord: Coordinator) -> ValidateResult:
    return await coord.validate(repair=args.repair, repo=args.repo)


TOOL = engine_tool(
    validate,
    name="validate",
    description=DESCRIPTION,
    # True for repair=true (it reclaims other agents' worktrees); repair=false changes nothing.
    annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
    ),
)
