"""Notice commits by any process.

SQLite: poll `PRAGMA data_version` on a connection of our own. `data_version` changes when another
connection commits, so a dedicated connection sees every write, this process's included. Asking
costs a few microseconds; no state is read until it changes.

PostgreSQL: `LISTEN` on the channel the schema's triggers notify (schema_pg.CHANGES_CHANNEL) on every
committed change. Notifications are gathered for one interval and announced once, as the SQLite poll
would; a lost connection is re-established with back-off, and announced as a change, since commits
made while it was away were not heard.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import anyio

from agent_coord.store_target import PostgresUrl


class ChangeWatcher:
    def __init__(self, db: Path | PostgresUrl, interval_s: float = 0.1) -> None:
        self.db = db
        self.interval_s = interval_s

    async def changes(self) -> AsyncIterator[int]:
        """Yield a new number each time the store changed; runs until cancelled."""
        if isinstance(self.db, PostgresUrl):
            async for version in self._pg_changes(self.db):
                yield version
            return
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

    async def _pg_changes(self, url: PostgresUrl) -> AsyncIterator[int]:
        import psycopg

        from agent_coord.engine.store.schema_pg import CHANGES_CHANNEL

        version = 0
        backoff = self.interval_s
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(url.secret_url(), autocommit=True, connect_timeout=3)
            except psycopg.OperationalError:
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                backoff = self.interval_s
                if not first:
                    version += 1
                    yield version
                first = False
                while True:
                    heard = 0
                    async for _ in conn.notifies(timeout=self.interval_s):
                        heard += 1
                    if heard:
                        version += 1
                        yield version
            except psycopg.OperationalError:
                await anyio.sleep(backoff)
            finally:
                with anyio.CancelScope(shield=True):
                    await conn.close()
