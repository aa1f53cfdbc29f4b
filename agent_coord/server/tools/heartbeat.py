from __future__ import annotations

from typing import Literal

from mcp.server import MCPServer
from mcp_types import ToolAnnotations

from agent_coord.config import Settings
from agent_coord.engine.models import HeartbeatResult
from agent_coord.server.state import AppState
from agent_coord.server.tools._common import run_tool


def describe(settings: Settings) -> str:
    """The lease, defined once (the README says the same)."""
    return (
        "Your lease on your worktrees is renewed by this server by itself while it runs (every "
        f"{settings.heartbeat_active_s:g} s, every {settings.heartbeat_idle_s:g} s when idle). Call heartbeat at your "
        "checkpoints (after a commit, before a long wait) so what the server has to tell you arrives: the "
        "worktrees you hold, and in `ended` any a reclaim or a forced release took. `idle` (with a `note`: "
        "what you wait for) says you are waiting; you keep your worktrees and your lease. If the server stops "
        f"renewing it (stopped, hung), the lease lapses after {settings.stale_after_s:g} s and your worktrees "
        "are reclaimed, uncommitted work saved to a rescue ref first; a call about them then answers "
        "ALLOCATION_ENDED. If your agent process exits, they are reclaimed at once."
    )


def register(mcp: MCPServer, state: AppState) -> None:
    @mcp.tool(
        name="heartbeat",
        description=describe(state.settings),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True),
    )
    async def heartbeat(status: Literal["active", "idle"] = "active", note: str | None = None) -> HeartbeatResult:
        return await run_tool(state, state.coord.heartbeat(status, note))
