"""`release`, `import-pool` and `export-pool` against real git worktrees and a real database."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import psutil
import pytest
from typer.testing import CliRunner

from agent_coord.cli import app  # every command registered
from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.models import StatusResult
from agent_coord.engine.store import EventDraft
from agent_coord.engine.store.records import Action, SlotState
from agent_coord.pool_file.markdown import parse_pool_markdown
from tests.conftest import git

T = TypeVar("T")


def with_coord(fn: Callable[[Coordinator], Awaitable[T]], agent_id: str = "agent-test", register: bool = True) -> T:
    async def go() -> T:
        async with Coordinator.open(Settings(), register=register, agent_id=agent_id) as coord:
            return await fn(coord)

    return anyio.run(go)


def status() -> StatusResult:
    return with_coord(lambda c: c.status(with_contention=False), agent_id="observer", register=False)


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def head_branch(path: Path) -> str | None:
    out = git(path, "status", "--porcelain=v2", "--branch").splitlines()
    name = next(line for line in out if line.startswith("# branch.head ")).removeprefix("# branch.head ")
    return None if name == "(detached)" else name


@pytest.fixture
def legacy(tmp_path: Path, repo: Path, settings: Settings) -> Path:
    """A hand-kept pool file in the style of older setups, next to real worktrees under the pool root."""
    pool = tmp_path / "pool"
    git(repo, "worktree", "add", "-q", "--detach", str(pool / "spare"))
    git(repo, "worktree", "add", "-q", "-b", "old/done", str(pool / "finished"))
    git(repo, "worktree", "add", "-q", "-b", "feat/wip", str(pool / "alice-wip"))
    (pool / "alice-wip" / "notes.txt").write_text("work in progress\n")  # uncommitted: must survive
    text = (
        "# Worktrees\n"
        "\n"
        "Who has which worktree. Update by hand!\n"
        "\n"
        "| Worktree | Status | Agent | Branch | Notes |\n"
        "|----------|--------|-------|--------|-------|\n"
        f"| {pool / 'spare'} | free | - | - | |\n"
        "| pool/finished | **Available** | - | old/done | merged last week |\n"
        f"| {pool / 'alice-wip'} | In use | alice | feat/wip | auth refactor |\n"
    )
    path = tmp_path / "worktrees.pool.md"
    path.write_text(text)
    return path


def test_import_adopts_real_worktrees(legacy: Path, tmp_path: Path) -> None:
    pool = (tmp_path / "pool").resolve()
    dry = invoke("import-pool", str(legacy), "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] is True and plan["adopted"] == 3
    assert status().worktrees == []  # a dry run changes nothing
    assert head_branch(pool / "finished") == "old/done"

    result = invoke("import-pool", str(legacy))
    assert result.exit_code == 0, result.output
    assert "adopted 3, skipped 0" in result.stdout

    by_path = {Path(w.path): w for w in status().worktrees}
    assert set(by_path) == {pool / "spare", pool / "finished", pool / "alice-wip"}
    spare, finished, wip = by_path[pool / "spare"], by_path[pool / "finished"], by_path[pool / "alice-wip"]
    assert (spare.state, spare.agent_id, spare.branch) == ("FREE", None, None)
    assert (finished.state, finished.agent_id, finished.branch) == ("FREE", None, None)
    assert head_branch(pool / "finished") is None  # FREE slots are detached; the branch itself stays
    assert "old/done" in git(Path(finished.repo), "branch", "--list", "old/done")
    assert (wip.state, wip.agent_id, wip.branch) == ("BUSY", "alice", "feat/wip")
    assert wip.fencing_token and wip.lease_expires_at and wip.since
    assert head_branch(pool / "alice-wip") == "feat/wip"
    assert (pool / "alice-wip" / "notes.txt").read_text() == "work in progress\n"
    agents = {a.agent_id: a for a in status().agents}
    assert agents["alice"].alive and agents["alice"].host == "(imported)"

    again = invoke("import-pool", str(legacy), "--json")  # idempotent: known paths are skipped
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["skipped"] == 3

    # The adopted allocation behaves like any other: another agent's, so --force is needed, and the
    # uncommitted work is saved to a rescue ref before the slot goes back to the pool.
    refused = invoke("release", "--agent", "alice")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("NOT_OWNER: ") and "--force" in refused.stderr
    forced = invoke("release", "--agent", "alice", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    released = json.loads(forced.stdout)["released"]
    assert [(r["worktree_id"], r["state"], r["dirty"]) for r in released] == [(wip.worktree_id, "FREE", True)]
    ref = released[0]["rescue_ref"]
    assert git(Path(wip.repo), "show", f"{ref}:notes.txt") == "work in progress\n"


def test_bad_rows_name_their_lines_and_nothing_is_imported(legacy: Path, tmp_path: Path, repo: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "spare" / "stray.txt").write_text("x")  # a FREE row must be clean
    elsewhere = tmp_path / "elsewhere"
    git(repo, "worktree", "add", "-q", "-b", "side", str(elsewhere))
    text = legacy.read_text() + (
        f"| {pool / 'ghost'} | free | - | - | |\n"
        f"| {elsewhere} | busy | bob | side | |\n"
        f"| {pool / 'finished'} | busy | - | - | |\n"
        f"| {repo} | busy | carol | main | |\n"
    )
    legacy.write_text(text)
    result = invoke("import-pool", str(legacy))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"{legacy}:"
    assert lines[1].startswith("line 7: ") and "stray.txt" in lines[1] and "FREE" in lines[1]
    assert lines[2].startswith("line 10: ") and "does not exist" in lines[2]
    assert lines[3].startswith("line 11: ") and "outside the pool root" in lines[3] and "git worktree move" in lines[3]
    assert lines[4].startswith("line 12: ") and "listed again (first on line 8)" in lines[4]
    assert lines[5].startswith("line 13: ") and "main worktree" in lines[5]
    assert status().worktrees == []
    assert head_branch(pool / "finished") == "old/done"  # not detached either


def test_malformed_row_names_its_line(tmp_path: Path, settings: Settings) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text("| path | status |\n|---|---|\n| /x | free |\n| /y | free | extra |\n")
    result = invoke("import-pool", str(bad))
    assert result.exit_code == 1
    assert result.stderr.strip() == f"{bad}: line 4: expected 2 cells like the header, found 3"
    missing = invoke("import-pool", str(tmp_path / "nope.md"))
    assert missing.exit_code == 1 and "cannot read" in missing.stderr


def test_busy_row_needs_an_agent_and_gits_branch(legacy: Path, tmp_path: Path) -> None:
    text = legacy.read_text().replace("| In use | alice | feat/wip |", "| In use | alice | feat/other |")
    legacy.write_text(text.replace("| **Available** | - | old/done |", "| busy | - | old/done |"))
    result = invoke("import-pool", str(legacy))
    assert result.exit_code == 1
    assert "line 8: " in result.stderr and "names no agent" in result.stderr
    assert "line 9: the file says branch 'feat/other' but git has 'feat/wip'" in result.stderr


def test_export_then_import_round_trips(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    async def work(coord: Coordinator) -> None:
        done = await coord.pool.allocate("feat/done")
        await coord.pool.allocate("feat/held")
        await coord.pool.allocate("feat/third")
        await coord.pool.release(worktree_id=done.worktree_id)

    with_coord(work)
    exported = tmp_path / "out" / "pool.md"
    exported.parent.mkdir()
    result = invoke("export-pool", "--output", str(exported))
    assert result.exit_code == 0, result.output
    before = status()
    stdout = invoke("export-pool")
    assert stdout.stdout == exported.read_text()  # the same Markdown, to a file or to stdout
    from agent_coord.pool_file.markdown import pool_markdown

    assert exported.read_text() == pool_markdown(before)  # exactly what coord://pool.md serves
    assert len(parse_pool_markdown(exported.read_text())) == 3

    monkeypatch.setenv("AGENT_COORD_DB", str(tmp_path / "fresh" / "coord.db"))
    assert status().worktrees == []
    imported = invoke("import-pool", str(exported))
    assert imported.exit_code == 0, imported.output
    after = status()

    def key(s: StatusResult) -> list[tuple[str, str, str, str | None, str | None]]:
        return sorted((w.worktree_id, w.path, w.state, w.branch, w.agent_id) for w in s.worktrees)

    assert key(after) == key(before)
    assert {w.state for w in after.worktrees} == {"FREE", "BUSY"}


def test_release_for_scripts(settings: Settings, repo: Path) -> None:
    allocated = with_coord(lambda c: c.pool.allocate("feat/script"), agent_id="cli-tester")
    # The owner and this CLI run in one test process; make the owner another live process, as it would
    # be (an agent is its process: the same process may release without --force).
    with sqlite3.connect(settings.db) as db:
        db.execute(
            "UPDATE agents SET pid = 1, pid_create_time = ? WHERE id = 'cli-tester'", (psutil.Process(1).create_time(),)
        )
    usage = invoke("release")
    assert usage.exit_code == 2
    both = invoke("release", "--branch", "feat/script", "--agent", "cli-tester")
    assert both.exit_code == 2
    missing = invoke("release", "--worktree", "wt-99")
    assert missing.exit_code == 1 and missing.stderr.startswith("NOT_FOUND: ")
    refused = invoke("release", "--branch", "feat/script")
    assert refused.exit_code == 1 and refused.stderr.startswith("NOT_OWNER: ") and "--force" in refused.stderr
    assert "force=true" not in refused.stderr

    # Run as the owner (a hook inside the agent's environment): no --force needed.
    owner = CliRunner().invoke(app, ["release", "--branch", "feat/script"], env={"AGENT_COORD_AGENT_ID": "cli-tester"})
    assert owner.exit_code == 0, owner.output
    assert owner.stdout.split("\n")[0].split() == ["worktree", "state", "branch", "dirty", "rescue", "ref", "path"]
    assert allocated.worktree_id in owner.stdout and "FREE" in owner.stdout
    nothing = invoke("release", "--agent", "cli-tester", "--json")
    assert nothing.exit_code == 0 and json.loads(nothing.stdout) == {"released": [], "refused": []}


def test_paths_the_store_knows_are_skipped_and_differences_reported(legacy: Path, tmp_path: Path) -> None:
    pool = (tmp_path / "pool").resolve()

    async def known_already(coord: Coordinator) -> None:
        # As a server's validation would have done: it adopts unknown worktrees under the pool root.
        repo = await coord.repos.resolve(None)
        for name, state in (("spare", SlotState.FREE), ("alice-wip", SlotState.QUARANTINED)):
            draft = EventDraft(Action.ADOPT, state.value, agent_id=coord.agent_id, repo_id=repo.id)
            await coord.store.insert_slot(repo, str(pool / name), state=state, branch=None, event=draft)

    with_coord(known_already)
    result = invoke("import-pool", str(legacy), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["adopted"], data["skipped"]) == (1, 2)
    spare, finished, wip = sorted(data["rows"], key=lambda r: r["line"])
    assert spare["action"] == "skip"
    assert spare["note"] == f"already in the pool as {spare['worktree_id']}; its record is kept"
    assert (finished["action"], finished["state"]) == ("adopt", "FREE")
    assert (wip["action"], wip["state"]) == ("skip", "QUARANTINED")
    assert "the file says BUSY (alice)" in wip["note"]


@pytest.mark.anyio
async def test_a_conflict_at_write_time_undoes_the_detach(legacy: Path, coord: Any, tmp_path: Path) -> None:
    from agent_coord.engine.store import AdoptionConflictError
    from agent_coord.pool_file.importer import PoolImporter, PoolImportError

    pool = tmp_path / "pool"

    async def lost_race(*args: Any, **kwargs: Any) -> Any:
        raise AdoptionConflictError(str((pool / "finished").resolve()), "already in the pool as wt-07")

    coord.store.adopt_slots = lost_race
    importer = PoolImporter(coord.store, coord.git, coord.repos, coord.identity)
    with pytest.raises(PoolImportError, match=r"line 8: .* nothing was imported"):
        await importer.import_text(legacy.read_text(), base_dir=legacy.parent, source=str(legacy), lease_s=60)
    assert head_branch(pool / "finished") == "old/done"  # detached for the write, then put back
    assert await coord.store.slots() == []
