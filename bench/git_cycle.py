"""A warm allocate+release against raw git doing the same by hand: CPU per cycle and 16-process
throughput, in one run, on a generated repository of ~5,000 files (bench/_repo.py).

agent-coord: the engine in process (`Coordinator.open`, `pool.allocate` then `pool.release`, a new
branch each cycle, a warm slot each time), as each agent's server runs it, without the MCP transport.
Raw git by hand, in a worktree of the same repository, for the same cycle:

    git switch -c <branch> <start>     # allocate: a new branch where it starts
    git status --porcelain             # release: is anything left uncommitted?
    git switch --detach                # release: give the checkout back

(`raw, no start`: the same with `git switch -c <branch>`, the cheaper switch agent-coord itself runs
when the slot already sits at the start commit, as here.)

1. CPU per cycle, one process: agent-coord's own CPU (Python and every child: git, find) per cycle
   against the raw commands' git CPU (children only: the loop's own Python is not counted), blocks
   of cycles interleaved so drifting background load weighs on both alike.
2. Throughput with 16 processes at once: 16 engine processes (16 agents, one database, a pool of 16
   slots) against 16 raw loops (one worktree each), cycles per second over the same duration (from
   `go` to the end of the last worker's last cycle; the processes' exits are not counted), raw and
   agent-coord phases interleaved (raw, agent-coord, raw, agent-coord).

    python -m bench.git_cycle            # ~2 min
    python -m bench.git_cycle --quick    # ~40 s
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
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

FILES = 5000
COMMITS = 300
CPU_TARGET = 1.5  # agent-coord's CPU per warm cycle at most this many times raw git's
THROUGHPUT_TARGET = 0.6  # 16 agents reach at least this share of 16 raw loops' cycles per second
SEAL_AGE_S = 1.2  # a slot's files older than the seal's margin (1 s), as any slot a while after its making


def cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def engine_env(base: Path, repo: Path, agent_id: str, pool_max: int) -> dict[str, str]:
    env = {k: v for k, v in git_env().items() if not k.startswith("AGENT_COORD_")}
    env.update(
        {
            "AGENT_COORD_DB": str(base / "state" / "coord.db"),
            "AGENT_COORD_REPO": str(repo),
            "AGENT_COORD_POOL_ROOT": str(base / "pool"),
            "AGENT_COORD_MANICTIME_DB": "",
            "AGENT_COORD_AGENT_ID": agent_id,
            "AGENT_COORD_POOL_MAX": str(pool_max),
            "AGENT_COORD_JITTER_MAX_MS": "0",  # the pessimistic jitter is policy, not cost
        }
    )
    return env


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, env=git_env())


def raw_cycle(wt: Path, branch: str, start: str | None) -> None:
    _git(wt, "switch", "--quiet", "--no-guess", "-c", branch, *([start] if start else []))
    _git(wt, "status", "--porcelain")
    _git(wt, "switch", "--quiet", "--detach")


def head_of(repo: Path) -> str:
    out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def raw_worktrees(repo: Path, root: Path, n: int, head: str) -> list[Path]:
    paths = [root / f"raw-{j}" for j in range(n)]
    for p in paths:
        _git(repo, "worktree", "add", "--quiet", "--detach", "--", str(p), head)
    time.sleep(SEAL_AGE_S)  # as old as the engine's slots: no racily clean index entries on either side
    for p in paths:
        _git(p, "status", "--porcelain")
    return paths


# ---- 1. CPU per cycle, one process ----------------------------------------------------------------


async def _engine_block(coord: Any, tag: str, cycles: int, children: list[float]) -> list[float]:
    """CPU per cycle, Python and children; the children's share (git, find) is appended to `children`."""
    per: list[float] = []
    for i in range(cycles):
        own, kids = cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN)
        got = await coord.pool.allocate(f"{tag}-{i}")
        await coord.pool.release(worktree_id=got.worktree_id)
        kids = cpu_s(resource.RUSAGE_CHILDREN) - kids
        per.append((cpu_s(resource.RUSAGE_SELF) - own + kids) * 1000)
        children.append(kids * 1000)
    return per


def _raw_block(wt: Path, tag: str, cycles: int, start: str | None) -> list[float]:
    per: list[float] = []
    for i in range(cycles):
        before = cpu_s(resource.RUSAGE_CHILDREN)
        raw_cycle(wt, f"{tag}-{i}", start)
        per.append((cpu_s(resource.RUSAGE_CHILDREN) - before) * 1000)
    return per


