"""Results of the coordinator's operations. The MCP tools return these as structured output, so their
schemas are what an agent reads in `tools/list`: a description on every field it acts on, times in
seconds since the Unix epoch, no generated titles, and the dashboard's detail left opaque."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

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

EPOCH = "seconds since the Unix epoch (UTC)"


class AlertView(BaseModel):
    """An active alert (engine/observe/alerts.py)."""

    kind: Literal["metric", "quarantined", "rescue", "drift", "pool_full"]
    severity: Literal["warning", "failing"]
    message: str
    worktree_id: str | None = None
    agent_id: str | None = None
    rescue_ref: str | None = None
    since: float


# One short schema, as the radar's lists: an agent reads it in two tools' output schemas.
AlertList = Annotated[
    list[AlertView],
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "object"},
            "description": "alerts, worst first: kind, severity, message (what to do), worktree_id, rescue_ref",
        }
    ),
]


def lean_schema(schema: dict[str, Any]) -> None:
    """Drop pydantic's generated titles (they repeat the names) and spell `X or null` as one type list:
    a third of the tokens an agent spends on `tools/list`, and nothing it reads."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
        options = prop.get("anyOf")
        if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
            (other,) = [o for o in options if o != {"type": "null"}]
            if set(other) == {"type"} and isinstance(other["type"], str):
                del prop["anyOf"]
                prop["type"] = [other["type"], "null"]


class Result(BaseModel):
    # Built on first use: a hook or a command uses one or two of these models, the server all of them.
    model_config = ConfigDict(json_schema_extra=lean_schema, defer_build=True)


class ContentionSource(Result):
    name: str  # "store", "processes", "manictime"
    used: bool
    age_s: float | None = None
    reason: str | None = None


class Contention(Result):
    level: int = Field(description="max(live agents on the repository, agent processes seen)")
    threshold: int
    live_agents: int
    agent_processes: int | None = None
    focused_agent: str | None = None
    caller_focused: bool = False
    user_presence: str = "unknown"
    focused_window: str | None = None
    sources: list[ContentionSource] = Field(default_factory=list)


# In a tool's output schema the contention detail is one opaque object: the dashboard reads it, an agent
# does not act on it, and spelled out it would be the largest part of two tools' schemas.
OpaqueContention = Annotated[
    Contention, WithJsonSchema({"type": "object", "description": "contention seen (detail: coord://contention)"})
]


class AllocationResult(Result):
    worktree_id: str = Field(description="the worktree's id; name it to release")
    path: str = Field(description="absolute path of your worktree: work only here")
    branch: str = Field(description="the branch checked out there")
    repo: str = Field(description="the repository's top-level path")
    agent_id: str = Field(description="your agent id, as status shows it")
    fencing_token: int = Field(description="the grant's number in the store; no tool takes it")
    lease_expires_at: float = Field(description=f"when your lease lapses unless renewed, {EPOCH}")
    reused: bool = Field(description="a warm slot: ignored build caches from earlier use are kept")
    strategy: Literal["optimistic", "pessimistic", "existing"] = Field(
        description="how it was allocated; `existing`: you already held this branch"
    )
    attempts: int = Field(description="compare-and-swap attempts it took")
    latency_ms: float = Field(description="milliseconds the allocation took")
    contention: OpaqueContention
    jitter_ms: float = Field(default=0.0, description="milliseconds waited before claiming, under contention")
    conflicts: ConflictList = Field(default_factory=list)


class ReleaseResult(Result):
    worktree_id: str = Field(description="the worktree released")
    path: str = Field(description="the slot's path: run nothing there any more")
    branch: str | None = Field(description="the branch released; it and its commits stay in the repository")
    state: str = Field(description="`FREE` (kept warm), `REMOVED`, or `QUARANTINED` (forced while it kept changing)")
    dirty: bool = Field(description="there were uncommitted changes (saved to `rescue_ref`)")
    rescue_ref: str | None = Field(default=None, description="where uncommitted work was saved; tell the user")
    removed: bool = Field(default=False, description="the slot's directory was deleted")
    conflicts: ConflictList = Field(default_factory=list)


