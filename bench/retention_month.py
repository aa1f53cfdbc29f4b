"""Retention over a simulated month: 10 agents a day, each a new session making 200 allocations (and
their releases), the validator's `validate` events every 5 minutes, and once a day the retention pass
the validating server runs (`observe.retention.prune`, default settings: raw events kept for the
metrics window + 1 day, ended agents retired after a day). Everything goes through the store's API,
stamped with simulated times ending now.

Reported per day: events and agent rows in the database, and its size (main file after a WAL
checkpoint). The claim: once the retention period has filled (day 9), the size stays flat.

    python -m bench.retention_month            # 30 days (~2 min)
    python -m bench.retention_month --days 12  # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from agent_coord.engine.observe.retention import Retention, prune
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Agent
from bench._common import machine, machine_line, print_verdicts, table, write_results

DAY = 86400.0
AGENTS = 10
ALLOCATIONS = 200
SLOTS = 16
WINDOW_S = 7 * DAY
FLAT = 1.05  # the largest size after the period filled, against the size when it filled


def day_of_events(rng: random.Random, day_start: float, day: int) -> tuple[list[tuple[float, EventDraft]], list[str]]:
    entries: list[tuple[float, EventDraft]] = []
    agents = [f"agent-{day:03d}-{i}" for i in range(AGENTS)]
    for i, agent in enumerate(agents):
        start = day_start + 3600 * (8 + i * 0.2)
        for k in range(ALLOCATIONS):
            ts = start + k * 120 + rng.random() * 30
            slot = f"wt-{(i * 3 + k) % SLOTS:04d}"
            detail: dict[str, Any] = {
                "path": f"/home/dev/.local/state/agent-coord/pool/project/{slot}",
                "warm": True,
                "phases_ms": {"claim": round(rng.uniform(0.2, 2), 3), "git": round(rng.uniform(8, 60), 3)},
            }
            duration = rng.lognormvariate(3.6, 0.5)
            entries.append(
                (
                    ts,
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        agent_id=agent,
                        repo_id=1,
                        worktree_id=slot,
                        branch=f"f/{k}",
                        duration_ms=duration,
                        fencing_token=k,
                        detail=detail,
                    ),
                )
            )
            entries.append(
                (
                    ts + 60,
                    EventDraft(
                        Action.RELEASE,
                        "ok",
                        agent_id=agent,
                        repo_id=1,
                        worktree_id=slot,
                        branch=f"f/{k}",
                        duration_ms=20.0,
                    ),
                )
            )
    entries += [
        (day_start + m * 300, EventDraft(Action.VALIDATE, "started", agent_id="agent-v", detail={"why": "interval"}))
        for m in range(288)
    ]
    entries.sort(key=lambda e: e[0])
    return entries, agents


def session(agent_id: str, started: float, ended: float) -> Agent:
    return Agent(
        id=agent_id,
        host="h",
        boot_id="b",
        pid=4_000_000,
        pid_create_time=started,
        server_pid=4_000_001,
        server_create_time=started,
        repo_id=None,
        status="active",
        note=None,
        started_at=started,
        last_heartbeat=ended,
        lease_expires_at=ended + 300,
    )


def size_mb(db: Path) -> float:
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.stat().st_size / 1e6


async def simulate(db: Path, days: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    now = time.time()
    first_day = now - days * DAY
    retention = Retention.of(WINDOW_S, None)
    rows: list[dict[str, Any]] = []
    store = await Store.open(db)
    try:
        for day in range(days):
            day_start = first_day + day * DAY
            entries, agents = day_of_events(rng, day_start, day)
            for agent_id in agents:
                await store.register_agent(session(agent_id, day_start + 8 * 3600, day_start + 20 * 3600))
            for i in range(0, len(entries), 5000):
                await store.append_history(entries[i : i + 5000])
            for agent_id in agents:
                await store.set_agent_status(agent_id, "disconnected", server_pid=None, event=None)
            day_end = day_start + DAY
            removed, retired = await prune(store, retention, now=day_end)
            counts = await store._conn.read(
                lambda c: (
                    c.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                    c.execute("SELECT COUNT(*) FROM agents").fetchone()[0],
                )
            )
            rows.append(
                {
                    "day": day + 1,
                    "events": counts[0],
                    "agents": counts[1],
                    "pruned": removed,
                    "retired": retired,
                    "mb": round(size_mb(db), 2),
                }
            )
            print(rows[-1], flush=True)
    finally:
        await store.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="agent-coord-retention-") as tmp:
        started = time.perf_counter()
        rows = asyncio.run(simulate(Path(tmp) / "coord.db", args.days))
        elapsed = time.perf_counter() - started
    print(table(["day", "events", "agents", "pruned", "retired", "MB"], [list(r.values()) for r in rows]))
    filled = int(WINDOW_S / DAY) + 2  # the keep period (window + 1 day) is full from this day on
    verdicts: dict[str, bool] = {}
    if len(rows) > filled:
        base = rows[filled - 1]["mb"]
        top = max(r["mb"] for r in rows[filled - 1 :])
        verdicts[f"size flat after day {filled}: max {top} MB vs {base} MB (<= {FLAT}x)"] = top <= base * FLAT
        top_agents = max(r["agents"] for r in rows)
        verdicts[f"agent rows bounded: at most {top_agents} (<= {2 * AGENTS})"] = top_agents <= 2 * AGENTS
    print_verdicts(verdicts)
    path = write_results(
        "retention_month", {"machine": machine(), "days": rows, "elapsed_s": elapsed, "verdicts": verdicts}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
