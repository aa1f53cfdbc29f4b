"""The background validator between passes: the lease taken over from a dead holder, and a pass set
off as soon as a held slot's owner dies (in process, real store and git; the cross-process version of
both is in test_liveness and the fault campaign)."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_coord.engine.store.records import SlotState
from agent_coord.engine.validate.hosts import host_lease
from agent_coord.engine.validate.loop import LeaseHolder, ValidatorLoop, check_every
from tests.agent_proc import set_agent
from tests.conftest import git

pytestmark = pytest.mark.anyio


def validator_lease(coord: Any) -> str:
    """The lease whose holder validates this host's pool."""
    return str(host_lease(coord.identity.host))


def dead_process() -> tuple[int, float]:
    proc = subprocess.Popen(["true"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, created


def loop_of(coord: Any, **identity: Any) -> ValidatorLoop:
    me = replace(coord.identity, **identity)
    return ValidatorLoop(replace(coord.ctx, identity=me), coord.validator, every_s=60, check_s=1)


async def started(coord: Any) -> list[Any]:
    return [e for e in await coord.store.events() if e.action == "validate" and e.outcome == "started"]


def test_check_is_a_third_of_the_interval_at_most_a_heartbeat() -> None:
    assert check_every(3.0, 10.0) == 1.0
    assert check_every(300.0, 10.0) == 10.0


def test_holder_round_trips_and_anything_else_is_unjudgeable() -> None:
    h = LeaseHolder("agent-1/x", "host", "boot", 42, 1.5, 3.25)
    assert LeaseHolder.parse(h.encode()) == h
    assert LeaseHolder.parse(replace(h, start_s=None).encode()) == replace(h, start_s=None)
    assert (
        LeaseHolder.parse(
            '{"agent_id": "a", "host": "h", "boot_id": "b", "pid": 1e999, "create_time": 1, "start_s": null}'
        )
        is None
    )
    assert LeaseHolder.parse("agent-1/4242") is None  # written by an earlier version: can only lapse


@given(st.text(max_size=60))
def test_any_holder_text_parses_or_is_none(text: str) -> None:
    parsed = LeaseHolder.parse(text)
    assert parsed is None or isinstance(parsed, LeaseHolder)


async def test_lease_of_a_dead_server_is_taken_over_at_once(coord: Any) -> None:
    pid, created = dead_process()
    dead = replace(LeaseHolder.of(coord.identity), agent_id="gone-agent", pid=pid, create_time=created)
    assert await coord.store.take_lease(validator_lease(coord), dead.encode(), ttl_s=3600)
    loop = loop_of(coord)
    why = await loop.tick()
    assert why is not None and "took the lease over" in why and f"process {pid} is gone" in why
    holder, _ = await coord.store.lease(validator_lease(coord))
    assert holder == loop.holder
    assert [e.detail["why"] for e in await started(coord)] == [why]


async def test_lease_of_a_live_server_is_left_alone(coord: Any) -> None:
    other = loop_of(coord, agent_id="other")  # this very process: alive
    assert await other.tick() == "interval"
    mine = loop_of(coord, agent_id="mine", server_pid=1, server_create_time=0.0)
    assert mine.holder != other.holder
    assert await mine.tick() is None
    assert (await coord.store.lease(validator_lease(coord)))[0] == other.holder
    # Nor can a CAS naming a holder that no longer holds it take the lease.
    assert not await coord.store.take_lease(validator_lease(coord), mine.holder, 60, replace="someone else")


async def test_a_dead_owner_sets_off_a_pass_between_intervals(coord: Any, env: dict[str, str]) -> None:
    loop = loop_of(coord)
    assert await loop.tick() == "interval"
    assert await loop.tick() is None  # nothing held, next interval a minute away
    alloc = await coord.pool.allocate("feat/dies")
    assert await loop.tick() is None  # its owner lives
    pid, created = dead_process()
    set_agent(env, coord.agent_id, pid=pid, pid_create_time=created)
    assert await loop.tick() == "an owner died"
    (slot,) = await coord.store.slots()
    assert slot.id == alloc.worktree_id and slot.state == SlotState.FREE and slot.owner is None
    assert await loop.tick() is None


async def test_a_slot_the_pass_cannot_take_sets_off_no_second_pass(coord: Any, env: dict[str, str]) -> None:
    loop = loop_of(coord)
    assert await loop.tick() == "interval"
    alloc = await coord.pool.allocate("feat/locked")
    git(Path(alloc.path), "worktree", "lock", "--reason", "mine", alloc.path)
    pid, created = dead_process()
    set_agent(env, coord.agent_id, pid=pid, pid_create_time=created)
    assert await loop.tick() == "an owner died"
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.BUSY  # locked: never touched
    assert await loop.tick() is None  # same slot, same version: waits for the next full pass
    assert len(await started(coord)) == 2


async def test_only_provable_deaths_count_for_a_takeover(coord: Any) -> None:
    me = psutil.Process()
    pid, created = dead_process()
    mine = LeaseHolder.of(coord.identity)
    loop = loop_of(coord, agent_id="heir")
    # On another host nothing can be proved; nor can a create time alone (a stepped clock moves it).
    for holder in (
        replace(mine, agent_id="far", host="elsewhere", pid=pid, create_time=created),
        replace(mine, agent_id="old", create_time=me.create_time() - 5, start_s=None),
    ):
        assert await coord.store.take_lease(validator_lease(coord), holder.encode(), ttl_s=3600, replace=loop.holder)
        await coord.store.release_lease(validator_lease(coord), holder.encode())
        assert await coord.store.take_lease(validator_lease(coord), holder.encode(), ttl_s=3600)
        assert await loop.tick() is None, holder
        await coord.store.release_lease(validator_lease(coord), holder.encode())
    # With the start counted from boot, another start under the pid is proof.
    assert mine.start_s is not None
    reused = replace(mine, agent_id="reused", start_s=mine.start_s - 1)
    assert await coord.store.take_lease(validator_lease(coord), reused.encode(), ttl_s=3600)
    why = await loop.tick()
    assert why is not None and "belongs to another process" in why


async def test_a_takeover_between_two_of_our_checks_starts_a_pass(coord: Any) -> None:
    """We held the lease at our last check; it lapsed to another server, which died mid-pass."""
    loop = loop_of(coord)
    assert await loop.tick() == "interval"
    assert await loop.tick() is None
    pid, created = dead_process()
    other = replace(LeaseHolder.of(coord.identity), agent_id="other", pid=pid, create_time=created, start_s=None)
    assert await coord.store.take_lease(validator_lease(coord), other.encode(), ttl_s=3600, replace=loop.holder)
    why = await loop.tick()
    assert why is not None and why.startswith("took the lease over")


async def test_the_loop_outlives_a_failing_check(coord: Any, settings: Any) -> None:
    from agent_coord.engine.store import Store

    closed = await Store.open(settings.db)
    await closed.close()  # every check of this loop now fails
    loop = ValidatorLoop(replace(coord.ctx, store=closed), coord.validator, every_s=60, check_s=0.02)
    with anyio.move_on_after(0.3):
        await loop.run()  # logs each failure and goes on; only the cancellation ends it
    assert await loop_of(coord).tick() == "interval"  # and it held nothing that blocks the others
