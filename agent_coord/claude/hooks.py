"""Claude Code's hooks on top of the pool: what `agent-coord hook …` does once the payload is read.

Claude Code runs a hook as a short-lived process (`sh -c "agent-coord hook worktree-create"`) and
pipes one JSON object to it. The process that holds a worktree is therefore not the hook but Claude
Code itself; `Identity` already attributes a hook to its nearest non-wrapper ancestor, so an agent
registered from a hook is judged alive exactly as long as that Claude Code process runs.

Nothing renews a hook agent's lease after the hook exits (there is no server behind it), so hook
agents are registered with a long lease (`HOOK_LEASE_S`): on this host the process check decides
liveness at once, and the lease only matters where it cannot (another host sharing the database).
With the default five-minute lease, validation would reclaim the worktree a live session works in.
On a store shared by several hosts (PostgreSQL) a week would keep a dead host's branches from every
other host for a week: there the hook lease is `SHARED_HOOK_LEASE_INTERVALS` ordinary leases (an hour
by default), and a live session keeps its claims beyond it while any agent-coord server validates on
its host (validate/hosts.py: claims lapse only once the host's validator lease has lapsed too).

No MCP imports here: agent_coord/claude/hook_run.py reads stdin, owns stdout and maps errors to exit
codes; this module only speaks the engine's language (`CoordError` with a stable code).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from agent_coord.claude.hook_run import MAX_INPUT_BYTES
from agent_coord.claude.slot_setup import link_claude_setup
from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.driver import GitError
from agent_coord.engine.liveness.judge import same_agent
from agent_coord.engine.models import AllocationResult, ReleaseResult
from agent_coord.engine.release.releaser import Releaser
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import HELD_STATES, Action, Agent, Origin, Repo, Slot, SlotState
from agent_coord.store_target import PostgresUrl

# A week: longer than any session is likely to stay open, short enough that a worktree held by a
# session on another host (where the process cannot be checked) comes back eventually.
HOOK_LEASE_S = 7 * 86400.0
SHARED_HOOK_LEASE_INTERVALS = 12
AGENT_PREFIX = "claude-"
SESSION_ID_CHARS = 12
# `/clear` ends a session but the same Claude Code process keeps working in the same directory.
CLEAR_REASON = "clear"


# ---- payloads -----------------------------------------------------------------------------------


class HookInput(BaseModel):
    """Fields every Claude Code hook sends. Unknown fields are kept, not refused: newer Claude Code
    releases add fields, and a hook that fails on them would break every worktree creation."""

    model_config = ConfigDict(extra="allow", frozen=True)

    session_id: str | None = None
    transcript_path: str | None = None
    cwd: str | None = None
    hook_event_name: str | None = None


class WorktreeCreateInput(HookInput):
    # Claude Code has sent the name as `name` (the workflow runtime) and as `worktree_name` (the
    # documented shape, with `base_path` and `source_ref`); both are accepted.
    name: str | None = None
    worktree_name: str | None = None
    base_path: str | None = None  # where Claude Code would have put it; the pool decides instead
    source_ref: str | None = None  # where a new branch starts

    @property
    def requested_name(self) -> str | None:
        for value in (self.name, self.worktree_name):
            if value is not None and value.strip():
                return value.strip()
        return None


class WorktreeRemoveInput(HookInput):
    worktree_path: str


class SessionStartInput(HookInput):
    source: str | None = None  # startup | resume | clear | compact


class SessionEndInput(HookInput):
    reason: str | None = None  # clear | logout | prompt_input_exit | other | …


M = TypeVar("M", bound=HookInput)


def parse_input(model: type[M], raw: bytes) -> M:
    """The hook payload, or `INVALID_ARGUMENT` saying in one line what is wrong with it."""
    if len(raw) > MAX_INPUT_BYTES:
        raise CoordError(ErrorCode.INVALID_ARGUMENT, f"hook input is larger than {MAX_INPUT_BYTES} bytes")
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        data: object = {}  # run by hand with nothing piped in: every field is optional but the name
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CoordError(
                ErrorCode.INVALID_ARGUMENT,
                f"hook input is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            ) from exc
    if not isinstance(data, dict):
        raise CoordError(ErrorCode.INVALID_ARGUMENT, f"hook input must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise CoordError(ErrorCode.INVALID_ARGUMENT, f"hook input: {problems}") from exc


# ---- names --------------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^\w./-]+")  # git allows more, but these survive every shell and tool
_DOTS = re.compile(r"\.{2,}")
_DASHES = re.compile(r"-{2,}")


def sanitize_name(name: str) -> str:
    """`name` made into a string git accepts inside a ref ("" when nothing usable is left)."""
    cleaned = _UNSAFE.sub("-", name.strip())
    parts: list[str] = []
    for raw in cleaned.split("/"):
        part = _DASHES.sub("-", _DOTS.sub(".", raw))
        # A component may not start with '.', nor end with '.' or '.lock'; a leading '-' would read
        # as an option to tools that take the bare name.
        part = part.strip(".-")
        while part.endswith(".lock"):
            part = part.removesuffix(".lock").rstrip(".-")
        if part:
            parts.append(part)
    return "/".join(parts)


def branch_for(name: str, prefix: str) -> str:
    """The branch a worktree called `name` gets: the prefix plus the sanitized name."""
    cleaned = sanitize_name(name)
    if not cleaned:
        raise CoordError(
            ErrorCode.INVALID_BRANCH,
            f"worktree name {name!r} leaves nothing usable for a branch name; use letters, digits, '-', '_', '.'",
        )
    return f"{prefix}{cleaned}"


def hook_agent_id(session_id: str | None, configured: str | None) -> str | None:
    """`AGENT_COORD_AGENT_ID` when set; else `claude-<first 12 characters of the session id>`, the same
    for every hook of one session; None (derive it from the Claude Code process) without either."""
    return hook_identity(session_id, configured)[0]


def hook_identity(session_id: str | None, configured: str | None) -> tuple[str | None, Origin]:
    """The hook's agent id (see `hook_agent_id`) and where it comes from."""
    if configured:
        return configured, "explicit"
    token = re.sub(r"[^A-Za-z0-9-]", "", session_id or "")[:SESSION_ID_CHARS].strip("-")
    return (f"{AGENT_PREFIX}{token}", "session") if token else (None, "process")


