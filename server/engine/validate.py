"""Drift between the store and git: find it, and with repair=True fix what is safe to fix.

A dry run changes nothing (not even the event log). A repair pass converges: run it twice in a row
and the second run finds nothing. Locked worktrees are reported as skipped and never touched. Every
repair that touches a worktree goes through the reclaimer, which saves work to a rescue ref first.

Validation runs beside live agents (every server validates periodically), so it must not mistake a
transition in flight for drift:

* the store is read *before* git is listed: a slot row in a settled state (FREE, BUSY, QUARANTINED)
  only exists once its worktree does, so a settled row missing from the listing is really missing;
* ALLOCATING and RELEASING rows legitimately lack a worktree for a moment; they are only touched when
  provably stuck (owner dead or stale, its server gone, claimed by an earlier server of the agent,
  or older than any allocation may take);
* a worktree or directory the store does not know is looked at again, against a fresh read of the
  store, just before it is adopted or moved, because an allocation inserts its row before git runs;
* every change is a compare-and-swap on the version that was judged, so a row that moved on since
  is left alone.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from opentelemetry import trace

from .git import GitDriver, GitError, WorktreeInfo, WorktreeStatus
from .liveness import Identity, Liveness, judge, server_gone
from .lost_and_found import LOST_AND_FOUND, move_aside
from .models import Finding, ValidateResult
from .reclaim import REPAIRED_OUTCOMES, Reclaimer
from .records import HELD_STATES, Action, Agent, Repo, Slot, SlotState
from .repos import RepoResolver
from .store import EventDraft, Store

tracer = trace.get_tracer("agent-coord.validate")
RECLAIM_CONCURRENCY = 4
STATUS_CONCURRENCY = 8
TRANSIENT_STATES = (SlotState.ALLOCATING, SlotState.RELEASING)


@dataclass
class _Run:
    repair: bool
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Finding] = field(default_factory=list)
    # Owners judged not alive in this run, so that their agent rows can be marked after repair.
    gone: dict[str, tuple[Agent, Liveness]] = field(default_factory=dict)
    # Reclaims of slots that git still lists (dead owners, dirty free slots): each touches only its own
    # worktree, so they run together after the checks (RECLAIM_CONCURRENCY at a time).
    reclaims: list[tuple[Slot, Finding, str]] = field(default_factory=list)


class Validator:
    def __init__(
        self,
        store: Store,
        git: GitDriver,
        repos: RepoResolver,
        reclaimer: Reclaimer,
        identity: Identity,
        *,
        allocating_grace_s: float | None = None,
    ) -> None:
        self.store = store
        self.git = git
        self.repos = repos
        self.reclaimer = reclaimer
        self.identity = identity
        # An allocation gives up after its timeout and rolls itself back; an ALLOCATING row older than
        # this was abandoned (a cancelled or wedged server) even though its owner is alive.
        self.allocating_grace_s = allocating_grace_s

    async def validate(self, *, repair: bool, repo_arg: str | None = None) -> ValidateResult:
        started = time.monotonic()
        with tracer.start_as_current_span("validate") as span:
            span.set_attribute("validate.repair", repair)
            if repo_arg is not None:
                repos = [await self.repos.resolve(repo_arg)]
            else:
                repos = [r for r in await self.store.repos() if await anyio.Path(r.path).is_dir()]
            run = _Run(repair)
            for repo in repos:
                await self._repo(repo, run)
            if repair:
                await self._mark_gone_agents(run)
            findings = run.findings
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
            return ValidateResult(
                findings=findings, duration_ms=round(duration, 2), repaired=repaired, skipped=run.skipped
            )

    # ---- one repository -----------------------------------------------------------------------

    async def _repo(self, repo: Repo, run: _Run) -> None:
        repo_path = Path(repo.path)
        pool_root = Path(repo.pool_root)
        slots = await self.store.slots(repo.id)  # before git: see the module docstring
        try:
            worktrees = await self.git.worktrees(repo_path)
        except GitError as exc:
            run.findings.append(
                Finding(
                    kind="repository_unreadable",
                    path=repo.path,
                    detail=exc.reason,
                    action="none: fix the repository",
                )
            )
            return
        by_path = {_norm(w.path): w for w in worktrees}
        handled = await self._duplicates(repo, slots, by_path, run)

        for s in slots:
            if s.id in handled:
                continue
            info = by_path.get(_norm(s.path))
            if info is not None and info.locked:
                run.skipped.append(
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
            if s.state in TRANSIENT_STATES:
                await self._transient(s, run)
                continue
            exists = await anyio.Path(s.path).is_dir()
            if info is None or not exists or info.prunable:
                await self._missing(repo, s, info, exists, run)
                continue
            if s.state == SlotState.BUSY:
                await self._busy(s, info, slots, run)
        free = [s for s in slots if s.id not in handled and s.state == SlotState.FREE]
        await self._free_slots(repo, free, by_path, run)
        await self._reclaim_together(run)
        known = {_norm(s.path) for s in slots}
        untracked: list[WorktreeInfo] = []
        prunable: list[WorktreeInfo] = []
        for w in worktrees:
            if _norm(w.path) in known:
                continue
            if w.prunable:
                # Entries of slots are the slots' business (missing_worktree above); this one is nobody's.
                if not w.locked:
                    prunable.append(w)
                continue
            if _norm(str(Path(w.path).parent)) != _norm(str(pool_root)):
                continue  # the main worktree, and the user's own worktrees elsewhere
            if w.locked:
                run.skipped.append(
                    Finding(kind="locked_worktree", path=w.path, detail="locked, not in the store", action="left alone")
                )
                continue
            untracked.append(w)
        if untracked:
            # An allocation inserts its row before `git worktree add`: what the first read missed, a
            # second read (after the listing) has, unless the worktree really is unknown.
            later = {_norm(s.path) for s in await self.store.slots(repo.id)}
            for w in untracked:
                if _norm(w.path) not in later:
                    await self._untracked(repo, w, run)
        if prunable:
            await self._prunable(repo, prunable, run)
        await self._leftovers(repo, run)

    # ---- duplicates (only an old or hand-edited database can hold them) --------------------------

    async def _duplicates(self, repo: Repo, slots: list[Slot], by_path: dict[str, WorktreeInfo], run: _Run) -> set[str]:
        handled: set[str] = set()

        def git_agrees(s: Slot) -> bool:
            w = by_path.get(_norm(s.path))
            return w is not None and s.branch is not None and w.branch == s.branch

        by_key: dict[str, list[Slot]] = defaultdict(list)
        for s in slots:
            by_key[_norm(s.path)].append(s)
        for group in by_key.values():
            if len(group) < 2:
                continue
            # Keep the record a live allocation is most likely to be: held and agreeing with git.
            keep = max(group, key=lambda s: (s.state in HELD_STATES, git_agrees(s), -slots.index(s)))
            for s in group:
                if s is keep:
                    continue
                f = Finding(
                    kind="duplicate_path",
                    worktree_id=s.id,
                    path=s.path,
                    agent_id=s.owner,
                    detail=f"{s.id} records the same path as {keep.id}",
                    action=f"drop this record (the worktree stays, recorded as {keep.id})",
                )
                if run.repair:
                    f.repaired = await self._drop(s, f, repo, move_directory=False)
                run.findings.append(f)
                handled.add(s.id)

        by_branch: dict[str, list[Slot]] = defaultdict(list)
        for s in slots:
            if s.state in HELD_STATES and s.branch and s.id not in handled:
                by_branch[s.branch].append(s)
        for branch, holders in by_branch.items():
            if len(holders) < 2:
                continue
            keep = next((s for s in holders if git_agrees(s)), holders[0])
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
                if run.repair:
                    await self._reclaim(s, f, "duplicate branch record")
                run.findings.append(f)
                handled.add(s.id)
        return handled

    # ---- held slots ---------------------------------------------------------------------------

    async def _owner(self, owner_id: str | None, run: _Run) -> tuple[Agent | None, Liveness]:
        """The owner as it is *now*: a snapshot from the start of a long run would call a live agent
        stale whose heartbeat landed since."""
        agent = await self.store.agent(owner_id) if owner_id else None
        if agent is None:
            return None, Liveness(False, f"agent {owner_id} is not registered")
        verdict = judge(agent, host=self.identity.host, boot=self.identity.boot_id)
        if not verdict.alive:
            run.gone[agent.id] = (agent, verdict)
        return agent, verdict

    async def _busy(self, s: Slot, info: WorktreeInfo, slots: list[Slot], run: _Run) -> None:
        _, verdict = await self._owner(s.owner, run)
        if not verdict.alive:
            f = Finding(
                kind="stale_lease" if verdict.stale else "dead_agent",
                worktree_id=s.id,
                path=s.path,
                agent_id=s.owner,
                detail=verdict.reason,
                action="reclaim (work saved to a rescue ref first)",
            )
            if run.repair:
                run.reclaims.append((s, f, verdict.reason))
            run.findings.append(f)
            return
        if info.branch is not None and info.branch != s.branch:
            await self._branch_mismatch(s, info, slots, run)
        # A detached HEAD in a live agent's worktree is the agent's business (a rebase, a bisect): its
        # branch stays reserved for it, and nothing is reported.

    async def _transient(self, s: Slot, run: _Run) -> None:
        """ALLOCATING or RELEASING: a transition in flight, unless it provably can never finish."""
        agent, verdict = await self._owner(s.owner, run)
        reason = self._stuck_reason(s, agent, verdict)
        if reason is None:
            return
        f = Finding(
            kind="stuck_allocating" if s.state == SlotState.ALLOCATING else "stuck_releasing",
            worktree_id=s.id,
            path=s.path,
            agent_id=s.owner,
            detail=reason,
            action="roll back (work saved to a rescue ref first)",
        )
        if run.repair:
            await self._reclaim(s, f, reason)
        run.findings.append(f)

    def _stuck_reason(self, s: Slot, agent: Agent | None, verdict: Liveness) -> str | None:
        """Why a transition in flight can never finish, or None while it still may.

        The work of a transition is done by a server, not by the agent: what counts is whether the
        server that began it is still there (and, for a release, whether the row's lease still runs).
        """
        now = time.time()
        gone = server_gone(agent, host=self.identity.host, boot=self.identity.boot_id) if agent else None
        if s.state == SlotState.RELEASING:
            if s.lease_expires_at is not None and s.lease_expires_at < now:
                # Nothing renews a RELEASING row: a release or reclaim that outlived its lease was abandoned.
                return f"releasing since its lease lapsed {now - s.lease_expires_at:.0f}s ago"
            if gone is not None:
                return f"{gone}; the release it began can never finish"
            if agent is None and s.lease_expires_at is None:
                return verdict.reason
            # A live server finishing a release, or a reclaimer that is no agent (the CLI) under its lease.
            return None
        if agent is None or not verdict.alive:
            return verdict.reason  # the grant would go to a dead agent anyway
        if gone is not None:
            return f"{gone}; the allocation it began can never finish"
        if s.since is not None:
            if agent.started_at > s.since:
                return f"claimed before agent {agent.id} last registered; the server that claimed it is gone"
            if self.allocating_grace_s is not None and now - s.since > self.allocating_grace_s:
                return f"allocating for {now - s.since:.0f}s, longer than any allocation may take"
        return None

    async def _branch_mismatch(self, s: Slot, info: WorktreeInfo, slots: list[Slot], run: _Run) -> None:
        taken = any(o.id != s.id and o.branch == info.branch and o.state in HELD_STATES for o in slots)
        f = Finding(
            kind="branch_mismatch",
            worktree_id=s.id,
            path=s.path,
            agent_id=s.owner,
            detail=f"recorded branch {s.branch!r}, git has {info.branch!r}",
            action="record git's branch" if not taken else "none: that branch is recorded for another slot",
        )
        if run.repair and not taken:
            try:
                done = await self.store.transition(
                    s.id,
                    expect_state=SlotState.BUSY,
                    expect_version=s.version,
                    changes={"branch": info.branch},
                    events=[self._repair_event(s.repo_id, s.id, info.branch, kind="branch_mismatch", was=s.branch)],
                )
            except sqlite3.IntegrityError:  # another slot took that branch since we looked
                done = None
            f.repaired = done is not None
        run.findings.append(f)

    # ---- slots without a worktree -------------------------------------------------------------

    async def _missing(self, repo: Repo, s: Slot, info: WorktreeInfo | None, exists: bool, run: _Run) -> None:
        if s.owner:
            await self._owner(s.owner, run)  # only so that a gone owner is marked after the repair
        kind = "orphaned_allocation" if s.state == SlotState.BUSY else "missing_worktree"
        what = "directory" if not exists else "git worktree"
        f = Finding(
            kind=kind,
            worktree_id=s.id,
            path=s.path,
            agent_id=s.owner,
            detail=f"{s.state.value} slot has no {what}",
            action="drop the record and prune git's entry (anything git still holds is saved first)",
        )
        if run.repair:
            if info is not None and not await self._prune(repo):
                f.action = "none: what git holds of it could not be saved; left for a person"
                run.findings.append(f)
                return
            f.repaired = await self._drop(s, f, repo, move_directory=True)
        run.findings.append(f)

    async def _drop(self, s: Slot, f: Finding, repo: Repo, *, move_directory: bool) -> bool:
        gone = await self.store.transition(
            s.id,
            expect_state=s.state,
            expect_version=s.version,
            delete=True,
            events=[
                self._repair_event(s.repo_id, s.id, s.branch, kind=f.kind, previous_owner=s.owner, state=s.state.value)
            ],
        )
        path = Path(s.path)
        if gone is not None and move_directory and await anyio.Path(path).exists():
            others = {_norm(o.path) for o in await self.store.slots()}
            if _norm(str(path)) not in others:
                moved = await anyio.to_thread.run_sync(move_aside, path, Path(repo.pool_root))
                if moved is not None:
                    f.action += f"; its directory was moved to {moved}"
        return gone is not None

    # ---- free slots ---------------------------------------------------------------------------

    async def _free_slots(self, repo: Repo, free: list[Slot], by_path: dict[str, WorktreeInfo], run: _Run) -> None:
        statuses: dict[str, WorktreeStatus | None] = {}
        limiter = anyio.CapacityLimiter(STATUS_CONCURRENCY)

        async def probe(s: Slot) -> None:
            async with limiter:
                try:
                    statuses[s.id] = await self.git.status(Path(s.path), count_unsaved=False)
                except GitError:
                    statuses[s.id] = None

        async with anyio.create_task_group() as tg:
            for s in free:
                info = by_path.get(_norm(s.path))
                if info is not None and not info.locked and not info.prunable:
                    tg.start_soon(probe, s)
        # Commits only on a detached HEAD: one rev-list for the whole pool, not one per slot.
        detached = {sid: st.head for sid, st in statuses.items() if st and st.branch is None and st.head}
        try:
            unsaved = await self.git.heads_with_unsaved_commits(Path(repo.path), list(detached.values()))
        except GitError:
            unsaved = set(detached.values())  # cannot tell: treat as unsaved, so the reclaim saves them
        for sid, head in detached.items():
            st = statuses[sid]
            if st is not None and head in unsaved:
                statuses[sid] = dataclasses.replace(st, unsaved_commits=max(st.unsaved_commits, 1))
        suspects = [
            s
            for s in free
            if s.id in statuses and not ((st := statuses[s.id]) is not None and not st.dirty and st.branch is None)
        ]
        if not suspects:
            return
        # A slot claimed since the snapshot is being switched to its new branch right now: not drift.
        current = {c.id: c for c in await self.store.slots(repo.id)}
        for s in suspects:
            now_row = current.get(s.id)
            if now_row is None or now_row.state != SlotState.FREE or now_row.version != s.version:
                continue
            st = statuses[s.id]
            if st is not None and st.dirty:
                detail = "free slot has changes: " + ", ".join(c[3:] for c in st.changed[:5])
                if st.unsaved_commits:
                    detail += f" ({st.unsaved_commits} commit(s) only on its detached HEAD)"
            elif st is not None:
                detail = f"free slot has branch {st.branch!r} checked out"
            else:
                detail = "git status failed"
            f = Finding(
                kind="dirty_free_slot" if st is None or st.dirty else "free_not_detached",
                worktree_id=s.id,
                path=s.path,
                detail=detail,
                action="save any work to a rescue ref, then detach",
            )
            if run.repair:
                run.reclaims.append((s, f, detail))
            run.findings.append(f)

    # ---- worktrees and directories the store does not know ----------------------------------------

    async def _untracked(self, repo: Repo, w: WorktreeInfo, run: _Run) -> None:
        try:
            st: WorktreeStatus | None = await self.git.status(Path(w.path))
        except GitError as exc:
            st = None
            detail = exc.reason
        else:
            assert st is not None
            detail = "dirty" if st.dirty else "clean"
        clean = st is not None and not st.dirty
        f = Finding(
            kind="untracked_worktree",
            path=w.path,
            detail=f"git has a worktree under the pool root the store does not know ({detail})",
            action="adopt as FREE (detached)" if clean else "adopt as QUARANTINED (left as is for a person)",
        )
        if run.repair:
            state = SlotState.FREE if clean else SlotState.QUARANTINED
            try:
                if clean and st is not None and st.branch is not None:
                    await self.git.detach(Path(w.path))
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
            except (GitError, sqlite3.IntegrityError) as exc:  # a concurrent adoption or allocation won
                f.action += f": not done ({type(exc).__name__})"
            else:
                f.worktree_id = slot.id
                f.repaired = True
        run.findings.append(f)

    async def _prunable(self, repo: Repo, entries: list[WorktreeInfo], run: _Run) -> None:
        found = [
            Finding(
                kind="prunable_worktree",
                path=w.path,
                detail="git lists a worktree whose directory is gone",
                action="git worktree prune (a detached HEAD's own commits and a staged index are saved first)",
            )
            for w in entries
        ]
        if run.repair and await self._prune(repo):
            for f in found:
                f.repaired = True
        run.findings.extend(found)

    async def _prune(self, repo: Repo) -> bool:
        return (await self.reclaimer.prune(repo, "prunable git worktree entry")).pruned

    async def _leftovers(self, repo: Repo, run: _Run) -> None:
        root = Path(repo.pool_root)
        if not await anyio.Path(root).is_dir():
            return
        # List the directory first, then read the store and git: an allocation records its slot
        # before it creates the directory, so a directory being created right now is known by then.
        entries = await anyio.to_thread.run_sync(lambda: sorted(root.iterdir()))
        known = {_norm(s.path) for s in await self.store.slots()}
        try:
            known |= {_norm(w.path) for w in await self.git.worktrees(Path(repo.path))}
        except GitError:
            return
        for entry in entries:
            if entry.name.startswith(".") or _norm(str(entry)) in known:
                continue
            if not await anyio.Path(entry).exists() and not await anyio.Path(entry).is_symlink():
                continue  # removed since we listed it
            f = Finding(
                kind="leftover_directory",
                path=str(entry),
                detail="an entry under the pool root that is neither a slot nor a worktree",
                action=f"move it to {LOST_AND_FOUND}/ (nothing is deleted)",
            )
            if run.repair:
                moved = await anyio.to_thread.run_sync(move_aside, entry, root)
                f.repaired = moved is not None
                if moved is not None and moved != entry:
                    f.action = f"moved to {moved}"
                elif moved == entry:
                    f.action = "removed (it was an empty directory)"
                if moved is not None:
                    await self.store.log(
                        self._repair_event(repo.id, None, None, kind=f.kind, path=str(entry), moved_to=str(moved))
                    )
            run.findings.append(f)

    # ---- shared ----------------------------------------------------------------------------------

    def _repair_event(
        self, repo_id: int | None, worktree_id: str | None, branch: str | None, **detail: object
    ) -> EventDraft:
        return EventDraft(
            Action.REPAIR, "ok", self.identity.agent_id, repo_id, worktree_id, branch, detail=dict(detail)
        )

    async def _reclaim_together(self, run: _Run) -> None:
        """The deferred reclaims, concurrently: a repair of many dead agents' slots is git-bound."""
        jobs, run.reclaims = run.reclaims, []
        limiter = anyio.CapacityLimiter(RECLAIM_CONCURRENCY)

        async def one(s: Slot, f: Finding, reason: str) -> None:
            async with limiter:
                await self._reclaim(s, f, reason)

        async with anyio.create_task_group() as tg:
            for s, f, reason in jobs:
                tg.start_soon(one, s, f, reason)

    async def _reclaim(self, s: Slot, f: Finding, reason: str) -> None:
        outcome = await self.reclaimer.reclaim(s, reason)
        f.repaired = outcome in REPAIRED_OUTCOMES
        f.action = f"reclaimed: {outcome}"

    async def _mark_gone_agents(self, run: _Run) -> None:
        repaired = {f.agent_id for f in run.findings if f.repaired and f.agent_id}
        for agent_id in sorted(repaired & set(run.gone)):
            agent, verdict = run.gone[agent_id]
            status = "stale" if verdict.stale else "dead"
            if agent.status == status:
                continue
            await self.store.set_agent_status(
                agent_id,
                status,
                server_pid=None,
                event=EventDraft(
                    Action.AGENT_STALE if verdict.stale else Action.AGENT_DEAD,
                    "detected",
                    agent_id,
                    agent.repo_id,
                    detail={"reason": verdict.reason},
                ),
            )


def _norm(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path
