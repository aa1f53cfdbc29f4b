"""Helpers for tests of the seal a release leaves on a clean slot (agent_coord/engine/git/seal.py)."""

from __future__ import annotations

import os
import subprocess
import tempfile
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


def new_file_mtime_ns(directory: Path) -> int:
    """The modification time the file system gives a file created now (a new inode, as git's
    `index.lock` is)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=".clock-probe-")
    try:
        os.write(fd, b"x")
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(name)


async def file_clock_past(ns: int, probe_dir: Path, deadline_s: float = 30.0) -> None:
    """Wait until the file system stamps a new file in a later second than `ns` (a condition, polled).
    Not `time.time()`: file times come from the kernel's coarse clock, which runs up to a tick (a few
    ms) behind it, so a file written just after `time.time()` entered a new second may still be stamped
    in the old one. That clock never goes back: once a probe is past, so is every later write.
    `probe_dir`: on the slot's file system, outside the slot (whose change times the seal checks)."""
    give_up = time.monotonic() + deadline_s
    while new_file_mtime_ns(probe_dir) // 1_000_000_000 <= ns // 1_000_000_000:
        assert time.monotonic() < give_up, "the file system's clock did not move on"
        await anyio.sleep(0.05)


def beside(wt: Path) -> Path:
    """A directory on the slot's file system, outside the slot and the pool root: the test's own."""
    return wt.parent.parent


def index_mtime_ns(wt: Path) -> int:
    admin = subprocess.run(
        ["git", "-C", str(wt), "rev-parse", "--absolute-git-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return os.lstat(Path(admin) / "index").st_mtime_ns


async def index_not_racy(wt: Path) -> None:
    """Write the slot's index again once the file system's clock has left the second of its newest file:
    then no file shares the index's second. Such "racily clean" files git re-reads at every status, and
    a seal is not trusted over them (git/seal.py). `--force-write-index` writes the index whatever git
    thinks of it (a status writes only an index git finds racy, by its tracked files alone)."""
    newest = newest_file_mtime_ns(wt)
    await file_clock_past(newest, beside(wt))
    subprocess.run(
        ["git", "-C", str(wt), "update-index", "-q", "--refresh", "--force-write-index"],
        check=True,
        capture_output=True,
    )
    assert index_mtime_ns(wt) // 1_000_000_000 > newest // 1_000_000_000
