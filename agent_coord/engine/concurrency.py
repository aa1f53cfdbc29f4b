"""Run a few independent awaitables at once (git calls, mostly) and get their results in order."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import anyio


async def gather(*calls: Awaitable[Any]) -> list[Any]:
    """Like asyncio.gather, on anyio: all run concurrently; the first failure is raised unwrapped
    (the others are cancelled), so callers keep catching CoordError/GitError as usual."""
    results: list[Any] = [None] * len(calls)

    async def run(index: int, call: Awaitable[Any]) -> None:
        results[index] = await call

    try:
        async with anyio.create_task_group() as tg:
            for index, call in enumerate(calls):
                tg.start_soon(run, index, call)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from None
    return results


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
