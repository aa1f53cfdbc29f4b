"""The slot of a `claude --worktree` session comes back when Claude Code exits, even without SessionEnd.

Claude Code runs SessionEnd when a session ends normally, and that hook gives the slot back. A Claude
Code killed or crashed runs no hook; its slot would stay BUSY until some agent-coord server happens to
validate. So the WorktreeCreate hook starts this small detached watcher for the Claude Code process
(`CLAUDE_PID`, set by Claude Code in every hook's environment). It waits for that process to exit
(a pidfd on Linux: no polling), then runs the session-end hook as that session's agent: clean slots
are released at once, dirty ones stay held, exactly as SessionEnd does; after a normal end it finds
nothing left to do. It imports nothing heavy while it waits, and gives up after the hook lease.

Run as `python -m agent_coord.claude.watch --pid P --started T --agent-id A --slot PATH`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import time

import psutil

from agent_coord.platform.process_identity import CLOCK_TICKS, start_since_boot
from agent_coord.platform.termination import detached_group

POLL_S = 1.0  # where there is no pidfd
SESSION_END_TIMEOUT_S = 120.0
WAIT_BOUND_S = 7 * 86400.0  # the hook lease (agent_coord.claude.hooks.HOOK_LEASE_S)
CREATE_TIME_SLACK_S = 0.01  # psutil reports create times rounded to clock ticks
TICK_SLACK_S = 1.5 / CLOCK_TICKS  # starts since boot are whole ticks: equal, or another process


def _is_same_process(pid: int, started: float, since_boot: float | None = None) -> bool:
    """Is `pid` still the process that started then? By its start counted from boot where /proc has it
    (a clock step moves Linux's wall-clock create times, never this), else by its create time."""
    try:
        proc = psutil.Process(pid)
        now_since_boot = start_since_boot(pid) if since_boot is not None else None
        if since_boot is not None and now_since_boot is not None:
            same = abs(now_since_boot - since_boot) <= TICK_SLACK_S
        else:
            same = abs(proc.create_time() - started) <= CREATE_TIME_SLACK_S
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_for_exit(pid: int, started: float, bound_s: float = WAIT_BOUND_S, since_boot: float | None = None) -> bool:
    """True once the process `pid` that started at `started` has exited; False if `bound_s` ran out."""
    deadline = time.monotonic() + bound_s
    pidfd: int | None = None
    if sys.platform == "linux":  # elsewhere (and on kernels before 5.3) the loop polls
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(pid)
    try:
        # Checked after the pidfd is open: from here on the pidfd names this process, not a reuse.
        if not _is_same_process(pid, started, since_boot):
            return True
        while (remaining := deadline - time.monotonic()) > 0:
            if pidfd is not None:
                readable, _, _ = select.select([pidfd], [], [], remaining)
                if readable:  # a pidfd turns readable when its process exits
                    return True
            else:
                time.sleep(min(remaining, POLL_S))
                if not _is_same_process(pid, started, since_boot):
                    return True
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def spawn(pid: int, agent_id: str, origin: str, slot: str) -> bool:
    """Start the watcher for Claude Code process `pid`, detached (its own session, no inherited
    stdio: Claude Code reads the hook's stdout as the worktree path). False when `pid` is not there."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        return False
    argv = [sys.executable, "-m", __name__, "--pid", str(pid), "--started", repr(started)]
    since_boot = start_since_boot(pid)
    if since_boot is not None:
        argv += ["--since-boot", repr(since_boot)]
    subprocess.Popen(
        [*argv, "--agent-id", agent_id, "--origin", origin, "--slot", slot],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",  # holds no directory the user may want to remove
        close_fds=True,
        **detached_group(),
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent_coord.claude.watch")
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--started", type=float, required=True)
    parser.add_argument("--since-boot", type=float, default=None)
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--origin", default="explicit")
    parser.add_argument("--slot", required=True)
    args = parser.parse_args(argv)
    if not wait_for_exit(args.pid, args.started, since_boot=args.since_boot):
        return 0
    payload = {"cwd": args.slot, "hook_event_name": "SessionEnd", "reason": "claude-exited"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            # As the agent the hook made, with its origin (a session's id is not an explicit one). An
            # id generated from the Claude Code process cannot be proved ours from here (that process
            # is gone): such a slot is refused here and comes back by validation, its work saved.
            [
                sys.executable,
                "-c",
                "from agent_coord.cli import main; main()",
                "hook",
                "session-end",
                "--as-agent",
                args.agent_id,
                "--as-origin",
                args.origin,
            ],
            input=json.dumps(payload).encode(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=SESSION_END_TIMEOUT_S,
            check=False,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