def hook_lease_s(settings: Settings) -> float:
    """The lease of a hook agent: a week on a SQLite store (one host), else 12 ordinary leases."""
    if isinstance(settings.db, PostgresUrl):
        return SHARED_HOOK_LEASE_INTERVALS * settings.stale_after_s
    return max(settings.stale_after_s, HOOK_LEASE_S)


def hook_settings(settings: Settings) -> Settings:
    """The settings a hook opens the coordinator with: the long lease described above."""
    return settings.model_copy(update={"stale_after_s": hook_lease_s(settings)})


# ---- acting as the session's agent --------------------------------------------------------------


def same_process(coord: Coordinator, agent: Agent | None) -> bool:
    """Was `agent` registered by the Claude Code session or process this hook runs for (as one agent:
    explicitly named agents under the same process are others)?"""
    return same_agent(coord.identity, agent)


async def release_as(coord: Coordinator, agent_id: str, worktree_id: str) -> ReleaseResult:
    """Release as `agent_id` (the same engine acting for the owner, under the owner's origin), so it
    is an owner's release and never needs force. Only for an owner `_may_act_for` accepted."""
    owner = await coord.store.agent(agent_id)
    origin = owner.origin if owner is not None and owner.origin is not None else None
    return await Releaser(coord.ctx.acting_as(agent_id, origin)).release(worktree_id=worktree_id)


async def _may_act_for(coord: Coordinator, owner: str | None) -> bool:
    """The same agent as the owner (`same_agent`: its id and origin, or another session of the same
    Claude Code process after /clear or a subagent's own session, which holds the directory too)."""
    if owner is None:
        return True
    registered = await coord.store.agent(owner)
    if registered is None:
        return owner == coord.agent_id  # no record left to tell origins apart: the id is all there is
    return same_process(coord, registered)


# ---- the hooks ----------------------------------------------------------------------------------


async def repo_arg_for(coord: Coordinator, cwd: str | None) -> str | None:
    """The `repo` argument for the session's directory: None (the default repository) when that is
    where `cwd` belongs, so the pool root is chosen exactly as for the MCP server of the same session
    (`AGENT_COORD_POOL_ROOT` applies to the default repository only); else `cwd` itself."""
    if not cwd:
        return None
    try:
        top = await coord.git.main_worktree(Path(cwd))
    except CoordError:
        return cwd  # let the pool refuse it, with its own NOT_A_REPOSITORY message
    default = await coord.default_repo()
    return None if default is not None and Path(default.path) == top else cwd


async def create_worktree(coord: Coordinator, payload: WorktreeCreateInput, branch: str) -> AllocationResult:
    """Allocate a slot for `branch` as the session's agent, in the repository of the payload's cwd."""
    name = payload.requested_name or branch
    session = f" (session {payload.session_id})" if payload.session_id else ""
    return await coord.pool.allocate(
        branch,
        base=payload.source_ref or None,
        repo=await repo_arg_for(coord, payload.cwd),
        task=f"Claude Code worktree {name!r}{session}",
    )


async def provide_claude_setup(coord: Coordinator, result: AllocationResult) -> str | None:
    """Link the project's uncommitted Claude Code setup into the new slot (see `slot_setup`); a line
    for the user when that failed, since the session then starts without our hooks."""
    try:
        slot = (await bounds_of(await coord.repos.resolve(result.repo))).slot(result.path)
        await link_claude_setup(coord.git, Path(result.repo), slot)
    except (GitError, OSError) as exc:
        return f"agent-coord: could not link the Claude Code setup into {result.path}: {exc}"
    return None


