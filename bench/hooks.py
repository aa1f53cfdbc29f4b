"""Hook start-up: `agent-coord hook session-start`, `hook worktree-create` + `hook worktree-remove`,
and `agent-coord status --json`, each as Claude Code runs them (a new process, the JSON payload on
stdin), beside `python -c pass` in the same run, interleaved.

Three ways a hook runs: answered by the session's MCP server (`agent-coord serve`, started here as
Claude Code starts it: a child of this process, in the project directory; rows marked "(served)");
answered by the user's hook host for the directory (agent_coord/claude/hook_host.py, which the first
hook working in-process starts; rows marked "(host)"); and in its own process, which is what the first
hook of a directory and environment does when no server runs and no host has answered for
AGENT_COORD_HOOK_HOST_IDLE_S (rows without a mark: the host is off there). Each has its own
repository, pool and database. The targets are checked on the first two, the ways hooks are answered
but for that cold start.

Reported: wall p50 and the CPU time (user + system) p50 of the hook process, and their ratio to
`python -c pass`. A served hook's CPU column is the hook process's alone; the server's work shows in
its wall time. The repository is a small generated one (the hooks' cost is start-up, not git).

    python -m bench.hooks            # 15 rounds
    python -m bench.hooks --quick    # 5 rounds
    python -m bench.hooks --against /path/to/a/checkout/of/main   # before/after in one run
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

from bench._common import default_base, git_env, machine, machine_line, median, print_verdicts, table, write_results
from bench._repo import fresh_clone

HOOK_P50_MS = 150.0
HOOK_X_PASS = 3.0
CLI = str(Path(sys.executable).parent / "agent-coord")


def timed(argv: list[str], env: dict[str, str], stdin: str, cwd: Path) -> tuple[float, float, str]:
    """(wall ms, CPU ms, stdout) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    wall = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed: {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return wall, cpu, proc.stdout


def start_server(env: dict[str, str], repo: Path) -> subprocess.Popen[bytes]:
    """The session's MCP server, as Claude Code starts it; returns once it listens for hooks."""
    from agent_coord.claude import hook_socket

    proc = subprocess.Popen(
        [CLI, "serve"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=repo
    )
    key = hook_socket.process_key(os.getpid())
    directory = Path(env["XDG_RUNTIME_DIR"]) / "agent-coord"
    deadline = time.monotonic() + 120
    while key is None or not (directory / hook_socket.socket_name(key[1])).exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start listening for hooks")
        time.sleep(0.05)
    return proc


def wait_for_host(run_dir: Path) -> None:
    """Return once the hook host that round 0 started listens (the timed rounds measure it warm)."""
    deadline = time.monotonic() + 120
    while not list((run_dir / "agent-coord").glob("host-*.sock")):
        if time.monotonic() > deadline:
            raise RuntimeError("no hook host started")
        time.sleep(0.05)


def stop_hosts(run_dir: Path) -> None:
    """Stop the hook hosts the run started (they would wait for hooks for ten minutes)."""
    from agent_coord.claude.hook_host import running_hosts

    for proc in running_hosts(str(run_dir)):
        proc.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--base-dir", default=default_base())
    parser.add_argument("--against", default=None, help="another source tree to run the same commands from")
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.quick else 15)
    print(machine_line())
    samples: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-hooks-", dir=args.base_dir) as tmp:
        base = Path(tmp)
        env = git_env()
        # An installed package has its bytecode cached (pip compiles at install): so do these runs.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["AGENT_COORD_MANICTIME_DB"] = ""
        # Where servers put their hook sockets: none for the hooks that work in their own process.
        env["XDG_RUNTIME_DIR"] = str(base / "no-server")
        session = "bench-session-0123456789"
        # Each tree has its own repository, pool and database (another version may not open ours).
        alone_env = {**env, "AGENT_COORD_DB": str(base / "coord.db"), "AGENT_COORD_HOOK_HOST_IDLE_S": "0"}
        trees = [("", alone_env, fresh_clone(200, 5, base / "repo"))]
        host_dir = base / "host-run"
        host_dir.mkdir(mode=0o700)
        host_env = {**env, "AGENT_COORD_DB": str(base / "host.db"), "XDG_RUNTIME_DIR": str(host_dir)}
        trees.append(("(host) ", host_env, fresh_clone(200, 5, base / "host")))
        run_dir = base / "run"
        run_dir.mkdir(mode=0o700)
        served_env = {**env, "AGENT_COORD_DB": str(base / "served.db"), "XDG_RUNTIME_DIR": str(run_dir)}
        served_repo = fresh_clone(200, 5, base / "served")
        server = start_server(served_env, served_repo)
        trees.append(("(served) ", served_env, served_repo))
        if args.against:
            # The same commands run from another source tree (say a checkout of main), interleaved.
            other = {**env, "AGENT_COORD_DB": str(base / "other.db"), "PYTHONPATH": str(Path(args.against).resolve())}
            trees.append((f"{Path(args.against).name}: ", other, fresh_clone(200, 5, base / "other")))
        try:
            for i in range(rounds + 1):  # round 0 warms the pool and the OS caches, untimed
                round_samples: dict[str, tuple[float, float]] = {}
                round_samples["python -c pass"] = timed([sys.executable, "-c", "pass"], env, "", base)[:2]
                for t, (label, tree_env, repo) in enumerate(trees) if i % 2 else reversed(list(enumerate(trees))):
                    start = {"session_id": session, "cwd": str(repo), "hook_event_name": "SessionStart"}
                    start_json = json.dumps(start)
                    round_samples[f"{label}hook session-start"] = timed(
                        [CLI, "hook", "session-start"], tree_env, start_json, repo
                    )[:2]
                    create: dict[str, Any] = {"session_id": session, "cwd": str(repo), "name": f"bench-{t}-{i}"}
                    wall, cpu, out = timed([CLI, "hook", "worktree-create"], tree_env, json.dumps(create), repo)
                    round_samples[f"{label}hook worktree-create"] = (wall, cpu)
                    worktree = out.strip().splitlines()[-1]
                    remove = {"session_id": session, "cwd": str(repo), "worktree_path": worktree}
                    round_samples[f"{label}hook worktree-remove"] = timed(
                        [CLI, "hook", "worktree-remove"], tree_env, json.dumps(remove), repo
                    )[:2]
                    if tree_env is not served_env:  # a command, not a hook: never answered by a server
                        status = timed([CLI, "status", "--json"], tree_env, "", repo)
                        round_samples[f"{label}status --json"] = status[:2]
                if not i:
                    wait_for_host(host_dir)
                if i:
                    for name, value in round_samples.items():
                        samples.setdefault(name, []).append(value)
        finally:
            assert server.stdin is not None
            server.stdin.close()  # the MCP session ends: the server stops
            server.wait(timeout=60)
            stop_hosts(host_dir)
    base_wall = median(w for w, _ in samples["python -c pass"])
    base_cpu = median(c for _, c in samples["python -c pass"])
    rows = []
    results: dict[str, Any] = {}
    verdicts: dict[str, bool] = {}
    for name, values in samples.items():
        wall, cpu = median(w for w, _ in values), median(c for _, c in values)
        rows.append([name, len(values), wall, cpu, wall / base_wall, cpu / base_cpu])
        results[name] = {"wall_p50_ms": wall, "cpu_p50_ms": cpu, "n": len(values)}
        if name.startswith(("(served) ", "(host) ")):
            verdicts[f"{name} p50 {wall:.0f} ms <= {HOOK_P50_MS:.0f} ms"] = wall <= HOOK_P50_MS
            verdicts[f"{name} <= {HOOK_X_PASS}x python -c pass ({wall / base_wall:.1f}x)"] = (
                wall <= HOOK_X_PASS * base_wall
            )
    print(table(["command", "n", "wall p50 ms", "CPU p50 ms", "x pass wall", "x pass CPU"], rows))
    print_verdicts(verdicts)
    path = write_results("hooks", {"machine": machine(), "results": results, "verdicts": verdicts, "pid": os.getpid()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
