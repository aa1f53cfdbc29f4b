"""Results of the coordinator's operations. The MCP tools return these as structured output."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from agent_coord.engine.radar.models import Conflict, ConflictPair

# The radar's entries as one short schema: spelled out (three nested models) they would be repeated in
# four tools' output schemas, a fifth of what an agent reads in `tools/list`.
ConflictList = Annotated[
    list[Conflict],
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "object"},
            "description": "merge collisions predicted for your worktrees: kind (overlap|conflict), paths, "
            "ranges (your lines), with (the other worktree, or base), since",
        }
    ),
]
PairList = Annotated[
    list[ConflictPair],
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "object"},
            "description": "flagged pairs: a, b (worktree id or base:<branch>), kind, paths, since",
        }
    ),
]


class ContentionSource(BaseModel):
    name: str  # "store", "processes", "manictime"
    used: bool
    age_s: float | None = None
    reason: str | None = None


class Contention(BaseModel):
    level: int = Field(description="max(live agents on the repository, agent processes seen)")
    threshold: int
    live_agents: int
    agent_processes: int | None = None
    focused_agent: str | None = None
    caller_focused: bool = False
    user_presence: str = "unknown"
    focused_window: str | None = None
    sources: list[ContentionSource] = Field(default_factory=list)


class AllocationResult(BaseModel):
    worktree_id: str
    path: str
    branch: str
    repo: str
    agent_id: str
    fencing_token: int
    lease_expires_at: float
    reused: bool = Field(description="a warm slot was reused (git switch) rather than created")
    strategy: Literal["optimistic", "pessimistic", "existing"]
    attempts: int
    latency_ms: float
    contention: Contention
    jitter_ms: float = 0.0
    conflicts: ConflictList = Field(default_factory=list)


class ReleaseResult(BaseModel):
    worktree_id: str
    path: str
    branch: str | None
    state: str
    dirty: bool
    rescue_ref: str | None = None
    removed: bool = False
    conflicts: ConflictList = Field(default_factory=list)


class HeartbeatResult(BaseModel):
    agent_id: str
    status: Literal["active", "idle"]
    lease_expires_at: float
    next_heartbeat_s: float
    allocations: list[str] = Field(description="worktree ids this agent holds")
    conflicts: ConflictList = Field(default_factory=list)
    ended: list[str] = Field(
        default_factory=list,
        description="your allocations that another hand ended since your last heartbeat (a reclaim, a forced "
        "release): when, why, and the rescue ref; each told once",
    )


class PoolSummary(BaseModel):
    size: int
    free: int
    busy: int
    quarantined: int = 0
    max: int
    utilization: float


class WorktreeView(BaseModel):
    worktree_id: str
    path: str
    branch: str | None
    state: str
    agent_id: str | None
    fencing_token: int | None
    lease_expires_at: float | None
    since: float | None
    repo: str
    rescue_ref: str | None = None
    task: str | None = None


class AgentView(BaseModel):
    agent_id: str
    status: str
    alive: bool
    stale: bool = False
    reason: str
    host: str
    pid: int
    last_heartbeat: float
    lease_expires_at: float
    note: str | None = None
    focused: bool = False


class StatusResult(BaseModel):
    repo: str | None
    pool: PoolSummary
    worktrees: list[WorktreeView]
    agents: list[AgentView]
    contention: Contention | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    conflicts: ConflictList = Field(default_factory=list)
    conflict_pairs: PairList = Field(default_factory=list)


class Finding(BaseModel):
    kind: str
    worktree_id: str | None = None
    path: str | None = None
    agent_id: str | None = None
    detail: str
    action: str
    repaired: bool = False


class ValidateResult(BaseModel):
    findings: list[Finding]
    duration_ms: float
    repaired: int = 0
    skipped: list[Finding] = Field(default_factory=list, description="found but left alone (locked worktrees)")
