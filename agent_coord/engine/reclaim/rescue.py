"""Saving a worktree's work to a verified rescue ref, and saying so in the event log.

`save_work` is the one way work is saved before anything is reset or removed: a forced release, a
reclaim, an allocation's roll-back, a stray change in a free slot, and the pruning of a vanished
worktree's git entry all come here. What the commit holds is `git.rescue_commit`'s business.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent_coord.engine.git.confinement import Confined
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.rescue_commit import RescueCommit, rescue_index, rescue_worktree
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Slot


@dataclass(frozen=True)
class Whose:
    """Whose work a rescue saves: for the ref's name and the event log."""

    repo_id: int
    slot_id: str | None
    branch: str | None
    owner: str | None = None
    fencing_token: int | None = None

    @classmethod
    def of(cls, slot: Slot) -> Whose:
        return cls(slot.repo_id, slot.id, slot.branch, slot.owner, slot.fencing_token)


@dataclass(frozen=True)
class GoneWorktree:
    """What git still holds of a worktree whose directory is gone: its HEAD and index, in its
    administrative directory (`.git/worktrees/<name>`)."""

    repo: Path  # the main worktree: git runs there
    path: str  # where the worktree was
    index_file: Path | None
    head: str | None


@dataclass(frozen=True)
class SavedWork:
    ref: str
    rescue: RescueCommit

    @property
    def commit(self) -> str:
        return self.rescue.commit


def grant_mark(fencing_token: int) -> str:
    """How a rescue commit's subject names the grant whose work it holds."""
    return f"[grant {fencing_token}]"


def rescue_subject(name: str, branch: str | None, fencing_token: int | None, reason: str) -> str:
    """A rescue commit's message: 'agent-coord rescue of <slot> (<branch>) [grant N]: <reason>'."""
    grant = f" {grant_mark(fencing_token)}" if fencing_token is not None else ""
    return f"agent-coord rescue of {name} ({branch or 'detached'}){grant}: {reason}"


def of_grant(subject: str, fencing_token: int) -> bool:
    """Is `subject` (a rescue commit's first line) the rescue of grant `fencing_token`'s work?"""
    return subject.split(": ", 1)[0].endswith(f" {grant_mark(fencing_token)}")


async def save_work(
    git: GitDriver,
    store: Store,
    agent_id: str,
    whose: Slot | Whose,
    where: Confined | GoneWorktree,
    reason: str,
    *,
    detail: Mapping[str, object] | None = None,
) -> SavedWork:
    """Commit HEAD, the index and the working tree at `where` (a worktree, or what is left of a gone
    one) to a new rescue ref, verified, and log it. Raises GitError when that cannot be done and
    proved: the caller must then touch nothing."""
    who = Whose.of(whose) if isinstance(whose, Slot) else whose
    name = who.slot_id or (Path(where.path).name if isinstance(where, GoneWorktree) else where.name)
    # The grant's fencing token in the subject: a ref whose event was never written (the process died
    # between the two) is still found as this grant's (release/ended.py).
    message = rescue_subject(name, who.branch, who.fencing_token, reason)
    if isinstance(where, GoneWorktree):
        ref = await git.free_rescue_ref(where.repo, who.branch, name)
        saved = await rescue_index(git, where.repo, where.index_file, where.head, ref, message)
    else:
        ref = await git.free_rescue_ref(where, who.branch, name)
        saved = await rescue_worktree(git, where, ref, message)
    await store.log(
        EventDraft(
            Action.RESCUE,
            "saved",
            agent_id=agent_id,
            repo_id=who.repo_id,
            worktree_id=who.slot_id,
            branch=who.branch,
            fencing_token=who.fencing_token,
            detail={
                "rescue_ref": ref,
                "commit": saved.commit,
                "index_commit": saved.index_commit,
                "reason": reason,
                "owner": who.owner,
                **({"intent_to_add": list(saved.intent_to_add[:20])} if saved.intent_to_add else {}),
                **(detail or {}),
            },
        )
    )
    return SavedWork(ref, saved)
