"""A simulated agent for `agent-coord demo`: a real MCP client of a real `python -m server`.

Run by the demo driver as ``python -m agent_coord.demo.simulated_agent '<plan JSON>'``. It starts its own stdio
server through the official MCP client (so the server's parent, the process whose liveness the
coordinator tracks, is this program, as Claude Code would be), then for each task of its plan:
allocates a worktree, "works" (writes files and commits them in the worktree, with heartbeats),
and releases it.

Protocol with the driver: one JSON object per line on stdout (``{"event": ..., ...}``); end of
stdin means "stop now": whatever is still held is released (forced, so any work goes to a rescue
ref) and the program exits. The driver may instead SIGKILL it: that is the crash of the demo.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from pydantic import BaseModel, Field

from agent_coord.engine.observe.activity import ActivityFormatError, parse_activity_line

CONFLICT = "BRANCH_CONFLICT"
RETRYABLE = ("POOL_EXHAUSTED", "ALLOCATION_TIMEOUT")
ALLOCATE_TRIES = 6
WAIT_HELD_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 4.0


class Task(BaseModel):
    branch: str
    description: str
    files: int = Field(default=2, ge=1, le=20)
    step_s: float = Field(default=1.0, ge=0)
    # Collide on purpose: wait until another agent holds `branch`, then ask for it anyway.
    wait_until_held: bool = False
    # Before releasing, wait up to this long until someone has collided on our branch, so that the
    # collision the demo promises happens however the processes are scheduled.
    hold_until_conflict_s: float = 0.0
    # Leave uncommitted work behind and wait to be killed.
    crash: bool = False


class Plan(BaseModel):
    agent_id: str
    start_delay_s: float = 0.0
    tasks: list[Task]


class AgentFailure(Exception):
    pass


async def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "t": round(time.time(), 3), **fields}, default=str) + "\n"

    def write() -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    # A pipe write can block while the driver is busy: not on the event loop.
    await anyio.to_thread.run_sync(write)


def _error_text(result: Any) -> str:
    content = getattr(result, "content", None) or []
    return str(getattr(content[0], "text", "")) if content else ""


class DemoAgent:
    def __init__(self, client: Client, plan: Plan) -> None:
        self.client = client
        self.plan = plan
        self.me = plan.agent_id
        self.held: str | None = None  # the worktree id we hold right now

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.client.call_tool(tool, arguments)
        if result.is_error:
            raise AgentFailure(_error_text(result))
        data = result.structured_content
        return data if isinstance(data, dict) else {}

    async def run(self) -> None:
        await anyio.sleep(self.plan.start_delay_s)
        for task in self.plan.tasks:
            await self.task(task)
        await self.call("heartbeat", {"status": "idle", "note": "all tasks done"})
        await emit("done")

    async def task(self, task: Task) -> None:
        branch = task.branch
        if task.wait_until_held:
            await self.wait_until_held(branch)
        alloc = await self.allocate(branch, task.description)
        if alloc is None:
            alternative = f"{branch}-{self.me}"
            await emit("conflict", branch=branch, alternative=alternative)
            alloc = await self.allocate(alternative, task.description)
            if alloc is None:
                raise AgentFailure(f"{alternative} is taken as well")
            branch = alternative
        self.held = str(alloc["worktree_id"])
        path = Path(str(alloc["path"]))
        await emit(
            "allocated",
            branch=branch,
            worktree_id=self.held,
            path=str(path),
            strategy=alloc.get("strategy"),
            reused=alloc.get("reused"),
        )
        for step in range(1, task.files + 1):
            name = f"{branch.replace('/', '-')}-{step}.md"
            note = path / "notes" / name
            await anyio.Path(note.parent).mkdir(parents=True, exist_ok=True)
            await anyio.Path(note).write_text(f"# {task.description}\n\nstep {step} by {self.me}\n")
            if task.crash and step == task.files:
                break  # the last step is never committed: that is the work the reclaim must save
            await self.git(path, "add", "-A")
            await self.git(path, "commit", "-q", "-m", f"{task.description} ({step}/{task.files})")
            await self.call("heartbeat", {"status": "active", "note": f"{task.description}: {step}/{task.files}"})
            await emit("committed", branch=branch, worktree_id=self.held, step=step)
            await anyio.sleep(task.step_s)
        if task.crash:
            readme = anyio.Path(path / "README.md")
            if await readme.exists():
                await readme.write_text(await readme.read_text() + f"\nhalf-written change by {self.me}\n")
            await emit("dirty", branch=branch, worktree_id=self.held, path=str(path))
            await anyio.sleep_forever()  # until the driver kills us
        if task.hold_until_conflict_s:
            await self.wait_for_conflict(branch, task.hold_until_conflict_s)
        released = await self.call("release_worktree", {"worktree_id": self.held})
        await emit("released", branch=branch, worktree_id=self.held, state=released.get("state"))
        self.held = None

    async def allocate(self, branch: str, description: str) -> dict[str, Any] | None:
        """The allocation, or None on BRANCH_CONFLICT; transient refusals are retried with backoff."""
        for attempt in range(ALLOCATE_TRIES):
            result = await self.client.call_tool("allocate_worktree", {"branch": branch, "task": description})
            if not result.is_error:
                data = result.structured_content
                return data if isinstance(data, dict) else {}
            text = _error_text(result)
            code = text.split(":", 1)[0]
            if code == CONFLICT:
                return None
            if code not in RETRYABLE:
                raise AgentFailure(text)
            await emit("retry", branch=branch, code=code, attempt=attempt + 1)
            await anyio.sleep(0.2 * 2**attempt)
        raise AgentFailure(f"could not allocate {branch} after {ALLOCATE_TRIES} attempts")

    async def wait_until_held(self, branch: str) -> None:
        with anyio.move_on_after(WAIT_HELD_TIMEOUT_S):
            while True:
                status = await self.call("status", {})
                if any(w.get("branch") == branch and w.get("state") == "BUSY" for w in status.get("worktrees", [])):
                    return
                await anyio.sleep(0.1)
        await emit("warning", message=f"nobody held {branch} within {WAIT_HELD_TIMEOUT_S:g}s")

    async def wait_for_conflict(self, branch: str, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            while True:
                resource = await self.client.read_resource("coord://activity")
                for content in resource.contents:
                    for line in str(getattr(content, "text", "")).splitlines():
                        try:
                            parsed = parse_activity_line(line)
                        except ActivityFormatError:
                            continue
                        if parsed.action == "allocate" and parsed.branch == branch and parsed.outcome == CONFLICT:
                            return
                await anyio.sleep(0.2)

    async def git(self, cwd: Path, *args: str) -> None:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": self.me,
            "GIT_AUTHOR_EMAIL": f"{self.me}@demo.invalid",
            "GIT_COMMITTER_NAME": self.me,
            "GIT_COMMITTER_EMAIL": f"{self.me}@demo.invalid",
        }
        result = await anyio.run_process(["git", "-C", str(cwd), *args], check=False, env=env)
        if result.returncode != 0:
            raise AgentFailure(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace').strip()}")

    async def stop(self) -> None:
        """Leave nothing held: a forced release saves any work to a rescue ref first."""
        if self.held is None:
            return
        with anyio.move_on_after(STOP_TIMEOUT_S):
            await self.client.call_tool("release_worktree", {"worktree_id": self.held, "force": True})
            await emit("released", worktree_id=self.held, forced=True)
            self.held = None


async def _stdin_closed() -> None:
    def read_to_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass

    await anyio.to_thread.run_sync(read_to_eof, abandon_on_cancel=True)


async def main(plan: Plan) -> int:
    params = StdioServerParameters(command=sys.executable, args=["-m", "agent_coord.server"], env=dict(os.environ))
    failed = False
    async with Client(params, mode="legacy", cache=None) as client:
        await emit("ready", pid=os.getpid())
        agent = DemoAgent(client, plan)
        async with anyio.create_task_group() as tg:

            async def stop_on_eof() -> None:
                await _stdin_closed()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_eof)
            try:
                await agent.run()
                await anyio.sleep_forever()  # keep the server (and its validator) running until told to stop
            except AgentFailure as exc:
                failed = True
                await emit("error", message=str(exc))
                tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await agent.stop()
    return 1 if failed else 0


def run() -> None:
    if len(sys.argv) != 2:
        sys.stderr.write(
            "usage: python -m agent_coord.demo.simulated_agent '<plan JSON>' (started by `agent-coord demo`)\n"
        )
        raise SystemExit(2)
    plan = Plan.model_validate_json(sys.argv[1])
    try:
        raise SystemExit(anyio.run(main, plan))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    run()
