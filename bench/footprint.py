"""Footprint: server start-up to the first `initialize` response, and resident memory idle and after
1,000 calls, each beside a bare `python -c "from mcp.server import MCPServer"` timed in the same run.

Start-up: spawn `python -m server`, write `initialize` on its stdin at once, stop the clock when the
response line arrives. The baseline is the wall time of the bare SDK import process (spawn to exit).
Both are repeated, interleaved, and the medians compared.
Memory: VmRSS from /proc of the server process 2 s after initialize (idle), then after every 250 of
1,000 tools/call requests (status and heartbeat alternating), against the bare import's VmRSS.
JSON-RPC is written by hand on the pipes, so no client library's time or memory is counted.

    python -m bench.footprint           # ~1 min
    python -m bench.footprint --quick   # ~20 s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import default_base, git_env, machine, machine_line, median, print_verdicts, table, write_results

BARE = "from mcp.server import MCPServer"
BARE_RSS = (
    "from mcp.server import MCPServer\n"
    "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"
)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RawServer:
    """`python -m server` driven with hand-written JSON-RPC lines."""

    def __init__(self, env: dict[str, str], command: tuple[str, ...] = ("-m", "agent_coord.server")) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.next_id = 1

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("server closed its stdout")
            msg = json.loads(line)
            if msg.get("id") == rid:
                reply: dict[str, Any] = msg
                return reply

    def initialize(self) -> float:
        reply = self.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
        )
        elapsed = (time.perf_counter() - self.started) * 1000
        assert "result" in reply, reply
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return elapsed

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bare_import_ms() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE], check=True)
    return (time.perf_counter() - t0) * 1000


def bare_import_rss_kb() -> int:
    out = subprocess.run([sys.executable, "-c", BARE_RSS], check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def make_env(base: Path, k: int) -> dict[str, str]:
    repo = base / "repo"
    if not repo.exists():
        repo.mkdir(parents=True)
        for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "initial"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, env=git_env())
    env = {k2: v for k2, v in os.environ.items() if not k2.startswith("AGENT_COORD_")}
    env.update(
        {
            "AGENT_COORD_DB": str(base / f"state-{k}" / "coord.db"),
            "AGENT_COORD_REPO": str(repo),
            "AGENT_COORD_POOL_ROOT": str(base / "pool"),
            "AGENT_COORD_MANICTIME_DB": "",
        }
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and 400 calls (~20 s)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--base-dir", default=None, help=f"where state goes (default {default_base()})")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 7)
    calls = args.calls or (400 if args.quick else 1000)
    info = machine()
    print(machine_line(info), flush=True)
    startup: list[float] = []
    bare: list[float] = []
    bare_rss: list[int] = []
    rss_samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agent-coord-bench-footprint-", dir=args.base_dir or default_base()) as tmp:
        base = Path(tmp)
        make_env(base, 0)
        bare_import_ms()  # warm the page cache for both sides alike
        for rep in range(reps):
            kinds = ["server", "bare"]
            order = kinds[rep % len(kinds) :] + kinds[: rep % len(kinds)]
            for what in order:
                if what == "bare":
                    bare.append(bare_import_ms())
                    bare_rss.append(bare_import_rss_kb())
                    continue
                server = RawServer(make_env(base, rep), ("-m", "agent_coord.server"))
                try:
                    startup.append(server.initialize())
                finally:
                    server.close()
            print(f"  rep {rep}: server {startup[-1]:.0f} ms, bare import {bare[-1]:.0f} ms", flush=True)
        # memory: one long-lived server
        server = RawServer(make_env(base, 999))
        try:
            server.initialize()
            time.sleep(2.0)
            pid = server.proc.pid
            rss_samples.append({"calls": 0, "rss_kb": rss_kb(pid)})
            t0 = time.perf_counter()
            errors = 0
            for i in range(1, calls + 1):
                name, arguments = ("status", {}) if i % 2 else ("heartbeat", {"status": "active"})
                reply = server.request("tools/call", {"name": name, "arguments": arguments})
                if "error" in reply or reply.get("result", {}).get("isError"):
                    errors += 1
                if i % (calls // 4) == 0:
                    rss_samples.append({"calls": i, "rss_kb": rss_kb(pid)})
            call_s = time.perf_counter() - t0
            time.sleep(1.0)
            rss_samples.append({"calls": calls, "after_s": 1.0, "rss_kb": rss_kb(pid)})
        finally:
            server.close()
    bare_rss_mb = median(bare_rss) / 1024
    idle_mb = rss_samples[0]["rss_kb"] / 1024
    final_mb = rss_samples[-1]["rss_kb"] / 1024
    quarter_mb = rss_samples[1]["rss_kb"] / 1024
    ratio = median(startup) / median(bare)
    rows = [
        ["start-up to initialize response", f"{median(startup):.0f} ms", f"{median(bare):.0f} ms", f"{ratio:.2f}x"],
        [
            "RSS idle (2 s after initialize)",
            f"{idle_mb:.1f} MB",
            f"{bare_rss_mb:.1f} MB",
            f"+{idle_mb - bare_rss_mb:.1f} MB",
        ],
        [
            f"RSS after {calls} calls",
            f"{final_mb:.1f} MB",
            f"{bare_rss_mb:.1f} MB",
            f"+{final_mb - bare_rss_mb:.1f} MB",
        ],
        [
            f"growth, {calls // 4} -> {calls} calls",
            f"{final_mb - quarter_mb:+.1f} MB",
            "-",
            f"{(final_mb - quarter_mb) * 1024 / max(1, calls - calls // 4):.2f} KB/call",
        ],
    ]
    print()
    print(table(["measure", "agent-coord", "bare SDK import", "vs bare"], rows))
    print(f"\n{calls} calls in {call_s:.1f} s ({calls / call_s:.0f}/s), {errors} errors; RSS samples: {rss_samples}")
    verdicts = {
        "start-up <= 1.25x bare import": ratio <= 1.25,
        "RSS idle <= bare + 25 MB": idle_mb <= bare_rss_mb + 25,
        f"RSS after {calls} calls <= bare + 25 MB": final_mb <= bare_rss_mb + 25,
        "no growth (< 2 MB from the first quarter to the end)": final_mb - quarter_mb < 2.0,
    }
    print_verdicts(verdicts)
    path = write_results(
        "footprint",
        {
            "machine": info,
            "reps": reps,
            "calls": calls,
            "startup_ms": startup,
            "bare_import_ms": bare,
            "bare_rss_kb": bare_rss,
            "rss_samples": rss_samples,
            "calls_per_s": calls / call_s,
            "errors": errors,
            "ratio": ratio,
            "verdicts": verdicts,
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
