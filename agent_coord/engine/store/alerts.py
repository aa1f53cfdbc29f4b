"""Alerts (schema 5): raised and cleared in one transaction with their events, and the claim of the
alert command's run; and the lease-renewal gap rollups that `advise` reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent_coord.engine.store.dialect import Db, sql
from agent_coord.engine.store.records import Action, Event
from agent_coord.engine.store.rows import EventDraft, _append, _event, _Tables
from agent_coord.engine.store.schema import BUCKET_S

# The events `advise` reads over its window: allocations (refusals and their strategies) and what opens
# or closes a hold (peak concurrent demand).
ADVICE_ACTIONS = ("allocate", "release", "reclaim", "adopt")

AlertSeverity = Literal["warning", "failing"]
NoticePhase = Literal["raised", "cleared"]
RESCUE_CURSOR = "alerts:rescue_seen"
CURSOR_LAG = 1000  # events the rescue cursor may fall behind before it is written without a change


@dataclass(frozen=True)
class AlertDraft:
    """An alert as the evaluator wants it to be: `key` names the cause (one active alert per key)."""

    key: str
    kind: str
    severity: AlertSeverity
    message: str
    agent_id: str | None = None
    repo_id: int | None = None
    worktree_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Alert:
    id: int
    key: str
    kind: str
    severity: AlertSeverity
    message: str
    agent_id: str | None
    repo_id: int | None
    worktree_id: str | None
    detail: dict[str, Any]
    raised_at: float
    cleared_at: float | None
    notify_raise: str | None
    notify_clear: str | None

    def as_json(self, phase: NoticePhase) -> dict[str, Any]:
        """What the alert command reads on stdin."""
        return {
            "id": self.id,
            "state": phase,
            "key": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "message": self.message,
            "agent_id": self.agent_id,
            "repo_id": self.repo_id,
            "worktree_id": self.worktree_id,
            "detail": self.detail,
            "raised_at": self.raised_at,
            "cleared_at": self.cleared_at,
        }


@dataclass(frozen=True)
class AlertChange:
    change: NoticePhase
    alert: Alert
    replaces: int | None = None  # the alert of the same cause whose severity this one changed


@dataclass(frozen=True)
class LeaseGapRollup:
    """Gaps between two renewals of a live agent's lease, over a window: per agent-hour and binned."""

    renewals: int
    agent_hours: int
    max_s: float
    # (bin's largest gap, renewals), ascending
    histogram: tuple[tuple[float, int], ...]
    # per agent: (renewals, longest gap)
    agents: dict[str, tuple[int, float]]


def _alert(row: Any) -> Alert:
    return Alert(
        id=int(row["id"]),
        key=row["key"],
        kind=row["kind"],
        severity=row["severity"],
        message=row["message"],
        agent_id=row["agent_id"],
        repo_id=row["repo_id"],
        worktree_id=row["worktree_id"],
        detail=json.loads(row["detail"] or "{}"),
        raised_at=float(row["raised_at"]),
        cleared_at=None if row["cleared_at"] is None else float(row["cleared_at"]),
        notify_raise=row["notify_raise"],
        notify_clear=row["notify_clear"],
    )


def _log_change(conn: Db, change: AlertChange, now: float) -> None:
    a = change.alert
    detail: dict[str, Any] = {"alert": a.id, "key": a.key, "kind": a.kind, "severity": a.severity, "message": a.message}
    if change.replaces is not None:
        detail["replaces"] = change.replaces
    if change.change == "raised" and a.notify_raise == "muted":
        detail["muted"] = True
    _append(
        conn,
        EventDraft(
            Action.ALERT,
            change.change,
            agent_id=a.agent_id,
            repo_id=a.repo_id,
            worktree_id=a.worktree_id,
            detail=detail,
        ),
        now,
    )


def _clear(conn: Db, alert: Alert, now: float, notice: str | None) -> Alert:
    conn.execute(
        "UPDATE alerts SET cleared_at = ?, notify_clear = COALESCE(notify_clear, ?) WHERE id = ?",
        (now, notice, alert.id),
    )
    row = conn.execute("SELECT * FROM alerts WHERE id = ?", (alert.id,)).fetchone()
    return _alert(row)


def _raise(conn: Db, draft: AlertDraft, now: float, *, muted: bool) -> Alert:
    notice = "muted" if muted else None
    row = conn.execute(
        "INSERT INTO alerts (key, kind, severity, message, agent_id, repo_id, worktree_id, detail, raised_at,"
        " notify_raise, notify_clear) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        (
            draft.key,
            draft.kind,
            draft.severity,
            draft.message,
            draft.agent_id,
            draft.repo_id,
            draft.worktree_id,
            json.dumps(draft.detail, default=str, sort_keys=True),
            now,
            notice,
            notice,
        ),
    ).fetchone()
    return _alert(row)


