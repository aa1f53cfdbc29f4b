"""What a store CAS cycle needs in either implementation: the lease, the pool's slot paths, the
common start (a barrier time) and pacing of the worker processes, and the tally they report.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

LEASE_S = 300.0


def slot_paths(pool_max: int) -> list[str]:
    """The paths the pool would pass as live worktrees: every slot `claim_new_slot` can create."""
    return [f"/bench/pool/wt-{i:02d}" for i in range(1, pool_max + 1)]


def start_phase(rate: float) -> float:
    """Paced processes start at random offsets within one period, as independent agents would."""
    return random.Random(os.getpid()).uniform(0, 1 / rate) if rate > 0 else 0.0


async def wait_until(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def wait_until_sync(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        time.sleep(delay)


class Pacer:
    """When each cycle is due: `rate` per second from a random phase, or back to back at rate 0."""

    def __init__(self, start: float, duration: float, rate: float) -> None:
        self.start, self.end, self.rate = start, start + duration, rate
        self.phase = start_phase(rate)
        self.k = 0

    def next_delay(self) -> float | None:
        """Seconds to wait before the next cycle (0: due now), or None when the run is over."""
        due = self.start + self.phase + self.k / self.rate if self.rate > 0 else time.time()
        if due >= self.end:
            return None
        self.k += 1
        return max(0.0, due - time.time())


@dataclass
class Tally:
    """What one worker measured, in the shape the driver reads."""

    cycles: list[float] = field(default_factory=list)
    ops: list[float] = field(default_factory=list)
    lost: int = 0
    busy_to_caller: int = 0

    def op(self, started: float) -> None:
        self.ops.append((time.perf_counter() - started) * 1000)

    def cycle(self, started: float) -> None:
        self.cycles.append((time.perf_counter() - started) * 1000)

    def result(self, busy_retried: int, elapsed: float) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "ops": self.ops,
            "lost_cas": self.lost,
            "busy_retried": busy_retried,
            "busy_to_caller": self.busy_to_caller,
            "elapsed": elapsed,
        }
