"""Who is the same agent is decided from id, origin (explicit, session, process) and process, never
from what an id looks like: an explicit `claude-x` is not a Claude Code session, an explicit
`agent-1a2b3c4d` is not a generated id, and an id taken by another live agent is refused rather
than registered over (its worktrees would become the newcomer's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp import Client

from agent_coord.engine.liveness.judge import Identity, same_agent
from agent_coord.engine.store.records import Agent, Origin
from agent_coord.platform.process_identity import boot_id, start_since_boot
from tests.conftest import server_params
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.anyio


def identity(agent_id: str, origin: Origin, pid: int) -> Identity:
    proc = psutil.Process(pid)
    return Identity(
        agent_id, "this-host", boot_id(), pid, proc.create_time(), os.getpid(), 0.0, start_since_boot(pid), None, origin
    )


def row(agent_id: str, origin: Origin | None, pid: int) -> Agent:
    return replace(identity(agent_id, origin or "explicit", pid).as_agent(repo_id=None, lease_s=60), origin=origin)


ME, PARENT = os.getpid(), os.getppid()


@pytest.mark.parametrize(
    ("mine", "theirs", "same"),
    [
        # Two explicit ids under one parent are two agents, whatever they look like.
        (("claude-aaa", "explicit", ME), ("claude-bbb", "explicit", ME), False),
        (("agent-0000aaaa", "explicit", ME), ("agent-1111bbbb", "explicit", ME), False),
        # The same text from two origins: two agents.
        (("claude-0123456789ab", "session", ME), ("claude-0123456789ab", "explicit", ME), False),
        (("agent-0123abcd", "explicit", ME), ("agent-0123abcd", "process", ME), False),
        # A generated id is a hash of its process: a collision with another process is another agent.
        (("agent-0123abcd", "process", ME), ("agent-0123abcd", "process", PARENT), False),
        (("agent-0123abcd", "process", ME), ("agent-0123abcd", "process", ME), True),
        # An explicit id is one agent whichever process uses it; so is a session (resumed elsewhere).
        (("coder", "explicit", ME), ("coder", "explicit", PARENT), True),
        (("claude-0123456789ab", "session", ME), ("claude-0123456789ab", "session", PARENT), True),
        # One Claude Code process: the session after /clear, its hooks and its own server.
        (("claude-bbbbbbbbbbbb", "session", ME), ("claude-aaaaaaaaaaaa", "session", ME), True),
        (("coder", "explicit", ME), ("claude-aaaaaaaaaaaa", "session", ME), True),
        (("agent-0123abcd", "process", ME), ("claude-aaaaaaaaaaaa", "session", ME), True),
        (("claude-bbbbbbbbbbbb", "session", PARENT), ("claude-aaaaaaaaaaaa", "session", ME), False),
        (("coder", "explicit", ME), ("agent-0123abcd", "process", ME), False),
    ],
)
def test_sameness_is_id_origin_and_process(
    mine: tuple[str, Origin, int], theirs: tuple[str, Origin, int], same: bool
) -> None:
    assert same_agent(identity(*mine), row(*theirs)) is same


def test_a_row_of_an_older_version_is_the_same_agent_only_under_the_same_id() -> None:
    assert same_agent(identity("claude-aaa", "session", ME), row("claude-aaa", None, ME))
    assert not same_agent(identity("claude-bbb", "session", ME), row("claude-aaa", None, ME))


async def test_explicit_ids_shaped_like_derived_ones_are_agents_of_their_own(env: dict[str, str]) -> None:
    """Two servers started by one parent (this test) with explicit ids that read like a session's and
    like a generated one: neither releases or receives the other's worktree."""
    for a_id, b_id in (("claude-aaaaaaaaaaaa", "claude-bbbbbbbbbbbb"), ("agent-0000aaaa", "agent-1111bbbb")):
        async with (
            Client(server_params(env, AGENT_COORD_AGENT_ID=a_id), mode="legacy") as a,
            Client(server_params(env, AGENT_COORD_AGENT_ID=b_id), mode="legacy") as b,
        ):
            held = await a.call_tool("allocate_worktree", {"branch": f"feat/{a_id}"})
            assert not held.is_error, held.content
            taken = await b.call_tool("release_worktree", {"branch": f"feat/{a_id}"})
            assert taken.is_error and taken.content[0].text.startswith("NOT_OWNER: "), taken.content
            again = await b.call_tool("allocate_worktree", {"branch": f"feat/{a_id}"})
            assert again.is_error and again.content[0].text.startswith("BRANCH_CONFLICT: "), again.content
            assert not (await a.call_tool("release_worktree", {"branch": f"feat/{a_id}"})).is_error


