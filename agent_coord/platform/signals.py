"""The signals that end a session, and the one that says the terminal was resized.

anyio's signal receiver needs POSIX signals; on Windows Ctrl-C arrives as KeyboardInterrupt instead,
which ends the program through the same `finally` blocks, so there is nothing to wait for there.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import AsyncIterator

import anyio


def stop_signals(*, hangup: bool = False) -> tuple[signal.Signals, ...]:
    """SIGINT and SIGTERM, and SIGHUP where asked for and the platform has it."""
    found: list[signal.Signals] = [signal.SIGINT, signal.SIGTERM]
    if hangup and sys.platform != "win32":
        found.append(signal.Signals(signal.SIGHUP))
    return tuple(found)


async def next_stop_signal(*, hangup: bool = False) -> signal.Signals | None:
    """Wait for the first stop signal; on Windows, wait for ever (Ctrl-C is KeyboardInterrupt there)."""
    if sys.platform == "win32":
        await anyio.sleep_forever()
        return None
    with anyio.open_signal_receiver(*stop_signals(hangup=hangup)) as received:
        async for signum in received:
            return signal.Signals(signum)
    return None


async def resizes() -> AsyncIterator[None]:
    """One item per terminal resize (SIGWINCH); none on Windows, where the screen is redrawn anyway."""
    if sys.platform == "win32":
        await anyio.sleep_forever()
        return
    with anyio.open_signal_receiver(signal.Signals(signal.SIGWINCH)) as received:
        async for _ in received:
            yield None
