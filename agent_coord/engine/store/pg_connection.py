"""The store's connection to PostgreSQL: a pool of psycopg 3 connections, one transaction per hop.

It offers what connection.Connection offers for SQLite (`write`, `read`, `scalar`, `close`), and runs
the very same transaction functions: each is one synchronous function over a `PgDb`, run whole in a
worker thread with a connection of its own from the pool, so a transaction costs one hop off the
event loop whatever its number of statements (see connection.py for why that matters).

Writes are serialised by one advisory lock taken at `BEGIN` (schema_pg.WRITER_LOCK), as SQLite's
`BEGIN IMMEDIATE` serialises them: every transaction function was written as check-then-act under a
single writer, and under that lock it stays correct at READ COMMITTED without re-reading each for
predicate races. The compare-and-swaps themselves are `UPDATE … WHERE version/state/token … RETURNING`.

The lock must not be held while the commit waits for its WAL flush, or every commit of every agent
waits for the previous one's fsync (one disk flush per transaction, ~6 ms on a cloud disk: at most
~160 writes/s, whatever the CPU). So a write commits with `synchronous_commit = off` (visible at once,
the lock released) and is acknowledged only after a flush (`FLUSH`, run outside the lock with the
connection's own `synchronous_commit`): a tiny transaction whose commit waits for the WAL up to its
own record, hence past the write's. Concurrent flushes share one fsync (PostgreSQL's group commit).
Nothing acknowledged can be lost: the WAL is one sequence, so the flush covers the write, and any
write that read the unflushed one is flushed behind it before it is acknowledged in turn.
A transaction that fails on a serialization failure, a deadlock or a lock timeout is retried whole,
with bounded, jittered back-off; one whose connection broke before `COMMIT` was sent is retried on a
new connection (the server rolled it back); a broken `COMMIT`, or a server that stays away, is
STORE_UNAVAILABLE, within a few seconds, never a hang. A flush cut short by the server's clean shutdown
(or by an administrator ending the connection) is no such case: the write committed and the server
writes its WAL out before it stops, so it is acknowledged.

The hot compare-and-swaps are functions in the server (schema_pg's migration 8), each taking the writer
lock itself: `call` sends `BEGIN`, the commit setting, the call, `COMMIT` and the flush as one Query
message, one network round trip, so the lock is held for the function's run, not across client round
trips. The guarantees above hold for it: an error skips the rest of the message (no COMMIT, no flush);
the answer to `COMMIT`, read apart from what follows it, tells a done write from an undone one; a
connection the server closed while it sat in the pool is found before anything is sent, and replaced.

Reads run in `REPEATABLE READ READ ONLY` transactions: several SELECTs see one snapshot, as a SQLite
deferred transaction does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import select
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.abc import PQGen
from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.pq.abc import PGresult
from psycopg.waiting import Wait

from agent_coord.engine.store.connection import StoreBusyError, StoreClosedError, StoreUnavailableError
from agent_coord.engine.store.dialect import ConstraintError, Db, run_to_the_end
from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.engine.store.schema_pg import MIGRATION_LOCK, PG_MIGRATIONS, WRITER_LOCK
from agent_coord.store_target import PostgresUrl

T = TypeVar("T")

POOL_SIZE = 4
RETRIES = 12
CONNECT_TIMEOUT_S = 3
# How long a call waits for a connection while the server is away, before STORE_UNAVAILABLE.
WAIT_FOR_CONNECTION_S = 3.0
# A lock wait longer than this is a stuck peer, not contention: retried like a deadlock.
LOCK_TIMEOUT = "10s"
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.LockNotAvailable)
WRITE_BEGIN = f"BEGIN; SET LOCAL synchronous_commit = off; SELECT {WRITER_LOCK}"
# A transactional WAL record and nothing else: its commit waits until the WAL is flushed up to it (an
# xid alone writes no WAL, so its commit would not wait); any role may emit one, at any wal_level.
FLUSH = "SELECT pg_logical_emit_message(true, 'agent-coord', '')"
# What `call` runs after BEGIN: WRITE_BEGIN's commit setting; the function takes the writer lock itself.
CALL_BEGIN = "SET LOCAL synchronous_commit = off"

_PARAM = re.compile(r"'(?:[^']|'')*'|\"[^\"]*\"|::|\?|:[A-Za-z_][A-Za-z0-9_]*|%")


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite's parameter spelling (`?`, `:name`) in psycopg's (`%s`, `%(name)s`); a literal `%` doubled.
    Quoted text and `::` casts are left as they are."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        if token == "?":
            return "%s"
        if token == "%":
            return "%%"
        if token.startswith(":") and token != "::":
            return f"%({token[1:]})s"
        return token

    return _PARAM.sub(one, sql)


def _value(v: Any) -> Any:
    """Values as SQLite stores them: enums by value, booleans as 0/1, NaN as NULL."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _params(parameters: Any) -> Any:
    if parameters is None:
        return ()
    if isinstance(parameters, dict):
        return {k: _value(v) for k, v in parameters.items()}
    return tuple(_value(v) for v in parameters)


