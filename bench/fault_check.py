"""The fault campaign's checker: a final `validate --repair`, then the properties bench/faults.py lists
(2-7), proven from the event log, the database, git and the agents' journals.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent_coord.store_target import PostgresUrl
from bench._common import git_env
from bench.fault_campaign import Campaign
from bench.store_read import integrity, rows

CLOSING_REPAIRS = {"orphaned_allocation", "missing_worktree", "duplicate_path", "duplicate_branch"}
HELD = ("ALLOCATING", "BUSY", "RELEASING")


def final_validation(db: Path | PostgresUrl, repo: Path, pool: Path) -> dict[str, Any]:
    """`validate --repair` in process (an observer, not an agent), then a dry run that must find nothing."""
    import anyio

    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator

    settings = Settings(db=db, repo=repo, pool_root=pool, manictime_db=None)

    async def go() -> dict[str, Any]:
        async with Coordinator.open(settings, register=False, agent_id="fault-checker") as coord:
            t0 = time.perf_counter()
            repaired = await coord.validate(repair=True)
            first_ms = (time.perf_counter() - t0) * 1000
            again = await coord.validate(repair=True)
            dry = await coord.validate(repair=False)
            return {
                "repair_findings": [f"{f.kind}:{f.action}" for f in repaired.findings],
                "repair_ms": round(first_ms, 1),
                "second_repair_findings": [f"{f.kind}:{f.action}" for f in again.findings],
                "dry_run_findings": [f"{f.kind}:{f.detail}" for f in dry.findings],
                "skipped": [f.kind for f in dry.skipped],
            }

    return anyio.run(go)


def _journal(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the one line a kill cut short
    return out


def grant_intervals(
    events: Sequence[Mapping[str, Any]],
) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str], int]:
    """Per slot, in commit order: `allocate` ok opens a grant; `release` ok, `reclaim` or a dropping
    `repair` closes it. Returns the grants by (slot, token), the violations (a grant opened while
    another is open, a token not above the slot's previous one or granted twice, a close with another
    token), and how many closes found nothing open (rolled-back claims, cleaned FREE slots)."""
    violations: list[str] = []
    open_grant: dict[str, dict[str, Any]] = {}
    last_token: dict[str, int] = {}
    intervals: dict[tuple[str, int], dict[str, Any]] = {}
    granted_tokens: set[int] = set()
    closes_without_open = 0
    for e in events:
        wt, action, outcome, token = e["worktree_id"], e["action"], e["outcome"], e["fencing_token"]
        if wt is None:
            continue
        if action == "allocate" and outcome == "ok":
            if wt in open_grant:
                violations.append(
                    f"double grant: {wt} granted to {e['agent_id']} (token {token}, event {e['id']}) while held by "
                    f"{open_grant[wt]['agent']} (token {open_grant[wt]['token']}, event {open_grant[wt]['id']})"
                )
            if token in granted_tokens:
                violations.append(f"token {token} granted twice (event {e['id']})")
            if wt in last_token and token <= last_token[wt]:
                violations.append(f"token not increasing on {wt}: {token} after {last_token[wt]} (event {e['id']})")
            granted_tokens.add(token)
            last_token[wt] = token
            grant = {"id": e["id"], "ts": e["ts"], "agent": e["agent_id"], "token": token, "close": None}
            open_grant[wt] = grant
            intervals[(wt, token)] = grant
            continue
        closing = (
            (action == "release" and outcome == "ok")
            or action == "reclaim"
            or (action == "repair" and json.loads(e["detail"] or "{}").get("kind") in CLOSING_REPAIRS)
        )
        if not closing:
            continue
        held = open_grant.get(wt)
        if held is None:
            closes_without_open += 1
            continue
        if token is not None and token != held["token"]:
            violations.append(
                f"{action} of {wt} with token {token} while the open grant has token {held['token']} (event {e['id']})"
            )
            continue
        held["close"] = {"id": e["id"], "ts": e["ts"], "action": action, "outcome": outcome}
        del open_grant[wt]
    return intervals, violations, closes_without_open


RECOVERY_PASSES = 2  # validation passes started after a kill within which its slots are reclaimed


def check(campaign: Campaign, validation: dict[str, Any]) -> dict[str, Any]:
    store, repo = campaign.store, campaign.repo
    violations: list[str] = []
    stats: dict[str, Any] = {}
    checked = integrity(store)
    events = rows(
        store, "SELECT id, ts, agent_id, action, worktree_id, outcome, fencing_token, detail FROM events ORDER BY id"
    )
    slots = rows(store, "SELECT * FROM slots")
    if checked != "ok":
        violations.append(f"integrity_check: {checked}")
    if campaign.outside is not None:
        violations += [f"outside the pool changed: {c}" for c in campaign.outside.changes()]

    # 2, 3: grant intervals and tokens, per slot, in commit order (event ids)
    intervals, interval_violations, closes_without_open = grant_intervals(events)
    violations += interval_violations
    stats["events"] = len(events)
    stats["grants"] = len(intervals)
    stats["closes_without_grant"] = closes_without_open

    # 4, 5: what the agents were told and did
    journals = {p.stem: _journal(p) for p in sorted((campaign.base / "journals").glob("*.jsonl"))}
    release_events = {
        (e["worktree_id"], e["fencing_token"]) for e in events if e["action"] == "release" and e["outcome"] == "ok"
    }
    acked_grants = acked_releases = 0
    writes: list[dict[str, Any]] = []
    unexpected: list[dict[str, Any]] = []
    for agent_id, records in journals.items():
        for r in records:
            if r["ev"] == "grant":
                acked_grants += 1
                g = intervals.get((r["wt"], r["token"]))
                if g is None:
                    violations.append(f"acknowledged grant not in the log: {agent_id} {r['wt']} token {r['token']}")
                elif g["agent"] != agent_id:
                    violations.append(f"grant {r['wt']} token {r['token']} logged for {g['agent']}, told to {agent_id}")
            elif r["ev"] == "release":
                acked_releases += 1
                if (r["wt"], r["token"]) not in release_events:
                    violations.append(f"acknowledged release not in the log: {agent_id} {r['wt']} token {r['token']}")
            elif r["ev"] == "write":
                r["agent"] = agent_id
                writes.append(r)
                g = intervals.get((r["wt"], r["token"]))
                if g is None or g["agent"] != agent_id:
                    violations.append(
                        f"write by {agent_id} to {r['wt']} under token {r['token']} that was never granted"
                    )
                elif g["ts"] > r["t"] or (g["close"] is not None and g["close"]["ts"] < r["t"] - 0.001):
                    violations.append(
                        f"write by {agent_id} to {r['wt']} at {r['t']:.3f} outside its grant "
                        f"[{g['ts']:.3f}, {g['close']['ts'] if g['close'] else 'open'}] ({r['rel']})"
                    )
            elif r["ev"] == "unexpected":
                unexpected.append({"agent": agent_id, **r})
    stats["acknowledged_grants"] = acked_grants
    stats["acknowledged_releases"] = acked_releases
    stats["writes"] = len(writes)
    if unexpected:
        violations.append(f"unexpected error codes: {unexpected[:5]}")

    # 6: nothing held after validation; killed agents' slots recovered
    held_after = [dict(s) for s in slots if s["state"] in HELD]
    for s in held_after:
        violations.append(f"after validation {s['id']} is still {s['state']} (owner {s['owner']})")
    killed = {a.agent_id: a.killed_at for a in campaign.retired if a.killed_at is not None}
    recovery: list[float] = []
    # Validation passes started after the kill and up to the reclaim: a count of the validator's own
    # events, which the machine's load does not stretch as it stretches seconds.
    pass_starts = [e["ts"] for e in events if e["action"] == "validate" and e["outcome"] == "started"]
    passes: list[int] = []
    unrecovered_during_run = 0
    killed_slots = 0
    for (wt, _token), g in intervals.items():
        killed_at = killed.get(g["agent"])
        if killed_at is None or g["ts"] > killed_at:
            continue
        if g["close"] is not None and g["close"]["ts"] < killed_at:
            continue
        killed_slots += 1
        state = next((s["state"] for s in slots if s["id"] == wt), "gone")
        if state not in ("FREE", "QUARANTINED", "gone"):
            violations.append(f"slot {wt} of killed agent {g['agent']} is {state} after validation")
        if g["close"] is not None:
            recovery.append(g["close"]["ts"] - killed_at)
            close_ts = g["close"]["ts"]
            passes.append(sum(1 for ts in pass_starts if killed_at < ts <= close_ts))
        else:
            unrecovered_during_run += 1
    stats["killed_agents"] = len(killed)
    stats["killed_agents_slots"] = killed_slots
    stats["recovered_by_background_validation"] = len(recovery)
    stats["recovered_only_by_final_validation"] = unrecovered_during_run
    stats["recovery_s"] = {
        "p50": round(sorted(recovery)[len(recovery) // 2], 2) if recovery else None,
        "max": round(max(recovery), 2) if recovery else None,
        "interval_s": campaign.config.validate_every_s,
    }
    stats["recovery_passes"] = {"max": max(passes) if passes else None, "bound": RECOVERY_PASSES}
    # The bound: the checker notices the death between passes and starts one at once; should that pass
    # have judged the owner just before it died, the next one reclaims. Seconds are reported, not bounded.
    if passes and max(passes) > RECOVERY_PASSES:
        violations.append(
            f"a killed agent's slot was reclaimed only after {max(passes)} validation passes "
            f"started after the kill (bound {RECOVERY_PASSES})"
        )
    if validation["dry_run_findings"]:
        violations.append(f"validation did not converge: {validation['dry_run_findings'][:5]}")

    # 7: every recorded file still exists somewhere safe
    env = git_env()
    rescue_refs = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.split()

    def blobs(*rev_args: str) -> set[str]:
        if not rev_args:
            return set()
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-list", "--objects", *rev_args],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        return {line.split(" ", 1)[0] for line in out.splitlines()}

    in_rescue = blobs(*rescue_refs)
    in_branches = blobs("--branches")
    lost_and_found = campaign.pool / ".lost+found"
    where: dict[str, int] = {"worktree": 0, "rescue_ref": 0, "branch": 0, "lost+found": 0}
    lost: list[dict[str, Any]] = []
    for w in writes:
        data = base64.b64decode(w["b64"])
        path = Path(w["path"])
        if path.is_file() and path.read_bytes() == data:
            where["worktree"] += 1
        elif w["blob"] in in_rescue:
            where["rescue_ref"] += 1
        elif w["blob"] in in_branches:
            where["branch"] += 1
        elif lost_and_found.is_dir() and any(
            p.is_file() and p.read_bytes() == data for p in lost_and_found.rglob(Path(w["rel"]).name)
        ):
            where["lost+found"] += 1
            violations.append(f"file only in .lost+found, not in a worktree or rescue ref: {w['agent']} {w['rel']}")
        else:
            lost.append({k: w[k] for k in ("agent", "wt", "token", "rel", "path", "blob", "t")})
    for item in lost:
        violations.append(f"lost file: {item}")
    stats["files"] = where
    stats["rescue_refs"] = len(rescue_refs)
    return {"violations": violations, "stats": stats, "integrity": checked}
