"""What alerts and advice cost: a lease renewal with the lease-gap rollup trigger (schema 5) beside the
same renewal on a database whose trigger was dropped, interleaved; and one alert evaluation (what the
validating server does at every check) and one `advise` over a month-old store, beside the metrics
alone on the same store.

The month is built through the store's own API (`Store.append_history`, `Store.renewal_history`):
two slots held around the clock and re-granted every hour, two agent sessions a day renewing every
60 s for an hour.

    python -m bench.alerts            # 2,000 renewals a side, 50 evaluations
    python -m bench.alerts --quick    # 200 renewals, 10 evaluations
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.observe.advise import Current, advice_from_store
from agent_coord.engine.observe.alerts import AlertPolicy, AlertWatch
from agent_coord.engine.observe.metrics import MetricsReport, history_start, report_from_totals
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, Agent

DAY = 86400.0
MONTH = 30 * DAY
SERVER_PID = 4_000_001


def agent(agent_id: str, t: float) -> Agent:
    return Agent(agent_id, "h", "b", 4_000_000, 1.0, SERVER_PID, 1.0, 1, "active", None, t, t, t + 300.0)


async def month(store: Store, now: float) -> None:
    start = now - MONTH + 60
    entries: list[tuple[float, EventDraft]] = []
    for hour in range(int(MONTH // 3600) - 1):
        for slot in ("wt-01", "wt-02"):
            detail = {"strategy": "optimistic", "attempts": 1, "contention": {"level": 1}}
            draft = EventDraft(
                Action.ALLOCATE,
                "ok",
                agent_id=f"a{hour // 24}",
                repo_id=1,
                worktree_id=slot,
                branch="b",
                duration_ms=50.0,
                detail=detail,
            )
            entries.append((start + hour * 3600, draft))
    await store.append_history(entries)
    for day in range(29):
        for k in range(2):
            t0 = start + day * DAY + k * 600
            await store.register_agent(agent(f"s{day}-{k}", t0))
            await store.renewal_history(f"s{day}-{k}", SERVER_PID, [t0 + 60 * (i + 1) for i in range(60)], 300.0)


async def renewals(dbs: tuple[Path, Path], n: int) -> tuple[list[float], list[float]]:
    stores = [await Store.open(db) for db in dbs]
    now = time.time()
    for store in stores:
        await store.register_agent(agent("live", now))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(n):
        for side, store in enumerate(stores):
            t = time.perf_counter()
            await store.heartbeat("live", status="active", note=None, lease_s=300.0, server_pid=SERVER_PID)
            times[side].append((time.perf_counter() - t) * 1e6)
    for store in stores:
        await store.close()
    return times


async def evaluations(db: Path, n: int) -> tuple[list[float], list[float], list[float]]:
    store = await Store.open(db)
    now = time.time()
    await month(store, now)

    async def metrics(at: float) -> MetricsReport:
        totals = await store.metric_totals(now=at, window_s=7 * DAY, holds_since=history_start(at, 7 * DAY))
        return report_from_totals(totals, now=at, window_s=7 * DAY, slot_count=4)

    policy = AlertPolicy(cooldown_s=900.0, pool_full_s=300.0, pool_max=8, command=(), timeout_s=10.0)
    watch = AlertWatch(store, GitDriver(), policy, metrics)
    current = Current(8, 300.0, 10.0, 60.0, 3)
    only_metrics: list[float] = []
    evaluate: list[float] = []
    advise: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        await metrics(time.time())
        only_metrics.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        await watch.evaluate()
        evaluate.append((time.perf_counter() - t) * 1000)
    for _ in range(max(3, n // 10)):
        t = time.perf_counter()
        at = time.time()
        totals = await store.metric_totals(now=at, window_s=MONTH, holds_since=history_start(at, MONTH))
        report = report_from_totals(totals, now=at, window_s=MONTH, slot_count=4)
        await advice_from_store(store, current, report, slot_count=4, now=at)
        advise.append((time.perf_counter() - t) * 1000)
    await store.close()
    return only_metrics, evaluate, advise


async def main(quick: bool) -> None:
    n_renew, n_eval = (200, 10) if quick else (2000, 50)
    with tempfile.TemporaryDirectory() as tmp:
        with_trigger, without = Path(tmp) / "with.db", Path(tmp) / "without.db"
        for db in (with_trigger, without):
            await (await Store.open(db)).close()
        with sqlite3.connect(without) as raw:
            raw.execute("DROP TRIGGER agents_lease_gap")
        on, off = await renewals((with_trigger, without), n_renew)
        only_metrics, evaluate, advise = await evaluations(Path(tmp) / "month.db", n_eval)
    med = statistics.median
    print(f"lease renewal (Store.heartbeat), {n_renew} a side, interleaved: median")
    print(f"  with the lease-gap rollup trigger   {med(on):8.0f} us")
    print(f"  trigger dropped (baseline)          {med(off):8.0f} us")
    print(f"month-old store, {n_eval} runs: median")
    print(f"  metrics alone (7-day window)        {med(only_metrics):8.2f} ms")
    print(f"  alert evaluation (metrics included) {med(evaluate):8.2f} ms")
    print(f"  advise over 30 days                 {med(advise):8.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
