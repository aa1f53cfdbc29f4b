"""Builds the MCP server: lifespan (coordinator + background work), tools, resources, subscriptions."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server import MCPServer
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated
from mcp_types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from agent_coord import __version__
from agent_coord.config import Settings, SettingsError, load_settings
from agent_coord.engine.coordinator import Coordinator, id_taken
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.liveness.judge import Identity
from agent_coord.engine.observe.activity import ActivityMirror, format_activity_line
from agent_coord.engine.observe.watch import ChangeWatcher
from agent_coord.engine.store import Store, StoreBusyError
from agent_coord.platform.signals import next_stop_signal
from agent_coord.server.refusal import refuse_on_stdio
from agent_coord.server.resources import register as resources
from agent_coord.server.tools import allocate_worktree, heartbeat, release_worktree, status, validate

logger = logging.getLogger("agent-coord")
EXIT_BAD_SETTINGS = 2  # the command line's usage error (README, "Command line")

INSTRUCTIONS = (
    "agent-coord hands each agent its own git worktree from a warm pool so parallel agents never share a "
    "branch or a directory. Call allocate_worktree(branch) before editing, work only in the returned path, "
    "commit, then release_worktree. Errors start with a stable code and say what to do next."
)


class Subscriptions:
    """Both notification paths of the SDK: `subscriptions/listen` streams (the bus) and the legacy
    per-session `resources/subscribe` (we keep the sessions and call `send_resource_updated`)."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        self.legacy: dict[ServerSession, set[str]] = {}

    async def subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        self.legacy.setdefault(ctx.session, set()).add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        self.legacy.get(ctx.session, set()).discard(str(params.uri))
        return EmptyResult()

    async def announce(self, uris: tuple[str, ...]) -> None:
        for uri in uris:
            await self.bus.publish(ResourceUpdated(uri=uri))
        for session, wanted in list(self.legacy.items()):
            for uri in wanted & set(uris):
                try:
                    await session.send_resource_updated(uri)
                except Exception:
                    self.legacy.pop(session, None)
                    break


async def _watch(coord: Coordinator, settings: Settings, subs: Subscriptions) -> None:
    """On every commit by any process: announce the pool resources, and mirror new activity lines."""
    mirror = ActivityMirror(settings.activity_file) if settings.activity_file else None
    watcher = ChangeWatcher(coord.store.path, settings.watch_interval_s)
    try:
        async for _ in watcher.changes():
            await subs.announce(resources.POOL_URIS)
            if mirror is not None:
                # A range claimed is this server's alone to write: cancelled between the claim and the
                # append (a shutdown), its lines would be lost to every server. The store away
                # (STORE_UNAVAILABLE) stops nothing: the next change mirrors these too.
                with anyio.CancelScope(shield=True), contextlib.suppress(CoordError):
                    await _mirror(coord, mirror)
    finally:
        if mirror is not None:
            # What this server committed while shutting down (its last releases) still gets mirrored.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await _mirror(coord, mirror)


async def _mirror(coord: Coordinator, mirror: ActivityMirror) -> None:
    """Append the events no process has mirrored yet. A cursor in the store, moved by CAS, makes each
    event land in the file once, whichever of the N servers sees it first."""
    newest = await coord.store.events(limit=1, newest=True)
    if not newest:
        return
    claimed = await coord.store.claim_events("activity-mirror", newest[-1].id)
    if claimed is None:
        return
    after, upto = claimed
    events = [e for e in await coord.store.events(after_id=after) if e.id <= upto]
    lines = [format_activity_line(e) for e in events]
    if lines:
        await anyio.to_thread.run_sync(mirror.append, lines)


def tools(settings: Settings) -> list[Tool]:
    """The five tools; heartbeat's description states this server's lease times."""
    return [allocate_worktree.TOOL, release_worktree.TOOL, heartbeat.tool(settings), status.TOOL, validate.TOOL]


def build_server(
    settings: Settings | None = None,
    *,
    on_stopped: Callable[[], None] | None = None,
    background: Sequence[Callable[[Coordinator], Coroutine[Any, Any, None]]] = (),
) -> MCPServer[Coordinator]:
    """The server; its typed lifespan context is the running coordinator, which every handler receives."""
    settings = settings or Settings()
    subs = Subscriptions()

    @asynccontextmanager
    async def lifespan(_: MCPServer[Coordinator]) -> AsyncIterator[Coordinator]:
        try:
            async with Coordinator.open(settings, register=True) as coord, anyio.create_task_group() as tg:
                tg.start_soon(coord.run_heartbeats)
                tg.start_soon(coord.run_validator)
                tg.start_soon(coord.run_radar)
                tg.start_soon(coord.run_alerts)
                tg.start_soon(_watch, coord, settings, subs)
                for task in background:  # what the entry point adds (`agent-coord serve`: the hooks' socket)
                    tg.start_soon(task, coord)
                try:
                    yield coord
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if on_stopped is not None:
                on_stopped()

    mcp: MCPServer[Coordinator] = MCPServer(
        "agent-coord",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        tools=tools(settings),
        subscriptions=subs.bus,
        middleware=[resources.EngineForResources()],
    )
    resources.register(mcp)
    # The SDK has no decorator for resources/subscribe yet: register on the low-level server.
    lowlevel = mcp._lowlevel_server
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subs.subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, subs.unsubscribe)
    return mcp


def run_stdio(background: Sequence[Callable[[Coordinator], Coroutine[Any, Any, None]]] = ()) -> int:
    """`agent-coord serve` and `python -m agent_coord.server`: serve, or answer the client's first
    request with why the server cannot start (bad settings: exit 2; an unusable database: exit 1)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        return refuse_on_stdio(exc.line(), exit_code=EXIT_BAD_SETTINGS)
    refusal = anyio.run(startup_refusal, settings)
    if refusal is not None:
        return refuse_on_stdio(refusal)
    anyio.run(serve_stdio, settings, background)
    return 0


async def startup_refusal(settings: Settings) -> str | None:
    """Why this server cannot start, as one coded line, or None. Checked before the MCP session
    starts, so the reason reaches the client as the answer to `initialize` (server/refusal.py)."""
    try:
        store = await Store.open(settings.db, wait_s=settings.store_wait_s)
    except CoordError as exc:
        return str(exc)
    except StoreBusyError as exc:
        return str(exc.refusal())
    try:
        taken = await id_taken(
            store, Identity.detect(settings.agent_id, settings.wrapper_processes, host=settings.host_id)
        )
        return str(CoordError(ErrorCode.INVALID_ARGUMENT, taken)) if taken is not None else None
    except StoreBusyError as exc:
        return str(exc.refusal())
    finally:
        await store.close()


async def serve_stdio(
    settings: Settings | None = None, background: Sequence[Callable[[Coordinator], Coroutine[Any, Any, None]]] = ()
) -> None:
    """Serve on stdio until stdin closes or SIGTERM/SIGINT arrives; either way the lifespan unwinds
    (the agent is recorded as disconnected) well within 2 s."""
    stopped = anyio.Event()
    server = build_server(settings, on_stopped=stopped.set, background=background)
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            if await next_stop_signal() is None:
                return
            tg.cancel_scope.cancel()
            # The lifespan unwinds (the agent is recorded disconnected), but the SDK's stdin
            # reader thread cannot be cancelled and would keep the process until stdin closes.
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.5):
                await stopped.wait()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

        tg.start_soon(stop_on_signal)
        try:
            await server.run_stdio_async()
        except* (BrokenPipeError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the agent went away mid-reply: the lifespan has unwound; no traceback for that
        tg.cancel_scope.cancel()
