"""Saving a worktree's work to a verified rescue ref, and saying so in the event log."""

from __future__ import annotations

from pathlib import Path

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Slot


async def save_work(git: GitDriver, store: Store, agent_id: str, slot: Slot, path: Path, reason: str) -> str:
    """Commit the whole working tree of `slot` to a new rescue ref; return the ref's name."""
    ref = await git.free_rescue_ref(path, slot.branch, slot.id)
    commit = await git.rescue(path, ref, f"agent-coord rescue of {slot.id} ({slot.branch or 'detached'}): {reason}")
    await store.log(
        EventDraft(
            Action.RESCUE,
            "saved",
            agent_id,
            slot.repo_id,
            slot.id,
            slot.branch,
            None,
            slot.fencing_token,
            detail={"rescue_ref": ref, "commit": commit, "reason": reason, "owner": slot.owner},
        )
    )
    return ref
