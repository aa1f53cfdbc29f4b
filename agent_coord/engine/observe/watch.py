"""Notice commits by any process: poll `PRAGMA data_version` on a connection of our own.

`data_version` changes when another connection commits, so a dedicated connection sees every write,
this process's included. Asking costs a few microseconds; no state is read until it changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import anyio


class ChangeWatcher:
    def __init__(self, db: Path, interval_s: float = 0.1) -> None:
        self.db = db
        self.interval_s = interval_s

    async def changes(self) -> AsyncIterator[int]:
        """Yield the new data_version each time the database changed; runs until cancelled."""
        conn = await aiosqlite.connect(f"file:{self.db}?mode=ro", uri=True, isolation_level=None)
        try:
            await conn.execute("PRAGMA busy_timeout = 1000")
            last: int | None = None
            while True:
                try:
                    row = await (await conn.execute("PRAGMA data_version")).fetchone()
                    version = int(row[0]) if row else 0
                except sqlite3.OperationalError:
                    version = last or 0
                if last is not None and version != last:
                    yield version
                last = version
                await anyio.sleep(self.interval_s)
        finally:
            with anyio.CancelScope(shield=True):
                await conn.close()
