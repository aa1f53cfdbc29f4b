"""Through the official MCP client over real stdio subprocesses: the contract as agents see it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.agent_proc import MIN_WAIT_S, wait_for
from tests.conftest import git, run_agents, server_params

pytestmark = pytest.mark.anyio

TOOLS = {"allocate_worktree", "release_worktree", "heartbeat", "status", "validate"}


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error
    return result.content[0].text


async def test_full_round_trip_over_stdio(env: dict[str, str], repo: Path) -> None:
    async with Client(server_params(env, AGENT_COORD_AGENT_ID="agent-stdio"), mode="legacy") as client:
        tools = (await client.list_tools()).tools
        assert {t.name for t in tools} == TOOLS
        for t in tools:
            assert t.input_schema and t.output_schema, t.name
        by_name = {t.name: t for t in tools}
        assert by_name["status"].annotations.read_only_hint is True
        assert by_name["release_worktree"].annotations.destructive_hint is True
        assert set(by_name["allocate_worktree"].input_schema["properties"]) == {
            "branch",
            "base",
            "repo",
            "task",
        }

        alloc = structured(await client.call_tool("allocate_worktree", {"branch": "feat/stdio", "task": "demo"}))
        assert alloc["agent_id"] == "agent-stdio" and alloc["branch"] == "feat/stdio"
        assert {
            "worktree_id",
            "path",
            "repo",
            "fencing_token",
            "lease_expires_at",
            "reused",
            "strategy",
            "attempts",
            "latency_ms",
            "contention",
        } <= set(alloc)
        assert git(Path(alloc["path"]), "branch", "--show-current").strip() == "feat/stdio"

        beat = structured(await client.call_tool("heartbeat", {"status": "idle", "note": "waiting"}))
        assert beat["status"] == "idle" and beat["allocations"] == [alloc["worktree_id"]]
        assert beat["next_heartbeat_s"] == 60

        status = structured(await client.call_tool("status", {}))
        assert status["pool"]["busy"] == 1
        (wt,) = status["worktrees"]
        assert wt["agent_id"] == "agent-stdio" and wt["state"] == "BUSY"
        me = next(a for a in status["agents"] if a["agent_id"] == "agent-stdio")
        assert me["alive"] and me["note"] == "waiting"
        assert "metrics" in status and "contention" in status

        found = structured(await client.call_tool("validate", {}))
        assert found["findings"] == []

        pool = json.loads((await client.read_resource("coord://pool")).contents[0].text)
        assert pool["worktrees"][0]["branch"] == "feat/stdio"
        md = (await client.read_resource("coord://pool.md")).contents[0].text
        assert "feat/stdio" in md and "| worktree" in md

        rel = structured(await client.call_tool("release_worktree", {"worktree_id": alloc["worktree_id"]}))
        assert rel["state"] == "FREE"

        bad = await client.call_tool("allocate_worktree", {"branch": "-x"})
        assert error_text(bad).startswith("INVALID_BRANCH:")
        wrong_type = await client.call_tool("allocate_worktree", {"branch": 42})
        assert error_text(wrong_type).startswith("INVALID_ARGUMENT:")


async def test_subscriber_on_a_sees_allocation_through_b(env: dict[str, str]) -> None:
    """Legacy resources/subscribe on A, and a 2026 subscriptions/listen stream on A2, both notified of B's write."""
    received: list[str] = []
    got = anyio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            received.append(str(root.params.uri))
            got.set()

    params_a = server_params(env, AGENT_COORD_AGENT_ID="agent-a")
    params_b = server_params(env, AGENT_COORD_AGENT_ID="agent-b")
    async with (
        Client(params_a, mode="legacy", message_handler=on_message) as a,
        Client(server_params(env, AGENT_COORD_AGENT_ID="agent-a2")) as a2,
        Client(params_b, mode="legacy") as b,
    ):
        assert a.server_capabilities.resources and a.server_capabilities.resources.subscribe
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await a.subscribe_resource("coord://pool")
        async with a2.listen(resource_subscriptions=["coord://pool"]) as sub:
            listened: list[Any] = []
            heard = anyio.Event()

            async def listen() -> None:
                listened.append(await sub.__anext__())
                heard.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(listen)
                # A watcher notifies of what changed after its first reading, which it takes in its own
                # time: B writes again (a new branch each time) until both subscribers were notified.
                for i in range(6):  # within the pool's 8 slots
                    structured(await b.call_tool("allocate_worktree", {"branch": f"feat/notify-{i}"}))
                    with anyio.move_on_after(MIN_WAIT_S / 6):
                        await got.wait()
                        await heard.wait()
                    if got.is_set() and heard.is_set():
                        break
        assert "coord://pool" in received
        assert getattr(listened[0], "uri", None) == "coord://pool"


async def test_activity_mirror_has_each_event_once_across_servers(env: dict[str, str], tmp_path: Path) -> None:
    from agent_coord.engine.observe.activity import ActivityMirror

    mirror = tmp_path / "worktrees.activity.md"

    async def script(client: Any, i: int) -> Any:
        result = structured(await client.call_tool("allocate_worktree", {"branch": f"mirror-{i}"}))
        await client.call_tool("release_worktree", {"worktree_id": result["worktree_id"]})

        def mirrored() -> bool:  # the watchers saw this agent's last commit (any server may write it)
            try:
                lines = ActivityMirror(mirror).read_lines() if mirror.exists() else []
            except ValueError:  # a line being appended right now
                return False
            return any(ln.action == "release" and ln.branch == f"mirror-{i}" for ln in lines)

        await wait_for(mirrored, 10)
        return result

    await run_agents(env, 3, script, prefix="mirror", AGENT_COORD_ACTIVITY_FILE=str(mirror))
    lines = ActivityMirror(mirror).read_lines()
    allocations = [ln for ln in lines if ln.action == "allocate"]
    releases = [ln for ln in lines if ln.action == "release"]
    assert sorted(ln.branch or "" for ln in allocations) == ["mirror-0", "mirror-1", "mirror-2"]
    assert sorted(ln.branch or "" for ln in releases) == ["mirror-0", "mirror-1", "mirror-2"]
