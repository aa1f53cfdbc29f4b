"""A real "agent process" for liveness tests, and the test-side handle that drives it.

Run as a program (`python tests/agent_proc.py '<json steps>'`), it does what Claude Code does: it
starts `python -m server` as its own stdio child through the official MCP client, so the server's
parent (the process agent-coord judges alive or dead) is this program. It performs the scripted
steps, prints one JSON line per step, then `{"ready": ...}`, then keeps reading further steps (one
JSON object per line) from stdin, and after stdin ends it sleeps until it is killed. Tests kill it
with SIGKILL to play a crashed agent.

Steps:
  {"op": "call", "tool": "<name>", "args": {...}, "save": "<key>"}   call a tool; keep its result
  {"op": "write", "in": "<key>", "path": "rel/path", "b64": "<base64>"}  write bytes in a worktree
  {"op": "sleep", "s": 0.5}

It exits on its own if its parent goes away or after AGENT_PROC_MAX_S (default 120 s), so a crashed
test run leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil

MAX_LIFETIME_ENV = "AGENT_PROC_MAX_S"
SCRIPT = Path(__file__).resolve()


# ---- the program ------------------------------------------------------------------------------


# A wait costs only as long as its condition takes; its bound matters only when the condition never
# comes true. On a loaded CI machine a process's start alone can take tens of seconds, so no bound is
# shorter than this: a test fails for what did not happen, never for how busy the machine was.
MIN_WAIT_S = 60.0


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


async def _step(client: Any, step: dict[str, Any], saved: dict[str, dict[str, Any]]) -> dict[str, Any]:
    op = step.get("op")
    if op == "call":
        result = await client.call_tool(step["tool"], step.get("args") or {})
        if result.is_error:
            return {"op": op, "tool": step["tool"], "ok": False, "error": result.content[0].text}
        data = result.structured_content or {}
        if step.get("save"):
            saved[step["save"]] = data
        return {"op": op, "tool": step["tool"], "ok": True, "result": data}
    if op == "write":
        target = Path(saved[step["in"]]["path"]) / step["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(step["b64"]))
        return {"op": op, "ok": True, "path": str(target)}
    if op == "sleep":
        await anyio.sleep(float(step["s"]))
        return {"op": op, "ok": True}
    return {"op": op, "ok": False, "error": f"unknown op {op!r}"}


async def _watch_parent(parent: int, deadline: float) -> None:
    # Orphaned (the test died) or overdue: leave, so no agent outlives its test run.
    while os.getppid() == parent and time.monotonic() < deadline:
        await anyio.sleep(0.5)
    os._exit(0)


async def _session(steps: list[dict[str, Any]]) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_coord.server"], env=dict(os.environ))
    saved: dict[str, dict[str, Any]] = {}
    async with Client(params, mode="legacy") as client:
        for step in steps:
            try:
                _emit(await _step(client, step, saved))
            except Exception as exc:  # a killed server, say: report it and carry on like an agent would
                _emit({"op": step.get("op"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        children = [p.pid for p in server_children(psutil.Process())]
        _emit({"ready": True, "pid": os.getpid(), "server_pids": children})
        stdin = anyio.wrap_file(sys.stdin)
        while line := await stdin.readline():
            if line.strip():
                try:
                    _emit(await _step(client, json.loads(line), saved))
                except Exception as exc:
                    _emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        await anyio.sleep_forever()


async def _main(steps: list[dict[str, Any]]) -> None:
    deadline = time.monotonic() + float(os.environ.get(MAX_LIFETIME_ENV, "120"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_parent, os.getppid(), deadline)
        try:
            await _session(steps)
        except Exception as exc:
            # The server died under the session (a test killed it): an agent lives on without it.
            _emit({"ok": False, "error": f"server lost: {type(exc).__name__}: {exc}"})
        await anyio.sleep_forever()


# ---- the test-side handle ---------------------------------------------------------------------


class AgentProc:
    """A running agent process: send steps, read its JSON lines, kill it."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        self._buffer = b""
        self.ready: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, timeout: float = MIN_WAIT_S) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with anyio.fail_after(timeout):
            while b"\n" not in self._buffer:
                chunk = await self.proc.stdout.receive()
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        record: dict[str, Any] = json.loads(raw)
        return record

    async def until_ready(self, timeout: float = MIN_WAIT_S) -> list[dict[str, Any]]:
        """The results of the scripted steps, once all have run."""
        results: list[dict[str, Any]] = []
        with anyio.fail_after(timeout):
            while True:
                record = await self.line(timeout)
                if record.get("ready"):
                    self.ready = record
                    return results
                results.append(record)

    async def send(self, step: dict[str, Any], timeout: float = MIN_WAIT_S) -> dict[str, Any]:
        assert self.proc.stdin is not None
        await self.proc.stdin.send((json.dumps(step) + "\n").encode())
        return await self.line(timeout)

    def servers(self) -> list[psutil.Process]:
        """The agent's server processes and everything under them (post-create commands, say)."""
        try:
            found = server_children(psutil.Process(self.pid))
        except psutil.NoSuchProcess:
            return []
        below: list[psutil.Process] = []
        for server in found:
            with contextlib.suppress(psutil.NoSuchProcess):
                below += server.children(recursive=True)
        return found + below

    async def kill(self) -> None:
        """SIGKILL, then reap: an unreaped agent would linger as a zombie."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


def write_step(key: str, path: str, data: bytes) -> dict[str, Any]:
    return {"op": "write", "in": key, "path": path, "b64": base64.b64encode(data).decode()}


def call_step(tool: str, args: dict[str, Any], save: str | None = None) -> dict[str, Any]:
    return {"op": "call", "tool": tool, "args": args, **({"save": save} if save else {})}


def proc_env(env: dict[str, str], **extra: str) -> dict[str, str]:
    from tests.paths import HOOK_HOST_OFF  # test-side only: this file also runs as a program

    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    full.update(env)
    full.update(extra)
    return full


@asynccontextmanager
async def agent_process(
    env: dict[str, str], steps: list[dict[str, Any]], *, stderr: Path | None = None, **extra: str
) -> AsyncIterator[AgentProc]:
    """Start an agent process; on exit kill it and any server it left (the pids are ours)."""
    with open(stderr or os.devnull, "ab") as err:
        proc = await anyio.open_process(
            [sys.executable, str(SCRIPT), json.dumps(steps)],
            env=proc_env(env, **extra),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    handle = AgentProc(proc)
    try:
        yield handle
    finally:
        servers = handle.servers()  # taken before the kill: psutil objects refuse a reused pid
        with anyio.CancelScope(shield=True):
            await handle.kill()
            await reap(servers)


async def reap(procs: list[psutil.Process], grace_s: float = 3.0) -> None:
    """Let processes we started end by themselves (a server exits on EOF); SIGKILL stragglers."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        while time.monotonic() < deadline:
            try:
                if p.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            await anyio.sleep(0.05)
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()  # psutil checks the create time: never a stranger that inherited the pid


