"""The append-only event log, cursors over it, named leases, and database health."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent_coord.engine.store.dialect import Db, sql, sql_for
from agent_coord.engine.store.records import Event, MetricTotals
from agent_coord.engine.store.rows import EventDraft, _append, _event, _Tables
from agent_coord.engine.store.schema import BUCKET_S

# The newest event that ended an allocation: a release that happened, or a reclaim.
LAST_END_OF_SLOT = (
    "SELECT * FROM events WHERE worktree_id = ? "
    "AND ((action = 'release' AND outcome = 'ok') OR action = 'reclaim') ORDER BY id DESC LIMIT 1"
)
LAST_END_OF_BRANCH = (
    "SELECT * FROM events WHERE branch = ? "
    "AND ((action = 'release' AND outcome = 'ok') OR action = 'reclaim') ORDER BY id DESC LIMIT 1"
)


class EventLog(_Tables):
    """Events are written in the same transaction as the change they describe (see slots.py)."""

    # ---- change detection -------------------------------------------------------------------

    async def data_version(self) -> int:
        """Changes whenever *another* connection commits (any process): a few µs to ask. On PostgreSQL,
        the next transaction id, which moves when any transaction writes."""
        return await self._conn.scalar(
            sql_for(
                self._conn,
                sqlite="PRAGMA data_version",
                postgresql="SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
            )
        )

    # ---- events -----------------------------------------------------------------------------

    async def log(self, draft: EventDraft) -> None:
        def tx(conn: Db) -> None:
            _append(conn, draft, time.time())

        await self._conn.write(tx)

    async def append_history(self, entries: Sequence[tuple[float, EventDraft]]) -> None:
        """Append events stamped with their own times, all in one transaction (benches and imports
        building a log that has lived; the rollups follow through the same trigger)."""

        def tx(conn: Db) -> None:
            for ts, draft in entries:
                _append(conn, draft, ts)

        await self._conn.write(tx)

    async def events(
        self,
        *,
        after_id: int = 0,
        since_ts: float | None = None,
        limit: int | None = None,
        newest: bool = False,
    ) -> list[Event]:
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after_id]
        if since_ts is not None:
            sql += " AND ts >= ?"
            args.append(since_ts)
        sql += " ORDER BY id DESC" if newest else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)

        def tx(conn: Db) -> list[Event]:
            rows = conn.execute(sql, args).fetchall()
            return [_event(r) for r in rows]

        result = await self._conn.read(tx)
        return list(reversed(result)) if newest else result

    async def last_end(self, *, worktree_id: str | None = None, branch: str | None = None) -> Event | None:
        """The newest event that ended an allocation of that slot or branch: a release or a reclaim."""
        by_slot = worktree_id is not None
        sql, value = (LAST_END_OF_SLOT, worktree_id) if by_slot else (LAST_END_OF_BRANCH, branch)

        def tx(conn: Db) -> Event | None:
            row = conn.execute(sql, (value,)).fetchone()
            return None if row is None else _event(row)

        return await self._conn.read(tx)

    async def rescue_refs(self, fencing_token: int) -> list[str]:
        """Every rescue ref saved from the grant with this fencing token (tokens are never reused), also
        by a reclaim or release that died before recording its end."""

        def tx(conn: Db) -> list[str]:
            rows = conn.execute(
                "SELECT * FROM events WHERE action = 'rescue' AND fencing_token = ? ORDER BY id", (fencing_token,)
            ).fetchall()
            return [str(e.detail["rescue_ref"]) for e in map(_event, rows) if e.detail.get("rescue_ref")]

        return await self._conn.read(tx)

        # ---- metrics rollups (schema 4) ----------------------------------------------------------

    # The buckets older than the previous hour no longer change: their totals are kept here (see
    # `metric_totals`).
    _sealed_metrics: _SealedMetrics | None = None
    _merged_latency: _MergedLatency | None = None

    async def metric_totals(self, *, now: float, window_s: float, holds_since: float) -> MetricTotals:
        """The metrics' inputs from the hourly rollups: a few hundred rows whatever the log's size.

        The window starts at the top of the hour at or before ``now - window_s``; a busy interval
        still open counts only if it was granted after ``holds_since`` (a hold without any event for
        longer than that is a slot that vanished, not one in use). Buckets before the previous hour
        are "sealed": their totals are read once and reused while the bucket range stays the same and
        no event was stamped into a sealed bucket (after a clock step or an import: the trigger counts
        those in `meta.metric_late_events`)."""
        first_bucket = int((now - window_s) // BUCKET_S)
        live_bucket = max(first_bucket, int(now // BUCKET_S) - 1)
        window_start = float(first_bucket * BUCKET_S)
        cached = self._sealed_metrics
        merged = self._merged_latency

        def tx(conn: Db) -> tuple[MetricTotals, _SealedMetrics, _MergedLatency]:
            oldest = conn.execute("SELECT first_ts FROM metric_buckets ORDER BY bucket LIMIT 1").fetchone()
            span_start = max(window_start, float(oldest[0])) if oldest else now
            late = conn.execute("SELECT value FROM meta WHERE key = 'metric_late_events'").fetchone()
            key = (first_bucket, live_bucket, int(late[0]) if late else 0, span_start)
            sealed = cached if cached is not None and cached.key == key else _read_sealed(conn, key)
            counts = list(sealed.counts)
            live_counts = f"SELECT {_COUNTS} FROM metric_buckets WHERE bucket >= ?"  # noqa: S608
            live_attempts = 0
            for row in conn.execute(live_counts, (live_bucket,)):
                counts = [c + int(v) for c, v in zip(counts, row, strict=True)]
                live_attempts += int(row[0])
            live_busy = _read_busy(conn, live_bucket, None, first_bucket, span_start)
            open_holds = conn.execute(
                sql(
                    conn,
                    sqlite="SELECT COALESCE(SUM(:now - MAX(since, :span)), 0), COUNT(*) FROM metric_holds"
                    " WHERE since >= :holds_since AND since <= :now",
                    postgresql="SELECT COALESCE(SUM(:now - GREATEST(since, :span)), 0), COUNT(*) FROM metric_holds"
                    " WHERE since >= :holds_since AND since <= :now",
                ),
                {"now": now, "span": span_start, "holds_since": holds_since},
            ).fetchone()
            # Only an attempt adds a latency: while the live buckets count the same attempts, the
            # histogram merged last time is still the answer.
            latency_key = (key, live_attempts)
            if merged is not None and merged.key == latency_key:
                latency = merged.latency
            else:
                histogram = dict(sealed.latency)
                for value_bin, top, n in conn.execute(
                    "SELECT bin, max_ms, n FROM metric_latency WHERE bucket >= ?", (live_bucket,)
                ):
                    old_top, old_n = histogram.get(value_bin, (top, 0))
                    histogram[value_bin] = (max(old_top, top), old_n + n)
                latency = tuple(histogram[b] for b in sorted(histogram))
            # Radar events are few and indexed by their own partial index (schema 4): this reads only them.
            radar = conn.execute(
                sql(
                    conn,
                    sqlite="SELECT COALESCE(SUM(outcome = 'conflict'), 0),"
                    " COALESCE(SUM(outcome = 'cleared' AND json_extract(detail, '$.reason') = 'resolved'), 0),"
                    " COALESCE(SUM(outcome = 'cleared' AND json_extract(detail, '$.reason') = 'released'), 0)"
                    " FROM events WHERE action = 'radar' AND ts >= ? AND ts <= ?",
                    postgresql="SELECT COUNT(*) FILTER (WHERE outcome = 'conflict'),"
                    " COUNT(*) FILTER (WHERE outcome = 'cleared' AND detail::jsonb ->> 'reason' = 'resolved'),"
                    " COUNT(*) FILTER (WHERE outcome = 'cleared' AND detail::jsonb ->> 'reason' = 'released')"
                    " FROM events WHERE action = 'radar' AND ts >= ? AND ts <= ?",
                ),
                (window_start, now),
            ).fetchone()
            totals = MetricTotals(
                span_start=span_start,
                attempts=counts[0],
                successes=counts[1],
                branch_conflicts=counts[2],
                cas_lost=counts[3],
                agent_dead=counts[4],
                agent_stale=counts[5],
                latency=latency,
                busy_s=max(0.0, sealed.busy_s + live_busy[0]) + max(0.0, float(open_holds[0])),
                busy_intervals=sealed.busy_intervals + live_busy[1] + int(open_holds[1]),
                radar_conflicts=int(radar[0]),
                radar_resolved=int(radar[1]),
                radar_released=int(radar[2]),
            )
            return totals, sealed, _MergedLatency(latency_key, latency)

        totals, self._sealed_metrics, self._merged_latency = await self._conn.read(tx)
        return totals

    # ---- retention ---------------------------------------------------------------------------

    async def prune_events(self, *, now: float, keep_s: float, rollups_keep_s: float, batch: int = 500) -> int:
        """Delete up to `batch` events older than `now - keep_s` (the rollups already count them) and
        the rollup rows older than `now - rollups_keep_s`; returns how many events went. One short
        write transaction: the caller loops, letting other writers in between. `keep_s` is recorded
        for the trigger, which refuses deleting any event younger than it (by SQLite's own clock)."""
        cutoff = now - keep_s
        rollup_bucket = int((now - max(keep_s, rollups_keep_s)) // BUCKET_S)

        def tx(conn: Db) -> int:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'events_keep_s'", (keep_s,))
            deleted = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? ORDER BY ts LIMIT ?)",
                (cutoff, batch),
            ).rowcount
            conn.execute("DELETE FROM metric_buckets WHERE bucket < ?", (rollup_bucket,))
            conn.execute("DELETE FROM metric_latency WHERE bucket < ?", (rollup_bucket,))
            conn.execute("DELETE FROM metric_busy WHERE end_bucket < ?", (rollup_bucket,))
            conn.execute("DELETE FROM metric_holds WHERE since < ?", (rollup_bucket * BUCKET_S,))
            conn.execute("DELETE FROM lease_gaps WHERE bucket < ?", (rollup_bucket,))
            conn.execute("DELETE FROM lease_gap_bins WHERE bucket < ?", (rollup_bucket,))
            conn.execute("DELETE FROM alerts WHERE cleared_at < ?", (cutoff,))
            return int(deleted)

        return await self._conn.write(tx)

    # ---- repositories -----------------------------------------------------------------------

    async def integrity_check(self) -> str:
        def tx(conn: Db) -> str:
            # PostgreSQL checks its pages itself; what can be wrong there is an index left invalid.
            check = sql(
                conn,
                sqlite="PRAGMA integrity_check",
                postgresql="SELECT COALESCE(string_agg(indexrelid::regclass::text, ', ') || ': invalid', 'ok')"
                " FROM pg_index WHERE NOT indisvalid",
            )
            row = conn.execute(check).fetchone()
            return str(row[0]) if row else "no answer"

        return await self._conn.read(tx)

    # ---- cursors (exactly one process handles each event, e.g. the activity mirror) ----------

    async def claim_events(self, cursor: str, upto: int) -> tuple[int, int] | None:
        """Move the named cursor to `upto` by CAS; return the claimed range (after, upto], or None when
        another process already claimed past it. Each event is thereby handled by exactly one process."""

        def tx(conn: Db) -> tuple[int, int] | None:
            key = f"cursor:{cursor}"
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, (SELECT COALESCE(MAX(id), 0) FROM events WHERE id < ?))"
                " ON CONFLICT(key) DO NOTHING",
                (key, upto),
            )
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            after = int(row[0]) if row else 0
            if after >= upto:
                return None
            conn.execute("UPDATE meta SET value = ? WHERE key = ? AND value = ?", (upto, key, after))
            return after, upto

        return await self._conn.write(tx)

    # ---- leases (one background validator at a time) ----------------------------------------

    async def lease(self, name: str) -> tuple[str, float] | None:
        """(holder, expires_at) of a named lease, or None when nobody holds it."""

        def tx(conn: Db) -> tuple[str, float] | None:
            row = conn.execute("SELECT holder, expires_at FROM leases WHERE name = ?", (name,)).fetchone()
            return (str(row[0]), float(row[1])) if row else None

        return await self._conn.read(tx)

    async def take_lease(self, name: str, holder: str, ttl_s: float, *, replace: str | None = None) -> bool:
        """Take or renew a named lease by CAS; True when `holder` has it until now + ttl.

        It is free to take when nobody holds it or its holder let it lapse; `replace` names a holder
        the caller judged gone, whose lease may be taken before it lapses (only while it still holds it).
        """
        now = time.time()

        def tx(conn: Db) -> bool:
            conn.execute(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING",
                (name, holder, now + ttl_s),
            )
            cur = conn.execute(
                "UPDATE leases SET holder = ?, expires_at = ?, version = version + 1"
                " WHERE name = ? AND (holder = ? OR expires_at < ? OR holder = ?)",
                (holder, now + ttl_s, name, holder, now, replace),
            )
            return cur.rowcount > 0

        return await self._conn.write(tx)

    async def release_lease(self, name: str, holder: str) -> None:
        def tx(conn: Db) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

        await self._conn.write(tx)


