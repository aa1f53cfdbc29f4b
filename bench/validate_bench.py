"""`validate` over 100 slots, with and without drift (in-process Coordinator, a small repository).

Setup: 100 worktrees made by the pool itself (100 allocations, then 100 releases: 100 FREE slots).
Measured, repeated and the median taken:
  clean     validate(repair=False) with nothing to find
  drift     validate(repair=False) after drift is made: dirty and checked-out FREE slots, deleted slot
            directories, worktrees under the pool root the store does not know, leftover directories,
            BUSY slots of a dead agent
  repair    validate(repair=True) on that drift (once per repetition, the drift made again each time)
Beside it, in the same run and interleaved, the git floor validation cannot go below: `git worktree
list --porcelain` plus one `git status --porcelain` per slot, 8 at a time (the validator's concurrency).

    python -m bench.validate_bench           # ~1 min
    python -m bench.validate_bench --quick   # ~20 s
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio

from bench._common import default_base, git_env, machine, machine_line, median, print_verdicts, table, write_results

SLOTS = 100


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=git_env()
    ).stdout


def small_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    for i in range(20):
        (repo / f"file{i}.txt").write_text(f"content {i}\n")
    (repo / ".gitignore").write_text("build/\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "initial")
    return repo


def git_floor(repo: Path, paths: list[str]) -> float:
    """What validation cannot avoid: list the worktrees and ask git the status of each, 8 at a time."""
    t0 = time.perf_counter()
    _git(repo, "worktree", "list", "--porcelain", "-z")

    def status(p: str) -> None:
        if Path(p).is_dir():
            _git(Path(p), "status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignore-submodules=none")

    with ThreadPoolExecutor(8) as ex:
        list(ex.map(status, paths))
    return (time.perf_counter() - t0) * 1000


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def make_drift(coord: Any, repo: Path, pool: Path, db: Path, rep: int) -> dict[str, int]:
    """Drift of every common kind, on fresh slots each time."""
    from agent_coord.engine.store.records import SlotState

    made: dict[str, int] = {}
    # BUSY slots of an agent that died: allocated first (an allocation would clean a drifted FREE slot),
    # then the agent's recorded process is made a dead one.
    for k in range(10):
        await coord.pool.allocate(f"held-{rep}-{k}")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE agents SET pid = ? WHERE id = ?", (dead_pid(), coord.agent_id))
    made["dead_agent"] = 10
    slots = [s for s in await coord.store.slots() if s.state == SlotState.FREE]
    free = iter(slots)
    for _ in range(10):  # a FREE slot with an untracked file
        s = next(free)
        (Path(s.path) / f"stray-{rep}.txt").write_text("stray\n")
        made["dirty_free_slot"] = made.get("dirty_free_slot", 0) + 1
    for k in range(5):  # a FREE slot left on a branch
        s = next(free)
        _git(Path(s.path), "switch", "-q", "-c", f"drift-{rep}-{k}")
        made["free_not_detached"] = made.get("free_not_detached", 0) + 1
    for _ in range(5):  # a slot whose directory was deleted by hand
        s = next(free)
        shutil.rmtree(s.path)
        made["missing_worktree"] = made.get("missing_worktree", 0) + 1
    head = _git(repo, "rev-parse", "HEAD").strip()
    for k in range(5):  # a worktree under the pool root the store does not know
        _git(repo, "worktree", "add", "-q", "--detach", str(pool / f"foreign-{rep}-{k}"), head)
        made["untracked_worktree"] = made.get("untracked_worktree", 0) + 1
    for k in range(5):  # a directory under the pool root that is neither
        d = pool / f"leftover-{rep}-{k}"
        d.mkdir()
        (d / "junk.txt").write_text("junk\n")
        made["leftover_directory"] = made.get("leftover_directory", 0) + 1
    return made


async def restore_identity(coord: Any, db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE agents SET pid = ?, pid_create_time = ?, status = 'active' WHERE id = ?",
            (coord.identity.pid, coord.identity.pid_create_time, coord.agent_id),
        )


async def run(base: Path, reps: int) -> dict[str, Any]:
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.store.records import SlotState

    repo = small_repo(base)
    pool = base / "pool"
    db = base / "state" / "coord.db"
    settings = Settings(
        db=db,
        repo=repo,
        pool_root=pool,
        pool_max=SLOTS + 20,
        manictime_db=None,
        jitter_max_ms=0,
    )
    timings: dict[str, list[float]] = {"clean": [], "drift": [], "repair": [], "floor": [], "after_repair": []}
    findings: dict[str, Any] = {}
    async with Coordinator.open(settings, register=True, agent_id="bench-validate") as coord:
        t0 = time.perf_counter()
        held = [await coord.pool.allocate(f"setup-{i}") for i in range(SLOTS)]
        for h in held:
            await coord.pool.release(worktree_id=h.worktree_id)
        setup_s = time.perf_counter() - t0
        paths = [s.path for s in await coord.store.slots()]
        for rep in range(reps):
            # clean, interleaved with the git floor, the order alternating
            for first in ("floor", "clean") if rep % 2 else ("clean", "floor"):
                if first == "floor":
                    timings["floor"].append(await anyio.to_thread.run_sync(git_floor, repo, paths))
                else:
                    r = await coord.validate(repair=False)
                    assert not r.findings, [f.kind for f in r.findings]
                    timings["clean"].append(r.duration_ms)
            made = await make_drift(coord, repo, pool, db, rep)
            r = await coord.validate(repair=False)
            timings["drift"].append(r.duration_ms)
            findings.setdefault("made", made)
            findings.setdefault("dry_run", sorted(f.kind for f in r.findings))
            r = await coord.validate(repair=True)
            timings["repair"].append(r.duration_ms)
            findings.setdefault("repair", sorted(f"{f.kind}:{f.action}" for f in r.findings))
            await restore_identity(coord, db)
            r = await coord.validate(repair=True)
            timings["after_repair"].append(r.duration_ms)
            findings.setdefault("after_repair", sorted(f.kind for f in r.findings))
            # top the pool back up to 100 FREE slots for the next repetition
            have = [s for s in await coord.store.slots() if s.state == SlotState.FREE]
            extra = [await coord.pool.allocate(f"refill-{rep}-{i}") for i in range(SLOTS - len(have))]
            for h in extra:
                await coord.pool.release(worktree_id=h.worktree_id)
            paths = [s.path for s in await coord.store.slots()]
        slot_count = len(await coord.store.slots())
    return {"timings_ms": timings, "findings": findings, "setup_s": round(setup_s, 1), "slots_at_end": slot_count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one repetition (~20 s)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--base-dir", default=None, help=f"where the repository and pool go (default {default_base()})")
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 5)
    info = machine()
    print(machine_line(info), flush=True)
    base_dir = args.base_dir or default_base()
    print(f"base directory: {base_dir}", flush=True)
    for key in [k for k in os.environ if k.startswith("AGENT_COORD_")]:
        del os.environ[key]
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-validate-", dir=base_dir) as tmp:
        result = anyio.run(run, Path(tmp), reps)
    t = result["timings_ms"]
    rows = [
        ["clean (dry run)", len(t["clean"]), median(t["clean"]), max(t["clean"]), median(t["floor"])],
        ["drift (dry run)", len(t["drift"]), median(t["drift"]), max(t["drift"]), median(t["floor"])],
        ["drift (repair)", len(t["repair"]), median(t["repair"]), max(t["repair"]), median(t["floor"])],
        ["right after repair", len(t["after_repair"]), median(t["after_repair"]), max(t["after_repair"]), "-"],
    ]
    print(f"\nsetup: {SLOTS} slots made by the pool in {result['setup_s']} s")
    print(table(["validate over 100 slots", "n", "median ms", "max ms", "git floor ms"], rows))
    print(f"\ndrift made: {result['findings'].get('made')}")
    verdicts = {
        "clean <= 1 s": median(t["clean"]) <= 1000,
        "drift (dry run) <= 1 s": median(t["drift"]) <= 1000,
        "drift (repair) <= 1 s": median(t["repair"]) <= 1000,
    }
    print_verdicts(verdicts)
    path = write_results(
        "validate", {"machine": info, "reps": reps, "base_dir": base_dir, **result, "verdicts": verdicts}
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
