"""End-to-end `allocate_worktree` through real stdio MCP clients, beside raw git on the same repository.

For each agent count N (default 1, 4, 16): N real servers (`python -m agent_coord.server`, one per agent, each
driven by the official `mcp.Client` over stdio, legacy mode) share one database and one generated
repository of ~5,000 files and 300 commits. Phases, all agents at once:
  cold  allocate a new branch with an empty pool (`git worktree add`), then release with remove=true
  warm  allocate a new branch from a FREE slot (`git switch -c`), then release (kept warm)
Beside them, in the same run and interleaved with them, the raw git floor at the same concurrency N:
`git worktree add -b <b> <path> <HEAD>` and `git switch -c <b> <HEAD>` in a detached worktree.
Times are client wall clock from the request to the response.

Jitter: at 3 or more live agents the pool is pessimistic and waits a random 0-500 ms before its
first attempt, by design. That wait is policy, not cost, so it is off by default here
(AGENT_COORD_JITTER_MAX_MS=0); `--jitter` keeps the default and the table shows both.

    python -m bench.e2e_allocate           # 1, 4, 16 agents, ~2 min (first run also generates the repo, ~5 s)
    python -m bench.e2e_allocate --quick   # 1 and 4 agents, fewer rounds, ~20 s
    python -m bench.e2e_allocate --against /path/to/a/checkout   # its servers too, interleaved: before/after
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio

from bench._common import (
    ROOT,
    default_base,
    git_env,
    machine,
    machine_line,
    print_verdicts,
    summary,
    table,
    write_results,
)
from bench._repo import fresh_clone
from bench.pg_cluster import running_cluster

FILES = 5000
COMMITS = 300


SERVER_MODULE = "agent_coord.server"


def server_env(db: Path | str, repo: Path, pool: Path, agent_id: str, pool_max: int, jitter: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env.update(
        {
            "AGENT_COORD_DB": str(db),
            "AGENT_COORD_REPO": str(repo),
            "AGENT_COORD_POOL_ROOT": str(pool),
            "AGENT_COORD_MANICTIME_DB": "",
            "AGENT_COORD_AGENT_ID": agent_id,
            "AGENT_COORD_POOL_MAX": str(pool_max),
        }
    )
    if not jitter:
        env["AGENT_COORD_JITTER_MAX_MS"] = "0"
    return env


class Phases:
    """Agents run phase k when the driver opens gate k, and report back; the driver runs the raw git
    baselines between phases, while the agents are idle."""

    def __init__(self, n: int, count: int) -> None:
        self.n = n
        self.gates = [anyio.Event() for _ in range(count)]
        self.done = [anyio.Event() for _ in range(count + 1)]  # done[0]: all connected
        self.arrived = [0] * (count + 1)

    def arrive(self, k: int) -> None:
        self.arrived[k] += 1
        if self.arrived[k] == self.n:
            self.done[k].set()


Script = Callable[[Any, int], Awaitable[list[dict[str, Any]]]]


async def run_agents(
    n: int,
    envs: list[dict[str, str]],
    scripts: list[Script],
    between: list[Callable[[], None]],
    module: str = SERVER_MODULE,
    tree: Path = ROOT,
) -> list[list[dict[str, Any]]]:
    """Start n stdio servers; run scripts[k] on all of them at once, calling between[k]() before each."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    phases = Phases(n, len(scripts))
    results: list[list[dict[str, Any]]] = [[] for _ in scripts]

    async def agent(i: int) -> None:
        params = StdioServerParameters(command=sys.executable, args=["-m", module], env=envs[i], cwd=str(tree))
        log = Path(envs[i]["AGENT_COORD_POOL_ROOT"]).parent / "state" / f"server-{i}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as errlog:
            await _agent_session(Client(stdio_client(params, errlog=errlog), mode="legacy"), i)

    async def _agent_session(client_cm: Any, i: int) -> None:
        async with client_cm as client:
            phases.arrive(0)
            for k, script in enumerate(scripts):
                await phases.gates[k].wait()
                results[k].extend(await script(client, i))
                phases.arrive(k + 1)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(agent, i)
        await phases.done[0].wait()
        for k in range(len(scripts)):
            await anyio.to_thread.run_sync(between[k])
            phases.gates[k].set()
            await phases.done[k + 1].wait()
    return results


