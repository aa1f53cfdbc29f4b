"""Allocation in agent history: a warm `allocate` + `release` on a store holding the rows of 10,000
ended Claude Code sessions, beside the same on an empty store, interleaved in one run.

Two identical repositories (a generated 1,000-file one, cloned), each with its own database and
pool; one database also holds `--agents` ended agents registered through the store's API within
the last day (so not yet retired): half disconnected, half marked dead, none holding a slot, pids of
processes that do not exist. Each side runs in-process through `Pool.allocate` / `Pool.release`
(what the `allocate_worktree` and `release_worktree` tools call), the sides alternating call by
call. Wall time and the process's CPU time per allocation are reported.

    python -m bench.agent_history              # 10,000 ended agents, 40 allocations a side
    python -m bench.agent_history --quick      # 10 a side
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Agent
from bench._common import default_base, machine, machine_line, median, print_verdicts, table, write_results
from bench._repo import fresh_clone

TARGET = 1.2
FILES, COMMITS = 1000, 20


async def ended_agents(db: Path, n: int) -> None:
    store = await Store.open(db)
    now = time.time()
    try:
        for i in range(n):
            ended = now - 3600 - i  # ended within the last day: not retired yet
            await store.register_agent(
                Agent(
                    id=f"agent-ended-{i:05d}",
                    host=os.uname().nodename,
                    boot_id="b",
                    pid=4_000_000 + i,
                    pid_create_time=ended - 600,
                    server_pid=4_100_000 + i,
                    server_create_time=ended - 600,
                    repo_id=None,
                    status="disconnected" if i % 2 else "dead",
                    note=None,
                    started_at=ended - 600,
                    last_heartbeat=ended,
                    lease_expires_at=ended + 300,
                )
            )
    finally:
        await store.close()


async def run(base: Path, agents: int, cycles: int) -> dict[str, list[tuple[float, float]]]:
    sides = {"empty": 0, f"{agents} ended agents": agents}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    async with AsyncExitStack() as stack:
        coords: dict[str, Coordinator] = {}
        for k, (name, n) in enumerate(sides.items()):
            repo = fresh_clone(FILES, COMMITS, base / f"repo{k}")
            db = base / f"coord{k}.db"
            if n:
                await ended_agents(db, n)
            settings = Settings(
                db=db, repo=repo, pool_root=base / f"pool{k}", pool_max=2, manictime_db=None, jitter_max_ms=0
            )
            coords[name] = await stack.enter_async_context(
                Coordinator.open(settings, register=True, agent_id=f"bench-{k}")
            )
        for coord in coords.values():  # the first allocation is cold: warm the pool, untimed
            first = await coord.pool.allocate("warm-up")
            await coord.pool.release(worktree_id=first.worktree_id)
        await asyncio.sleep(1.1)  # past git's racily-clean window (BENCHMARKS.md, "The machine")
        for i in range(cycles):
            order = list(coords.items()) if i % 2 == 0 else list(reversed(coords.items()))
            for name, coord in order:
                wall, cpu = time.perf_counter(), time.process_time()
                result = await coord.pool.allocate(f"b{i}")
                samples[name].append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
                await coord.pool.release(worktree_id=result.worktree_id)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=None)
    parser.add_argument("--base-dir", default=default_base())
    args = parser.parse_args()
    cycles = args.cycles or (10 if args.quick else 40)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-agents-", dir=args.base_dir) as tmp:
        samples = asyncio.run(run(Path(tmp), args.agents, cycles))
    empty_wall = median(w for w, _ in samples["empty"])
    empty_cpu = median(c for _, c in samples["empty"])
    rows = []
    results: dict[str, Any] = {}
    verdicts: dict[str, bool] = {}
    for name, values in samples.items():
        wall, cpu = median(w for w, _ in values), median(c for _, c in values)
        rows.append([name, len(values), wall, cpu, wall / empty_wall, cpu / empty_cpu])
        results[name] = {"wall_p50_ms": wall, "cpu_p50_ms": cpu, "n": len(values)}
        if name != "empty":
            verdicts[f"allocate p50 with {name} within {TARGET}x of empty (wall {wall / empty_wall:.2f}x)"] = (
                wall / empty_wall <= TARGET
            )
    print(table(["store", "n", "allocate p50 ms", "CPU p50 ms", "x empty wall", "x empty CPU"], rows))
    print_verdicts(verdicts)
    path = write_results("agent_history", {"machine": machine(), "results": results, "verdicts": verdicts})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
