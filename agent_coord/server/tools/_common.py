"""What every tool shares: reaching the coordinator and turning refusals into ToolErrors."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from mcp.server.mcpserver.exceptions import ToolError

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store import StoreBusyError
from agent_coord.server.state import AppState

T = TypeVar("T")


async def run_tool(state: AppState, call: Awaitable[T]) -> T:
    """Await the engine call; refusals become `ToolError("CODE: what to do")` for the agent."""
    try:
        return await call
    except CoordError as exc:
        raise ToolError(str(exc)) from exc
    except StoreBusyError as exc:
        raise ToolError(str(CoordError(ErrorCode.ALLOCATION_TIMEOUT, "the coordination database stayed busy"))) from exc
