"""Store compare-and-swap: allocate+release cycles through agent-coord's Store, beside raw sqlite3.

One cycle is what the pool does to the database for one allocation and its release, without git:
  claim (Store.claim_any_free_slot: the warmest FREE slot chosen inside the claiming transaction, as
  `Pool` does; Store.claim_new_slot when none is FREE and the pool is below its maximum; a claim that
  finds neither is retried) → Store.transition ALLOCATING→BUSY (+ the `allocate` event) →
  Store.transition BUSY→FREE (+ the `release` event).
The raw baseline runs the very same SQL statements, transaction for transaction, with the stdlib
`sqlite3` module (WAL, busy_timeout=5000, synchronous=NORMAL, BEGIN IMMEDIATE, the same retry on
SQLITE_BUSY), on a database with the same schema, in the same run, interleaved with the store runs.

    python -m bench.store_cas            # 1, 4, 16 processes full speed + 16 paced at 20 cycles/s, ~2 min
    python -m bench.store_cas --quick    # the same, shorter, ~20 s

Each worker is its own process (`--worker`), started together and released by a barrier.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import machine, machine_line, median, print_verdicts, summary, table, write_results
from bench.cas_raw_worker import raw_worker
from bench.cas_store_worker import store_worker


def worker_main(args: argparse.Namespace) -> None:
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    if args.impl == "store":
        result = asyncio.run(store_worker(Path(args.db), args.pool_max, args.duration, args.rate, start))
    else:
        result = raw_worker(Path(args.db), args.pool_max, args.duration, args.rate, start)
    print(json.dumps(result), flush=True)


# ---- the driver ---------------------------------------------------------------------------------


def _fresh_db(directory: Path, name: str) -> Path:
    """A database with agent-coord's schema (made by the store itself), used by either implementation."""
    from agent_coord.engine.store import Store

    db = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)

    async def make() -> None:
        store = await Store.open(db)
        await store.close()

    asyncio.run(make())
    return db


