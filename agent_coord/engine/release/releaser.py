"""Release: give a worktree back warm (detached HEAD) or remove it, never losing its work.

Two-phase like allocation: BUSY → RELEASING (CAS on the fencing token) → git → FREE or deleted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import anyio
from opentelemetry import trace

from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.errors import MAX_TEXT, CoordError, ErrorCode
from agent_coord.engine.git.confinement import Confined, Shape, Unconfined, inside_pool, shape
from agent_coord.engine.git.driver import GitError, reject_option_like
from agent_coord.engine.git.operations import (
    INDEX_LOCK,
    Operation,
    describe,
    moved_worktree,
    operation_in_progress,
    unsaveable_work,
)
from agent_coord.engine.git.removal import RemovalFailed, remove_worktree
from agent_coord.engine.git.rescue_commit import RescueFailed, WorktreeChanged, worktree_trees
from agent_coord.engine.git.seal import mark_before_status, seal_after_release
from agent_coord.engine.git.worktree_listing import WorktreeListing
from agent_coord.engine.git.worktree_record import WorktreeRecord, read_worktree_record
from agent_coord.engine.liveness.judge import judge, same_agent
from agent_coord.engine.models import ReleaseResult
from agent_coord.engine.reclaim.rescue import save_work
from agent_coord.engine.release.ended import ended_error, ended_for, why_ended
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store import EventDraft, StoreBusyError
from agent_coord.engine.store.connection import StoreUnavailableError
from agent_coord.engine.store.records import HELD_STATES, Action, Repo, Slot, SlotState, freed

tracer = trace.get_tracer("agent-coord.pool")
SETTLE_S = 5.0  # how long a release waits for another hand's release or reclaim of the same slot
# A forced release saves, then compares the worktree with what it saved before it cleans; a worktree
# that changed meanwhile (its agent writes on) is saved again, this many times at most.
SAVE_ROUNDS = 3
WRITER = "forced release: the worktree changed while it was being saved and cleaned"


def _quarantined() -> dict[str, object]:
    return {"state": SlotState.QUARANTINED, "owner": None, "lease_expires_at": None}


logger = logging.getLogger("agent-coord")


class _TakenOver(Exception):
    """The row changed hands before the release was recorded (a reclaim): nothing may be removed."""


@dataclass(frozen=True)
class CutShort:
    """A release of this server's that ended (the store went away before its last write, the call was
    cancelled) after it made the slot RELEASING: how it left the row, and what it was releasing."""

    version: int  # the RELEASING row as that release left it: the same version means nobody touched it since
    original: SlotState  # and its owner before: what a git failure puts back
    owner: str | None
    token: int | None
    forced_from: str | None
    rescue: str | None  # where it saved the worktree's changes, if it had


class Releaser(OverEngine):
    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        self.lease_s = ctx.settings.stale_after_s
        self.cut_short: dict[str, CutShort] = {}  # by slot id

    def _cut_short_here(self, slot: Slot) -> CutShort | None:
        """This server's own release of `slot`, cut short and left RELEASING exactly as the row still is:
        no process works on it (that release is over, and any other hand would have changed the row),
        so a release of it again finishes it instead of waiting for it."""
        cut = self.cut_short.get(slot.id)
        if cut is None:
            return None
        if slot.state != SlotState.RELEASING or slot.version != cut.version:
            del self.cut_short[slot.id]  # finished, reclaimed or taken over since
            return None
        return cut

    async def _same_agent(self, owner: str | None) -> bool:
        """Is the owner the acting agent (`same_agent`: id, origin and process; a hook of this same
        Claude Code session under its `claude-<session>`)? An explicitly named agent is another even
        under the same parent process, and so is one whose id merely reads like ours."""
        if owner is None:
            return False
        registered = await self.store.agent(owner)
        if registered is None:
            return owner == self.me  # no record left to tell origins apart: the id is all there is
        return same_agent(self.identity, registered)

    async def _save_until_settled(self, slot: Slot, slot_dir: Confined) -> tuple[list[str], bool]:
        """Save the worktree, then read it again: cleaned only when it still is what was saved (its
        agent, maybe alive, may write on). Saved again while it changes, `SAVE_ROUNDS` times at most.
        Returns every ref saved and whether the worktree settled: no ref when it changed under every
        save (nothing was touched; the caller parks it). A save that failed for another reason is
        raised: that is git failing, not someone writing."""
        refs: list[str] = []
        for _ in range(SAVE_ROUNDS):
            try:
                saved = await save_work(self.git, self.store, self.me, slot, slot_dir, "forced release")
            except WorktreeChanged:
                continue
            refs.append(saved.ref)
            try:
                now = await worktree_trees(self.git, slot_dir)
            except RescueFailed:
                continue  # it changed while it was read: save again
            if now == (saved.rescue.index_tree, saved.rescue.worktree_tree):
                return refs, True
        return refs, False

    def _event(
        self, repo: Repo, slot: Slot, outcome: str, token: int | None, started: float, detail: dict[str, object]
    ) -> EventDraft:
        """The release's one event, whatever its outcome (a release, a parked slot, a refusal)."""
        return EventDraft(
            Action.RELEASE,
            outcome,
            agent_id=self.me,
            repo_id=repo.id,
            worktree_id=slot.id,
            branch=slot.branch,
            duration_ms=(time.monotonic() - started) * 1000,
            fencing_token=token,
            detail=detail,
        )

    async def _park(
        self, repo: Repo, slot: Slot, token: int | None, refs: list[str], forced_from: str | None, started: float
    ) -> ReleaseResult:
        """The worktree kept changing while a forced release saved it: nothing is cleaned (what was
        written after the last save would be lost), the allocation ends, and the slot is QUARANTINED,
        still naming the agent that writes in it, until that agent is gone (validation then saves what
        it wrote since and returns the slot to the pool)."""
        writer = forced_from or slot.owner
        last = refs[-1] if refs else None  # none when it changed under every save: all of it is on disk
        event = self._event(
            repo,
            slot,
            "ok",
            token,
            started,
            {
                "force": True,
                "rescue_ref": last,
                "rescue_refs": refs,
                "quarantined": "its agent kept writing while the work was saved; nothing was cleaned",
                **({"forced_from": forced_from} if forced_from else {}),
            },
        )
        done = await self.store.transition(
            slot.id,
            expect_state=SlotState.RELEASING,
            expect_token=token,
            changes={**_quarantined(), "owner": writer, "rescue_ref": last},
            events=[event],
        )
        self.ctx.granted.forget(slot.id)
        if done is None:
            raise CoordError(
                ErrorCode.ALLOCATION_ENDED,
                f"{slot.id} was reclaimed while it was being released; its changes are "
                + (f"in {last}" if last else "still in the worktree"),
            )
        return ReleaseResult(
            worktree_id=slot.id,
            path=slot.path,
            branch=slot.branch,
            state="QUARANTINED",
            dirty=True,
            rescue_ref=last,
        )

    async def _live_owner(self, owner: str | None) -> str | None:
        """Why the owner counts as alive (then an agent's force may not take its worktree), or None."""
        agent = await self.store.agent(owner) if owner else None
        if agent is None:
            return None
        verdict = judge(agent, host=self.identity.host, boot=self.identity.boot_id)
        return verdict.reason if verdict.alive else None

    async def _git_record(self, repo: Repo, path: Path) -> WorktreeRecord | None:
        """Git's record of the slot (None: git lists no worktree there). Read from the slot's own
        admin files when they settle it, which spares a `git worktree list`; else from the listing."""
        record = await anyio.to_thread.run_sync(read_worktree_record, repo.git_dir, path)
        if record is not None:
            return record
        try:
            listing = await WorktreeListing.read(self.git, Path(repo.path))
        except GitError as exc:
            # Not "no worktree": that would skip the lock check and the rescue and drop the record
            # of a worktree that may hold work (git dies on an unreadable `locked`, for one).
            raise CoordError(
                ErrorCode.GIT_FAILED,
                f"git worktree list failed in {repo.path}: {exc.reason}; nothing was released",
            ) from exc
        info = listing.at(str(path))  # `path` is resolved (confine), the listing's keys too
        return None if info is None else WorktreeRecord(locked=info.locked, lock_reason=info.lock_reason)

    def _quarantine_event(self, repo: Repo, slot: Slot, token: int | None, exc: Unconfined | GitError) -> EventDraft:
        return EventDraft(
            Action.RECLAIM,
            "quarantined",
            agent_id=self.me,
            repo_id=repo.id,
            worktree_id=slot.id,
            branch=slot.branch,
            fencing_token=token,
            detail={"reason": "release", "error": exc.reason, "previous_owner": slot.owner},
        )

    async def _quarantine(self, repo: Repo, slot: Slot, token: int | None, exc: Unconfined) -> NoReturn:
        """The slot's directory failed the confinement guard: nothing is run in it; it is quarantined."""
        await self.store.transition(
            slot.id,
            expect_state=slot.state,
            expect_version=slot.version,
            changes=_quarantined(),
            events=[self._quarantine_event(repo, slot, token, exc)],
        )
        raise CoordError(
            ErrorCode.GIT_FAILED,
            f"{slot.id} was not released: {exc.reason}; nothing was run in it, and it is quarantined for a person",
        )

    async def _refuse_moved(self, repo: Repo, slot: Slot, path: Path) -> None:
        """A slot whose worktree a person moved away (`git worktree move`) is not released: its worktree is
        now outside the pool, where agent-coord never acts (not even to move it back), and releasing the
        record alone would hand out a branch that is still checked out there. The person moves it back."""
        if await anyio.Path(path).exists():
            return
        try:
            listing = await WorktreeListing.read(self.git, Path(repo.path))
        except GitError:
            return
        moved = moved_worktree(listing, slot.path, slot.branch)
        if moved is None:
            return
        raise CoordError(
            ErrorCode.GIT_FAILED,
            f"{slot.id}'s worktree was moved to {moved.path}, outside the pool, where agent-coord does not act; "
            f"nothing was released. Move it back (git worktree move -- {moved.path} {path}), then release again",
            next_step=f"ask the user to move the worktree back (git worktree move -- {moved.path} {path}); "
            "then release again.",
        )

    async def find_slot(
        self, *, worktree_id: str | None, path: str | None, branch: str | None, repo_arg: str | None = None
    ) -> Slot:
        given = [v for v in (worktree_id, path, branch) if v is not None]
        if len(given) > 1:
            raise CoordError(ErrorCode.INVALID_ARGUMENT, "give one of worktree_id, path or branch, not several")
        for value, what in ((worktree_id, "worktree_id"), (path, "path"), (branch, "branch")):
            if value is not None:
                if not value or len(value) > MAX_TEXT:
                    raise CoordError(ErrorCode.INVALID_ARGUMENT, f"{what} must be 1..4096 characters")
                reject_option_like(value, what)
        slots = await self.store.slots()
        if worktree_id is not None:
            found = [s for s in slots if s.id == worktree_id]
            what = f"worktree {worktree_id!r}"
        elif path is not None:
            try:
                target = Path(await (await anyio.Path(path).expanduser()).resolve())
            except RuntimeError as exc:  # "~name" for a user that does not exist
                raise CoordError(ErrorCode.NOT_FOUND, f"cannot expand {path!r}: no such user") from exc
            found = [s for s in slots if Path(s.path) == target]
            what = f"worktree at {path!r}"
        elif branch is not None:
            found = [s for s in slots if s.branch == branch and s.state != SlotState.FREE]
            if len(found) > 1:
                mine = [s for s in found if s.owner == self.me]
                found = mine or found
            what = f"allocation of branch {branch!r}"
        else:
            found = [s for s in slots if s.owner == self.me and s.state == SlotState.BUSY]
            if len(found) > 1:
                ids = ", ".join(s.id for s in found)
                raise CoordError(
                    ErrorCode.INVALID_ARGUMENT,
                    f"you hold {len(found)} worktrees ({ids}); name the one to release",
                )
            what = "allocation held by you"
        if not found:
            await self._raise_if_ended(worktree_id=worktree_id, branch=branch)
            raise CoordError(ErrorCode.NOT_FOUND, f"there is no {what}")
        return found[0]

    async def _raise_if_ended(self, *, worktree_id: str | None, branch: str | None) -> None:
        """A call naming an allocation that no longer exists is told how it ended, if the log knows."""
        if branch is not None:
            event = await self.store.last_end(branch=branch)
        elif worktree_id is not None:
            event = await self.store.last_end(worktree_id=worktree_id)
        else:  # "your only one": what this server was granted and no longer holds
            ends = [await self.store.last_end(worktree_id=slot_id) for slot_id, _ in self.ctx.granted.items()]
            known = [e for e in ends if e is not None]
            event = max(known, key=lambda e: e.id) if known else None
        if event is not None:
            raise await ended_error(self.store, self.repos, self.git, event)

    async def ended_allocations(self) -> list[str]:
        """What became of the allocations this server was granted that another hand ended since (a
        reclaim, a forced release): each told once, at the agent's next heartbeat."""
        if not self.ctx.granted.items():
            return []
        slots = {s.id: s for s in await self.store.slots()}
        told = []
        for slot_id, token in self.ctx.granted.items():
            slot = slots.get(slot_id)
            if slot is not None and slot.fencing_token == token and slot.state in HELD_STATES:
                continue
            self.ctx.granted.forget(slot_id)
            event = await self.store.last_end(worktree_id=slot_id)
            if event is None:
                told.append(f"your allocation of {slot_id} ended")
            else:
                told.append(await why_ended(self.store, self.repos, self.git, event))
        return told

    async def _settled(self, slot: Slot) -> None:
        """Wait (a few seconds at most) for another hand's release or reclaim of `slot` to finish; if it
        does not, the allocation has ended all the same: ALLOCATION_ENDED, with the work saved so far."""
        with anyio.move_on_after(SETTLE_S):
            while True:
                now = await self.store.slot(slot.id)
                if now is None or now.state != SlotState.RELEASING or now.version != slot.version:
                    return
                await anyio.sleep(0.1)
        rescued = await self.store.rescue_refs(slot.fencing_token) if slot.fencing_token is not None else []
        saved = f"; its work saved so far: {' and '.join(rescued)}" if rescued else ""
        raise CoordError(
            ErrorCode.ALLOCATION_ENDED,
            f"{slot.id} (branch {slot.branch!r}) is being released or reclaimed by agent {slot.owner}{saved}",
        )

    async def _raise_if_mine_ended(self, slot: Slot) -> None:
        """Named by id or path, a slot that is no longer ours: ALLOCATION_ENDED when it was ours and
        another hand (a reclaim, a forced release) ended it; otherwise the caller's answer stands."""
        event = await self.store.last_end(worktree_id=slot.id)
        if ended_for(event, self.me, held_here=slot.id in self.ctx.granted):
            assert event is not None
            self.ctx.granted.forget(slot.id)
            raise await ended_error(self.store, self.repos, self.git, event)

    async def release(
        self,
        *,
        worktree_id: str | None = None,
        path: str | None = None,
        branch: str | None = None,
        force: bool = False,
        remove: bool = False,
        over_live_agent: bool = False,
    ) -> ReleaseResult:
        """Release a worktree. `force` takes back another agent's worktree only when that agent is
        gone; `over_live_agent` (a person at the command line, never an agent) takes it from a live
        one too. Either way its work is saved to a rescue ref first."""
        started = time.monotonic()
        with tracer.start_as_current_span("release") as span:
            slot = await self.find_slot(worktree_id=worktree_id, path=path, branch=branch)
            if slot.state == SlotState.RELEASING and self._cut_short_here(slot) is None:
                # A release or reclaim is under way (another agent's, or this server's validation): answer
                # with how it ends, not with a guess.
                await self._settled(slot)
                slot = await self.find_slot(worktree_id=worktree_id, path=path, branch=branch)
            span.set_attribute("worktree.id", slot.id)
            repo = await self.repos.by_id(slot.repo_id)
            try:
                return await self._release(repo, slot, force, remove, started, over_live_agent=over_live_agent)
            except CoordError as exc:
                span.set_attribute("error.code", exc.code.value)
                await self.store.log(
                    self._event(repo, slot, exc.code.value, slot.fencing_token, started, {"message": exc.message})
                )
                raise

    async def _release(
        self, repo: Repo, slot: Slot, force: bool, remove: bool, started: float, *, over_live_agent: bool = False
    ) -> ReleaseResult:
        cut = self._cut_short_here(slot)
        if cut is not None:
            return await self._release_checked(
                repo, slot, force, remove, started, cut.token, cut.forced_from, resumed=cut
            )
        if slot.state == SlotState.FREE:
            await self._raise_if_mine_ended(slot)
            if not remove:
                return ReleaseResult(worktree_id=slot.id, path=slot.path, branch=None, state="FREE", dirty=False)
        elif slot.state != SlotState.BUSY:
            await self._raise_if_mine_ended(slot)
            raise CoordError(
                ErrorCode.NOT_FOUND,
                f"{slot.id} is {slot.state.value}, not an allocation that can be released",
            )
        forced_from: str | None = None
        if slot.state == SlotState.BUSY and not await self._same_agent(slot.owner):
            await self._raise_if_mine_ended(slot)
            if not force:
                raise CoordError(
                    ErrorCode.NOT_OWNER,
                    f"{slot.id} ({slot.path}) is held by agent {slot.owner}",
                )
            alive = None if over_live_agent else await self._live_owner(slot.owner)
            if alive is not None:
                raise CoordError(
                    ErrorCode.NOT_OWNER,
                    f"{slot.id} is held by agent {slot.owner}, which is alive ({alive}); an agent's force takes "
                    "worktrees only from agents that are gone",
                )
            forced_from = slot.owner
        token = self.ctx.granted.presented(slot) if forced_from is None else slot.fencing_token
        return await self._release_checked(repo, slot, force, remove, started, token, forced_from)

    async def _release_checked(
        self,
        repo: Repo,
        slot: Slot,
        force: bool,
        remove: bool,
        started: float,
        token: int | None,
        forced_from: str | None,
        *,
        resumed: CutShort | None = None,
    ) -> ReleaseResult:
        """The release proper, once the caller may release `slot` (or `resumed`: finishes this server's
        own release of it that was cut short, from the top: what it did is done again or found done)."""
        original = slot.state if resumed is None else resumed.original
        original_owner = slot.owner if resumed is None else resumed.owner
        bounds = await bounds_of(repo)
        slot_dir = bounds.slot(slot.path)
        try:
            # Its real path, the entry itself not followed: only a name directly in the pool root passes.
            path = await anyio.to_thread.run_sync(inside_pool, bounds, slot_dir.path)
        except Unconfined as exc:
            await self._quarantine(repo, slot, token, exc)
        record = await self._git_record(repo, path)
        if record is not None and record.locked:
            raise CoordError(
                ErrorCode.WORKTREE_LOCKED,
                f"{slot.id} ({path}) is locked: {record.lock_reason or 'no reason given'}; nothing was released",
            )
        if record is None and original == SlotState.BUSY:
            await self._refuse_moved(repo, slot, path)
        try:
            form = await anyio.to_thread.run_sync(shape, bounds, slot_dir.path)
        except Unconfined as exc:
            await self._quarantine(repo, slot, token, exc)
        if record is not None and form == Shape.WORKTREE:
            stopped = await _stopped_operation(path)
            if stopped is not None:
                # Even with force: released so, the slot would break the next allocation (git refuses
                # to switch), and resetting under the operation would lose its own state.
                raise CoordError(
                    ErrorCode.OPERATION_IN_PROGRESS,
                    f"{slot.id}: {describe(stopped, path)}; then release again (nothing was released)",
                )
        in_place = record is not None and form == Shape.WORKTREE
        # Taken before the status: what the status finds clean, the next allocation may trust (git/seal.py).
        before = await mark_before_status(slot_dir) if in_place and not remove else None
        status = await self.git.status(slot_dir) if in_place else None
        dirty = bool(status and status.dirty)
        if status is not None and dirty:
            nested = await anyio.to_thread.run_sync(unsaveable_work, path, status.changed)
            if nested:
                # Even with force: a rescue ref cannot hold them and the clean-up never deletes them, so
                # "released" they would follow the slot into the next agent's worktree.
                raise CoordError(
                    ErrorCode.WORKTREE_DIRTY,
                    f"{slot.id} holds work a rescue ref cannot save: {', '.join(nested[:10])} (a git "
                    "repository or submodule of its own, with changes); commit them there and move them "
                    "out of the worktree (or delete them yourself), then release again (nothing was released)",
                )
        if dirty and not force:
            assert status is not None
            files = [c[3:] for c in status.changed][:20]
            more = f" (+{len(status.changed) - 20} more)" if len(status.changed) > 20 else ""
            commits = f"; {status.unsaved_commits} commit(s) only on a detached HEAD" if status.unsaved_commits else ""
            raise CoordError(
                ErrorCode.WORKTREE_DIRTY,
                f"{slot.id} has uncommitted or untracked changes: {', '.join(files)}{more}{commits}",
            )
        if resumed is not None:
            # Ours again only if nobody took the row over since (a reclaim once its lease lapsed).
            held = await self.store.transition(
                slot.id,
                expect_state=SlotState.RELEASING,
                expect_version=resumed.version,
                changes={"lease_expires_at": time.time() + self.lease_s},
                worker=self.identity.as_worker(),
            )
        elif original == SlotState.BUSY:
            held = await self.store.transition(
                slot.id,
                expect_state=SlotState.BUSY,
                expect_token=token,
                # A fresh lease: a long release (a big rescue) must not lapse into a reclaim under us.
                changes={"state": SlotState.RELEASING, "lease_expires_at": time.time() + self.lease_s},
                worker=self.identity.as_worker(),
            )
        else:
            held = await self.store.transition(
                slot.id,
                expect_state=SlotState.FREE,
                expect_version=slot.version,
                changes={"state": SlotState.RELEASING, "owner": self.me},
                worker=self.identity.as_worker(),
            )
        if held is None:
            await self._raise_if_mine_ended(slot)
            raise CoordError(ErrorCode.ALLOCATION_ENDED, f"{slot.id} changed hands while it was being released")
        rescue: str | None = None if resumed is None else resumed.rescue
        gone = remove or record is None
        detail: dict[str, object] = {"remove": remove, "force": force}
        if forced_from:
            detail["forced_from"] = forced_from
        recorded: Slot | None = None

        async def record_release() -> None:
            """The release into the log, the row kept RELEASING (a removal's, before git forgets the worktree:
            a removal cannot be undone, so one answered as failed must have left the worktree whole)."""
            nonlocal recorded
            if rescue:
                detail["rescue_ref"] = rescue
            recorded = await self.store.transition(
                slot.id,
                expect_state=SlotState.RELEASING,
                expect_token=token,
                changes={"lease_expires_at": time.time() + self.lease_s},
                events=[self._event(repo, slot, "ok", token, started, detail)],
            )
            if recorded is None:
                raise _TakenOver

        try:
            try:
                if dirty:
                    refs, settled = await self._save_until_settled(slot, slot_dir)
                    rescue = refs[-1] if refs else None
                    if settled:
                        await self.git.discard_changes(slot_dir)
                        if (await self.git.status(slot_dir)).dirty:  # written while it was cleaned
                            # Not proved saved (it changed again while saved): it stays on disk, untouched,
                            # in the parked slot, which validation saves once its agent is gone.
                            with contextlib.suppress(RescueFailed):
                                refs.append(
                                    (await save_work(self.git, self.store, self.me, slot, slot_dir, WRITER)).ref
                                )
                            settled = False
                    if not settled:
                        return await self._park(repo, slot, token, refs, forced_from, started)
                if record is not None:
                    if remove:
                        await remove_worktree(self.git, Path(repo.path), slot_dir, before_git_forgets=record_release)
                    else:
                        if status is not None and status.branch is not None:
                            await self.git.detach(slot_dir)
                        if before is not None and status is not None and status.head is not None and not dirty:
                            await seal_after_release(slot_dir, before, status.head, status.branch)
                # With no git entry for the slot there is nothing to prune; a repo-wide `git worktree prune`
                # here would drop other vanished worktrees' entries before validation saved their work.
            except _TakenOver:
                recorded = None  # reclaimed meanwhile: its files were put back, the release answered below
            except GitError as exc:
                if recorded is not None:
                    # Git failed to drop the emptied worktree after the release was logged: the release
                    # stands; its worktree stays, the row RELEASING for validation once it lapses.
                    logger.warning("%s released; its worktree could not be removed: %s", slot.id, exc.reason)
                    gone = False
                else:
                    # Quarantined too: a removal that could not put the slot's files back.
                    unconfined = isinstance(exc, Unconfined) or (isinstance(exc, RemovalFailed) and not exc.intact)
                    with anyio.CancelScope(shield=True):
                        # A slot that failed the guard half-way (swapped under us) is a person's now: quarantined.
                        await self.store.transition(
                            slot.id,
                            expect_state=SlotState.RELEASING,
                            expect_token=token,
                            changes=_quarantined() if unconfined else {"state": original, "owner": original_owner},
                            events=[self._quarantine_event(repo, slot, token, exc)] if unconfined else [],
                        )
                    saved = f"; its changes are in {rescue}" if rescue else ""
                    raise CoordError(
                        ErrorCode.GIT_FAILED,
                        f"git failed while releasing {slot.id}: {exc.reason}"
                        + ("; quarantined for a person" if unconfined else "")
                        + saved,
                    ) from exc
            if remove and record is not None:
                # Recorded before git forgot the worktree (or taken over meanwhile: `recorded` None).
                done = recorded
                if recorded is not None and gone:
                    with contextlib.suppress(StoreUnavailableError, StoreBusyError):  # validation's, else
                        await self.store.transition(
                            slot.id, expect_state=SlotState.RELEASING, expect_version=recorded.version, delete=True
                        )
            else:
                if rescue:
                    detail["rescue_ref"] = rescue
                event = self._event(repo, slot, "ok", token, started, detail)
                done = await self.store.transition(
                    slot.id,
                    expect_state=SlotState.RELEASING,
                    expect_token=token,
                    delete=gone,
                    changes=None if gone else freed(time.time(), rescue),
                    events=[event],
                )
        except BaseException:
            # Cut short with the row still RELEASING as `held` left it (the store went away, the call
            # was cancelled): a release of it again here finishes it (`_cut_short_here`).
            self.cut_short[slot.id] = CutShort(held.version, original, original_owner, token, forced_from, rescue)
            raise
        self.ctx.granted.forget(slot.id)
        if done is None:
            # Never acknowledge what the store did not record.
            saved = f"; its changes are in {rescue}" if rescue else "; nothing needed saving"
            raise CoordError(ErrorCode.ALLOCATION_ENDED, f"{slot.id} was reclaimed while it was being released{saved}")
        return ReleaseResult(
            worktree_id=slot.id,
            path=slot.path,
            branch=slot.branch,
            state="REMOVED" if gone else "FREE",
            dirty=dirty,
            rescue_ref=rescue,
            removed=gone,
        )


# A git reading the slot with optional locks (an editor's `git status`) holds its index.lock for
# milliseconds: a release waits that long before it calls the lock an operation in progress.
INDEX_LOCK_WAIT_S = 1.0


async def _stopped_operation(path: Path) -> tuple[Operation, Path] | None:
    deadline = time.monotonic() + INDEX_LOCK_WAIT_S
    while True:
        found = await anyio.to_thread.run_sync(lambda: operation_in_progress(path, with_index_lock=True))
        if found is None or found[0] is not INDEX_LOCK or time.monotonic() >= deadline:
            return found
        await anyio.sleep(0.02)
