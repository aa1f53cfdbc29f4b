"""The conflict radar's tables (schema migration 3): written by the one process holding the radar lease,
read by every server, the CLI and the edit guard (which reads them with bare sqlite3: see radar/guard.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_coord.engine.store.dialect import Db, sql
from agent_coord.engine.store.rows import EventDraft, _append, _Tables

BASE_PREFIX = "base:"


@dataclass(frozen=True)
class RadarTree:
    worktree_id: str
    fencing_token: int
    repo_id: int
    head: str
    tree: str
    base_ref: str | None
    base_commit: str | None


@dataclass(frozen=True)
class RadarPair:
    a: str
    b: str  # a worktree id, or BASE_PREFIX + ref
    repo_id: int
    a_token: int
    b_token: int | None
    a_state: str  # "<head>:<tree>" of a when compared
    b_state: str
    kind: str  # none | overlap | conflict
    detail: dict[str, Any]
    since: float


@dataclass(frozen=True)
class SideInfo:
    worktree_id: str
    branch: str | None
    agent_id: str | None
    task: str | None
    host: str | None


@dataclass(frozen=True)
class LivePair:
    """A pair whose sides are both still the allocations that were compared."""

    pair: RadarPair
    a: SideInfo
    b: SideInfo | None  # None: the base
    updated_at: float = 0.0


@dataclass
class RadarWrite:
    trees: list[RadarTree] = field(default_factory=list)
    changes: dict[str, list[str]] = field(default_factory=dict)
    pairs: list[RadarPair] = field(default_factory=list)
    drop_worktrees: set[str] = field(default_factory=set)
    drop_pairs: set[tuple[str, str]] = field(default_factory=set)
    events: list[EventDraft] = field(default_factory=list)


def _pair(row: Any) -> RadarPair:
    return RadarPair(
        a=row["a"],
        b=row["b"],
        repo_id=row["repo_id"],
        a_token=row["a_token"],
        b_token=row["b_token"],
        a_state=row["a_state"],
        b_state=row["b_state"],
        kind=row["kind"],
        detail=json.loads(row["detail"]),
        since=row["since"],
    )


_LIVE_PAIRS = """
SELECT p.*, p.updated_at AS pair_updated,
       sa.branch AS a_branch, sa.owner AS a_owner, sa.task AS a_task, ga.host AS a_host,
       sb.branch AS b_branch, sb.owner AS b_owner, sb.task AS b_task, gb.host AS b_host
