"""ALLOCATION_ENDED: a call about an allocation that was released or reclaimed in the meantime is told
when, why and by whom, and where its work went, from the event that ended it."""

from __future__ import annotations

import time

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store.records import Action, Event


def describe_end(event: Event) -> str:
    """'the allocation of branch 'x' (wt-01) ended at <UTC>: reclaimed by … because …; its work is in …'"""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.ts))
    what = f"branch {event.branch!r} ({event.worktree_id})" if event.branch else f"{event.worktree_id}"
    detail = event.detail
    if event.action == Action.RELEASE:
        how = f"released by agent {event.agent_id}"
        if detail.get("forced_from"):
            how = f"taken from agent {detail['forced_from']} by agent {event.agent_id} (a forced release)"
    else:
        how = f"reclaimed by agent {event.agent_id} from agent {detail.get('previous_owner')}"
        if detail.get("reason"):
            how += f" because {detail['reason']}"
    rescue = detail.get("rescue_ref")
    if event.outcome == "quarantined":
        saved = "; the slot is quarantined for a person, its files untouched"
        if rescue:
            saved += f", its work saved to {rescue}"
    elif rescue:
        saved = f"; its uncommitted work was saved to {rescue}"
    else:
        saved = "; nothing needed saving"
    return f"the allocation of {what} ended at {when}: {how}{saved}"


def ended_error(event: Event) -> CoordError:
    return CoordError(ErrorCode.ALLOCATION_ENDED, describe_end(event))


def ended_for(event: Event | None, agent_id: str, *, held_here: bool) -> bool:
    """Whether `event` ended an allocation of `agent_id` by another hand (or one this server held)."""
    if event is None:
        return False
    if held_here:
        return True
    if event.action == Action.RECLAIM:
        return event.detail.get("previous_owner") == agent_id
    return event.detail.get("forced_from") == agent_id
