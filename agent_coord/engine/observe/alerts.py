"""Alerts: the causes a person or an agent should hear of, raised once, recorded, cleared when gone.

Causes (one active alert per `key`):

* ``metric:<name>``: a metric with a target is ``warning`` or ``failing`` (its severity is the state);
  ok → warning → failing and back is one alert event per change.
* ``quarantined:<slot>``: a slot is QUARANTINED (its owner can act: the work is in it).
* ``rescue:<ref>``: a rescue ref was written; cleared when the ref is gone from the repository (the
  work was recovered and the ref deleted). Its owner can act.
* ``drift:<kind>:<subject>``: a repairing validation found drift it did not repair; cleared when a
  later pass no longer finds it.
* ``pool_full:<repo id>``: every slot of a repository held at the pool's maximum for longer than
  ``alert_pool_full_s``: allocations are refused POOL_EXHAUSTED. Every agent of the pool can act.

The validating server evaluates (`ValidatorLoop.tick`); every server runs the alert command for an
alert whose run nobody has claimed yet (`AlertNotifier`), so it runs once whichever sees it first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.config import Settings
from agent_coord.engine.git.driver import RESCUE_NAMESPACE, GitDriver
from agent_coord.engine.guidance import RECOVERY
from agent_coord.engine.models import ValidateResult
from agent_coord.engine.observe.metrics import MetricsReport, format_value
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.alerts import Alert, AlertChange, AlertDraft, NoticePhase
from agent_coord.engine.store.records import HELD_STATES, Action, Repo, Slot, SlotState
from agent_coord.platform.termination import detached_group, end_tree

logger = logging.getLogger("agent-coord")

# Findings a repairing pass leaves on purpose: an owner's operation to finish, a moved worktree its
# owner's release puts back, a person's lock, a notice of a repair. Not drift that needs anyone.
DRIFT_LEFT_ON_PURPOSE = frozenset({"operation_in_progress", "moved_worktree", "locked_worktree", "quarantine_cleared"})
# A rescue ref written longer ago than this before alerts were first evaluated is not announced.
FIRST_LOOK_S = 86400.0
# A raise or clearance whose command nobody ran within this is not run any more.
NOTICE_MAX_AGE_S = 3600.0
STDERR_TAIL = 500

MetricsAt = Callable[[float], Awaitable[MetricsReport]]


@dataclass(frozen=True)
class AlertPolicy:
    cooldown_s: float
    pool_full_s: float
    pool_max: int
    command: tuple[str, ...]
    timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> AlertPolicy:
        return cls(
            cooldown_s=settings.alert_cooldown_s,
            pool_full_s=settings.alert_pool_full_s,
            pool_max=settings.pool_max,
            command=settings.alert_command,
            timeout_s=settings.alert_timeout_s,
        )


def metric_alerts(report: MetricsReport) -> list[AlertDraft]:
    out: list[AlertDraft] = []
    for m in report.metrics:
        if m.state not in ("warning", "failing"):
            continue
        out.append(
            AlertDraft(
                key=f"metric:{m.name}",
                kind="metric",
                severity="failing" if m.state == "failing" else "warning",
                message=f"{m.name} is {m.state}: {format_value(m.value, m.unit)} (target {m.target}); {m.detail}",
                detail={"metric": m.name, "value": m.value, "unit": m.unit, "target": m.target, "state": m.state},
            )
        )
    return out


def quarantine_alerts(slots: Sequence[Slot]) -> list[AlertDraft]:
    return [
        AlertDraft(
            key=f"quarantined:{s.id}",
            kind="quarantined",
            severity="failing",
            message=f"{s.id} ({s.branch or 'detached'}) is quarantined: it holds work that could not be saved; "
            "nothing is run in it until a person saves or removes it",
            agent_id=s.owner,
            repo_id=s.repo_id,
            worktree_id=s.id,
            detail={"path": s.path, "branch": s.branch},
        )
        for s in slots
        if s.state == SlotState.QUARANTINED
    ]


def pool_full_alerts(slots: Sequence[Slot], repos: dict[int, str], policy: AlertPolicy, now: float) -> list[AlertDraft]:
    """A repository whose every slot is taken, at the pool's maximum, since longer than the setting.
    It became full when the last of its held slots was granted: any release since would have been
    followed by a later grant to fill it again."""
    out: list[AlertDraft] = []
    for repo_id in sorted({s.repo_id for s in slots}):
        # Quarantined slots do not count towards the maximum (see `Store.claim_new_slot`).
        mine = [s for s in slots if s.repo_id == repo_id and s.state != SlotState.QUARANTINED]
        held = [s for s in mine if s.state in HELD_STATES]
        if len(mine) < policy.pool_max or any(s.state == SlotState.FREE for s in mine) or not held:
            continue
        full_since = max(s.since or s.created_at for s in held)
        if now - full_since < policy.pool_full_s:
            continue
        minutes = (now - full_since) / 60
        out.append(
            AlertDraft(
                key=f"pool_full:{repo_id}",
                kind="pool_full",
                severity="warning",
                message=f"the pool of {repos.get(repo_id, '?')} has been at its maximum ({len(mine)} slots) for "
                f"{minutes:.0f} min: new allocations are refused POOL_EXHAUSTED; release a worktree you no "
                "longer need, or raise AGENT_COORD_POOL_MAX",
                repo_id=repo_id,
                detail={"slots": len(mine), "held": len(held), "pool_max": policy.pool_max, "since": full_since},
            )
        )
    return out


def drift_alerts(result: ValidateResult, host: str | None = None) -> list[AlertDraft]:
    """Unrepaired findings of a validation on `host` (each host validates only its own directories)."""
    out: list[AlertDraft] = []
    for f in [*result.findings, *result.skipped]:
        if f.repaired or f.kind in DRIFT_LEFT_ON_PURPOSE:
            continue
        subject = f.worktree_id or f.path or "-"
        out.append(
            AlertDraft(
                key=f"drift:{f.kind}:{subject}",
                kind="drift",
                severity="warning",
                message=f"validation could not repair {f.kind} at {subject}: {f.detail} ({f.action})",
                agent_id=f.agent_id,
                worktree_id=f.worktree_id,
                detail={"finding": f.kind, "path": f.path, "action": f.action}
                | ({"host": host} if host is not None else {}),
            )
        )
    return out


def rescue_alert(
    ref: str, *, owner: str | None, repo_id: int | None, worktree_id: str | None, branch: str | None, reason: str
) -> AlertDraft:
    return AlertDraft(
        key=f"rescue:{ref}",
        kind="rescue",
        severity="warning",
        message=f"uncommitted work of {worktree_id or '?'} ({branch or 'detached'}) was saved to {ref} ({reason}); "
        f"restore it with {RECOVERY.replace('<rescue_ref>', ref)} in a worktree of that branch, then delete the ref",
        agent_id=owner,
        repo_id=repo_id,
        worktree_id=worktree_id,
        detail={"rescue_ref": ref, "branch": branch, "reason": reason},
    )


class AlertWatch:
    """Evaluates the causes and records the changes (one transaction per evaluation)."""

    def __init__(
        self, store: Store, git: GitDriver, policy: AlertPolicy, metrics: MetricsAt, *, host: str | None = None
    ) -> None:
        self.store = store
        self.git = git
        self.policy = policy
        self.metrics = metrics
        self.host = host  # drift and rescue refs are judged for this host's clones only

    async def evaluate(
        self, *, now: float | None = None, validation: ValidateResult | None = None, check_refs: bool = False
    ) -> list[AlertChange]:
        """Metrics, quarantined slots, a full pool and new rescue refs every time; drift when a
        repairing pass's `validation` is given; whether rescue refs still exist when `check_refs`."""
        now = time.time() if now is None else now
        kinds = {"metric", "quarantined", "pool_full"}
        slots = await self.store.slots()
        every_repo = await self.store.repos()
        repos = {r.id: r for r in every_repo if self.host is None or r.host in (self.host, None)}
        wanted = metric_alerts(await self.metrics(now))
        wanted += quarantine_alerts(slots)
        wanted += pool_full_alerts(slots, {r.id: r.path for r in every_repo}, self.policy, now)
        if validation is not None:
            kinds.add("drift")
            wanted += drift_alerts(validation, self.host)
            wanted += await self._other_hosts_drift()
        rescues, cursor = await self.store.rescues_to_alert(since_ts=now - FIRST_LOOK_S)
        for e in rescues:
            ref = e.detail.get("rescue_ref")
            if isinstance(ref, str) and ref:
                owner = e.detail.get("owner")
                wanted.append(
                    rescue_alert(
                        ref,
                        owner=owner if isinstance(owner, str) else e.agent_id,
                        repo_id=e.repo_id,
                        worktree_id=e.worktree_id,
                        branch=e.branch,
                        reason=str(e.detail.get("reason", "")),
                    )
                )
        if check_refs:
            kinds.add("rescue")
            fresh = {d.key for d in wanted}
            wanted += [
                AlertDraft(a.key, a.kind, a.severity, a.message, a.agent_id, a.repo_id, a.worktree_id, a.detail)
                for a in await self._rescues_still_there(repos)
                if a.key not in fresh
            ]
        return await self.store.sync_alerts(
            wanted, kinds=frozenset(kinds), now=now, cooldown_s=self.policy.cooldown_s, rescue_cursor=cursor
        )

    async def _other_hosts_drift(self) -> list[AlertDraft]:
        """The drift alerts another host's validation raised: only that host can see whether they hold."""
        return [
            AlertDraft(a.key, a.kind, a.severity, a.message, a.agent_id, a.repo_id, a.worktree_id, a.detail)
            for a in await self.store.active_alerts()
            if a.kind == "drift" and a.detail.get("host") not in (None, self.host)
        ]

    async def _rescues_still_there(self, repos: dict[int, Repo]) -> list[Alert]:
        """The active rescue alerts whose ref is still in its repository (or that cannot be checked)."""
        active = [a for a in await self.store.active_alerts() if a.kind == "rescue"]
        refs: dict[int, set[str] | None] = {}
        kept: list[Alert] = []
        for a in active:
            repo = repos.get(a.repo_id) if a.repo_id is not None else None
            if repo is None:
                kept.append(a)
                continue
            if repo.id not in refs:
                refs[repo.id] = await self._rescue_refs(Path(repo.path))
            there = refs[repo.id]
            if there is None or a.detail.get("rescue_ref") in there:
                kept.append(a)
        return kept

    async def _rescue_refs(self, repo: Path) -> set[str] | None:
        try:
            out = await self.git.run(repo, "for-each-ref", "--format=%(refname)", RESCUE_NAMESPACE)
        except Exception:  # an unreadable repository keeps its alerts: nothing is known to be gone
            logger.debug("could not list rescue refs of %s", repo, exc_info=True)
            return None
        return {line.strip() for line in out.splitlines() if line.strip()}


