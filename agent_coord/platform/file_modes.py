"""Files only their owner may read: the database, its WAL, and their directory.

POSIX: mode 0600 (0700 for the directory). Windows has no mode bits (`os.chmod` only toggles the
read-only flag): a file under the user's profile (`%LOCALAPPDATA%`, the default place) inherits an
ACL that admits only that user, SYSTEM and administrators, which is the protection relied on there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def create_private_file(path: Path) -> None:
    """Create `path` (and its directory) readable by its owner only, before anything else opens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE)
    os.close(fd)
    make_private(path)


def make_private(path: Path) -> None:
    """Owner-only where the platform has mode bits; on Windows the profile's ACL decides (see above)."""
    if sys.platform != "win32":
        os.chmod(path, PRIVATE_FILE)
