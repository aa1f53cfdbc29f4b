"""What the store compare-and-swap benches share (bench/store_cas.py on SQLite, bench/store_cas_pg.py on
PostgreSQL): the store's allocate+release cycle, the raw baselines' cycle loop, worker processes started
together, the runs interleaved with the order rotating, and the medians and spread of the repetitions.

One cycle is what the pool does to the database for one allocation and its release, without git:
  claim (`Store.claim_any_free_slot`: the warmest FREE slot chosen inside the claiming transaction, as
  `Pool` does; `Store.claim_new_slot` when none is FREE and the pool is below its maximum; a claim that
  finds neither is retried) → `Store.transition` ALLOCATING→BUSY (+ the `allocate` event) →
  `Store.transition` BUSY→FREE (+ the `release` event, the columns the pool's release writes).
A raw baseline runs the very same statements, transaction for transaction, with the engine's own driver.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from agent_coord.engine.store.records import freed
from agent_coord.store_target import PostgresUrl
from bench._common import ROOT, _fmt, median, summary, table
from bench.cas_cycle import LEASE_S, Pacer, Tally, slot_paths, wait_until, wait_until_sync

Row = Any  # a row by column name: sqlite3.Row, or psycopg's dict row


# ---- the workers -----------------------------------------------------------------------------------


async def store_worker(
    target: Path | PostgresUrl,
    pool_max: int,
    duration: float,
    rate: float,
    ready: Callable[[], float],
    via: str | None = None,
) -> dict[str, Any]:
    """Cycles through agent-coord's `Store` (on either engine) until `duration` has passed; the SQLITE_BUSY
    the store absorbed is counted, and any busy error that reached the caller. `via`: the address of a
    writer process to forward every call to (bench/cas_store_writer.py) instead of a store of its own."""
    from agent_coord.engine.store import EventDraft, Store, StoreBusyError
    from agent_coord.engine.store import connection as connection_module
    from agent_coord.engine.store.records import Action, SlotState

    absorbed = 0
    is_busy = connection_module._is_busy

    def counting_is_busy(exc: BaseException) -> bool:
        nonlocal absorbed
        hit = is_busy(exc)
        absorbed += hit
        return hit

    connection_module._is_busy = counting_is_busy
    if via is not None:
        from bench.cas_store_writer import StoreClient

        store: Any = await StoreClient.open(via)
    else:
        store = await Store.open(target)
    repo = await store.ensure_repo("/bench/repo", "/bench/pool")
    start = await asyncio.to_thread(ready)  # opened: the measured window starts for every worker at once
    owner, branch = f"bench-{os.getpid()}", f"b-{os.getpid()}"
    paths = slot_paths(pool_max)

    def event(action: Action, slot_id: str, token: int | None) -> EventDraft:
        return EventDraft(
            action,
            "ok",
            agent_id=owner,
            repo_id=repo.id,
            worktree_id=slot_id,
            branch=branch,
            duration_ms=0.0,
            fencing_token=token,
        )

    acked = 0
    await wait_until(start)
    pacer, tally = Pacer(start, duration, rate), Tally()
    while (delay := pacer.next_delay()) is not None:
        if delay > 0:
            await asyncio.sleep(delay)
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
                tally.op(t)
                if slot is None:
                    tally.lost += 1
            token = slot.fencing_token
            t = time.perf_counter()
            busy = await store.transition(
                slot.id,
                expect_state=SlotState.ALLOCATING,
                expect_token=token,
                changes={"state": SlotState.BUSY, "lease_expires_at": time.time() + LEASE_S, "setup_done": 1},
                events=[event(Action.ALLOCATE, slot.id, token)],
            )
            tally.op(t)
            assert busy is not None, "lost a CAS on a slot this process owns"
            t = time.perf_counter()
            released = await store.transition(
                slot.id,
                expect_state=SlotState.BUSY,
                expect_token=token,
                changes=freed(time.time()),
                events=[event(Action.RELEASE, slot.id, token)],
            )
            tally.op(t)
            assert released is not None, "lost a CAS on a slot this process owns"
            acked += 1
        except (StoreBusyError, sqlite3.OperationalError):
            tally.busy_to_caller += 1
            continue
        tally.cycle(c0)
    elapsed = time.time() - start
    await store.close()
    return {**tally.result(absorbed, elapsed), "owner": owner, "acked": acked}


class RawOps(Protocol):
    """A raw baseline: the store's statements for one engine, spelled for its driver."""

    owner: str
    retried: int

    def write(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` as one write transaction, retried whole as the store retries; `GaveUp` when it stops."""
        ...

    def claim_any(self) -> Row | None: ...

    def claim_new(self) -> Row | None: ...

    def transition(self, slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str) -> Row | None: ...

    def close(self) -> None: ...


EVENT_INSERT = (
    "INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,"
    " fencing_token, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def event_values(ops: Any, action: str, slot_id: str, token: int, now: float) -> tuple[Any, ...]:
    """What the store's event insert binds, for a raw baseline (`ops`: its owner, repo_id, branch)."""
    detail = json.dumps({}, sort_keys=True)
    return (now, ops.owner, action, ops.repo_id, slot_id, ops.branch, "ok", 0.0, token, detail)


class RawIdentity:
    """Who a raw baseline worker is (as the store's worker: one owner and branch per process) and the
    pool's slot paths; `repo_id` is set once its connection has registered the repository."""

    def __init__(self, pool_max: int) -> None:
        self.retried = 0
        self.owner, self.branch = f"bench-{os.getpid()}", f"b-{os.getpid()}"
        self.pool_max = pool_max
        self.paths = slot_paths(pool_max)
        self.repo_id = 0


class GaveUp(Exception):
    """A raw transaction kept failing through every retry (the store's busy error)."""


def raw_cycles(ops: RawOps, duration: float, rate: float, start: float) -> dict[str, Any]:
    """The store's cycle, transaction for transaction, through `ops`."""
    acked = 0
    wait_until_sync(start)
    pacer, tally = Pacer(start, duration, rate), Tally()
    while (delay := pacer.next_delay()) is not None:
        if delay > 0:
            time.sleep(delay)
        c0 = time.perf_counter()
        try:
            slot = None
            while slot is None:
                t = time.perf_counter()
                slot = ops.write(ops.claim_any) or ops.write(ops.claim_new)
                tally.op(t)
                if slot is None:
                    tally.lost += 1
            sid, token = str(slot["id"]), int(slot["fencing_token"])
            t = time.perf_counter()
            allocated = {"state": "BUSY", "lease_expires_at": time.time() + LEASE_S, "setup_done": 1}
            busy = ops.write(partial(ops.transition, sid, "ALLOCATING", token, allocated, "allocate"))
            tally.op(t)
            assert busy is not None, "lost a CAS on a slot this process owns"
            t = time.perf_counter()
            released = ops.write(partial(ops.transition, sid, "BUSY", token, freed(time.time()), "release"))
            tally.op(t)
            assert released is not None, "lost a CAS on a slot this process owns"
            acked += 1
        except GaveUp:
            tally.busy_to_caller += 1
            continue
        tally.cycle(c0)
    elapsed = time.time() - start
    ops.close()
    return {**tally.result(ops.retried, elapsed), "owner": ops.owner, "acked": acked}


def serve_worker(run: Callable[[Callable[[], float]], dict[str, Any]]) -> None:
    """A worker process's side of the start barrier: `ready` says so once connected and returns the
    common start time; the result goes back as one JSON line."""

    def ready() -> float:
        print("ready", flush=True)
        return float(sys.stdin.readline())

    print(json.dumps(run(ready)), flush=True)


# ---- the driver ------------------------------------------------------------------------------------


def launch(cmd: Sequence[str], procs: int, duration: float, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Start `procs` workers, release them together once all are connected, and pool what they measured."""
    workers = [
        subprocess.Popen(
            list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(env or os.environ)
        )
        for _ in range(procs)
    ]
    try:
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"worker did not start: {line!r}")
        start = time.time() + 0.3
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(f"{start}\n")
            w.stdin.flush()
        results = []
        for w in workers:
            out, _ = w.communicate(timeout=duration + 600)  # a paced run that falls behind still runs every cycle
            if w.returncode != 0:
                raise RuntimeError(f"worker failed ({w.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    cycles = [c for r in results for c in r["cycles"]]
    ops = [o for r in results for o in r["ops"]]
    elapsed = max(r["elapsed"] for r in results)
    return {
        "procs": procs,
        "duration_s": duration,
        "cycles": len(cycles),
        "throughput": len(cycles) / elapsed if elapsed > 0 else 0.0,
        "cycle_ms": summary(cycles),
        "op_ms": summary(ops),
        "lost_cas": sum(r["lost_cas"] for r in results),
        "retried": sum(r["busy_retried"] for r in results),
        "busy_to_caller": sum(r["busy_to_caller"] for r in results),
        "acked": {r["owner"]: r["acked"] for r in results},
    }


PACED_PROCS, PACED_RATE = 16, 20.0


def run_matrix(
    run_once: Callable[[str, int, float, float], dict[str, Any]],
    impls: Sequence[str],
    counts: Sequence[int],
    reps: int,
    duration: float,
    paced_duration: float,
) -> list[dict[str, Any]]:
    """Every configuration (full speed at each count, then 16 processes paced at 20 cycles/s) for every
    implementation, repetition after repetition, the order of the implementations rotating each time."""
    runs: list[dict[str, Any]] = []
    configs = [("full", p, 0.0, duration) for p in counts] + [("paced", PACED_PROCS, PACED_RATE, paced_duration)]
    step = 0
    for rep in range(reps):
        for mode, procs, rate, secs in configs:
            k = step % len(impls)
            for impl in [*impls[k:], *impls[:k]]:
                r = run_once(impl, procs, secs, rate)
                r.update(impl=impl, rep=rep, mode=mode, rate_per_proc=rate)
                runs.append(r)
                print(
                    f"  rep {rep} {impl:12} x{procs:<2} {mode:5}: {r['throughput']:7.0f} cycles/s  "
                    f"op p99 {r['op_ms']['p99']:7.2f} ms  cycle p99 {r['cycle_ms']['p99']:7.2f} ms  "
                    f"busy to caller {r['busy_to_caller']}"
                    + (
                        f"  double grants {r['double_grants']}  lost {r['lost_acknowledged']}"
                        if "double_grants" in r
                        else ""
                    ),
                    flush=True,
                )
            step += 1
    return runs


def summarize(runs: Sequence[dict[str, Any]], impls: Sequence[str], counts: Sequence[int]) -> list[dict[str, Any]]:
    """Per configuration and implementation: medians over the repetitions, and the spread (each
    repetition's op p99 and throughput ratio to the raw run of the same repetition)."""
    out: list[dict[str, Any]] = []
    for mode, procs_list in (("full", counts), ("paced", [PACED_PROCS])):
        for procs in procs_list:
            sel = {
                impl: [r for r in runs if r["mode"] == mode and r["procs"] == procs and r["impl"] == impl]
                for impl in impls
            }
            raw_by_rep = {r["rep"]: r["throughput"] for r in sel["raw"]}
            med: dict[str, dict[str, Any]] = {}
            for impl in impls:
                rs = sel[impl]
                med[impl] = {
                    "throughput": median(r["throughput"] for r in rs),
                    "op_p50": median(r["op_ms"]["p50"] for r in rs),
                    "op_p99": median(r["op_ms"]["p99"] for r in rs),
                    "op_max": max(r["op_ms"]["max"] for r in rs),
                    "cycle_p50": median(r["cycle_ms"]["p50"] for r in rs),
                    "cycle_p99": median(r["cycle_ms"]["p99"] for r in rs),
                    "lost_cas": sum(r["lost_cas"] for r in rs),
                    "retried": sum(r["retried"] for r in rs),
                    "busy_to_caller": sum(r["busy_to_caller"] for r in rs),
                    "double_grants": sum(r.get("double_grants", 0) for r in rs),
                    "lost_acknowledged": sum(r.get("lost_acknowledged", 0) for r in rs),
                    "op_p99_runs": [r["op_ms"]["p99"] for r in rs],
                    "ratio_runs": [
                        round(r["throughput"] / raw_by_rep[r["rep"]], 3) if raw_by_rep.get(r["rep"]) else 0.0
                        for r in rs
                    ],
                }
            raw = med["raw"]["throughput"]
            for impl in impls:
                med[impl]["ratio"] = med[impl]["throughput"] / raw if raw else 0.0
            out.append({"mode": mode, "procs": procs, **med, "ratio": med[impls[0]]["ratio"]})
    return out


def spread(values: Sequence[float]) -> str:
    """min-max of the repetitions, in the table's number format."""
    return f"{_fmt(float(min(values)))}-{_fmt(float(max(values)))}" if values else "-"


def print_summary(summaries: Sequence[dict[str, Any]], impls: Sequence[str], extra: Sequence[tuple[str, str]]) -> None:
    """The medians as a Markdown table; `extra`: (header, key) columns of this bench's own."""
    rows: list[list[Any]] = []
    for s in summaries:
        label = f"{s['procs']} @{PACED_RATE:.0f}/s" if s["mode"] == "paced" else str(s["procs"])
        for impl in impls:
            m = s[impl]
            rows.append(
                [
                    label,
                    impl,
                    m["throughput"],
                    m["op_p50"],
                    m["op_p99"],
                    spread(m["op_p99_runs"]),
                    m["cycle_p99"],
                    *(m[key] for _, key in extra),
                    f"{m['ratio']:.2f}",
                    spread(m["ratio_runs"]),
                ]
            )
    headers = ["procs", "impl", "cycles/s", "op p50 ms", "op p99 ms", "op p99 runs", "cycle p99 ms"]
    print(table([*headers, *(h for h, _ in extra), "x raw", "x raw runs"], rows))


def every_rep(summary_row: dict[str, Any], impl: str, check: Callable[[float, float], bool]) -> bool:
    """`check(op_p99, ratio)` held in every repetition."""
    m = summary_row[impl]
    return bool(m["op_p99_runs"]) and all(
        check(p99, ratio) for p99, ratio in zip(m["op_p99_runs"], m["ratio_runs"], strict=True)
    )
