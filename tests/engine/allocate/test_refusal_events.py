"""Every refused allocation reaches the event log once, whichever step refused it, through the real
server (the in-memory MCP client drives the same server the stdio transport runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mcp import Client

from agent_coord.config import Settings
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Action
from agent_coord.server.app import build_server
from tests.conftest import git

pytestmark = pytest.mark.anyio


async def _allocations(db: Path) -> list[tuple[str | None, str]]:
    store = await Store.open(db)
    try:
        return [(e.branch, e.outcome) for e in await store.events() if e.action == Action.ALLOCATE]
    finally:
        await store.close()


async def test_each_refused_allocation_is_logged_once(
    make_settings: Callable[..., Settings], repo: Path, tmp_path: Path
) -> None:
    settings = make_settings(pool_max=1, agent_id="refused")
    git(repo, "branch", "taken")
    other = tmp_path / "elsewhere"
    git(repo, "worktree", "add", "-q", str(other), "taken")
    refusals = [
        ({"branch": "a..b"}, "INVALID_BRANCH"),
        ({"branch": "ok", "base": "no-such-commit"}, "GIT_FAILED"),
        ({"branch": "ok", "base": "--orphan"}, "INVALID_ARGUMENT"),
        ({"branch": "ok", "repo": "/no/such/path"}, "NOT_A_REPOSITORY"),
        ({"branch": "taken"}, "BRANCH_CONFLICT"),
        ({"branch": "second"}, "POOL_EXHAUSTED"),
    ]
    async with Client(build_server(settings)) as client:
        held = await client.call_tool("allocate_worktree", {"branch": "first"})
        assert not held.is_error
        for args, code in refusals:
            result = await client.call_tool("allocate_worktree", args)
            assert result.is_error and result.content[0].text.startswith(f"{code}:"), (args, result.content)

    logged = await _allocations(settings.db)
    assert logged[0] == ("first", "ok")
    assert [outcome for _, outcome in logged[1:]] == [code for _, code in refusals]
    assert dict(logged[1:])["taken"] == "BRANCH_CONFLICT"
