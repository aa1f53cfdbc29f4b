"""What git or the pool root holds that the store does not know: worktrees under the pool root (adopted)
and entries that are neither slot nor worktree (moved to `.lost+found`, never deleted).

An allocation inserts its row before git or the file system sees its worktree, so what looks unknown
is looked at again, against a fresh read of the store, just before it is adopted or moved.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import pool_root_is_marked
from agent_coord.engine.git.driver import GitError, WorktreeInfo, WorktreeStatus
from agent_coord.engine.git.worktree_listing import WorktreeListing, real_path, real_paths
from agent_coord.engine.models import Finding
from agent_coord.engine.reclaim.lost_and_found import LOST_AND_FOUND, move_aside
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import Action, SlotState
from agent_coord.engine.validate.context import Checker, RepoPass, ValidationRun


async def sort_unknown(run: ValidationRun, rp: RepoPass) -> tuple[list[WorktreeInfo], list[WorktreeInfo]]:
    """(worktrees under the pool root the store does not know, prunable entries nobody records)."""
    known = set(rp.real.values())
    pool_root = (await real_paths([rp.repo.pool_root]))[rp.repo.pool_root]
    untracked: list[WorktreeInfo] = []
    prunable: list[WorktreeInfo] = []
    for path, w in rp.listing.by_path.items():
        if path in known:
            continue
        if w.prunable:
            # Entries of slots are the slots' business (missing_worktree); this one is nobody's.
            if not w.locked:
                prunable.append(w)
            continue
        if str(Path(path).parent) != pool_root:
            continue  # the main worktree, and the user's own worktrees elsewhere
        if w.locked:
            run.skipped.append(
                Finding(kind="locked_worktree", path=w.path, detail="locked, not in the store", action="left alone")
            )
            continue
        untracked.append(w)
    return untracked, prunable


async def adopt_untracked(ck: Checker, run: ValidationRun, rp: RepoPass, untracked: list[WorktreeInfo]) -> None:
    if not untracked:
        return
    assert rp.bounds is not None
    if not await anyio.to_thread.run_sync(pool_root_is_marked, rp.bounds):
        # A person's own worktrees in a folder agent-coord did not make: theirs until they import them.
        run.skipped.extend(
            Finding(
                kind="untracked_worktree",
                path=w.path,
                detail="a worktree of this repository in a pool root agent-coord did not make",
                action="left alone (agent-coord import-pool adopts it)",
            )
            for w in untracked
        )
        return
    # An allocation inserts its row before `git worktree add`: what the first read missed, a second read
    # (after the listing) has, unless the worktree really is unknown.
    later = await ck.store.slots(rp.repo.id)
    later_paths = set((await real_paths(s.path for s in later)).values())
    unknown = await real_paths(w.path for w in untracked)
    for w in untracked:
        if unknown[w.path] not in later_paths:
            await _adopt(ck, run, rp, w)


async def _adopt(ck: Checker, run: ValidationRun, rp: RepoPass, w: WorktreeInfo) -> None:
    try:
        st: WorktreeStatus | None = await ck.git.status(rp.slot_dir(w.path))
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
                await ck.git.detach(rp.slot_dir(w.path))
            slot = await ck.store.insert_slot(
                rp.repo,
                (await real_paths([w.path]))[w.path],
                state=state,
                branch=None if clean else w.branch,
                event=EventDraft(
                    Action.ADOPT,
                    state.value,
                    agent_id=ck.identity.agent_id,
                    repo_id=rp.repo.id,
                    branch=w.branch,
                    detail={"path": w.path, "source": "validate"},
                ),
            )
        except (GitError, sqlite3.IntegrityError) as exc:  # a concurrent adoption or allocation won
            f.action += f": not done ({type(exc).__name__})"
        else:
            f.worktree_id = slot.id
            f.repaired = True
    run.findings.append(f)


async def check_leftovers(ck: Checker, run: ValidationRun, rp: RepoPass) -> None:
    root = rp.pool_root
    if not await anyio.Path(root).is_dir():
        return
    # List the directory first, then read the store: an allocation records its slot before it creates
    # the directory, so a directory being created right now is known by then.
    try:
        entries = await anyio.to_thread.run_sync(lambda: sorted(root.iterdir()))
    except OSError as exc:
        run.findings.append(
            Finding(
                kind="pool_root_unreadable",
                path=str(root),
                detail=f"the pool root cannot be listed ({exc.strerror or exc}); leftovers in it go unnoticed",
                action="a person: give this user read and execute permission on it (chmod u+rx)",
            )
        )
        return
    slots = await ck.store.slots()
    # Git's side comes from the pass's listing, minus what this pass pruned. That listing is older than
    # the directory listing above, so a worktree someone added by hand since would look unknown. Every
    # worktree git lists has a `.git` in its directory except a prunable one (whose directory lost it),
    # so an unknown entry holding a `.git` sends us to git for a fresh listing before it is moved. What
    # is left is an entry without `.git` that git began to list after our listing: moving it aside
    # deletes nothing, and its git entry is saved and pruned by the next pass.
    known_git = rp.listing.paths(without_prunable=rp.pruned)
    candidates = await anyio.to_thread.run_sync(_unknown_entries, entries, [s.path for s in slots], known_git)
    if any(has_git for _, _, has_git in candidates):
        try:
            fresh = (await WorktreeListing.read(ck.git, Path(rp.repo.path))).paths()
        except GitError:
            return
        candidates = [c for c in candidates if c[1] not in fresh]
    for entry, _, _ in candidates:
        if not await anyio.Path(entry).exists() and not await anyio.Path(entry).is_symlink():
            continue  # removed since we listed it
        f = Finding(
            kind="leftover_directory",
            path=str(entry),
            detail="an entry under the pool root that is neither a slot nor a worktree",
            action=f"move it to {LOST_AND_FOUND}/ (nothing is deleted)",
        )
        if run.repair:
            assert rp.bounds is not None
            moved = await anyio.to_thread.run_sync(move_aside, entry, rp.bounds)
            f.repaired = moved is not None
            if moved is not None and moved != entry:
                f.action = f"moved to {moved}"
            elif moved == entry:
                f.action = "removed (it was an empty directory)"
            if moved is not None:
                await ck.store.log(
                    ck.repair_event(rp.repo.id, None, None, kind=f.kind, path=str(entry), moved_to=str(moved))
                )
        run.findings.append(f)


def _unknown_entries(entries: list[Path], slot_paths: list[str], known_git: set[str]) -> list[tuple[Path, str, bool]]:
    """(entry, its real path, whether it holds a `.git`) for each visible entry that is neither a slot's
    path nor a listed worktree (blocking: run in a worker thread)."""
    known = known_git | {real_path(p) for p in slot_paths}
    found: list[tuple[Path, str, bool]] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        real = real_path(str(entry))
        if real not in known:
            found.append((entry, real, os.path.lexists(entry / ".git")))
    return found
