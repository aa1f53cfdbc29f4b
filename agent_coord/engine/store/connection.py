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
import errno
import os
import random
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store.dialect import Db, run_to_the_end
from agent_coord.engine.store.host_lock import HostWriterLock
from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.platform.file_modes import create_private_file, make_private
from agent_coord.platform.filesystems import refuse_network_share
from agent_coord.store_target import PostgresUrl

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 8
# How long a transaction waits for a database another process keeps locked (AGENT_COORD_STORE_WAIT_S):
# SQLite's own busy wait per attempt, times the attempts.
DEFAULT_WAIT_S = BUSY_TIMEOUT_MS * BUSY_RETRIES / 1000

Transaction = Callable[[Db], T]


class StoreBusyError(Exception):
    """SQLITE_BUSY persisted through every retry: another process kept the database locked."""

    def __init__(self, path: Path | PostgresUrl | None = None) -> None:
        super().__init__("the database stayed locked through every retry")
        self.path = path

    def refusal(self) -> CoordError:
        """What every entry point answers (tools, command line, hooks, web, `serve`): one code for
        one situation (docs/decisions.md, "One answer per situation")."""
        where = f" {self.path}" if self.path is not None else ""
        return CoordError(
            ErrorCode.STORE_UNAVAILABLE,
            f"the coordination database{where} stayed locked by another process (AGENT_COORD_STORE_WAIT_S); "
            "nothing was changed; retry in a moment",
        )


class StoreUnavailableError(CoordError):
    """The database cannot be used at all: the message names the file, why, and what to do."""

    def __init__(self, path: Path | PostgresUrl, why: str) -> None:
        # A PostgresUrl prints without its password.
        super().__init__(ErrorCode.STORE_UNAVAILABLE, f"the coordination database {path} {why}")


# Tables every agent-coord database has from schema 1 on; a database without them belongs to another program.
OWN_TABLES = frozenset({"meta", "repos", "slots", "agents", "events", "leases"})
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


def unusable(path: Path, exc: BaseException) -> StoreUnavailableError:
    """What a failure to open or write the database means for the person who has to fix it.

    Every case leaves the file as it was: SQLite rolls a failed transaction back, and nothing is
    written before the schema is known to be ours."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return StoreUnavailableError(path, "is a directory; set AGENT_COORD_DB to a file path")
    if (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS) or "disk is full" in low or "disk i/o" in low:
        return StoreUnavailableError(
            path,
            f"could not be written ({text}): the disk is full or refused the write; nothing was "
            "written (the transaction was rolled back); free space and retry",
        )
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EROFS) or "readonly" in low:
        return StoreUnavailableError(
            path,
            f"is read-only ({text}); make the file and its directory writable for this user, "
            "or set AGENT_COORD_DB to another file",
        )
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return StoreUnavailableError(
            path,
            f"is damaged or not a database ({text}); have a person look at it, then move it aside "
            "(agent-coord starts an empty one) or set AGENT_COORD_DB to another file",
        )
    return StoreUnavailableError(
        path, f"cannot be used ({text}); check the file, or set AGENT_COORD_DB to another file"
    )


def _is_store_failure(exc: BaseException) -> bool:
    """A failure of the database itself, as opposed to a constraint a caller handles (IntegrityError)
    or a programming error, which must stay visible as what it is."""
    return isinstance(exc, OSError | sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


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


def _busy_ms(wait_s: float) -> int:
    """SQLite's busy wait per attempt, so that every attempt together waits about `wait_s`."""
    return max(1, int(wait_s * 1000 / BUSY_RETRIES))


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    """Open and configure the connection (runs in a worker thread: it may wait for the WAL switch)."""
    refuse_network_share(path)
    existed = path.exists()
    if existed:
        # Opened for writing and closed, nothing changed: a read-only file system or a directory says
        # so here, in its own words (SQLite would only say it cannot open the file).
        os.close(os.open(path, os.O_RDWR))
    else:
        prepare_db_file(path)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        _refuse_foreign(conn, path)
        if existed:  # ours, it turns out: private from now on (another program's file keeps its mode)
            make_private(path)
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


