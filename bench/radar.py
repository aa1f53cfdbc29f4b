"""The conflict radar on the 5,000-file repository with 16 live worktrees (120 pairs + 16 against base).

Measured in one run, interleaved, medians of repetitions:
  full         a radar pass from nothing stored: 16 snapshots, 136 comparisons
  raw          the same 136 merges as bare `git merge-tree --write-tree` processes on the same snapshots
               (committed with `git commit-tree` beforehand, untimed): what a git-only radar would run
  incremental  a pass after one worktree got an unstaged edit of a tracked file: must find it (the
               holder's radar, with its caches and its scratch indexes, as a long-running server has them)
  hook         `agent-coord hook pre-edit` from process start to answer, against `python -c pass`
  edit→result  from an edit to the first `heartbeat` result that carries its conflict, with the radar
               loop running at the default interval (10 s)

    python -m bench.radar            # ~2 min
    python -m bench.radar --quick    # ~40 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.radar.radar_pass import PassReport, RadarPass
from bench._common import (
    default_base,
    git_env,
    machine,
    machine_line,
    median,
    pct,
    print_verdicts,
    table,
    write_results,
)
from bench._repo import fresh_clone

FILES, COMMITS, AGENTS = 5000, 300, 16
HOT = "src/pkg50/module_04950.py"  # the even agents edit the same line of it: 28 conflicting pairs
WARM_DIR = "src/pkg51"  # the odd agents edit one line each (every other line) of a file there: overlaps


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True, env=git_env()
    ).stdout


def _set_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def warm_file(repo: Path) -> str:
    """A file long enough for eight edits two lines apart (generated files have 5-30 lines)."""
    for f in sorted((repo / WARM_DIR).iterdir()):
        if len(f.read_text().splitlines()) >= AGENTS:
            return f"{WARM_DIR}/{f.name}"
    raise RuntimeError("no long file")


def workload(paths: list[Path]) -> None:
    warm = warm_file(paths[0])
    for i, p in enumerate(paths):
        _set_line(p / f"src/pkg{i:02d}/module_{i:05d}.py", 2, f"private edit {i}")
        if i % 2 == 0:
            _set_line(p / HOT, 1, f"hot edit {i}")
        else:
            _set_line(p / warm, i, f"warm edit {i}")
        (p / f"notes-{i}.txt").write_text(f"untracked {i}\n")


def clear_radar(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for table_name in ("radar_pairs", "radar_changes", "radar_trees"):
            conn.execute(f"DELETE FROM {table_name}")


async def full_pass(coord: Coordinator, db: Path, scratch: Path) -> tuple[float, PassReport]:
    clear_radar(db)
    radar = RadarPass(coord.store, coord.git, coord.identity.host, scratch)  # no cached merge bases or diffs
    try:
        t0 = time.perf_counter()
        report = await radar.run()
        return (time.perf_counter() - t0) * 1000, report
    finally:
        radar.close()


def raw_merges(repo: Path, commits: list[str], base: str) -> float:
    """The same 136 merges as `git merge-tree --write-tree` processes, one after another."""
    t0 = time.perf_counter()
    merges = [(a, b) for i, a in enumerate(commits) for b in commits[i + 1 :]] + [(c, base) for c in commits]
    for a, b in merges:
        subprocess.run(
            ["git", "-C", str(repo), "merge-tree", "--write-tree", "--name-only", "-z", a, b],
            capture_output=True,
            env=git_env(),
            check=False,
        )
    return (time.perf_counter() - t0) * 1000


def snapshot_commits(db: Path, repo: Path) -> list[str]:
    """The radar's stored snapshot trees, committed on their HEADs (for the raw merges)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT head, tree FROM radar_trees ORDER BY worktree_id").fetchall()
    return [_git(repo, "commit-tree", tree, "-p", head, "-m", "snapshot").strip() for head, tree in rows]


