"""The host's writer lock for a SQLite store: an `flock` on `<database>-writer`, held around every write.

SQLite's own write lock cannot be waited for: a writer that finds it taken sleeps in its busy handler
(1, 2, 5, 10 … 100 ms) and looks again, so at 16 processes a lock released after 0.3 ms is found free
only at the sleeper's next wake-up, while newcomers keep taking it first. The kernel wakes `flock`
waiters the moment the holder lets go, so the store takes this lock first and `BEGIN IMMEDIATE` then
finds SQLite's free (a program that does not take it is still waited for by SQLite's busy handler).
A process that dies lets go of its `flock` with its last descriptor.

`run(fn)` runs `fn` under the lock in a daemon thread of its own that blocks in `flock` and runs `fn`
as soon as it has the lock, so no wake-up of another thread is ever waited for while the lock is held;
a short `fn` may instead run at once on the calling thread (the event loop) when the lock is free,
which costs no thread hop at all (`on_loop`).

A wait is bounded: a blocked `flock` cannot be interrupted, so a caller that stops waiting marks its
request abandoned and the thread lets go of the lock unused when it gets it; a holder that is stopped
(SIGSTOP, a debugger) costs the others a `StoreBusyError`, never a hang, and the thread, a daemon,
never holds up the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from agent_coord.platform.file_modes import make_private

if sys.platform != "win32":
    import fcntl

    def _lock(fd: int, *, wait: bool) -> bool:
        """Take the lock; False when `wait` is off and another holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

else:  # `HostWriterLock.beside` makes none on Windows

    def _lock(fd: int, *, wait: bool) -> bool:
        raise RuntimeError("no host writer lock on Windows")

    def _unlock(fd: int) -> None:
        raise RuntimeError("no host writer lock on Windows")


T = TypeVar("T")


@dataclass
class _Request(Generic[T]):
    """One wait handed to the thread; `lock` decides between a late start and an abandonment."""

    fn: Callable[[], T]
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[T]
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: bool = False
    abandoned: bool = False


class HostWriterLock:
    """See the module's docstring. Its user runs one `run` at a time (the store's connection lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Two open files: an abandoned wait in the thread must conflict with the loop's own hold.
        self._fast = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._slow = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        make_private(path)
        self._requests: queue.SimpleQueue[_Request[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @classmethod
    def beside(cls, database: Path) -> HostWriterLock | None:
        """The lock of `database`; None where there is no `flock` (Windows: SQLite's busy handler alone)."""
        if sys.platform == "win32":
            return None
        return cls(Path(f"{database}-writer"))

    async def run(self, fn: Callable[[], T], timeout_s: float, *, on_loop: bool) -> tuple[T] | None:
        """`(fn(),)` run under the lock, or None if the lock stayed taken `timeout_s` (`fn` never ran).
        `on_loop`: run `fn` on the calling thread if the lock is free (`fn` must be short)."""
        if on_loop and _lock(self._fast, wait=False):
            try:
                return (fn(),)
            finally:
                _unlock(self._fast)
        loop = asyncio.get_running_loop()
        request: _Request[T] = _Request(fn, loop, loop.create_future())
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="agent-coord-writer-lock", daemon=True)
            self._thread.start()
        self._requests.put(request)
        try:
            return (await asyncio.wait_for(asyncio.shield(request.done), timeout_s),)
        except TimeoutError:
            with request.lock:
                if not request.started:
                    request.abandoned = True
                    return None
            return (await _finished(request.done),)  # it started just in time: a write runs to its end
        except asyncio.CancelledError:
            with request.lock:
                if not request.started:
                    request.abandoned = True
                    raise
            with contextlib.suppress(BaseException):
                await _finished(request.done)
            raise

    def close(self) -> None:
        """Let go of the files. The thread's own file is closed by the thread once it is done with the
        request it may still be waiting on (closed under a blocked `flock`, its number could be reused
        by another file and then unlocked)."""
        os.close(self._fast)
        if self._thread is None:
            os.close(self._slow)
        else:
            self._requests.put(None)

    def _serve(self) -> None:
        try:
            self._serve_requests()
        finally:
            os.close(self._slow)

    def _serve_requests(self) -> None:
        while (request := self._requests.get()) is not None:
            with request.lock:
                if request.abandoned:
                    continue
            _lock(self._slow, wait=True)
            try:
                with request.lock:
                    if request.abandoned:
                        continue
                    request.started = True
                try:
                    result = request.fn()
                except BaseException as exc:  # handed to the waiting caller
                    _call_soon(request, None, exc)
                else:
                    _call_soon(request, result, None)
            finally:
                _unlock(self._slow)


def _call_soon(request: _Request[Any], result: Any, exc: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # its loop is closed: nobody is waiting any more
        request.loop.call_soon_threadsafe(_settle, request.done, result, exc)


async def _finished(future: asyncio.Future[T]) -> T:
    """The result of `future`, waited for through any cancellation."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])
    return future.result()


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done() or future.get_loop().is_closed():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