async def test_an_id_a_live_session_holds_is_refused_to_an_explicit_newcomer(env: dict[str, str], repo: Path) -> None:
    """A Claude Code session's hook made a worktree as `claude-<session>`; a server that names itself
    the same explicitly is refused at `initialize` (registering over the session's record would make
    its worktree the server's), and the session keeps it."""
    session = "0123456789abcdef"
    payload = json.dumps({"session_id": session, "name": "mine", "cwd": str(repo)})
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)} | env
    made = subprocess.run(
        [sys.executable, "-m", "agent_coord", "hook", "worktree-create"],
        input=payload,
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    refusals: list[str] = []
    try:
        async with Client(server_params(env, AGENT_COORD_AGENT_ID="claude-0123456789ab"), mode="legacy"):
            pass
    except Exception as exc:  # the client raises the JSON-RPC error inside an exception group
        refusals.append(_messages(exc))
    assert len(refusals) == 1 and "INVALID_ARGUMENT: agent id claude-0123456789ab is taken" in refusals[0], refusals
    # The session's own hooks still act as it: its worktree-remove gives the slot back.
    removed = subprocess.run(
        [sys.executable, "-m", "agent_coord", "hook", "worktree-remove"],
        input=json.dumps({"session_id": session, "worktree_path": made.stdout.strip(), "cwd": str(repo)}),
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
        check=False,
    )
    assert removed.returncode == 0 and "is FREE" in removed.stderr, removed.stderr


def _messages(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return " | ".join(_messages(e) for e in exc.exceptions)
    error: Any = getattr(exc, "error", None)
    return str(error.message) if error is not None else str(exc)


async def test_an_origin_counts_only_while_its_row_names_the_same_process(coord: Any, env: dict[str, str]) -> None:
    """An older server re-registering the id writes `agents` alone: the origin recorded with another
    process is then unknown, never carried over to a process it was not recorded with."""
    import sqlite3

    assert (await coord.store.agent(coord.agent_id)).origin == "explicit"
    with sqlite3.connect(env["AGENT_COORD_DB"]) as conn:
        conn.execute("UPDATE agents SET pid = pid + 1 WHERE id = ?", (coord.agent_id,))
    assert (await coord.store.agent(coord.agent_id)).origin is None


@pytest.mark.parametrize("server_id", [None, "coder"])
async def test_a_sessions_own_server_releases_the_slot_its_hook_made(
    env: dict[str, str], repo: Path, server_id: str | None
) -> None:
    """This test plays Claude Code: its WorktreeCreate hook makes a slot as `claude-<session>`, and its
    own MCP server (a generated id, or one set in .mcp.json's env) gives it back without force: one
    agent process, one session, one agent for that slot."""
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)} | env
    made = subprocess.run(
        [sys.executable, "-m", "agent_coord", "hook", "worktree-create"],
        input=json.dumps({"session_id": "fedcba9876543210", "name": "own", "cwd": str(repo)}),
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    extra = {"AGENT_COORD_AGENT_ID": server_id} if server_id else {}
    async with Client(server_params(env, **extra), mode="legacy") as server:
        released = await server.call_tool("release_worktree", {"path": made.stdout.strip()})
        assert not released.is_error, released.content
        assert released.structured_content["state"] == "FREE"


async def test_a_session_never_ends_an_explicit_agent_that_shares_its_ids_text(env: dict[str, str], repo: Path) -> None:
    """A server named `claude-0123456789ab` explicitly holds a worktree; a Claude Code session whose
    derived id reads the same ends: the server's worktree is not the session's to give back."""
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)} | env
    async with Client(server_params(env, AGENT_COORD_AGENT_ID="claude-0123456789ab"), mode="legacy") as server:
        held = await server.call_tool("allocate_worktree", {"branch": "feat/explicit"})
        assert not held.is_error, held.content
        ended = subprocess.run(
            [sys.executable, "-m", "agent_coord", "hook", "session-end"],
            input=json.dumps({"session_id": "0123456789abcdef", "cwd": str(repo), "reason": "logout"}),
            capture_output=True,
            text=True,
            env=full,
            timeout=60,
            check=False,
        )
        assert ended.returncode == 0 and "held by another agent" in ended.stderr, ended.stderr
        status = (await server.call_tool("status", {})).structured_content
        (mine,) = [w for w in status["worktrees"] if w["branch"] == "feat/explicit"]
        assert mine["state"] == "BUSY" and mine["agent_id"] == "claude-0123456789ab"
