"""Store compare-and-swap on PostgreSQL: allocate+release cycles through agent-coord's Store, beside raw
psycopg running the very same statements, transaction for transaction, in the same run.

One cycle is bench/cas_harness.py's: claim (the warmest FREE slot, else a new one while the pool is
below its maximum) → ALLOCATING→BUSY (+ `allocate` event) → BUSY→FREE (+ `release` event). The raw
baseline (`raw`) sends what the store sends on PostgreSQL, with plain psycopg: each write one Query
message of `BEGIN`, the commit setting (not waiting for the WAL flush), the call of the schema's
function for it (schema_pg's migration 8: the writer lock, the branch check, the claim or the
compare-and-swap, the event inserts through the same triggers), `COMMIT`, and the flush that makes it
durable before it is acknowledged (pg_connection.py); the same retry on serialization failure or
deadlock. A second reference line (`raw-tx`) runs the same cycle as transactions of single
statements, one round trip each, under the writer lock taken at `BEGIN` (what the store sent before
the functions). Every worker is its own process with one connection; the implementations run
interleaved, in fresh databases of one throwaway cluster. After every run the event log is checked:
no slot granted twice at once, every token granted once, every cycle a worker acknowledged in the log.

    python -m bench.store_cas_pg           # 1, 4, 16 processes full speed + 16 paced at 20 cycles/s
    python -m bench.store_cas_pg --quick   # shorter
    python -m bench.store_cas_pg --store-writer   # and the probe of one writer process per host
    python -m bench.store_cas_pg --url postgresql://…/empty_db_prefix   # a server of your own (it
                                           # creates databases named <prefix>_<n>; needs CREATEDB)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from agent_coord.store_target import PostgresUrl
from bench import cas_harness as harness
from bench._common import ROOT, machine, machine_line, print_verdicts, write_results
from bench.cas_cycle import LEASE_S

RETRIES = 12
HELD = ("ALLOCATING", "BUSY", "RELEASING")
# The raw baseline's repository row: a host of its own, as the store records one (schema 7).
RAW_HOST = "bench-raw"
NO_EVENTS: tuple[list[Any], ...] = ([],) * 9  # a claim's event arrays when it writes no event


# ---- the raw baseline ------------------------------------------------------------------------------


class RawPg(harness.RawIdentity):
    """`cas_harness.RawOps` over one psycopg connection: the store's transaction functions, statement by
    statement (the `raw-tx` reference line)."""

    def __init__(self, url: str, pool_max: int) -> None:
        import psycopg
        from psycopg.rows import dict_row

        from agent_coord.engine.store.pg_connection import FLUSH, WRITE_BEGIN

        super().__init__(pool_max)
        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        self.begin, self.flush = WRITE_BEGIN, FLUSH
        self.repo_id = self.write(self._ensure_repo)

    def write(self, fn: Callable[[], Any]) -> Any:
        from psycopg import errors as pg_errors

        for attempt in range(RETRIES):
            try:
                self.conn.execute(self.begin)
                try:
                    result = fn()
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute(self.flush)
                return result
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
                self.retried += 1
                time.sleep(min(0.2, random.uniform(0.001, 0.004) * (2**attempt)))
        raise harness.GaveUp

    def close(self) -> None:
        self.conn.close()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Mapping[str, Any] | None:
        row: Mapping[str, Any] | None = self.conn.execute(sql, params).fetchone()
        return row

    def _ensure_repo(self) -> int:
        return self.ensure_repo(self.conn)

    @staticmethod
    def ensure_repo(conn: Any) -> int:
        conn.execute(
            "INSERT INTO repos (path, pool_root, created_at, host) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT(host, path) DO NOTHING",
            ("/bench/repo", "/bench/pool", time.time(), RAW_HOST),
        )
        row = conn.execute("SELECT * FROM repos WHERE path = %s AND host = %s", ("/bench/repo", RAW_HOST)).fetchone()
        assert row is not None
        return int(row["id"])

    def _branch_held(self) -> None:
        self._one(
            "SELECT * FROM slots WHERE repo_id = %s AND branch = %s AND state IN (%s, %s, %s)",
            (self.repo_id, self.branch, *HELD),
        )

    def claim_any(self) -> Mapping[str, Any] | None:
        now = time.time()
        self._branch_held()
        marks = ",".join(["%s"] * len(self.paths))
        row = self._one(
            f"SELECT id FROM slots WHERE repo_id = %s AND state = 'FREE' AND path IN ({marks})"
            " ORDER BY COALESCE(released_at, 0) DESC, id LIMIT 1",
            (self.repo_id, *self.paths),
        )
        if row is None:
            return None
        self._one(
            "UPDATE slots SET state = 'ALLOCATING', version = version + 1, owner = %s, branch = %s,"
            " fencing_token = nextval('fencing_tokens'), lease_expires_at = %s, since = %s, task = %s,"
            " rescue_ref = NULL WHERE id = %s AND state = 'FREE' AND version = COALESCE(%s, version)"
            " RETURNING fencing_token",
            (self.owner, self.branch, now + LEASE_S, now, None, row["id"], None),
        )
        return self._one("SELECT * FROM slots WHERE id = %s", (row["id"],))

    def claim_new(self) -> Mapping[str, Any] | None:
        now = time.time()
        self._branch_held()
        count = self._one(
            "SELECT COUNT(*) AS n FROM slots WHERE repo_id = %s AND state != 'QUARANTINED'", (self.repo_id,)
        )
        if count is not None and int(count["n"]) >= self.pool_max:
            return None
        seq = self._one("UPDATE meta SET value = value + 1 WHERE key = 'slot_seq' RETURNING value")
        assert seq is not None
        slot_id = f"wt-{int(seq['value']):02d}"
        self._one("SELECT 1 FROM slots WHERE id = %s OR path = %s", (slot_id, f"/bench/pool/{slot_id}"))
        token = self._one("SELECT nextval('fencing_tokens') AS t")
        assert token is not None
        self.conn.execute(
            "INSERT INTO slots (id, repo_id, path, state, version, owner, branch, fencing_token,"
            " lease_expires_at, since, task, created_at)"
            " VALUES (%s, %s, %s, 'ALLOCATING', 0, %s, %s, %s, %s, %s, %s, %s)",
            (
                slot_id,
                self.repo_id,
                f"/bench/pool/{slot_id}",
                self.owner,
                self.branch,
                token["t"],
                now + LEASE_S,
                now,
                None,
                now,
            ),
        )
        return self._one("SELECT * FROM slots WHERE id = %s", (slot_id,))

    def transition(
        self, slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str
    ) -> Mapping[str, Any] | None:
        now = time.time()
        row = self._one(
            "SELECT * FROM slots WHERE id = %s AND state IN (%s) AND fencing_token = %s", (slot_id, expect, token)
        )
        if row is None:
            return None
        values = {k: (v.value if isinstance(v, Enum) else v) for k, v in changes.items()}
        sets = ", ".join([f"{k} = %s" for k in values] + ["version = version + 1"])
        self.conn.execute(f"UPDATE slots SET {sets} WHERE id = %s", (*values.values(), slot_id))
        new = self._one("SELECT * FROM slots WHERE id = %s", (slot_id,))
        self.conn.execute(
            harness.EVENT_INSERT.replace("?", "%s"), harness.event_values(self, action, slot_id, token, now)
        )
        return new


class RawPgFn(harness.RawIdentity):
    """`cas_harness.RawOps` over one psycopg connection: the store's calls of the schema's functions."""

    def __init__(self, url: str, pool_max: int) -> None:
        import psycopg
        from psycopg.rows import dict_row

        super().__init__(pool_max)
        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, cursor_factory=psycopg.ClientCursor)
        self.repo_id = RawPg.ensure_repo(self.conn)

    def write(self, fn: Callable[[], Any]) -> Any:
        from psycopg import errors as pg_errors

        for attempt in range(RETRIES):
            try:
                return fn()
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected):
                self.conn.execute("ROLLBACK")
                self.retried += 1
                time.sleep(min(0.2, random.uniform(0.001, 0.004) * (2**attempt)))
        raise harness.GaveUp

    def _call(self, sql: str, params: Sequence[Any]) -> Mapping[str, Any] | None:
        from agent_coord.engine.store.pg_connection import CALL_BEGIN, FLUSH

        cur = self.conn.cursor()
        try:
            cur.execute(f"BEGIN; {CALL_BEGIN}; {sql}; COMMIT; {FLUSH}", params)
        except BaseException:
            if not self.conn.broken:
                self.conn.execute("ROLLBACK")
            raise
        cur.nextset()
        cur.nextset()  # past BEGIN and SET: the call's rows
        row: Mapping[str, Any] | None = cur.fetchone()
        assert row is None or row["tag"] != "held", "this process's branch is held"
        return row

    def claim_any(self) -> Mapping[str, Any] | None:
        from agent_coord.engine.store.slots import PG_CLAIM_ANY

        now = time.time()
        return self._call(
            PG_CLAIM_ANY, (self.repo_id, self.paths, True, self.owner, self.branch, None, now, now + LEASE_S)
        )

    def claim_new(self) -> Mapping[str, Any] | None:
        from agent_coord.engine.store.slots import PG_CLAIM_NEW

        now = time.time()
        return self._call(
            PG_CLAIM_NEW,
            (
                self.repo_id,
                "/bench/pool/",
                self.pool_max,
                self.owner,
                self.branch,
                None,
                now,
                now + LEASE_S,
                *NO_EVENTS,
            ),
        )

    def transition(
        self, slot_id: str, expect: str, token: int, changes: dict[str, Any], action: str
    ) -> Mapping[str, Any] | None:
        from agent_coord.engine.store.rows import SLOT_COLUMN_ORDER
        from agent_coord.engine.store.slots import PG_TRANSITION

        now = time.time()
        values = {k: (v.value if isinstance(v, Enum) else v) for k, v in changes.items()}
        event = harness.event_values(self, action, slot_id, token, now)[1:]
        return self._call(
            PG_TRANSITION,
            (
                *(slot_id, [expect], token, None, False, list(values)),
                *(values.get(c) for c in SLOT_COLUMN_ORDER),
                now,
                *([v] for v in event),  # one event: one element per column's array
            ),
        )

    def close(self) -> None:
        self.conn.close()


def worker_main(args: argparse.Namespace) -> None:
    if args.impl == "raw":
        harness.serve_worker(
            lambda ready: harness.raw_cycles(RawPgFn(args.db, args.pool_max), args.duration, args.rate, ready())
        )
    elif args.impl == "raw-tx":
        harness.serve_worker(
            lambda ready: harness.raw_cycles(RawPg(args.db, args.pool_max), args.duration, args.rate, ready())
        )
    else:
        via = args.addr if args.impl == "store-writer" else None
        harness.serve_worker(
            lambda ready: asyncio.run(
                harness.store_worker(PostgresUrl(args.db), args.pool_max, args.duration, args.rate, ready, via=via)
            )
        )


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
def cluster_prefix(url: str | None, cluster_dir: Path | None = None) -> Iterator[str]:
    """A URL whose database name is the prefix for the runs' fresh databases."""
    if url:
        yield url
        return
    from bench.pg_cluster import running_cluster

    with running_cluster(cluster_dir) as cluster:
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


