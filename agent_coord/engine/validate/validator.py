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

Git is listed once per repository and pass (`git worktree list`); the checks, the reclaims and the
prune of that pass all use that one listing, each checking on disk what it acts on (see `reclaim`,
`safe_prune`, `validate_unknown`). The checks themselves live in the `validate_*` modules.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from opentelemetry import trace

from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.git.driver import GitError
from agent_coord.engine.git.worktree_listing import WorktreeListing
from agent_coord.engine.git.worktree_probe import GIT_ADD_MARKER
from agent_coord.engine.models import Finding, ValidateResult
from agent_coord.engine.reclaim.reclaimer import Reclaimer
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import Action, Repo, SlotState, of_this_host
from agent_coord.engine.validate.confined import check_confined, pool_root_refused
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun
from agent_coord.engine.validate.duplicates import check_duplicates
from agent_coord.engine.validate.free import check_free_slots
from agent_coord.engine.validate.git_states import (
    check_free_operation,
    heal_quarantined,
    note_busy_operation,
    note_moved,
)
from agent_coord.engine.validate.held import TRANSIENT_STATES, check_busy, check_in_flight
from agent_coord.engine.validate.unknown import adopt_untracked, check_leftovers, sort_unknown
from agent_coord.engine.validate.vanished import note_missing, note_orphaned_entries, prunable_findings, repair_vanished

tracer = trace.get_tracer("agent-coord.validate")


class Validator(OverEngine):
    def __init__(self, ctx: EngineContext, reclaimer: Reclaimer, *, allocating_grace_s: float | None = None) -> None:
        super().__init__(ctx)
        self.reclaimer = reclaimer
        self.checker = Checker(ctx, reclaimer, allocating_grace_s)

    async def validate(self, *, repair: bool, repo_arg: str | None = None) -> ValidateResult:
        started = time.monotonic()
        with tracer.start_as_current_span("validate") as span:
            span.set_attribute("validate.repair", repair)
            if repo_arg is not None:
                repos = [await self.repos.resolve(repo_arg)]
            else:
                # Only this host's clones: another host's directories are that host's to touch.
                host, shared = self.identity.host, self.store.postgres
                repos = [
                    r
                    for r in await self.store.repos()
                    if of_this_host(r.host, host, shared=shared) and await anyio.Path(r.path).is_dir()
                ]
            run = ValidationRun(repair)
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
                        agent_id=self.identity.agent_id,
                        duration_ms=duration,
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

    async def _repo(self, repo: Repo, run: ValidationRun) -> None:
        ck = self.checker
        slots = await self.store.slots(repo.id)  # before git: see the module docstring
        try:
            listing = await WorktreeListing.read(self.git, Path(repo.path))
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
        rp = await RepoPass.start(repo, slots, listing)
        if await pool_root_refused(run, rp):
            return
        handled = await check_duplicates(ck, run, rp)
        for s in slots:
            if s.id in handled:
                continue
            if await check_confined(ck, run, rp, s):
                handled.add(s.id)
                continue
            info = rp.info(s)
            # git's own lock of a `worktree add` in flight is not a person's: the allocation is judged
            # like any other in flight, and its roll-back removes the lock if the add was killed.
            adding = s.state == SlotState.ALLOCATING and info is not None and info.lock_reason == GIT_ADD_MARKER
            if info is not None and info.locked and not adding:
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
                await check_in_flight(ck, run, rp, s)
                continue
            exists = await anyio.Path(s.path).is_dir()
            if info is None and not exists and note_moved(run, rp, s):
                continue  # the record stays: its owner's release moves the worktree back
            if info is None or not exists or info.prunable:
                await note_missing(ck, run, rp, s, info, exists)
                continue
            if s.state == SlotState.BUSY:
                await check_busy(ck, run, rp, s, info)
                await note_busy_operation(run, s)
            elif s.state == SlotState.FREE and await check_free_operation(ck, run, rp, s):
                handled.add(s.id)
            elif s.state == SlotState.QUARANTINED:
                await heal_quarantined(ck, run, rp, s)
        free = [s for s in slots if s.id not in handled and s.state == SlotState.FREE]
        await check_free_slots(ck, run, rp, free)
        await note_orphaned_entries(run, repo.git_dir)
        await ck.reclaim_deferred(rp)
        untracked, prunable = await sort_unknown(run, rp)
        await adopt_untracked(ck, run, rp, untracked)
        found = prunable_findings(prunable)
        run.findings.extend(found)
        await repair_vanished(ck, run, rp, found)
        await check_leftovers(ck, run, rp)

    async def _mark_gone_agents(self, run: ValidationRun) -> None:
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
                    agent_id=agent_id,
                    repo_id=agent.repo_id,
                    detail={"reason": verdict.reason},
                ),
            )
