"""The web dashboard: time from a store commit to the page's update, the page's weight, and the
server's cost with many pages open.

Set-up: a throwaway repository with `--slots` worktrees allocated by this process (so the page has
rows, agents, metrics and charts to draw), and a real `agent-coord web` subprocess. The browser is the
system's Chromium driven by Playwright, as in the tests.

* **Commit to update**: this process commits one event (`store.log`), notes the wall clock when the
  commit returned, and waits until the page has drawn a document whose newest event is that one; the
  page records `Date.now()` when it finished drawing (`window.agentCoord.renders`). Both clocks are the
  same machine's. One change at a time, with a random 0-100 ms pause between, so the watcher's polling
  phase is sampled evenly. Repeated with 1 and with 10 pages open (all must draw; the slowest counts).
* **Page weight**: the bytes of every response of a first load (HTML, JS, CSS, icon), and of one state
  document (what each update sends).
* **Server cost**: the server process's CPU time (user + system, from psutil) and RSS over the changes,
  per change, with 1 and 10 pages open; and while idle.

    python -m bench.web              # 200 changes per run (~2 min)
    python -m bench.web --changes 50 # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from bench._common import git_env, machine, machine_line, summary, table, write_results

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    env = git_env()
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "initial"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, env=env)
    return repo


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_coord", "web", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        raise SystemExit("agent-coord web printed no address")
    return proc, url


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.store import EventDraft
    from agent_coord.engine.store.records import Action

    base = Path(tempfile.mkdtemp(prefix="bench-web-"))
    repo = make_repo(base)
    env = {
        **git_env(),
        "AGENT_COORD_DB": str(base / "state" / "coord.db"),
        "AGENT_COORD_REPO": str(repo),
        "AGENT_COORD_POOL_ROOT": str(base / "pool"),
        "AGENT_COORD_MANICTIME_DB": "",
    }
    os.environ.update(env)
    results: dict[str, Any] = {"slots": args.slots, "changes": args.changes}
    async with Coordinator.open(Settings(), register=True, agent_id="bench-agent") as coord:
        for i in range(args.slots):
            await coord.pool.allocate(f"bench/b{i}", task=f"bench slot {i}")
        proc, url = start_server(env)
        server = psutil.Process(proc.pid)
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pages: list[Any] = []

                async def open_page(record_weight: bool = False) -> Any:
                    # bypass_csp: Playwright's polling predicates are evaluated strings, which the app's CSP forbids.
                    context = await browser.new_context(viewport={"width": 1360, "height": 900}, bypass_csp=True)
                    page = await context.new_page()
                    sizes: dict[str, int] = {}

                    async def on_response(response: Any) -> None:
                        if "events" in response.url:
                            return  # the stream never ends; its documents are measured below
                        try:
                            sizes[response.url] = len(await response.body())
                        except Exception:  # a redirect has no body
                            sizes[response.url] = 0

                    if record_weight:
                        page.on("response", on_response)
                    await page.goto(url)
                    await page.wait_for_function("window.agentCoord && window.agentCoord.version > 0")
                    if record_weight:
                        await page.wait_for_timeout(200)
                        results["page_weight_bytes"] = {urlsplit(u).path or "/": n for u, n in sizes.items()}
                        results["page_weight_total"] = sum(sizes.values())
                    pages.append(page)
                    return page

                await open_page(record_weight=True)
                state = await pages[0].evaluate("async () => new Blob([await (await fetch('api/state')).text()]).size")
                results["state_document_bytes"] = state

                async def measure(label: str) -> None:
                    # Idle cost first: nothing commits for a few seconds.
                    c0, t0 = cpu_s(server), time.monotonic()
                    await asyncio.sleep(args.idle_s)
                    idle = (cpu_s(server) - c0) / (time.monotonic() - t0) * 100
                    latencies: list[float] = []
                    c0, t0 = cpu_s(server), time.monotonic()
                    for i in range(args.changes):
                        await coord.store.log(
                            EventDraft(Action.VALIDATE, "ok", agent_id="bench-agent", detail={"n": i})
                        )
                        committed_ms = time.time() * 1000
                        newest = (await coord.store.events(limit=1, newest=True))[0].id
                        drawn = []
                        for page in pages:
                            handle = await page.wait_for_function(
                                "(id) => { const r = window.agentCoord.renders.find((x) => x.newestEvent >= id);"
                                " return r ? r.at : null; }",
                                arg=newest,
                                polling=5,
                                timeout=30000,
                            )
                            drawn.append(float(await handle.json_value()))
                        latencies.append(max(drawn) - committed_ms)
                        await asyncio.sleep(random.uniform(0, 0.1))
                    wall = time.monotonic() - t0
                    cpu = cpu_s(server) - c0
                    results[label] = {
                        "pages": len(pages),
                        "commit_to_update_ms": summary(latencies),
                        "server_cpu_ms_per_change": round(cpu * 1000 / args.changes, 2),
                        "server_cpu_pct_during": round(cpu / wall * 100, 1),
                        "server_cpu_pct_idle": round(idle, 2),
                        "server_rss_mb": round(server.memory_info().rss / 2**20, 1),
                    }
                    print(label, results[label], flush=True)

                await measure("one_page")
                while len(pages) < 10:
                    await open_page()
                await measure("ten_pages")
                await browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--idle-s", type=float, default=5.0)
    args = parser.parse_args()
    m = machine()
    print(machine_line(m))
    results = asyncio.run(run(args))
    rows = []
    for label in ("one_page", "ten_pages"):
        r = results[label]
        s = r["commit_to_update_ms"]
        rows.append(
            [
                r["pages"],
                s["p50"],
                s["p99"],
                s["max"],
                r["server_cpu_ms_per_change"],
                r["server_cpu_pct_idle"],
                r["server_rss_mb"],
            ]
        )
    print(
        table(
            ["pages", "commit→update p50 ms", "p99 ms", "max ms", "server CPU ms/change", "idle CPU %", "RSS MB"],
            rows,
        )
    )
    print(f"page weight: {results['page_weight_total']} bytes {results['page_weight_bytes']}")
    print(f"state document: {results['state_document_bytes']} bytes")
    path = write_results("web", {"machine": m, **results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
