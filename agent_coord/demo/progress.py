"""What the demo tells the user while it runs: its own commentary, and every event as it is committed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

import anyio

from agent_coord.dashboard import NOISE, Dashboard
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.observe.activity import format_activity_line
from agent_coord.engine.observe.watch import ChangeWatcher
from agent_coord.engine.store.records import Event


async def write_lines(out: TextIO, lines: list[str]) -> None:
    def write() -> None:
        out.write("".join(f"{line}\n" for line in lines))
        out.flush()

    # A pipe write can block while the reader is busy: not on the event loop.
    await anyio.to_thread.run_sync(write)


class Narrator:
    """The demo's own commentary: a line on the live screen, or a line of output."""

    def __init__(self, out: TextIO | None) -> None:
        self.out = out
        self.notes: list[str] = []
        self.dashboard: Dashboard | None = None
        self.started = time.monotonic()

    async def say(self, text: str) -> None:
        stamp = f"{time.monotonic() - self.started:5.1f}s"
        self.notes.append(f"{stamp} {text}")
        if self.dashboard is not None:
            self.dashboard.poke()
        elif self.out is not None:
            await write_lines(self.out, [f"demo {stamp}: {text}"])


class EventTap:
    """Every event committed to the demo's database, as it is committed (by any process)."""

    def __init__(self, coord: Coordinator, echo: TextIO | None) -> None:
        self.coord = coord
        self.echo = echo
        self.events: list[Event] = []
        self._last_id = 0
        self._changed = anyio.Event()
        self._lock = anyio.Lock()  # two drains at once would both read past the same id

    async def drain(self) -> None:
        async with self._lock:
            new = await self.coord.store.events(after_id=self._last_id)
            if not new:
                return
            self._last_id = new[-1].id
            self.events.extend(new)
            self._changed.set()
            self._changed = anyio.Event()
            if self.echo is not None:
                lines = [format_activity_line(e) for e in new if (e.action, e.outcome) not in NOISE]
                if lines:
                    await write_lines(self.echo, lines)

    async def follow(self) -> None:
        await self.drain()
        async for _ in ChangeWatcher(self.coord.store.path, 0.1).changes():
            await self.drain()

    async def wait_for(self, match: Callable[[Event], bool], timeout_s: float) -> Event | None:
        with anyio.move_on_after(timeout_s):
            seen = 0
            while True:
                for e in self.events[seen:]:
                    if match(e):
                        return e
                seen = len(self.events)
                changed = self._changed
                await changed.wait()
        return None
