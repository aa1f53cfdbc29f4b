"""The live loop: read a snapshot when any process commits, redraw every second so that ages move.

A ``ChangeWatcher`` (``PRAGMA data_version`` on a connection of its own) says when any process
committed; only then is a ``Snapshot`` read. A one-second clock redraws from the last snapshot,
without touching the store.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from typing import Literal

import anyio
from rich.console import Console
from rich.live import Live

from agent_coord.dashboard.formatting import clock
from agent_coord.dashboard.screen import render_screen
from agent_coord.dashboard.snapshot import Snapshot, gone_agents, take_snapshot
from agent_coord.dashboard.terminal import cancel_on_stop_signal
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from agent_coord.engine.observe.watch import ChangeWatcher
from agent_coord.engine.store import StoreBusyError
from agent_coord.platform.signals import resizes
from agent_coord.platform.terminal_keys import cbreak, stdin_fd, wait_for_key

TICK_S = 1.0

Outcome = Literal["quit", "stopped"]


class Dashboard:
    """The live view of one store. ``run`` returns when the user presses q (or is cancelled)."""

    def __init__(
        self,
        coord: Coordinator,
        *,
        repo: str | None = None,
        console: Console | None = None,
        notes: Sequence[str] | None = None,
        tick_s: float = TICK_S,
        watch_interval_s: float | None = None,
        hint: str = "q quit",
    ) -> None:
        self.coord = coord
        self.repo = repo
        self.console = console or Console()
        self.notes = notes if notes is not None else []
        self.tick_s = tick_s
        self.hint = hint
        self.watch_interval_s = watch_interval_s or coord.settings.watch_interval_s
        self.host = coord.identity.host
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self.redraws = 0
        self.reloads = 0
        self._wake = anyio.Event()
        self._data_changed = True

    def poke(self) -> None:
        """Redraw soon (the notes changed); the store is not read again."""
        self._wake.set()

    async def run(self, *, keys: bool = True) -> Outcome:
        stop_keys = threading.Event()
        fd = stdin_fd() if keys else -1
        outcome: list[Outcome] = []
        with (
            cbreak(fd) as have_keys,
            Live(
                console=self.console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=True,
            ) as live,
        ):
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch)
                    if have_keys:
                        tg.start_soon(self._keys, fd, stop_keys, tg.cancel_scope, outcome)
                    if sys.platform != "win32":
                        tg.start_soon(self._on_resize)
                    await self._loop(live)
            finally:
                stop_keys.set()
        return outcome[0] if outcome else "stopped"

    async def _loop(self, live: Live) -> None:
        while True:
            if self._data_changed:
                self._data_changed = False
                try:
                    self.snapshot = await take_snapshot(self.coord, self.repo)
                    self.error = None
                except (CoordError, StoreBusyError, sqlite3.Error) as exc:
                    if self.snapshot is None:
                        raise
                    # Keep showing the last good state, and say why it may be old.
                    self.error = f"showing the state of {clock(self.snapshot.taken_at)}: {exc}"
                self.reloads += 1
            await self._draw(live)
            # Wake on a commit, a poke, or the next whole second (so the clock ticks evenly).
            with anyio.move_on_after(self.tick_s - (time.time() % self.tick_s) + 0.01):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _draw(self, live: Live) -> None:
        snapshot = self.snapshot
        if snapshot is None:
            return
        notes = [*self.notes, self.error] if self.error else list(self.notes)

        def draw() -> None:
            # Terminal writes can block (a slow ssh link): keep them off the event loop.
            width, height = self.console.size
            gone = gone_agents(snapshot.status.agents, self.host)
            screen = render_screen(snapshot, width=width, height=height, notes=notes, gone=gone, hint=self.hint)
            live.update(screen, refresh=True)

        await anyio.to_thread.run_sync(draw)
        self.redraws += 1

    async def _watch(self) -> None:
        async for _ in ChangeWatcher(self.coord.store.path, self.watch_interval_s).changes():
            self._data_changed = True
            self._wake.set()

    async def _keys(self, fd: int, stop: threading.Event, scope: anyio.CancelScope, outcome: list[Outcome]) -> None:
        while True:
            data = await anyio.to_thread.run_sync(wait_for_key, fd, stop, abandon_on_cancel=True)
            if not data:  # stdin closed: keep showing, Ctrl-C still quits
                return
            if b"q" in data.lower():
                outcome.append("quit")
                scope.cancel()
                return
            if b"r" in data.lower():
                self._data_changed = True
                self._wake.set()

    async def _on_resize(self) -> None:
        async for _ in resizes():
            self._wake.set()


async def run_dashboard(coord: Coordinator, repo: str | None, console: Console) -> str:
    """The `dashboard` command on a terminal: until q, Ctrl-C or SIGTERM."""
    dashboard = Dashboard(coord, repo=repo, console=console)
    result = "signal"
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_on_stop_signal, tg.cancel_scope)
        result = await dashboard.run()
        tg.cancel_scope.cancel()
    return result
