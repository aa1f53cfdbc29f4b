"""The raw baseline of bench/store_cas.py: the store's SQL statements, transaction for transaction, with
the stdlib `sqlite3` module (WAL, busy_timeout, synchronous=NORMAL, BEGIN IMMEDIATE, retry on SQLITE_BUSY).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent_coord.engine.store.records import freed
from bench.cas_cycle import LEASE_S, Pacer, Tally, slot_paths, wait_until_sync

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 8


class _RawBusyError(Exception):
    pass


def raw_worker(db: Path, pool_max: int, duration: float, rate: float, start: float) -> dict[str, Any]:
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    busy_retried = 0

    def write(fn: Any, begin: str = "BEGIN IMMEDIATE") -> Any:
        nonlocal busy_retried
        for attempt in range(BUSY_RETRIES):
            try:
                conn.execute(begin)
                try:
                    result = fn()
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" not in text and "busy" not in text:
                    raise
                busy_retried += 1
                time.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise _RawBusyError

    def ensure_repo() -> int:
        conn.execute(
            "INSERT INTO repos (path, pool_root, created_at) VALUES (?, ?, ?) ON CONFLICT(path) DO NOTHING",
            ("/bench/repo", "/bench/pool", time.time()),
        )
        return int(conn.execute("SELECT id FROM repos WHERE path = ?", ("/bench/repo",)).fetchone()[0])

    repo_id = write(ensure_repo)
    owner = f"bench-{os.getpid()}"
    branch = f"b-{os.getpid()}"
    held = ("ALLOCATING", "BUSY", "RELEASING")

    def event(action: str, slot_id: str, token: int, now: float) -> None:
        conn.execute(
            "INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,"
            " fencing_token, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, owner, action, repo_id, slot_id, branch, "ok", 0.0, token, json.dumps({}, sort_keys=True)),
        )

    def next_token() -> int:
        return int(
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value").fetchone()[0]
        )

    paths = slot_paths(pool_max)
    marks = ",".join("?" * len(paths))

    def claim_any() -> sqlite3.Row | None:
        now = time.time()
        conn.execute(
            "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)", (repo_id, branch, *held)
        ).fetchone()
        row = conn.execute(
            f"SELECT id FROM slots WHERE repo_id = ? AND state = 'FREE' AND path IN ({marks})"
            " ORDER BY COALESCE(released_at, 0) DESC, id LIMIT 1",
            (repo_id, *paths),
        ).fetchone()
        if row is None:
            return None
        token = next_token()
        conn.execute(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
            " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
            " WHERE id = ? AND state = 'FREE' AND (? IS NULL OR version = ?)",
            (owner, branch, token, now + LEASE_S, now, None, row["id"], None, None),
        )
        row_after: sqlite3.Row | None = conn.execute("SELECT * FROM slots WHERE id = ?", (row["id"],)).fetchone()
        return row_after

    def claim_new() -> sqlite3.Row | None:
        now = time.time()
        conn.execute(
            "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)", (repo_id, branch, *held)
        )
        count = conn.execute(
            "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (repo_id,)
        ).fetchone()[0]
        if int(count) >= pool_max:
            return None
        seq = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()[0]
        slot_id = f"wt-{int(seq):02d}"
        conn.execute("SELECT 1 FROM slots WHERE id = ? OR path = ?", (slot_id, f"/bench/pool/{slot_id}")).fetchone()
        token = next_token()
        conn.execute(
            "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
            " lease_expires_at, since, task, created_at) VALUES (?, ?, ?, 'ALLOCATING', 0, ?, ?, ?, ?, ?, ?, ?)",
            (slot_id, repo_id, f"/bench/pool/{slot_id}", owner, branch, token, now + LEASE_S, now, None, now),
        )
        row_after: sqlite3.Row | None = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
        return row_after

    def transition(slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str) -> sqlite3.Row | None:
        now = time.time()
        row = conn.execute(
            "SELECT * FROM slots WHERE id = ? AND state IN (?) AND fencing_token = ?", (slot_id, expect, token)
        ).fetchone()
        if row is None:
            return None
        sets = ", ".join([f"{k} = ?" for k in changes] + ["version = version + 1"])
        conn.execute(f"UPDATE slots SET {sets} WHERE id = ?", (*changes.values(), slot_id))
        new: sqlite3.Row | None = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
        event(action, slot_id, token, now)
        return new

    wait_until_sync(start)
    pacer = Pacer(start, duration, rate)
    tally = Tally()
    while (delay := pacer.next_delay()) is not None:
        if delay > 0:
            time.sleep(delay)
        c0 = time.perf_counter()
        try:
            slot = None
            while slot is None:
                t = time.perf_counter()
                slot = write(claim_any)
                if slot is None:
                    slot = write(claim_new)
                tally.op(t)
                if slot is None:
                    tally.lost += 1
            sid, token = slot["id"], slot["fencing_token"]
            t = time.perf_counter()
            busy = write(
                lambda sid=sid, token=token: transition(
                    sid,
                    "ALLOCATING",
                    token,
                    {"state": "BUSY", "lease_expires_at": time.time() + LEASE_S, "setup_done": 1},
                    "allocate",
                )
            )
            tally.op(t)
            assert busy is not None
            t = time.perf_counter()
            released = write(
                lambda sid=sid, token=token: transition(
                    sid,
                    "BUSY",
                    token,
                    freed(time.time()),  # the same columns as the store's release
                    "release",
                )
            )
            tally.op(t)
            assert released is not None
        except (_RawBusyError, sqlite3.OperationalError):
            tally.busy_to_caller += 1
            continue
        tally.cycle(c0)
    elapsed = time.time() - start
    conn.close()
    return tally.result(busy_retried, elapsed)
