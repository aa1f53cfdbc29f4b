"""One reader of the store for every open page: the change watcher wakes it, each page's stream sends
the newest document. Ten pages cost one read per change, not ten."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from agent_coord.engine.observe.watch import ChangeWatcher
from agent_coord.engine.store import StoreBusyError
from agent_coord.web.views import DirtyCache, read_state

logger = logging.getLogger("agent-coord.web")
# Liveness of agents on this host is re-judged this often without a commit (a crash commits nothing).
RECHECK_S = 5.0
# A comment on an idle stream this often keeps proxies from closing it.
KEEPALIVE_S = 15.0


class StateHub:
    def __init__(self, coord: Coordinator, *, repo: str | None, read_only: bool, watch_interval_s: float) -> None:
        self.coord = coord
        self.repo = repo
        self.read_only = read_only
        self.watch_interval_s = watch_interval_s
        self.dirty = DirtyCache(coord)
        self.version = 0
        self.payload = ""  # the newest document, serialised once for every stream
        self.error: str | None = None
        self.reads = 0
        self._published = anyio.Event()
        self._wake = anyio.Event()
        self._ready = anyio.Event()

    async def run(self) -> None:
        """Read on every commit (coalescing a burst into one read) until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch)
            while True:
                await self.refresh()
                with anyio.move_on_after(RECHECK_S):
                    await self._wake.wait()
                self._wake = anyio.Event()

    def poke(self) -> None:
        """Read again soon (after an action from the page, which the watcher would see anyway)."""
        self._wake.set()

    async def refresh(self) -> None:
        try:
            doc = await read_state(
                self.coord, self.dirty, repo=self.repo, read_only=self.read_only, version=self.version + 1
            )
        except (CoordError, StoreBusyError, sqlite3.Error) as exc:
            # Keep the last good document; the page says why it may be old.
            self.error = str(exc)
            logger.warning("reading the store failed: %s", exc)
            if not self._ready.is_set():
                doc = {"version": self.version + 1, "error": self.error, "now": time.time()}
            else:
                return
        self.reads += 1
        self.version = doc["version"]
        self.payload = json.dumps(doc, separators=(",", ":"), default=str)
        self._ready.set()
        published, self._published = self._published, anyio.Event()
        published.set()

    async def _watch(self) -> None:
        async for _ in ChangeWatcher(self.coord.store.path, self.watch_interval_s).changes():
            self._wake.set()

    async def current(self) -> tuple[int, str]:
        await self._ready.wait()
        return self.version, self.payload

    async def documents(self, keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str | None]:
        """The current document, then each newer one (a slow page skips to the newest); None when
        nothing changed for `keepalive_s`, so the stream can say it is still there."""
        await self._ready.wait()
        seen = 0
        while True:
            if self.version != seen:
                seen = self.version
                yield self.payload
                continue
            with anyio.move_on_after(keepalive_s) as scope:
                await self._published.wait()
            if scope.cancelled_caught:
                yield None


def as_json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)
