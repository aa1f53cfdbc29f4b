"""Stop every process the demo started: the agents, then the servers they started, however the demo ends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import anyio
import psutil

from agent_coord.demo.agents import AgentProc
from agent_coord.platform.termination import end_process, end_tree


def _alive(pid: int, created: float) -> bool:
    # The create time guards against a recycled pid: never signal a process we did not start.
    try:
        return bool(abs(psutil.Process(pid).create_time() - created) < 0.05)
    except psutil.Error:
        return False


async def _exited(pids: Callable[[], list[int]], timeout_s: float) -> bool:
    with anyio.move_on_after(timeout_s):
        # Polling, not wait(): the servers are our grandchildren, with no handle to wait on.
        while pids():  # noqa: ASYNC110
            await anyio.sleep(0.05)
        return True
    return False


async def stop_agents(agents: list[AgentProc], grace_s: float = 6.0) -> None:
    """Close stdin (the agents release and exit), then SIGTERM, then SIGKILL; their servers too."""
    for agent in agents:
        if agent.process.stdin is not None:
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await agent.process.stdin.aclose()

    def running_agents() -> list[int]:
        return [a.pid for a in agents if a.process.returncode is None]

    def running_servers() -> list[int]:
        return [pid for a in agents for pid, created in a.server_pids if _alive(pid, created)]

    for hard in (None, False, True):
        if hard is not None:
            for pid in running_agents():
                end_tree(pid, hard=hard)  # the agent we started and what runs below it, nothing else
        if await _exited(running_agents, grace_s if hard is None else 2.0):
            break
    # Servers stop by themselves when their agent's pipe closes; make sure of it.
    for hard in (None, False, True):
        if hard is not None:
            for pid in running_servers():
                end_process(pid, hard=hard)
        if await _exited(running_servers, 4.0 if hard is None else 2.0):
            break
    for agent in agents:
        with contextlib.suppress(OSError, anyio.BrokenResourceError):
            await agent.process.aclose()
        agent.log.close()
