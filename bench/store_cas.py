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
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import machine, machine_line, median, summary, table, write_results

BUSY_TIMEOUT_MS = 5000
BUSY_RETRIES = 8
LEASE_S = 300.0


# ---- the agent-coord store worker -----------------------------------------------------------------


async def _store_worker(db: Path, pool_max: int, duration: float, rate: float, start: float) -> dict[str, Any]:
    from server.engine.records import Action, SlotState
    from server.engine.store import EventDraft, Store, StoreBusyError
    from server.engine.store import connection as connection_module

    busy_retried = 0
    original_is_busy = connection_module._is_busy

    def counting_is_busy(exc: BaseException) -> bool:
        nonlocal busy_retried
        hit = original_is_busy(exc)
        if hit:
            busy_retried += 1
        return hit

    connection_module._is_busy = counting_is_busy  # count the SQLITE_BUSY the store absorbed
    store = await Store.open(db)
    repo = await store.ensure_repo("/bench/repo", "/bench/pool")
    owner = f"bench-{os.getpid()}"
    branch = f"b-{os.getpid()}"
    paths = _slot_paths(pool_max)
    await _wait_until(start)
    phase = _phase(rate)
    cycles: list[float] = []
    ops: list[float] = []
    lost = 0
    busy_to_caller = 0
    end = start + duration
    k = 0
    while True:
        due = start + phase + k / rate if rate > 0 else time.time()
        if due >= end:
            break
        now = time.time()
        if due > now:
            await asyncio.sleep(due - now)
        k += 1
        c0 = time.perf_counter()
        try:
            slot = None
            while slot is None:
                t = time.perf_counter()
                slot = await store.claim_any_free_slot(
                    repo.id, paths=paths, warmest=True, owner=owner, branch=branch, task=None, lease_s=LEASE_S
                )
                if slot is None:
                    slot = await store.claim_new_slot(
                        repo, owner=owner, branch=branch, task=None, lease_s=LEASE_S, pool_max=pool_max
                    )
                ops.append((time.perf_counter() - t) * 1000)
                if slot is None:
                    lost += 1
            token = slot.fencing_token
            t = time.perf_counter()
            busy = await store.transition(
                slot.id,
                expect_state=SlotState.ALLOCATING,
                expect_token=token,
                changes={"state": SlotState.BUSY, "lease_expires_at": time.time() + LEASE_S, "setup_done": 1},
                events=[EventDraft(Action.ALLOCATE, "ok", owner, repo.id, slot.id, branch, 0.0, token)],
            )
            ops.append((time.perf_counter() - t) * 1000)
            assert busy is not None, "lost a CAS on a slot this process owns"
            t = time.perf_counter()
            freed = await store.transition(
                slot.id,
                expect_state=SlotState.BUSY,
                expect_token=token,
                changes={
                    "state": SlotState.FREE,
                    "owner": None,
                    "branch": None,
                    "lease_expires_at": None,
                    "since": None,
                    "released_at": time.time(),
                    "task": None,
                },
                events=[EventDraft(Action.RELEASE, "ok", owner, repo.id, slot.id, branch, 0.0, token)],
            )
            ops.append((time.perf_counter() - t) * 1000)
            assert freed is not None, "lost a CAS on a slot this process owns"
        except (StoreBusyError, sqlite3.OperationalError):
            busy_to_caller += 1
            continue
        cycles.append((time.perf_counter() - c0) * 1000)
    elapsed = time.time() - start
    await store.close()
    return {
        "cycles": cycles,
        "ops": ops,
        "lost_cas": lost,
        "busy_retried": busy_retried,
        "busy_to_caller": busy_to_caller,
        "elapsed": elapsed,
    }


# ---- the raw sqlite3 worker: the same statements, transaction for transaction ---------------------


class _RawBusyError(Exception):
    pass