def _refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database of another program before anything is written to it (not even WAL mode)."""
    # One read transaction: another process may create the schema between two separate reads, and
    # a version read before its migration beside the tables read after it looks like a stranger's file.
    conn.execute("BEGIN")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        if conn.in_transaction:  # a failed read (a full disk) may have ended it already
            conn.execute("ROLLBACK")
    if version > len(MIGRATIONS):
        raise StoreUnavailableError(
            path, f"has schema {version}, newer than this agent-coord ({len(MIGRATIONS)}); upgrade agent-coord"
        )
    if (version == 0 and tables - {"sqlite_sequence"}) or (version > 0 and not tables >= OWN_TABLES):
        raise StoreUnavailableError(
            path,
            f"belongs to another program (tables: {', '.join(sorted(tables)[:8])}); "
            "set AGENT_COORD_DB to agent-coord's own file",
        )


# Writes under the host's writer lock (host_lock.py); the benches turn it off to measure the store
# without it, every write in the connection's thread waiting in SQLite's busy handler.
HOST_WRITER_LOCK = True
# The writer connection never checkpoints; the thread's does, every so many of its commits, the number
# adapted so that a checkpoint finds about SQLite's own auto-checkpoint size in the WAL (whatever the
# number of processes writing): 16 processes each checkpointing every 100 of their commits made 10
# checkpoints, each with two fsyncs, a second.
CHECKPOINT_FRAMES = 1000
CHECKPOINT_EVERY = (10, 100, 10_000)  # at least, at first, at most


def _connect_writer(path: Path) -> sqlite3.Connection:
    """The connection for writes under the host's writer lock: it never waits for SQLite's lock (busy_timeout
    0) and never checkpoints, so a write on the event loop waits neither for another process nor for the
    disk's fsync."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.row_factory = sqlite3.Row
        for pragma in ("busy_timeout = 0", "synchronous = NORMAL", "foreign_keys = ON", "wal_autocheckpoint = 0"):
            conn.execute(f"PRAGMA {pragma}")
    except BaseException:
        conn.close()
        raise
    return conn


