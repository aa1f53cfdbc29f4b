from __future__ import annotations

from typing import Literal

from mcp_types import ToolAnnotations
from pydantic import Field

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import HeartbeatResult
from agent_coord.server.tools.engine_tool import EngineTool, ToolInput, engine_tool


def describe(settings: Settings) -> str:
    """The lease, defined once (the README says the same), with this server's own times."""
    return (
        "Your lease on your worktrees is renewed by this server by itself while it runs (every "
        f"{settings.heartbeat_active_s:g} s, every {settings.heartbeat_idle_s:g} s when idle). Call heartbeat at your "
        "checkpoints (after a commit, before a long wait) so what the server has to tell you arrives: the "
        "worktrees you hold, in `ended` any a reclaim or a forced release took, in `alerts` what to act on. "
        "`idle` (with a `note`: what you wait for) says you are waiting; you keep your worktrees and your "
        f"lease. If the server stops renewing it (stopped, hung), the lease lapses after "
        f"{settings.stale_after_s:g} s and your worktrees "
        "are reclaimed, uncommitted work saved to a rescue ref first; a call about them then answers "
        "ALLOCATION_ENDED. If your agent process exits, they are reclaimed at once."
    )


class HeartbeatInput(ToolInput):
    status: Literal["active", "idle"] = Field(
        default="active", description="`active` while you work; `idle` while you wait (a person, a long run)"
    )
    note: str | None = Field(default=None, description="what you do or wait for, shown in status")


async def heartbeat(args: HeartbeatInput, coord: Coordinator) -> HeartbeatResult:
    return await coord.heartbeat(args.status, args.note)


def tool(settings: Settings) -> EngineTool[HeartbeatInput]:
    """The heartbeat tool, its description stating this server's lease times."""
    return engine_tool(
        heartbeat,
        name="heartbeat",
        description=describe(settings),
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
