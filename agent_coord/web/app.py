"""The ASGI app: one page, its assets, a state document, a server-sent event stream, and the actions.

Every request passes ``Gate`` first (Host header, token or session, security headers); actions also
need ``--allow-actions`` and, from a browser session, the CSRF header and a matching Origin. Actions
call the same engine methods as the MCP tools and answer their error codes as JSON
(``{"code": "NOT_OWNER", "message": ...}``).
"""

from __future__ import annotations

import getpass
import html
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.driver import RESCUE_NAMESPACE, GitError
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import StoreBusyError
from agent_coord.engine.store.records import SlotState
from agent_coord.web.hub import StateHub
from agent_coord.web.security import COOKIE, CSRF_HEADER, Guard

ASSETS = {"app.js": "text/javascript", "app.css": "text/css", "favicon.svg": "image/svg+xml"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
STATUS_OF: dict[ErrorCode, int] = {ErrorCode.NOT_FOUND: 404, ErrorCode.INVALID_ARGUMENT: 400}


@dataclass
class WebConfig:
    token: str
    allow_actions: bool = False
    bind_host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    root_path: str = ""
    repo: str | None = None
    watch_interval_s: float | None = None
    guard: Guard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = Guard.for_bind(self.token, self.bind_host, self.allowed_hosts)


def operator_id() -> str:
    """Who the page acts as in the event log: the configured agent id, else `web-<user>`, an operator
    that owns nothing, so taking an agent's worktree needs force as it does from the CLI."""
    configured = Settings().agent_id
    if configured:
        return configured
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"web-{user}"


def _asset(name: str) -> bytes:
    return resources.files("agent_coord.web").joinpath("static").joinpath(name).read_bytes()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class Gate:
    """Host check, authentication and security headers, before any route runs (streams included)."""

    def __init__(self, app: ASGIApp, config: WebConfig) -> None:
        self.app = app
        self.config = config
        self.guard = config.guard

    def prefix(self, scope: Scope) -> str:
        """The path the browser sees this app under: `--root-path`, or what a reverse proxy says."""
        forwarded = _header(scope, b"x-forwarded-prefix")
        prefix = forwarded if forwarded is not None else self.config.root_path
        return "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = "/" + self.config.root_path.strip("/")
        if root != "/" and (scope["path"] == root or scope["path"].startswith(root + "/")):
            # A proxy that forwards the prefix instead of stripping it: serve the same app under it.
            scope = {**scope, "path": scope["path"][len(root) :] or "/"}

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        if not self.guard.host_ok(_header(scope, b"host")):
            await self._plain(send_secured, 421, "421: this server does not answer to that Host name\n")
            return
        auth = _header(scope, b"authorization") or ""
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&") if "=" in part)
        state = scope.setdefault("state", {})
        if self.guard.token_ok(bearer):
            state["auth"] = ("header", None)
        elif self.guard.token_ok(query.get("token")):
            if scope["method"] == "GET" and scope["path"] == "/":
                await self._log_in(scope, send_secured)
                return
            state["auth"] = ("header", None)
        elif (sid := self.guard.session_id(_cookie(scope, COOKIE))) is not None:
            state["auth"] = ("session", sid)
        else:
            await self._plain(
                send_secured, 401, "401: open the address `agent-coord web` printed; it carries the access token\n"
            )
            return
        state["prefix"] = self.prefix(scope)
        await self.app(scope, receive, send_secured)

    async def _log_in(self, scope: Scope, send: Send) -> None:
        """Trade the token in the address for a session cookie, and drop it from the address bar."""
        cookie = f"{COOKIE}={self.guard.new_session()}; Path={self.prefix(scope)}; HttpOnly; SameSite=Strict" + (
            "; Secure" if scope.get("scheme") == "https" else ""
        )
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [(b"location", b"./"), (b"set-cookie", cookie.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    @staticmethod
    async def _plain(send: Send, status: int, text: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": text.encode()})


def refusal(code: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, "error": f"{code}: {message}"}, status_code=status)


async def engine_call(call: Callable[[], Awaitable[Any]]) -> Response:
    """The tools' contract over HTTP: a result as JSON, or the refusal's code and message."""
    try:
        result = await call()
    except CoordError as exc:
        return refusal(exc.code.value, exc.message, STATUS_OF.get(exc.code, 409))
    except StoreBusyError as exc:
        locked = exc.refusal()
        return refusal(locked.code.value, locked.message, 503)
    return JSONResponse(result.model_dump(mode="json") if hasattr(result, "model_dump") else result)


def create_app(settings: Settings, config: WebConfig) -> ASGIApp:
    holder: dict[str, Any] = {}

    def hub() -> StateHub:
        return holder["hub"]  # type: ignore[no-any-return]

    def coord() -> Coordinator:
        return holder["coord"]  # type: ignore[no-any-return]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with Coordinator.open(settings, register=False, agent_id=operator_id()) as c:
            state_hub = StateHub(
                c,
                repo=config.repo,
                read_only=not config.allow_actions,
                watch_interval_s=config.watch_interval_s or settings.watch_interval_s,
            )
            holder.update(coord=c, hub=state_hub)
            async with anyio.create_task_group() as tg:
                tg.start_soon(state_hub.run)
                yield
                tg.cancel_scope.cancel()

    async def index(request: Request) -> Response:
        kind, sid = request.state.auth
        page = _asset("index.html").decode()
        csrf = config.guard.csrf_for(sid) if kind == "session" and sid else ""
        page = page.replace("{{csrf}}", html.escape(csrf)).replace(
            "{{actions}}", "on" if config.allow_actions else "off"
        )
        return Response(page, media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("404\n", status_code=404, media_type="text/plain")
        return Response(_asset(name), media_type=ASSETS[name])

    async def state(_: Request) -> Response:
        _version, payload = await hub().current()
        return Response(payload, media_type="application/json")

    async def events(_: Request) -> Response:
        # StreamingResponse ends the stream when the page goes away (it listens for the disconnect).
        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            async for doc in hub().documents():
                yield ": keepalive\n\n" if doc is None else f"event: state\ndata: {doc}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no", "cache-control": "no-store"}
        )

    def action_refused(request: Request) -> Response | None:
        if not config.allow_actions:
            return refusal("READ_ONLY", "this dashboard is read-only; start it with --allow-actions to act", 403)
        kind, sid = request.state.auth
        origin = request.headers.get("origin")
        origin_ok = config.guard.origin_ok(origin, request.headers.get("host"), request.headers.get("x-forwarded-host"))
        if kind == "session":
            if not config.guard.csrf_ok(sid, request.headers.get(CSRF_HEADER)) or not origin_ok:
                return refusal("CSRF", "missing or wrong CSRF token or Origin; reload the page", 403)
        elif origin is not None and not origin_ok:
            return refusal("CSRF", "a request from another origin", 403)
        return None

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "the body must be a JSON object") from exc
        if not isinstance(data, dict):
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "the body must be a JSON object")
        return data

    def flag(data: dict[str, Any], name: str) -> bool:
        value = data.get(name, False)
        if not isinstance(value, bool):
            raise CoordError(ErrorCode.INVALID_ARGUMENT, f"{name} must be true or false")
        return value

    def worktree_of(data: dict[str, Any]) -> str:
        wid = data.get("worktree_id")
        if not isinstance(wid, str) or not wid:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "worktree_id must be a worktree id such as wt-01")
        return wid

    async def release(request: Request) -> Response:
        if (refused := action_refused(request)) is not None:
            return refused

        async def go() -> Any:
            data = await body(request)
            force = flag(data, "force")
            # The page is a person's, as the CLI is: a confirmed force takes a slot from a live agent too.
            result = await coord().pool.release(worktree_id=worktree_of(data), force=force, over_live_agent=force)
            hub().poke()
            return result

        return await engine_call(go)

    async def release_preview(request: Request) -> Response:
        """What a forced release would do: the changes it would save, and the rescue ref they would go to."""
        if (refused := action_refused(request)) is not None:
            return refused

        async def go() -> dict[str, Any]:
            wid = worktree_of(await body(request))
            slot = next((s for s in await coord().store.slots() if s.id == wid), None)
            if slot is None:
                raise CoordError(ErrorCode.NOT_FOUND, f"there is no worktree {wid}; call status to see the pool")
            preview: dict[str, Any] = {
                "worktree_id": slot.id,
                "agent": slot.owner,
                "branch": slot.branch,
                "state": slot.state.value,
                "dirty": None,
                "files": [],
                "more_files": 0,
                "unsaved_commits": 0,
                "rescue_ref": None,
            }
            if slot.state != SlotState.BUSY or not await anyio.Path(slot.path).is_dir():
                return preview
            try:
                # Through the confinement guard, as every git command in a slot.
                confined = (await bounds_of(await coord().repos.by_id(slot.repo_id))).slot(slot.path)
                status = await coord().git.status(confined)
                preview.update(
                    dirty=status.dirty,
                    files=[c[3:] for c in status.changed][:20],
                    more_files=max(0, len(status.changed) - 20),
                    unsaved_commits=status.unsaved_commits,
                )
                if status.dirty:
                    # The ref's last part is the time of the release itself, so only its folder is known now.
                    preview["rescue_ref"] = f"{RESCUE_NAMESPACE}/{slot.branch or slot.id}/"
            except GitError as exc:
                raise CoordError(ErrorCode.GIT_FAILED, f"git failed while looking at {slot.id}: {exc.reason}") from exc
            return preview

        return await engine_call(go)

    async def validate(request: Request) -> Response:
        if (refused := action_refused(request)) is not None:
            return refused

        async def go() -> Any:
            data = await body(request)
            result = await coord().validate(repair=flag(data, "repair"), repo=config.repo)
            hub().poke()
            return result

        return await engine_call(go)

    routes = [
        Route("/", index),
        Route("/static/{name}", asset),
        Route("/api/state", state),
        Route("/events", events),
        Route("/api/release", release, methods=["POST"]),
        Route("/api/release-preview", release_preview, methods=["POST"]),
        Route("/api/validate", validate, methods=["POST"]),
    ]
    return Gate(Starlette(routes=routes, lifespan=lifespan), config)
