"""Races across real server processes sharing one database: the CAS must hold across processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git, run_agents

pytestmark = pytest.mark.anyio

N = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def race_env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """The same races on each engine: a SQLite file, or a database of the session's PostgreSQL."""
    if request.param == "sqlite":
        return env
    return {**env, "AGENT_COORD_DB": request.getfixturevalue("pg_url").secret_url()}


def _code(result: Any) -> str:
    return "ok" if not result.is_error else result.content[0].text.split(":", 1)[0]


async def test_eight_processes_same_branch_exactly_one_wins(race_env: dict[str, str]) -> None:
    async def script(client: Any, i: int) -> Any:
        result = await client.call_tool("allocate_worktree", {"branch": "contested"})
        return result, (await client.call_tool("status", {})).structured_content

    outcomes = await run_agents(race_env, N, script)
    codes = sorted(_code(r) for r, _ in outcomes)
    assert codes == ["BRANCH_CONFLICT"] * (N - 1) + ["ok"]
    loser = next(r for r, _ in outcomes if r.is_error)
    assert "held by agent racer-" in loser.content[0].text or "checked out" in loser.content[0].text


async def test_eight_processes_pool_of_four(race_env: dict[str, str], repo: Path) -> None:
    async def script(client: Any, i: int) -> Any:
        return await client.call_tool("allocate_worktree", {"branch": f"b{i}"})

    results = await run_agents(race_env, N, script, AGENT_COORD_POOL_MAX="4")
    codes = sorted(_code(r) for r in results)
    assert codes == ["POOL_EXHAUSTED"] * 4 + ["ok"] * 4, [r.content for r in results]
    winners = [r.structured_content for r in results if not r.is_error]
    assert len({w["worktree_id"] for w in winners}) == 4  # no slot has two owners
    assert len({w["fencing_token"] for w in winners}) == 4

    async def look(client: Any, i: int) -> Any:
        return (await client.call_tool("status", {})).structured_content

    (status,) = await run_agents(race_env, 1, look, prefix="observer")
    busy = {(w["path"], w["branch"]) for w in status["worktrees"] if w["state"] == "BUSY"}
    assert busy == {(w["path"], w["branch"]) for w in winners}
    # git agrees with the store: every busy slot is a worktree on its branch, and there are no others.
    listed = git(repo, "worktree", "list", "--porcelain")
    git_pairs = set()
    path = None
    for line in listed.splitlines():
        if line.startswith("worktree "):
            path = line.split(" ", 1)[1]
        elif line.startswith("branch ") and path != str(repo):
            git_pairs.add((path, line.split(" ", 1)[1].removeprefix("refs/heads/")))
    assert git_pairs == busy
