"""The conflict radar on real repositories: snapshots of real worktrees (uncommitted work included),
merges predicted by libgit2, results read back through the coordinator's tool results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import AllocationResult
from agent_coord.engine.radar.models import BaseBranch, Conflict, OtherAllocation
from agent_coord.engine.radar.radar_pass import PassReport
from agent_coord.store_target import PostgresUrl
from tests.conftest import git, make_repo
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.anyio

LINES = [f"line {i}\n" for i in range(1, 41)]


@pytest.fixture
def shared_repo(repo: Path) -> Path:
    (repo / "app.py").write_text("".join(LINES))
    (repo / "other.py").write_text("x = 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    return repo


@pytest.fixture
async def two(shared_repo: Path, settings: Settings) -> AsyncIterator[tuple[Coordinator, Coordinator]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Coordinator.open(settings, register=True, agent_id="agent-a"))
        b = await stack.enter_async_context(Coordinator.open(settings, register=True, agent_id="agent-b"))
        yield a, b


def edit(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


async def radar_pass(coord: Coordinator) -> None:
    report = await coord.radar_loop.tick()
    assert report is not None, "the test's coordinator should hold the radar lease"
    assert not report.skipped, report.skipped


def with_worktree(c: Conflict) -> OtherAllocation:
    assert isinstance(c.with_, OtherAllocation)
    return c.with_


def only(conflicts: list[Conflict], kind: str, pred: Callable[[Conflict], bool] = lambda c: True) -> Conflict:
    found = [c for c in conflicts if c.kind == kind and pred(c)]
    assert len(found) == 1, conflicts
    return found[0]


async def test_same_lines_uncommitted_conflict_on_both_sides(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a", task="rename things")
    wb = await b.pool.allocate("feat-b", task="fix things")
    edit(Path(wa.path) / "app.py", 10, "line ten by a")
    edit(Path(wb.path) / "app.py", 10, "line ten by b")
    await radar_pass(a)
    seen_a = (await a.heartbeat()).conflicts
    seen_b = (await b.heartbeat()).conflicts
    ca = only(seen_a, "conflict", lambda c: isinstance(c.with_, OtherAllocation))
    cb = only(seen_b, "conflict", lambda c: isinstance(c.with_, OtherAllocation))
    assert ca.paths == ["app.py"] and cb.paths == ["app.py"]
    assert ca.ranges == {"app.py": [(10, 10)]} and cb.ranges == {"app.py": [(10, 10)]}
    other = with_worktree(ca)
    assert (other.worktree_id, other.branch, other.agent_id, other.task) == (
        wb.worktree_id,
        "feat-b",
        "agent-b",
        "fix things",
    )
    assert with_worktree(cb).agent_id == "agent-a"
    status = await a.status()
    assert [(p.a, p.b, p.kind, p.paths) for p in status.conflict_pairs if not p.b.startswith("base:")] == [
        (min(wa.worktree_id, wb.worktree_id), max(wa.worktree_id, wb.worktree_id), "conflict", ["app.py"])
    ]
    dumped = ca.model_dump(mode="json", by_alias=True)
    assert dumped["with"]["branch"] == "feat-b" and isinstance(dumped["since"], float)


async def test_different_hunks_overlap_only(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    edit(Path(wa.path) / "app.py", 3, "top by a")
    edit(Path(wb.path) / "app.py", 35, "bottom by b")
    await radar_pass(a)
    seen = (await a.heartbeat()).conflicts
    assert [c.kind for c in seen] == ["overlap"]
    assert seen[0].paths == ["app.py"] and seen[0].ranges is None


async def test_rename_on_one_side_edit_on_the_other(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    git(Path(wa.path), "mv", "app.py", "application.py")
    edit(Path(wb.path) / "app.py", 20, "edited by b")
    await radar_pass(a)
    seen_a = (await a.heartbeat()).conflicts
    seen_b = (await b.heartbeat()).conflicts
    # The rename carries b's edit: no conflict, but both changed that file, each under its own name.
    assert [(c.kind, c.paths) for c in seen_a] == [("overlap", ["application.py"])]
    assert [(c.kind, c.paths) for c in seen_b] == [("overlap", ["app.py"])]
    # A rename against an edit of the same lines after the rename does conflict.
    edit(Path(wa.path) / "application.py", 20, "edited by a")
    await radar_pass(a)
    ca = only((await a.heartbeat()).conflicts, "conflict")
    assert ca.paths == ["application.py"] and ca.ranges == {"application.py": [(20, 20)]}
    cb = only((await b.heartbeat()).conflicts, "conflict")
    assert cb.paths == ["app.py"] and cb.ranges == {"app.py": [(20, 20)]}


async def test_conflict_with_the_base_after_it_moves(two: tuple[Coordinator, Coordinator], shared_repo: Path) -> None:
    a, _ = two
    wa = await a.pool.allocate("feat-a", base="main")
    edit(Path(wa.path) / "app.py", 5, "five by a")
    await radar_pass(a)
    assert (await a.heartbeat()).conflicts == []
    edit(shared_repo / "app.py", 5, "five on main")
    git(shared_repo, "commit", "-q", "-am", "main moves")
    await radar_pass(a)
    c = only((await a.heartbeat()).conflicts, "conflict")
    assert isinstance(c.with_, BaseBranch) and c.with_.base == "main"
    assert c.ranges == {"app.py": [(5, 5)]}


async def test_committed_on_one_side_dirty_on_the_other(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    edit(Path(wa.path) / "app.py", 12, "twelve by a")
    git(Path(wa.path), "commit", "-q", "-am", "a commits")
    edit(Path(wb.path) / "app.py", 12, "twelve by b")  # unstaged
    await radar_pass(a)
    assert only((await b.heartbeat()).conflicts, "conflict").ranges == {"app.py": [(12, 12)]}
    # An unstaged edit that takes b's change back away clears it at the next pass.
    edit(Path(wb.path) / "app.py", 12, "line 12")
    await radar_pass(a)
    assert (await b.heartbeat()).conflicts == []


async def test_binary_files_conflict_without_ranges(two: tuple[Coordinator, Coordinator], shared_repo: Path) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    (Path(wa.path) / "logo.bin").write_bytes(b"\x00\x01a" * 50)  # untracked on both sides
    (Path(wb.path) / "logo.bin").write_bytes(b"\x00\x02b" * 50)
    await radar_pass(a)
    c = only((await a.heartbeat()).conflicts, "conflict")
    assert c.paths == ["logo.bin"] and c.ranges is None


async def test_release_clears_the_pair(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    edit(Path(wa.path) / "app.py", 10, "by a")
    edit(Path(wb.path) / "app.py", 10, "by b")
    await radar_pass(a)
    assert (await a.heartbeat()).conflicts
    git(Path(wb.path), "commit", "-q", "-am", "b saves")
    await b.pool.release(worktree_id=wb.worktree_id)
    assert (await a.heartbeat()).conflicts == []  # at once: readers join on the live allocation
    await radar_pass(a)
    events = [e for e in await a.store.events() if e.action == "radar"]
    assert [(e.outcome, e.detail.get("reason")) for e in events] == [("conflict", None), ("cleared", "released")]
    assert (await a.status()).conflict_pairs == []


async def test_incremental_pass_recomputes_only_changed_pairs(
    two: tuple[Coordinator, Coordinator], settings: Settings
) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    await b.pool.allocate("feat-b")
    first = await a.radar_loop.tick()
    # One pair, and each allocation against its base (main, the main checkout's branch).
    assert first is not None and first.computed == first.pairs == 3
    # Without inotify (the per-user limit of instances reached by other programs), every worktree is
    # snapshotted on every pass; the tree ids still decide which pairs are compared again.
    watched = a.radar_loop.radar.watcher.available
    again = await a.radar_loop.tick()
    # Nothing changed: with the watcher, no git at all.
    assert again is not None and (again.snapshots, again.computed) == (0 if watched else 2, 0)
    edit(Path(wa.path) / "other.py", 1, "x = 2")  # unstaged edit of a tracked file
    changed = await a.radar_loop.tick()
    # Only a is snapshotted again; a's pair with b and with its base are compared again, not b's base.
    assert changed is not None and (changed.snapshots, changed.computed) == (1 if watched else 2, 2)
    # ... and only where the edit was: from the scratch index of a's last snapshot, not from a's own index.
    assert changed.whole == (0 if watched else 2)
    if not watched:
        return
    os.makedirs(Path(wa.path) / "new" / "deeper")
    (Path(wa.path) / "new" / "deeper" / "file.txt").write_text("untracked, in a new directory\n")
    assert (await a.radar_loop.tick() or PassReport()).snapshots == 1
    (Path(wa.path) / "new" / "deeper" / "file.txt").write_text("edited in the new directory\n")
    assert (await a.radar_loop.tick() or PassReport()).snapshots == 1  # the new directory is watched
    git(Path(wa.path), "commit", "-q", "-am", "a commits")  # HEAD moves
    assert (await a.radar_loop.tick() or PassReport()).snapshots == 1


async def test_only_one_server_computes(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    assert await a.radar_loop.tick() is not None
    assert await b.radar_loop.tick() is None


# ---- the edit guard: `agent-coord hook pre-edit` as Claude Code runs it -----------------------------


def run_guard(env: dict[str, str], event: dict[str, object], mode: str | None) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "agent-coord"
    run_env = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    run_env.update(env)
    if mode is not None:
        run_env["AGENT_COORD_EDIT_GUARD"] = mode
    return subprocess.run(
        [str(script), "hook", "pre-edit"],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        env=run_env,
        timeout=60,
        check=False,
    )


def run_guard_raw(env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "agent-coord"
    run_env = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    return subprocess.run(
        [str(script), "hook", "pre-edit"],
        input=stdin,
        capture_output=True,
        text=True,
        env={**run_env, **env},
        timeout=60,
        check=False,
    )


def edit_event(path: Path) -> dict[str, object]:
    return {
        "hook_event_name": "PreToolUse",
        "tool_name": "Edit",
        "cwd": str(path.parent),
        "tool_input": {"file_path": str(path), "old_string": "line 10", "new_string": "x"},
    }


async def both_change_line_10(a: Coordinator, b: Coordinator) -> tuple[AllocationResult, AllocationResult]:
    """feat-a and feat-b (task "fix things") change line 10 of app.py uncommitted; the radar has looked."""
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b", task="fix things")
    edit(Path(wa.path) / "app.py", 10, "by a")
    edit(Path(wb.path) / "app.py", 10, "by b")
    await radar_pass(a)
    return wa, wb


async def test_edit_guard_answers_per_setting(two: tuple[Coordinator, Coordinator], env: dict[str, str]) -> None:
    a, b = two
    wa, wb = await both_change_line_10(a, b)
    event = edit_event(Path(wa.path) / "app.py")

    warn = run_guard(env, event, None)  # the default is warn
    assert warn.returncode == 0, warn.stderr
    out = json.loads(warn.stdout)["hookSpecificOutput"]
    assert "permissionDecision" not in out
    assert "feat-b" in out["additionalContext"] and "lines 10" in out["additionalContext"]
    assert "fix things" in out["additionalContext"]

    for mode in ("ask", "deny"):
        answer = run_guard(env, event, mode)
        out = json.loads(answer.stdout)["hookSpecificOutput"]
        assert out["permissionDecision"] == mode and "feat-b" in out["permissionDecisionReason"]

    off = run_guard(env, event, "off")
    assert (off.returncode, off.stdout) == (0, "")
    # A file nobody else changes: nothing to say.
    quiet = run_guard(env, edit_event(Path(wa.path) / "other.py"), "deny")
    assert (quiet.returncode, quiet.stdout) == (0, "")
    # The other side edits b's own file: a's worktree is the one named.
    other_side = run_guard(env, edit_event(Path(wb.path) / "app.py"), "warn")
    assert "feat-a" in json.loads(other_side.stdout)["hookSpecificOutput"]["additionalContext"]
    # A path relative to the event's cwd is the same file.
    relative = {**event, "cwd": wa.path, "tool_input": {"file_path": "app.py"}}
    assert "feat-b" in json.loads(run_guard(env, relative, "warn").stdout)["hookSpecificOutput"]["additionalContext"]
    # Input that is no event: allowed, with one line on stderr saying why.
    for bad in ("{not json", "[1, 2]"):
        refused = run_guard_raw(env, bad)
        assert (refused.returncode, refused.stdout) == (0, ""), refused
        assert "allowed without checking" in refused.stderr and len(refused.stderr.splitlines()) == 1


def test_edit_guard_fails_open(tmp_path: Path) -> None:
    event = edit_event(tmp_path / "x.py")
    missing = run_guard({"AGENT_COORD_DB": str(tmp_path / "none" / "coord.db")}, event, "deny")
    assert (missing.returncode, missing.stdout) == (0, "")
    assert "allowed without checking" in missing.stderr and len(missing.stderr.splitlines()) == 1
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    broken = run_guard({"AGENT_COORD_DB": str(garbage)}, event, "deny")
    assert (broken.returncode, broken.stdout) == (0, "") and "allowed without checking" in broken.stderr
    bad_mode = run_guard({"AGENT_COORD_DB": str(garbage)}, event, "sometimes")
    assert (bad_mode.returncode, bad_mode.stdout) == (0, "") and "EDIT_GUARD" in bad_mode.stderr
    postgres = run_guard({"AGENT_COORD_DB": "postgresql://coord:Guard-Secret@db.example/coord"}, event, "deny")
    assert (postgres.returncode, postgres.stdout) == (0, "") and "allowed without checking" in postgres.stderr
    assert "Guard-Secret" not in postgres.stderr


async def test_edit_guard_reads_a_postgresql_store(
    shared_repo: Path, env: dict[str, str], pg_url: PostgresUrl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same answer when the store is PostgreSQL, the password given in a file and never shown."""
    password_file = tmp_path / "pg-password"
    password_file.write_text("not-the-password\n")
    pg_env = {**env, "AGENT_COORD_DB": pg_url.secret_url()}
    for key, value in pg_env.items():
        monkeypatch.setenv(key, value)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Coordinator.open(Settings(), register=True, agent_id="agent-a"))
        b = await stack.enter_async_context(Coordinator.open(Settings(), register=True, agent_id="agent-b"))
        wa, _ = await both_change_line_10(a, b)
        event = edit_event(Path(wa.path) / "app.py")

        denied = run_guard(pg_env, event, "deny")
        assert denied.returncode == 0, denied.stderr
        out = json.loads(denied.stdout)["hookSpecificOutput"]
        assert out["permissionDecision"] == "deny" and "feat-b" in out["permissionDecisionReason"]
        assert "lines 10" in out["permissionDecisionReason"]
        quiet = run_guard(pg_env, edit_event(Path(wa.path) / "other.py"), "deny")
        assert (quiet.returncode, quiet.stdout) == (0, ""), quiet.stderr

        # A server that refuses the login: allowed, one line, no secret in it.
        user = pg_url.redacted().split("://", 1)[1].split("@", 1)[0].split(":", 1)[0]
        host_part = pg_url.redacted().split("@", 1)[1]
        wrong = f"postgresql://{user}:Guard-Secret-Wrong@{host_part}"
        for refused_env in (
            {**env, "AGENT_COORD_DB": wrong},
            {
                **env,
                "AGENT_COORD_DB": wrong.replace(":Guard-Secret-Wrong", ""),
                "AGENT_COORD_DB_PASSWORD_FILE": str(password_file),
            },
        ):
            refused = run_guard(refused_env, event, "deny")
            assert (refused.returncode, refused.stdout) == (0, ""), refused
            assert "allowed without checking" in refused.stderr and len(refused.stderr.splitlines()) == 1
            assert "Guard-Secret-Wrong" not in refused.stderr and "not-the-password" not in refused.stderr


