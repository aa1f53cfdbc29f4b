"""One SQLite connection, serialised by a lock, with `BEGIN IMMEDIATE` writes and bounded busy retries.

A transaction is one synchronous function over a stdlib `sqlite3.Connection`, run whole in one call
to the connection's own thread: `BEGIN`, its statements and `COMMIT` cost one hop off the event loop,
not one per statement. That matters beyond speed: between two hops a process can be descheduled while
it holds SQLite's write lock, and every other process then sleeps in busy_timeout's back-off
(BENCHMARKS.md, "Store compare-and-swap": op p99 at 16 processes fell from 79 ms to single digits).

The thread is one dedicated worker (a single-thread executor) that opens the connection and is the
only thread ever to use it, as SQLite prefers; a hop to it costs ~60 µs where anyio's shared worker
pool costs ~80 µs, which at three transactions per allocate+release is ~13% of the store's time.

Tasks never share a transaction: every transaction runs under the connection's lock, and is shielded
from cancellation; the thread is never abandoned, so a transaction always ends in `COMMIT` or
`ROLLBACK` in its thread before the caller moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import anyio

from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.platform.file_modes import create_private_file, make_private
from agent_coord.platform.filesystems import refuse_network_share

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 8

Transaction = Callable[[sqlite3.Connection], T]


class StoreBusyError(Exception):
    """SQLITE_BUSY persisted through every retry."""


class StoreClosedError(RuntimeError):
    """The store was used after `close()`."""


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def prepare_db_file(path: Path) -> None:
    """Create the database file 0600 (and its directory 0700) before SQLite does with the umask."""
    create_private_file(path)


def _connect(path: Path) -> sqlite3.Connection:
    """Open and configure the connection (runs in a worker thread: it may wait for the WAL switch)."""
    refuse_network_share(path)
    prepare_db_file(path)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # WAL lets readers (status, dashboards, the change watcher) run beside the writer.
        for attempt in range(BUSY_RETRIES):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == BUSY_RETRIES - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _run(conn: sqlite3.Connection, fn: Transaction[T], begin: str) -> T:
    conn.execute(begin)
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


class Connection:
    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._thread = thread
        self._lock = anyio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True) -> Connection:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-coord-store")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(thread, _connect, path)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self = cls(conn, thread)
        try:
            if migrate:
                await self._migrate()
            for suffix in ("-wal", "-shm"):
                side = anyio.Path(str(path) + suffix)
                if await side.exists():
                    make_private(Path(side))
        except BaseException:
            await self.close()  # a schema newer than us, a cancelled start: no connection or thread left behind
            raise
        return self

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the connection's thread and wait until it has finished, whatever happens.

        The callers' anyio shields cover anyio cancellation; a native `Task.cancel()` gets past them,
        so the call is also shielded here, and a cancelled caller still waits for the thread before
        its lock is released: the connection is never used by two calls at once."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        future = asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait([future])
            raise

    async def _migrate(self) -> None:
        def step(conn: sqlite3.Connection) -> None:
            row = conn.execute("PRAGMA user_version").fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema {version} is newer than this agent-coord ({len(MIGRATIONS)}); upgrade"
                )
            for index in range(version, len(MIGRATIONS)):
                for statement in _split_sql(MIGRATIONS[index]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {index + 1}")

        await self.write(step)

    async def close(self) -> None:
        """Close the connection and end its thread; a second call does nothing."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._closed:
                    return
                try:
                    await self._in_thread(self._conn.close)
                finally:
                    self._closed = True
                    self._thread.shutdown(wait=False)  # idle by now: its thread ends on its own

    async def write(self, fn: Transaction[T]) -> T:
        """Run `fn` inside `BEGIN IMMEDIATE` … `COMMIT`, retrying the whole of it on SQLITE_BUSY."""
        return await self._retrying(fn, "BEGIN IMMEDIATE")

    async def read(self, fn: Transaction[T]) -> T:
        """Run `fn` in one deferred transaction, so several SELECTs see one snapshot."""
        return await self._retrying(fn, "BEGIN")

    async def scalar(self, sql: str) -> int:
        def one(conn: sqlite3.Connection) -> int:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0

        with anyio.CancelScope(shield=True):
            async with self._lock:
                value = await self._in_thread(one, self._conn)
        return value

    async def _retrying(self, fn: Transaction[T], begin: str) -> T:
        for attempt in range(BUSY_RETRIES):
            try:
                with anyio.CancelScope(shield=True):
                    async with self._lock:
                        return await self._in_thread(_run, self._conn, fn, begin)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                await anyio.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise StoreBusyError("the database stayed locked through every retry")


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
