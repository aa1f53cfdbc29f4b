"""What every benchmark shares: the machine description, percentiles, a table printer, JSON results."""

from __future__ import annotations

import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM, load, Python, git and SQLite versions: what every figure is quoted with."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_mb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    try:
        from importlib.metadata import version

        import mcp  # noqa: F401

        mcp_version = version("mcp")
    except Exception:
        mcp_version = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_mb": ram_mb,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "git": git.removeprefix("git version "),
        "sqlite": sqlite3.sqlite_version,
        "mcp": mcp_version,
        "kernel": platform.release(),
    }


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50": round(pct(values_ms, 50), 3),
        "p99": round(pct(values_ms, 99), 3),
        "max": round(max(values_ms), 3) if values_ms else math.nan,
        "mean": round(statistics.fmean(values_ms), 3) if values_ms else math.nan,
    }


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else math.nan


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def print_verdicts(verdicts: dict[str, bool]) -> None:
    """One PASS/MISS line per target."""
    for target, met in verdicts.items():
        print(f"  {'PASS' if met else 'MISS'}  {target}")


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    data = {"bench": name, "when": stamp, "command": command_line(), **payload}
    data.setdefault("machine", machine())
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    (RESULTS / f"{name}-latest.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def command_line() -> str:
    """How this run was started, as one would type it (`python -m bench.x ...`)."""
    argv = list(sys.argv)
    script = Path(argv[0]) if argv else Path()
    if script.suffix == ".py" and script.resolve().parent == ROOT / "bench":
        argv[0:1] = ["-m", f"bench.{script.stem}"]
    return " ".join(["python", *argv])


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine()
    return (
        f"machine: {m['nproc']} CPU ({m['cpu']}), {m['ram_mb']} MB RAM, load {m['loadavg']}, "
        f"Python {m['python']}, git {m['git']}, SQLite {m['sqlite']}, mcp {m['mcp']}"
    )


def git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env.update(GIT_IDENTITY)
    return env


def default_base() -> str:
    """tmpfs when there is one: on this VM's ext4, file creation under the other engineers' load cost
    0.5 ms per file (strace: openat), which made `git worktree add` of 5,000 files take 2-4 s instead
    of 0.08 s and buried the software under disk noise. `--base-dir /tmp` measures on disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()