def hook_latency(db: Path, warned: Path, quiet: Path, runs: int) -> dict[str, Any]:
    """The hook as Claude Code runs it before an edit: of a file another worktree changes (it answers,
    so it also builds and prints its JSON) and of one nobody else changes (most edits: no answer)."""
    script = Path(sys.executable).parent / "agent-coord"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env["AGENT_COORD_DB"] = str(db)
    # An installed package has its bytecode cached (pip compiles at install): so do these runs. Without
    # it every run compiles the guard from source (~5 ms more on this machine).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    events = {
        name: json.dumps({"tool_name": "Edit", "cwd": str(p.parent), "tool_input": {"file_path": str(p)}})
        for name, p in (("hook", warned), ("quiet", quiet))
    }
    times: dict[str, list[float]] = {"hook": [], "quiet": [], "bare": []}
    answers: dict[str, str] = {}
    for i in range(-1, runs):  # round -1 writes the bytecode and warms the OS caches, untimed
        order = ["hook", "quiet", "bare"]
        for which in order[i % 3 :] + order[: i % 3]:
            cmd = [str(script), "hook", "pre-edit"] if which != "bare" else [sys.executable, "-c", "pass"]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, input=events.get(which, ""), capture_output=True, text=True, env=env, check=False)
            if i >= 0:
                times[which].append((time.perf_counter() - t0) * 1000)
            answers[which] = out.stdout
    return {
        **{f"{k}_p50": pct(v, 50) for k, v in times.items()},
        **{f"{k}_p99": pct(v, 99) for k, v in times.items()},
        "warned": "additionalContext" in answers["hook"],
        "quiet_said_nothing": answers["quiet"] == "",
    }


