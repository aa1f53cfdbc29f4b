"""What a transaction function may use of its connection, on either engine.

A transaction is one synchronous function over a `Db`: the stdlib `sqlite3.Connection` for SQLite,
`pg_connection.PgDb` for PostgreSQL. The statements are written once, in SQLite's spelling (`?` and
`:name` parameters), which `PgDb` translates; where the engines need different SQL, the call site
picks with `sql(conn, sqlite=…, postgresql=…)`, so the two versions stand side by side and are
reviewed together.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Db(Protocol):
    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...


class StoreConnection(Protocol):
    """What the store's parts use of their engine: connection.Connection or pg_connection.PgConnection."""

    postgres: bool

    async def write(self, fn: Callable[[Db], T], *, quick: bool = False) -> T:
        """`quick`: a compare-and-swap of a few rows, which the engine may run without a thread hop."""
        ...

    async def read(self, fn: Callable[[Db], T], *, quick: bool = False) -> T:
        """`quick`: a few rows found by index, which the engine may read without a thread hop."""
        ...

    async def scalar(self, sql: str) -> int: ...

    async def close(self) -> None: ...


def sql_for(conn: StoreConnection, *, sqlite: str, postgresql: str) -> str:
    return postgresql if conn.postgres else sqlite


def is_postgres(conn: Db) -> bool:
    return not isinstance(conn, sqlite3.Connection)


def sql(conn: Db, *, sqlite: str, postgresql: str) -> str:
    """The statement for the engine behind `conn`."""
    return postgresql if is_postgres(conn) else sqlite


class ConstraintError(sqlite3.IntegrityError):
    """A constraint of the PostgreSQL schema refused a write (unique branch, foreign key): raised as the
    `sqlite3.IntegrityError` the engine already handles for SQLite, so the engine does not care which."""


async def run_to_the_end(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn` in `executor` and wait until it has finished, whatever happens. The callers' anyio
    shields cover anyio cancellation; a native `Task.cancel()` gets past them, so the call is shielded
    here too, and a cancelled caller still waits for the thread: a transaction always ends in COMMIT or
    ROLLBACK before its connection is used again."""
    future = asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise
