"""Fault campaign: SIGKILL agents and servers (inside transactions, between allocation phases) while
they allocate, write and release; then validate, and check from the event log, the database, git and
what every agent was told that no slot had two owners, no acknowledged operation went unrecorded, no
killed agent's slot stayed held, and no file any agent wrote was lost.

The CI subset runs a short campaign (3 agents, ~14 kills, < 60 s). The full one (>= 100 kills) is
`pytest -m slow tests/system/test_faults.py` or `python -m bench.faults`. The campaign itself lives in
bench/faults.py and bench/fault_*.py (the instrumented server in bench/fault_server.py); RELIABILITY.md
has the results.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent_coord.store_target import PostgresUrl
from bench import fault_fs
from bench.fault_check import grant_intervals
from bench.faults import CampaignConfig, answers, run_campaign, summarize
from bench.pg_cluster import Cluster


def _event(
    i: int, action: str, wt: str | None, token: int | None, outcome: str = "ok", **detail: Any
) -> dict[str, Any]:
    return {
        "id": i,
        "ts": 1000.0 + i,
        "agent_id": f"agent-{i}",
        "action": action,
        "worktree_id": wt,
        "outcome": outcome,
        "fencing_token": token,
        "detail": json.dumps(detail),
    }


def test_checker_accepts_a_clean_history() -> None:
    events = [
        _event(1, "allocate", "wt-01", 1),
        _event(2, "allocate", "wt-02", 2),
        _event(3, "release", "wt-01", 1),
        _event(4, "allocate", "wt-01", 3),
        _event(5, "reclaim", "wt-01", 3, outcome="rescued"),
        _event(6, "reclaim", "wt-03", 4, outcome="rolled_back"),  # a claim that never became a grant
        _event(7, "repair", "wt-02", 2, kind="orphaned_allocation"),
        _event(8, "allocate", "wt-01", 5),
    ]
    intervals, violations, orphan_closes = grant_intervals(events)
    assert violations == []
    assert orphan_closes == 1
    assert intervals[("wt-01", 1)]["close"]["id"] == 3
    assert intervals[("wt-01", 3)]["close"]["action"] == "reclaim"
    assert intervals[("wt-02", 2)]["close"]["action"] == "repair"
    assert intervals[("wt-01", 5)]["close"] is None


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([_event(1, "allocate", "wt-01", 1), _event(2, "allocate", "wt-01", 2)], "double grant"),
        (
            [_event(1, "allocate", "wt-01", 5), _event(2, "release", "wt-01", 5), _event(3, "allocate", "wt-01", 4)],
            "token not increasing",
        ),
        (
            [_event(1, "allocate", "wt-01", 5), _event(2, "release", "wt-01", 5), _event(3, "allocate", "wt-02", 5)],
            "granted twice",
        ),
        ([_event(1, "allocate", "wt-01", 5), _event(2, "release", "wt-01", 6)], "while the open grant has token 5"),
    ],
)
def test_checker_catches_what_it_must(events: list[dict[str, Any]], expected: str) -> None:
    _, violations, _ = grant_intervals(events)
    assert any(expected in v for v in violations), violations


def _assert_clean(report: dict[str, Any]) -> None:
    assert report["integrity"] == "ok"
    assert report["violations"] == [], summarize(report)
    stats = report["stats"]
    assert stats["acknowledged_grants"] > 0, summarize(report)
    assert stats["writes"] > 0, summarize(report)
    assert sum(stats["files"].values()) == stats["writes"]
    assert report["validation"]["dry_run_findings"] == []


@pytest.mark.timeout(360)
def test_fault_campaign_ci_subset(tmp_path: Path) -> None:
    report = run_campaign(CampaignConfig.quick(), tmp_path)
    print(summarize(report))
    _assert_clean(report)
    assert report["kills"] >= 5, summarize(report)
    assert report["agents_killed"] >= 1 and report["servers_killed"] >= 1, summarize(report)


@pytest.mark.timeout(420)
def test_fault_campaign_ci_subset_on_postgresql(tmp_path: Path, pg_url: PostgresUrl, pg_cluster: Cluster) -> None:
    """The same campaign with every server on one PostgreSQL database: servers are SIGKILLed inside
    transactions (the server rolls those back when their connection drops) and between phases, and
    the PostgreSQL server itself is stopped mid-campaign. Meanwhile a call to a running server is
    answered STORE_UNAVAILABLE (counted; whether one lands depends on the kills, since a server started
    during the outage refuses to start: tests/engine/store/test_store_engines.py proves the answer on
    its own); once the database is back the servers reconnect and the agents are granted again."""

    def outage() -> None:
        """Down until an agent's call was answered STORE_UNAVAILABLE, 12 s at most."""
        pg_cluster.stop()
        deadline = time.monotonic() + 12
        while answers(tmp_path / "journals", "STORE_UNAVAILABLE") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        pg_cluster.start()

    config = replace(CampaignConfig.quick(), store_url=pg_url.secret_url(), store_outage_at_s=8.0)
    report = run_campaign(config, tmp_path, store_outage=outage)
    print(summarize(report))
    _assert_clean(report)
    (outage_seen,) = report["store_outages"]
    back = outage_seen["at"] + outage_seen["seconds"]
    # `"ev": "grant"` lines only: a kill may have cut a journal's last line short.
    grants_after = [
        r
        for p in (tmp_path / "journals").glob("*.jsonl")
        for r in (json.loads(line) for line in p.read_text().splitlines() if '"ev": "grant"' in line)
        if r["t"] > back
    ]
    assert grants_after, summarize(report)
    assert report["kills"] >= 5, summarize(report)
    assert report["agents_killed"] >= 1 and report["servers_killed"] >= 1, summarize(report)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fault_campaign_full_on_postgresql(tmp_path: Path, pg_url: PostgresUrl) -> None:
    report = run_campaign(replace(CampaignConfig(), store_url=pg_url.secret_url()), tmp_path)
    print(summarize(report))
    _assert_clean(report)
    assert report["kills"] >= 100, summarize(report)
    assert report["died_inside_transaction"] >= 1, summarize(report)
    assert report["died_between_phases"] >= 1, summarize(report)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fault_campaign_full(tmp_path: Path) -> None:
    report = run_campaign(CampaignConfig(), tmp_path)
    print(summarize(report))
    _assert_clean(report)
    assert report["kills"] >= 100, summarize(report)
    assert report["died_inside_transaction"] >= 1, summarize(report)
    assert report["died_between_phases"] >= 1, summarize(report)
    assert report["stats"]["killed_agents_slots"] >= 1, summarize(report)


