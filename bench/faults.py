"""Fault campaign: agents allocate, write, commit and release at random while a chaos loop SIGKILLs
agents and servers, some inside SQLite transactions and some between the two allocation phases; then
validation repairs, and a checker proves from the event log, the database, git and what every agent
actually received that nothing was double-granted, lost or left behind.

    python -m bench.faults             # the full campaign: 6 agents, >= 100 kills, <= ~8 min
    python -m bench.faults --quick     # the CI-sized one: 3 agents, ~15 kills, ~40 s
    python -m bench.faults --kills 200 --agents 8

Who is who. An *agent* is a worker process (`--worker`): it drives its own stdio server with the
official `mcp.Client`, like Claude Code does, so the server's parent (its agent process, by which
liveness judges it) is the worker. The server is `python -m bench.fault_server`: the real server
with a flag that says when it is inside a transaction or between allocation phases (see there).
Killing an agent kills the worker (its server then sees EOF and stops); killing a server leaves the
agent alive, and the agent starts a new server under the same agent id, as Claude Code would.

What each agent records (JSON lines, appended with one write each, so a SIGKILL loses at most the
line being written): every grant and release it was acknowledged, every file it wrote (with the
bytes), every commit. The checker then verifies:
  1. `PRAGMA integrity_check` is ok;
  2. no slot ever had two owners at once: per slot, `allocate` ok opens a grant and `release` ok,
     `reclaim` or a dropping `repair` closes it, and no grant opens while another is open;
  3. fencing tokens strictly increase from grant to grant on every slot, and no token is granted twice;
  4. every acknowledged grant and release is in the event log, with its slot and token;
  5. every file write happened while its writer held the slot (grant open, same token);
  6. after validation no slot is held: every slot of a killed agent (and of every other agent: all
     have exited by then) is FREE or QUARANTINED, or gone; a second validation finds nothing;
  7. every file any agent wrote and recorded still exists: in its worktree, in a rescue ref
     (`refs/agent-coord/rescue/*`), or committed on a branch;
  8. nothing outside the pool changed: the main checkout (with a person's uncommitted edit and
     untracked file) and a sibling directory, byte for byte (bench/outside_check.py).
It also measures how long a killed agent's slots took to be reclaimed by the servers' own background
validation, and reports slots left ALLOCATING or RELEASING by a killed server whose agent lived on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench._common import machine, machine_line, write_results
from bench.fault_agent import worker_main
from bench.fault_campaign import Campaign, CampaignConfig
from bench.fault_check import check, final_validation
from bench.fault_processes import sigkill, wait_servers_gone
from bench.fault_server import BETWEEN_PHASES, IN_TX


def run_campaign(
    config: CampaignConfig, base: Path, *, store_outage: Callable[[], None] | None = None
) -> dict[str, Any]:
    started = time.time()
    campaign = Campaign(config, base, store_outage=store_outage)
    try:
        run = campaign.run()
    finally:
        for a in campaign.agents:
            if a.proc.poll() is None:
                sigkill(a.proc.pid)
                a.proc.wait()
        wait_servers_gone(campaign.flags, timeout=10)
    validation = final_validation(campaign.store, campaign.repo, campaign.pool)
    result = check(campaign, validation)
    kinds: dict[str, int] = {}
    for k in campaign.kills:
        kinds[k["kind"]] = kinds.get(k["kind"], 0) + 1
    in_tx_deaths = sum(1 for k in campaign.kills if k.get("flag_at_death", 0) & IN_TX)
    between_deaths = sum(1 for k in campaign.kills if k.get("flag_at_death", 0) & BETWEEN_PHASES)
    agents_killed = sum(1 for k in campaign.kills if k.get("agent_killed"))
    servers_killed = sum(1 for k in campaign.kills if k.get("server_pid"))
    return {
        "config": asdict(config),
        "seconds": round(time.time() - started, 1),
        **run,
        "kills": len(campaign.kills),
        "kill_kinds": kinds,
        "agents_killed": agents_killed,
        "servers_killed": servers_killed,
        "died_inside_transaction": in_tx_deaths,
        "died_between_phases": between_deaths,
        "validation": validation,
        **result,
        "kill_log": campaign.kills,
        "store_outages": campaign.outages,
        "store_unavailable_answers": answers(base / "journals", "STORE_UNAVAILABLE"),
    }


def answers(journals: Path, code: str) -> int:
    """How many calls the agents saw answered with `code`."""
    needle = f'"code": "{code}"'
    return sum(p.read_text().count(needle) for p in journals.glob("*.jsonl"))


def summarize(report: dict[str, Any]) -> str:
    s = report["stats"]
    lines = [
        f"campaign: {report['seconds']} s ({report['chaos_s']} s of chaos), {report['kills']} kills "
        f"{report['kill_kinds']}",
        f"  agents killed {report['agents_killed']}, servers killed {report['servers_killed']}, "
        f"died inside a transaction {report['died_inside_transaction']}, "
        f"between allocation phases {report['died_between_phases']}",
        f"  events {s['events']}, grants {s['grants']} (acknowledged {s['acknowledged_grants']}), "
        f"releases acknowledged {s['acknowledged_releases']}, files written {s['writes']} -> {s['files']}, "
        f"rescue refs {s['rescue_refs']}",
        f"  killed agents {s['killed_agents']} holding {s['killed_agents_slots']} slots: "
        f"{s['recovered_by_background_validation']} reclaimed by the servers' validation "
        f"(p50 {s['recovery_s']['p50']} s, max {s['recovery_s']['max']} s; at most "
        f"{s['recovery_passes']['max']} validation passes after the kill, bound {s['recovery_passes']['bound']}), "
        f"{s['recovered_only_by_final_validation']} by the final one",
        f"  integrity_check {report['integrity']}; final repair {len(report['validation']['repair_findings'])} "
        f"findings in {report['validation']['repair_ms']} ms; "
        f"dry run after: {report['validation']['dry_run_findings']}",
        f"  left in transit by killed servers of live agents: {report['in_transit_at_end']}",
        f"  violations: {len(report['violations'])}",
    ]
    if report.get("store_outages"):
        lines.insert(
            -1,
            f"  store outages {report['store_outages']}: {report['store_unavailable_answers']} calls answered "
            "STORE_UNAVAILABLE",
        )
    lines += [f"    - {v}" for v in report["violations"][:30]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI-sized campaign (~40 s)")
    parser.add_argument("--kills", type=int, default=None)
    parser.add_argument("--agents", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=None)
    parser.add_argument("--base-dir", default=None, help="where the campaign's files go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the campaign directory for inspection")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker_main(args.worker)
        return
    config = CampaignConfig.quick() if args.quick else CampaignConfig()
    for name in ("kills", "agents", "seed", "max_seconds"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    print(machine_line(), flush=True)
    base = Path(tempfile.mkdtemp(prefix="agent-coord-faults-", dir=args.base_dir))
    print(f"campaign directory: {base}", flush=True)
    report = run_campaign(config, base)
    print(summarize(report))
    path = write_results("faults", {"machine": machine(), **report})
    print(f"\nresults: {path}")
    if not args.keep and not report["violations"]:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    sys.exit(1 if report["violations"] else 0)


if __name__ == "__main__":
    main()
