"""What the dashboard shows, read from the store in one go, and which agents have died since."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from agent_coord.engine.models import AgentView, StatusResult
from agent_coord.engine.observe.metrics import MetricsReport
from agent_coord.engine.radar.models import ConflictReport
from agent_coord.engine.store.records import Action, Event

# How many events a snapshot reads: enough to fill a tall terminal after noise is filtered out.
EVENT_FETCH = 200
# Bookkeeping events that would crowd out the interesting ones (one per validation interval).
NOISE: frozenset[tuple[str, str]] = frozenset({(Action.VALIDATE.value, "started")})


@dataclass(frozen=True)
class Snapshot:
    status: StatusResult
    metrics: MetricsReport | None
    events: list[Event]  # oldest first, noise removed
    taken_at: float
    conflicts: ConflictReport | None = None  # what the conflict radar last stored, for the repository shown


async def take_snapshot(coord: Coordinator, repo: str | None) -> Snapshot:
    status = await coord.status(repo, with_contention=True)
    events = [e for e in await coord.store.events(limit=EVENT_FETCH, newest=True) if (e.action, e.outcome) not in NOISE]
    try:
        metrics = MetricsReport.model_validate(status.metrics) if status.metrics else None
    except ValueError:  # an older or newer server's shape: show the rest rather than nothing
        metrics = None
    try:
        # The repository status resolved (its path), so both name the same one; None: every repository.
        conflicts: ConflictReport | None = await coord.conflict_report(status.repo)
    except CoordError:  # the repository went away between the two reads: the next change reads again
        conflicts = None
    return Snapshot(status=status, metrics=metrics, events=events, taken_at=time.time(), conflicts=conflicts)


def gone_agents(agents: Sequence[AgentView], host: str) -> set[str]:
    """Agents the store still believes alive whose process on this host has exited.

    A crash commits nothing, so without this the screen would say "alive" until the next validation.
    ``pid_exists`` is one ``kill(pid, 0)``: cheap enough for every clock tick, and it reads no store.
    """
    return {a.agent_id for a in agents if a.alive and a.host == host and not psutil.pid_exists(a.pid)}