def _code(result: Any) -> str:
    if not result.is_error:
        return "ok"
    return str(result.content[0].text).split(":", 1)[0]


def make_script(kind: str, rounds: int) -> Script:
    async def script(client: Any, i: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in range(rounds):
            branch = f"{kind}-{i}-{r}-{time.monotonic_ns() % 10**6}"
            t0 = time.perf_counter()
            res = await client.call_tool("allocate_worktree", {"branch": branch})
            wall = (time.perf_counter() - t0) * 1000
            code = _code(res)
            row: dict[str, Any] = {"kind": kind, "agent": i, "round": r, "wall_ms": wall, "code": code}
            if code != "ok":
                row["error"] = res.content[0].text[:300]
                out.append(row)
                continue
            sc = res.structured_content
            row.update(
                {
                    "server_ms": sc["latency_ms"],
                    "jitter_ms": sc.get("jitter_ms", 0.0),
                    "reused": sc["reused"],
                    "attempts": sc["attempts"],
                    "strategy": sc["strategy"],
                }
            )
            t1 = time.perf_counter()
            rel = await client.call_tool(
                "release_worktree", {"worktree_id": sc["worktree_id"], "remove": kind in ("cold", "warmup-cold")}
            )
            row["release_ms"] = (time.perf_counter() - t1) * 1000
            row["release_code"] = _code(rel)
            out.append(row)
        return out

    return script


# ---- raw git at the same concurrency -----------------------------------------------------------


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, env=git_env())


def raw_cold(repo: Path, root: Path, n: int, rounds: int, head: str, tag: str) -> list[float]:
    def one(j: int) -> list[float]:
        times = []
        for r in range(rounds):
            path = root / f"{tag}-c{j}-{r}"
            t0 = time.perf_counter()
            _git(repo, "worktree", "add", "--quiet", "-b", f"raw-{tag}-c{j}-{r}", "--", str(path), head)
            times.append((time.perf_counter() - t0) * 1000)
            _git(repo, "worktree", "remove", "--force", "--", str(path))
        return times

    with ThreadPoolExecutor(n) as ex:
        return [t for ts in ex.map(one, range(n)) for t in ts]


def raw_warm(repo: Path, root: Path, n: int, rounds: int, head: str, tag: str) -> list[float]:
    paths = [root / f"{tag}-w{j}" for j in range(n)]
    for p in paths:
        _git(repo, "worktree", "add", "--quiet", "--detach", "--", str(p), head)
    # Like a warm slot, which has been through a release (and a status) since it was made: index entries
    # written in the same second as their files are "racily clean" and would make the first switch
    # re-read all 5,000 files. Let a second pass and refresh the index once, untimed.
    time.sleep(1.1)
    for p in paths:
        _git(p, "status", "--porcelain")

    def one(j: int) -> list[float]:
        times = []
        for r in range(rounds):
            t0 = time.perf_counter()
            _git(paths[j], "switch", "--quiet", "--no-guess", "-c", f"raw-{tag}-w{j}-{r}", head)
            times.append((time.perf_counter() - t0) * 1000)
            _git(paths[j], "switch", "--quiet", "--detach")
        return times

    with ThreadPoolExecutor(n) as ex:
        result = [t for ts in ex.map(one, range(n)) for t in ts]
    for p in paths:
        _git(repo, "worktree", "remove", "--force", "--", str(p))
    return result


# ---- one agent count ----------------------------------------------------------------------------


