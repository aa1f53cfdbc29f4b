"""Where things found under a pool root go instead of being deleted."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

LOST_AND_FOUND = ".lost+found"


def move_aside(entry: Path, root: Path) -> Path | None:
    """Move `entry` into `<root>/.lost+found/` (an empty directory is just removed). Nothing is deleted.

    Returns where it went (the entry itself for a removed empty directory), None on failure. Blocking:
    call it from a worker thread.
    """
    try:
        if entry.is_dir() and not entry.is_symlink() and not any(entry.iterdir()):
            entry.rmdir()
            return entry
        target_dir = root / LOST_AND_FOUND
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{entry.name}-{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 10**6}"
        shutil.move(str(entry), str(target))
        return target
    except OSError:
        return None
