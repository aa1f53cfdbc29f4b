"""Plain records read from and written to the store. Shared by every engine module."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

# Where an agent's id comes from: AGENT_COORD_AGENT_ID or a caller's choice ("explicit"), a Claude Code
# session's hooks ("session", `claude-<session>`), or a hash of the agent process ("process").
Origin = Literal["explicit", "session", "process"]


class SlotState(StrEnum):
    FREE = "FREE"  # on disk, detached HEAD, clean: can be handed out
    ALLOCATING = "ALLOCATING"  # phase 1 done, git running
    BUSY = "BUSY"  # held by an agent
    RELEASING = "RELEASING"  # owner is saving/cleaning it before FREE
    QUARANTINED = "QUARANTINED"  # holds work we could not save; never handed out


HELD_STATES = (SlotState.ALLOCATING, SlotState.BUSY, SlotState.RELEASING)


def of_this_host(row_host: str | None, host: str, *, shared: bool) -> bool:
    """Is a repository or slot recorded under `row_host` this host's to touch? One written before
    schema 7 (no host yet) is, on a store of one host (SQLite); on a store shared by several it is
    nobody's until a server of its host resolves the repository (repos.RepoResolver)."""
    return row_host == host or (row_host is None and not shared)


def freed(now: float, rescue_ref: str | None = None) -> dict[str, Any]:
    """The changes that make a slot FREE again: nobody's, no branch, warm since `now`."""
    return {
        "state": SlotState.FREE,
        "owner": None,
        "branch": None,
        "lease_expires_at": None,
        "since": None,
        "released_at": now,
        "task": None,
        "rescue_ref": rescue_ref,
    }


class Action(StrEnum):
    """Event-log actions. Metrics and the activity view are computed from these."""

    ALLOCATE = "allocate"  # outcome "ok" or an ErrorCode value
    CAS_LOST = "cas_lost"  # a compare-and-swap attempt lost to another process
    RELEASE = "release"  # outcome "ok" or an ErrorCode value
    RECLAIM = "reclaim"  # outcome "freed", "rescued", "quarantined", "rolled_back"
    RESCUE = "rescue"  # work saved to a ref; detail.rescue_ref
    REGISTER = "register"  # an agent's server started
    DISCONNECT = "disconnect"  # an agent's server stopped cleanly
    AGENT_DEAD = "agent_dead"  # detected dead; detail.reason
    AGENT_STALE = "agent_stale"  # lease lapsed
    VALIDATE = "validate"  # one validation run; detail.findings
    REPAIR = "repair"  # one repaired finding; detail.kind
    ADOPT = "adopt"  # a worktree taken into the pool (validate or import)
    RADAR = "radar"  # a predicted merge conflict appeared ("conflict") or went away ("cleared"); detail.with
    PRUNE = "prune"  # old events deleted, ended agents retired; detail.events, detail.agents
    ALERT = "alert"  # "raised", "cleared" (detail.alert, key, kind, severity); "notified", "notify_failed"


@dataclass(frozen=True)
class Event:
    id: int
    ts: float  # wall clock, seconds since the epoch (UTC)
    agent_id: str | None
    action: str
    repo_id: int | None
    worktree_id: str | None
    branch: str | None
    outcome: str
    duration_ms: float | None  # measured with a monotonic clock
    fencing_token: int | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Repo:
    id: int
    path: str
    pool_root: str
    # The host whose clone this is (AGENT_COORD_HOST_ID) and the project every clone shares; None on a
    # row of an earlier version that no server of its host has resolved since.
    host: str | None = None
    project: str | None = None

    @property
    def git_dir(self) -> Path:
        """The repository's common `.git`: `GitDriver.main_worktree` admits only repositories whose
        common directory is `<main worktree>/.git`, so no git process is needed to find it."""
        return Path(self.path) / ".git"


@dataclass(frozen=True)
class Slot:
    id: str  # worktree_id, e.g. "wt-03"
    repo_id: int
    path: str
    state: SlotState
    version: int
    owner: str | None
    branch: str | None
    fencing_token: int | None
    lease_expires_at: float | None
    since: float | None
    released_at: float | None
    task: str | None
    rescue_ref: str | None
    setup_done: bool
    created_at: float
    # Copied from its repository: the host whose directory it is, the project whose branch it holds.
    host: str | None = None
    project: str | None = None


@dataclass(frozen=True)
class WorkerProcess:
    """A process, as a slot's worker records it: where it runs and how to tell it from a reused pid."""

    host: str
    boot_id: str
    pid: int
    create_time: float
    start_s: float | None  # its start counted from boot, where the platform has it


@dataclass(frozen=True)
class SlotWorker:
    """A slot's transition in flight (ALLOCATING or RELEASING) and the process doing it: the one whose
    death proves that transition can never finish (`liveness.judge.worker_gone`). The database marks
    every transition as it happens (when, the slot's `version` then); the process records itself
    right after its compare-and-swap. `process` is None until it has (or if it never does: an older
    version, a process killed in between)."""

    slot_id: str
    version: int
    state: SlotState
    age_s: float  # how long ago the database marked it, by the database's own clock
    process: WorkerProcess | None


@dataclass(frozen=True)
class Agent:
    id: str
    host: str
    boot_id: str
    pid: int  # the agent process (the server's parent, wrappers skipped)
    pid_create_time: float
    server_pid: int
    server_create_time: float
    repo_id: int | None
    status: str  # active | idle | disconnected
    note: str | None
    started_at: float
    last_heartbeat: float
    lease_expires_at: float
    # Seconds from boot to the process's start (Linux); immune to wall-clock steps. None: unknown.
    pid_start_s: float | None = None
    server_start_s: float | None = None
    # Where the id comes from: explicit | session | process (liveness.judge.Origin); None: unknown
    # (registered by an older version).
    origin: Origin | None = None


@dataclass(frozen=True)
class MetricTotals:
    """What the metrics are computed from: counts over the window, the latency histogram and busy time.

    Built from raw events (``observe.metrics.totals_from_events``, exact) or read from the store's hourly rollups
    (``Store.metric_totals``), whose window starts at the top of the hour at or before ``now - window``.
    """

    span_start: float
    attempts: int = 0
    successes: int = 0
    branch_conflicts: int = 0
    cas_lost: int = 0
    agent_dead: int = 0
    agent_stale: int = 0
    # (latency ms, samples), ascending: each value is a latency that really happened (in the rollups,
    # the largest of its bin's samples).
    latency: tuple[tuple[float, int], ...] = ()
    busy_s: float = 0.0
    busy_intervals: int = 0
    # Conflict radar events in the window: predicted conflicts, and those cleared by reason.
    radar_conflicts: int = 0
    radar_resolved: int = 0
    radar_released: int = 0
