"""Short cell text: durations, ages, lease countdowns and clock times, cut to a column's width.

Deliberately terser than ``server.render.ago``/``left`` (which the `status` table uses): a
dashboard column has five cells, so 100 s is already "2m" and days get their own unit.
"""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 100:
        return f"{s:.0f}s"
    if s < 6000:
        return f"{s / 60:.0f}m"
    if s < 172800:
        return f"{s / 3600:.0f}h"
    return f"{s / 86400:.0f}d"


def age(ts: float | None, now: float) -> str:
    return "-" if not ts else duration(now - ts)


def lease_left(ts: float | None, now: float) -> tuple[str, str]:
    """(text, style) of the time a lease has left; yellow in its last 30 s."""
    if not ts:
        return "-", "dim"
    left = ts - now
    if left < 0:
        return "expired", "bold red"
    return duration(left), "yellow" if left < 30 else ""


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def elide_start(text: str, width: int) -> str:
    """Keep the end of ``text`` (the informative part of a path) within ``width`` cells."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :] if width > 1 else "…"[:width]


def cut(text: str, width: int, *, keep_end: bool = False, right: bool = False) -> str:
    """``text`` in exactly ``width`` cells: padded, or elided with ``…``."""
    if len(text) > width:
        text = elide_start(text, width) if keep_end else (text[: width - 1] + "…" if width > 1 else text[:width])
    return text.rjust(width) if right else text.ljust(width)
