"""Helpers for tests of the seal a release leaves on a clean slot (agent_coord/engine/git/seal.py)."""

from __future__ import annotations

import os
import subprocess
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


def newest_file_mtime_ns(root: Path) -> int:
    newest = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime_ns)
    return newest


async def second_over(ns: int, deadline_s: float = 30.0) -> None:
    """Wait until the clock has left the second of `ns` (a condition, polled)."""
    give_up = time.monotonic() + deadline_s
    while time.time_ns() // 1_000_000_000 <= ns // 1_000_000_000:
        assert time.monotonic() < give_up, "the clock did not move on"
        await anyio.sleep(0.05)


async def index_not_racy(wt: Path) -> None:
    """Once the second of the newest file is over, a `git status` that may write the index back does
    (git rewrites an index holding "racily clean" entries), and no entry is racy any more."""
    await second_over(newest_file_mtime_ns(wt))
    subprocess.run(["git", "-C", str(wt), "status", "--porcelain"], check=True, capture_output=True)
