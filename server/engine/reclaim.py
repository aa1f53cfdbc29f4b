"""Taking slots back from dead or stale agents without losing a byte of their work.

The reclaimer first moves the slot to RELEASING under its own name (a CAS on the version), so two
reclaimers never work on one slot, and one that dies half-way leaves a row the next validation takes
over (its lease lapses, or its server is gone); each step is idempotent. What it then does:

* worktree gone (directory or git entry): whatever git still holds of it (a detached HEAD's own
  commits, a staged index) is saved to a rescue ref, the entry is pruned, and the record dropped;
  an ALLOCATING row whose worktree was never made is simply rolled back;
* worktree present: uncommitted and untracked changes are saved to a verified rescue ref, and only
  then discarded; the branch is kept and the slot goes back to FREE on a detached HEAD;
* anything that cannot be made safe (saving failed, a rebase or merge in progress, still dirty
  afterwards) is QUARANTINED: never handed out, left on disk for a person.

A `git worktree lock`ed worktree is never touched.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import anyio
from opentelemetry import trace

from .git import RESCUE_IDENTITY, RESCUE_NAMESPACE, GitDriver, GitError, WorktreeInfo
from .liveness import Identity
from .records import Action, Repo, Slot, SlotState, freed
from .repos import RepoResolver
from .store import EventDraft, Store

tracer = trace.get_tracer("agent-coord.reclaim")

LOST_AND_FOUND = ".lost+found"
# Nothing renews a RELEASING row; if the reclaimer dies, this lease lapsing lets the next validation
# take the slot over. Longer than any rescue takes, short enough that a slot does not stay stuck long.
DEFAULT_RECLAIM_LEASE_S = 300.0
# Git's markers of an operation a person started and has not finished; resetting under them would
# leave the slot unusable (git refuses to switch) and lose the operation's own state.
IN_PROGRESS_MARKERS = {
    "rebase-merge": "rebase",
    "rebase-apply": "rebase or am",
    "MERGE_HEAD": "merge",
    "CHERRY_PICK_HEAD": "cherry-pick",
    "REVERT_HEAD": "revert",
    "BISECT_LOG": "bisect",
}
# Outcomes after which a finding counts as repaired.
REPAIRED_OUTCOMES = frozenset({"freed", "rescued", "rolled_back", "removed", "quarantined"})


class _Unsafe(Exception):
    """The worktree cannot be returned to the pool safely; quarantine it."""


@dataclass(frozen=True)
class SavedEntry:
    path: str
    rescue_ref: str
    commit: str


class Reclaimer:
    def __init__(
        self,
        store: Store,
        git: GitDriver,
        repos: RepoResolver,
        identity: Identity,
        *,
        lease_s: float = DEFAULT_RECLAIM_LEASE_S,
    ) -> None:
        self.store = store
        self.git = git
        self.repos = repos
        self.identity = identity
        self.lease_s = lease_s

    async def reclaim(self, slot: Slot, reason: str) -> str:
        """Return what happened: freed, rescued, rolled_back, quarantined, removed, locked, lost_race, failed."""
        with tracer.start_as_current_span("reclaim") as span:
            span.set_attribute("worktree.id", slot.id)
            span.set_attribute("reclaim.reason", reason)
            outcome = await self._reclaim(slot, reason)
            span.set_attribute("reclaim.outcome", outcome)
            return outcome

    async def _reclaim(self, slot: Slot, reason: str) -> str:
        repo = await self.repos.by_id(slot.repo_id)
        try:
            worktrees = await self.git.worktrees(Path(repo.path))
        except GitError:
            return "failed"  # nothing was touched; the next validation tries again
        info = next((w for w in worktrees if same_path(w.path, slot.path)), None)
        if info is not None and info.locked:
            return "locked"
        held = await self.store.transition(
            slot.id,
            expect_state=slot.state,
            expect_version=slot.version,
            changes={
                "state": SlotState.RELEASING,
                "owner": self.identity.agent_id,
                "lease_expires_at": time.time() + self.lease_s,
            },
        )
        if held is None:
            return "lost_race"
        job = _Job(self, repo, slot, held, info, reason)
        try:
            return await job.run()
        except Exception as exc:  # whatever went wrong after we took the slot: park it, never lose it
            return await job.quarantine(f"{type(exc).__name__}: {exc}")

    # ---- worktrees whose directory is gone ------------------------------------------------------

    async def prune(self, repo: Repo, reason: str) -> tuple[bool, dict[str, str]]:
        """`git worktree prune`, but only once what git holds of every prunable entry is saved.

        Pruning deletes each vanished worktree's HEAD and index (all of them at once, not only the one
        a caller has in mind): a detached HEAD's own commits and anything staged would then be
        unreachable. Returns (pruned, rescue ref by worktree path); nothing is pruned unless every
        entry was saved.
        """
        try:
            entries = [w for w in await self.git.worktrees(Path(repo.path)) if w.prunable and not w.locked]
        except GitError:
            return False, {}
        saved: dict[str, str] = {}
        if not entries:
            return True, saved
        admin = await self._admin_dirs(Path(repo.path))
        for info in entries:
            try:
                entry = await self._save_entry(repo, info, admin.get(_norm(info.path)), reason)
            except (GitError, OSError):
                return False, saved
            if entry is not None:
                saved[_norm(info.path)] = entry.rescue_ref
        try:
            await self.git.worktree_prune(Path(repo.path))
        except GitError:
            return False, saved
        return True, saved

    async def _admin_dirs(self, repo: Path) -> dict[str, Path]:
        """Worktree path → its administrative directory (`.git/worktrees/<name>`)."""
        common = Path((await self.git.run(repo, "rev-parse", "--path-format=absolute", "--git-common-dir")).strip())

        def scan() -> dict[str, Path]:
            found: dict[str, Path] = {}
            base = common / "worktrees"
            if not base.is_dir():
                return found
            for d in base.iterdir():
                try:
                    gitfile = Path((d / "gitdir").read_text().strip())
                except OSError:
                    continue
                found[_norm(str(gitfile.parent))] = d
            return found

        return await anyio.to_thread.run_sync(scan)

    async def _save_entry(self, repo: Repo, info: WorktreeInfo, admin: Path | None, reason: str) -> SavedEntry | None:
        repo_path = Path(repo.path)
        head = info.head if info.head and set(info.head) != {"0"} else None
        tree: str | None = None
        if admin is not None and await anyio.Path(admin / "index").is_file():
            # The index of the vanished worktree still names every staged blob (they are in the object
            # store); a tree of it is what `git commit` would have recorded.
            tree = (await self.git.run(repo_path, "write-tree", env={"GIT_INDEX_FILE": str(admin / "index")})).strip()
        head_tree = (await self.git.run(repo_path, "rev-parse", f"{head}^{{tree}}")).strip() if head else None
        staged = tree is not None and tree != head_tree
        unsaved = bool(head) and info.detached and await self._only_reachable_here(repo_path, head or "")
        if not staged and not unsaved:
            return None
        if staged:
            assert tree is not None
            parents = ["-p", head] if head else []
            commit = (
                await self.git.run(
                    repo_path,
                    "commit-tree",
                    tree,
                    *parents,
                    "-m",
                    f"agent-coord rescue of the index of {info.path} (directory gone): {reason}",
                    env=dict(RESCUE_IDENTITY),
                )
            ).strip()
        else:
            assert head is not None
            commit = head
        ref = await self.unique_ref(repo_path, info.branch, Path(info.path).name)
        await self._write_ref(repo_path, ref, commit)
        await self.store.log(
            EventDraft(
                Action.RESCUE,
                "saved",
                self.identity.agent_id,
                repo.id,
                None,
                info.branch,
                detail={
                    "rescue_ref": ref,
                    "commit": commit,
                    "reason": reason,
                    "path": info.path,
                    "saved": "staged index" if staged else "detached HEAD commits",
                },
            )
        )
        return SavedEntry(info.path, ref, commit)

    async def _only_reachable_here(self, repo: Path, commit: str) -> bool:
        count = await self.git.run(
            repo,
            "rev-list",
            "--count",
            commit,
            "--not",
            "--branches",
            "--tags",
            "--remotes",
            f"--glob={RESCUE_NAMESPACE.removeprefix('refs/')}/*",
        )
        return int(count.strip() or 0) > 0

    async def _write_ref(self, repo: Path, ref: str, commit: str) -> None:
        # The all-zero old value makes update-ref create only: an existing rescue is never overwritten.
        await self.git.run(repo, "update-ref", "-m", "agent-coord rescue", ref, commit, "0" * 40)
        if (await self.git.run(repo, "rev-parse", "--verify", ref)).strip() != commit:
            raise GitError(["update-ref", ref], 1, "rescue ref did not verify")

    async def unique_ref(self, repo: Path, branch: str | None, slot_id: str) -> str:
        return await self.git.free_rescue_ref(repo, branch, slot_id)


class _Job:
    """One reclaim of one slot, after the CAS made it ours (RELEASING, owner = us)."""

    def __init__(
        self, rc: Reclaimer, repo: Repo, slot: Slot, held: Slot, info: WorktreeInfo | None, reason: str
    ) -> None:
        self.rc = rc
        self.repo = repo
        self.slot = slot
        self.held = held
        self.info = info
        self.reason = reason
        self.rescue: str | None = None

    def event(self, outcome: str, **extra: object) -> EventDraft:
        s = self.slot
        return EventDraft(
            Action.RECLAIM,
            outcome,
            self.rc.identity.agent_id,
            self.repo.id,
            s.id,
            s.branch,
            None,
            s.fencing_token,
            detail={
                "reason": self.reason,
                "previous_owner": s.owner,
                "previous_state": s.state.value,
                "rescue_ref": self.rescue,
                **extra,
            },
        )

    async def run(self) -> str:
        path = Path(self.slot.path)
        if self.info is None or self.info.prunable or not await anyio.Path(path).is_dir():
            return await self._gone(path)
        git = self.rc.git
        status = await git.status(path)
        if status.dirty:
            self.rescue = await self._save(path, status.changed, status.unsaved_commits)
        operation = await self._operation_in_progress(path)
        if operation is not None:
            # The work is saved (above); the operation's own state is the person's to finish or abort.
            raise _Unsafe(f"a {operation} is in progress")
        if status.dirty:
            await git.discard_changes(path)
        if status.branch is not None:
            await git.detach(path)
        after = await git.status(path)
        if after.dirty:
            raise _Unsafe(f"still dirty after the rescue: {', '.join(after.changed[:5])}")
        outcome = "rolled_back" if self.slot.state == SlotState.ALLOCATING else "freed"
        if self.rescue:
            outcome = "rescued"
        done = await self.rc.store.transition(
            self.slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=self.held.version,
            changes=freed(time.time(), self.rescue),
            events=[self.event(outcome)],
        )
        return outcome if done is not None else "lost_race"

    async def _gone(self, path: Path) -> str:
        """The worktree is gone: save what git still holds of it, prune, set aside the directory, drop."""
        rc = self.rc
        note = "worktree was gone"
        if self.info is not None:
            pruned, refs = await rc.prune(self.repo, self.reason)
            self.rescue = refs.get(_norm(self.info.path))
            if not pruned:
                raise _Unsafe("could not save the git entry of the vanished worktree")
        if await anyio.Path(path).exists():
            # A directory git does not know (its .git file was lost): user files may be in it. Move it
            # aside rather than leave it to block the slot's path, and say where.
            moved = await anyio.to_thread.run_sync(move_aside, path, Path(self.repo.pool_root))
            if moved is None:
                raise _Unsafe(f"could not move {path} aside")
            note = f"directory was not a git worktree; moved to {moved}"
        outcome = "rolled_back" if self.slot.state == SlotState.ALLOCATING else "removed"
        done = await rc.store.transition(
            self.slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=self.held.version,
            delete=True,
            events=[self.event(outcome, note=note)],
        )
        return outcome if done is not None else "lost_race"

    async def _save(self, path: Path, changed: list[str], unsaved_commits: int) -> str:
        rc = self.rc
        s = self.slot
        ref = await rc.unique_ref(Path(self.repo.path), s.branch, s.id)
        commit = await rc.git.rescue(
            path, ref, f"agent-coord rescue of {s.id} ({s.branch or 'detached'}): {self.reason}"
        )
        await rc.store.log(
            EventDraft(
                Action.RESCUE,
                "saved",
                rc.identity.agent_id,
                self.repo.id,
                s.id,
                s.branch,
                None,
                s.fencing_token,
                detail={
                    "rescue_ref": ref,
                    "commit": commit,
                    "reason": self.reason,
                    "owner": s.owner,
                    "files": [c[3:] for c in changed[:20]],
                    "unsaved_commits": unsaved_commits,
                },
            )
        )
        return ref

    async def _operation_in_progress(self, path: Path) -> str | None:
        for marker, operation in IN_PROGRESS_MARKERS.items():
            where = (await self.rc.git.run(path, "rev-parse", "--path-format=absolute", "--git-path", marker)).strip()
            if where and await anyio.Path(where).exists():
                return operation
        return None

    async def quarantine(self, why: str) -> str:
        done = await self.rc.store.transition(
            self.slot.id,
            expect_state=SlotState.RELEASING,
            expect_version=self.held.version,
            changes={
                "state": SlotState.QUARANTINED,
                "owner": None,
                "lease_expires_at": None,
                "rescue_ref": self.rescue,
            },
            events=[self.event("quarantined", error=why[:500])],
        )
        return "quarantined" if done is not None else "lost_race"


def _norm(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except OSError:
        return path


def same_path(a: str, b: str) -> bool:
    """Git lists real paths; the store may hold another spelling of the same one."""
    return a == b or _norm(a) == _norm(b)


def move_aside(entry: Path, root: Path) -> Path | None:
    """Move `entry` into `<root>/.lost+found/` (an empty directory is just removed). Nothing is deleted.

    Returns where it went (the entry itself for a removed empty directory), None on failure.
    """
    try:
        if entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()):
            entry.rmdir()
            return entry
        target_dir = root / LOST_AND_FOUND
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{entry.name}-{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6}"
        shutil.move(str(entry), str(target))
        return target
    except OSError:
        return None
