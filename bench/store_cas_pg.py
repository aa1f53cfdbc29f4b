"""Store compare-and-swap on PostgreSQL: allocate+release cycles through agent-coord's Store, beside raw
psycopg running the very same statements, transaction for transaction, in the same run.

One cycle is bench/store_cas.py's: claim (the warmest FREE slot, else a new one while the pool is
below its maximum) → ALLOCATING→BUSY (+ `allocate` event) → BUSY→FREE (+ `release` event). The raw
baseline sends what the store sends on PostgreSQL, spelled for psycopg: `BEGIN` and the writer lock,
the branch check, the claim `UPDATE … SET fencing_token = nextval(…) … RETURNING`, the re-reads, the
event inserts (through the same triggers: event order, rollups, notifications), `COMMIT`, and the
same retry on serialization failure or deadlock. Every worker is its own process with one
connection; the two implementations run interleaved, in fresh databases of one throwaway cluster.
After every run the event log is checked: no slot granted twice at once, every token granted once,
every cycle a worker acknowledged in the log.

    python -m bench.store_cas_pg           # 1, 4, 16 processes full speed + 16 paced at 20 cycles/s
    python -m bench.store_cas_pg --quick   # shorter
    python -m bench.store_cas_pg --url postgresql://…/empty_db_prefix   # a server of your own (it
                                           # creates databases named <prefix>_<n>; needs CREATEDB)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from agent_coord.engine.store.records import freed
from agent_coord.store_target import PostgresUrl
from bench._common import ROOT, machine, machine_line, median, print_verdicts, summary, table, write_results
from bench.cas_cycle import LEASE_S, Pacer, Tally, slot_paths, wait_until, wait_until_sync

RETRIES = 12


# ---- workers --------------------------------------------------------------------------------------


async def store_worker(
    url: str, pool_max: int, duration: float, rate: float, ready: Callable[[], float]
) -> dict[str, Any]:
    from agent_coord.engine.store import EventDraft, Store, StoreBusyError
    from agent_coord.engine.store.records import Action, SlotState

    store = await Store.open(PostgresUrl(url))
    repo = await store.ensure_repo("/bench/repo", "/bench/pool")
    start = await asyncio.to_thread(ready)  # connected: the measured window starts for every worker at once
    owner, branch = f"bench-{os.getpid()}", f"b-{os.getpid()}"
    paths = slot_paths(pool_max)
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
                events=[
                    EventDraft(
                        Action.ALLOCATE,
                        "ok",
                        agent_id=owner,
                        repo_id=repo.id,
                        worktree_id=slot.id,
                        branch=branch,
                        duration_ms=0.0,
                        fencing_token=token,
                    )
                ],
            )
            tally.op(t)
            assert busy is not None, "lost a CAS on a slot this process owns"
            t = time.perf_counter()
            released = await store.transition(
                slot.id,
                expect_state=SlotState.BUSY,
                expect_token=token,
                changes=freed(time.time()),
                events=[
                    EventDraft(
                        Action.RELEASE,
                        "ok",
                        agent_id=owner,
                        repo_id=repo.id,
                        worktree_id=slot.id,
                        branch=branch,
                        duration_ms=0.0,
                        fencing_token=token,
                    )
                ],
            )
            tally.op(t)
            assert released is not None, "lost a CAS on a slot this process owns"
            acked += 1
        except StoreBusyError:
            tally.busy_to_caller += 1
            continue
        tally.cycle(c0)
    elapsed = time.time() - start
    await store.close()
    return {**tally.result(0, elapsed), "owner": owner, "acked": acked}


def raw_worker(url: str, pool_max: int, duration: float, rate: float, ready: Callable[[], float]) -> dict[str, Any]:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.rows import dict_row

    from agent_coord.engine.store.schema_pg import WRITER_LOCK

    conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
    retried = 0

    def write(fn: Any) -> Any:
        nonlocal retried
        for attempt in range(RETRIES):
            try:
                conn.execute(f"BEGIN; SELECT {WRITER_LOCK}")
                try:
                    result = fn()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                return result
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
                retried += 1
                time.sleep(min(0.2, random.uniform(0.001, 0.004) * (2**attempt)))
        raise RuntimeError("retries exhausted")

    def ensure_repo() -> int:
        conn.execute(
            "INSERT INTO repos (path, pool_root, created_at) VALUES (%s, %s, %s) ON CONFLICT(path) DO NOTHING",
            ("/bench/repo", "/bench/pool", time.time()),
        )
        row = conn.execute("SELECT * FROM repos WHERE path = %s", ("/bench/repo",)).fetchone()
        assert row is not None
        return int(row["id"])

    repo_id = write(ensure_repo)
    start = ready()
    owner, branch = f"bench-{os.getpid()}", f"b-{os.getpid()}"
    held = ("ALLOCATING", "BUSY", "RELEASING")
    paths = slot_paths(pool_max)
    marks = ",".join(["%s"] * len(paths))

    def event(action: str, slot_id: str, token: int, now: float) -> None:
        conn.execute(
            "INSERT INTO events (ts, agent_id, action, repo_id, worktree_id, branch, outcome, duration_ms,"
            " fencing_token, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (now, owner, action, repo_id, slot_id, branch, "ok", 0.0, token, json.dumps({}, sort_keys=True)),
        )

    def claim_any() -> Mapping[str, Any] | None:
        now = time.time()
        conn.execute(
            "SELECT * FROM slots WHERE repo_id = %s AND branch = %s AND state IN (%s, %s, %s)",
            (repo_id, branch, *held),
        ).fetchone()
        row = conn.execute(
            f"SELECT id FROM slots WHERE repo_id = %s AND state = 'FREE' AND path IN ({marks})"
            " ORDER BY COALESCE(released_at, 0) DESC, id LIMIT 1",
            (repo_id, *paths),
        ).fetchone()
        if row is None:
            return None
        conn.execute(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = %s, branch = %s,"
            " fencing_token = nextval('fencing_tokens'), lease_expires_at = %s, since = %s, task = %s,"
            " rescue_ref = NULL WHERE id = %s AND state = 'FREE' AND version = COALESCE(%s, version)"
            " RETURNING fencing_token",
            (owner, branch, now + LEASE_S, now, None, row["id"], None),
        ).fetchone()
        return conn.execute("SELECT * FROM slots WHERE id = %s", (row["id"],)).fetchone()

    def claim_new() -> Mapping[str, Any] | None:
        now = time.time()
        conn.execute(
            "SELECT * FROM slots WHERE repo_id = %s AND branch = %s AND state IN (%s, %s, %s)",
            (repo_id, branch, *held),
        ).fetchone()
        count = conn.execute(
            "SELECT COUNT(*) AS n FROM slots WHERE repo_id = %s AND state != 'QUARANTINED'", (repo_id,)
        ).fetchone()
        if count is not None and int(count["n"]) >= pool_max:
            return None
        seq = conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value").fetchone()
        assert seq is not None
        slot_id = f"wt-{int(seq['value']):02d}"
        conn.execute("SELECT 1 FROM slots WHERE id = %s OR path = %s", (slot_id, f"/bench/pool/{slot_id}")).fetchone()
        token = conn.execute("SELECT nextval('fencing_tokens') AS t").fetchone()
        assert token is not None
        conn.execute(
            "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
            " lease_expires_at, since, task, created_at)"
            " VALUES (%s, %s, %s, 'ALLOCATING', 0, %s, %s, %s, %s, %s, %s, %s)",
            (slot_id, repo_id, f"/bench/pool/{slot_id}", owner, branch, token["t"], now + LEASE_S, now, None, now),
        )
        return conn.execute("SELECT * FROM slots WHERE id = %s", (slot_id,)).fetchone()

    def transition(slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str) -> Any:
        now = time.time()
        row = conn.execute(
            "SELECT * FROM slots WHERE id = %s AND state IN (%s) AND fencing_token = %s", (slot_id, expect, token)
        ).fetchone()
        if row is None:
            return None
        values = {k: (v.value if hasattr(v, "value") else v) for k, v in changes.items()}
        sets = ", ".join([f"{k} = %s" for k in values] + ["version = version + 1"])
        conn.execute(f"UPDATE slots SET {sets} WHERE id = %s", (*values.values(), slot_id))
        new = conn.execute("SELECT * FROM slots WHERE id = %s", (slot_id,)).fetchone()
        event(action, slot_id, token, now)
        return new

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
                slot = write(claim_any) or write(claim_new)
                tally.op(t)
                if slot is None:
                    tally.lost += 1
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
            tally.op(t)
            assert busy is not None
            t = time.perf_counter()
            released = write(lambda sid=sid, token=token: transition(sid, "BUSY", token, freed(time.time()), "release"))
            tally.op(t)
            assert released is not None
            acked += 1
        except RuntimeError:
            tally.busy_to_caller += 1
            continue
        tally.cycle(c0)
    elapsed = time.time() - start
    conn.close()
    return {**tally.result(retried, elapsed), "owner": owner, "acked": acked}


def worker_main(args: argparse.Namespace) -> None:
    def ready() -> float:
        """Say so once connected, and wait for the common start time."""
        print("ready", flush=True)
        return float(sys.stdin.readline())

    if args.impl == "store":
        result = asyncio.run(store_worker(args.db, args.pool_max, args.duration, args.rate, ready))
    else:
        result = raw_worker(args.db, args.pool_max, args.duration, args.rate, ready)
    print(json.dumps(result), flush=True)


# ---- the check: no double grant, nothing acknowledged missing ---------------------------------------


def check_grants(events: Sequence[Mapping[str, Any]], acked: Mapping[str, int]) -> dict[str, int]:
    """From the log in id (= commit) order: a grant of a slot while it is granted is a double grant; a
    token granted twice is one too; a worker's acknowledged cycles missing from the log are lost."""
    open_grant: dict[str, int] = {}
    tokens: set[int] = set()
    double = 0
    cycles: dict[str, int] = {}
    for e in events:
        wt, token = str(e["worktree_id"]), int(e["fencing_token"])
        if e["action"] == "allocate":
            if wt in open_grant or token in tokens:
                double += 1
            open_grant[wt] = token
            tokens.add(token)
        elif e["action"] == "release" and open_grant.pop(wt, None) == token:
            cycles[str(e["agent_id"])] = cycles.get(str(e["agent_id"]), 0) + 1
    lost = sum(max(0, n - cycles.get(owner, 0)) for owner, n in acked.items())
    return {"double_grants": double, "lost_acknowledged": lost}


