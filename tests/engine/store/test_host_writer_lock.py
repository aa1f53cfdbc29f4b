"""The host's writer lock of a SQLite store (agent_coord/engine/store/host_lock.py): writes wait for it,
a wait is bounded and an abandoned one never writes, a cancelled waiter writes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agent_coord.engine.store import Store, StoreBusyError
from agent_coord.engine.store.connection import Connection

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX; Windows relies on SQLite's busy handler"),
]


@contextlib.contextmanager
def held(db: Path) -> Iterator[int]:
    """The host lock taken by someone else (another open file: flock conflicts as between processes)."""
    fd = os.open(f"{db}-writer", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def insert(key: str) -> object:
    def tx(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, 1)", (key,))

    return tx


def keys(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {str(r[0]) for r in conn.execute("SELECT key FROM meta")}


def lock_is_free(db: Path) -> bool:
    fd = os.open(f"{db}-writer", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


async def until(condition: object, timeout_s: float = 30) -> None:
    with anyio.fail_after(timeout_s):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_a_write_waits_for_the_host_lock_then_runs(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = await Store.open(db)
    repo = await store.ensure_repo("/r", "/p")
    conn = store._conn
    assert isinstance(conn, Connection)
    with held(db):
        quick = asyncio.create_task(
            store.claim_new_slot(repo, owner="a", branch="x", task=None, lease_s=60, pool_max=4)
        )
        slow = asyncio.create_task(conn.write(insert("after-the-lock")))  # type: ignore[arg-type]
        await until(lambda: conn._host is not None and conn._host._thread is not None)
        assert not quick.done() and "after-the-lock" not in keys(db)
    slot = await quick
    await slow
    assert slot is not None and slot.branch == "x"
    assert "after-the-lock" in keys(db)
    await store.close()


async def test_a_lock_held_too_long_is_store_busy_and_the_abandoned_write_never_runs(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = await Store.open(db, wait_s=0.2)
    conn = store._conn
    with held(db), pytest.raises(StoreBusyError):
        await conn.write(insert("abandoned"))  # type: ignore[arg-type]
    # The lock's thread takes the lock once it is free and lets it go unused.
    await until(lambda: lock_is_free(db))
    await conn.write(insert("later"))  # type: ignore[arg-type]
    assert keys(db) >= {"later"} and "abandoned" not in keys(db)
    await store.close()


async def test_a_natively_cancelled_waiter_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = await Store.open(db)
    conn = store._conn
    assert isinstance(conn, Connection)
    with held(db):
        task = asyncio.create_task(conn.write(insert("cancelled")))  # type: ignore[arg-type]
        await until(lambda: conn._host is not None and conn._host._thread is not None)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await until(lambda: lock_is_free(db))
    await conn.write(insert("after"))  # type: ignore[arg-type]
    assert "after" in keys(db) and "cancelled" not in keys(db)
    await store.close()


async def test_a_writer_that_ignores_the_host_lock_is_still_waited_for(tmp_path: Path) -> None:
    """Another program holds SQLite's own lock (it knows nothing of ours): the write waits in the
    connection's thread for SQLite's lock, and runs once it is let go."""
    db = tmp_path / "c.db"
    store = await Store.open(db)
    repo = await store.ensure_repo("/r", "/p")
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    claim = asyncio.create_task(store.claim_new_slot(repo, owner="a", branch="x", task=None, lease_s=60, pool_max=4))
    await anyio.sleep(0.05)  # give the claim its chance to find SQLite's lock taken
    assert not claim.done()
    other.execute("ROLLBACK")
    other.close()
    slot = await claim
    assert slot is not None and slot.branch == "x"
    await store.close()
