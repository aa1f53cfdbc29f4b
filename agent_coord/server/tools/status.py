from __future__ import annotations

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

from agent_coord.engine.models import StatusResult
from agent_coord.server.state import AppState
from agent_coord.server.tools._common import run_tool

DESCRIPTION = (
    "The pool at a glance: every worktree with its state, branch, holder and lease; every agent with whether it "
    "is alive and why; the contention seen; and the health metrics. Read-only."
)


def register(mcp: MCPServer, state: AppState) -> None:
    @mcp.tool(
        name="status",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True),
    )
    async def status(repo: str | None = None) -> StatusResult:
        return await run_tool(state, state.coord.status(repo))
