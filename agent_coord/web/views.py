"""What the page shows, as one JSON document: read from the store in one go, with no secrets in it.

The terminal dashboard's ``take_snapshot`` reads status, metrics and the latest events; this adds the
chart series (``charts``), whether each held slot has uncommitted work, and which agents' processes
have exited since the store last judged them. Times stay epoch seconds: the page computes ages and
lease countdowns against ``now`` so they move between updates without asking the server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import anyio

from agent_coord.dashboard.conflicts import PairView, Side, pair_views
from agent_coord.dashboard.sections import HELD, liveness
from agent_coord.dashboard.snapshot import Snapshot, gone_agents, take_snapshot
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.git.driver import GitError
from agent_coord.engine.observe.activity import format_time
from agent_coord.engine.observe.metrics import format_value, history_start
from agent_coord.engine.repos import bounds_of
from agent_coord.engine.store.records import Event
from agent_coord.web.charts import compute_charts

# Event detail keys worth showing; the rest (commit ids, internal counters) stays in `activity --json`.
DETAIL_KEYS = ("message", "reason", "rescue_ref", "forced_from", "kind", "findings", "with_branch", "paths")
# How long a held slot's "dirty" answer is reused: one `git status` per slot per change would make a
# burst of commits cost a burst of git processes, and a few seconds old is fresh enough to look at.
DIRTY_TTL_S = 5.0


class DirtyCache:
    """Whether each held slot has uncommitted or untracked changes, asked of git at most every few seconds."""

    def __init__(self, coord: Coordinator, ttl_s: float = DIRTY_TTL_S) -> None:
        self.coord = coord
        self.ttl_s = ttl_s
        self._known: dict[str, tuple[float, bool | None]] = {}

    async def dirty(self, held: Sequence[tuple[str, str]]) -> dict[str, bool | None]:
        """(slot path, repository path) of each held slot -> dirty, clean, or None when unknown."""
        now = time.monotonic()
        paths = [path for path, _ in held]
        stale = [(p, r) for p, r in held if p not in self._known or now - self._known[p][0] > self.ttl_s]
        repos = {r.path: r for r in await self.coord.store.repos()}

        async def ask(path: str, repo_path: str) -> None:
            answer: bool | None = None
            repo = repos.get(repo_path)
            try:
                if repo is not None and await anyio.Path(path).is_dir():
                    # Through the confinement guard, as every git command in a slot.
                    slot = (await bounds_of(repo)).slot(path)
                    answer = (await self.coord.git.status(slot, count_unsaved=False)).dirty
            except (GitError, OSError):
                answer = None  # unknown: validation reports what is wrong with the slot
            self._known[path] = (time.monotonic(), answer)

        async with anyio.create_task_group() as tg:
            for path, repo_path in stale:
                tg.start_soon(ask, path, repo_path)
        wanted = set(paths)
        self._known = {p: v for p, v in self._known.items() if p in wanted}
        return {p: self._known[p][1] for p in paths if p in self._known}


def _detail(e: Event) -> str:
    parts = []
    for key in DETAIL_KEYS:
        value = e.detail.get(key) if isinstance(e.detail, dict) else None
        if value in (None, "", [], {}):
            continue
        if isinstance(value, list):
            text = ", ".join(map(str, value))
        else:
            text = value if isinstance(value, str) else str(value)
        parts.append(f"{key}: {text[:300]}")
    return "; ".join(parts)


def event_view(e: Event) -> dict[str, Any]:
    ok = e.outcome in {"ok", "freed", "saved", "FREE"}
    bad = e.outcome.isupper() or e.action in {"agent_dead", "agent_stale"}
    return {
        "id": e.id,
        "ts": e.ts,
        "time": format_time(e.ts),
        "agent": e.agent_id,
        "action": e.action,
        "branch": e.branch,
        "outcome": e.outcome,
        "tone": "ok" if ok else "bad" if bad else "warn",
        "duration_ms": None if e.duration_ms is None or not math.isfinite(e.duration_ms) else round(e.duration_ms),
        "worktree": e.worktree_id,
        "detail": _detail(e),
    }


def _side_view(side: Side) -> dict[str, Any]:
    return {"worktree": side.worktree_id, "branch": side.branch, "agent": side.agent_id, "task": side.task}


def conflict_view(p: PairView) -> dict[str, Any]:
    return {
        "kind": p.kind,
        "a": _side_view(p.a),
        "b": _side_view(p.b),
        "with_base": p.with_base,
        "files": [
            {"path": f.path, "other_path": f.other_path, "a_lines": f.a_lines, "b_lines": f.b_lines} for f in p.files
        ],
        "also": p.also,
        "since": p.since,
        "advice": p.advice,
    }


def state_document(
    snapshot: Snapshot,
    chart_events: Sequence[Event],
    dirty: dict[str, bool | None],
    *,
    host: str,
    read_only: bool,
    version: int,
) -> dict[str, Any]:
    status = snapshot.status
    now = snapshot.taken_at
    gone = gone_agents(status.agents, host)
    holders = {w.agent_id for w in status.worktrees if w.agent_id and w.state in HELD}
    metrics = snapshot.metrics
    charts = compute_charts(
        chart_events,
        now=now,
        window_s=metrics.window_s if metrics else 7 * 86400.0,
        slot_count=max(1, status.pool.size),
    )
    contention = status.contention
    return {
        "version": version,
        "now": now,
        "read_only": read_only,
        "repo": status.repo,
        "alerts": [a.model_dump(mode="json") for a in status.alerts],  # worst first; shown first
        "pool": status.pool.model_dump(mode="json"),
        "slots": [
            {
                "id": w.worktree_id,
                "state": w.state,
                "branch": w.branch,
                "agent": w.agent_id,
                "task": w.task,
                "since": w.since if w.state in HELD else None,
                "lease_expires_at": w.lease_expires_at if w.state in HELD else None,
                "dirty": dirty.get(w.path) if w.state in HELD else None,
                "rescue_ref": w.rescue_ref,
                "path": w.path,
            }
            for w in status.worktrees
        ],
        "agents": [
            {
                "id": a.agent_id,
                "liveness": word,
                "how": reason,
                "status": a.status,
                "host": a.host,
                "pid": a.pid,
                "last_heartbeat": a.last_heartbeat,
                "lease_expires_at": a.lease_expires_at,
                "focused": a.focused,
                "note": a.note,
                "holds": a.agent_id in holders,
            }
            for a in status.agents
            for word, reason in [liveness(a, gone, holders)]
        ],
        "focus": {
            "window": contention.focused_window if contention else None,
            "user": contention.user_presence if contention else "unknown",
            "sources": [s.model_dump(mode="json") for s in contention.sources] if contention else [],
        },
        "metrics": None
        if metrics is None
        else {
            "window_s": metrics.window_s,
            "overall": metrics.overall,
            "rows": [
                {
                    "name": m.name,
                    "value": m.value,
                    "text": format_value(m.value, m.unit),
                    "unit": m.unit,
                    "target": m.target,
                    "state": m.state,
                    "samples": m.samples,
                    "detail": m.detail,
                }
                for m in metrics.metrics
            ],
        },
        "charts": charts.model_dump(mode="json"),
        # The radar's pairs, conflicts first; empty while it predicts nothing (or has not run yet).
        "conflicts": [conflict_view(p) for p in pair_views(snapshot.conflicts, status.worktrees)],
        "events": [event_view(e) for e in reversed(snapshot.events)],  # newest first
    }


async def read_state(
    coord: Coordinator, dirty: DirtyCache, *, repo: str | None, read_only: bool, version: int
) -> dict[str, Any]:
    snapshot = await take_snapshot(coord, repo)
    window = snapshot.metrics.window_s if snapshot.metrics else coord.settings.metrics_window_s
    chart_events = await coord.store.events(since_ts=history_start(snapshot.taken_at, window))
    # Only this host's directories can be looked at: another host's path here is another directory.
    here = coord.identity.host
    held = [(w.path, w.repo) for w in snapshot.status.worktrees if w.state in HELD and w.host in (here, None)]
    return state_document(
        snapshot,
        chart_events,
        await dirty.dirty(held),
        host=coord.identity.host,
        read_only=read_only,
        version=version,
    )