class AlertRecords(_Tables):
    async def sync_alerts(
        self,
        wanted: Sequence[AlertDraft],
        *,
        kinds: frozenset[str],
        now: float,
        cooldown_s: float,
        rescue_cursor: int | None = None,
    ) -> list[AlertChange]:
        """Make the active alerts what the evaluator found, in one transaction, with one event per change.

        A wanted alert already active at the same severity is left as it is (deduplicated); at another
        severity it is replaced by a new alert (one `raised` event that names the one it replaces). An
        active alert of one of `kinds` that is no longer wanted is cleared (its cause is gone); alerts of
        other kinds were not evaluated this time and stay. A cause raised again within `cooldown_s` of
        its last clearance is raised muted: shown and logged, but the alert command is not run again.
        `rescue_cursor` records the last rescue event the evaluator has looked at.

        Runs every check of the validating server: when nothing would change, only a read happens, so
        the database is not written and every watcher's `data_version` stays still."""
        first = {d.key: d.severity for d in reversed(wanted)}  # the first draft of a key wins, as below

        def needed(conn: Db) -> bool:
            active = {
                str(k): str(v) for k, v in conn.execute("SELECT key, severity FROM alerts WHERE cleared_at IS NULL")
            }
            if any(active.get(key) != severity for key, severity in first.items()):
                return True
            gone = conn.execute(
                sql(
                    conn,
                    sqlite="SELECT 1 FROM alerts WHERE cleared_at IS NULL AND kind IN (SELECT value FROM json_each(?))"
                    " AND key NOT IN (SELECT value FROM json_each(?)) LIMIT 1",
                    postgresql="SELECT 1 FROM alerts WHERE cleared_at IS NULL"
                    " AND kind IN (SELECT jsonb_array_elements_text(?::jsonb))"
                    " AND key NOT IN (SELECT jsonb_array_elements_text(?::jsonb)) LIMIT 1",
                ),
                (json.dumps(sorted(kinds)), json.dumps(sorted(first))),
            ).fetchone()
            if gone is not None:
                return True
            if rescue_cursor is None:
                return False
            # The cursor may lag (a rescue event found makes a change, written with it); it is written
            # on its own only when the lag would make the next look read many events.
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (RESCUE_CURSOR,)).fetchone()
            return row is None or rescue_cursor - int(row[0]) > CURSOR_LAG

        def tx(conn: Db) -> list[AlertChange]:
            active = {a.key: a for a in map(_alert, conn.execute("SELECT * FROM alerts WHERE cleared_at IS NULL"))}
            changes: list[AlertChange] = []
            keys: set[str] = set()
            for draft in wanted:
                if draft.key in keys:
                    continue
                keys.add(draft.key)
                current = active.get(draft.key)
                if current is not None and current.severity == draft.severity:
                    continue
                if current is not None:
                    _clear(conn, current, now, "replaced")
                    changes.append(AlertChange("raised", _raise(conn, draft, now, muted=False), current.id))
                    continue
                last = conn.execute(
                    "SELECT cleared_at FROM alerts WHERE key = ? ORDER BY id DESC LIMIT 1", (draft.key,)
                ).fetchone()
                muted = last is not None and last[0] is not None and float(last[0]) >= now - cooldown_s
                changes.append(AlertChange("raised", _raise(conn, draft, now, muted=muted)))
            for key, current in sorted(active.items()):
                if current.kind in kinds and key not in keys:
                    changes.append(AlertChange("cleared", _clear(conn, current, now, None)))
            for change in changes:
                _log_change(conn, change, now)
            if rescue_cursor is not None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                    " value = excluded.value WHERE excluded.value > meta.value",
                    (RESCUE_CURSOR, rescue_cursor),
                )
            return changes

        if not await self._conn.read(needed):
            return []
        return await self._conn.write(tx)

    async def active_alerts(self) -> list[Alert]:
        """Every alert not cleared, the most severe first, then the newest."""

        def tx(conn: Db) -> list[Alert]:
            rows = conn.execute(
                "SELECT * FROM alerts WHERE cleared_at IS NULL ORDER BY severity = 'failing' DESC, raised_at DESC, id"
            )
            return [_alert(r) for r in rows]

        return await self._conn.read(tx)

    async def alert_history(self, *, after_id: int = 0) -> list[Alert]:
        def tx(conn: Db) -> list[Alert]:
            return [_alert(r) for r in conn.execute("SELECT * FROM alerts WHERE id > ? ORDER BY id", (after_id,))]

        return await self._conn.read(tx)

    async def rescues_to_alert(self, *, since_ts: float) -> tuple[list[Event], int]:
        """Rescue events after the evaluator's cursor (on a first look: those since `since_ts`), and the
        newest event id, the cursor to record once they are handled."""

        def tx(conn: Db) -> tuple[list[Event], int]:
            top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (RESCUE_CURSOR,)).fetchone()
            if row is None:
                rows = conn.execute(
                    "SELECT * FROM events WHERE ts >= ? AND action = 'rescue' AND id <= ? ORDER BY id",
                    (since_ts, top[0]),
                )
            else:
                rows = conn.execute(
                    "SELECT * FROM events WHERE id > ? AND id <= ? AND action = 'rescue' ORDER BY id",
                    (int(row[0]), top[0]),
                )
            return [_event(r) for r in rows], int(top[0])

        return await self._conn.read(tx)

    async def claim_alert_notice(
        self, holder: str, *, now: float, max_age_s: float
    ) -> tuple[Alert, NoticePhase] | None:
        """Claim, by CAS, the oldest raise or clearance whose alert command nobody has run: whichever
        server asks first runs it, once. One older than `max_age_s` is marked expired instead (alerts
        raised while no command was configured are not announced when one is)."""

        def pending(conn: Db) -> bool:
            return (
                conn.execute(
                    "SELECT 1 FROM alerts WHERE notify_raise IS NULL"
                    " OR (cleared_at IS NOT NULL AND notify_clear IS NULL) LIMIT 1"
                ).fetchone()
                is not None
            )

        def tx(conn: Db) -> tuple[Alert, NoticePhase] | None:
            oldest = now - max_age_s
            conn.execute(
                "UPDATE alerts SET notify_raise = 'expired' WHERE notify_raise IS NULL AND raised_at < ?", (oldest,)
            )
            conn.execute(
                "UPDATE alerts SET notify_clear = 'expired' WHERE notify_clear IS NULL AND cleared_at < ?", (oldest,)
            )
            row = conn.execute(
                "SELECT * FROM alerts WHERE notify_raise IS NULL OR (cleared_at IS NOT NULL AND notify_clear IS NULL)"
                " ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            alert = _alert(row)
            phase: NoticePhase = "raised" if alert.notify_raise is None else "cleared"
            column = "notify_raise" if phase == "raised" else "notify_clear"
            claimed = conn.execute(
                f"UPDATE alerts SET {column} = ? WHERE id = ? AND {column} IS NULL",  # noqa: S608 - fixed names
                (holder, alert.id),
            ).rowcount
            return (alert, phase) if claimed else None

        # Every server asks every check: a read first, the write lock only when there is work.
        if not await self._conn.read(pending):
            return None
        return await self._conn.write(tx)

    async def lease_gaps(self, *, since: float) -> LeaseGapRollup:
        """The lease-renewal gaps rolled up since `since` (whole hours: the bucket that holds it on)."""
        first = int(since // BUCKET_S)

        def tx(conn: Db) -> LeaseGapRollup:
            agents: dict[str, tuple[int, float]] = {}
            hours = renewals = 0
            for agent_id, n, top in conn.execute(
                "SELECT agent_id, SUM(n), MAX(max_s) FROM lease_gaps WHERE bucket >= ? GROUP BY agent_id", (first,)
            ):
                agents[str(agent_id)] = (int(n), float(top))
                renewals += int(n)
            hours = int(conn.execute("SELECT COUNT(*) FROM lease_gaps WHERE bucket >= ?", (first,)).fetchone()[0])
            histogram = tuple(
                (float(top), int(n))
                for _, top, n in conn.execute(
                    "SELECT bin, MAX(max_s), SUM(n) FROM lease_gap_bins WHERE bucket >= ? GROUP BY bin ORDER BY bin",
                    (first,),
                )
            )
            top_gap = max((t for _, t in agents.values()), default=0.0)
            return LeaseGapRollup(renewals, hours, top_gap, histogram, agents)

        return await self._conn.read(tx)

    async def advice_events(self, *, since: float, until: float) -> list[Event]:
        """The window's allocations, releases, reclaims and adoptions, oldest first (through the `ts`
        index; a month of them is a few thousand rows)."""
        marks = ", ".join("?" * len(ADVICE_ACTIONS))

        def tx(conn: Db) -> list[Event]:
            rows = conn.execute(
                f"SELECT * FROM events WHERE ts >= ? AND ts <= ? AND action IN ({marks}) ORDER BY ts, id",  # noqa: S608
                (since, until, *ADVICE_ACTIONS),
            )
            return [_event(r) for r in rows]

        return await self._conn.read(tx)

    async def renewal_history(self, agent_id: str, server_pid: int, times: Sequence[float], lease_s: float) -> None:
        """Renew an agent's lease at each of `times`, in one transaction, as `heartbeat` does one at a
        time (benches and tests building a history that has lived; the gap rollups follow)."""

        def tx(conn: Db) -> None:
            for t in times:
                conn.execute(
                    "UPDATE agents SET last_heartbeat = ?, lease_expires_at = ? WHERE id = ? AND server_pid = ?",
                    (t, t + lease_s, agent_id, server_pid),
                )

        await self._conn.write(tx)
