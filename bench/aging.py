"""Aging: `status`, `coord://metrics` and `agent-coord metrics` on databases that have lived, each
beside the same call on an empty database, in the same run.

The databases are built through the store's own API (`Store.append_history`, big transactions): an
allocate/release history spread over the 8 days the metrics read (window + look-back), 192 slots,
detail JSON shaped like a real run's, a few registrations, validations and failures mixed in.

Measured per database, the contenders rotating from repetition to repetition:
* `metrics`: `Coordinator.metrics()` plus its JSON, i.e. what `coord://metrics` answers;
* `status`: `Coordinator.status()`, what the `status` tool answers;
* `cli`: `agent-coord metrics --json` as a new process (wall and the child's CPU time).
In-process figures report wall time and the process's CPU time (all threads) per call: the machine
is shared, CPU time is what the software costs whatever the load.

    python -m bench.aging                      # 10k, 100k, 1M events (~10 min, most of it building 1M)
    python -m bench.aging --quick              # 10k, 100k
    python -m bench.aging --keep /tmp/aging    # keep the built databases and reuse them next time
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action
from agent_coord.engine.store.schema import SCHEMA_VERSION
from bench._common import machine, machine_line, median, print_verdicts, table, write_results

DAY = 86400.0
SLOTS = 192
BATCH = 20_000
TARGET = 1.5


def _detail(rng: random.Random, slot: int) -> dict[str, Any]:
    return {
        "path": f"/home/dev/.local/state/agent-coord/pool/project/wt-{slot:04d}",
        "base": "origin/main",
        "warm": True,
        "attempts": 1,
        "phases_ms": {"claim": round(rng.uniform(0.2, 2), 3), "git": round(rng.uniform(8, 60), 3)},
        "task": "fix the flaky test in tests/engine/allocate/test_pool.py and make the release path faster",
    }


def history(n: int, now: float, seed: int = 1) -> list[tuple[float, EventDraft]]:
    """n events over the 8 days before `now`, in time order."""
    rng = random.Random(seed)
    span = 8 * DAY
    out: list[tuple[float, EventDraft]] = []
    held: dict[int, str] = {}
    for k in range(n):
        ts = now - span + span * (k + rng.random()) / n
        slot = rng.randrange(SLOTS)
        wid = f"wt-{slot:04d}"
        roll = rng.random()
        agent = f"agent-{rng.randrange(40):04x}"
        if roll < 0.01:
            draft = EventDraft(Action.REGISTER, "ok", agent_id=agent, repo_id=1)
        elif roll < 0.015:
            draft = EventDraft(Action.VALIDATE, "ok", agent_id=agent, repo_id=1, detail={"findings": []})
        elif roll < 0.03:
            draft = EventDraft(
                Action.ALLOCATE, "POOL_EXHAUSTED", agent_id=agent, repo_id=1, duration_ms=rng.uniform(5, 50)
            )
        elif slot in held:
            draft = EventDraft(
                Action.RELEASE,
                "ok",
                agent_id=held.pop(slot),
                repo_id=1,
                worktree_id=wid,
                branch=f"feature/{slot}",
                duration_ms=rng.uniform(10, 120),
            )
        else:
            held[slot] = agent
            duration = rng.lognormvariate(3.6, 0.5)
            draft = EventDraft(
                Action.ALLOCATE,
                "ok",
                agent_id=agent,
                repo_id=1,
                worktree_id=wid,
                branch=f"feature/{slot}",
                duration_ms=duration,
                fencing_token=k,
                detail=_detail(rng, slot),
            )
        out.append((ts, draft))
    return out


async def build(path: Path, n: int) -> float:
    """A database of `n` events; returns the seconds it took."""
    started = time.perf_counter()
    store = await Store.open(path)
    try:
        entries = history(n, time.time())
        for i in range(0, len(entries), BATCH):
            await store.append_history(entries[i : i + BATCH])
    finally:
        await store.close()
    return time.perf_counter() - started


async def measure_in_process(db: Path, calls: int) -> dict[str, list[tuple[float, float]]]:
    """(wall ms, CPU ms) per call of metrics and status."""
    settings = Settings(db=db, repo=None, manictime_db=None)
    out: dict[str, list[tuple[float, float]]] = {"metrics": [], "status": []}
    async with Coordinator.open(settings, register=False) as coord:
        for _ in range(calls):
            w, c = time.perf_counter(), time.process_time()
            (await coord.metrics()).model_dump_json()
            out["metrics"].append(((time.perf_counter() - w) * 1000, (time.process_time() - c) * 1000))
            w, c = time.perf_counter(), time.process_time()
            await coord.status()
            out["status"].append(((time.perf_counter() - w) * 1000, (time.process_time() - c) * 1000))
    return out


def measure_cli(db: Path) -> tuple[float, float]:
    """(wall ms, CPU ms) of one `agent-coord metrics --json`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env["AGENT_COORD_DB"] = str(db)
    env["AGENT_COORD_MANICTIME_DB"] = ""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    w = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "agent-coord"), "metrics", "--json"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=tempfile.gettempdir(),
    )
    wall = (time.perf_counter() - w) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k events, fewer repetitions")
    parser.add_argument("--sizes", default=None, help="comma-separated event counts (default 10000,100000,1000000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (rotating the order)")
    parser.add_argument("--calls", type=int, default=10, help="in-process calls per repetition")
    parser.add_argument("--keep", type=Path, default=None, help="directory to keep (and reuse) the databases")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("10000,100000" if args.quick else "10000,100000,1000000")).split(",")]
    reps = args.reps or (3 if args.quick else 5)
    print(machine_line())

    base = args.keep or Path(tempfile.mkdtemp(prefix="agent-coord-aging-"))
    base.mkdir(parents=True, exist_ok=True)
    dbs: dict[int, Path] = {}
    built: dict[int, float] = {}
    try:
        for n in [0, *sizes]:
            db = base / f"aging-{n}-v{SCHEMA_VERSION}.db"
            if not db.exists() or args.keep is None:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(db) + suffix).unlink(missing_ok=True)
                built[n] = asyncio.run(build(db, n))
                print(f"built {n} events in {built[n]:.1f} s ({db.stat().st_size / 1e6:.1f} MB)")
            dbs[n] = db
        samples: dict[tuple[int, str], list[tuple[float, float]]] = {}
        order = list(dbs)
        for rep in range(reps):
            rotated = order[rep % len(order) :] + order[: rep % len(order)]
            for n in rotated:
                for kind, values in asyncio.run(measure_in_process(dbs[n], args.calls)).items():
                    samples.setdefault((n, kind), []).extend(values)
                samples.setdefault((n, "cli"), []).append(measure_cli(dbs[n]))
        sizes_mb = {n: round(dbs[n].stat().st_size / 1e6, 1) for n in dbs}
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    rows = []
    results: dict[str, Any] = {}
    verdicts: dict[str, bool] = {}
    for kind in ("status", "metrics", "cli"):
        empty_wall = median(w for w, _ in samples[(0, kind)])
        empty_cpu = median(c for _, c in samples[(0, kind)])
        for n in dbs:
            wall = median(w for w, _ in samples[(n, kind)])
            cpu = median(c for _, c in samples[(n, kind)])
            rows.append([kind, n, sizes_mb[n], len(samples[(n, kind)]), wall, cpu, wall / empty_wall, cpu / empty_cpu])
            results[f"{kind}/{n}"] = {"wall_p50_ms": wall, "cpu_p50_ms": cpu, "n": len(samples[(n, kind)])}
            if n:
                verdicts[f"{kind} at {n} events within {TARGET}x of empty (CPU {cpu / empty_cpu:.2f}x)"] = (
                    cpu / empty_cpu <= TARGET
                )
    print(table(["call", "events", "MB", "n", "wall p50 ms", "CPU p50 ms", "x empty wall", "x empty CPU"], rows))
    print_verdicts(verdicts)
    path = write_results(
        "aging", {"machine": machine(), "results": results, "built_s": built, "db_mb": sizes_mb, "verdicts": verdicts}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
