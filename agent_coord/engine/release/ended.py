"""ALLOCATION_ENDED: a call about an allocation that was released or reclaimed in the meantime is told
when, why and by whom, and where its work went, from the event that ended it."""

from __future__ import annotations

import time
from pathlib import Path

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.driver import RESCUE_NAMESPACE, GitDriver, GitError
from agent_coord.engine.reclaim.rescue import of_grant
from agent_coord.engine.repos import RepoResolver
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Action, Event


def describe_end(event: Event, rescued: list[str] | None = None) -> str:
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
    # The end's own ref, and any a reclaim or release that died half-way saved from the same grant.
    refs = list(dict.fromkeys([*(rescued or []), *([detail["rescue_ref"]] if detail.get("rescue_ref") else [])]))
    if event.outcome == "quarantined":
        saved = "; the slot is quarantined for a person, its files untouched"
        if refs:
            saved += f", its work saved to {' and '.join(refs)}"
    elif refs:
        saved = f"; its uncommitted work was saved to {' and '.join(refs)}"
    else:
        saved = "; nothing needed saving"
    return f"the allocation of {what} ended at {when}: {how}{saved}"


async def why_ended(store: Store, repos: RepoResolver, git: GitDriver, event: Event) -> str:
    rescued = await store.rescue_refs(event.fencing_token) if event.fencing_token is not None else []
    unlogged = await _unlogged_rescues(repos, git, event, set(rescued))
    # In the order they were saved (a ref's last part is its UTC time, to the millisecond).
    return describe_end(event, sorted([*rescued, *unlogged], key=lambda ref: ref.rsplit("/", 1)[-1]))


async def ended_error(store: Store, repos: RepoResolver, git: GitDriver, event: Event) -> CoordError:
    return CoordError(ErrorCode.ALLOCATION_ENDED, await why_ended(store, repos, git, event))


async def _unlogged_rescues(repos: RepoResolver, git: GitDriver, event: Event, logged: set[str]) -> list[str]:
    """Rescue refs of the ended grant that no event names: a reclaim or release killed between saving
    the work and logging it (its redo saved the same work again, and logged that). Found by the grant's
    mark in the rescue commit's subject (reclaim/rescue.py); best effort, git's answer or nothing."""
    if event.fencing_token is None or event.repo_id is None:
        return []
    try:
        repo = await repos.by_id(event.repo_id)  # this host's clone only: another host's refs are its own
    except CoordError:
        return []
    # The directory `rescue_ref_name` saves a branch's (or a slot's) rescues under.
    prefix = f"{RESCUE_NAMESPACE}/{event.branch or event.worktree_id}/"
    try:
        out = await git.run(Path(repo.path), "for-each-ref", "--format=%(refname)%09%(contents:subject)", prefix)
    except (GitError, OSError):
        return []
    found = []
    for line in out.splitlines():
        ref, _, subject = line.partition("\t")
        if ref not in logged and of_grant(subject, event.fencing_token):
            found.append(ref)
    return found


def ended_for(event: Event | None, agent_id: str, *, held_here: bool) -> bool:
    """Whether `event` ended an allocation of `agent_id` by another hand (or one this server held)."""
    if event is None:
        return False
    if held_here:
        return True
    if event.action == Action.RECLAIM:
        return event.detail.get("previous_owner") == agent_id
    return event.detail.get("forced_from") == agent_id
