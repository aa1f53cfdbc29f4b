"""agent-coord's stdio server, unchanged, plus what the fault campaign needs to aim its kills.

`python -m bench.fault_server` serves exactly like `python -m server`, after wrapping two methods:
  - `connection._run` (one whole transaction, in the store's worker thread, the host writer lock's
    thread, or on the event loop for a quick compare-and-swap; on PostgreSQL,
    `PgConnection._transaction`, and `PgConnection._call` for a server-side function) sets bit 0 of
    a one-byte flag (a shared file, mmap'ed) from before `BEGIN` until after `COMMIT`/`ROLLBACK`;
    with AGENT_COORD_FAULT_TX_DELAY_MS it also sleeps up to that long inside write transactions,
    after their statements and before `COMMIT`, so a kill can land while the write lock is held and
    the transaction is not yet committed (a function's call: before it is sent);
  - the git between phase 1 (FREE→ALLOCATING committed) and phase 2 (ALLOCATING→BUSY) of an
    allocation, `switch_warm_slot` and `add_cold_slot` as `Pool._allocate` calls them, sets bit 1;
    AGENT_COORD_FAULT_GIT_DELAY_MS sleeps up to that long at its start.
The chaos loop reads the flag to SIGKILL a server inside a transaction or between allocation phases,
and reads it again after the kill to record where the process really died. Bytes 8..16 hold the pid.
Nothing else is changed: the same store, pool, validator and tools run.
"""

from __future__ import annotations

import mmap
import os
import random
import time
from typing import Any

IN_TX = 1
BETWEEN_PHASES = 2


def _install(flag_path: str) -> None:
    from agent_coord.engine.allocate import pool as pool_module
    from agent_coord.engine.store import connection as connection_module

    fd = os.open(flag_path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 16)
    flag = mmap.mmap(fd, 16)
    flag[8:16] = os.getpid().to_bytes(8, "little")
    tx_delay = float(os.environ.get("AGENT_COORD_FAULT_TX_DELAY_MS", "0") or 0) / 1000
    git_delay = float(os.environ.get("AGENT_COORD_FAULT_GIT_DELAY_MS", "0") or 0) / 1000

    def set_bit(bit: int) -> None:
        flag[0] = flag[0] | bit

    def clear_bit(bit: int) -> None:
        flag[0] = flag[0] & ~bit & 0xFF

    import anyio

    original_run = connection_module._run

    def _run(conn: Any, fn: Any, begin: str) -> Any:
        # Runs around the whole transaction, in whichever thread runs it.
        set_bit(IN_TX)
        try:
            if tx_delay and begin == "BEGIN IMMEDIATE":

                def slow(c: Any) -> Any:
                    result = fn(c)
                    time.sleep(random.uniform(0, tx_delay))
                    return result

                return original_run(conn, slow, begin)
            return original_run(conn, fn, begin)
        finally:
            clear_bit(IN_TX)

    def between_phases(original: Any) -> Any:
        async def marked(*args: Any, **kwargs: Any) -> Any:
            set_bit(BETWEEN_PHASES)
            try:
                if git_delay:
                    await anyio.sleep(random.uniform(0, git_delay))
                return await original(*args, **kwargs)
            finally:
                clear_bit(BETWEEN_PHASES)

        return marked

    connection_module._run = _run
    _install_pg(set_bit, clear_bit, tx_delay)
    for name in ("switch_warm_slot", "add_cold_slot"):  # looked up in the pool module at each call
        setattr(pool_module, name, between_phases(getattr(pool_module, name)))


def _install_pg(set_bit: Any, clear_bit: Any, tx_delay: float) -> None:
    """The same marks around PostgreSQL transactions (a server of a PostgreSQL store)."""
    try:
        from agent_coord.engine.store.pg_connection import PgConnection
        from agent_coord.engine.store.schema_pg import WRITER_LOCK
    except ImportError:  # no driver: this server cannot use PostgreSQL anyway
        return
    original = PgConnection._transaction

    def _transaction(self: Any, fn: Any, begin: str) -> Any:
        set_bit(IN_TX)
        try:
            if tx_delay and WRITER_LOCK in begin:

                def slow(c: Any) -> Any:
                    result = fn(c)
                    time.sleep(random.uniform(0, tx_delay))
                    return result

                return original(self, slow, begin)
            return original(self, fn, begin)
        finally:
            clear_bit(IN_TX)

    original_call = PgConnection._call

    def _call(self: Any, statement: str, parameters: Any) -> Any:
        # A server-side function's write is one message: a kill lands before it is sent (nothing done)
        # or after (done inside the server, the answer lost); the delay aims kills at the first.
        set_bit(IN_TX)
        try:
            if tx_delay:
                time.sleep(random.uniform(0, tx_delay))
            return original_call(self, statement, parameters)
        finally:
            clear_bit(IN_TX)

    PgConnection._transaction = _transaction  # type: ignore[method-assign]
    PgConnection._call = _call  # type: ignore[method-assign]


def read_flag(flag_path: str) -> tuple[int, int]:
    """(flag bits, pid) as last written by the server at that path; (0, 0) when there is none yet."""
    try:
        with open(flag_path, "rb") as fh:
            data = fh.read(16)
    except OSError:
        return 0, 0
    if len(data) < 16:
        return 0, 0
    return data[0], int.from_bytes(data[8:16], "little")


def main() -> None:
    flag_path = os.environ.get("AGENT_COORD_FAULT_FLAG")
    if flag_path:
        _install(flag_path)
    import anyio

    from agent_coord.server.app import serve_stdio

    anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
