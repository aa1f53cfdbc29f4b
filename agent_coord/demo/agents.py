"""The simulated agents as processes: start one (``python -m agent_coord.demo.simulated_agent``), follow its reports."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import IO, Any

import anyio
import psutil
from anyio.abc import Process
from anyio.streams.text import TextReceiveStream

from agent_coord.demo.progress import Narrator
from agent_coord.demo.simulated_agent import Plan
from agent_coord.demo.workspace import DemoPaths
from agent_coord.platform.termination import detached_group


@dataclass
class AgentProc:
    plan: Plan
    process: Process
    log: IO[bytes]
    server_pids: list[tuple[int, float]] = field(default_factory=list)  # (pid, create time)
    ready: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)  # its tasks finished (or it failed)
    dirty: anyio.Event = field(default_factory=anyio.Event)
    dirty_worktree: str | None = None
    errors: list[str] = field(default_factory=list)
    killed: bool = False

    @property
    def name(self) -> str:
        return self.plan.agent_id

    @property
    def pid(self) -> int:
        return self.process.pid


async def start_agent(plan: Plan, env: dict[str, str], paths: DemoPaths) -> AgentProc:
    log = await anyio.to_thread.run_sync(lambda: (paths.logs / f"{plan.agent_id}.log").open("ab"))
    process = await anyio.open_process(
        [sys.executable, "-m", "agent_coord.demo.simulated_agent", plan.model_dump_json()],
        env={**env, "AGENT_COORD_AGENT_ID": plan.agent_id},
        cwd=str(paths.root),  # not the repository: `python -m` puts the cwd first on sys.path
        stderr=log,
        # Apart from ours: Ctrl-C reaches only the driver, which then stops agents in order.
        **detached_group(),
    )
    return AgentProc(plan=plan, process=process, log=log)


async def read_agent(agent: AgentProc, narrator: Narrator) -> None:
    """Follow one agent's JSON lines until it exits."""
    assert agent.process.stdout is not None
    buffer = ""
    try:
        async for chunk in TextReceiveStream(agent.process.stdout):
            *lines, buffer = (buffer + chunk).split("\n")
            for line in lines:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                await on_agent_message(agent, msg, narrator)
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass
    finally:
        agent.done.set()
        agent.ready.set()


async def on_agent_message(agent: AgentProc, msg: dict[str, Any], narrator: Narrator) -> None:
    kind = msg.get("event")
    if kind == "ready":
        try:
            me = psutil.Process(agent.pid)
            agent.server_pids = [(c.pid, c.create_time()) for c in me.children(recursive=True)]
        except psutil.Error:
            pass
        agent.ready.set()
    elif kind == "allocated":
        await narrator.say(f"{agent.name} got {msg.get('worktree_id')} on {msg.get('branch')}")
    elif kind == "conflict":
        await narrator.say(
            f"{agent.name} collided on {msg.get('branch')} (BRANCH_CONFLICT) and takes {msg.get('alternative')}"
        )
    elif kind == "dirty":
        agent.dirty_worktree = str(msg.get("worktree_id"))
        await narrator.say(f"{agent.name} has uncommitted work in {agent.dirty_worktree} ({msg.get('branch')})")
        agent.dirty.set()
    elif kind == "done":
        agent.done.set()
    elif kind == "error":
        agent.errors.append(str(msg.get("message")))
        await narrator.say(f"{agent.name} failed: {msg.get('message')}")
        agent.done.set()
