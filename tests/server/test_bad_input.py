"""Bad input is refused with a clear code and changes nothing (the status snapshot is identical)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from agent_coord.engine.errors import ErrorCode
from agent_coord.server.app import build_server

pytestmark = pytest.mark.anyio

KNOWN_CODES = {c.value for c in ErrorCode}


def _snapshot(status: dict[str, Any]) -> Any:
    return (status["pool"], status["worktrees"])


def bad_cases(tmp_path: Path) -> list[tuple[str, dict[str, Any], str]]:
    not_git = tmp_path / "plain-dir"
    not_git.mkdir(exist_ok=True)
    return [
        ("allocate_worktree", {"branch": "-rf"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "--force"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "a..b"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "../escape"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "x\x00y"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "a" * 10_000}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": ""}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "has space"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "ends.lock"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "a~b"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "a:b"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "@{-1}"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "HEAD"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "trailing/"}, "INVALID_BRANCH"),
        ("allocate_worktree", {"branch": "ok", "base": "--orphan"}, "INVALID_ARGUMENT"),
        ("allocate_worktree", {"branch": "ok", "repo": "/no/such/path"}, "NOT_A_REPOSITORY"),
        ("allocate_worktree", {"branch": "ok", "repo": str(not_git)}, "NOT_A_REPOSITORY"),
        ("allocate_worktree", {"branch": "ok", "repo": "relative/path"}, "NOT_A_REPOSITORY"),
        ("allocate_worktree", {"branch": "ok", "repo": "-C/tmp"}, "NOT_A_REPOSITORY"),
        ("allocate_worktree", {"branch": 42}, "INVALID_ARGUMENT"),
        ("allocate_worktree", {"branch": ["a"]}, "INVALID_ARGUMENT"),
        ("allocate_worktree", {}, "INVALID_ARGUMENT"),
        ("allocate_worktree", {"branch": "ok", "unknown": 1}, "INVALID_ARGUMENT"),
        ("release_worktree", {"worktree_id": "wt-99"}, "NOT_FOUND"),
        ("release_worktree", {"path": "/etc/passwd"}, "NOT_FOUND"),
        ("release_worktree", {"worktree_id": "-x"}, "INVALID_ARGUMENT"),
        ("release_worktree", {"force": "yes"}, "INVALID_ARGUMENT"),
        ("release_worktree", {"worktree_id": "wt-01", "branch": "x"}, "INVALID_ARGUMENT"),
        ("heartbeat", {"status": "sleeping"}, "INVALID_ARGUMENT"),
        ("heartbeat", {"note": "n" * 10_000}, "INVALID_ARGUMENT"),
        ("status", {"repo": "/no/such/path"}, "NOT_A_REPOSITORY"),
        ("validate", {"repair": "true"}, "INVALID_ARGUMENT"),
        ("validate", {"repo": str(not_git)}, "NOT_A_REPOSITORY"),
    ]


async def test_each_bad_input_has_a_code_and_changes_nothing(settings: Any, tmp_path: Path) -> None:
    async with Client(build_server(settings)) as client:
        held = await client.call_tool("allocate_worktree", {"branch": "keep"})
        assert not held.is_error
        before = _snapshot((await client.call_tool("status", {})).structured_content)
        for tool, args, code in bad_cases(tmp_path):
            result = await client.call_tool(tool, args)
            assert result.is_error, (tool, args)
            text = result.content[0].text
            assert text.startswith(f"{code}:"), (tool, args, text)
            after = _snapshot((await client.call_tool("status", {})).structured_content)
            assert after == before, (tool, args)


BRANCH_CHARS = string.ascii_letters + string.digits + "-_./@{}~^:?*[]\\ \x00\x7f\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(branch=st.text(alphabet=BRANCH_CHARS, max_size=40))
def test_any_branch_string_is_allocated_or_refused_with_a_code(branch: str, settings_for_hypothesis: Any) -> None:
    import anyio

    async def go() -> None:
        async with Client(build_server(settings_for_hypothesis)) as client:
            result = await client.call_tool("allocate_worktree", {"branch": branch})
            if result.is_error:
                assert result.content[0].text.split(":", 1)[0] in KNOWN_CODES
            else:
                await client.call_tool("release_worktree", {"worktree_id": result.structured_content["worktree_id"]})

    anyio.run(go)


@pytest.fixture
def settings_for_hypothesis(settings: Any) -> Any:
    return settings
