"""Held slots whose worktree git lists: BUSY ones (is the owner alive, does git agree on the branch),
and transitions in flight (ALLOCATING, RELEASING), which are left alone unless they provably can
never finish."""

from __future__ import annotations

import sqlite3
import time

from agent_coord.engine.git.driver import WorktreeInfo
from agent_coord.engine.liveness.judge import Liveness, server_gone, worker_gone
from agent_coord.engine.store.records import HELD_STATES, Agent, Slot, SlotState, SlotWorker
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun, slot_finding

TRANSIENT_STATES = (SlotState.ALLOCATING, SlotState.RELEASING)


async def check_busy(ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot, info: WorktreeInfo) -> None:
    _, verdict = await ck.owner(s.owner, run)
    if not verdict.alive:
        f = slot_finding(
            s,
            kind="stale_lease" if verdict.stale else "dead_agent",
            detail=verdict.reason,
            action="reclaim (work saved to a rescue ref first)",
        )
        if run.repair:
            rp.reclaims.append((s, f, verdict.reason))
        run.findings.append(f)
        return
    if info.branch is not None and info.branch != s.branch:
        await _branch_mismatch(ck, run, rp, s, info)
    # A detached HEAD in a live agent's worktree is the agent's business (a rebase, a bisect): its
    # branch stays reserved for it, and nothing is reported.


async def _branch_mismatch(ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot, info: WorktreeInfo) -> None:
    taken = any(o.id != s.id and o.branch == info.branch and o.state in HELD_STATES for o in rp.slots)
    f = slot_finding(
        s,
        kind="branch_mismatch",
        detail=f"recorded branch {s.branch!r}, git has {info.branch!r}",
        action="record git's branch" if not taken else "none: that branch is recorded for another slot",
    )
    if run.repair and not taken:
        try:
            done = await ck.store.transition(
                s.id,
                expect_state=SlotState.BUSY,
                expect_version=s.version,
                changes={"branch": info.branch},
                events=[ck.repair_event(s.repo_id, s.id, info.branch, kind="branch_mismatch", was=s.branch)],
            )
        except sqlite3.IntegrityError:  # another slot took that branch since we looked
            done = None
        f.repaired = done is not None
    run.findings.append(f)


async def check_in_flight(ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot) -> None:
    """ALLOCATING or RELEASING: a transition in flight, unless it provably can never finish."""
    agent, verdict = await ck.owner(s.owner, run)
    worker = await ck.store.worker(s)
    reason = stuck_reason(ck, s, agent, verdict, worker)
    if reason is None:
        return
    f = slot_finding(
        s,
        kind="stuck_allocating" if s.state == SlotState.ALLOCATING else "stuck_releasing",
        detail=reason,
        action="roll back (work saved to a rescue ref first)",
    )
    if run.repair:
        await ck.reclaim(s, f, reason, rp.listing)
    run.findings.append(f)


# The process doing a transition records itself right after its compare-and-swap, in a transaction of
# its own; a transition marked this recently without that record may be about to get it.
UNRECORDED_GRACE_S = 10.0


def stuck_reason(ck: Checker, s: Slot, agent: Agent | None, verdict: Liveness, worker: SlotWorker | None) -> str | None:
    """Why a transition in flight can never finish, or None while it still may.

    The work of a transition is done by one process, not by the agent (a Claude Code session's hooks,
    its server and the hook host all act for one agent): what counts is whether the process recorded
    doing it (`worker`) is still there, and, for a release, whether the row's lease still runs. A
    transition whose process has not recorded itself is left alone for `UNRECORDED_GRACE_S`; after
    that (an earlier version's, or its process killed before recording), or one marked before the
    marks existed, is judged by the server its agent last registered with.
    """
    now = time.time()
    host, boot = ck.identity.host, ck.identity.boot_id
    pending = worker is not None and worker.process is None and worker.age_s < UNRECORDED_GRACE_S
    if worker is not None and worker.process is not None:
        gone = worker_gone(worker, host=host, boot=boot)
    else:
        gone = server_gone(agent, host=host, boot=boot) if agent else None
    if s.state == SlotState.RELEASING:
        if s.lease_expires_at is not None and s.lease_expires_at < now:
            # Nothing renews a RELEASING row: a release or reclaim that outlived its lease was abandoned.
            return f"releasing since its lease lapsed {now - s.lease_expires_at:.0f}s ago"
        if pending:
            return None
        if gone is not None:
            return f"{gone}; the release it began can never finish"
        if agent is None and s.lease_expires_at is None:
            return verdict.reason
        # A live server finishing a release, or a reclaimer that is no agent (the CLI) under its lease.
        return None
    if agent is None or not verdict.alive:
        return verdict.reason  # the grant would go to a dead agent anyway
    if pending:
        return None
    if gone is not None:
        return f"{gone}; the allocation it began can never finish"
    if s.since is not None:
        if (worker is None or worker.process is None) and agent.started_at > s.since:
            return f"claimed before agent {agent.id} last registered; the server that claimed it is gone"
        if ck.allocating_grace_s is not None and now - s.since > ck.allocating_grace_s:
            return f"allocating for {now - s.since:.0f}s, longer than any allocation may take"
    return None