def _raw_worker(db: Path, pool_max: int, duration: float, rate: float, start: float) -> dict[str, Any]:
    conn = sqlite3.connect(str(db), isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    busy_retried = 0

    def write(fn: Any, begin: str = "BEGIN IMMEDIATE") -> Any:
        nonlocal busy_retried
        for attempt in range(BUSY_RETRIES):
            try:
                conn.execute(begin)
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
                busy_retried += 1
                time.sleep(random.uniform(0.005, 0.02) * (2**attempt))
        raise _RawBusyError

    def ensure_repo() -> int:
        conn.execute(
            "INSERT INTO repos (path, pool_root, created_at) VALUES (?, ?, ?) ON CONFLICT(path) DO NOTHING",
            ("/bench/repo", "/bench/pool", time.time()),
        )
        return int(conn.execute("SELECT id FROM repos WHERE path = ?", ("/bench/repo",)).fetchone()[0])

    repo_id = write(ensure_repo)
    owner = f"bench-{os.getpid()}"
    branch = f"b-{os.getpid()}"
    held = ("ALLOCATING", "BUSY", "RELEASING")

    def event(action: str, slot_id: str, token: int, now: float) -> None:
        conn.execute(
            "INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,"
            " fencing_token, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, owner, action, repo_id, slot_id, branch, "ok", 0.0, token, json.dumps({}, sort_keys=True)),
        )

    def next_token() -> int:
        return int(
            conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'fencing_token' RETURNING value").fetchone()[0]
        )

    paths = _slot_paths(pool_max)
    marks = ",".join("?" * len(paths))

    def claim_any() -> sqlite3.Row | None:
        now = time.time()
        conn.execute(
            "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)", (repo_id, branch, *held)
        ).fetchone()
        row = conn.execute(
            f"SELECT id FROM slots WHERE repo_id = ? AND state = 'FREE' AND path IN ({marks})"
            " ORDER BY COALESCE(released_at, 0) DESC, id LIMIT 1",
            (repo_id, *paths),
        ).fetchone()
        if row is None:
            return None
        token = next_token()
        conn.execute(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = ?, branch = ?,"
            " fencing_token = ?, lease_expires_at = ?, since = ?, task = ?, rescue_ref = NULL"
            " WHERE id = ? AND state = 'FREE' AND (? IS NULL OR version = ?)",
            (owner, branch, token, now + LEASE_S, now, None, row["id"], None, None),
        )
        return conn.execute("SELECT * FROM slots WHERE id = ?", (row["id"],)).fetchone()

    def claim_new() -> sqlite3.Row | None:
        now = time.time()
        conn.execute(
            "SELECT * FROM slots WHERE repo_id = ? AND branch = ? AND state IN (?, ?, ?)", (repo_id, branch, *held)
        )
        count = conn.execute(
            "SELECT COUNT(*) FROM slots WHERE repo_id = ? AND state != 'QUARANTINED'", (repo_id,)
        ).fetchone()[0]
        if int(count) >= pool_max:
            return None
        seq = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()[0]
        slot_id = f"wt-{int(seq):02d}"
        conn.execute("SELECT 1 FROM slots WHERE id = ? OR path = ?", (slot_id, f"/bench/pool/{slot_id}")).fetchone()
        token = next_token()
        conn.execute(
            "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
            " lease_expires_at, since, task, created_at) VALUES (?, ?, ?, 'ALLOCATING', 0, ?, ?, ?, ?, ?, ?, ?)",
            (slot_id, repo_id, f"/bench/pool/{slot_id}", owner, branch, token, now + LEASE_S, now, None, now),
        )
        return conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()

    def transition(slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str) -> sqlite3.Row | None:
        now = time.time()
        row = conn.execute(
            "SELECT * FROM slots WHERE id = ? AND state IN (?) AND fencing_token = ?", (slot_id, expect, token)
        ).fetchone()
        if row is None:
            return None
        sets = ", ".join([f"{k} = ?" for k in changes] + ["version = version + 1"])
        conn.execute(f"UPDATE slots SET {sets} WHERE id = ?", (*changes.values(), slot_id))
        new = conn.execute("SELECT * FROM slots WHERE id = ?", (slot_id,)).fetchone()
        event(action, slot_id, token, now)
        return new

    _wait_until_sync(start)
    phase = _phase(rate)
    cycles: list[float] = []
    ops: list[float] = []
    lost = 0
    busy_to_caller = 0
    end = start + duration
    k = 0
    while True:
        due = start + phase + k / rate if rate > 0 else time.time()
        if due >= end:
            break
        now = time.time()
        if due > now:
            time.sleep(due - now)
        k += 1
        c0 = time.perf_counter()
        try:
            slot = None
            while slot is None:
                t = time.perf_counter()
                slot = write(claim_any)
                if slot is None:
                    slot = write(claim_new)
                ops.append((time.perf_counter() - t) * 1000)
                if slot is None:
                    lost += 1
            sid, token = slot["id"], slot["fencing_token"]
            t = time.perf_counter()
            busy = write(
                lambda sid=sid, token=token: transition(
                    sid,
                    "ALLOCATING",
                    token,
                    {"state": "BUSY", "lease_expires_at": time.time() + LEASE_S, "setup_done": 1},
                    "allocate",
                )
            )
            ops.append((time.perf_counter() - t) * 1000)
            assert busy is not None
            t = time.perf_counter()
            freed = write(
                lambda sid=sid, token=token: transition(
                    sid,
                    "BUSY",
                    token,
                    {
                        "state": "FREE",
                        "owner": None,
                        "branch": None,
                        "lease_expires_at": None,
                        "since": None,
                        "released_at": time.time(),
                        "task": None,
                    },
                    "release",
                )
            )
            ops.append((time.perf_counter() - t) * 1000)
            assert freed is not None
        except (_RawBusyError, sqlite3.OperationalError):
            busy_to_caller += 1
            continue
        cycles.append((time.perf_counter() - c0) * 1000)
    elapsed = time.time() - start
    conn.close()
    return {
        "cycles": cycles,
        "ops": ops,
        "lost_cas": lost,
        "busy_retried": busy_retried,
        "busy_to_caller": busy_to_caller,
        "elapsed": elapsed,
    }


def _slot_paths(pool_max: int) -> list[str]:
    """The paths the pool would pass as live worktrees: every slot `claim_new_slot` can create."""
    return [f"/bench/pool/wt-{i:02d}" for i in range(1, pool_max + 1)]


def _phase(rate: float) -> float:
    """Paced processes start at random offsets within one period, as independent agents would."""
    return random.Random(os.getpid()).uniform(0, 1 / rate) if rate > 0 else 0.0


async def _wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _wait_until_sync(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


def worker_main(args: argparse.Namespace) -> None:
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    if args.impl == "store":
        result = asyncio.run(_store_worker(Path(args.db), args.pool_max, args.duration, args.rate, start))
    else:
        result = _raw_worker(Path(args.db), args.pool_max, args.duration, args.rate, start)
    print(json.dumps(result), flush=True)


# ---- the driver ---------------------------------------------------------------------------------


def _fresh_db(directory: Path, name: str) -> Path:
    """A database with agent-coord's schema (made by the store itself), used by either implementation."""
    from server.engine.store import Store

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
    for k, v in verdicts.items():
        print(f"  {'PASS' if v else 'MISS'}  {k}")
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
