"""Store compare-and-swap: allocate+release cycles through agent-coord's Store, beside raw sqlite3.

The cycle is bench/cas_harness.py's (claim → ALLOCATING→BUSY + `allocate` event → BUSY→FREE +
`release` event). The raw baseline runs the very same SQL statements, transaction for transaction, with
the stdlib `sqlite3` module (WAL, busy_timeout=5000, synchronous=NORMAL, BEGIN IMMEDIATE, the same
retry on SQLITE_BUSY), on a database with the same schema, in the same run, interleaved with the store
runs. `store-thread` (with `--ablation`) is the store with every write in its connection's thread, as
before the quick path and the host writer lock (connection.py).

    python -m bench.store_cas            # 1, 4, 16 processes full speed + 16 paced at 20 cycles/s, ~2 min
    python -m bench.store_cas --quick    # the same, shorter, ~20 s
    python -m bench.store_cas --host-writer   # and the design probe of one writer process per host
    python -m bench.store_cas --store-writer  # the same probe with agent-coord's Store as the writer

Each worker is its own process (`--worker`), started together and released by a barrier once connected.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from bench._common import ROOT, machine, machine_line, print_verdicts, write_results
from bench.cas_harness import (
    PACED_PROCS,
    PACED_RATE,
    every_rep,
    launch,
    print_summary,
    raw_cycles,
    run_matrix,
    serve_worker,
    store_worker,
    summarize,
)


def worker_main(args: argparse.Namespace) -> None:
    db = Path(args.db)
    if args.impl == "raw":
        from bench.cas_raw_worker import RawSqlite

        serve_worker(lambda ready: raw_cycles(RawSqlite(db, args.pool_max), args.duration, args.rate, ready()))
        return
    if args.impl == "host-writer":
        from bench.cas_host_writer import HostWriterClient

        serve_worker(
            lambda ready: raw_cycles(HostWriterClient(args.addr, args.pool_max), args.duration, args.rate, ready())
        )
        return
    if args.impl == "store-writer":
        serve_worker(
            lambda ready: asyncio.run(store_worker(db, args.pool_max, args.duration, args.rate, ready, via=args.addr))
        )
        return
    if args.impl == "store-thread":
        from agent_coord.engine.store import connection

        connection.HOST_WRITER_LOCK = False
    serve_worker(lambda ready: asyncio.run(store_worker(db, args.pool_max, args.duration, args.rate, ready)))


def _fresh_db(directory: Path, name: str) -> Path:
    """A database with agent-coord's schema (made by the store itself), used by either implementation."""
    from agent_coord.engine.store import Store

    db = directory / f"{name}.db"
    for suffix in ("", "-wal", "-shm", "-writer"):
        Path(str(db) + suffix).unlink(missing_ok=True)

    async def make() -> None:
        store = await Store.open(db)
        await store.close()

    asyncio.run(make())
    return db


def run_once(impl: str, procs: int, duration: float, rate: float, where: Path) -> dict[str, Any]:
    db = _fresh_db(where, f"{impl}-{procs}")
    cmd = [sys.executable, "-m", "bench.store_cas", "--worker", "--impl", impl, "--db", str(db)]
    cmd += ["--pool-max", str(procs), "--duration", str(duration), "--rate", str(rate)]
    writer = None
    if impl in ("host-writer", "store-writer"):
        address = str(where / f"writer-{procs}.sock")
        Path(address).unlink(missing_ok=True)
        probe = ["bench.cas_host_writer", str(db), address, str(procs), str(procs)]
        if impl == "store-writer":
            probe = ["bench.cas_store_writer", str(db), address, str(procs)]
        writer = subprocess.Popen([sys.executable, "-m", *probe], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert writer.stdout is not None and writer.stdout.readline().strip() == "listening"
        cmd += ["--addr", address]
    try:
        result = launch(cmd, procs, duration)
    finally:
        if writer is not None:
            writer.wait(timeout=60)
    del result["acked"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about 20 s instead of about 2 min")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each configuration (median taken)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per full-speed run")
    parser.add_argument("--procs", default="1,4,16", help="process counts for the full-speed runs")
    parser.add_argument("--ablation", action="store_true", help="also run the store with every write in its thread")
    parser.add_argument(
        "--host-writer", action="store_true", help="also run the design probe: one writer process per host (raw SQL)"
    )
    parser.add_argument(
        "--store-writer",
        action="store_true",
        help="also run the design probe with agent-coord's Store as the host's writer process",
    )
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--impl", choices=["store", "store-thread", "raw", "host-writer", "store-writer"], help=argparse.SUPPRESS
    )
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
    impls = ["store", *(["store-thread"] if args.ablation else []), "raw"]
    impls += ["host-writer"] if args.host_writer else []
    impls += ["store-writer"] if args.store_writer else []
    info = machine()
    print(machine_line(info), flush=True)
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-cas-") as tmp:
        runs = run_matrix(partial(run_once, where=Path(tmp)), impls, counts, reps, duration, paced_duration)
    summaries = summarize(runs, impls, counts)
    print()
    print_summary(
        summaries,
        impls,
        [("claims retried", "lost_cas"), ("BUSY absorbed", "retried"), ("BUSY to caller", "busy_to_caller")],
    )
    paced = next(s for s in summaries if s["mode"] == "paced")
    full_max = next(s for s in summaries if s["mode"] == "full" and s["procs"] == max(counts))
    verdicts = {
        f"paced {PACED_PROCS}x{PACED_RATE:.0f}/s: op p99 <= 5 ms (median)": paced["store"]["op_p99"] <= 5.0,
        f"paced {PACED_PROCS}x{PACED_RATE:.0f}/s: op p99 <= 5 ms in every repetition": every_rep(
            paced, "store", lambda p99, _: p99 <= 5.0
        ),
        f"paced: kept the pace (>= 95% of {PACED_PROCS * PACED_RATE:.0f} cycles/s)": paced["store"]["throughput"]
        >= 0.95 * PACED_PROCS * PACED_RATE,
        "no SQLITE_BUSY reached a caller": all(s["store"]["busy_to_caller"] == 0 for s in summaries),
        f"full speed x{max(counts)}: throughput >= 0.3x raw in every repetition": every_rep(
            full_max, "store", lambda _, ratio: ratio >= 0.3
        ),
        "full speed, every count: throughput >= 0.3x raw (median)": all(
            s["ratio"] >= 0.3 for s in summaries if s["mode"] == "full"
        ),
    }
    if "store-writer" in impls:
        verdicts["probe, the Store as the host's writer: paced op p99 <= 5 ms in every repetition"] = every_rep(
            paced, "store-writer", lambda p99, _: p99 <= 5.0
        )
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
            "summary": summaries,
            "verdicts": verdicts,
            "runs": runs,
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
