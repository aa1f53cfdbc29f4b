"""The raw baseline of bench/store_cas.py: the store's SQL statements, transaction for transaction, with
the stdlib `sqlite3` module (WAL, busy_timeout, synchronous=NORMAL, BEGIN IMMEDIATE, retry on SQLITE_BUSY).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cas_cycle import LEASE_S
from bench.cas_harness import EVENT_INSERT, GaveUp, RawIdentity, event_values

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 8
HELD = ("ALLOCATING", "BUSY", "RELEASING")


class RawSqlite(RawIdentity):
    """`cas_harness.RawOps` over one stdlib sqlite3 connection."""

    def __init__(self, db: Path, pool_max: int) -> None:
        super().__init__(pool_max)
        self.conn = sqlite3.connect(str(db), isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        for pragma in (
            f"busy_timeout = {BUSY_TIMEOUT_MS}",
            "journal_mode = WAL",
            "synchronous = NORMAL",
            "foreign_keys = ON",
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        self.repo_id = self.write(self._ensure_repo)

    def write(self, fn: Callable[[], Any]) -> Any:
        conn = self.conn
        for attempt in range(BUSY_RETRIES):
            try:
                conn.execute("BEGIN IMMEDIATE")
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
                self.retried += 1
                time.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise GaveUp

    def close(self) -> None:
        self.conn.close()

    def _ensure_repo(self) -> int:
        self.conn.execute(
            "INSERT INTO repos (path, pool_root, created_at) VALUES (?, ?, ?) ON CONFLICT(path) DO NOTHING",
            ("/bench/repo", "/bench/pool", time.time()),
        )
        return int(self.conn.execute("SELECT id FROM repos WHERE path = ?", ("/bench/repo",)).fetchone()[0])

    def _event(self, action: str, slot_id: str, token: int, now: float) -> None:
        self.conn.execute(EVENT_INSERT, event_values(self, action, slot_id, token, now))

    def _next_token(self) -> int:
        row = self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value")
        return int(row.fetchone()[0])

    def _branch_held(self) -> None:
        self.conn.execute(
            "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)",
            (self.repo_id, self.branch, *HELD),
        ).fetchone()

    def claim_any(self) -> sqlite3.Row | None:
        conn, now = self.conn, time.time()
        self._branch_held()
        marks = ",".join("?" * len(self.paths))
        row = conn.execute(
            f"SELECT id FROM slots WHERE repo_id = ? AND state = 'FREE' AND path IN ({marks})"
            " ORDER BY COALESCE(released_at, 0) DESC, id LIMIT 1",
            (self.repo_id, *self.paths),
        ).fetchone()
        if row is None:
            return None
        token = self._next_token()
        conn.execute(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
            " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
            " WHERE id = ? AND state = 'FREE' AND (? IS NULL OR version = ?)",
            (self.owner, self.branch, token, now + LEASE_S, now, None, row["id"], None, None),
        )
        after: sqlite3.Row | None = conn.execute("SELECT * FROM slots WHERE id = ?", (row["id"],)).fetchone()
        return after

    def claim_new(self) -> sqlite3.Row | None:
        conn, now = self.conn, time.time()
        self._branch_held()
        count = conn.execute(
            "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (self.repo_id,)
        ).fetchone()[0]
        if int(count) >= self.pool_max:
            return None
        seq = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()[0]
        slot_id = f"wt-{int(seq):02d}"
        conn.execute("SELECT 1 FROM slots WHERE id = ? OR path = ?", (slot_id, f"/bench/pool/{slot_id}")).fetchone()
        token = self._next_token()
        conn.execute(
            "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
            " lease_expires_at, since, task, created_at) VALUES (?, ?, ?, 'ALLOCATING', 0, ?, ?, ?, ?, ?, ?, ?)",
            (
                slot_id,
                self.repo_id,
                f"/bench/pool/{slot_id}",
                self.owner,
                self.branch,
                token,
                now + LEASE_S,
                now,
                None,
                now,
            ),
        )
        after: sqlite3.Row | None = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
        return after

    def transition(
        self, slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str
    ) -> sqlite3.Row | None:
        conn, now = self.conn, time.time()
        row = conn.execute(
            "SELECT * FROM slots WHERE id = ? AND state IN (?) AND fencing_token = ?", (slot_id, expect, token)
        ).fetchone()
        if row is None:
            return None
        sets = ", ".join([f"{k} = ?" for k in changes] + ["version = version + 1"])
        conn.execute(f"UPDATE slots SET {sets} WHERE id = ?", (*changes.values(), slot_id))
        new: sqlite3.Row | None = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
        self._event(action, slot_id, token, now)
        return new
