"""Process handling for the fault campaign: is a pid alive, SIGKILL it, wait for servers to be gone."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from bench.fault_server import read_flag


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sigkill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_servers_gone(flags: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [read_flag(str(f))[1] for f in flags.glob("*.flag")]
        if not any(p and alive(p) for p in pids):
            return
        time.sleep(0.1)
    for f in flags.glob("*.flag"):
        pid = read_flag(str(f))[1]
        if pid and alive(pid):
            sigkill(pid)
