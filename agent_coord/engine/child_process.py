"""Run a short child program (git, find) to its end: one worker thread starts it, feeds it and reads it.

asyncio's own machinery for children (a transport, pipe protocols and a watcher thread started for each
child) cost more of an allocation's CPU than anything else of ours: half of the event loop's time in a
warm allocate+release (py-spy). Here a pooled worker thread runs `subprocess.Popen` (vfork and exec)
and `communicate`, which is one hop off the event loop per child.

Cancelling the caller kills the child and waits until it has exited, as `anyio.run_process` does: a
cancelled allocation rolls its slot back only once git has stopped writing in it.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio


@dataclass(frozen=True)
class ChildResult:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes


# What to run, worked out in the worker thread right before the start (a path checked there is checked
# as late as can be, and costs no hop of its own): the argument list and the environment.
Prepare = Callable[[], tuple[list[str], Mapping[str, str] | None]]


class _Child:
    """One child's state, shared by the worker thread that runs it and a caller that cancels it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.cancelled = False

    def run(self, prepare: Prepare, input: bytes | None) -> ChildResult:
        argv, env = prepare()
        with self.lock:
            if self.cancelled:  # cancelled before it started: it never will
                return ChildResult(argv, -9, b"", b"")
            proc = self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        with proc:
            out, err = proc.communicate(input)
        return ChildResult(argv, proc.returncode, out, err)

    def kill(self) -> subprocess.Popen[bytes] | None:
        """Kill the child if it started (and answer it); otherwise it never will."""
        with self.lock:
            self.cancelled = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            return self.proc


async def run_child(argv: Sequence[str], *, env: Mapping[str, str] | None, input: bytes | None = None) -> ChildResult:
    """Run `argv` (an argument list, never a shell) to its end; its stdin is `input`, or nothing."""
    return await run_prepared(lambda: (list(argv), env), input=input)


async def run_prepared(prepare: Prepare, *, input: bytes | None = None) -> ChildResult:
    """`run_child` of what `prepare` answers, in the same worker thread (what it raises is raised here)."""
    child = _Child()
    try:
        return await anyio.to_thread.run_sync(child.run, prepare, input, abandon_on_cancel=True)
    except BaseException:
        with anyio.CancelScope(shield=True):
            proc = child.kill()
            if proc is not None:
                # Until it has exited, not until its pipes close (a grandchild, a hook's background job,
                # may keep them open); with a limiter of its own, as the shared one may be exhausted.
                await anyio.to_thread.run_sync(proc.wait, limiter=anyio.CapacityLimiter(1))
        raise