def bench_n(
    n: int,
    repo: Path,
    tmp: Path,
    cold_rounds: int,
    warm_rounds: int,
    jitter: bool,
    module: str = SERVER_MODULE,
    store_url: str | None = None,
    tree: Path = ROOT,
) -> dict[str, Any]:
    """`tree`: the source tree the servers import agent_coord from (`python -m` puts its cwd first)."""
    label = "" if tree == ROOT else f"-{tree.name}"
    base = tmp / f"n{n}-{module}{label}{'-pg' if store_url else ''}"
    base.mkdir()
    db: Path | str = store_url or base / "state" / "coord.db"
    pool = base / "pool"
    raw_root = base / "raw"
    raw_root.mkdir()
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    envs = [server_env(db, repo, pool, f"bench-{n}-{i}", max(n, 1), jitter) for i in range(n)]
    tag = ("p" if module != SERVER_MODULE else "") + ("g" if store_url else "") + ("t" if label else "")
    raw: dict[str, list[float]] = {"cold": [], "warm": []}

    def baseline(kind: str, label: str) -> Callable[[], None]:
        def run() -> None:
            fn = raw_cold if kind == "cold" else raw_warm
            rounds = max(1, (cold_rounds if kind == "cold" else warm_rounds) // 2)
            raw[kind].extend(fn(repo, raw_root, n, rounds, head, f"{tag}{label}{n}"))

        return run

    # Each raw baseline runs half just before the agents' phase and half just after it, so drifting
    # background load weighs on both sides alike.
    scripts = [make_script("cold", cold_rounds), make_script("warmup", 1), make_script("warm", warm_rounds)]
    between = [baseline("cold", "a"), baseline("cold", "b"), baseline("warm", "a")]
    tail = [baseline("warm", "b")]
    started = time.monotonic()
    results = anyio.run(run_agents, n, envs, scripts, between, module, tree)
    for fn in tail:
        fn()
    rows = [r for phase in results for r in phase]
    cold = [r for r in rows if r["kind"] == "cold"]
    warm = [r for r in rows if r["kind"] == "warm"]

    def ok(rs: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in rs if r["code"] == "ok"]

    def work(rs: list[dict[str, Any]]) -> list[float]:
        return [float(r["wall_ms"]) - float(r.get("jitter_ms") or 0.0) for r in rs if r["code"] == "ok"]

    attempts: dict[str, int] = {}
    for r in warm:
        if r["code"] == "ok":
            attempts[str(r["attempts"])] = attempts.get(str(r["attempts"]), 0) + 1
    out = {
        "agents": n,
        "server": module,
        "tree": str(tree),
        "store": "postgresql" if store_url else "sqlite",
        "attempts": attempts,
        "seconds": round(time.monotonic() - started, 1),
        "cold": {
            "wall": summary(ok(cold, "wall_ms")),
            "wall_minus_jitter": summary(work(cold)),
            "server": summary(ok(cold, "server_ms")),
            "release": summary(ok(cold, "release_ms")),
            "reused": sum(1 for r in cold if r.get("reused")),
            "errors": [r.get("error") for r in cold if r["code"] != "ok"],
        },
        "warm": {
            "wall": summary(ok(warm, "wall_ms")),
            "wall_minus_jitter": summary(work(warm)),
            "server": summary(ok(warm, "server_ms")),
            "release": summary(ok(warm, "release_ms")),
            "not_reused": sum(1 for r in warm if r["code"] == "ok" and not r.get("reused")),
            "errors": [r.get("error") for r in warm if r["code"] != "ok"],
        },
        "raw_cold": summary(raw["cold"]),
        "raw_warm": summary(raw["warm"]),
        "strategies": sorted({str(r.get("strategy")) for r in rows if r["code"] == "ok"}),
        "max_attempts": max((int(r.get("attempts") or 0) for r in rows), default=0),
        "rows": rows,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 4 agents, fewer rounds (~20 s)")
    parser.add_argument("--base-dir", default=None, help=f"where repositories and pools go (default {default_base()})")
    parser.add_argument("--agents", default=None, help="comma-separated agent counts (default 1,4,16)")
    parser.add_argument("--cold-rounds", type=int, default=None)
    parser.add_argument("--warm-rounds", type=int, default=None)
    parser.add_argument("--jitter", action="store_true", help="keep the pessimistic jitter (0-500 ms) on")
    parser.add_argument(
        "--prototype",
        default=None,
        metavar="MODULE",
        help="also run another server module (python -m MODULE, e.g. a prototype of a change) beside the real "
        "one, interleaved, for a before/after in one run",
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="DIR",
        help="also run the servers of another source tree (e.g. a checkout of the base commit) beside this "
        "one's, interleaved, for a before/after in one run",
    )
    parser.add_argument(
        "--postgresql",
        action="store_true",
        help="also run the servers on a PostgreSQL store (a throwaway local cluster, a fresh database per "
        "agent count) beside the SQLite one, interleaved",
    )
    args = parser.parse_args()
    counts = [int(x) for x in (args.agents or ("1,4" if args.quick else "1,4,16")).split(",")]
    cold_rounds = args.cold_rounds or (2 if args.quick else 4)
    warm_rounds = args.warm_rounds or (4 if args.quick else 10)
    info = machine()
    print(machine_line(info), flush=True)
    per_n: list[dict[str, Any]] = []
    base_dir = args.base_dir or default_base()
    print(f"base directory: {base_dir}", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="agent-coord-bench-e2e-", dir=base_dir) as tmp_name,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmp_name)
        repo = fresh_clone(FILES, COMMITS, tmp / "repo")
        cluster = stack.enter_context(running_cluster()) if args.postgresql else None
        modules = [SERVER_MODULE, args.prototype] if args.prototype else [SERVER_MODULE]
        variants: list[tuple[str, str | None, Path]] = [(m, None, ROOT) for m in modules]
        if args.against:
            variants.append((SERVER_MODULE, None, Path(args.against).resolve()))
        if cluster is not None:
            variants.append((SERVER_MODULE, "postgresql", ROOT))
            if args.against:  # the other tree on PostgreSQL too: a before/after of the PostgreSQL store
                variants.append((SERVER_MODULE, "postgresql", Path(args.against).resolve()))
        runs = [(n, v) for n in counts for v in (variants if n % 2 == 0 else list(reversed(variants)))]
        for i, (n, (module, engine, tree)) in enumerate(runs):
            url = cluster.create_database(f"e2e_{n}_{i}") if cluster is not None and engine else None
            r = bench_n(n, repo, tmp, cold_rounds, warm_rounds, args.jitter, module, url, tree)
            per_n.append(r)
            errors = len(r["cold"]["errors"]) + len(r["warm"]["errors"])
            print(
                f"  {n:2} agents, {module} of {tree.name} on {r['store']} ({r['seconds']} s): "
                f"warm p50 {r['warm']['wall']['p50']:.1f} ms "
                f"(raw switch {r['raw_warm']['p50']:.1f}), cold p50 {r['cold']['wall']['p50']:.1f} ms "
                f"(raw worktree add {r['raw_cold']['p50']:.1f}), errors {errors}",
                flush=True,
            )
    rows = []
    verdicts: dict[str, bool] = {}
    for r in sorted(per_n, key=lambda x: (x["agents"], x["server"], x["store"], x["tree"])):
        n = r["agents"]
        name = "agent-coord" if r["server"] == SERVER_MODULE else r["server"].removeprefix("bench.")
        if Path(r["tree"]) != ROOT:
            name += f" ({Path(r['tree']).name})"
        if r["store"] == "postgresql":
            name += " (PostgreSQL)"
        for kind, raw_key, budget in (("warm", "raw_warm", 25.0), ("cold", "raw_cold", 25.0)):
            a, b = r[kind]["wall"], r[raw_key]
            delta = a["p50"] - b["p50"]
            rows.append(
                [
                    n,
                    name,
                    kind,
                    a["n"],
                    a["p50"],
                    a["p99"],
                    a["max"],
                    r[kind]["wall_minus_jitter"]["p99"],
                    r[kind]["server"]["p50"],
                    b["p50"],
                    b["p99"],
                    delta,
                    r[kind]["release"]["p50"],
                    len(r[kind]["errors"]),
                    " ".join(f"{k}:{v}" for k, v in sorted(r["attempts"].items())) if kind == "warm" else "",
                ]
            )
            verdicts[f"{name}, {n} agents {kind}: p50 <= raw + {budget:.0f} ms"] = delta <= budget
        if n >= 16:
            verdicts[f"{name}, {n} agents: p99 <= 250 ms (warm)"] = r["warm"]["wall"]["p99"] <= 250
            verdicts[f"{name}, {n} agents: p99 <= 250 ms (cold)"] = r["cold"]["wall"]["p99"] <= 250
    print()
    print(
        table(
            [
                "agents",
                "server",
                "kind",
                "n",
                "p50 ms",
                "p99 ms",
                "max ms",
                "p99 - jitter",
                "server p50",
                "raw p50",
                "raw p99",
                "p50 - raw",
                "release p50",
                "errors",
                "warm attempts:count",
            ],
            rows,
        )
    )
    print()
    print_verdicts(verdicts)
    path = write_results(
        "e2e_allocate",
        {
            "machine": info,
            "files": FILES,
            "commits": COMMITS,
            "jitter": args.jitter,
            "base_dir": base_dir,
            "cold_rounds": cold_rounds,
            "warm_rounds": warm_rounds,
            "per_agents": per_n,
            "verdicts": verdicts,
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