# ---- the driver ------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster_prefix(url: str | None) -> Iterator[str]:
    """A URL whose database name is the prefix for the runs' fresh databases."""
    if url:
        yield url
        return
    from bench.pg_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster.url("bench")


_databases = iter(range(1, 1_000_000))


SETTINGS: dict[str, str] = {}  # database settings for every run's database (--synchronous-commit)


def fresh_database(prefix_url: str) -> str:
    import psycopg

    from agent_coord.engine.store import Store

    admin = PostgresUrl(prefix_url)
    base = admin.secret_url().rsplit("/", 1)
    name = f"{base[1].split('?')[0]}_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(f"{base[0]}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        for key, value in SETTINGS.items():
            conn.execute(f'ALTER DATABASE "{name}" SET {key} = {value}')
    url = f"{base[0]}/{name}"

    async def make() -> None:
        await (await Store.open(PostgresUrl(url))).close()

    asyncio.run(make())
    return url


def read_events(url: str) -> list[Mapping[str, Any]]:
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return list(
            conn.execute(
                "SELECT action, worktree_id, fencing_token, agent_id FROM events"
                " WHERE action IN ('allocate', 'release') ORDER BY id"
            ).fetchall()
        )


def run_once(impl: str, procs: int, duration: float, rate: float, prefix_url: str) -> dict[str, Any]:
    url = fresh_database(prefix_url)
    cmd = [sys.executable, "-m", "bench.store_cas_pg", "--worker", "--impl", impl, "--pool-max", str(procs)]
    cmd += ["--duration", str(duration), "--rate", str(rate)]
    env = {**os.environ, "AGENT_COORD_BENCH_DB": url}  # the URL holds a password: not on a command line
    workers = [
        subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        for _ in range(procs)
    ]
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
        out, _ = w.communicate(timeout=duration + 120)
        if w.returncode != 0:
            raise RuntimeError(f"worker failed ({w.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    cycles = [c for r in results for c in r["cycles"]]
    ops = [o for r in results for o in r["ops"]]
    elapsed = max(r["elapsed"] for r in results)
    checked = check_grants(read_events(url), {r["owner"]: r["acked"] for r in results})
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
        "retried": sum(r["busy_retried"] for r in results),
        "busy_to_caller": sum(r["busy_to_caller"] for r in results),
        **checked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per full-speed run")
    parser.add_argument("--procs", default="1,4,16", help="process counts for the full-speed runs")
    parser.add_argument("--url", default=None, help="a PostgreSQL URL whose database name prefixes the runs'")
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="the databases' synchronous_commit (off: a commit does not wait for its WAL flush)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["store", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--pool-max", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.db = os.environ["AGENT_COORD_BENCH_DB"]
        args.duration = args.duration or 1.0
        worker_main(args)
        return
    SETTINGS["synchronous_commit"] = args.synchronous_commit
    reps = args.reps or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 5.0)
    paced_duration = 4.0 if args.quick else 8.0
    counts = [int(x) for x in args.procs.split(",")]
    impls = ["store", "raw"]
    info = machine()
    print(machine_line(info), flush=True)
    runs: list[dict[str, Any]] = []
    with cluster_prefix(args.url) as prefix:
        step = 0
        for rep in range(reps):
            for mode, procs, rate, secs in [("full", p, 0.0, duration) for p in counts] + [
                ("paced", 16, 20.0, paced_duration)
            ]:
                order = impls[step % 2 :] + impls[: step % 2]
                for impl in order:
                    r = run_once(impl, procs, secs, rate, prefix)
                    r["rep"], r["mode"] = rep, mode
                    runs.append(r)
                    print(
                        f"  rep {rep} {impl:5} x{procs:<2} {mode:5}: {r['throughput']:7.0f} cycles/s  "
                        f"op p99 {r['op_ms']['p99']:7.2f} ms  cycle p99 {r['cycle_ms']['p99']:7.2f} ms  "
                        f"double grants {r['double_grants']}  lost {r['lost_acknowledged']}",
                        flush=True,
                    )
                step += 1
    rows: list[list[Any]] = []
    summaries: list[dict[str, Any]] = []
    for mode, procs_list in (("full", counts), ("paced", [16])):
        for procs in procs_list:
            med: dict[str, dict[str, float]] = {}
            for impl in impls:
                sel = [r for r in runs if r["mode"] == mode and r["procs"] == procs and r["impl"] == impl]
                med[impl] = {
                    "throughput": median(r["throughput"] for r in sel),
                    "op_p50": median(r["op_ms"]["p50"] for r in sel),
                    "op_p99": median(r["op_ms"]["p99"] for r in sel),
                    "cycle_p99": median(r["cycle_ms"]["p99"] for r in sel),
                    "retried": sum(r["retried"] for r in sel),
                    "double_grants": sum(r["double_grants"] for r in sel),
                    "lost_acknowledged": sum(r["lost_acknowledged"] for r in sel),
                }
            ratio = med["store"]["throughput"] / med["raw"]["throughput"] if med["raw"]["throughput"] else 0.0
            label = f"{procs} @20/s" if mode == "paced" else str(procs)
            for impl in impls:
                m = med[impl]
                shown = [m["throughput"], m["op_p50"], m["op_p99"], m["cycle_p99"], m["double_grants"]]
                rows.append([label, impl, *shown, m["lost_acknowledged"], f"{ratio:.2f}" if impl == "store" else ""])
            summaries.append({"mode": mode, "procs": procs, **med, "ratio": ratio})
    print()
    headers = ["procs", "impl", "cycles/s", "op p50 ms", "op p99 ms", "cycle p99 ms", "double grants", "lost acked"]
    print(table([*headers, "x raw"], rows))
    paced = next(s for s in summaries if s["mode"] == "paced")
    verdicts = {
        "paced 16x20/s: op p99 <= 10 ms": paced["store"]["op_p99"] <= 10.0,
        "full speed, every count: throughput >= 0.3x raw psycopg": all(
            s["ratio"] >= 0.3 for s in summaries if s["mode"] == "full"
        ),
        "0 double grants, 0 lost acknowledged cycles": all(
            r["double_grants"] == 0 and r["lost_acknowledged"] == 0 for r in runs
        ),
    }
    print()
    print_verdicts(verdicts)
    path = write_results(
        "store_cas_pg",
        {"machine": info, "reps": reps, "settings": SETTINGS, "runs": runs, "summary": summaries},
    )
    print(f"\nresults: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