class HeartbeatResult(Result):
    agent_id: str = Field(description="your agent id")
    status: Literal["active", "idle"] = Field(description="the status recorded for you")
    lease_expires_at: float = Field(description=f"when your lease lapses unless renewed, {EPOCH}")
    next_heartbeat_s: float = Field(description="seconds until your server renews the lease again")
    allocations: list[str] = Field(description="worktree ids this agent holds")
    conflicts: ConflictList = Field(default_factory=list)
    ended: list[str] = Field(
        default_factory=list,
        description="your allocations that another hand ended since your last heartbeat (a reclaim, a forced "
        "release): when, why, and the rescue ref; each told once",
    )
    alerts: AlertList = Field(default_factory=list)


class PoolSummary(Result):
    size: int = Field(description="slots that exist")
    free: int = Field(description="slots ready to allocate")
    busy: int = Field(description="slots held by agents")
    quarantined: int = Field(default=0, description="slots kept for a person to look at")
    max: int = Field(description="the most slots the pool may have (AGENT_COORD_POOL_MAX)")
    utilization: float = Field(description="busy / max, 0 to 1")


class WorktreeView(Result):
    worktree_id: str = Field(description="the slot's id")
    path: str = Field(description="its absolute path")
    branch: str | None = Field(description="the branch checked out, none when free")
    state: str = Field(description="FREE, ALLOCATING, BUSY, RELEASING or QUARANTINED (kept for a person)")
    agent_id: str | None = Field(description="the holder")
    fencing_token: int | None = Field(description="the current grant's number")
    lease_expires_at: float | None = Field(description=f"when the holder's lease lapses, {EPOCH}")
    since: float | None = Field(description=f"held since, {EPOCH}")
    repo: str = Field(description="the repository's top-level path")
    rescue_ref: str | None = Field(default=None, description="work saved from its last holder, if any")
    task: str | None = Field(default=None, description="what its holder said it works on")
    host: str | None = Field(default=None, description="the host whose directory it is (AGENT_COORD_HOST_ID)")


class AgentView(Result):
    agent_id: str = Field(description="the agent's id")
    status: str = Field(description="active, idle or disconnected")
    alive: bool = Field(description="false: its worktrees may be reclaimed (`validate` with `repair: true`)")
    stale: bool = Field(default=False, description="its lease lapsed")
    reason: str = Field(description="why alive or not (process gone, lease lapsed)")
    host: str = Field(description="the host it runs on")
    pid: int = Field(description="its agent process on that host")
    last_heartbeat: float = Field(description=EPOCH)
    lease_expires_at: float = Field(description=EPOCH)
    note: str | None = Field(default=None, description="what it said it does or waits for")
    focused: bool = Field(default=False, description="its window has the user's focus")


class StatusResult(Result):
    alerts: AlertList = Field(default_factory=list)
    repo: str | None = Field(description="the repository shown (none: every repository)")
    pool: PoolSummary = Field(description="the pool's size and use")
    worktrees: list[WorktreeView] = Field(description="every slot")
    agents: list[AgentView] = Field(description="the agents known, alive or not")
    contention: OpaqueContention | None = Field(default=None, description="contention seen, for the repository")
    metrics: dict[str, Any] = Field(default_factory=dict, description="health metrics (detail: coord://metrics)")
    conflicts: ConflictList = Field(default_factory=list)
    conflict_pairs: PairList = Field(default_factory=list)


class Finding(Result):
    kind: str = Field(description="what drifted, e.g. dead_agent, stale_lease, branch_mismatch")
    worktree_id: str | None = Field(default=None, description="the slot concerned")
    path: str | None = Field(default=None, description="the path concerned")
    agent_id: str | None = Field(default=None, description="the agent concerned")
    detail: str = Field(description="what was found")
    action: str = Field(description="what repair does (or did) about it")
    repaired: bool = Field(default=False, description="this call repaired it")


class ValidateResult(Result):
    findings: list[Finding] = Field(description="the drift found")
    duration_ms: float = Field(description="milliseconds the pass took")
    repaired: int = Field(default=0, description="findings repaired by this call")
    skipped: list[Finding] = Field(default_factory=list, description="found but left alone (locked worktrees)")
