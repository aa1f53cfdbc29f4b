"""The engine context: what every use case works over. One per server (per acting agent): the two lower
layers (the store and git), the repositories, the settings, the clock and the agent who acts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agent_coord.config import Settings
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.liveness.judge import Identity
from agent_coord.engine.repos import RepoResolver
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Origin, Slot


class GrantedTokens:
    """The fencing token each slot was granted to the acting agent by this server. A release presents
    it, so a slot reclaimed and granted again meanwhile refuses the release (the store compares)."""

    def __init__(self) -> None:
        self._by_slot: dict[str, int] = {}

    def remember(self, slot_id: str, token: int) -> None:
        self._by_slot[slot_id] = token

    def presented(self, slot: Slot) -> int | None:
        return self._by_slot.get(slot.id, slot.fencing_token)

    def forget(self, slot_id: str) -> None:
        self._by_slot.pop(slot_id, None)

    def __contains__(self, slot_id: object) -> bool:
        return slot_id in self._by_slot

    def items(self) -> list[tuple[str, int]]:
        """Each slot granted here and its token (a copy: forgetting while iterating is safe)."""
        return list(self._by_slot.items())


@dataclass(frozen=True)
class EngineContext:
    store: Store
    git: GitDriver
    repos: RepoResolver
    settings: Settings
    identity: Identity
    granted: GrantedTokens = field(default_factory=GrantedTokens)
    now: Callable[[], float] = time.time  # the wall clock: leases, event times, ages shown to people

    @property
    def me(self) -> str:
        return self.identity.agent_id

    def acting_as(self, agent_id: str, origin: Origin | None = None) -> EngineContext:
        """The same engine acting for `agent_id` with its `origin` (a hook gives back a worktree as its
        owner would; the process stays this one's, which the caller proved is the owner's)."""
        origin = origin or self.identity.origin
        if agent_id == self.identity.agent_id and origin == self.identity.origin:
            return self
        return replace(self, identity=replace(self.identity, agent_id=agent_id, origin=origin), granted=GrantedTokens())


class OverEngine:
    """Base of the engine's services: each reaches the store, git, repositories, settings and the acting
    agent through its one context instead of keeping its own copies."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def git(self) -> GitDriver:
        return self.ctx.git

    @property
    def repos(self) -> RepoResolver:
        return self.ctx.repos

    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def identity(self) -> Identity:
        return self.ctx.identity

    @property
    def me(self) -> str:
        return self.ctx.identity.agent_id
