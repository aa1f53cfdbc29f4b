"""Where things found under a pool root go instead of being deleted."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent_coord.engine.git.confinement import LOST_AND_FOUND, Bounds, Unconfined, check_entry

__all__ = ["LOST_AND_FOUND", "move_aside"]


def move_aside(entry: Path, bounds: Bounds) -> Path | None:
    """Move `entry` into `<pool root>/.lost+found/` (an empty directory is just removed). Nothing is deleted.

    Only an entry directly inside the pool root, and not leading to the repository, passes the guard
    (`confinement.check_entry`), checked right before. The entry is renamed, never copied: a symlink
    moves as a link, and nothing is ever deleted after a copy. Returns where it went (the entry itself
    for a removed empty directory), None when it was refused or failed. Blocking: call it from a worker
    thread.
    """
    try:
        real = check_entry(bounds, entry)
        if real.is_dir() and not real.is_symlink() and not any(real.iterdir()):
            real.rmdir()
            return entry
        target_dir = bounds.pool_root / LOST_AND_FOUND
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{entry.name}-{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6}"
        os.rename(real, target)
        return target
    except (OSError, Unconfined):
        return None
