from __future__ import annotations

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import ValidateResult
from agent_coord.server.tools.engine_tool import ToolInput, engine_tool

DESCRIPTION = (
    "Compare the coordinator's records with git and the disk: crashed or silent agents holding worktrees, "
    "worktrees missing or unknown, branch drift, leftovers. With repair=false (default) it only reports and "
    "changes nothing; repair=true fixes what is safe, saving any work to a rescue ref before touching it."
)


class ValidateInput(ToolInput):
    repair: bool = Field(default=False, description="fix what is safe (work is saved first); false only reports")
    repo: str | None = Field(default=None, description="absolute path of the repository (default: configured)")


async def validate(args: ValidateInput, coord: Coordinator) -> ValidateResult:
    return await coord.validate(repair=args.repair, repo=args.repo)


TOOL = engine_tool(
    validate,
    name="validate",
    description=DESCRIPTION,
    annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
)