@pytest.mark.timeout(120)
def test_filesystem_campaign_ci_subset(tmp_path: Path) -> None:
    """Symlink swaps, replaced and deleted slot directories, redirected `.git` pointers and hand edits of
    `.git/worktrees/*` while agents work: nothing outside the pool changes, no written byte is lost."""
    report = fault_fs.run_fs_campaign(fault_fs.FsConfig.quick(), tmp_path)
    print(fault_fs.summarize(report))
    assert report["violations"] == [], fault_fs.summarize(report)
    assert sum(v for k, v in report["counts"].items() if k.startswith("trick:")) >= 3, fault_fs.summarize(report)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_filesystem_campaign_full(tmp_path: Path) -> None:
    report = fault_fs.run_fs_campaign(fault_fs.FsConfig(), tmp_path)
    print(fault_fs.summarize(report))
    assert report["violations"] == [], fault_fs.summarize(report)


@pytest.mark.anyio
async def test_slow_release_is_not_reclaimed_under_a_live_agent(make_settings: Any) -> None:
    import sqlite3

    import anyio

    from agent_coord.engine.coordinator import Coordinator

    settings = make_settings(stale_after_s=2.0)
    async with (
        Coordinator.open(settings, register=True, agent_id="slow-releaser") as agent,
        Coordinator.open(settings, register=False, agent_id="validator") as validator,
    ):
        grant = await agent.pool.allocate("feature")
        detach = agent.git.detach
        outlived = anyio.Event()
        validated = anyio.Event()

        async def slow_detach(path: Path) -> None:
            # A release that outlives the lease it started with (a big rescue, a slow disk), while the
            # agent stays alive and keeps renewing; it goes on once a validation has run beside it.
            while time.time() <= grant.lease_expires_at:
                await agent.heartbeat()
                await anyio.sleep(0.1)
            await agent.heartbeat()
            outlived.set()
            await validated.wait()
            await detach(path)

        agent.git.detach = slow_detach  # type: ignore[method-assign]
        released: list[Any] = []

        async def release() -> None:
            released.append(await agent.pool.release(worktree_id=grant.worktree_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(release)
            with anyio.fail_after(60):
                await outlived.wait()
            findings = await validator.validate(repair=True)
            validated.set()
        with sqlite3.connect(settings.db) as conn:
            actions = [
                r[0]
                for r in conn.execute(
                    "SELECT action || ':' || outcome FROM events WHERE worktree_id = ? ORDER BY id",
                    (grant.worktree_id,),
                )
            ]
        assert released and released[0].state == "FREE"
        # The release was acknowledged, so it must be in the log, and nobody else may have touched the slot.
        assert "release:ok" in actions, (actions, [f.kind for f in findings.findings])
        assert not any(a.startswith("reclaim:") for a in actions), actions
