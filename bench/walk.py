"""The walk of `branch`: from the `allocate_worktree` tool down to git and the store, one warm allocation.

What a newcomer follows to see what happens to the branch an agent asks for. One real allocation
(in-process, the tool's own function, a small generated repository, a warm FREE slot) runs under
`sys.setprofile`; a **stop** is each entry into a function of the `agent_coord` package one of whose
arguments carries the branch: the string itself, or an object holding it (an attribute, a dataclass
or pydantic field, a list item: two levels deep, so `events=[EventDraft(branch=...)]` counts).
A coroutine resumed is the same stop, not a new one. Reported:

  stops    the number of such entries, in order (the route is printed)
  files    the distinct files they are in
  returns  how often the walk comes back to a file it had left (A → B → A is one return)

Left out: `engine/context.py` (the engine context's accessors: `self.store`, `self.git`, which
never carry the branch; plumbing, not a step of the use case), dunder methods and generated code (a
dataclass's `__init__`), and work in worker threads (the confinement guard; it never sees the branch).

    python -m bench.walk                       # this tree
    python -m bench.walk --against /path/to/a/checkout   # the same walk in another tree, for a before/after
    python -m bench.walk --against DIR --cycles 20 --rounds 6   # and the cost of the route, interleaved

With `--cycles`, each tree also runs rounds of warm allocate + release cycles through the same
function (a fresh interpreter per round, the trees alternating): per cycle, the wall time and the CPU
time of the process and its git children. Reported: p50 of each, and the ratio to the other tree.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

BRANCH = "feat/walk"
CHILD_FLAG = "--child"
HERE = Path(__file__).resolve()


def carries(value: object, branch: str, depth: int = 2) -> bool:
    """Does `value` hold `branch`, itself or `depth` levels down (attributes, fields, items)?"""
    if isinstance(value, str):
        return value == branch
    if depth == 0 or value is None or isinstance(value, (int, float, bool, bytes, Path)):
        return False
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(carries(v, branch, depth - 1) for v in list(value)[:64])
    if isinstance(value, dict):
        return any(carries(v, branch, depth - 1) for v in list(value.values())[:64])
    fields = getattr(value, "__dict__", None)
    if isinstance(fields, dict):
        return any(carries(v, branch, depth - 1) for k, v in fields.items() if not k.startswith("_"))
    return False


def summarise(stops: list[tuple[str, str]]) -> dict[str, Any]:
    files: list[str] = []
    returns = 0
    for path, _ in stops:
        if files and files[-1] == path:
            continue
        if path in files:
            returns += 1
        files.append(path)
    return {
        "stops": len(stops),
        "files": len(set(files)),
        "returns": returns,
        "route": [f"{path}:{name}" for path, name in stops],
    }


def cpu_s() -> float:
    """CPU time of this process and of its children waited for (git), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def cycles(tmp: Path, count: int) -> list[tuple[float, float]]:
    """(wall ms, CPU ms) of `count` warm cycles: allocate a new branch through the tool, release it."""
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.server.tools.allocate_worktree import AllocateInput, allocate_worktree

    settings = Settings(
        db=tmp / "coord.db", repo=make_repo(tmp), pool_root=tmp / "pool", manictime_db=None, agent_id="cycler"
    )
    samples: list[tuple[float, float]] = []
    async with Coordinator.open(settings, register=True) as coord:
        await coord.pool.allocate("warmup")
        await coord.pool.release(branch="warmup")
        for i in range(count):
            wall, cpu = time.perf_counter(), cpu_s()
            granted = await allocate_worktree(AllocateInput(branch=f"cycle-{i}"), coord)
            await coord.pool.release(worktree_id=granted.worktree_id)
            samples.append(((time.perf_counter() - wall) * 1000, (cpu_s() - cpu) * 1000))
    return samples


def make_repo(tmp: Path) -> Path:
    repo = tmp / "repo"
    env = {**os.environ, "GIT_AUTHOR_NAME": "w", "GIT_AUTHOR_EMAIL": "w@x", "GIT_COMMITTER_NAME": "w"}
    env["GIT_COMMITTER_EMAIL"] = "w@x"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "0"], check=True, env=env)
    return repo


