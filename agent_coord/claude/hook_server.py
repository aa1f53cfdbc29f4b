"""The server's side of hooks answered over a private socket (see agent_coord/claude/hook_socket.py).

Every MCP server listens while it runs; a request it should not answer (another user, another agent
process, another environment, directory or version of agent-coord) gets "not answered", and the
hook then works in-process, so the answer never depends on whether a server runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import sys
from typing import Any

import anyio
from anyio.abc import SocketAttribute, SocketStream

from agent_coord.claude import hook_run, hook_socket
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.liveness.judge import agent_process
from agent_coord.platform.process_identity import CLOCK_TICKS

logger = logging.getLogger("agent-coord")


async def serve_hooks(coord: Coordinator) -> None:
    """Answer the hooks of this server's agent process until cancelled (nothing where unsupported)."""
    me = coord.identity
    key = hook_socket.process_key(me.pid) if hook_socket.supported() and me.pid_start_s else None
    if key is None or abs(int(key[1].rsplit("-", 1)[1]) / CLOCK_TICKS - (me.pid_start_s or 0.0)) > 1.5 / CLOCK_TICKS:
        return  # no agent process to serve (orphaned, recorded as gone), or its pid is another's now
    directory = hook_socket.socket_dir(create=True)
    if directory is None:
        return  # the hooks work in-process, as they always can
    path = os.path.join(directory, hook_socket.socket_name(key[1]))
    _remove_stale(directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by an earlier server of the same agent process, which is gone or yields
    try:
        listener = await anyio.create_unix_listener(path, mode=0o600)
    except OSError as exc:
        logger.warning("hooks will work in-process: cannot listen on %s: %s", path, exc)
        return
    inode = os.stat(path).st_ino
    try:
        async with listener:
            await listener.serve(lambda stream: _answer_one(coord, stream, key[1]))
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # not a later server's socket under the same name
                os.unlink(path)


def _remove_stale(directory: str) -> None:
    """Remove the sockets of agent processes that are gone (a server killed leaves its socket)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if not (name.startswith("hooks-") and name.endswith(".sock")):
                continue
            pid, _, _ = name.removeprefix("hooks-").partition("-")
            found = hook_socket.process_key(int(pid)) if pid.isdigit() else None
            if found is None or hook_socket.socket_name(found[1]) != name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))


async def _answer_one(coord: Coordinator, stream: SocketStream, key: str) -> None:
    async with stream:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            try:
                request = json.loads(await receive_all(stream))
                taken = isinstance(request, dict) and await _takes(coord, stream, key, request)
            except Exception:  # the hook does the work itself
                logger.debug("hook request not answered", exc_info=True)
                taken = False
            if not taken:
                await stream.send(b"not answered\n")
                return
            await stream.send(hook_socket.ACCEPTED)
            hook, raw, claude_pid = request["hook"], request["stdin"], request.get("claude_pid")
            answer = await hook_run.answer(
                hook,
                raw.encode(),
                chdir=False,
                claude_pid=claude_pid if isinstance(claude_pid, str) else "",
                server=coord,
            )
            reply = {"stdout": answer.stdout, "stderr": answer.stderr, "code": answer.code}
            await stream.send(json.dumps(reply).encode())


async def receive_all(stream: SocketStream) -> bytes:
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(anyio.EndOfStream):
        while True:
            chunk = await stream.receive()
            size += len(chunk)
            if size > hook_socket.MAX_REQUEST_BYTES:
                raise ValueError("hook request too large")
            chunks.append(chunk)
    return b"".join(chunks)


async def _takes(coord: Coordinator, stream: SocketStream, key: str, request: dict[str, Any]) -> bool:
    """Would the hook that sent `request` answer exactly as this server will (module docstring)?"""
    peer = peer_like_me(stream, request)
    if peer is None or request.get("hook") not in hook_run.HOOKS:
        return False
    if not same_directory(hook_socket.working_directory(request["stdin"], request["cwd"]), os.getcwd()):
        return False
    wrappers = coord.settings.wrapper_processes
    # The hook would act for its own agent process: it must be ours.
    return await anyio.to_thread.run_sync(lambda: _agent_key(peer, wrappers)) == key


def peer_like_me(stream: SocketStream, request: dict[str, Any]) -> int | None:
    """The pid of the process that sent `request` (a payload and a directory as text) when it is this
    user's and runs this agent-coord with this deciding environment, which every answer here needs;
    else None."""
    if sys.platform == "win32":
        return None
    if not isinstance(request.get("stdin"), str) or not isinstance(request.get("cwd"), str):
        return None
    if request.get("env") != hook_socket.deciding_env(os.environ) or request.get("code") != hook_socket.code_identity():
        return None
    peer = peer_of(stream)
    return peer[0] if peer is not None and peer[1] == os.geteuid() else None


def same_directory(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def peer_of(stream: SocketStream) -> tuple[int, int] | None:
    """(pid, uid) of the connected process, from the kernel (SO_PEERCRED, Linux only)."""
    if sys.platform != "linux":
        return None
    sock: socket.socket = stream.extra(SocketAttribute.raw_socket)  # noqa: S610 - anyio's typed attributes, not Django
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _agent_key(pid: int, wrappers: tuple[str, ...]) -> str | None:
    """The socket key of the agent process a hook process `pid` would act for (Identity.detect)."""
    import psutil

    try:
        agent = agent_process(wrappers, start_pid=pid)
    except psutil.Error:
        return None
    found = hook_socket.process_key(agent.pid)
    return found[1] if found is not None else None
