"""A design probe for bench/store_cas.py (`--host-writer`): one writer process per host runs every write
transaction, and the workers (the agents' servers) forward each one to it over a Unix socket.

Not the store: the writer runs the raw baseline's statements (bench/cas_raw_worker.py) on one stdlib
`sqlite3` connection, one transaction at a time, so nothing ever waits for SQLite's lock or for a
descheduled lock holder in another process. What it measures is what the architecture would give on this
machine: a round trip to a local process plus one transaction, against 16 processes taking turns at a
file lock. The workers send the name of the operation and its arguments (owner, branch, slot, token,
changes), never SQL.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Client, Connection, Listener, wait
from pathlib import Path
from typing import Any

from bench.cas_harness import GaveUp, RawIdentity

AUTHKEY = b"agent-coord-bench"


def serve(db: Path, address: str, clients: int, pool_max: int) -> None:
    """The writer: accept `clients` workers, then answer their operations until every one has gone."""
    from bench.cas_raw_worker import RawSqlite

    ops = RawSqlite(db, pool_max)
    with Listener(address, family="AF_UNIX", authkey=AUTHKEY) as listener:
        print("listening", flush=True)
        open_conns: list[Connection] = [listener.accept() for _ in range(clients)]
        while open_conns:
            for conn in wait(open_conns):
                assert isinstance(conn, Connection)
                try:
                    name, owner, branch, args = conn.recv()
                except EOFError:
                    open_conns.remove(conn)
                    continue
                ops.owner, ops.branch = owner, branch
                try:
                    row = ops.write(lambda: getattr(ops, name)(*args))  # noqa: B023 (called at once)
                    conn.send(("ok", dict(row) if row is not None else None))
                except GaveUp:
                    conn.send(("busy", None))
    ops.close()


class HostWriterClient(RawIdentity):
    """`cas_harness.RawOps` that forwards each transaction to the host's writer process."""

    def __init__(self, address: str, pool_max: int) -> None:
        super().__init__(pool_max)
        self.conn = Client(address, family="AF_UNIX", authkey=AUTHKEY)

    def _call(self, name: str, *args: Any) -> Any:
        self.conn.send((name, self.owner, self.branch, args))
        status, row = self.conn.recv()
        if status == "busy":
            raise GaveUp
        return row

    def write(self, fn: Any) -> Any:
        return fn()

    def claim_any(self) -> Any:
        return self._call("claim_any")

    def claim_new(self) -> Any:
        return self._call("claim_new")

    def transition(self, slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str) -> Any:
        return self._call("transition", slot_id, expect, token, changes, action)

    def close(self) -> None:
        self.conn.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    os._exit(0)
