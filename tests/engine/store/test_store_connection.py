"""The store's connection: one thread, one transaction at a time, whatever cancels the caller."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from agent_coord.engine.store import Store, StoreClosedError
from agent_coord.engine.store.connection import Connection, StoreUnavailableError

pytestmark = pytest.mark.anyio


def store_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("agent-coord-store"))


async def test_a_natively_cancelled_caller_waits_for_its_transaction(tmp_path: Path) -> None:
    conn = await Connection.open(tmp_path / "c.db")
    spans: list[tuple[str, float, float]] = []

    inside = threading.Event()

    def slow(c: sqlite3.Connection) -> None:
        start = time.monotonic()
        c.execute("INSERT INTO meta (key, value) VALUES ('slow', 1)")
        inside.set()
        time.sleep(0.3)  # the transaction's own work, under way when the caller is cancelled
        spans.append(("slow", start, time.monotonic()))

    def quick(c: sqlite3.Connection) -> int:
        start = time.monotonic()
        row = c.execute("SELECT value FROM meta WHERE key = 'slow'").fetchone()
        spans.append(("quick", start, time.monotonic()))
        return int(row[0]) if row else 0

    task = asyncio.create_task(conn.write(slow))
    assert await asyncio.to_thread(inside.wait, 30)  # cancelled inside its transaction, not before it
    task.cancel()  # a native cancel: anyio's shields do not stop it
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancelled caller returned only once its transaction had committed: the next one sees it.
    assert [name for name, *_ in spans] == ["slow"]
    assert await conn.write(quick) == 1
    (_, _, slow_end), (_, quick_start, _) = spans
    assert quick_start >= slow_end
    await conn.close()


async def test_a_failed_open_leaves_no_thread_and_close_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = await Store.open(db)
    await store.close()
    await store.close()  # a second close does nothing
    with pytest.raises(StoreClosedError):
        await store.slots()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 999")
    before = store_threads()
    with pytest.raises(StoreUnavailableError, match="newer than this agent-coord"):
        await Store.open(db)
    deadline = time.monotonic() + 60
    while store_threads() > before and time.monotonic() < deadline:  # the executor's thread ends on its own
        await asyncio.sleep(0.01)
    assert store_threads() <= before


_OPEN_AT_ONCE = """
import asyncio, sys, time
from pathlib import Path
from agent_coord.engine.store import Store
start = float(sys.argv[2])
while time.time() < start:
    pass
async def main() -> None:
    store = await Store.open(Path(sys.argv[1]))
    await store.close()
asyncio.run(main())
"""


def test_processes_opening_a_new_database_at_once_all_get_the_store(tmp_path: Path) -> None:
    """The first opener creates the schema while the others check whose file it is: none of them may
    take the half-seen schema for another program's."""
    import subprocess
    import sys

    for round_ in range(2):
        db = tmp_path / f"round-{round_}" / "coord.db"
        start = time.time() + 1.5  # every process is up and spinning before the first opens
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _OPEN_AT_ONCE, str(db), str(start)], stderr=subprocess.PIPE, text=True
            )
            for _ in range(8)
        ]
        failures = [err for p in procs if (err := p.communicate(timeout=120)[1]) and p.returncode != 0]
        assert failures == [], failures[0][-800:]


async def test_a_quick_read_is_answered_on_the_loop_while_another_process_writes(tmp_path: Path) -> None:
    """In WAL mode a reader takes no lock a writer holds: a quick read runs on the event loop and sees
    the last committed state while another connection (another process, for SQLite) is mid-write."""
    conn = await Connection.open(tmp_path / "c.db")
    await conn.write(lambda c: c.execute("INSERT INTO meta (key, value) VALUES ('k', 'committed')"))
    other = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE meta SET value = 'uncommitted' WHERE key = 'k'")
    loop_thread = threading.get_ident()
    seen: list[tuple[int, str]] = []

    def read(c: sqlite3.Connection) -> None:
        row = c.execute("SELECT value FROM meta WHERE key = 'k'").fetchone()
        seen.append((threading.get_ident(), str(row[0])))

    await conn.read(read, quick=True)
    await conn.read(read)  # the ordinary read: in the connection's thread
    other.execute("ROLLBACK")
    other.close()
    await conn.close()
    assert seen[0] == (loop_thread, "committed")
    assert seen[1][0] != loop_thread and seen[1][1] == "committed"
