"""Starting a process apart from ours, and ending processes, the same way on every platform.

POSIX process groups (`os.killpg`) and SIGKILL do not exist on Windows; psutil's `terminate()` and
`kill()` do the platform's own thing (SIGTERM/SIGKILL, or TerminateProcess), and a process tree is
walked through psutil instead of a group.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from typing import Any

import psutil


def detached_group() -> dict[str, Any]:
    """Keyword arguments for `anyio.open_process`/`subprocess.Popen`: a child that the user's Ctrl-C
    does not reach (its own session on POSIX, its own process group on Windows)."""
    if sys.platform == "win32":
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def end_tree(pid: int, *, hard: bool) -> None:
    """Ask `pid` and every process below it to stop (`hard`: kill them). Gone already is fine."""
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            proc.kill() if hard else proc.terminate()


def end_process(pid: int, *, hard: bool) -> None:
    """Ask `pid` alone to stop (`hard`: kill it). Gone already is fine."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        proc.kill() if hard else proc.terminate()
