"""One SQLite connection, serialised by a lock, with `BEGIN IMMEDIATE` writes and bounded busy retries.

Tasks never share a transaction: every transaction runs under the connection's lock, and is shielded
from cancellation so a cancelled caller cannot leave it open.
"""

from __future__ import annotations

import os
import random
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite
import anyio

from .schema import MIGRATIONS

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 8


class StoreBusyError(Exception):
    """SQLITE_BUSY persisted through every retry."""


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def prepare_db_file(path: Path) -> None:
    """Create the database file 0600 (and its directory 0700) before SQLite does with the umask."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class Connection:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True) -> Connection:
        prepare_db_file(path)
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL lets readers (status, dashboards, the change watcher) run beside the writer.
        for attempt in range(BUSY_RETRIES):
            try:
                await conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == BUSY_RETRIES - 1:
                    raise
                await anyio.sleep(0.05 * (attempt + 1))
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        self = cls(conn)
        if migrate:
            await self._migrate()
        for suffix in ("-wal", "-shm"):
            side = anyio.Path(str(path) + suffix)
            if await side.exists():
                await side.chmod(0o600)
        return self

    async def _migrate(self) -> None:
        async def step(conn: aiosqlite.Connection) -> None:
            row = await (await conn.execute("PRAGMA user_version")).fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema {version} is newer than this agent-coord ({len(MIGRATIONS)}); upgrade"
                )
            for index in range(version, len(MIGRATIONS)):
                for statement in _split_sql(MIGRATIONS[index]):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version = {index + 1}")

        await self.write(step)

    async def close(self) -> None:
        await self._conn.close()

    async def write(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `fn` inside `BEGIN IMMEDIATE` … `COMMIT`, retrying the whole of it on SQLITE_BUSY."""
        for attempt in range(BUSY_RETRIES):
            try:
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        return await self._transaction(fn, "BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                await anyio.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise StoreBusyError("the database stayed locked through every retry")

    async def read(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run `fn` in one deferred transaction, so several SELECTs see one snapshot."""
        for attempt in range(BUSY_RETRIES):
            try:
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        return await self._transaction(fn, "BEGIN")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                await anyio.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise StoreBusyError("the database stayed locked through every retry")

    async def scalar(self, sql: str) -> int:
        async with self._lock:
            row = await (await self._conn.execute(sql)).fetchone()
        return int(row[0]) if row else 0

    async def _transaction(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]], begin: str) -> T:
        await self._conn.execute(begin)
        try:
            result = await fn(self._conn)
            await self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                await self._conn.execute("ROLLBACK")
            raise
        return result


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; triggers keep their inner `;` (sqlite3.complete_statement)."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