# ---- a bare server process (no MCP session: its lifespan runs from start-up) ----------------------


def start_server(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    """`python -m server` with a pipe for stdin: closing it is the EOF an agent's exit gives."""
    return subprocess.Popen(
        [sys.executable, "-m", "agent_coord.server"],
        env=proc_env(env, **extra),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def exited(proc: psutil.Process) -> bool:
    """Has `proc` exited? A zombie has; and a process can vanish between any two looks at it."""
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def server_children(parent: psutil.Process) -> list[psutil.Process]:
    """`parent`'s children running an agent-coord server (a child that exits meanwhile is left out)."""
    found = []
    for child in parent.children():
        with contextlib.suppress(psutil.Error):
            if "server" in " ".join(child.cmdline()):
                found.append(child)
    return found


def process_name(proc: psutil.Process) -> str | None:
    """Its name, or None when it exited between being listed and being looked at."""
    try:
        return proc.name()
    except psutil.Error:
        return None


async def stop_servers(procs: list[subprocess.Popen[bytes]]) -> None:
    """End servers a test started: EOF first, SIGKILL if one is still there after a grace period."""
    for p in procs:
        if p.stdin is not None and not p.stdin.closed:
            with contextlib.suppress(OSError):
                p.stdin.close()
    deadline = time.monotonic() + 5
    for p in procs:
        while p.poll() is None and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- reading the shared database from a test ----------------------------------------------------


def query(env: dict[str, str], sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read the deployment's database the way another process would (read-only, its own connection)."""
    conn = sqlite3.connect(f"file:{env['AGENT_COORD_DB']}?mode=ro", uri=True, timeout=5)
    try:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def events(env: dict[str, str], action: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT * FROM events" + (" WHERE action = ?" if action else "") + " ORDER BY id"
    rows = query(env, sql, (action,) if action else ())
    return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]


async def wait_for(check: Callable[[], Awaitable[bool] | bool], timeout: float, interval: float = 0.05) -> float:
    """Poll until `check()` is true; return how long it took. Fails the test after `timeout` (at least
    MIN_WAIT_S)."""
    timeout = max(timeout, MIN_WAIT_S)
    started = time.monotonic()
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await anyio.sleep(interval)


if __name__ == "__main__":
    anyio.run(_main, json.loads(sys.argv[1]) if len(sys.argv) > 1 else [])


def set_agent(env: dict[str, str], agent_id: str, **values: Any) -> None:
    """Edit an agent's row behind the coordinator's back (what a crash or pid reuse leaves).

    `pid_start_s` / `server_start_s` go to the `agent_starts` row, made to describe the agent row's
    process as it now stands. A create time changed without them leaves that row describing another
    process, so the start no longer counts and the create time given decides (liveness.process_state)."""
    starts = {k: values.pop(k) for k in ("pid_start_s", "server_start_s") if k in values}
    conn = sqlite3.connect(env["AGENT_COORD_DB"], timeout=5)
    try:
        if values:
            sets = ", ".join(f"{k} = ?" for k in values)
            conn.execute(f"UPDATE agents SET {sets} WHERE id = ?", (*values.values(), agent_id))
        for key, value in starts.items():
            pid, created = ("pid", "pid_create_time") if key == "pid_start_s" else ("server_pid", "server_create_time")
            conn.execute(
                f"UPDATE agent_starts SET {key} = ?, {pid} = (SELECT {pid} FROM agents WHERE id = ?),"
                f" {created} = (SELECT {created} FROM agents WHERE id = ?) WHERE agent_id = ?",
                (value, agent_id, agent_id, agent_id),
            )
        conn.commit()
    finally:
        conn.close()
