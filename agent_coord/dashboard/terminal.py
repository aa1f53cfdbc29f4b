"""The signals that end a live screen's session (keys and signals themselves: agent_coord.platform)."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from agent_coord.platform.signals import next_stop_signal


async def cancel_on_stop_signal(scope: anyio.CancelScope, on_signal: Callable[[], None] | None = None) -> None:
    """Cancel ``scope`` on the first SIGINT, SIGTERM or SIGHUP, so that every ``finally`` still runs.

    Without this, Ctrl-C would raise KeyboardInterrupt wherever the loop happened to be, and the
    terminal mode or the processes we started could be left behind.
    """
    if await next_stop_signal(hangup=True) is None:
        return
    if on_signal is not None:
        on_signal()
    scope.cancel()
