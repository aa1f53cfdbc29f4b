from __future__ import annotations

from typing import Literal

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

from agent_coord.engine.models import HeartbeatResult
from agent_coord.server.state import AppState
from agent_coord.server.tools._common import run_tool

DESCRIPTION = (
    "Tell the coordinator you are alive and whether you are `active` or `idle` (waiting on a person or a long "
    "build), with an optional note shown in status. The server renews your lease by itself; call this when "
    "your status changes."
)


def register(mcp: MCPServer, state: AppState) -> None:
    @mcp.tool(
        name="heartbeat",
        description=DESCRIPTION,
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    async def heartbeat(status: Literal["active", "idle"] = "active", note: str | None = None) -> HeartbeatResult:
        return await run_tool(state, state.coord.heartbeat(status, note))
