"""How contended is the machine right now, and where is the user's attention?

Three sources, each optional but the first: the store (live agents on the repository), the process
table (agent processes on this host, cached ≤ 2 s), and ManicTime (which window has focus, is the
user active). The level compared with the threshold is max(live agents, agent processes): processes
of agents not registered with us still compete for the same disk and CPU.

The level only chooses a strategy, so each agent's liveness verdict is kept for up to a second
(`VERDICT_TTL_S`), for as long as its row is unchanged: with 16 agents allocating, judging every
other agent's processes at every allocation was a fifth of an allocation's own CPU. Reclamation
never reads these verdicts; it judges afresh (engine/reclaim).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import anyio

from agent_coord.engine.contention.manictime import ManicTimeReader
from agent_coord.engine.contention.processes import ProcessScanner
from agent_coord.engine.contention.window_match import DEFAULT_AGENT_EXECUTABLES, AgentWindowKey, WindowMatchRules
from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.liveness.judge import judge
from agent_coord.engine.models import Contention, ContentionSource
from agent_coord.engine.store.records import HELD_STATES, Agent, Repo, Slot

VERDICT_TTL_S = 1.0


class ContentionMonitor(OverEngine):
    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        settings = ctx.settings
        self.processes = ProcessScanner(settings.agent_process_patterns)
        rules = WindowMatchRules(
            match_worktree_path="worktree_path" in settings.focus_match,
            match_branch="branch" in settings.focus_match,
            match_agent_id="agent_id" in settings.focus_match,
            known_agent_executables=(
                frozenset(p.casefold() for p in settings.focus_programs)
                if settings.focus_programs
                else DEFAULT_AGENT_EXECUTABLES
            ),
        )
        self.manictime = ManicTimeReader(settings.manictime_db, lag_tolerance_s=settings.manictime_lag_s, rules=rules)
        self._verdicts: dict[Agent, tuple[float, bool]] = {}  # an agent row → (judged at, alive)

    async def snapshot(self, repo: Repo | None, slots: list[Slot] | None = None) -> Contention:
        """The contention now; `slots`: the repository's slots, when the caller has just read them."""
        started = time.monotonic()
        # Ended sessions are never read, and the process table is asked off the event loop.
        agents = await self.store.live_agents()
        if slots is None:
            slots = await self.store.slots(repo.id if repo else None)
        holders = {s.owner for s in slots if s.state in HELD_STATES and s.owner}
        candidates = [
            agent
            for agent in agents
            if (repo is None or agent.repo_id == repo.id or agent.id in holders)
            and agent.status not in {"dead", "stale", "disconnected"}
        ]
        live = [agent.id for agent in candidates if await self._alive(candidates, agent)]
        sources = [ContentionSource(name="store", used=True, age_s=round(time.monotonic() - started, 4))]

        scan = await self.processes.scan_async()
        procs: int | None = scan.count if scan.error is None else None
        sources.append(
            ContentionSource(name="processes", used=scan.error is None, age_s=round(scan.age_s, 3), reason=scan.error)
        )

        keys = []
        for s in slots:
            if s.owner and s.state in HELD_STATES:
                keys.append(AgentWindowKey(agent_id=s.owner, worktree_path=s.path, branch=s.branch))
        if not any(k.agent_id == self.identity.agent_id for k in keys):
            keys.append(AgentWindowKey(agent_id=self.identity.agent_id, worktree_path=None, branch=None))
        view = await self.manictime.read_async(datetime.now(UTC), keys)
        focused_window = None
        if view.available and view.focused_app is not None:
            focused_window = view.focused_app.window_title
        sources.append(
            ContentionSource(
                name="manictime", used=view.available, age_s=round(view.read_ms / 1000, 4), reason=view.reason
            )
        )
        level = max(len(live), procs or 0)
        return Contention(
            level=level,
            threshold=self.settings.contention_threshold,
            live_agents=len(live),
            agent_processes=procs,
            focused_agent=view.focused_agent_id,
            caller_focused=view.focused_agent_id == self.identity.agent_id,
            user_presence=view.presence,
            focused_window=focused_window,
            sources=sources,
        )

    async def _alive(self, candidates: list[Agent], agent: Agent) -> bool:
        """`agent`'s verdict, judged at most `VERDICT_TTL_S` ago for this very row; the first stale one
        has every stale candidate judged in one worker thread."""
        now = time.monotonic()
        kept = self._verdicts.get(agent)
        if kept is None or now - kept[0] > VERDICT_TTL_S:
            stale = [a for a in candidates if (k := self._verdicts.get(a)) is None or now - k[0] > VERDICT_TTL_S]
            host, boot = self.identity.host, self.identity.boot_id
            verdicts = await anyio.to_thread.run_sync(lambda: [judge(a, host=host, boot=boot).alive for a in stale])
            # Rows no longer live drop out here, so the map stays the size of the live set.
            self._verdicts = {a: v for a, v in self._verdicts.items() if now - v[0] <= VERDICT_TTL_S}
            self._verdicts.update((a, (now, alive)) for a, alive in zip(stale, verdicts, strict=True))
            kept = self._verdicts[agent]
        return kept[1]
