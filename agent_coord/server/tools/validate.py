from __future__ import annotations

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

from agent_coord.engine.models import ValidateResult
from agent_coord.server.state import AppState
from agent_coord.server.tools._common import run_tool

DESCRIPTION = (
    "Compare the coordinator's records with git and the disk: crashed or silent agents holding worktrees, "
    "worktrees missing or unknown, branch drift, leftovers. With repair=false (default) it only reports and "
    "changes nothing; repair=true fixes what is safe, saving any work to a rescue ref before touching it."
)


def register(mcp: MCPServer, state: AppState) -> None:
    @mcp.tool(
        name="validate",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    async def validate(repair: bool = False, repo: str | None = None) -> ValidateResult:
        return await run_tool(state, state.coord.validate(repair=repair, repo=repo))
