"""The background validator of a server: one server at a time (the holder of a lease row) validates
with repair at start-up and every `validate_every_s`, and between those passes checks, every
`check_every_s`, whether a held slot's owner has died; when one has, it validates at once.

Why check between passes: a crashed agent's slot should come back within seconds, not after up to a
whole validation interval (300 s by default). The check reads the store twice and asks the process
table about each owner; it never runs git and never repairs anything itself. It only starts the same
repairing pass the interval starts, so everything a pass guarantees still holds (work saved to a
rescue ref first, every change a CAS on the version judged).

Why the lease can be taken over before it lapses: the lease lasts 1.5 intervals, so a holder that
was SIGKILLed would otherwise leave every reclaim undone for that long. The holder string names the
server process (host, boot id, pid, create time); any other server that finds that process provably
gone takes the lease over by CAS at its next check and validates at once. A holder on another host
cannot be judged and is waited out, as before.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import anyio

from agent_coord.engine.context import EngineContext, OverEngine
from agent_coord.engine.liveness.judge import Identity, judge, process_gone, server_gone
from agent_coord.engine.models import ValidateResult
from agent_coord.engine.observe.alerts import AlertWatch
from agent_coord.engine.observe.retention import Retention, prune
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import HELD_STATES, Action, Slot, SlotState, of_this_host
from agent_coord.engine.validate.hosts import VALIDATOR_LEASE, HostLapser, host_lease
from agent_coord.engine.validate.validator import Validator

logger = logging.getLogger("agent-coord")
LEASE_INTERVALS = 1.5  # the lease outlives one interval, so a holder mid-pass keeps it


def check_every(validate_every_s: float, heartbeat_active_s: float) -> float:
    """A third of the interval, so that a death is acted on within one interval even when the holder
    died too (one check to notice it, one pass); and never rarer than an active agent's heartbeat."""
    return min(validate_every_s / 3, heartbeat_active_s)


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds the validator lease: one server process, not an agent id (two servers may serve one
    agent id, and must not both hold the lease)."""

    agent_id: str
    host: str
    boot_id: str
    pid: int
    create_time: float
    start_s: float | None  # seconds from boot to the server's start (see liveness.start_since_boot)

    @classmethod
    def of(cls, me: Identity) -> LeaseHolder:
        return cls(me.agent_id, me.host, me.boot_id, me.server_pid, me.server_create_time, me.server_start_s)

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str) -> LeaseHolder | None:
        """None for anything else (a holder written by an older version): it can only lapse."""
        try:
            raw = json.loads(text)
            start = raw["start_s"]
            return cls(
                str(raw["agent_id"]),
                str(raw["host"]),
                str(raw["boot_id"]),
                int(raw["pid"]),
                float(raw["create_time"]),
                None if start is None else float(start),
            )
        except (ValueError, TypeError, KeyError, OverflowError):
            return None

    def gone(self, me: Identity) -> str | None:
        """Why the holder's server is provably gone, or None (a holder whose pid seems reused but that
        recorded no start counted from boot is waited out: see liveness.process_state)."""
        return process_gone(
            f"validator server of {self.agent_id}",
            host=self.host,
            boot=self.boot_id,
            pid=self.pid,
            created=self.create_time,
            since_boot=self.start_s,
            here=(me.host, me.boot_id),
        )


class ValidatorLoop(OverEngine):
    def __init__(
        self,
        ctx: EngineContext,
        validator: Validator,
        *,
        every_s: float,
        check_s: float,
        retention: Retention | None = None,
        alerts: AlertWatch | None = None,
    ):
        super().__init__(ctx)
        self.retention = retention
        self.alerts = alerts
        self.validator = validator
        self.every_s = every_s
        self.check_s = check_s
        self.holder = LeaseHolder.of(ctx.identity).encode()
        self.lease_name = host_lease(ctx.identity.host)
        self.hosts = HostLapser(ctx)
        self._held = False
        self._next_full = 0.0  # monotonic; 0 = at once
        self._seen: set[tuple[str, int]] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # validation is best effort; the next check tries again
                logger.warning("background validation failed", exc_info=True)
            await anyio.sleep(self.check_s)

    async def release(self) -> None:
        """Hand the leases on now rather than make the others wait for them to lapse."""
        await self.store.release_lease(self.lease_name, self.holder)
        await self.store.release_lease(VALIDATOR_LEASE, self.holder)

    async def tick(self) -> str | None:
        """One check; returns why a pass ran (None when none did)."""
        why = await self._host_tick()
        if await self._take_lease(VALIDATOR_LEASE) is not None:
            await self.hosts.lapse(host_ttl_s=self.every_s * LEASE_INTERVALS)
        return why

    async def _host_tick(self) -> str | None:
        took_over = await self._take_lease(self.lease_name)
        if took_over is None:
            self._held = False
            return None
        # Taken over from a dead holder counts as gained even if we held it at our last check: it
        # lapsed to another server in between, which died, perhaps in the middle of a pass.
        gained, self._held = not self._held or bool(took_over), True
        suspects = await self.suspects()
        now = time.monotonic()
        if gained or now >= self._next_full:
            why = "interval" if not took_over else f"took the lease over: {took_over}"
            self._next_full = now + self.every_s
        elif suspects - self._seen:
            why = "an owner died"
        else:
            why = None
        # Remembered before the pass: a slot the pass could not repair (locked, say) keeps its
        # version and waits for the next full pass instead of setting off a pass every check.
        self._seen = suspects
        if why is not None:
            await self.store.log(
                EventDraft(
                    Action.VALIDATE,
                    "started",
                    agent_id=self.identity.agent_id,
                    detail={"interval_s": self.every_s, "why": why},
                )
            )
            result = await self.validator.validate(repair=True)
            if self.retention is not None:
                await prune(self.store, self.retention)
            await self._evaluate_alerts(result)
        else:
            await self._evaluate_alerts(None)
        return why

    async def _evaluate_alerts(self, result: ValidateResult | None) -> None:
        """Every check: the one validating server raises and clears alerts (drift and whether rescue
        refs are still there: after a full pass, which ran git anyway)."""
        if self.alerts is None:
            return
        try:
            await self.alerts.evaluate(validation=result, check_refs=result is not None)
        except Exception:  # alerts are best effort: validation and the next check go on
            logger.warning("alert evaluation failed", exc_info=True)

    async def _take_lease(self, name: str) -> str | None:
        """Hold the lease `name` for another LEASE_INTERVALS; None when another server holds it. Returns
        "" normally, or why the previous holder was judged gone when its lease was taken over."""
        ttl = self.every_s * LEASE_INTERVALS
        current = await self.store.lease(name)
        if current is None or current[0] == self.holder or current[1] < time.time():
            return "" if await self.store.take_lease(name, self.holder, ttl) else None
        other = LeaseHolder.parse(current[0])
        gone = other.gone(self.identity) if other is not None else None
        if gone is None:
            return None
        return gone if await self.store.take_lease(name, self.holder, ttl, replace=current[0]) else None

    async def suspects(self) -> set[tuple[str, int]]:
        """Held slots (id, version) that a pass would likely take back: the owner is dead or stale, or
        the server that began a transition in flight is gone. A hint only: the pass judges again."""
        host, shared = self.identity.host, self.store.postgres
        slots = await self.store.slots(None)
        held = [s for s in slots if s.state in HELD_STATES and of_this_host(s.host, host, shared=shared)]
        if not held:
            return set()
        agents = {a.id: a for a in await self.store.live_agents()}  # every owner is among them
        me, now = self.identity, time.time()
        out: set[tuple[str, int]] = set()
        for s in held:
            agent = agents.get(s.owner) if s.owner else None
            if _lapsed_release(s, now):
                out.add((s.id, s.version))
            elif agent is None:
                # A reclaimer that is not an agent (the CLI) under its own lease is at work.
                if s.state != SlotState.RELEASING or s.lease_expires_at is None:
                    out.add((s.id, s.version))
            elif not judge(agent, host=me.host, boot=me.boot_id, now=now).alive or (
                s.state != SlotState.BUSY and server_gone(agent, host=me.host, boot=me.boot_id)
            ):
                out.add((s.id, s.version))
        return out


def _lapsed_release(s: Slot, now: float) -> bool:
    return s.state == SlotState.RELEASING and s.lease_expires_at is not None and s.lease_expires_at < now