async def test_allocate_and_release_results_carry_conflicts(two: tuple[Coordinator, Coordinator]) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    edit(Path(wa.path) / "app.py", 7, "by a")
    edit(Path(wb.path) / "app.py", 7, "by b")
    await radar_pass(a)
    again = await a.pool.allocate("feat-a")  # already held: the existing allocation, with what it collides with
    assert only(again.conflicts, "conflict").ranges == {"app.py": [(7, 7)]}
    wa2 = await a.pool.allocate("feat-a2")
    (Path(wa2.path) / "README.md").write_text("a2 changes the readme\n")
    git(Path(wb.path), "commit", "-q", "-am", "b saves")
    await radar_pass(a)
    released = await a.pool.release(worktree_id=wa2.worktree_id, force=True)
    # The release answers with what this agent's remaining allocation (feat-a) still collides with.
    assert [(c.kind, with_worktree(c).branch) for c in released.conflicts] == [("conflict", "feat-b")]


# ---- what every reader sees: the MCP tools and resource of a real server, and the CLI ----------------


async def test_server_and_cli_show_the_same_prediction(
    two: tuple[Coordinator, Coordinator], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcp import Client
    from typer.testing import CliRunner

    from agent_coord.cli import app
    from agent_coord.server.app import build_server

    a, b = two
    wa = await a.pool.allocate("feat-a")
    wb = await b.pool.allocate("feat-b")
    edit(Path(wa.path) / "app.py", 10, "by a")
    edit(Path(wb.path) / "app.py", 10, "by b")
    await radar_pass(a)
    # A server for agent-a (its own radar loop starts too; only one holds the lease).
    monkeypatch.setenv("AGENT_COORD_AGENT_ID", "agent-a")
    async with Client(build_server(Settings())) as client:
        beat = (await client.call_tool("heartbeat", {})).structured_content
        resource = (await client.read_resource("coord://conflicts")).contents[0]
        report = json.loads(getattr(resource, "text", ""))
    assert beat is not None
    seen = [c for c in beat["conflicts"] if c["kind"] == "conflict"]
    assert seen and seen[0]["with"]["branch"] == "feat-b" and seen[0]["ranges"] == {"app.py": [[10, 10]]}
    pair = [p for p in report["pairs"] if not p["b"].startswith("base:")]
    assert [(p["kind"], p["paths"]) for p in pair] == [("conflict", ["app.py"])]
    assert report["worktrees"][wb.worktree_id][0]["with"]["agent_id"] == "agent-a"

    cli = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(app, ["conflicts", "--json"]))
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["pairs"] == report["pairs"]
    text = await anyio.to_thread.run_sync(lambda: CliRunner().invoke(app, ["conflicts"]))
    assert f"{wa.worktree_id} conflict with {wb.worktree_id} (feat-b, agent-b): app.py:10-10" in text.stdout


async def test_a_slot_swapped_for_a_symlink_is_not_read(two: tuple[Coordinator, Coordinator], tmp_path: Path) -> None:
    a, b = two
    wa = await a.pool.allocate("feat-a")
    await b.pool.allocate("feat-b")
    other = make_repo(tmp_path / "elsewhere")
    (other / "secret.txt").write_text("not agent-coord's\n")
    objects_before = sorted(p.name for p in (other / ".git" / "objects").rglob("*"))
    moved = Path(wa.path).with_name("moved-away")
    Path(wa.path).rename(moved)
    Path(wa.path).symlink_to(other)
    report = await a.radar_loop.tick()
    assert report is not None and any(s.startswith(wa.worktree_id) and "symlink" in s for s in report.skipped)
    assert sorted(p.name for p in (other / ".git" / "objects").rglob("*")) == objects_before  # nothing written
    assert report.worktrees == 1  # b only