async def remove_worktree(coord: Coordinator, payload: WorktreeRemoveInput) -> ReleaseResult:
    """Release the slot at `worktree_path`, keeping it warm. Never forced: a dirty slot is refused
    with WORKTREE_DIRTY and stays allocated, its files untouched."""
    try:
        slot = await coord.pool.find_slot(worktree_id=None, path=payload.worktree_path, branch=None)
    except CoordError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
        # Not ours to touch: a worktree Claude Code made before the hooks were installed, say.
        raise CoordError(
            ErrorCode.NOT_FOUND, f"{payload.worktree_path} is not a worktree of the agent-coord pool; left as is"
        ) from exc
    if slot.state == SlotState.FREE:
        return ReleaseResult(worktree_id=slot.id, path=slot.path, branch=None, state="FREE", dirty=False)
    if not await _may_act_for(coord, slot.owner):
        raise CoordError(
            ErrorCode.NOT_OWNER,
            f"{slot.id} ({slot.path}) is held by agent {slot.owner}, not by this Claude Code session; left as is",
        )
    try:
        return await release_as(coord, slot.owner or coord.agent_id, slot.id)
    except CoordError as exc:
        if exc.code not in (ErrorCode.WORKTREE_DIRTY, ErrorCode.WORKTREE_LOCKED):
            raise
        raise CoordError(exc.code, f"{exc.message} (it stays allocated to this session; nothing was deleted)") from exc


@dataclass
class SessionEndReport:
    released: list[ReleaseResult] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # one line each: which slot and why it stays held


async def end_session(coord: Coordinator, payload: SessionEndInput) -> SessionEndReport:
    """Release, best effort, every clean slot the ending session holds; report the ones kept."""
    report = SessionEndReport()
    held = [s for s in await coord.store.slots() if s.state == SlotState.BUSY and s.owner]
    if payload.reason == CLEAR_REASON:
        for s in held:
            if s.owner == coord.agent_id:
                report.kept.append(f"{s.id} ({s.path}): kept, the session was cleared and Claude Code works on in it")
        return report
    owners = {coord.agent_id}
    for agent in await coord.store.agents():
        # Sessions this process ended with /clear left their worktrees to it; the process ends now.
        if agent.origin == "session" and same_process(coord, agent):
            owners.add(agent.id)
    for s in held:
        if s.owner not in owners:
            continue
        if not await _may_act_for(coord, s.owner):
            # The same id text, registered with another origin (or another process's hash): not ours.
            report.kept.append(f"{s.id} ({s.path}): kept, held by another agent named {s.owner}")
            continue
        try:
            report.released.append(await release_as(coord, s.owner or coord.agent_id, s.id))
        except CoordError as exc:
            report.kept.append(f"{s.id} ({s.path}): kept, {exc}")
    await coord.store.set_agent_status(
        coord.agent_id,
        "disconnected",
        server_pid=None,  # registered by another hook process; the id is the session's, not a server's
        event=EventDraft(Action.DISCONNECT, "ok", agent_id=coord.agent_id, detail={"via": "SessionEnd hook"}),
    )
    return report


@dataclass
class SessionContext:
    repo: Repo
    mine: list[Slot]
    here: Slot | None  # the pool slot the session's cwd is in, whoever holds it
    free: int
    busy: int
    pool_max: int

    def render(self) -> str:
        parts: list[str] = []
        if self.mine:
            held = "; ".join(f"{s.id} at {s.path} (branch {s.branch})" for s in self.mine[:3])
            more = f" and {len(self.mine) - 3} more" if len(self.mine) > 3 else ""
            parts.append(f"your worktree: {held}{more}.")
        elif self.here is not None:
            holder = f"held by agent {self.here.owner}" if self.here.owner else self.here.state.value
            parts.append(f"this directory is pool worktree {self.here.id} ({holder}).")
        else:
            parts.append("you hold no pool worktree.")
        parts.append(f"Pool of {self.repo.path}: {self.free} free, {self.busy} busy, max {self.pool_max}.")
        parts.append(
            "To edit in parallel with other agents, take your own worktree with mcp__coord__allocate_worktree "
            "and give it back with mcp__coord__release_worktree."
        )
        return "agent-coord: " + " ".join(parts)


async def session_context(coord: Coordinator, payload: SessionStartInput, *, renew: bool = True) -> SessionContext:
    """What a starting session should know: its worktrees and the pool. A session that resumes
    holding worktrees renews its registration, so they stay attributed to the live process."""
    repo = await coord.repos.resolve(await repo_arg_for(coord, payload.cwd))
    slots = await coord.store.slots(repo.id)
    mine = [s for s in slots if s.owner == coord.agent_id and s.state in HELD_STATES]
    here: Slot | None = None
    if payload.cwd:
        cwd = Path(await anyio.Path(payload.cwd).resolve())
        here = next((s for s in slots if cwd == Path(s.path) or Path(s.path) in cwd.parents), None)
    if mine and renew:
        await coord.register()
        await coord.store.heartbeat(
            coord.agent_id,
            status="active",
            note=None,
            lease_s=coord.settings.stale_after_s,
            server_pid=coord.identity.server_pid,
        )
    return SessionContext(
        repo=repo,
        mine=mine,
        here=here,
        free=sum(1 for s in slots if s.state == SlotState.FREE),
        busy=sum(1 for s in slots if s.state in HELD_STATES),
        pool_max=coord.settings.pool_max,
    )