def cpu_per_cycle(base: Path, repo: Path, blocks: int, cycles: int) -> dict[str, Any]:
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.git.driver import GitDriver

    head = head_of(repo)
    (wt,) = raw_worktrees(repo, base / "raw", 1, head)
    os.environ.update(engine_env(base, repo, "cpu-agent", 2))
    processes: list[str] = []
    real_run = GitDriver.run

    async def counted(self: GitDriver, cwd: Any, *args: str, **kw: Any) -> str:
        processes.append(args[0] if args else "")
        return await real_run(self, cwd, *args, **kw)

    async def go() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"agent-coord": [], "raw": [], "raw, no start": []}
        children: list[float] = []
        async with Coordinator.open(Settings(), register=True) as coord:
            warm = await coord.pool.allocate("cpu-warm-up")
            await anyio.sleep(SEAL_AGE_S)
            await coord.pool.release(worktree_id=warm.worktree_id)
            # The first cycle after a slot is made finds its index racily clean and runs the status that
            # writes it back (git/seal.py); the cycle counted is a later, ordinary one.
            await _engine_block(coord, "cpu-settle", 2, [])
            GitDriver.run = counted  # type: ignore[method-assign]
            try:
                await _engine_block(coord, "cpu-count", 1, [])
            finally:
                GitDriver.run = real_run  # type: ignore[method-assign]
            for b in range(blocks):
                out["raw"] += await anyio.to_thread.run_sync(_raw_block, wt, f"raw-cpu-{b}", cycles, head)
                out["agent-coord"] += await _engine_block(coord, f"cpu-{b}", cycles, children)
                out["raw, no start"] += await anyio.to_thread.run_sync(_raw_block, wt, f"raw-lean-{b}", cycles, None)
        out["agent-coord: git and find"] = children
        return out

    per = anyio.run(go)
    return {"per_cycle_ms": per, "git_processes": processes}


# ---- 2. throughput, 16 processes --------------------------------------------------------------------


def worker(kind: str, arg: str, seconds: float) -> None:
    """One process of the throughput phase: ready, wait for `go` on stdin, cycle for `seconds`, report."""
    if kind == "engine":
        anyio.run(_engine_worker, arg, seconds)
    else:
        wt = Path(arg)
        start = head_of(wt)
        print("ready", flush=True)
        sys.stdin.readline()
        cpu0 = cpu_s(resource.RUSAGE_SELF) + cpu_s(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        end = began + seconds
        n = 0
        while time.monotonic() < end:
            raw_cycle(wt, f"{wt.name}-{os.getpid()}-{n}", start)
            n += 1
        elapsed = time.monotonic() - began
        cpu = cpu_s(resource.RUSAGE_SELF) + cpu_s(resource.RUSAGE_CHILDREN) - cpu0
        print(json.dumps({"cycles": n, "errors": 0, "cpu_s": cpu, "elapsed_s": elapsed}), flush=True)


async def _engine_worker(agent_id: str, seconds: float) -> None:
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.errors import CoordError

    async with Coordinator.open(Settings(), register=True, agent_id=agent_id) as coord:
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        cpu0 = cpu_s(resource.RUSAGE_SELF) + cpu_s(resource.RUSAGE_CHILDREN)
        began = time.monotonic()
        end = began + seconds
        n = errors = 0
        allocate_ms: list[float] = []
        release_ms: list[float] = []
        attempts: list[int] = []
        while time.monotonic() < end:
            try:
                t0 = time.perf_counter()
                got = await coord.pool.allocate(f"{agent_id}-{os.getpid()}-{n}")
                t1 = time.perf_counter()
                await coord.pool.release(worktree_id=got.worktree_id)
                allocate_ms.append((t1 - t0) * 1000)
                release_ms.append((time.perf_counter() - t1) * 1000)
                attempts.append(got.attempts)
                n += 1
            except CoordError:
                errors += 1
        elapsed = time.monotonic() - began
        cpu = cpu_s(resource.RUSAGE_SELF) + cpu_s(resource.RUSAGE_CHILDREN) - cpu0
        report: dict[str, Any] = {"cycles": n, "errors": errors, "cpu_s": cpu, "elapsed_s": elapsed}
        report |= {"allocate_ms": allocate_ms, "release_ms": release_ms}
        print(json.dumps({**report, "attempts": attempts}), flush=True)


def _phase(commands: list[tuple[list[str], dict[str, str]]]) -> dict[str, Any]:
    procs = [
        subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for cmd, env in commands
    ]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"a worker did not start: {line!r}")
    started = time.monotonic()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]))
    # From `go` to the end of the last cycle of the last worker: the processes' exits (an engine's
    # close is slower than a raw loop's) are no part of the rate.
    wall = max(r["elapsed_s"] for r in results)
    teardown = time.monotonic() - started - wall
    cycles = sum(r["cycles"] for r in results)
    return {
        "cycles": cycles,
        "allocate_ms": summary([t for r in results for t in r.get("allocate_ms", [])]),
        "release_ms": summary([t for r in results for t in r.get("release_ms", [])]),
        "attempts": sorted({a for r in results for a in r.get("attempts", [])}),
        "errors": sum(r["errors"] for r in results),
        "wall_s": wall,
        "exit_s": teardown,
        "cpu_s": sum(r["cpu_s"] for r in results),
        "per_worker": [r["cycles"] for r in results],
    }