def run_once(impl: str, procs: int, duration: float, rate: float, where: str) -> dict[str, Any]:
    url = fresh_database(where)
    cmd = [sys.executable, "-m", "bench.store_cas_pg", "--worker", "--impl", impl, "--pool-max", str(procs)]
    cmd += ["--duration", str(duration), "--rate", str(rate)]
    env = {**os.environ, "AGENT_COORD_BENCH_DB": url}  # the URL holds a password: not on a command line
    writer = None
    if impl == "store-writer":
        # The design probe: one writer process with agent-coord's Store, every worker forwarding to it.
        run_dir = tempfile.mkdtemp(prefix="ac-writer-")
        address = os.path.join(run_dir, "writer.sock")
        writer = subprocess.Popen(
            [sys.executable, "-m", "bench.cas_store_writer", "-", address, str(procs)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        assert writer.stdout is not None and writer.stdout.readline().strip() == "listening"
        cmd += ["--addr", address]
    try:
        result = harness.launch(cmd, procs, duration, env)
    finally:
        if writer is not None:
            writer.wait(timeout=60)
    result.update(check_grants(read_events(url), result.pop("acked")))
    result["impl"], result["rate_per_proc"] = impl, rate
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--duration", type=float, default=None, help="seconds per full-speed run")
    parser.add_argument("--procs", default="1,4,16", help="process counts for the full-speed runs")
    parser.add_argument("--url", default=None, help="a PostgreSQL URL whose database name prefixes the runs'")
    parser.add_argument(
        "--cluster-dir",
        type=Path,
        default=None,
        help="where the throwaway cluster lives (default: the temporary directory, on disk); /dev/shm takes "
        "the disk's fsync out of the figures",
    )
    parser.add_argument(
        "--synchronous-commit",
        choices=["on", "off"],
        default="on",
        help="the databases' synchronous_commit (off: a commit does not wait for its WAL flush)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["store", "raw", "raw-tx", "store-writer"], help=argparse.SUPPRESS)
    parser.add_argument("--addr", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--store-writer",
        action="store_true",
        help="also run the design probe: one writer process per host with agent-coord's Store, workers forwarding",
    )
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
    impls = ["store", "raw", "raw-tx", *(["store-writer"] if args.store_writer else [])]
    info = machine()
    print(machine_line(info), flush=True)
    with cluster_prefix(args.url, args.cluster_dir) as prefix:
        runs = harness.run_matrix(partial(run_once, where=prefix), impls, counts, reps, duration, paced_duration)
    summaries = harness.summarize(runs, impls, counts)
    print()
    harness.print_summary(summaries, impls, [("double grants", "double_grants"), ("lost acked", "lost_acknowledged")])
    paced = next(s for s in summaries if s["mode"] == "paced")
    paced_label = f"paced {harness.PACED_PROCS}x{harness.PACED_RATE:.0f}/s: op p99 <= 10 ms"
    verdicts = {
        f"{paced_label} (median)": paced["store"]["op_p99"] <= 10.0,
        f"{paced_label} in every repetition": harness.every_rep(paced, "store", lambda p99, _: p99 <= 10.0),
        "full speed, every count: throughput >= 0.3x raw psycopg in every repetition": all(
            harness.every_rep(s, "store", lambda _, ratio: ratio >= 0.3) for s in summaries if s["mode"] == "full"
        ),
        "0 double grants, 0 lost acknowledged cycles": all(
            r["double_grants"] == 0 and r["lost_acknowledged"] == 0 for r in runs
        ),
    }
    if "store-writer" in impls:
        verdicts["probe, the Store as the host's writer: paced op p99 <= 10 ms in every repetition"] = (
            harness.every_rep(paced, "store-writer", lambda p99, _: p99 <= 10.0)
        )
    print()
    print_verdicts(verdicts)
    path = write_results(
        "store_cas_pg",
        {
            "machine": info,
            "reps": reps,
            "settings": SETTINGS,
            "cluster_dir": str(args.cluster_dir or "tmp"),
            "runs": runs,
            "summary": summaries,
            "verdicts": verdicts,
        },
    )
    print(f"\nresults: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