class PgRow(tuple[Any, ...]):
    """A row readable as SQLite's `sqlite3.Row`: by position, by column name, and `keys()`."""

    _index: dict[str, int]

    def __new__(cls, values: Sequence[Any], index: dict[str, int]) -> PgRow:
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], PgRow]:
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: PgRow(values, index)


class PgDb:
    """The `Db` a transaction function gets on PostgreSQL (see dialect.py)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = None, /) -> psycopg.Cursor[Any]:
        cur = self._conn.cursor(row_factory=_row_factory)
        try:
            cur.execute(translate(sql), _params(parameters))
        except psycopg.IntegrityError as exc:
            raise ConstraintError(str(exc)) from exc
        return cur

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> psycopg.Cursor[Any]:
        cur = self._conn.cursor(row_factory=_row_factory)
        try:
            cur.executemany(translate(sql), [_params(p) for p in parameters])
        except psycopg.IntegrityError as exc:
            raise ConstraintError(str(exc)) from exc
        return cur


class _Reconnect(Exception):
    """The connection broke before COMMIT was sent: the server rolled the transaction back."""


def _readable(fd: int) -> bool:
    if sys.platform != "win32":  # select.select refuses descriptors past FD_SETSIZE; Windows has no poll
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([fd], [], [], 0)[0])


def _check_idle(conn: psycopg.Connection[Any]) -> None:
    """Raise _Reconnect if the server has closed this idle connection (a restart, an administrator): `call`
    sends COMMIT along with BEGIN, so a dead connection must be found before anything is sent.
    An idle connection has nothing to read unless the server spoke first: only then is it asked."""
    if conn.broken or conn.closed:
        raise _Reconnect
    if _readable(conn.fileno()):
        try:
            conn.execute("SELECT 1")
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise _Reconnect from exc


def _exchange(conn: psycopg.Connection[Any], query: str) -> tuple[list[PGresult], psycopg.Error | None]:
    """Send `query` (one or more statements, one Query message) and read its results one by one; with
    the error that cut the connection, if one did. Read here, not by a cursor, so that every result
    that arrived before a lost connection is kept (a cursor raises and drops them)."""
    pgconn = conn.pgconn
    data = query.encode(conn.info.encoding)
    results: list[PGresult] = []

    def send() -> PQGen[None]:
        pgconn.send_query(data)
        while pgconn.flush():
            yield Wait.W

    def receive() -> PQGen[None]:
        while True:
            if pgconn.is_busy():
                yield Wait.R
                pgconn.consume_input()
            elif (result := pgconn.get_result()) is not None:
                results.append(result)
            else:
                return

    try:
        conn.wait(send())
    except psycopg.OperationalError as exc:
        raise _Reconnect from exc  # the message did not leave whole: the server runs no part of it
    try:
        conn.wait(receive())
    except psycopg.OperationalError as exc:
        return results, exc
    return results, None


def _rows(conn: psycopg.Connection[Any], result: PGresult) -> list[PgRow]:
    index = {(result.fname(i) or b"").decode(conn.info.encoding): i for i in range(result.nfields)}
    loader = Transformer(conn)
    loader.set_pgresult(result)
    return loader.load_rows(0, result.ntuples, lambda values: PgRow(values, index))


def unreachable(url: PostgresUrl, exc: BaseException) -> StoreUnavailableError:
    text = url.scrub(" ".join(str(exc).split()) or type(exc).__name__)
    return StoreUnavailableError(
        url,
        f"cannot be used ({text}); check that the server is up and reachable, and the user, password "
        "and database in AGENT_COORD_DB",
    )


def migrate_schema(conn: psycopg.Connection[Any], url: PostgresUrl) -> None:
    """Bring the schema to this version, inside the caller's transaction, which holds MIGRATION_LOCK (a
    server's start, or `migrate-store`'s copy, whose schema and rows then commit together)."""
    exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not (exists and exists[0]):
        tables = [
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1 LIMIT 8"
            )
        ]
        if tables:
            raise StoreUnavailableError(
                url,
                f"belongs to another program (tables: {', '.join(tables)}); give agent-coord a "
                "database (or a schema, through search_path) of its own",
            )
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (0)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > len(PG_MIGRATIONS):
        raise StoreUnavailableError(
            url, f"has schema {version}, newer than this agent-coord ({len(MIGRATIONS)}); upgrade agent-coord"
        )
    for index in range(version, len(PG_MIGRATIONS)):
        conn.execute(PG_MIGRATIONS[index])  # no parameters: one script, several statements
        conn.execute("UPDATE schema_version SET version = %s", (index + 1,))


class PgConnection:
    """What `Store` uses on PostgreSQL; see the module's docstring."""

    postgres = True

    def __init__(self, url: PostgresUrl, pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.url = url
        self._pool = pool
        self._threads = ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="agent-coord-pg")
        self._closed = False
        self._close_lock = threading.Lock()

    @classmethod
    async def open(cls, url: PostgresUrl, *, migrate: bool = True) -> PgConnection:
        # No `options` here: the URL's own (a search_path, say) must not be replaced.
        settings: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": "agent-coord",
        }

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")

        def make() -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
            # One connection first, for the server's own reason when it refuses (the pool only times out).
            psycopg.connect(url.secret_url(), **settings).close()
            pool = psycopg_pool.ConnectionPool(
                url.secret_url(),
                kwargs=settings,
                configure=configure,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=WAIT_FOR_CONNECTION_S,
                reconnect_timeout=3600 * 24 * 365,  # keep trying for as long as we run
                open=False,
                name="agent-coord",
            )
            try:
                pool.open(wait=True, timeout=WAIT_FOR_CONNECTION_S + CONNECT_TIMEOUT_S)
            except BaseException:
                pool.close(timeout=0)
                raise
            return pool

        try:
            pool = await asyncio.to_thread(make)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise unreachable(url, exc) from None
        self = cls(url, pool)
        try:
            if migrate:
                await self._migrate()
        except BaseException:
            await self.close()
            raise
        return self

    async def _migrate(self) -> None:
        def step(conn: psycopg.Connection[Any]) -> None:
            conn.execute(f"BEGIN; SELECT {MIGRATION_LOCK}")
            migrate_schema(conn, self.url)
            conn.execute("COMMIT")

        await self._hop(self._with_connection, step)

    # ---- running transactions ---------------------------------------------------------------

    async def write(self, fn: Callable[[Db], T], *, quick: bool = False) -> T:
        """Run `fn` under the writer lock, retrying the whole of it on serialization failure or deadlock."""
        return await self._retrying(self._transaction, fn, WRITE_BEGIN)

    async def call(self, statement: str, parameters: Sequence[Any]) -> list[PgRow]:
        """Run `statement`, one call of a function that takes the writer lock itself, as a write
        transaction of its own in one round trip; its rows. Retried, flushed and reported as `write`.
        The parameters are bound as given (booleans as booleans): the caller converts its values."""
        return await self._retrying(self._call, statement, tuple(parameters))

    async def read(self, fn: Callable[[Db], T], *, quick: bool = False) -> T:
        """Run `fn` in one snapshot (`quick` changes nothing here: every transaction is one hop)."""
        return await self._retrying(self._transaction, fn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    async def scalar(self, sql: str) -> int:
        def one(db: Db) -> int:
            row = db.execute(sql).fetchone()
            return int(row[0]) if row else 0

        return await self.read(one)

    async def _retrying(self, attempt_once: Callable[..., T], *args: Any) -> T:
        reconnects = 0
        for attempt in range(RETRIES):
            try:
                return await self._hop(attempt_once, *args)
            except RETRYABLE:
                await asyncio.sleep(min(0.2, random.uniform(0.001, 0.004) * (2**attempt)))
            except _Reconnect as exc:
                reconnects += 1
                if reconnects > POOL_SIZE + 1:
                    raise unreachable(self.url, exc.__cause__ or exc) from None
        raise StoreBusyError(self.url)  # the transaction kept conflicting with others through every retry

    async def _hop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in a worker thread and wait until it has finished, whatever happens: a cancelled
        caller still waits, so a transaction always ends in COMMIT or ROLLBACK before it moves on."""
        if self._closed:
            raise StoreClosedError("the store is closed")
        return await run_to_the_end(self._threads, fn, *args)

    def _with_connection(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        try:
            conn = self._pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise unreachable(self.url, exc) from None
        try:
            return fn(conn)
        except psycopg.OperationalError as exc:
            if isinstance(exc, RETRYABLE):
                raise
            raise unreachable(self.url, exc) from None
        finally:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            self._pool.putconn(conn)

    def _transaction(self, fn: Callable[[Db], T], begin: str) -> T:
        try:
            conn = self._pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise unreachable(self.url, exc) from None
        committing = False
        try:
            conn.execute(begin)
            result = fn(PgDb(conn))
            committing = True
            conn.execute("COMMIT")
            if begin == WRITE_BEGIN:
                try:
                    conn.execute(FLUSH)  # durable before it is acknowledged (see the module's docstring)
                except pg_errors.AdminShutdown:
                    # COMMIT answered, so the write stands, and it is durable: a clean shutdown (smart or
                    # fast) writes every WAL record before the server stops, and a backend an administrator
                    # terminated leaves the server's WAL writer running. Reported as unknown, the caller
                    # would take a done release for undone (and write on in a worktree no longer its own).
                    return result
            return result
        except psycopg.OperationalError as exc:
            if isinstance(exc, RETRYABLE):
                raise
            if conn.broken and not committing:
                raise _Reconnect from exc
            # A broken COMMIT: its outcome is unknown, so it is not retried (nor reported as done).
            raise unreachable(self.url, exc) from None
        except psycopg.InterfaceError as exc:
            if conn.broken and not committing:
                raise _Reconnect from exc
            raise unreachable(self.url, exc) from None
        finally:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            self._pool.putconn(conn)

    def _call(self, statement: str, parameters: Sequence[Any]) -> list[PgRow]:
        try:
            conn = self._pool.getconn()
        except psycopg_pool.PoolTimeout as exc:
            raise unreachable(self.url, exc) from None
        try:
            _check_idle(conn)
            call = psycopg.ClientCursor(conn).mogrify(statement, parameters)
            # One Query message: an error skips the rest of it (no COMMIT, no flush), and the results
            # arrive one per statement, so the answer to COMMIT is known whatever comes after it.
            results, lost = _exchange(conn, f"BEGIN; {CALL_BEGIN}; {call}; COMMIT; {FLUSH}")
            failed = next((r for r in results if r.status == ExecStatus.FATAL_ERROR), None)
            error = pg_errors.error_from_result(failed, encoding=conn.info.encoding) if failed else lost
            committed = len(results) > 3 and results[3].status == ExecStatus.COMMAND_OK
            if error is None:
                return _rows(conn, results[2])
            if committed:
                if isinstance(error, pg_errors.AdminShutdown):
                    # COMMIT answered, the flush cut short by a shutdown: acknowledged (see `_transaction`).
                    return _rows(conn, results[2])
                raise unreachable(self.url, error) from None
            if isinstance(error, psycopg.IntegrityError):
                raise ConstraintError(str(error)) from error
            if isinstance(error, RETRYABLE):
                raise error
            if failed is None or len(results) > 3:
                raise unreachable(self.url, error) from None  # COMMIT sent, its outcome unknown
            if conn.broken:
                raise _Reconnect from error  # a statement before COMMIT failed: the rest never ran
            if isinstance(error, psycopg.OperationalError):
                raise unreachable(self.url, error) from None
            raise error
        finally:
            if not conn.broken and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
            self._pool.putconn(conn)

    async def close(self) -> None:
        """Close the pool and end the threads; a second call does nothing."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        pool = self._pool
        await asyncio.shield(asyncio.to_thread(pool.close, 5.0))
        self._threads.shutdown(wait=False)