class AlertNotifier:
    """Runs the alert command once per raise and per clearance, claimed in the store by CAS, one at a
    time, each bounded by the policy's timeout; a command that hangs, fails or cannot start is logged
    as an event and nothing else waits for it (allocations never run it)."""

    def __init__(self, store: Store, policy: AlertPolicy, holder: str) -> None:
        self.store = store
        self.policy = policy
        self.holder = holder

    async def dispatch(self, *, now: float | None = None) -> int:
        """Run the command for every alert nobody has run it for; returns how many ran."""
        if not self.policy.command:
            return 0
        ran = 0
        while True:
            claimed = await self.store.claim_alert_notice(
                self.holder, now=time.time() if now is None else now, max_age_s=NOTICE_MAX_AGE_S
            )
            if claimed is None:
                return ran
            alert, phase = claimed
            outcome, detail = await self.run_command(alert, phase)
            await self.store.log(
                EventDraft(
                    Action.ALERT,
                    outcome,
                    agent_id=alert.agent_id,
                    repo_id=alert.repo_id,
                    worktree_id=alert.worktree_id,
                    detail={"alert": alert.id, "key": alert.key, "phase": phase, **detail},
                )
            )
            ran += 1

    async def run_command(self, alert: Alert, phase: NoticePhase) -> tuple[str, dict[str, object]]:
        """("notified", …) when the command exited 0, else ("notify_failed", why)."""
        payload = json.dumps(alert.as_json(phase), sort_keys=True).encode()
        argv = list(self.policy.command)
        started = time.monotonic()
        try:
            process = await anyio.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **detached_group()
            )
        except OSError as exc:
            return "notify_failed", {"error": f"could not start: {exc.strerror or exc}"}
        stderr = b""
        try:
            with anyio.fail_after(self.policy.timeout_s):
                assert process.stdin is not None and process.stderr is not None
                # A command that does not read its input is its own business.
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await process.stdin.send(payload)
                await process.stdin.aclose()
                async for chunk in process.stderr:
                    stderr = (stderr + chunk)[-STDERR_TAIL:]
                code = await process.wait()
        except TimeoutError:
            return "notify_failed", {"error": f"timed out after {self.policy.timeout_s:g} s"}
        finally:
            # Timed out, or this server is stopping: the whole tree goes (a shell's children would
            # otherwise keep running, and the pipe open).
            if process.returncode is None:
                _end_command(process.pid)
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await process.aclose()
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        if code != 0:
            return "notify_failed", {
                "error": f"exited {code}",
                "stderr": stderr.decode("utf-8", "replace").strip(),
                "duration_ms": duration_ms,
            }
        return "notified", {"duration_ms": duration_ms}


def _end_command(pid: int) -> None:
    end_tree(pid, hard=True)
    if sys.platform != "win32":  # its own session: the group outlives a leader that exited
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