_COUNTS = "attempts, successes, branch_conflicts, cas_lost, agent_dead, agent_stale"


@dataclass(frozen=True)
class _SealedMetrics:
    key: tuple[int, int, int, float]  # first bucket, first live bucket, late events seen, span start
    counts: tuple[int, ...]  # as _COUNTS
    latency: dict[float, tuple[float, int]]  # bin -> (largest sample, samples)
    busy_s: float
    busy_intervals: int


@dataclass(frozen=True)
class _MergedLatency:
    key: tuple[tuple[int, int, int, float], int]  # the sealed key, attempts in the live buckets
    latency: tuple[tuple[float, int], ...]


def _read_sealed(conn: Db, key: tuple[int, int, int, float]) -> _SealedMetrics:
    first_bucket, live_bucket, _, span_start = key
    latency = {
        float(r[0]): (float(r[1]), int(r[2]))
        for r in conn.execute(
            "SELECT bin, MAX(max_ms), SUM(n) FROM metric_latency WHERE bucket >= ? AND bucket < ? GROUP BY bin",
            (first_bucket, live_bucket),
        )
    }
    sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in _COUNTS.split(", "))
    row = conn.execute(
        # Only the fixed column names are interpolated.
        f"SELECT {sums} FROM metric_buckets WHERE bucket >= ? AND bucket < ?",  # noqa: S608
        (first_bucket, live_bucket),
    ).fetchone()
    busy_s, intervals = _read_busy(conn, first_bucket, live_bucket, first_bucket, span_start)
    return _SealedMetrics(key, tuple(int(v) for v in row), latency, busy_s, intervals)


def _read_busy(
    conn: Db, from_bucket: int, to_bucket: int | None, first_bucket: int, span_start: float
) -> tuple[float, int]:
    """Busy seconds and intervals of the holds that ended in [from_bucket, to_bucket); a hold that
    started before the window counts from the window's start."""
    row = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN start_bucket >= :b0"
        " THEN end_offsets - start_offsets + n * (end_bucket - start_bucket) * :w"
        " ELSE end_offsets + n * (end_bucket * :w - :span) END), 0), COALESCE(SUM(n), 0)"
        " FROM metric_busy WHERE end_bucket >= :lo AND end_bucket < COALESCE(:hi, end_bucket + 1)",
        {"b0": first_bucket, "w": BUCKET_S, "span": span_start, "lo": from_bucket, "hi": to_bucket},
    ).fetchone()
    return float(row[0]), int(row[1])
