"""The coordinator: one per process. Composes the store, git, pool, liveness and validation, and runs
the background work of a server (lease renewal, validation when it holds the validator lease)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import cached_property, partial
from typing import TYPE_CHECKING, Literal

import anyio
from opentelemetry import trace

from agent_coord.config import Settings
from agent_coord.engine.allocate.pool import Pool
from agent_coord.engine.contention.snapshot import ContentionMonitor
from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.errors import MAX_TEXT, CoordError, ErrorCode
from agent_coord.engine.git.confinement import PoolRootRefused
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.liveness.judge import Identity, judge, same_agent, same_agent_process, worker_gone
from agent_coord.engine.models import (
    AgentView,
    AlertView,
    Contention,
    HeartbeatResult,
    PoolSummary,
    StatusResult,
    ValidateResult,
    WorktreeView,
)
from agent_coord.engine.radar.models import Conflict, ConflictReport
from agent_coord.engine.radar.view import conflict_pairs, conflicts_for
from agent_coord.engine.repos import RepoResolver
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.alerts import Alert
from agent_coord.engine.store.radar import SideInfo
from agent_coord.engine.store.records import HELD_STATES, Action, Origin, Repo, SlotState

if TYPE_CHECKING:
    from agent_coord.engine.observe.alerts import AlertNotifier, AlertWatch
    from agent_coord.engine.observe.metrics import MetricsReport
    from agent_coord.engine.radar.loop import RadarLoop
    from agent_coord.engine.reclaim.reclaimer import Reclaimer
    from agent_coord.engine.validate.loop import ValidatorLoop
    from agent_coord.engine.validate.validator import Validator

tracer = trace.get_tracer("agent-coord.coordinator")
logger = logging.getLogger("agent-coord")
DEAD_AGENT_VISIBLE_S = 86400.0
HEARTBEAT_ALERTS = 5


class Coordinator(OverEngine):
    def __init__(
        self, settings: Settings, store: Store, identity: Identity, *, sharing: Coordinator | None = None
    ) -> None:
        """`sharing`: another coordinator whose git driver and resolved repositories this one uses."""
        git = sharing.git if sharing is not None else GitDriver()
        repos = sharing.repos if sharing is not None else RepoResolver(store, git, settings, host=identity.host)
        super().__init__(EngineContext(store, git, repos, settings, identity))
        self.contention = ContentionMonitor(self.ctx)
        self.pool = Pool(self.ctx, self.contention)
        self.agent_status: Literal["active", "idle"] = "active"
        self.registered = False
        # Acting for a process other than its own agent's (the hook host): it may not open an engine
        # of its own for that process's work, which would act as this process's agent.
        self.for_another_process = False
        self._wake = anyio.Event()

    # The server's background work (validation, alerts, the radar, whose predictions load pygit2) is
    # built on first use: a hook or a one-shot command never runs it and should not import it.

    @cached_property
    def reclaimer(self) -> Reclaimer:
        from agent_coord.engine.reclaim.reclaimer import Reclaimer

        return Reclaimer(self.ctx)

    @cached_property
    def validator(self) -> Validator:
        from agent_coord.engine.validate.validator import Validator

        # An allocation in flight longer than any allocation may take (setup included) is stuck.
        s = self.settings
        return Validator(self.ctx, self.reclaimer, allocating_grace_s=s.allocation_timeout_s + s.setup_timeout_s + 60)

    @cached_property
    def alert_watch(self) -> AlertWatch:
        from agent_coord.engine.observe.alerts import AlertPolicy, AlertWatch

        return AlertWatch(
            self.store,
            self.git,
            AlertPolicy.of(self.settings),
            lambda now: self.metrics(now=now),
            host=self.identity.host,
        )

    @cached_property
    def alert_notifier(self) -> AlertNotifier:
        from agent_coord.engine.observe.alerts import AlertNotifier, AlertPolicy

        return AlertNotifier(
            self.store, AlertPolicy.of(self.settings), f"{self.identity.agent_id}:{self.identity.server_pid}"
        )

    @cached_property
    def validator_loop(self) -> ValidatorLoop:
        from agent_coord.engine.observe.retention import Retention
        from agent_coord.engine.validate.loop import ValidatorLoop, check_every

        s = self.settings
        return ValidatorLoop(
            self.ctx,
            self.validator,
            every_s=s.validate_every_s,
            check_s=check_every(s.validate_every_s, s.heartbeat_active_s),
            retention=Retention.of(s.metrics_window_s, s.events_keep_days),
            alerts=self.alert_watch,
        )

    @cached_property
    def radar_loop(self) -> RadarLoop:
        from agent_coord.engine.radar.loop import RadarLoop

        return RadarLoop(self.store, self.git, self.identity, every_s=self.settings.radar_every_s)

    @classmethod
    @asynccontextmanager
    async def open(
        cls, settings: Settings, *, register: bool, agent_id: str | None = None, origin: Origin = "explicit"
    ) -> AsyncIterator[Coordinator]:
        """`agent_id` and its `origin` (a hook's `claude-<session>` is "session"); without one,
        AGENT_COORD_AGENT_ID (explicit), else an id generated from the agent process."""
        store = await Store.open(settings.db, wait_s=settings.store_wait_s)
        coord: Coordinator | None = None
        try:
            identity = await _known_identity(
                store,
                Identity.detect(
                    agent_id or settings.agent_id,
                    settings.wrapper_processes,
                    origin if agent_id else "explicit",
                    host=settings.host_id,
                ),
            )
            coord = cls(settings, store, identity)
        finally:
            if coord is None:
                with anyio.CancelScope(shield=True):
                    await store.close()
        try:
            await coord.default_repo()  # start-up refuses a pool root that is not the pool's alone
            if register:
                await coord.register()
            yield coord
        finally:
            with anyio.CancelScope(shield=True):
                if coord.registered:
                    await coord.disconnect()
                # Only the loops this coordinator ran can hold a lease.
                if "validator_loop" in coord.__dict__:
                    await coord.validator_loop.release()
                if "radar_loop" in coord.__dict__:
                    await coord.radar_loop.release()
                await store.close()

    @property
    def agent_id(self) -> str:
        return self.identity.agent_id

    def acting_for(self, agent_id: str, origin: Origin, settings: Settings) -> Coordinator:
        """This engine acting for `agent_id` under `settings` (a hook answered by its session's server,
        whose agent process the caller proved is the hook's, with the hook's own lease): the same store,
        git driver and repositories, another id. It runs none of the server's background work and never
        closes the store."""
        return self.acting_as(replace(self.identity, agent_id=agent_id, origin=origin), settings)

    def acting_as(self, identity: Identity, settings: Settings) -> Coordinator:
        """This engine acting as the agent `identity` under `settings` (see `acting_for`)."""
        return Coordinator(settings, self.store, identity, sharing=self)

    async def acting_for_process(self, pid: int, settings: Settings) -> Coordinator:
        """This engine acting as process `pid` would under `settings` if it opened its own (the hook
        host answering a hook process of its user, agent_coord/claude/hook_host.py): that process's
        agent, with this process as the server doing the work (an ALLOCATING row it leaves when it dies
        is provably stuck: validate/held.py)."""
        found = await anyio.to_thread.run_sync(
            lambda: Identity.detect(
                settings.agent_id, settings.wrapper_processes, "explicit", host=settings.host_id, pid=pid
            )
        )
        me = self.identity
        identity = replace(
            found,
            server_pid=me.server_pid,
            server_create_time=me.server_create_time,
            server_start_s=me.server_start_s,
        )
        coord = self.acting_as(await _known_identity(self.store, identity), settings)
        coord.for_another_process = True
        return coord

    async def default_repo(self) -> Repo | None:
        try:
            return await self.repos.resolve(None)
        except PoolRootRefused:
            raise  # a configuration error: nothing may run in that pool root
        except CoordError:
            return None

    async def register(self) -> None:
        """Record this agent (its identity, origin and process). An id that another agent holds (a live
        one, or one that still owns worktrees) is refused: registering over it would make that agent's
        worktrees ours."""
        taken = await id_taken(self.store, self.identity)
        if taken is not None:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, taken)
        repo = await self.default_repo()
        await self.store.register_agent(
            self.identity.as_agent(repo_id=repo.id if repo else None, lease_s=self.settings.stale_after_s)
        )
        self.registered = True
        await self._roll_back_what_gone_processes_left()

    async def _roll_back_what_gone_processes_left(self) -> None:
        """This agent's allocations and releases whose recorded process is provably gone (killed in the
        middle of one: a hook host, a crashed session server) are rolled back now, work saved first, as
        validation would at its next pass: otherwise the agent carrying on here is refused its own
        branch (BRANCH_CONFLICT) by its own half-made claim. One judged by the process doing it, never
        by the agent's other processes (a session's other hooks may be allocating right now)."""
        me = self.identity
        for s, worker in await self.store.recorded_in_flight(self.agent_id):
            gone = await anyio.to_thread.run_sync(partial(worker_gone, worker, host=me.host, boot=me.boot_id))
            if gone is None:
                continue
            what = "allocation" if s.state == SlotState.ALLOCATING else "release"
            reason = f"{gone}; the {what} it began can never finish (found as agent {self.agent_id} registered)"
            try:
                with anyio.CancelScope(shield=True):
                    outcome = await self.reclaimer.reclaim(s, reason)
            except Exception as exc:  # registered all the same: validation tries again at its next pass
                logger.warning("could not roll back %s (%s): %s", s.id, reason, exc)
            else:
                logger.info("rolled back %s (%s): %s", s.id, reason, outcome)

    async def disconnect(self) -> None:
        await self.store.set_agent_status(
            self.agent_id,
            "disconnected",
            server_pid=self.identity.server_pid,
            event=EventDraft(Action.DISCONNECT, "ok", agent_id=self.me),
        )
        self.registered = False

    # ---- heartbeat ----------------------------------------------------------------------------

    def heartbeat_interval(self) -> float:
        s = self.settings
        return s.heartbeat_idle_s if self.agent_status == "idle" else s.heartbeat_active_s

    async def heartbeat(self, status: Literal["active", "idle"] = "active", note: str | None = None) -> HeartbeatResult:
        if note is not None and len(note) > MAX_TEXT:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "note must be at most 4096 characters")
        changed = status != self.agent_status
        self.agent_status = status
        beat = partial(
            self.store.heartbeat,
            self.agent_id,
            status=status,
            note=note,
            lease_s=self.settings.stale_after_s,
            server_pid=self.identity.server_pid,
        )
        agent, _ = await beat()
        if agent is None:
            # Another server took this id over, or validation marked us gone: register again.
            await self.register()
            agent, _ = await beat()
        if changed:
            self._wake.set()
        held = [s.id for s in await self.store.slots() if s.owner == self.agent_id and s.state in HELD_STATES]
        return HeartbeatResult(
            agent_id=self.agent_id,
            status=status,
            lease_expires_at=agent.lease_expires_at if agent else self.ctx.now(),
            next_heartbeat_s=self.heartbeat_interval(),
            allocations=held,
            conflicts=await self.conflicts(),
            ended=await self.pool.releaser.ended_allocations(),
            alerts=await self.agent_alerts(agent.repo_id if agent else None),
        )

    async def agent_alerts(self, repo_id: int | None) -> list[AlertView]:
        """The active alerts this agent can act on: its slot quarantined, its work in a rescue ref, its
        repository's pool exhausted; the most severe, newest first, at most `HEARTBEAT_ALERTS` (rescue
        refs nobody deletes stay alerts, and every heartbeat result is read by the agent)."""
        mine = [
            a
            for a in await self.store.active_alerts()
            if (a.agent_id == self.agent_id and a.kind in ("quarantined", "rescue"))
            or (a.kind == "pool_full" and (repo_id is None or a.repo_id == repo_id))
        ]
        return [alert_view(a) for a in mine[:HEARTBEAT_ALERTS]]

    async def run_alerts(self) -> None:
        """Run the alert command for alerts nobody has run it for yet, whichever server sees them first
        (every check interval; nothing to do without AGENT_COORD_ALERT_COMMAND)."""
        if not self.settings.alert_command:
            return
        while True:
            try:
                await self.alert_notifier.dispatch()
            except Exception:  # best effort: the next round tries again
                logger.warning("alert command dispatch failed", exc_info=True)
            await anyio.sleep(self.validator_loop.check_s)

    async def run_heartbeats(self) -> None:
        """Renew our lease for as long as this server runs; the interval follows active/idle."""
        while True:
            with anyio.move_on_after(self.heartbeat_interval()):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self.store.heartbeat(
                    self.agent_id,
                    status=self.agent_status,
                    note=None,
                    lease_s=self.settings.stale_after_s,
                    server_pid=self.identity.server_pid,
                )
            except Exception:  # a missed renewal is retried next tick; the lease has slack
                logger.warning("lease renewal failed; retrying next tick", exc_info=True)
                continue

    # ---- validation ---------------------------------------------------------------------------

    async def validate(self, *, repair: bool, repo: str | None = None) -> ValidateResult:
        return await self.validator.validate(repair=repair, repo_arg=repo)

    async def run_validator(self) -> None:
        """Validate with repair at start-up, every interval, and as soon as an owner dies, whenever
        this server holds the validator lease (see `validator_loop`)."""
        await self.validator_loop.run()

    # ---- conflict radar -----------------------------------------------------------------------

    async def run_radar(self) -> None:
        """Predict merge conflicts between live allocations whenever this server holds the radar lease."""
        await self.radar_loop.run()

    async def conflicts(self, agent_id: str | None = None) -> list[Conflict]:
        """What the radar last found for the live allocations of `agent_id` (default: this agent)."""
        if agent_id is None:
            return await self.pool.conflicts()
        return conflicts_for(await self.store.live_pairs(), lambda side: side.agent_id == agent_id)

    async def conflict_report(self, repo_arg: str | None = None) -> ConflictReport:
        repo = await self.repos.resolve(repo_arg) if repo_arg is not None else None
        pairs = await self.store.live_pairs(repo.id if repo else None)
        ids = sorted({p.a.worktree_id for p in pairs} | {p.b.worktree_id for p in pairs if p.b is not None})
        return ConflictReport(
            repo=repo.path if repo else None,
            pairs=conflict_pairs(pairs),
            worktrees={wt: conflicts_for(pairs, _side_is(wt)) for wt in ids},
        )

    # ---- status -------------------------------------------------------------------------------

    async def status(self, repo_arg: str | None = None, *, with_contention: bool = True) -> StatusResult:
        repo = await self.repos.resolve(repo_arg) if repo_arg is not None else await self.default_repo()
        slots = await self.store.slots(repo.id if repo else None)
        repos = {r.id: r.path for r in await self.store.repos()}
        now = self.ctx.now()
        holders = {s.owner for s in slots if s.owner}
        agents: list[AgentView] = []
        contention: Contention | None = await self.contention.snapshot(repo) if with_contention else None
        shown = [a for a in await self.store.agents() if repo is None or a.repo_id == repo.id or a.id in holders]
        host, boot = self.identity.host, self.identity.boot_id
        # The process table is read off the event loop.
        verdicts = await anyio.to_thread.run_sync(lambda: [judge(a, host=host, boot=boot, now=now) for a in shown])
        for a, verdict in zip(shown, verdicts, strict=True):
            if not verdict.alive and a.id not in holders and now - a.last_heartbeat > DEAD_AGENT_VISIBLE_S:
                continue
            agents.append(
                AgentView(
                    agent_id=a.id,
                    status=a.status,
                    alive=verdict.alive,
                    stale=verdict.stale,
                    reason=verdict.reason,
                    host=a.host,
                    pid=a.pid,
                    last_heartbeat=a.last_heartbeat,
                    lease_expires_at=a.lease_expires_at,
                    note=a.note,
                    focused=contention is not None and contention.focused_agent == a.id,
                )
            )
        pairs = await self.store.live_pairs(repo.id if repo else None)
        busy = sum(1 for s in slots if s.state in HELD_STATES)
        free = sum(1 for s in slots if s.state == SlotState.FREE)
        quarantined = sum(1 for s in slots if s.state == SlotState.QUARANTINED)
        size = len(slots)
        worktrees = [
            WorktreeView(
                worktree_id=s.id,
                path=s.path,
                branch=s.branch,
                state=s.state.value,
                agent_id=s.owner,
                fencing_token=s.fencing_token,
                lease_expires_at=s.lease_expires_at,
                since=s.since,
                repo=repos.get(s.repo_id, "?"),
                rescue_ref=s.rescue_ref,
                task=s.task,
                host=s.host,
            )
            for s in slots
        ]
        return StatusResult(
            alerts=[
                alert_view(a)
                for a in await self.store.active_alerts()
                if repo is None or a.repo_id is None or a.repo_id == repo.id
            ],
            repo=repo.path if repo else None,
            pool=PoolSummary(
                size=size,
                free=free,
                busy=busy,
                quarantined=quarantined,
                max=self.settings.pool_max,
                utilization=round(busy / size, 4) if size else 0.0,
            ),
            worktrees=worktrees,
            agents=agents,
            contention=contention,
            metrics=(await self.metrics()).model_dump(mode="json"),
            conflicts=conflicts_for(pairs, lambda side: side.agent_id == self.agent_id),
            conflict_pairs=conflict_pairs(pairs),
        )

    async def metrics(self, *, now: float | None = None, window_s: float | None = None) -> MetricsReport:
        from agent_coord.engine.observe.metrics import history_start, report_from_totals

        now = self.ctx.now() if now is None else now
        window = self.settings.metrics_window_s if window_s is None else window_s
        totals = await self.store.metric_totals(now=now, window_s=window, holds_since=history_start(now, window))
        slot_count = max(1, len(await self.store.slots()))
        return report_from_totals(totals, now=now, window_s=window, slot_count=slot_count)


def alert_view(alert: Alert) -> AlertView:
    ref = alert.detail.get("rescue_ref")
    return AlertView(
        kind=alert.kind,  # type: ignore[arg-type]  # the kinds the evaluator writes
        severity=alert.severity,
        message=alert.message,
        worktree_id=alert.worktree_id,
        agent_id=alert.agent_id,
        rescue_ref=ref if isinstance(ref, str) else None,
        since=alert.raised_at,
    )


def _side_is(worktree_id: str) -> Callable[[SideInfo], bool]:
    return lambda side: side.worktree_id == worktree_id


async def _known_identity(store: Store, me: Identity) -> Identity:
    """A generated id is a hash of the agent process's wall-clock create time, which a step of the
    clock changes; a server restarted after one would come up under a new id and leave the agent's
    worktrees under the old one to go stale. So when this agent process (recognised by its start
    counted from boot) is already registered under a generated id, that id is kept."""
    if not me.id_generated or me.pid_start_s is None:
        return me
    known = [
        a
        for a in await store.agents()
        if (a.origin == "process" or (a.origin is None and a.id.startswith("agent-")))
        and a.pid_start_s is not None
        and same_agent_process(me, a)
    ]
    if not known:
        return me
    return replace(me, agent_id=max(known, key=lambda a: a.started_at).id)


async def id_taken(store: Store, me: Identity) -> str | None:
    """Why `me.agent_id` belongs to another agent (see `same_agent`) that is alive or holds worktrees,
    or None. One that is gone and holds nothing leaves its id free."""
    other = await store.agent(me.agent_id)
    if other is None or other.origin is None or same_agent(me, other):
        return None
    verdict = await anyio.to_thread.run_sync(lambda: judge(other, host=me.host, boot=me.boot_id))
    holds = [s.id for s in await store.slots() if s.owner == other.id and s.state in HELD_STATES]
    if not verdict.alive and not holds:
        return None
    what = f"holds {', '.join(holds)}" if holds else "is alive"
    return (
        f"agent id {me.agent_id} is taken by another agent ({other.origin} id, process {other.pid} on "
        f"{other.host}) that {what}; this {me.origin} id would make its worktrees ours. Set "
        "AGENT_COORD_AGENT_ID to an id of your own"
    )