def run_once(impl: str, procs: int, duration: float, rate: float, directory: Path) -> dict[str, Any]:
    db = _fresh_db(directory, f"{impl}-{procs}")
    cmd = [
        sys.executable,
        "-m",
        "bench.store_cas",
        "--worker",
        "--impl",
        impl,
        "--db",
        str(db),
        "--pool-max",
        str(procs),
        "--duration",
        str(duration),
        "--rate",
        str(rate),
    ]
    workers = [
        subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
        )
        for _ in range(procs)
    ]
    for w in workers:
        assert w.stdout is not None
        line = w.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"worker did not start: {line!r}")
    start = time.time() + 0.2
    for w in workers:
        assert w.stdin is not None
        w.stdin.write(f"{start}\n")
        w.stdin.flush()
    results = []
    for w in workers:
        out, _ = w.communicate(timeout=duration + 60)
        if w.returncode != 0:
            raise RuntimeError(f"worker failed ({w.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    cycles = [c for r in results for c in r["cycles"]]
    ops = [o for r in results for o in r["ops"]]
    elapsed = max(r["elapsed"] for r in results)
    return {
        "impl": impl,
        "procs": procs,
        "rate_per_proc": rate,
        "duration_s": duration,
        "cycles": len(cycles),
        "throughput": len(cycles) / elapsed if elapsed > 0 else 0.0,
        "cycle_ms": summary(cycles),
        "op_ms": summary(ops),
        "lost_cas": sum(r["lost_cas"] for r in results),
        "busy_retried": sum(r["busy_retried"] for r in results),
        "busy_to_caller": sum(r["busy_to_caller"] for r in results),
    }


def _rotate(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 20 s instead of about 2 min")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each configuration (median taken)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per full-speed run")
    parser.add_argument("--procs", default="1,4,16", help="process counts for the full-speed runs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["store", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--pool-max", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.duration = args.duration or 1.0
        worker_main(args)
        return
    reps = args.reps or (1 if args.quick else 3)
    duration = args.duration or (1.0 if args.quick else 3.0)
    paced_duration = 2.0 if args.quick else 5.0
    counts = [int(x) for x in args.procs.split(",")]
    impls = ["store", "raw"]
    info = machine()
    print(machine_line(info), flush=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-cas-") as tmp:
        directory = Path(tmp)
        step = 0
        for rep in range(reps):
            configs = [("full", p, 0.0, duration) for p in counts] + [("paced", 16, 20.0, paced_duration)]
            for mode, procs, rate, secs in configs:
                for impl in _rotate(impls, step):  # interleaved, the order rotating from run to run
                    r = run_once(impl, procs, secs, rate, directory)
                    r["rep"] = rep
                    r["mode"] = mode
                    runs.append(r)
                    print(
                        f"  rep {rep} {impl:5} x{procs:<2} {mode:5}: {r['throughput']:7.0f} cycles/s  "
                        f"op p99 {r['op_ms']['p99']:7.2f} ms  cycle p99 {r['cycle_ms']['p99']:7.2f} ms  "
                        f"BUSY to caller {r['busy_to_caller']}",
                        flush=True,
                    )
                step += 1
    rows = []
    summary_rows: list[dict[str, Any]] = []
    for mode, procs_list in (("full", counts), ("paced", [16])):
        for procs in procs_list:
            med: dict[str, dict[str, float]] = {}
            for impl in impls:
                sel = [r for r in runs if r["mode"] == mode and r["procs"] == procs and r["impl"] == impl]
                med[impl] = {
                    "throughput": median(r["throughput"] for r in sel),
                    "op_p50": median(r["op_ms"]["p50"] for r in sel),
                    "op_p99": median(r["op_ms"]["p99"] for r in sel),
                    "op_max": max(r["op_ms"]["max"] for r in sel),
                    "cycle_p50": median(r["cycle_ms"]["p50"] for r in sel),
                    "cycle_p99": median(r["cycle_ms"]["p99"] for r in sel),
                    "cycle_max": max(r["cycle_ms"]["max"] for r in sel),
                    "lost_cas": sum(r["lost_cas"] for r in sel),
                    "busy_retried": sum(r["busy_retried"] for r in sel),
                    "busy_to_caller": sum(r["busy_to_caller"] for r in sel),
                }
            raw = med["raw"]["throughput"]
            ratios = {impl: (med[impl]["throughput"] / raw if raw else 0.0) for impl in impls}
            label = f"{procs} @20/s" if mode == "paced" else str(procs)
            for impl in impls:
                m = med[impl]
                rows.append(
                    [
                        label,
                        impl,
                        m["throughput"],
                        m["op_p50"],
                        m["op_p99"],
                        m["op_max"],
                        m["cycle_p50"],
                        m["cycle_p99"],
                        m["cycle_max"],
                        m["lost_cas"],
                        m["busy_retried"],
                        m["busy_to_caller"],
                        f"{ratios[impl]:.2f}",
                    ]
                )
            summary_rows.append(
                {
                    "mode": mode,
                    "procs": procs,
                    **{impl: med[impl] for impl in impls},
                    "ratio": ratios["store"],
                    "ratios": ratios,
                }
            )
    print()
    print(
        table(
            [
                "procs",
                "impl",
                "cycles/s",
                "op p50 ms",
                "op p99 ms",
                "op max ms",
                "cycle p50 ms",
                "cycle p99 ms",
                "cycle max ms",
                "claims retried",
                "BUSY retried",
                "BUSY to caller",
                "x raw",
            ],
            rows,
        )
    )
    paced = next(s for s in summary_rows if s["mode"] == "paced")
    full_max = next(s for s in summary_rows if s["mode"] == "full" and s["procs"] == max(counts))
    verdicts = {
        "paced 16x20/s: op p99 <= 5 ms": paced["store"]["op_p99"] <= 5.0,
        "paced 16x20/s: cycle p99 <= 5 ms": paced["store"]["cycle_p99"] <= 5.0,
        "paced 16x20/s: kept the pace (>= 95% of 320 cycles/s)": paced["store"]["throughput"] >= 0.95 * 320,
        "no SQLITE_BUSY reached a caller": all(s["store"]["busy_to_caller"] == 0 for s in summary_rows),
        f"full speed x{max(counts)}: throughput >= 0.3x raw": full_max["ratio"] >= 0.3,
        "full speed, every count: throughput >= 0.3x raw": all(
            s["ratio"] >= 0.3 for s in summary_rows if s["mode"] == "full"
        ),
    }
    print()
    print_verdicts(verdicts)
    path = write_results(
        "store_cas",
        {
            "machine": info,
            "reps": reps,
            "duration_s": duration,
            "paced_duration_s": paced_duration,
            "impls": impls,
            "summary": summary_rows,
            "verdicts": verdicts,
            "runs": runs,
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
