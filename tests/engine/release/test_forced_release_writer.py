"""A person's forced release over a live agent that keeps writing loses no byte: the release saves,
reads the worktree again and cleans only when it is still what was saved; while the agent writes on,
the slot is quarantined untouched (still naming the agent), and once the agent is gone validation
saves what it wrote since and returns the slot to the pool. A real writer process, real git."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.platform.process_identity import start_since_boot
from tests.agent_proc import events, proc_env, query, set_agent
from tests.conftest import git, server_params

pytestmark = pytest.mark.anyio

WRITER = """
import os, sys, time
wt, progress, stop = sys.argv[1:4]
i = 0
while not os.path.exists(stop):
    with open(os.path.join(wt, "notes.txt"), "a") as fh:
        fh.write(f"{i}\\n")
    if i % 10 == 0:
        with open(os.path.join(wt, f"new-{i}.txt"), "w") as fh:
            fh.write(f"{i}\\n")
    with open(progress + ".tmp", "w") as fh:
        fh.write(str(i))
    os.replace(progress + ".tmp", progress)  # read whole by the test, never half-written
    i += 1
    time.sleep(0.01)
"""


def lines_in(text: str) -> set[int]:
    return {int(x) for x in text.split()}


def saved_lines(repo: Path) -> set[int]:
    """Every line of notes.txt in every rescue ref (the test's only worktree wrote them)."""
    found: set[int] = set()
    for ref in git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue/").split():
        shown = subprocess.run(
            ["git", "-C", str(repo), "show", f"{ref}:notes.txt"], capture_output=True, text=True, check=False
        )
        found |= lines_in(shown.stdout)
    return found


async def test_a_forced_release_over_a_live_writer_loses_no_byte(
    env: dict[str, str], repo: Path, settings: Settings, tmp_path: Path
) -> None:
    progress, stop = tmp_path / "progress", tmp_path / "stop"
    owner = subprocess.Popen(["sleep", "120"])  # the agent process: alive, separate from this test
    try:
        async with Client(server_params(env, AGENT_COORD_AGENT_ID="busy"), mode="legacy") as busy:
            grant = (await busy.call_tool("allocate_worktree", {"branch": "feat/writing"})).structured_content
            wt, wid = Path(grant["path"]), grant["worktree_id"]
            set_agent(
                env,
                "busy",
                pid=owner.pid,
                pid_create_time=psutil.Process(owner.pid).create_time(),
                pid_start_s=start_since_boot(owner.pid),
            )
            writer = subprocess.Popen([sys.executable, "-c", WRITER, str(wt), str(progress), str(stop)], cwd=wt)
            try:
                with anyio.fail_after(30):
                    while not progress.exists() or int(progress.read_text() or 0) < 20:
                        await anyio.sleep(0.01)
                done = subprocess.run(
                    [sys.executable, "-m", "agent_coord", "release", "--worktree", wid, "--force", "--json"],
                    env=proc_env(env),
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
                before = int(progress.read_text())
                with anyio.fail_after(30):  # the agent writes on after the release answered
                    while int(progress.read_text()) < before + 10:
                        await anyio.sleep(0.01)
            finally:
                stop.touch()
                writer.wait(timeout=30)
            result = json.loads(done.stdout)["released"][0]
            written = set(range(int(progress.read_text()) + 1))
            on_disk = lines_in((wt / "notes.txt").read_text()) if (wt / "notes.txt").exists() else set()
            lost = written - on_disk - saved_lines(repo)
            assert not lost, f"lost {len(lost)} lines, e.g. {sorted(lost)[:5]}; release said {result}"
            (row,) = query(env, "SELECT state, owner FROM slots WHERE id = ?", (wid,))
            assert (row["state"], row["owner"]) == ("QUARANTINED", "busy"), dict(row)
            # A rescue ref when a save could be proved between two writes; on a loaded machine the writer
            # may change the tree under every save, and then all of it is still on disk (checked above).
            assert result["state"] == "QUARANTINED"

            # The agent goes away: validation saves what it wrote since and returns the slot.
            owner.kill()
            owner.wait()
            async with Coordinator.open(settings, register=False, agent_id="validator") as observer:
                report = await observer.validate(repair=True)
            assert [f.kind for f in report.findings if f.worktree_id == wid] == ["quarantine_cleared"]
            (row,) = query(env, "SELECT state, owner FROM slots WHERE id = ?", (wid,))
            assert row["state"] == "FREE" and row["owner"] is None
            assert written <= saved_lines(repo)
            assert [e for e in events(env, "release") if e["worktree_id"] == wid][-1]["detail"]["forced_from"] == "busy"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