def _checkpoint(conn: sqlite3.Connection) -> int | None:
    """The frames the WAL held, or None if it could not be checkpointed now."""
    with contextlib.suppress(sqlite3.Error):
        row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(row[1]) if row and int(row[1]) >= 0 else None
    return None


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
    postgres = False

    def __init__(self, conn: sqlite3.Connection, thread: ThreadPoolExecutor, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._thread = thread
        self._lock = anyio.Lock()
        self._closed = False
        self._max_pause_s = DEFAULT_WAIT_S / (2 * BUSY_RETRIES)
        self._wait_s = DEFAULT_WAIT_S
        self._host: HostWriterLock | None = None
        self._writer: sqlite3.Connection | None = None
        self._writer_commits = 0
        self._checkpoint_every = CHECKPOINT_EVERY[1]

    @classmethod
    async def open(cls, path: Path, *, migrate: bool = True, wait_s: float | None = None) -> Connection:
        """`wait_s`: how long a transaction waits for a lock another process holds (default
        `BUSY_TIMEOUT_MS` per attempt) before the caller gets `StoreBusyError`."""
        busy_ms = BUSY_TIMEOUT_MS if wait_s is None else _busy_ms(wait_s)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agent-coord-store")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(thread, _connect, path, busy_ms)
        except BaseException as exc:
            thread.shutdown(wait=False)
            if _is_busy(exc):
                raise StoreBusyError(path) from exc
            if _is_store_failure(exc):
                raise unusable(path, exc) from exc
            raise
        self = cls(conn, thread, path)
        # The pauses between attempts stay a small part of the wait (defaults: up to ~2.5 s a pause).
        self._wait_s = DEFAULT_WAIT_S if wait_s is None else wait_s
        self._max_pause_s = self._wait_s / (2 * BUSY_RETRIES)
        try:
            if migrate:
                await self._migrate()
            if HOST_WRITER_LOCK:
                self._host = await self._in_thread(HostWriterLock.beside, path)
                if self._host is not None:
                    self._writer = await self._in_thread(_connect_writer, path)
            for suffix in ("-wal", "-shm"):
                side = anyio.Path(str(path) + suffix)
                if await side.exists():
                    make_private(Path(side))
        except BaseException:
            await self.close()  # a schema newer than us, a cancelled start: no connection or thread left behind
            raise
        return self

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the connection's thread to its end (`run_to_the_end`): the connection is never
        used by two calls at once."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        return await run_to_the_end(self._thread, fn, *args)

    async def _migrate(self) -> None:
        def step(conn: Db) -> None:
            row = conn.execute("PRAGMA user_version").fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise StoreUnavailableError(
                    self.path,
                    f"has schema {version}, newer than this agent-coord ({len(MIGRATIONS)}); upgrade agent-coord",
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
                    if self._writer is not None:
                        await self._in_thread(self._writer.close)
                    await self._in_thread(self._conn.close)
                finally:
                    if self._host is not None:
                        self._host.close()
                    self._closed = True
                    self._thread.shutdown(wait=False)  # idle by now: its thread ends on its own

    async def write(self, fn: Transaction[T], *, quick: bool = False) -> T:
        """Run `fn` inside `BEGIN IMMEDIATE` … `COMMIT`, retrying the whole of it on SQLITE_BUSY.

        Under the host's writer lock (host_lock.py), on a connection that neither waits for a lock nor
        checkpoints, in the lock's thread the moment the lock is free. A `quick` write (a compare-and-swap
        of a few rows: ~0.1-0.3 ms of CPU) runs on the event loop instead when the lock is free: less than
        the two thread hops it saves cost on a loaded machine, each a wake-up to be scheduled. If SQLite's
        lock is taken all the same (a program that does not take the host lock), the write goes to the
        connection's thread, which waits for it."""
        if self._host is None:
            return await self._retrying(fn, "BEGIN IMMEDIATE")
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if self._closed:
                    raise StoreClosedError("the store is closed")
                try:
                    outcome = await self._host.run(partial(self._run_writer, fn), self._wait_s, on_loop=quick)
                except sqlite3.OperationalError as exc:
                    raise unusable(self.path, exc) from exc
                except (sqlite3.DatabaseError, OSError) as exc:
                    if not _is_store_failure(exc):
                        raise
                    raise unusable(self.path, exc) from exc
                if outcome is None:
                    raise StoreBusyError(self.path)  # another process kept the host's writer lock
                done = outcome[0]
                if done is None:  # a program without the host lock holds SQLite's: wait in the thread
                    return await self._retrying(fn, "BEGIN IMMEDIATE", locked=True)
                self._writer_commits += 1
                if self._writer_commits >= self._checkpoint_every:
                    self._writer_commits = 0
                    # In the thread, not awaited: the checkpoint's fsync holds up neither the loop nor a write.
                    checkpoint = asyncio.get_running_loop().run_in_executor(self._thread, _checkpoint, self._conn)
                    checkpoint.add_done_callback(self._adapt_checkpoints)
                return done[0]
        raise AssertionError("a shielded scope cannot swallow the write")  # for the type checker

    def _adapt_checkpoints(self, checkpoint: asyncio.Future[int | None]) -> None:
        frames = None if checkpoint.cancelled() or checkpoint.exception() else checkpoint.result()
        low, _, high = CHECKPOINT_EVERY
        if frames is not None and frames < CHECKPOINT_FRAMES // 2:
            self._checkpoint_every = min(high, self._checkpoint_every * 2)
        elif frames is not None and frames > CHECKPOINT_FRAMES * 2:
            self._checkpoint_every = max(low, self._checkpoint_every // 2)

    def _run_writer(self, fn: Transaction[T]) -> tuple[T] | None:
        """`fn` on the writer connection (on the loop, or in the host lock's thread), or None if SQLite's
        lock was taken (nothing was written)."""
        assert self._writer is not None
        try:
            return (_run(self._writer, fn, "BEGIN IMMEDIATE"),)
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return None
            raise

    async def read(self, fn: Transaction[T], *, quick: bool = False) -> T:
        """Run `fn` in one deferred transaction, so several SELECTs see one snapshot.

        A `quick` read (a few rows found by index, as an allocation's) runs on the event loop, on the
        writer connection, which never waits: in WAL mode a reader takes no lock a writer holds, so it
        is answered at once, and the two thread hops it saves cost more on a loaded machine. Only if
        SQLite answers busy all the same (a WAL being recovered) does it go to the connection's thread,
        which waits."""
        if quick and self._writer is not None:
            with anyio.CancelScope(shield=True):
                async with self._lock:
                    if self._closed:
                        raise StoreClosedError("the store is closed")
                    try:
                        return _run(self._writer, fn, "BEGIN")
                    except sqlite3.OperationalError as exc:
                        if not _is_busy(exc):
                            raise unusable(self.path, exc) from exc
                    except (sqlite3.DatabaseError, OSError) as exc:
                        if not _is_store_failure(exc):
                            raise
                        raise unusable(self.path, exc) from exc
        return await self._retrying(fn, "BEGIN")

    async def scalar(self, sql: str) -> int:
        def one(conn: sqlite3.Connection) -> int:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0

        with anyio.CancelScope(shield=True):
            async with self._lock:
                value = await self._in_thread(one, self._conn)
        return value

    async def _retrying(self, fn: Transaction[T], begin: str, *, locked: bool = False) -> T:
        """`locked`: the caller holds the connection's lock already."""
        for attempt in range(BUSY_RETRIES):
            try:
                with anyio.CancelScope(shield=True):
                    if locked:
                        return await self._in_thread(_run, self._conn, fn, begin)
                    async with self._lock:
                        return await self._in_thread(_run, self._conn, fn, begin)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise unusable(self.path, exc) from exc
                await anyio.sleep(min(random.uniform(0.005, 0.02) * (2**attempt), self._max_pause_s))
            except (sqlite3.DatabaseError, OSError) as exc:
                if not _is_store_failure(exc):
                    raise
                raise unusable(self.path, exc) from exc
        raise StoreBusyError(self.path)


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
