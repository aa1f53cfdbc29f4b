"""Drift between the store and git: find it, and with repair=True fix what is safe to fix.

A dry run changes nothing (not even the event log). A repair pass converges: run it twice in a row
and the second run finds nothing. Locked worktrees are reported as skipped and never touched.
"""

from __future__ import annotations

import shutil
import time
from collections import defaultdict
from pathlib import Path

import anyio
from opentelemetry import trace

from .git import GitDriver, GitError, WorktreeInfo, WorktreeStatus
from .liveness import Identity, judge
from .models import Finding, ValidateResult
from .reclaim import Reclaimer
from .records import HELD_STATES, Action, Agent, Repo, Slot, SlotState
from .repos import RepoResolver
from .store import EventDraft, Store

tracer = trace.get_tracer("agent-coord.validate")
LOST_AND_FOUND = ".lost+found"
STATUS_CONCURRENCY = 8


class Validator:
    def __init__(
        self, store: Store, git: GitDriver, repos: RepoResolver, reclaimer: Reclaimer, identity: Identity
    ) -> None:
        self.store = store
        self.git = git
        self.repos = repos
        self.reclaimer = reclaimer
        self.identity = identity

    async def validate(self, *, repair: bool, repo_arg: str | None = None) -> ValidateResult:
        started = time.monotonic()
        with tracer.start_as_current_span("validate") as span:
            span.set_attribute("validate.repair", repair)
            if repo_arg is not None:
                repos = [await self.repos.resolve(repo_arg)]
            else:
                repos = [r for r in await self.store.repos() if await anyio.Path(r.path).is_dir()]
            findings: list[Finding] = []
            skipped: list[Finding] = []
            agents = {a.id: a for a in await self.store.agents()}
            for repo in repos:
                await self._repo(repo, agents, repair, findings, skipped)
            if repair:
                await self._mark_dead_agents(agents, findings)
            duration = (time.monotonic() - started) * 1000
            repaired = sum(1 for f in findings if f.repaired)
            span.set_attribute("validate.findings", len(findings))
            if repair and findings:
                await self.store.log(
                    EventDraft(
                        Action.VALIDATE,
                        "repaired",
                        self.identity.agent_id,
                        None,
                        None,
                        None,
                        duration,
                        detail={
                            "findings": len(findings),
                            "repaired": repaired,
                            "kinds": sorted({f.kind for f in findings}),
                        },
                    )
                )
            return ValidateResult(findings=findings, duration_ms=round(duration, 2), repaired=repaired, skipped=skipped)

    async def _repo(
        self,
        repo: Repo,
        agents: dict[str, Agent],
        repair: bool,
        findings: list[Finding],
        skipped: list[Finding],
    ) -> None:
        repo_path = Path(repo.path)
        pool_root = Path(repo.pool_root)
        try:
            worktrees = await self.git.worktrees(repo_path)
        except GitError as exc:
            findings.append(
                Finding(
                    kind="repository_unreadable",
                    path=repo.path,
                    detail=exc.reason,
                    action="none: fix the repository",
                )
            )
            return
        by_path = {_norm(w.path): w for w in worktrees}
        slots = await self.store.slots(repo.id)
        host, boot = self.identity.host, self.identity.boot_id
        handled: set[str] = set()
        need_prune = False

        def add(f: Finding) -> None:
            findings.append(f)

        # The same path or branch recorded twice (only an old or hand-edited database can hold these).
        seen_paths: dict[str, Slot] = {}
        for s in slots:
            key = _norm(s.path)
            if key in seen_paths:
                f = Finding(
                    kind="duplicate_path",
                    worktree_id=s.id,
                    path=s.path,
                    agent_id=s.owner,
                    detail=f"{s.id} records the same path as {seen_paths[key].id}",
                    action="drop the later record",
                )
                if repair:
                    f.repaired = await self._drop(s, f, repo)
                add(f)
                handled.add(s.id)
            else:
                seen_paths[key] = s
        by_branch: dict[str, list[Slot]] = defaultdict(list)
        for s in slots:
            if s.state in HELD_STATES and s.branch and s.id not in handled:
                by_branch[s.branch].append(s)
        for branch, holders in by_branch.items():
            if len(holders) < 2:
                continue
            keep = next((s for s in holders if (w := by_path.get(_norm(s.path))) and w.branch == branch), holders[0])
            for s in holders:
                if s is keep:
                    continue
                f = Finding(
                    kind="duplicate_branch",
                    worktree_id=s.id,
                    path=s.path,
                    agent_id=s.owner,
                    detail=f"branch {branch!r} is also recorded for {keep.id}",
                    action="reclaim this one (work saved to a rescue ref)",
                )
                if repair:
                    outcome = await self.reclaimer.reclaim(s, "duplicate branch record")
                    f.repaired = outcome not in {"locked", "lost_race"}
                    f.action += f": {outcome}"
                add(f)
                handled.add(s.id)

        for s in slots:
            if s.id in handled:
                continue
            info = by_path.get(_norm(s.path))
            if info is not None and info.locked:
                skipped.append(
                    Finding(
                        kind="locked_worktree",
                        worktree_id=s.id,
                        path=s.path,
                        agent_id=s.owner,
                        detail=f"locked: {info.lock_reason or 'no reason given'}",
                        action="left alone",
                    )
                )
                continue
            exists = await anyio.Path(s.path).is_dir()
            if info is None or not exists or info.prunable:
                kind = "orphaned_allocation" if s.state in HELD_STATES else "missing_worktree"
                if s.state == SlotState.QUARANTINED:
                    kind = "missing_worktree"
                f = Finding(
                    kind=kind,
                    worktree_id=s.id,
                    path=s.path,
                    agent_id=s.owner,
                    detail=f"{s.state.value} slot has no {'directory' if not exists else 'git worktree'}",
                    action="drop the record and prune git's entry",
                )
                if repair:
                    f.repaired = await self._drop(s, f, repo)
                need_prune = True
                add(f)
                continue
            if s.state in HELD_STATES:
                owner = agents.get(s.owner or "")
                verdict = judge(owner, host=host, boot=boot) if owner else None
                if owner is None or not verdict or not verdict.alive:
                    reason = verdict.reason if verdict else f"agent {s.owner} is not registered"
                    if s.state == SlotState.BUSY:
                        kind = "stale_lease" if verdict and verdict.stale else "dead_agent"
                    else:
                        kind = "stuck_allocating" if s.state == SlotState.ALLOCATING else "stuck_releasing"
                    f = Finding(
                        kind=kind,
                        worktree_id=s.id,
                        path=s.path,
                        agent_id=s.owner,
                        detail=reason,
                        action="reclaim (work saved to a rescue ref first)",
                    )
                    if repair:
                        outcome = await self.reclaimer.reclaim(s, reason)
                        f.repaired = outcome not in {"locked", "lost_race"}
                        f.action = f"reclaimed: {outcome}"
                    add(f)
                    continue
                if s.state == SlotState.BUSY and info.branch != s.branch:
                    await self._branch_mismatch(s, info, slots, repair, add)
        await self._free_slots(
            repo,
            [s for s in slots if s.id not in handled and s.state == SlotState.FREE],
            by_path,
            repair,
            add,
        )
        known = {_norm(s.path) for s in slots}
        for w in worktrees:
            path = Path(w.path)
            if _norm(w.path) in known or _norm(str(path.parent)) != _norm(str(pool_root)):
                if w.prunable and _norm(w.path) not in known:
                    need_prune = True
                    f = Finding(
                        kind="prunable_worktree",
                        path=w.path,
                        detail="git lists a worktree that is gone",
                        action="git worktree prune",
                    )
                    f.repaired = repair
                    add(f)
                continue
            if w.locked:
                skipped.append(
                    Finding(
                        kind="locked_worktree",
                        path=w.path,
                        detail="locked, not in the store",
                        action="left alone",
                    )
                )
                continue
            if w.prunable:
                need_prune = True
                f = Finding(
                    kind="prunable_worktree",
                    path=w.path,
                    detail="git lists a worktree that is gone",
                    action="git worktree prune",
                )
                f.repaired = repair
                add(f)
                continue
            await self._untracked(repo, w, repair, add)
        if need_prune and repair:
            await self.git.worktree_prune(repo_path)
        await self._leftovers(repo, slots, worktrees, repair, add)

    async def _branch_mismatch(self, s: Slot, info: WorktreeInfo, slots: list[Slot], repair: bool, add) -> None:  # type: ignore[no-untyped-def]
        taken = info.branch is not None and any(
            o.id != s.id and o.branch == info.branch and o.state in HELD_STATES for o in slots
        )
        f = Finding(
            kind="branch_mismatch",
            worktree_id=s.id,
            path=s.path,
            agent_id=s.owner,
            detail=f"recorded branch {s.branch!r}, git has {info.branch or 'a detached HEAD'}",
            action="record git's branch" if not taken else "none: that branch is recorded elsewhere",
        )
        if repair and not taken:
            done = await self.store.transition(
                s.id,
                expect_state=SlotState.BUSY,
                expect_version=s.version,
                changes={"branch": info.branch},
                events=[
                    EventDraft(
                        Action.REPAIR,
                        "ok",
                        self.identity.agent_id,
                        s.repo_id,
                        s.id,
                        info.branch,
                        detail={"kind": "branch_mismatch", "was": s.branch},
                    )
                ],
            )
            f.repaired = done is not None
        add(f)

    async def _free_slots(
        self, repo: Repo, free: list[Slot], by_path: dict[str, WorktreeInfo], repair: bool, add
    ) -> None:  # type: ignore[no-untyped-def]
        statuses: dict[str, WorktreeStatus | None] = {}
        limiter = anyio.CapacityLimiter(STATUS_CONCURRENCY)

        async def probe(s: Slot) -> None:
            async with limiter:
                try:
                    statuses[s.id] = await self.git.status(Path(s.path))
                except GitError:
                    statuses[s.id] = None

        async with anyio.create_task_group() as tg:
            for s in free:
                if (info := by_path.get(_norm(s.path))) is not None and not info.locked:
                    tg.start_soon(probe, s)
        for s in free:
            st = statuses.get(s.id)
            if s.id not in statuses:
                continue
            if st is not None and not st.dirty and st.branch is None:
                continue
            detail = (
                ("free slot has changes: " + ", ".join(c[3:] for c in st.changed[:5]))
                if st and st.dirty
                else (f"free slot has branch {st.branch!r} checked out" if st else "git status failed")
            )
            f = Finding(
                kind="dirty_free_slot" if st and st.dirty else "free_not_detached",
                worktree_id=s.id,
                path=s.path,
                detail=detail,
                action="save any work to a rescue ref, then detach",
            )
            if repair:
                outcome = await self.reclaimer.reclaim(s, detail)
                f.repaired = outcome not in {"locked", "lost_race"}
                f.action = f"reclaimed: {outcome}"
            add(f)

    async def _untracked(self, repo: Repo, w: WorktreeInfo, repair: bool, add) -> None:  # type: ignore[no-untyped-def]
        try:
            st = await self.git.status(Path(w.path))
        except GitError as exc:
            st = None
            detail = exc.reason
        else:
            detail = "dirty" if st.dirty else "clean"
        clean = st is not None and not st.dirty
        f = Finding(
            kind="untracked_worktree",
            path=w.path,
            detail=f"git has a worktree under the pool root the store does not know ({detail})",
            action="adopt as FREE" if clean else "adopt as QUARANTINED",
        )
        if repair:
            if clean and st is not None and st.branch is not None:
                await self.git.detach(Path(w.path))
            state = SlotState.FREE if clean else SlotState.QUARANTINED
            slot = await self.store.insert_slot(
                repo,
                _norm(w.path),
                state=state,
                branch=None if clean else w.branch,
                event=EventDraft(
                    Action.ADOPT,
                    state.value,
                    self.identity.agent_id,
                    repo.id,
                    None,
                    w.branch,
                    detail={"path": w.path, "source": "validate"},
                ),
            )
            f.worktree_id = slot.id
            f.repaired = True
        add(f)

    async def _leftovers(self, repo: Repo, slots: list[Slot], worktrees: list[WorktreeInfo], repair: bool, add) -> None:  # type: ignore[no-untyped-def]
        root = Path(repo.pool_root)
        if not await anyio.Path(root).is_dir():
            return
        known = {_norm(s.path) for s in slots} | {_norm(w.path) for w in worktrees}
        for entry in await anyio.to_thread.run_sync(lambda: sorted(root.iterdir())):
            if entry.name.startswith(".") or _norm(str(entry)) in known:
                continue
            f = Finding(
                kind="leftover_directory",
                path=str(entry),
                detail="a directory under the pool root that is neither a slot nor a worktree",
                action=f"move it to {LOST_AND_FOUND}/ (nothing is deleted)",
            )
            if repair:
                f.repaired = await anyio.to_thread.run_sync(_move_aside, entry, root)
            add(f)

    async def _drop(self, s: Slot, f: Finding, repo: Repo) -> bool:
        gone = await self.store.transition(
            s.id,
            expect_state=s.state,
            expect_version=s.version,
            delete=True,
            events=[
                EventDraft(
                    Action.REPAIR,
                    "ok",
                    self.identity.agent_id,
                    s.repo_id,
                    s.id,
                    s.branch,
                    detail={"kind": f.kind, "previous_owner": s.owner, "state": s.state.value},
                )
            ],
        )
        path = Path(s.path)
        if (
            gone is not None
            and await anyio.Path(path).exists()
            and not any(_norm(str(path)) == _norm(o.path) for o in await self.store.slots(repo.id))
        ):
            await anyio.to_thread.run_sync(_move_aside, path, Path(repo.pool_root))
        return gone is not None

    async def _mark_dead_agents(self, agents: dict[str, Agent], findings: list[Finding]) -> None:
        reported = {f.agent_id for f in findings if f.kind in {"dead_agent", "stale_lease"} and f.repaired}
        for agent_id in sorted(a for a in reported if a):
            agent = agents.get(agent_id)
            if agent is None or agent.status in {"dead", "stale"}:
                continue
            verdict = judge(agent, host=self.identity.host, boot=self.identity.boot_id)
            action = Action.AGENT_STALE if verdict.stale else Action.AGENT_DEAD
            await self.store.set_agent_status(
                agent_id,
                "stale" if verdict.stale else "dead",
                server_pid=None,
                event=EventDraft(action, "detected", agent_id, agent.repo_id, detail={"reason": verdict.reason}),
            )


def _norm(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def _move_aside(entry: Path, root: Path) -> bool:
    try:
        if entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()):
            entry.rmdir()
            return True
        target_dir = root / LOST_AND_FOUND
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{entry.name}-{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6}"
        shutil.move(str(entry), str(target))
        return True
    except OSError:
        return False
