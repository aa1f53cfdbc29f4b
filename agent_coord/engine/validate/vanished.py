"""Worktrees whose directory is gone: settled slots without a worktree, and git entries (prunable)
nobody records. One repair prunes once per repository, after saving what git still holds of every
vanished worktree (a detached HEAD's own commits, a staged index), then drops the slots' records."""

from __future__ import annotations

from pathlib import Path

import anyio

from agent_coord.engine.git.driver import WorktreeInfo
from agent_coord.engine.git.worktree_listing import real_paths
from agent_coord.engine.git.worktree_probe import scan_admin_dirs
from agent_coord.engine.models import Finding
from agent_coord.engine.reclaim.safe_prune import PruneResult
from agent_coord.engine.store.records import Slot, SlotState
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun, slot_finding

PRUNE_REASON = "prunable git worktree entry"


async def note_missing(
    ck: Checker, run: ValidationRun, rp: RepoPass, s: Slot, info: WorktreeInfo | None, exists: bool
) -> None:
    """A settled slot whose directory or git entry is gone; repaired later by `repair_vanished`."""
    if s.owner:
        await ck.owner(s.owner, run)  # only so that a gone owner is marked after the repair
    f = slot_finding(
        s,
        kind="orphaned_allocation" if s.state == SlotState.BUSY else "missing_worktree",
        detail=f"{s.state.value} slot has no {'directory' if not exists else 'git worktree'}",
        action="drop the record and prune git's entry (anything git still holds is saved first)",
    )
    if run.repair:
        rp.missing.append((s, info, f))
    run.findings.append(f)


def prunable_findings(entries: list[WorktreeInfo]) -> list[Finding]:
    return [
        Finding(
            kind="prunable_worktree",
            path=w.path,
            detail="git lists a worktree whose directory is gone",
            action="git worktree prune (a detached HEAD's own commits and a staged index are saved first)",
        )
        for w in entries
    ]


async def repair_vanished(ck: Checker, run: ValidationRun, rp: RepoPass, prunable: list[Finding]) -> None:
    """One prune for the pass (it removes every vanished entry at once), then drop the missing slots."""
    if not run.repair:
        return
    result: PruneResult | None = None
    if prunable or any(info is not None for _, info, _ in rp.missing):
        result = await ck.reclaimer.prune(rp.repo, PRUNE_REASON, rp.listing)
        rp.pruned = result.pruned
    reals = await real_paths([*(f.path for f in prunable if f.path), *(i.path for _, i, _ in rp.missing if i)])
    unsaved = "none: what git holds of it could not be saved; left for a person"
    for f in prunable:
        f.repaired = result is not None and f.path is not None and result.settled(reals[f.path])
        if not f.repaired:
            f.action = unsaved
    missing, rp.missing = rp.missing, []
    for s, info, f in missing:
        if info is not None and (result is None or not result.settled(reals[info.path])):
            f.action = unsaved
            continue
        f.repaired = await ck.drop(s, f, rp.repo, move_directory=True)


async def note_orphaned_entries(run: ValidationRun, common_dir: Path) -> None:
    """Git entries (`.git/worktrees/<name>`) with no readable `gitdir` file: `git worktree list` does
    not show them and `git worktree prune` would delete them, index and all. Nothing says whose work
    their index or HEAD holds, so the pruner keeps them (docs/decisions.md); a person is told here."""
    for entry in await anyio.to_thread.run_sync(scan_admin_dirs, common_dir):
        if entry.worktree is None:
            run.skipped.append(
                Finding(
                    kind="orphaned_worktree_entry",
                    path=str(entry.path),
                    detail="git's worktree entry has no readable gitdir file, so no worktree claims it; "
                    "its index and HEAD may still hold staged work or commits",
                    action="left for a person: look inside, then remove the directory or run git worktree prune",
                )
            )