async def edit_to_result(coords: list[Coordinator], paths: list[Path], reps: int) -> list[float]:
    """The radar loop runs as in a server (default interval); an agent polls heartbeat as it would call it."""
    out: list[float] = []
    loop = coords[0].radar_loop
    loop.every_s = 10.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop.run)
        for rep in range(reps):
            await anyio.sleep(0.5 + rep * 3.1)  # edits land at different points of the interval
            target = paths[3] / f"src/pkg02/module_{2:05d}.py"  # agent 2's private file, now agent 3's too
            _set_line(target, 2, f"collides {rep}")
            t0 = time.perf_counter()
            while True:
                seen = (await coords[3].heartbeat()).conflicts
                if any(c.kind == "conflict" and f"src/pkg02/module_{2:05d}.py" in c.paths for c in seen):
                    break
                await anyio.sleep(0.05)
            out.append((time.perf_counter() - t0) * 1000)
            _set_line(target, 2, (paths[0] / f"src/pkg02/module_{2:05d}.py").read_text().splitlines()[1])
            while any(c.kind == "conflict" for c in await coords[3].conflicts()):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="radar-bench-", dir=args.base_dir))
    try:
        repo = fresh_clone(FILES, COMMITS, base / "repo")
        db = base / "coord.db"
        settings = Settings(
            db=db, repo=repo, pool_root=base / "pool", pool_max=AGENTS + 4, manictime_db=None, radar_every_s=3600
        )
        scratch = base / "scratch"
        scratch.mkdir()
        async with AsyncExitStack() as stack:
            coords = [
                await stack.enter_async_context(Coordinator.open(settings, register=True, agent_id=f"bench-{i:02d}"))
                for i in range(AGENTS)
            ]
            paths = [Path((await c.pool.allocate(f"radar-{i:02d}")).path) for i, c in enumerate(coords)]
            await anyio.to_thread.run_sync(workload, paths)
            await anyio.sleep(1.1)  # past the racy-git window of the new indexes
            for p in paths:
                _git(p, "update-index", "-q", "--refresh")  # as an agent's own `git status` does
            head = _git(repo, "rev-parse", "main").strip()
            await full_pass(coords[0], db, scratch)  # warm-up, untimed
            commits = snapshot_commits(db, repo)
            full: list[float] = []
            raw: list[float] = []
            incremental: list[float] = []
            parts: list[dict[str, float]] = []
            found: list[bool] = []
            report: PassReport | None = None
            for rep in range(args.reps):
                order = ("full", "raw") if rep % 2 == 0 else ("raw", "full")
                for which in order:
                    if which == "full":
                        ms, report = await full_pass(coords[0], db, scratch)
                        full.append(ms)
                        parts.append({f"full_{k}_ms": v for k, v in report.stages_ms.items()})
                    else:
                        raw.append(raw_merges(repo, commits, head))
                # Incremental: agent 5 (odd, so far only overlapping) now edits the hot line too.
                radar = RadarPass(coords[0].store, coords[0].git, coords[0].identity.host, scratch)
                # The holder compared every pair when its sides appeared, so its caches (merge bases, each
                # tree's changes) and scratch indexes hold them: one pass from nothing stored gives it both.
                clear_radar(db)
                await radar.run()
                _set_line(paths[5] / HOT, 1, f"hot edit 5 rep {rep}")
                t0 = time.perf_counter()
                inc = await radar.run()
                incremental.append((time.perf_counter() - t0) * 1000)
                parts[-1].update({f"inc_{k}_ms": v for k, v in inc.stages_ms.items()})
                parts[-1]["inc_whole_snapshots"] = inc.whole
                seen = await coords[5].conflicts()
                found.append(
                    inc.snapshots == 1
                    and inc.computed == AGENTS
                    and any(c.kind == "conflict" and HOT in c.paths for c in seen)
                )
                radar.close()
                _set_line(paths[5] / HOT, 1, (paths[1] / HOT).read_text().splitlines()[0])
            assert report is not None
            quiet = sorted((paths[0] / "src/pkg30").iterdir())[0]  # changed by no worktree
            hook = await anyio.to_thread.run_sync(hook_latency, db, paths[0] / HOT, quiet, args.hook_runs)
            latency = await edit_to_result(coords, paths, args.edit_reps)
            return {
                "files": FILES,
                "agents": AGENTS,
                "comparisons": report.pairs,
                "conflicting_pairs": report.conflicts,
                "overlapping_pairs": report.overlaps,
                "full_ms": full,
                "raw_ms": raw,
                "incremental_ms": incremental,
                "incremental_found": found,
                "parts": parts,
                "hook": hook,
                "edit_to_result_ms": latency,
            }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _p50_p99(hook: dict[str, Any], name: str) -> str:
    return f"{hook[f'{name}_p50']:.1f} / {hook[f'{name}_p99']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--base-dir", default=default_base())
    args = parser.parse_args()
    args.reps = 3 if args.quick else 7
    args.hook_runs = 20 if args.quick else 60
    args.edit_reps = 2 if args.quick else 4
    m = machine()
    print(machine_line(m))
    result = anyio.run(run, args)
    full, raw, inc = median(result["full_ms"]), median(result["raw_ms"]), median(result["incremental_ms"])
    hook = result["hook"]
    print(
        table(
            ["measure", "median ms", "runs"],
            [
                ["full pass (16 snapshots + 136 comparisons)", round(full, 1), len(result["full_ms"])],
                ["raw git merge-tree x 136", round(raw, 1), len(result["raw_ms"])],
                ["incremental pass (one unstaged edit)", round(inc, 1), len(result["incremental_ms"])],
                ["hook pre-edit, a file changed elsewhere, p50 / p99", _p50_p99(hook, "hook"), args.hook_runs],
                ["hook pre-edit, a file nobody else changes", _p50_p99(hook, "quiet"), args.hook_runs],
                ["python -c pass p50 / p99", _p50_p99(hook, "bare"), args.hook_runs],
                ["edit -> first heartbeat with it", round(median(result["edit_to_result_ms"]), 1), args.edit_reps],
            ],
        )
    )
    print(
        f"comparisons {result['comparisons']}, conflicting {result['conflicting_pairs']}, "
        f"overlapping {result['overlapping_pairs']}"
    )
    print("where a pass's time goes (median ms per stage):")
    for key in sorted({k for p in result["parts"] for k in p}):
        print(f"  {key}: {median(p[key] for p in result['parts'] if key in p):.1f}")
    print_verdicts(
        {
            f"full pass <= 1.2x raw merge-tree ({full / raw:.2f}x)": full <= 1.2 * raw,
            f"full pass <= 2 s ({full:.0f} ms)": full <= 2000,
            f"incremental <= 1/8 of full ({inc / full:.3f})": inc <= full / 8,
            "incremental pass finds the change every time": all(result["incremental_found"]),
            f"hook p50 <= 60 ms ({hook['hook_p50']:.0f}; python -c pass {hook['bare_p50']:.0f})": hook["hook_p50"]
            <= 60,
            f"hook p99 <= 150 ms ({hook['hook_p99']:.0f})": hook["hook_p99"] <= 150,
            f"hook p50 <= 60 ms on a file nobody else changes ({hook['quiet_p50']:.0f})": hook["quiet_p50"] <= 60,
            "hook warned about the conflicted file, and said nothing about the other": hook["warned"]
            and hook["quiet_said_nothing"],
        }
    )
    path = write_results("radar", {"machine": m, **result})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