def throughput(base: Path, repo: Path, n: int, seconds: float) -> dict[str, list[dict[str, Any]]]:
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator

    head = head_of(repo)
    raw_paths = raw_worktrees(repo, base / "raw16", n, head)
    os.environ.update(engine_env(base, repo, "setup", n))

    async def make_slots() -> None:
        async with Coordinator.open(Settings(), register=True) as coord:
            got = [await coord.pool.allocate(f"tp-setup-{i}") for i in range(n)]
            await anyio.sleep(SEAL_AGE_S)
            for g in got:
                await coord.pool.release(worktree_id=g.worktree_id)

    anyio.run(make_slots)
    me = [sys.executable, "-m", "bench.git_cycle", "--worker"]
    engine = [([*me, "engine", f"tp-{i}", str(seconds)], engine_env(base, repo, f"tp-{i}", n)) for i in range(n)]
    raw = [([*me, "raw", str(p), str(seconds)], git_env()) for p in raw_paths]
    out: dict[str, list[dict[str, Any]]] = {"agent-coord": [], "raw": []}
    for name, commands in (("raw", raw), ("agent-coord", engine), ("raw", raw), ("agent-coord", engine)):
        result = _phase(commands)
        out[name].append(result)
        timing = ""
        if name == "agent-coord":
            a, r = result["allocate_ms"], result["release_ms"]
            timing = f" (allocate p50 {a['p50']:.0f} ms, p99 {a['p99']:.0f}"
            timing += f"; release p50 {r['p50']:.0f} ms, p99 {r['p99']:.0f})"
        print(
            f"  {n} x {name}: {result['cycles']} cycles in {result['wall_s']:.1f} s (exits {result['exit_s']:.1f} s), "
            f"errors {result['errors']}{timing}",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cycles, shorter phases (~40 s)")
    parser.add_argument("--base-dir", default=None, help=f"where repositories and pools go (default {default_base()})")
    parser.add_argument("--agents", type=int, default=16, help="processes in the throughput phase (default 16)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each throughput phase")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "ARG", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, arg, seconds = args.worker
        worker(kind, arg, float(seconds))
        return
    blocks, cycles = (3, 5) if args.quick else (5, 10)
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    info = machine()
    print(machine_line(info), flush=True)
    base_dir = args.base_dir or default_base()
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-cycle-", dir=base_dir) as tmp_name:
        tmp = Path(tmp_name)
        repo = fresh_clone(FILES, COMMITS, tmp / "repo")
        (tmp / "one").mkdir()
        cpu = cpu_per_cycle(tmp / "one", repo, blocks, cycles)
        (tmp / "many").mkdir()
        tp = throughput(tmp / "many", repo, args.agents, seconds)
    per = cpu["per_cycle_ms"]
    med = {k: sorted(v)[len(v) // 2] for k, v in per.items()}
    rows = [[k, len(v), med[k], sum(v) / len(v), med[k] / med["raw"]] for k, v in per.items()]
    print()
    print("git processes in one warm cycle: " + ", ".join(cpu["git_processes"]))
    print(table(["CPU per warm cycle", "n", "median ms", "mean ms", "x raw"], rows))
    rates = {
        k: sum(r["cycles"] for r in v) / sum(r["wall_s"] for r in v) for k, v in tp.items()
    }  # cycles per second over both phases of each
    cpu16 = {k: 1000 * sum(r["cpu_s"] for r in v) / max(1, sum(r["cycles"] for r in v)) for k, v in tp.items()}
    print()
    print(
        table(
            [f"{args.agents} processes", "cycles/s", "CPU ms per cycle", "errors", "x raw"],
            [[k, rates[k], cpu16[k], sum(r["errors"] for r in tp[k]), rates[k] / rates["raw"]] for k in tp],
        )
    )
    verdicts = {
        f"CPU per warm cycle <= {CPU_TARGET}x raw git (median)": med["agent-coord"] <= CPU_TARGET * med["raw"],
        f"{args.agents} agents' cycles/s >= {THROUGHPUT_TARGET}x {args.agents} raw loops": rates["agent-coord"]
        >= THROUGHPUT_TARGET * rates["raw"],
        "one git status per warm cycle": cpu["git_processes"].count("status") <= 1,
    }
    print()
    print_verdicts(verdicts)
    path = write_results(
        "git_cycle",
        {
            "machine": info,
            "files": FILES,
            "commits": COMMITS,
            "cpu": cpu,
            "cpu_median_ms": med,
            "throughput": tp,
            "cycles_per_s": rates,
            "cpu_ms_per_cycle_16": cpu16,
            "verdicts": verdicts,
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
