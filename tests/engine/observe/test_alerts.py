"""Alerts: each metric driven across its thresholds by a scripted history (the store's own calls)
raises and clears exactly one alert per state change; quarantined slots, rescue refs, unrepaired drift
and a full pool raise once and clear when the cause is gone; the alert command gets the alert as JSON,
runs once whichever server claims it, and a slow or failing one blocks and breaks nothing."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.models import Finding, ValidateResult
from agent_coord.engine.observe.alerts import AlertNotifier, AlertPolicy, AlertWatch
from agent_coord.engine.observe.metrics import MetricsReport, history_start, report_from_totals
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.records import Action, SlotState
from tests.conftest import git, make_repo
from tests.paths import ROOT

pytestmark = pytest.mark.anyio

HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY


def policy(**overrides: Any) -> AlertPolicy:
    values: dict[str, Any] = {
        "cooldown_s": 0.0,
        "pool_full_s": 300.0,
        "pool_max": 8,
        "command": (),
        "timeout_s": 10.0,
    }
    return AlertPolicy(**{**values, **overrides})


def watch(store: Store, slot_count: int = 0, **overrides: Any) -> AlertWatch:
    async def metrics(now: float) -> MetricsReport:
        totals = await store.metric_totals(now=now, window_s=WEEK, holds_since=history_start(now, WEEK))
        return report_from_totals(totals, now=now, window_s=WEEK, slot_count=slot_count)

    return AlertWatch(store, GitDriver(), policy(**overrides), metrics)


def allocations(ts: float, n: int, outcome: str = "ok", ms: float | None = 100.0) -> list[tuple[float, EventDraft]]:
    return [(ts + i * 0.001, EventDraft(Action.ALLOCATE, outcome, agent_id="a", duration_ms=ms)) for i in range(n)]


def events(ts: float, n: int, action: str) -> list[tuple[float, EventDraft]]:
    return [
        (ts + i, EventDraft(action, "detected" if action != Action.CAS_LOST else "lost", agent_id="a"))
        for i in range(n)
    ]


Step = tuple[list[tuple[float, EventDraft]], float, list[tuple[str, str | None]]]


async def run_script(store: Store, w: AlertWatch, metric: str, steps: Sequence[Step]) -> None:
    """Each step appends its events, evaluates at its time, and expects exactly these changes of the
    one metric's alert (and one `alert` event each)."""
    logged = 0
    for entries, at, expected in steps:
        if entries:
            await store.append_history(entries)
        changes = await w.evaluate(now=at)
        got = [(c.change, c.alert.severity if c.change == "raised" else None) for c in changes]
        assert got == expected, (at, [c.alert.message for c in changes])
        assert all(c.alert.key == f"metric:{metric}" for c in changes)
        alert_events = [e for e in await store.events() if e.action == Action.ALERT]
        assert len(alert_events) == logged + len(expected)
        logged = len(alert_events)
    assert await store.active_alerts() == []