FROM radar_pairs p
JOIN slots sa ON sa.id = p.a AND sa.fencing_token = p.a_token AND sa.state = 'BUSY'
LEFT JOIN agents ga ON ga.id = sa.owner
LEFT JOIN slots sb ON sb.id = p.b AND sb.fencing_token = p.b_token AND sb.state = 'BUSY'
LEFT JOIN agents gb ON gb.id = sb.owner
WHERE p.kind != 'none' AND (p.b_token IS NULL OR sb.id IS NOT NULL)
"""


class RadarRecords(_Tables):
    async def radar_rows(self, repo_id: int) -> tuple[list[RadarTree], list[RadarPair]]:
        def tx(conn: Db) -> tuple[list[RadarTree], list[RadarPair]]:
            trees = [
                RadarTree(
                    r["worktree_id"],
                    r["fencing_token"],
                    r["repo_id"],
                    r["head"],
                    r["tree"],
                    r["base_ref"],
                    r["base_commit"],
                )
                for r in conn.execute("SELECT * FROM radar_trees WHERE repo_id = ?", (repo_id,))
            ]
            pairs = [_pair(r) for r in conn.execute("SELECT * FROM radar_pairs WHERE repo_id = ?", (repo_id,))]
            return trees, pairs

        return await self._conn.read(tx)

    async def save_radar(self, repo_id: int, write: RadarWrite) -> None:
        """One pass's results, in one transaction with the events they raise."""
        now = time.time()

        def tx(conn: Db) -> None:
            for wt in write.drop_worktrees:
                conn.execute("DELETE FROM radar_trees WHERE worktree_id = ?", (wt,))
                conn.execute("DELETE FROM radar_changes WHERE worktree_id = ?", (wt,))
            for a, b in write.drop_pairs:
                conn.execute("DELETE FROM radar_pairs WHERE a = ? AND b = ?", (a, b))
            for t in write.trees:
                conn.execute(
                    sql(
                        conn,
                        sqlite="INSERT OR REPLACE INTO radar_trees (worktree_id, fencing_token, repo_id, head, tree,"
                        " base_ref, base_commit, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        postgresql="INSERT INTO radar_trees (worktree_id, fencing_token, repo_id, head, tree,"
                        " base_ref, base_commit, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (worktree_id) DO UPDATE SET fencing_token = excluded.fencing_token,"
                        " repo_id = excluded.repo_id, head = excluded.head, tree = excluded.tree,"
                        " base_ref = excluded.base_ref, base_commit = excluded.base_commit,"
                        " updated_at = excluded.updated_at",
                    ),
                    (t.worktree_id, t.fencing_token, t.repo_id, t.head, t.tree, t.base_ref, t.base_commit, now),
                )
            for wt, paths in write.changes.items():
                conn.execute("DELETE FROM radar_changes WHERE worktree_id = ?", (wt,))
                conn.executemany(
                    sql(
                        conn,
                        sqlite="INSERT OR IGNORE INTO radar_changes (worktree_id, repo_id, path) VALUES (?, ?, ?)",
                        postgresql="INSERT INTO radar_changes (worktree_id, repo_id, path) VALUES (?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                    ),
                    [(wt, repo_id, p) for p in paths],
                )
            for p in write.pairs:
                conn.execute(
                    sql(
                        conn,
                        sqlite="INSERT OR REPLACE INTO radar_pairs (a, b, repo_id, a_token, b_token, a_state,"
                        " b_state, kind, detail, since, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        postgresql="INSERT INTO radar_pairs (a, b, repo_id, a_token, b_token, a_state, b_state,"
                        " kind, detail, since, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT (a, b) DO UPDATE SET repo_id = excluded.repo_id, a_token = excluded.a_token,"
                        " b_token = excluded.b_token, a_state = excluded.a_state, b_state = excluded.b_state,"
                        " kind = excluded.kind, detail = excluded.detail, since = excluded.since,"
                        " updated_at = excluded.updated_at",
                    ),
                    (
                        p.a,
                        p.b,
                        p.repo_id,
                        p.a_token,
                        p.b_token,
                        p.a_state,
                        p.b_state,
                        p.kind,
                        json.dumps(p.detail, sort_keys=True),
                        p.since,
                        now,
                    ),
                )
            for e in write.events:
                _append(conn, e, now)

        await self._conn.write(tx)

    async def live_pairs(self, repo_id: int | None = None) -> list[LivePair]:
        """Every pair with something to report whose sides are still the allocations compared."""
        sql = _LIVE_PAIRS + (" AND p.repo_id = ?" if repo_id is not None else "") + " ORDER BY p.a, p.b"
        args: tuple[Any, ...] = (repo_id,) if repo_id is not None else ()

        def tx(conn: Db) -> list[LivePair]:
            out: list[LivePair] = []
            for r in conn.execute(sql, args):
                a = SideInfo(r["a"], r["a_branch"], r["a_owner"], r["a_task"], r["a_host"])
                b = None
                if r["b_token"] is not None:
                    b = SideInfo(r["b"], r["b_branch"], r["b_owner"], r["b_task"], r["b_host"])
                out.append(LivePair(_pair(r), a, b, r["pair_updated"]))
            return out

        return await self._conn.read(tx, quick=True)

    async def allocation_bases(self, allocations: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
        """The `base` each allocation (worktree id, fencing token) was made from, from its grant event."""
        wanted = list(allocations)

        def tx(conn: Db) -> dict[tuple[str, int], str | None]:
            out: dict[tuple[str, int], str | None] = {}
            for wt, token in wanted:
                row = conn.execute(
                    "SELECT detail FROM events WHERE action = 'allocate' AND outcome = 'ok' AND worktree_id = ?"
                    " AND fencing_token = ? ORDER BY id DESC LIMIT 1",
                    (wt, token),
                ).fetchone()
                base = json.loads(row["detail"]).get("base") if row else None
                out[(wt, token)] = base if isinstance(base, str) else None
            return out

        return await self._conn.read(tx)
