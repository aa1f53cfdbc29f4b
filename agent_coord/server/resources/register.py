"""Registers every resource. The SDK refuses a Context in a static resource's handler, so the
`EngineForResources` middleware hands each request's handlers the coordinator of the server's typed
lifespan context through a context variable, for the duration of that request only."""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ResourceNotFoundError

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.observe.activity import activity_lines
from agent_coord.pool_file.markdown import pool_markdown

POOL_URIS = (
    "coord://pool",
    "coord://pool.md",
    "coord://agents",
    "coord://metrics",
    "coord://activity",
    "coord://contention",
    "coord://conflicts",
)


_request_engine: ContextVar[Coordinator] = ContextVar("agent_coord_request_engine")


class EngineForResources:
    """Middleware: makes the lifespan's coordinator the current request's engine."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        token = _request_engine.set(ctx.lifespan_context)
        try:
            return await call_next(ctx)
        finally:
            _request_engine.reset(token)


def register(mcp: MCPServer[Coordinator]) -> None:
    @mcp.resource(
        "coord://pool",
        name="pool",
        mime_type="application/json",
        description="Every worktree of the pool with state, holder, branch, fencing token and lease.",
    )
    async def pool_json() -> str:
        status = await _request_engine.get().status(with_contention=False)
        return json.dumps(
            {
                "repo": status.repo,
                "pool": status.pool.model_dump(mode="json"),
                "worktrees": [w.model_dump(mode="json") for w in status.worktrees],
            },
            indent=2,
        )

    @mcp.resource(
        "coord://pool.md",
        name="pool.md",
        mime_type="text/markdown",
        description="The pool as a Markdown table: the human view.",
    )
    async def pool_md() -> str:
        return pool_markdown(await _request_engine.get().status(with_contention=False))

    @mcp.resource(
        "coord://agents",
        name="agents",
        mime_type="application/json",
        description="Agents with liveness (and why), host, pid, last heartbeat and lease.",
    )
    async def agents() -> str:
        status = await _request_engine.get().status(with_contention=False)
        return json.dumps([a.model_dump(mode="json") for a in status.agents], indent=2)

    @mcp.resource(
        "coord://metrics",
        name="metrics",
        mime_type="application/json",
        description="Health metrics over the window, each with its target and state.",
    )
    async def metrics() -> str:
        return (await _request_engine.get().metrics()).model_dump_json(indent=2)

    @mcp.resource(
        "coord://activity",
        name="activity",
        mime_type="text/plain",
        description="Recent events, one line each: time | agent | action | branch | outcome | Nms.",
    )
    async def activity() -> str:
        return "\n".join(await activity_lines(_request_engine.get().store)) + "\n"

    @mcp.resource(
        "coord://contention",
        name="contention",
        mime_type="application/json",
        description="Contention now: live agents, agent processes, ManicTime focus and presence, sources.",
    )
    async def contention() -> str:
        coord = _request_engine.get()
        snapshot = await coord.contention.snapshot(await coord.default_repo())
        return snapshot.model_dump_json(indent=2)

    @mcp.resource(
        "coord://conflicts",
        name="conflicts",
        mime_type="application/json",
        description="The conflict radar: every pair of live worktrees (or worktree and its base branch) that "
        "changed the same paths (overlap) or would conflict at merge now (conflict), with paths and line ranges.",
    )
    async def conflicts() -> str:
        return (await _request_engine.get().conflict_report()).model_dump_json(indent=2, by_alias=True)

    @mcp.resource(
        "coord://worktrees/{worktree_id}",
        name="worktree",
        mime_type="application/json",
        description="One worktree of the pool.",
    )
    async def worktree(worktree_id: str) -> str:
        slot = await _request_engine.get().store.slot(worktree_id)
        if slot is None:
            raise ResourceNotFoundError(f"NOT_FOUND: no worktree {worktree_id!r}")
        data = {k: (v.value if hasattr(v, "value") else v) for k, v in slot.__dict__.items()}
        return json.dumps(data, indent=2)
