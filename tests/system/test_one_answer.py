"""One situation, one answer, whichever way it is reached (docs/decisions.md, "One answer per
situation"): a database another process keeps locked is `STORE_UNAVAILABLE` from a tool (the official
MCP client), the command line, a hook and `serve`; a bad setting is `agent-coord: bad setting: …` with
exit code 2 from the command line, every hook and `serve` (also as its answer to `initialize`)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.conftest import server_params
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.anyio

WAIT = {"AGENT_COORD_STORE_WAIT_S": "0.3"}  # how long every entry point waits for the lock here
HOOKS = ("worktree-create", "worktree-remove", "session-start", "session-end")


def _run(env: dict[str, str], args: list[str], *, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    full.update(env)
    full.update(extra)
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, env=full, timeout=60, check=False
    )


def cli(env: dict[str, str], *args: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
    return _run(env, ["-m", "agent_coord", *args], stdin=stdin, **extra)


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@contextmanager
def locked(db: Path) -> Iterator[None]:
    """Another process's write lock on the database, held until the block ends."""
    holder = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def leaves(group: BaseExceptionGroup[MCPError]) -> list[MCPError]:
    out: list[MCPError] = []
    for e in group.exceptions:
        out += leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out


def hook_payload(env: dict[str, str], **fields: str) -> str:
    return json.dumps({"session_id": "one-answer", "cwd": env["AGENT_COORD_REPO"], **fields})


async def test_a_locked_store_is_store_unavailable_at_every_entry_point(env: dict[str, str]) -> None:
    db = Path(env["AGENT_COORD_DB"])
    params = server_params(env, AGENT_COORD_AGENT_ID="locked-out", AGENT_COORD_RETRIES="0", **WAIT)
    async with Client(params, mode="legacy") as client:
        held = await client.call_tool("allocate_worktree", {"branch": "feat/held"})
        assert not held.is_error, held.content
        with locked(db):
            for tool, args in (
                ("heartbeat", {"status": "active"}),
                ("release_worktree", {"branch": "feat/held"}),
                ("allocate_worktree", {"branch": "feat/other"}),
            ):
                result = await client.call_tool(tool, args)
                assert result.is_error, (tool, result.structured_content)
                text = result.content[0].text
                assert text.startswith("STORE_UNAVAILABLE: ") and "locked by another process" in text, (tool, text)

            done = cli(env, "validate", "--repair", **WAIT)
            assert done.returncode == 1
            assert one_line(done.stderr).startswith("STORE_UNAVAILABLE: ")

            done = cli(env, "hook", "worktree-create", stdin=hook_payload(env, name="x"), **WAIT)
            assert done.returncode == 1 and done.stdout == ""
            assert one_line(done.stderr).startswith("STORE_UNAVAILABLE: ")

            done = serve_initialize(env, **WAIT)
            assert done.returncode == 1
            assert json.loads(done.stdout)["error"]["message"].startswith("STORE_UNAVAILABLE: ")
            assert one_line(done.stderr).startswith("STORE_UNAVAILABLE: ")
        # Nothing was changed: the allocation is still held, and now released as ever.
        released = await client.call_tool("release_worktree", {"branch": "feat/held"})
        assert not released.is_error, released.content


def serve_initialize(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    request = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    return _run(env, ["-m", "agent_coord.server"], stdin=json.dumps(request) + "\n", **extra)


async def test_a_bad_setting_is_exit_2_and_one_line_at_every_entry_point(env: dict[str, str]) -> None:
    bad: dict[str, Any] = {"AGENT_COORD_POOL_MAX": "abc"}
    expected = "agent-coord: bad setting: AGENT_COORD_POOL_MAX: "

    done = cli(env, "status", **bad)
    assert done.returncode == 2 and one_line(done.stderr).startswith(expected)

    for hook in HOOKS:
        done = cli(env, "hook", hook, stdin=hook_payload(env, name="x", worktree_path="/nowhere"), **bad)
        assert done.returncode == 2, (hook, done.stderr)
        assert done.stdout == "" and one_line(done.stderr).startswith(expected), hook

    done = serve_initialize(env, **bad)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["message"].startswith(expected)
    assert one_line(done.stderr).startswith(expected)

    # The official client sees the same line as the answer to its `initialize`.
    refusals: list[str] = []
    try:
        async with Client(server_params(env, **bad), mode="legacy"):
            pass
    except* MCPError as group:
        refusals += [str(e.error.message) for e in leaves(group)]
    assert len(refusals) == 1 and refusals[0].startswith(expected), refusals

    # The edit guard is the one hook that never blocks by failing: it allows the edit and says why.
    done = cli(env, "hook", "pre-edit", stdin="{}", AGENT_COORD_EDIT_GUARD="sometimes")
    assert done.returncode == 0 and "AGENT_COORD_EDIT_GUARD" in one_line(done.stderr)
