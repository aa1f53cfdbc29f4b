"""Keys one at a time from the terminal: termios on POSIX, msvcrt on Windows."""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


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
    """Runs in a worker thread; waits with a short timeout so that ``stop`` is noticed promptly."""
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