async def test_success_rate_across_its_thresholds(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    t = time.time() - HOUR / 2  # all inside half an hour: the time-based metrics have too little span
    await run_script(
        store,
        watch(store),
        "allocation_success_rate",
        [
            (allocations(t, 20), t + 1, []),
            (allocations(t + 2, 2, "GIT_FAILED", None), t + 3, [("raised", "warning")]),  # 20/22
            (allocations(t + 4, 1, "GIT_FAILED", None), t + 5, [("raised", "failing")]),  # 20/23
            ([], t + 6, []),  # deduplicated
            (allocations(t + 7, 20), t + 8, [("raised", "warning")]),  # 40/43
            (allocations(t + 9, 20), t + 10, [("cleared", None)]),  # 60/63
        ],
    )
    history = await store.alert_history()
    assert [a.severity for a in history] == ["warning", "failing", "warning"]
    assert all(a.cleared_at is not None for a in history)
    raised = [e for e in await store.events() if e.action == Action.ALERT and e.outcome == "raised"]
    assert [e.detail.get("replaces") for e in raised] == [None, history[0].id, history[1].id]
    await store.close()


async def test_latency_p99_across_its_thresholds(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    t = time.time() - HOUR / 2
    await run_script(
        store,
        watch(store),
        "allocation_latency_p99",
        [
            (allocations(t, 20), t + 1, []),
            (allocations(t + 2, 1, ms=6000.0), t + 3, [("raised", "warning")]),
            (allocations(t + 4, 1, ms=12000.0), t + 5, [("raised", "failing")]),
            (allocations(t + 6, 78), t + 7, [("raised", "warning")]),  # p99 of 100 is the 6 s one
            (allocations(t + 8, 100), t + 9, [("cleared", None)]),
        ],
    )
    await store.close()


async def test_conflict_rate_across_its_thresholds(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    t = time.time() - HOUR / 2
    await run_script(
        store,
        watch(store),
        "conflict_rate",
        [
            (allocations(t, 100), t + 1, []),
            (allocations(t + 2, 2, "BRANCH_CONFLICT", None), t + 3, [("raised", "warning")]),  # 2/102
            (events(t + 4, 5, Action.CAS_LOST), t + 10, [("raised", "failing")]),  # 7/107
            (allocations(t + 11, 100), t + 12, [("raised", "warning")]),  # 7/207
            (allocations(t + 13, 500), t + 14, [("cleared", None)]),  # 7/707
        ],
    )
    await store.close()


async def test_pool_utilization_across_its_thresholds(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    t = time.time() - 6 * HOUR

    def hold(at: float, action: str) -> list[tuple[float, EventDraft]]:
        return [(at, EventDraft(action, "ok", agent_id="a", worktree_id="wt-01"))]

    await run_script(
        store,
        watch(store, slot_count=1),
        "pool_utilization",
        [
            (hold(t, Action.ALLOCATE) + hold(t + HOUR / 2, Action.RELEASE), t + HOUR, []),  # 50 %
            ([], t + 2 * HOUR, [("raised", "warning")]),  # 25 %
            ([], t + 3 * HOUR, [("raised", "failing")]),  # 17 %
            (hold(t + 3 * HOUR, Action.ALLOCATE), t + 4 * HOUR, [("raised", "warning")]),  # 37.5 %
            ([], t + 5 * HOUR, [("cleared", None)]),  # 50 %
        ],
    )
    await store.close()


@pytest.mark.parametrize(
    ("metric", "action", "warning", "failing"),
    [("agent_crash_rate", Action.AGENT_DEAD, 2, 2), ("stale_allocation_rate", Action.AGENT_STALE, 8, 14)],
)
async def test_rates_across_their_thresholds(
    tmp_path: Path, metric: str, action: str, warning: int, failing: int
) -> None:
    """A week's span (the log started ten days ago): the deaths raise, then leave the window."""
    store = await Store.open(tmp_path / "c.db")
    now = time.time() - 5 * DAY
    start = [(now - 10 * DAY, EventDraft(Action.REGISTER, "ok", agent_id="a"))]
    await run_script(
        store,
        watch(store),
        metric,
        [
            (start, now, []),
            (events(now - DAY, warning, action), now, [("raised", "warning")]),
            (events(now - DAY / 2, failing, action), now, [("raised", "failing")]),
            ([], now + 6.25 * DAY, [("raised", "warning")]),  # the first ones left the window
            ([], now + 6.75 * DAY, [("cleared", None)]),
        ],
    )
    await store.close()


async def test_a_cause_back_within_the_cool_down_is_shown_but_not_announced_again(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    t = time.time() - HOUR / 2
    w = watch(store, cooldown_s=600.0)
    await store.append_history(allocations(t, 18) + allocations(t + 1, 2, "GIT_FAILED", None))  # 90 %
    assert [c.alert.notify_raise for c in await w.evaluate(now=t + 2)] == [None]
    await store.append_history(allocations(t + 3, 30))
    assert [c.change for c in await w.evaluate(now=t + 4)] == ["cleared"]
    await store.append_history(allocations(t + 5, 6, "GIT_FAILED", None))  # 48/56
    (again,) = await w.evaluate(now=t + 6)
    assert again.change == "raised" and again.alert.notify_raise == "muted"
    assert [a.key for a in await store.active_alerts()] == ["metric:allocation_success_rate"]
    claimed = []
    while (notice := await store.claim_alert_notice("me", now=t + 7, max_age_s=HOUR)) is not None:
        claimed.append((notice[0].id, notice[1]))
    first = (await store.alert_history())[0].id
    assert claimed == [(first, "raised"), (first, "cleared")]  # the muted one is not announced
    await store.close()


async def quarantined_slot(store: Store, repo_path: Path, owner: str) -> tuple[int, str]:
    repo = await store.ensure_repo(str(repo_path), str(repo_path.parent / "pool"))
    slot = await store.claim_new_slot(repo, owner=owner, branch="feat", task=None, lease_s=300.0, pool_max=8)
    assert slot is not None
    moved = await store.transition(slot.id, expect_state=SlotState.ALLOCATING, changes={"state": SlotState.QUARANTINED})
    assert moved is not None
    return repo.id, slot.id


async def test_a_quarantined_slot_raises_once_for_its_owner_and_clears_when_freed(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    _, slot_id = await quarantined_slot(store, tmp_path / "repo", "agent-x")
    w = watch(store)
    (raised,) = await w.evaluate()
    assert (raised.change, raised.alert.kind, raised.alert.agent_id) == ("raised", "quarantined", "agent-x")
    assert await w.evaluate() == []
    await store.transition(slot_id, expect_state=SlotState.QUARANTINED, changes={"state": SlotState.FREE})
    assert [c.change for c in await w.evaluate()] == ["cleared"]
    await store.close()


async def test_the_pool_at_its_maximum_longer_than_the_setting(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    repo = await store.ensure_repo(str(tmp_path / "repo"), str(tmp_path / "pool"))
    slot = await store.claim_new_slot(repo, owner="a", branch="b", task=None, lease_s=300.0, pool_max=1)
    assert slot is not None and slot.since is not None
    w = watch(store, pool_max=1, pool_full_s=60.0)
    assert await w.evaluate(now=slot.since + 30) == []
    (full,) = await w.evaluate(now=slot.since + 61)
    assert (full.alert.kind, full.alert.repo_id, full.alert.agent_id) == ("pool_full", repo.id, None)
    assert "POOL_EXHAUSTED" in full.alert.message
    assert await w.evaluate(now=slot.since + 120) == []
    await store.transition(slot.id, expect_state=SlotState.ALLOCATING, changes={"state": SlotState.FREE})
    assert [c.change for c in await w.evaluate(now=slot.since + 121)] == ["cleared"]
    await store.close()


async def test_a_rescue_ref_raises_for_its_owner_and_clears_when_the_ref_is_deleted(tmp_path: Path) -> None:
    repo_path = make_repo(tmp_path)
    ref = "refs/agent-coord/rescue/feat/20260101T000000Z.000"
    git(repo_path, "update-ref", ref, "HEAD")
    store = await Store.open(tmp_path / "c.db")
    repo = await store.ensure_repo(str(repo_path), str(tmp_path / "pool"))
    detail = {"rescue_ref": ref, "owner": "agent-x", "reason": "dead agent"}
    await store.log(
        EventDraft(
            Action.RESCUE,
            "saved",
            agent_id="validator",
            repo_id=repo.id,
            worktree_id="wt-01",
            branch="feat",
            detail=detail,
        )
    )
    w = watch(store)
    (raised,) = await w.evaluate()
    assert (raised.alert.kind, raised.alert.agent_id, raised.alert.detail["rescue_ref"]) == ("rescue", "agent-x", ref)
    assert "git stash apply --index" in raised.alert.message
    assert await w.evaluate(check_refs=True) == []  # the ref is still there
    git(repo_path, "update-ref", "-d", ref)
    assert await w.evaluate() == []  # refs are looked at after a full pass only
    assert [c.change for c in await w.evaluate(check_refs=True)] == ["cleared"]
    assert await w.evaluate(check_refs=True) == []  # the event is not seen twice
    await store.close()


async def test_drift_left_unrepaired_raises_and_clears_when_a_pass_no_longer_finds_it(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "c.db")
    w = watch(store)
    stuck = Finding(kind="leftover_directory", path="/pool/x", detail="not a worktree", action="left for a person")
    busy = Finding(kind="operation_in_progress", worktree_id="wt-02", detail="rebase", action="left alone")
    fixed = Finding(kind="stale_lease", worktree_id="wt-03", detail="lapsed", action="reclaim", repaired=True)
    (raised,) = await w.evaluate(validation=ValidateResult(findings=[stuck, busy, fixed], duration_ms=1.0))
    assert raised.alert.key == "drift:leftover_directory:/pool/x"
    assert await w.evaluate() == []  # no pass ran: nothing is known about drift
    assert await w.evaluate(validation=ValidateResult(findings=[stuck], duration_ms=1.0)) == []
    assert [c.change for c in await w.evaluate(validation=ValidateResult(findings=[], duration_ms=1.0))] == ["cleared"]
    await store.close()


async def test_a_hosts_drift_is_cleared_only_by_that_hosts_passes(tmp_path: Path) -> None:
    """Each host validates only its own directories: another host's pass knows nothing of its drift."""
    store = await Store.open(tmp_path / "c.db")
    here, there = watch(store), watch(store)
    here.host, there.host = "host-a", "host-b"
    stuck = Finding(kind="leftover_directory", path="/b/pool/x", detail="not a worktree", action="left for a person")
    (raised,) = await there.evaluate(validation=ValidateResult(findings=[stuck], duration_ms=1.0))
    assert raised.alert.detail["host"] == "host-b"
    assert await here.evaluate(validation=ValidateResult(findings=[], duration_ms=1.0)) == []
    assert [c.change for c in await there.evaluate(validation=ValidateResult(findings=[], duration_ms=1.0))] == [
        "cleared"
    ]
    await store.close()


RECORDER = """
import json, os, sys, time
data = json.load(sys.stdin)
with open(sys.argv[1], "a") as fh:
    fh.write(json.dumps({"pid": os.getpid(), "alert": data}) + "\\n")
if sys.argv[2] == "fail":
    print("webhook said no", file=sys.stderr)
    sys.exit(3)
if sys.argv[2] == "hang":
    time.sleep(120)
"""


def recorder(tmp_path: Path, mode: str) -> tuple[tuple[str, ...], Path]:
    script = tmp_path / "alert_command.py"
    script.write_text(RECORDER)
    out = tmp_path / f"received-{mode}.jsonl"
    return (sys.executable, str(script), str(out), mode), out


async def raise_one(store: Store) -> None:
    t = time.time() - 60
    await store.append_history(allocations(t, 18) + allocations(t + 1, 2, "GIT_FAILED", None))
    assert len(await watch(store).evaluate()) == 1


async def test_the_alert_command_gets_json_once_whichever_server_claims_it(tmp_path: Path) -> None:
    command, out = recorder(tmp_path, "ok")
    store = await Store.open(tmp_path / "c.db")
    other = await Store.open(tmp_path / "c.db")  # a second server's connection
    await raise_one(store)
    a = AlertNotifier(store, policy(command=command), "server-a")
    b = AlertNotifier(other, policy(command=command), "server-b")
    ran: list[int] = []

    async def go(n: AlertNotifier) -> None:
        ran.append(await n.dispatch())

    async with anyio.create_task_group() as tg:
        tg.start_soon(go, a)
        tg.start_soon(go, b)
    assert sorted(ran) == [0, 1]
    (line,) = out.read_text().splitlines()
    alert = json.loads(line)["alert"]
    assert alert["state"] == "raised" and alert["severity"] == "warning" and alert["kind"] == "metric"
    assert alert["key"] == "metric:allocation_success_rate" and "allocation_success_rate" in alert["message"]
    (notified,) = [e for e in await store.events() if e.action == Action.ALERT and e.outcome == "notified"]
    assert notified.detail["phase"] == "raised"
    await store.close()
    await other.close()


async def test_a_failing_or_missing_command_is_logged_and_nothing_breaks(tmp_path: Path) -> None:
    command, out = recorder(tmp_path, "fail")
    store = await Store.open(tmp_path / "c.db")
    await raise_one(store)
    assert await AlertNotifier(store, policy(command=command), "s").dispatch() == 1
    assert out.exists()
    await store.append_history(allocations(time.time() - 30, 200))
    assert [c.change for c in await watch(store).evaluate()] == ["cleared"]
    assert await AlertNotifier(store, policy(command=(str(tmp_path / "no-such-command"),)), "s").dispatch() == 1
    failed = [e.detail for e in await store.events() if e.outcome == "notify_failed"]
    assert failed[0]["error"] == "exited 3" and failed[0]["stderr"] == "webhook said no"
    assert failed[1]["phase"] == "cleared" and failed[1]["error"].startswith("could not start")
    await store.close()


async def started_pid(out: Path) -> int:
    with anyio.fail_after(30):
        while not out.exists() or not out.read_text().endswith("\n"):
            await anyio.sleep(0.02)
    return int(json.loads(out.read_text())["pid"])


def ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_a_hanging_command_is_ended_at_its_timeout(tmp_path: Path) -> None:
    command, out = recorder(tmp_path, "hang")
    store = await Store.open(tmp_path / "c.db")
    await raise_one(store)
    # Long enough for the command to start on a loaded machine (it sleeps for 120 s, so it still times out).
    assert await AlertNotifier(store, policy(command=command, timeout_s=5.0), "s").dispatch() == 1
    assert ended(await started_pid(out))
    (failed,) = [e for e in await store.events() if e.outcome == "notify_failed"]
    assert failed.detail["error"] == "timed out after 5 s"
    await store.close()


async def test_an_allocation_does_not_wait_for_a_hanging_command(coord: Any, tmp_path: Path) -> None:
    """The command runs apart from every tool call; a server stopping ends it."""
    command, out = recorder(tmp_path, "hang")
    await raise_one(coord.store)
    notifier = AlertNotifier(coord.store, policy(command=command, timeout_s=600.0), "s")
    async with anyio.create_task_group() as tg:
        tg.start_soon(notifier.dispatch)
        pid = await started_pid(out)
        result = await coord.pool.allocate("feat-during-alert")
        assert result.worktree_id and not ended(pid)  # granted while the command still hangs
        tg.cancel_scope.cancel()
    assert ended(pid)


async def test_heartbeat_and_status_carry_the_alerts(coord: Any, tmp_path: Path) -> None:
    _, slot_id = await quarantined_slot(coord.store, Path(coord.settings.repo), coord.agent_id)
    await quarantined_slot(coord.store, tmp_path / "elsewhere", "someone-else")
    await coord.alert_watch.evaluate()
    beat = await coord.heartbeat()
    assert [(a.kind, a.worktree_id) for a in beat.alerts] == [("quarantined", slot_id)]
    status = await coord.status()  # the configured repository's: the other one's quarantine is not shown
    assert [(a.kind, a.worktree_id) for a in status.alerts] == [("quarantined", slot_id)]
    assert next(iter(status.model_dump())) == "alerts"
    repo_id = (await coord.store.slot(slot_id)).repo_id
    for i in range(7):  # rescue refs nobody deleted: the heartbeat carries the worst and newest five
        detail = {"rescue_ref": f"refs/agent-coord/rescue/b/{i}", "owner": coord.agent_id, "reason": "r"}
        await coord.store.log(
            EventDraft(
                Action.RESCUE, "saved", agent_id="v", repo_id=repo_id, worktree_id=f"wt-{i}", branch="b", detail=detail
            )
        )
    await coord.alert_watch.evaluate()
    beat = await coord.heartbeat()
    assert [a.kind for a in beat.alerts] == ["quarantined", "rescue", "rescue", "rescue", "rescue"]
    assert len((await coord.status()).alerts) == 8


async def test_lease_renewal_gaps_are_rolled_up_per_agent_and_hour(coord: Any) -> None:
    agent = await coord.store.agent(coord.agent_id)
    t = agent.last_heartbeat
    for gap in (10.0, 10.0, 60.0, 250.0):
        t += gap
        await coord.store.heartbeat(
            coord.agent_id, status="active", note=None, lease_s=300.0, server_pid=coord.identity.server_pid, now=t
        )
    gaps = await coord.store.lease_gaps(since=agent.last_heartbeat - HOUR)
    assert gaps.renewals == 4 and gaps.max_s == pytest.approx(250.0)
    assert gaps.agents == {coord.agent_id: (4, pytest.approx(250.0))}
    assert [n for _, n in gaps.histogram] == [2, 1, 1]


def test_the_terminal_dashboard_shows_alerts_first_and_counts_what_does_not_fit() -> None:
    from dataclasses import replace

    from agent_coord.engine.models import AlertView
    from tests.ui.test_dashboard import fake_snapshot, screen_text

    snapshot = fake_snapshot()
    alerts = [
        AlertView(kind="quarantined", severity="failing", message=f"wt-0{i} is quarantined [see status]", since=1.0)
        for i in range(1, 4)
    ]
    with_alerts = replace(snapshot, status=snapshot.status.model_copy(update={"alerts": alerts}))
    lines = screen_text(with_alerts, 80, 24)
    assert lines[1] == "! FAILING wt-01 is quarantined [see status]"
    assert lines[3].endswith("wt-03 is quarantined [see status]") and lines[4].startswith("SLOT")
    short = screen_text(with_alerts, 60, 12)
    assert short[1].startswith("! FAILING wt-01") and short[2].startswith("! … 2 more alerts")
    assert short[3].startswith("SLOT")


async def test_status_on_the_command_line_prints_the_alerts_first(
    coord: Any, env: dict[str, str], tmp_path: Path
) -> None:
    import os
    import subprocess

    await quarantined_slot(coord.store, Path(coord.settings.repo), "agent-x")
    await coord.alert_watch.evaluate()
    run = subprocess.run(
        [sys.executable, "-m", "agent_coord", "status"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    first = run.stdout.splitlines()[0]
    assert first.startswith("FAILING quarantined: wt-") and "is quarantined" in first


async def test_the_validating_server_evaluates_alerts_at_every_check(coord: Any) -> None:
    t = time.time() - 60
    await coord.store.append_history(allocations(t, 18) + allocations(t + 1, 2, "GIT_FAILED", None))
    assert await coord.validator_loop.tick() is not None  # the first check takes the lease and validates
    assert [a.key for a in await coord.store.active_alerts()] == ["metric:allocation_success_rate"]
    await coord.store.append_history(allocations(t + 2, 40))
    await coord.validator_loop.tick()
    assert await coord.store.active_alerts() == []


async def test_retention_keeps_active_alerts_and_drops_old_cleared_ones_and_gap_rollups(tmp_path: Path) -> None:
    from agent_coord.engine.observe.retention import Retention, prune
    from tests.engine.observe.test_advise import agent

    store = await Store.open(tmp_path / "c.db")
    old = time.time() - 10 * DAY
    await quarantined_slot(store, tmp_path / "repo", "agent-x")
    w = watch(store)
    await store.append_history(allocations(old, 18) + allocations(old + 1, 2, "GIT_FAILED", None))
    await w.evaluate(now=old + 2)
    await store.append_history(allocations(old + 3, 40))
    await w.evaluate(now=old + 4)  # the metric's alert cleared ten days ago; the quarantine's is active
    await store.register_agent(agent("agent-old", old))
    await store.renewal_history("agent-old", 4_000_001, [old + 60, old + 120], 300.0)
    assert (await store.lease_gaps(since=old - HOUR)).renewals == 2
    await prune(store, Retention(keep_s=2 * DAY, rollups_keep_s=8 * DAY))
    assert [a.kind for a in await store.alert_history()] == ["quarantined"]
    assert (await store.lease_gaps(since=old - HOUR)).renewals == 0
    await store.close()


def doc_scripts() -> dict[str, str]:
    """The example alert commands of docs/alerts.md, by what they need."""
    text = (ROOT / "docs" / "alerts.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```sh\n")[1:]]
    return {("curl" if "curl" in b else "notify-send"): b for b in blocks if b.startswith("#!/bin/sh")}


@pytest.mark.skipif(not all(map(shutil.which, ("jq", "curl", "sh"))), reason="the examples need sh, jq and curl")
async def test_the_documented_alert_commands_work(tmp_path: Path) -> None:
    import http.server
    import threading

    scripts = doc_scripts()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "notify-send").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path / "notified"}\n')
    for name, body in [("notify-send", None), ("notify", scripts["notify-send"]), ("webhook", scripts["curl"])]:
        if body is not None:
            (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    posted: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posted.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.handle_request, daemon=True).start()
    store = await Store.open(tmp_path / "c.db")
    await raise_one(store)
    (alert,) = await store.active_alerts()
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env["AGENT_COORD_WEBHOOK_URL"] = f"http://127.0.0.1:{server.server_port}/hook"
    for name in ("notify", "webhook"):
        notifier = AlertNotifier(store, policy(command=(str(bin_dir / name),)), "s")
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            assert await notifier.run_command(alert, "raised") == (
                "notified",
                pytest.approx({"duration_ms": 1.0}, abs=1e9),
            )
    server.server_close()
    assert (tmp_path / "notified").read_text().splitlines()[:3] == [
        "-u",
        "normal",
        "agent-coord: metric raised",
    ]
    assert json.loads(posted[0])["text"].startswith("agent-coord warning raised: allocation_success_rate is warning")
    await store.close()


async def test_the_web_dashboards_document_carries_the_alerts(coord: Any) -> None:
    from agent_coord.dashboard.snapshot import take_snapshot
    from agent_coord.web.views import state_document

    await quarantined_slot(coord.store, Path(coord.settings.repo), "agent-x")
    await coord.alert_watch.evaluate()
    doc = state_document(await take_snapshot(coord, None), [], {}, host="h", read_only=True, version=1)
    (alert,) = doc["alerts"]
    assert alert["kind"] == "quarantined" and alert["severity"] == "failing" and "quarantined" in alert["message"]


_causes = st.lists(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["warning", "failing"]), max_size=3),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=_causes)
def test_any_sequence_of_causes_gives_one_event_per_change(tmp_path: Path, steps: list[dict[str, str]]) -> None:
    """Whatever the evaluations find, each cause has at most one active alert, the active ones are what
    the last evaluation found, and every change of a cause (new, other severity, gone) is one event."""
    from agent_coord.engine.store.alerts import AlertDraft

    async def run() -> None:
        db = tmp_path / f"p-{time.monotonic_ns()}.db"
        store = await Store.open(db)
        before: dict[str, str] = {}
        for i, found in enumerate(steps):
            wanted = [
                AlertDraft(f"k:{k}", "drift", "failing" if sev == "failing" else "warning", f"{k} {sev}")
                for k, sev in sorted(found.items())
            ]
            changes = await store.sync_alerts(wanted, kinds=frozenset({"drift"}), now=1000.0 + i, cooldown_s=0.0)
            after = {f"k:{k}": sev for k, sev in found.items()}
            changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
            assert sorted(c.alert.key for c in changes) == sorted(changed)
            assert {a.key: a.severity for a in await store.active_alerts()} == after
            before = after
        logged = [e for e in await store.events() if e.action == Action.ALERT]
        assert len(logged) == len(await store.alert_history()) + sum(
            1 for a in await store.alert_history() if a.cleared_at is not None and a.notify_clear != "replaced"
        )
        await store.close()

    anyio.run(run)


def test_an_alert_command_that_is_not_a_json_list_is_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_coord.config import SettingsError, load_settings

    monkeypatch.setenv("AGENT_COORD_ALERT_COMMAND", "notify-send agent-coord")
    with pytest.raises(SettingsError, match="AGENT_COORD_ALERT_COMMAND"):
        load_settings()


async def test_an_evaluation_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    """It runs every check: the dashboards and the radar watch `data_version`, which must stay still."""
    store = await Store.open(tmp_path / "c.db")
    watcher = await Store.open(tmp_path / "c.db")
    await quarantined_slot(store, tmp_path / "repo", "agent-x")
    w = watch(store)
    assert len(await w.evaluate()) == 1
    before = await watcher.data_version()
    assert await w.evaluate() == []
    assert await w.evaluate(validation=ValidateResult(findings=[], duration_ms=1.0), check_refs=True) == []
    assert await watcher.data_version() == before
    await store.log(
        EventDraft(
            Action.RESCUE, "saved", agent_id="v", worktree_id="wt-9", branch="b", detail={"rescue_ref": "refs/x"}
        )
    )
    assert [c.alert.kind for c in await w.evaluate()] == ["rescue"]
    assert await watcher.data_version() != before
    await store.close()
    await watcher.close()


def test_the_web_page_shows_the_alerts_first(env: dict[str, str], repo: Path, tmp_path: Path) -> None:
    """In a real headless Chromium: the Alerts section is the first of the page, worst first, and
    accessible (axe-core, as the web dashboard's own browser tests run it)."""
    from tests.ui.test_web_browser import AXE, CHROMIUM_ARGS, _browser_or_skip
    from tests.web_support import web_server

    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    async def seed() -> None:
        store = await Store.open(Path(env["AGENT_COORD_DB"]))
        await raise_one(store)
        await quarantined_slot(store, repo, "agent-x")
        await watch(store).evaluate()
        await store.close()

    Path(env["AGENT_COORD_DB"]).parent.mkdir(parents=True, exist_ok=True)
    anyio.run(seed)
    with web_server(env) as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(bypass_csp=True).new_page()
            page.goto(server.url)
            page.wait_for_selector("#alert-list li")
            first = page.evaluate("() => document.querySelector('main > section:not([hidden])').id")
            assert first == "alerts"
            items = page.locator("#alert-list li").all_inner_texts()
            assert items[0].startswith("failing quarantined wt-01") and items[1].startswith("warning metric")
            page.add_script_tag(path=str(AXE))
            found = page.evaluate(
                "async () => (await axe.run(document.getElementById('alerts'), {resultTypes: ['violations']}))"
                ".violations.map(v => v.id)"
            )
            assert found == []
        finally:
            browser.close()


async def test_a_running_server_raises_the_alert_and_runs_the_command(env: dict[str, str], tmp_path: Path) -> None:
    """The wiring end to end: a real stdio server's validator loop raises, its alert task runs the
    command, its `status` tool shows the alert first."""
    from mcp import Client

    from tests.conftest import server_params

    command, out = recorder(tmp_path, "ok")
    db = Path(env["AGENT_COORD_DB"])
    db.parent.mkdir(parents=True, exist_ok=True)
    store = await Store.open(db)
    t = time.time() - 60
    await store.append_history(allocations(t, 18) + allocations(t + 1, 2, "GIT_FAILED", None))
    await store.close()
    extra = {"AGENT_COORD_ALERT_COMMAND": json.dumps(command), "AGENT_COORD_VALIDATE_EVERY_S": "3"}
    async with Client(server_params(env, AGENT_COORD_AGENT_ID="agent-alerted", **extra), mode="legacy") as client:
        with anyio.fail_after(60):
            while not out.exists() or not out.read_text().endswith("\n"):
                await anyio.sleep(0.05)
        received = json.loads(out.read_text().splitlines()[0])["alert"]
        assert received["key"] == "metric:allocation_success_rate" and received["state"] == "raised"
        status = (await client.call_tool("status", {})).structured_content
        assert status is not None and next(iter(status)) == "alerts"
        assert [a["kind"] for a in status["alerts"]] == ["metric"]
