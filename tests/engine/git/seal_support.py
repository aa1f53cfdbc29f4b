"""Helpers for tests of the seal a release leaves on a clean slot (agent_coord/engine/git/seal.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from agent_coord.engine.git import seal

SHORT_MARGIN_NS = 50_000_000  # more than a kernel tick, so the coarse ctime clock is still covered


def short_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seal, "MARGIN_NS", SHORT_MARGIN_NS)


def newest_change_ns(root: Path) -> int:
    newest = os.lstat(root).st_ctime_ns
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_ctime_ns)
    return newest


async def quiet_for_the_margin(root: Path, deadline_s: float = 30.0) -> None:
    """Wait until nothing under `root` changed within the seal's margin (a condition, polled)."""
    give_up = time.monotonic() + deadline_s
    while time.time_ns() - newest_change_ns(root) <= 2 * seal.MARGIN_NS:
        assert time.monotonic() < give_up, f"{root} kept changing"
        await anyio.sleep(seal.MARGIN_NS / 1e9)
