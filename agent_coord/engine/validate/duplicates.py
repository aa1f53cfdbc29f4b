"""Two records of one path, or two live records of one branch. The database refuses both now (unique
indexes); only an old or hand-edited database can hold them."""

from __future__ import annotations

from collections import defaultdict

from agent_coord.engine.store.records import HELD_STATES, Slot
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun, slot_finding


async def check_duplicates(ck: Checker, run: ValidationRun, rp: RepoPass) -> set[str]:
    """Report (and with repair, resolve) duplicates; return the ids of the records handled here."""
    handled: set[str] = set()
    slots = rp.slots

    def git_agrees(s: Slot) -> bool:
        w = rp.info(s)
        return w is not None and s.branch is not None and w.branch == s.branch

    by_key: dict[str, list[Slot]] = defaultdict(list)
    for s in slots:
        by_key[rp.real[s.path]].append(s)
    for group in by_key.values():
        if len(group) < 2:
            continue
        # Keep the record a live allocation is most likely to be: held and agreeing with git.
        keep = max(group, key=lambda s: (s.state in HELD_STATES, git_agrees(s), -slots.index(s)))
        for s in group:
            if s is keep:
                continue
            f = slot_finding(
                s,
                kind="duplicate_path",
                detail=f"{s.id} records the same path as {keep.id}",
                action=f"drop this record (the worktree stays, recorded as {keep.id})",
            )
            if run.repair:
                f.repaired = await ck.drop(s, f, rp.repo, move_directory=False)
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
            f = slot_finding(
                s,
                kind="duplicate_branch",
                detail=f"branch {branch!r} is also recorded for {keep.id}",
                action="reclaim this one (work saved to a rescue ref)",
            )
            if run.repair:
                await ck.reclaim(s, f, "duplicate branch record", rp.listing)
            run.findings.append(f)
            handled.add(s.id)
    return handled
