"""The radar's background loop: one server per host at a time (the holder of the `radar@<host>` lease)
runs a pass every `radar_every_s`; every other server, the CLI and the edit guard only read what it
stored.

The lease is the validator's kind (validate/loop.py): it outlives a few intervals so a slow pass keeps
it, and a holder whose server process is provably gone is replaced at once rather than waited out.
"""

from __future__ import annotations

import logging
import time

import anyio

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.liveness.judge import Identity
from agent_coord.engine.radar.radar_pass import PassReport, RadarPass
from agent_coord.engine.store import Store
from agent_coord.engine.validate.loop import LeaseHolder

logger = logging.getLogger("agent-coord")
RADAR_LEASE = "radar"


def radar_lease(host: str) -> str:
    """One radar per host: only that host's worktrees can be snapshotted (docs/hosts.md)."""
    return f"{RADAR_LEASE}@{host}"


LEASE_INTERVALS = 3.0
MIN_LEASE_S = 30.0
EARLIEST_S = 3.0  # a change seen by the watcher starts a pass this long after the last one at the soonest
WATCH_POLL_S = 0.25


class RadarLoop:
    def __init__(self, store: Store, git: GitDriver, identity: Identity, *, every_s: float) -> None:
        self.store = store
        self.identity = identity
        self.every_s = every_s
        self.holder = LeaseHolder.of(identity).encode()
        self.radar = RadarPass(store, git, identity.host)
        self.last: PassReport | None = None
        self._wake = anyio.Event()

    def wake(self) -> None:
        """Run the next pass now (effective only in the server that holds the lease)."""
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except Exception:  # best effort: the next interval tries again
                    logger.warning("conflict radar pass failed", exc_info=True)
                await self._wait()
                self._wake = anyio.Event()
        finally:
            self.radar.close()

    async def _wait(self) -> None:
        """Until the interval is up, `wake()` is called, or a watched worktree changes (then after at
        least EARLIEST_S since the pass began, so an agent typing steadily costs a pass every few seconds)."""
        started = time.monotonic()
        deadline = started + self.every_s
        earliest = started + min(EARLIEST_S, self.every_s)
        while (now := time.monotonic()) < deadline:
            with anyio.move_on_after(min(WATCH_POLL_S, deadline - now)):
                await self._wake.wait()
                return
            if time.monotonic() >= earliest and self.radar.watcher.pending():
                return

    async def release(self) -> None:
        self.radar.close()
        await self.store.release_lease(radar_lease(self.identity.host), self.holder)

    async def tick(self) -> PassReport | None:
        """One pass when this server holds (or takes) the lease; None when another holds it."""
        if not await self._take_lease():
            self.radar.close()  # another server computes: no watches held here
            return None
        self.last = await self.radar.run()
        return self.last

    async def _take_lease(self) -> bool:
        ttl = max(self.every_s * LEASE_INTERVALS, MIN_LEASE_S)
        name = radar_lease(self.identity.host)
        current = await self.store.lease(name)
        if current is None or current[0] == self.holder or current[1] < time.time():
            return await self.store.take_lease(name, self.holder, ttl)
        other = LeaseHolder.parse(current[0])
        if other is None or other.gone(self.identity) is None:
            return False
        return await self.store.take_lease(name, self.holder, ttl, replace=current[0])