async def walk_once(tmp: Path) -> list[tuple[str, str]]:
    """The stops of one warm allocation of BRANCH, through the tool's function."""
    import agent_coord
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.server.tools.allocate_worktree import AllocateInput, allocate_worktree

    package = str(Path(agent_coord.__file__).resolve().parent) + os.sep
    plumbing = {package + "engine/context.py"}
    settings = Settings(
        db=tmp / "coord.db", repo=make_repo(tmp), pool_root=tmp / "pool", manictime_db=None, agent_id="walker"
    )
    stops: list[tuple[str, str]] = []
    entered: list[FrameType] = []  # kept alive, so that no frame id is reused while the walk runs
    seen: set[int] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        code = frame.f_code
        if event != "call" or id(frame) in seen or not code.co_filename.startswith(package):
            return
        seen.add(id(frame))
        entered.append(frame)
        if code.co_filename in plumbing or code.co_name.startswith("__"):
            return
        nargs = code.co_argcount + code.co_kwonlyargcount
        names = code.co_varnames[:nargs]
        if code.co_flags & 0x04:  # *args
            names += (code.co_varnames[nargs],)
        if any(name != "self" and carries(frame.f_locals.get(name), BRANCH) for name in names):
            stops.append((code.co_filename.removeprefix(package), code.co_name))

    async with Coordinator.open(settings, register=True) as coord:
        # One allocation and release first: a FREE warm slot, and the caches a running server has.
        await coord.pool.allocate("warmup")
        await coord.pool.release(branch="warmup")
        sys.setprofile(profile)
        try:
            await allocate_worktree(AllocateInput(branch=BRANCH), coord)
        finally:
            sys.setprofile(None)
    return stops


def child(count: int) -> None:
    import anyio

    with tempfile.TemporaryDirectory(prefix="agent-coord-walk-") as tmp:
        if count:
            print(json.dumps({"cycles": anyio.run(cycles, Path(tmp), count)}))
        else:
            print(json.dumps(summarise(anyio.run(walk_once, Path(tmp)))))


def measure(tree: Path, count: int = 0) -> dict[str, Any]:
    """The walk (or `count` cycles) with `agent_coord` imported from `tree`, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env["PYTHONPATH"] = str(tree)
    env["GIT_CONFIG_NOSYSTEM"] = "1"
    out = subprocess.run(
        [sys.executable, str(HERE), CHILD_FLAG, str(count)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"walk in {tree} failed: {out.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    if CHILD_FLAG in sys.argv:
        # Run as a script, this folder heads sys.path: its modules must not stand in for others.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
        child(int(sys.argv[-1]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default=None, help="another source tree (say a checkout of main)")
    parser.add_argument("--cycles", type=int, default=0, help="warm allocate + release cycles per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of cycles per tree, alternating")
    args = parser.parse_args()
    trees = [HERE.parent.parent] + ([Path(args.against).resolve()] if args.against else [])
    for tree in trees:
        r = measure(tree)
        print(f"{tree}: {r['stops']} stops, {r['files']} files, {r['returns']} returns")
        for stop in r["route"]:
            print(f"    {stop}")
    if not args.cycles:
        return
    from bench._common import machine_line, table  # the parent's only: a child imports no bench module

    print(machine_line())
    samples: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    for i in range(args.rounds):
        for tree in trees if i % 2 else list(reversed(trees)):
            samples[tree] += [(w, c) for w, c in measure(tree, args.cycles)["cycles"]]
    first = trees[-1]  # the baseline: the other tree when there is one
    rows = []
    for tree in trees:
        wall = statistics.median(w for w, _ in samples[tree])
        cpu = statistics.median(c for _, c in samples[tree])
        base_wall = statistics.median(w for w, _ in samples[first])
        base_cpu = statistics.median(c for _, c in samples[first])
        rows.append([tree.name, len(samples[tree]), wall, cpu, wall / base_wall, cpu / base_cpu])
    print(table(["tree", "cycles", "wall p50 ms", "CPU p50 ms", "x baseline wall", "x baseline CPU"], rows))


if __name__ == "__main__":
    main()
