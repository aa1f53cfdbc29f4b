"""Releasing every worktree an agent holds (the CLI's `release --agent`): one release each, so each is
checked and logged as any release is."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.models import ReleaseResult
from agent_coord.engine.release.releaser import Releaser
from agent_coord.engine.store.records import SlotState


@dataclass
class AgentRelease:
    released: list[ReleaseResult] = field(default_factory=list)
    refused: list[CoordError] = field(default_factory=list)


async def release_every_worktree_of(
    releaser: Releaser, agent: str, *, force: bool, remove: bool, over_live_agent: bool = False
) -> AgentRelease:
    """Another agent's worktrees need `force` (all refused at once, none touched, without it); with it,
    or for the acting agent's own, one refusal does not keep the agent's other worktrees.
    `over_live_agent` is a person's force (see `Releaser.release`)."""
    done = AgentRelease()
    held = [s for s in await releaser.store.slots() if s.owner == agent and s.state == SlotState.BUSY]
    if held and agent != releaser.me and not force:
        ids = ", ".join(s.id for s in held)
        done.refused.append(
            CoordError(
                ErrorCode.NOT_OWNER,
                f"{ids} {'is' if len(held) == 1 else 'are'} held by agent {agent}",
            )
        )
        return done
    for slot in held:
        try:
            done.released.append(
                await releaser.release(worktree_id=slot.id, force=force, remove=remove, over_live_agent=over_live_agent)
            )
        except CoordError as exc:
            done.refused.append(exc)
    return done
