"""What a store CAS cycle needs in either implementation: the lease, the pool's slot paths, and the
common start (a barrier time) and pacing of the worker processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

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
