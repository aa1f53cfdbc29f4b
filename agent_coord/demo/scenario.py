"""The script the driver follows once the agents run: wait for them, kill carol, see her work rescued, check.

The agents do their own tasks (see ``plans``); the driver's part is the crash and the checks that
every promised step happened. What it finds goes into a ``DemoResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from agent_coord.demo.agents import AgentProc
from agent_coord.demo.plans import CRASHER, Pace
from agent_coord.demo.progress import EventTap, Narrator
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import ErrorCode
from agent_coord.engine.observe.metrics import MetricsReport
from agent_coord.engine.store.records import Action, Event
from agent_coord.platform.termination import end_process

# For every agent to start its server, and for the crasher to leave dirty work: minutes on a loaded machine
START_TIMEOUT_S = 120.0


@dataclass
class DemoResult:
    finished: bool = False  # the scenario ran to its end
    interrupted: str | None = None
    crash_reclaim: Event | None = None
    reclaimed_by: str = "servers"  # or "driver" when the fallback validation had to run
    problems: list[str] = field(default_factory=list)
    # Read on the way out, whatever happened, for the summary.
    report: MetricsReport | None = None
    counts: dict[str, int] = field(default_factory=dict)


async def scenario(
    coord: Coordinator,
    agents: list[AgentProc],
    tap: EventTap,
    narrator: Narrator,
    pace: Pace,
    result: DemoResult,
) -> None:
    crasher = next(a for a in agents if a.name == CRASHER)
    await wait_until_started(agents, narrator)
    await crash_and_reclaim(coord, crasher, tap, narrator, pace, result)
    with anyio.move_on_after(pace.deadline_s):
        for agent in agents:
            if agent is not crasher:
                await agent.done.wait()
    check_the_story(agents, tap, result)
    await narrator.say("all agents are done" + (" (with problems)" if result.problems else ""))
    await anyio.sleep(pace.linger_s)
    result.finished = True


async def wait_until_started(agents: list[AgentProc], narrator: Narrator) -> None:
    with anyio.move_on_after(START_TIMEOUT_S):
        for agent in agents:
            await agent.ready.wait()
    await narrator.say(f"{len(agents)} agents started, each with its own agent-coord server")


async def crash_and_reclaim(
    coord: Coordinator,
    crasher: AgentProc,
    tap: EventTap,
    narrator: Narrator,
    pace: Pace,
    result: DemoResult,
) -> None:
    """SIGKILL the crasher once it holds uncommitted work, then wait for a server to reclaim its worktree."""
    with anyio.move_on_after(START_TIMEOUT_S):
        await crasher.dirty.wait()
    if not crasher.dirty.is_set():
        result.problems.append(f"{CRASHER} never reached its crash point: {crasher.errors or 'no error reported'}")
        return
    await anyio.sleep(pace.kill_after_s)
    await narrator.say(f"crash: SIGKILL {CRASHER} (pid {crasher.pid}) while it holds {crasher.dirty_worktree}")
    crasher.killed = True
    if crasher.process.returncode is not None:
        result.problems.append(f"{CRASHER} had already exited")
    end_process(crasher.pid, hard=True)
    wid = crasher.dirty_worktree
    event = await wait_for_reclaim(coord, wid, tap, narrator, pace, result)
    if event is None:
        result.problems.append(f"{wid} of the killed agent was not reclaimed")
        return
    # The same validation pass records the death right after the reclaim; let it land.
    await tap.wait_for(lambda e: e.action == Action.AGENT_DEAD and e.agent_id == CRASHER, 5.0)
    result.crash_reclaim = event
    ref = event.detail.get("rescue_ref")
    await narrator.say(
        f"{event.agent_id}'s validation found {CRASHER} dead and reclaimed {wid}: {event.outcome}"
        + (f", work saved to {ref}" if ref else "")
    )


async def wait_for_reclaim(
    coord: Coordinator,
    wid: str | None,
    tap: EventTap,
    narrator: Narrator,
    pace: Pace,
    result: DemoResult,
) -> Event | None:
    """The reclaim of the crasher's worktree; if no server gets to it in time, the driver validates itself."""

    def reclaimed(e: Event) -> bool:
        return e.action == Action.RECLAIM and e.worktree_id == wid and e.detail.get("previous_owner") == CRASHER

    event = await tap.wait_for(reclaimed, pace.reclaim_timeout_s)
    if event is None:
        await narrator.say("no server reclaimed it in time: the demo runs validation itself")
        result.reclaimed_by = "driver"
        await coord.validate(repair=True)
        await tap.drain()
        event = await tap.wait_for(reclaimed, 2.0)
    return event


def check_the_story(agents: list[AgentProc], tap: EventTap, result: DemoResult) -> None:
    """Every agent's own errors, and the collision the demo promises."""
    for agent in agents:
        result.problems += [f"{agent.name}: {e}" for e in agent.errors]
    if not any(e.action == Action.ALLOCATE and e.outcome == ErrorCode.BRANCH_CONFLICT for e in tap.events):
        result.problems.append("no agent collided on a branch")
