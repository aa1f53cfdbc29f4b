"""The terminal around the live screen: keys one at a time, and the signals that end a session."""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio


@contextmanager
def cbreak(fd: int) -> Iterator[bool]:
    """Keys arrive one at a time without echo; Ctrl-C still signals. Restored however we leave."""
    if fd < 0 or not os.isatty(fd):
        yield False
        return
    if sys.platform == "win32":  # msvcrt reads keys one at a time already
        yield True
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def stdin_fd() -> int:
    try:
        return sys.stdin.fileno() if sys.stdin is not None else -1
    except (OSError, ValueError):  # closed, or replaced by something without a descriptor
        return -1


def wait_for_key(fd: int, stop: threading.Event) -> bytes:
    """Runs in a worker thread; select with a short timeout so that ``stop`` is noticed promptly."""
    if sys.platform == "win32":
        import msvcrt

        while not stop.is_set():
            if msvcrt.kbhit():
                return msvcrt.getwch().encode()
            time.sleep(0.05)
        return b""
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            return os.read(fd, 64)
    return b""


async def cancel_on_stop_signal(scope: anyio.CancelScope, on_signal: Callable[[], None] | None = None) -> None:
    """Cancel ``scope`` on the first SIGINT, SIGTERM or SIGHUP, so that every ``finally`` still runs.

    Without this, Ctrl-C would raise KeyboardInterrupt wherever the loop happened to be, and the
    terminal mode or the processes we started could be left behind.
    """
    if sys.platform == "win32":
        return
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            if on_signal is not None:
                on_signal()
            scope.cancel()
            return
