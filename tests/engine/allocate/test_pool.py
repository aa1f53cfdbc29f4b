"""The pool engine against real git: two-phase allocation, warm reuse, conflicts, release, rescue."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git import seal
from agent_coord.engine.git.worktree_probe import clear_add_marker
from agent_coord.engine.store.records import SlotState
from tests.agent_proc import MIN_WAIT_S, exited, wait_for
from tests.conftest import git

pytestmark = pytest.mark.anyio


async def test_allocate_creates_then_reuses_warm_slot(coord: Any, repo: Path, tmp_path: Path) -> None:
    first = await coord.pool.allocate("feat/a")
    assert first.reused is False
    assert Path(first.path).parent == (tmp_path / "pool").resolve()
    assert git(Path(first.path), "symbolic-ref", "--short", "HEAD").strip() == "feat/a"
    assert first.strategy == "optimistic" and first.attempts == 1
    assert first.fencing_token > 0

    released = await coord.pool.release(worktree_id=first.worktree_id)
    assert released.state == "FREE" and released.dirty is False
    # Warm: still on disk, detached, branch kept.
    assert Path(first.path).is_dir()
    assert git(Path(first.path), "status", "--porcelain=v2", "--branch").splitlines()[1] == "# branch.head (detached)"
    assert "feat/a" in git(repo, "branch", "--list", "feat/a")

    second = await coord.pool.allocate("feat/b")
    assert second.reused is True
    assert second.worktree_id == first.worktree_id
    assert second.fencing_token > first.fencing_token
    assert git(Path(second.path), "symbolic-ref", "--short", "HEAD").strip() == "feat/b"


async def test_warm_slot_at_the_start_commit_and_elsewhere_both_start_there(coord: Any, repo: Path) -> None:
    """A FREE slot already at the start commit only gets the branch (git's no-checkout path); one
    released elsewhere is switched, files and index, to the start."""
    main_head = git(repo, "rev-parse", "HEAD").strip()
    fast: list[str] = []
    branch_at_head = coord.pool.git.branch_at_head

    async def spy(path: Path, branch: str) -> None:
        fast.append(branch)
        await branch_at_head(path, branch)

    coord.pool.git.branch_at_head = spy
    a = await coord.pool.allocate("feat/stay")
    wt = Path(a.path)
    await coord.pool.release(worktree_id=a.worktree_id)
    b = await coord.pool.allocate("feat/fast")
    assert fast == ["feat/fast"]
    assert b.reused and git(wt, "rev-parse", "HEAD").strip() == main_head
    assert git(wt, "symbolic-ref", "--short", "HEAD").strip() == "feat/fast"
    (wt / "README.md").write_text("moved on\n")
    (wt / "new.txt").write_text("new\n")
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "-m", "work")
    await coord.pool.release(worktree_id=b.worktree_id)
    c = await coord.pool.allocate("feat/back")
    assert fast == ["feat/fast"]  # elsewhere: the full switch
    assert c.reused and c.worktree_id == a.worktree_id
    assert git(wt, "rev-parse", "HEAD").strip() == main_head
    assert git(wt, "status", "--porcelain") == ""
    assert (wt / "README.md").read_text() == "hello\n" and not (wt / "new.txt").exists()
    assert git(repo, "rev-parse", "feat/fast").strip() != main_head  # the work stays on its branch

    # An index.lock left in a FREE slot at the start commit: the full switch runs, fails on it, and
    # the allocation is refused and rolled back instead of handing out a slot where `git add` fails.
    await coord.pool.release(worktree_id=c.worktree_id)
    lock = Path(git(wt, "rev-parse", "--path-format=absolute", "--git-path", "index.lock").strip())
    lock.write_text("")
    with pytest.raises(CoordError) as refused:
        await coord.pool.allocate("feat/locked-index")
    assert refused.value.code == ErrorCode.GIT_FAILED and "index.lock" in str(refused.value)
    assert fast == ["feat/fast"]
    lock.unlink()
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE


async def test_same_agent_same_branch_is_idempotent(coord: Any) -> None:
    a = await coord.pool.allocate("feat/x")
    b = await coord.pool.allocate("feat/x")
    assert b.worktree_id == a.worktree_id and b.fencing_token == a.fencing_token
    assert b.strategy == "existing"
    assert len([s for s in await coord.store.slots() if s.state == SlotState.BUSY]) == 1


async def test_existing_branch_is_checked_out_not_recreated(coord: Any, repo: Path) -> None:
    git(repo, "branch", "old-work")
    (repo / "f.txt").write_text("x")
    result = await coord.pool.allocate("old-work")
    assert git(Path(result.path), "rev-parse", "HEAD") == git(repo, "rev-parse", "old-work")


class CreatesTheBranchFirst:
    """The contention snapshot, taken between the checks and the claim, preceded by another agent
    creating the branch (and, when `hold` is given, allocating it): the interleaving a loaded machine
    produces by chance, made to happen every time."""

    def __init__(self, inner: Any, repo: Path, branch: str, hold: Any = None) -> None:
        self.inner, self.repo, self.branch, self.hold, self.done = inner, repo, branch, hold, False

    async def snapshot(self, repo: Any, slots: Any = None) -> Any:
        if not self.done:
            self.done = True
            git(self.repo, "branch", self.branch, "HEAD~1")
            if self.hold is not None:
                await self.hold.pool.allocate(self.branch)
        return await self.inner.snapshot(repo, slots)


async def test_a_branch_created_by_another_after_the_checks_is_taken_as_it_is(coord: Any, repo: Path) -> None:
    (repo / "b.txt").write_text("b")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "second")
    for warm in (False, True):  # `git worktree add -b` and `git switch -c` both refuse; both are decided again
        branch = f"feat/appeared-{warm}"
        if warm:
            await coord.pool.release(worktree_id=(await coord.store.slots())[0].id)
        coord.pool.contention = CreatesTheBranchFirst(coord.pool.contention, repo, branch)
        result = await coord.pool.allocate(branch)
        assert result.reused is warm
        assert git(Path(result.path), "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD~1")  # theirs, kept
        coord.pool.contention = coord.pool.contention.inner
    refused = [e for e in await coord.store.events() if e.action == "allocate" and e.outcome != "ok"]
    assert refused == []


async def test_a_branch_created_and_held_by_another_after_the_checks_is_a_branch_conflict(
    coord: Any, repo: Path, settings: Any
) -> None:
    from agent_coord.engine.coordinator import Coordinator

    (repo / "b.txt").write_text("b")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "second")
    async with Coordinator.open(settings, register=True, agent_id="agent-other") as other:
        coord.pool.contention = CreatesTheBranchFirst(coord.pool.contention, repo, "feat/raced", hold=other)
        with pytest.raises(CoordError) as err:
            await coord.pool.allocate("feat/raced")
    assert err.value.code == ErrorCode.BRANCH_CONFLICT and "agent-other" in err.value.message


async def test_base_is_the_start_of_a_new_branch(coord: Any, repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD").strip()
    (repo / "b.txt").write_text("b")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "second")
    result = await coord.pool.allocate("from-first", base=first)
    assert git(Path(result.path), "rev-parse", "HEAD").strip() == first


async def test_branch_checked_out_in_main_worktree_conflicts(coord: Any) -> None:
    with pytest.raises(CoordError) as err:
        await coord.pool.allocate("main")
    assert err.value.code == ErrorCode.BRANCH_CONFLICT
    assert "main worktree" in err.value.message
    assert await coord.store.slots() == []


async def test_branch_held_by_other_agent_conflicts(coord: Any, settings: Any) -> None:
    from agent_coord.engine.coordinator import Coordinator

    held = await coord.pool.allocate("shared")
    async with Coordinator.open(settings, register=True, agent_id="agent-other") as other:
        with pytest.raises(CoordError) as err:
            await other.pool.allocate("shared")
    assert err.value.code == ErrorCode.BRANCH_CONFLICT
    assert "agent-test" in err.value.message and held.worktree_id in err.value.message
    assert "since" in err.value.message


async def test_pool_exhausted(make_settings: Any) -> None:
    from agent_coord.engine.coordinator import Coordinator

    async with Coordinator.open(make_settings(pool_max=2), register=True, agent_id="agent-x") as c:
        await c.pool.allocate("a")
        await c.pool.allocate("b")
        with pytest.raises(CoordError) as err:
            await c.pool.allocate("c")
        assert err.value.code == ErrorCode.POOL_EXHAUSTED
        assert len(await c.store.slots()) == 2


async def test_bad_base_is_refused_before_anything_is_claimed(coord: Any) -> None:
    warm = await coord.pool.allocate("warm")
    await coord.pool.release(worktree_id=warm.worktree_id)
    before = await coord.store.slots()
    with pytest.raises(CoordError) as err:
        await coord.pool.allocate("bad-base", base="no-such-ref")
    assert err.value.code == ErrorCode.GIT_FAILED
    assert "no-such-ref" in err.value.message and "fatal:" in err.value.message  # git's own reason
    assert await coord.store.slots() == before  # not even a version moved


async def test_git_failure_in_the_middle_rolls_back_to_free(coord: Any, repo: Path) -> None:
    # A post-checkout hook's exit status becomes `git switch`'s and `git worktree add`'s: a failure
    # that only git meets, after the slot was claimed.
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(
        '#!/bin/sh\ncase "$(git rev-parse --abbrev-ref HEAD)" in boom*) echo "hook says no" >&2; exit 1;; esac\n'
    )
    hook.chmod(0o755)
    warm = await coord.pool.allocate("warm")
    await coord.pool.release(worktree_id=warm.worktree_id)
    with pytest.raises(CoordError) as err:
        await coord.pool.allocate("boom-warm")
    assert err.value.code == ErrorCode.GIT_FAILED
    assert "hook says no" in err.value.message  # git's own reason
    (slot,) = await coord.store.slots()
    assert slot.state == SlotState.FREE and slot.owner is None and slot.branch is None
    # And the cold path: git made the worktree before its hook failed, so the new slot stays, FREE.
    other = await coord.pool.allocate("taken-warm")
    with pytest.raises(CoordError) as err2:
        await coord.pool.allocate("boom-cold")
    assert err2.value.code == ErrorCode.GIT_FAILED
    slots = {s.id: s for s in await coord.store.slots()}
    assert slots.pop(other.worktree_id).state == SlotState.BUSY
    (new,) = slots.values()
    assert new.state == SlotState.FREE and new.owner is None
    assert git(Path(new.path), "status", "--porcelain=v2", "--branch").splitlines()[1].endswith("(detached)")


async def test_names_git_cannot_create_are_refused_before_any_claim(coord: Any, repo: Path) -> None:
    git(repo, "branch", "a")
    git(repo, "branch", "x/y")
    warm = await coord.pool.allocate("warm")
    await coord.pool.release(worktree_id=warm.worktree_id)
    before = await coord.store.slots()
    for name in ("a/b", "x", "z/" + "q" * 251):
        with pytest.raises(CoordError) as err:
            await coord.pool.allocate(name)
        assert err.value.code == ErrorCode.INVALID_BRANCH, name
    assert await coord.store.slots() == before


async def test_dirty_release_refused_then_forced_to_rescue_ref(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("work")
    wt = Path(a.path)
    (wt / "README.md").write_text("changed\n")
    (wt / "new-file.txt").write_bytes(b"\x00\x01binary\xff")
    (wt / "sub").mkdir()
    (wt / "sub" / "deep.txt").write_text("deep")
    before = await coord.store.slots()
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id)
    assert err.value.code == ErrorCode.WORKTREE_DIRTY
    assert "README.md" in err.value.message and "new-file.txt" in err.value.message
    assert await coord.store.slots() == before
    assert (wt / "new-file.txt").exists()

    r = await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert r.dirty and r.rescue_ref and r.rescue_ref.startswith("refs/agent-coord/rescue/work/")
    assert git(repo, "show", f"{r.rescue_ref}:README.md") == "changed\n"
    blob = subprocess_bytes(repo, "show", f"{r.rescue_ref}:new-file.txt")
    assert blob == b"\x00\x01binary\xff"
    assert git(repo, "show", f"{r.rescue_ref}:sub/deep.txt") == "deep"
    # The rescue commit sits on the branch tip, so `git diff` shows exactly the work.
    assert git(repo, "rev-parse", f"{r.rescue_ref}^").strip() == git(repo, "rev-parse", "work").strip()
    assert not (wt / "new-file.txt").exists()


def subprocess_bytes(cwd: Path, *args: str) -> bytes:
    import subprocess

    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True).stdout


async def test_release_by_branch_path_and_default(coord: Any) -> None:
    a = await coord.pool.allocate("one")
    r = await coord.pool.release(branch="one")
    assert r.worktree_id == a.worktree_id
    b = await coord.pool.allocate("two")
    r = await coord.pool.release(path=b.path)
    assert r.worktree_id == b.worktree_id
    c = await coord.pool.allocate("three")
    r = await coord.pool.release()
    assert r.worktree_id == c.worktree_id
    with pytest.raises(CoordError) as err:
        await coord.pool.release()
    assert err.value.code == ErrorCode.NOT_FOUND


async def test_release_of_another_agents_worktree_needs_force(coord: Any, settings: Any) -> None:
    """Another agent's worktree: NOT_OWNER without force; with an agent's force still NOT_OWNER while
    its owner lives; a person's (the CLI's) force takes it, recorded as forced."""
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.liveness.judge import start_since_boot
    from tests.agent_proc import set_agent

    a = await coord.pool.allocate("theirs")
    # Both coordinators live in this test process; make the owner another (live) process, as it would be.
    owner = subprocess.Popen(["sleep", "60"])
    try:
        set_agent(
            {"AGENT_COORD_DB": str(settings.db)},
            "agent-test",
            pid=owner.pid,
            pid_create_time=psutil.Process(owner.pid).create_time(),
            pid_start_s=start_since_boot(owner.pid),
        )
        async with Coordinator.open(settings, register=True, agent_id="agent-other") as other:
            with pytest.raises(CoordError) as err:
                await other.pool.release(worktree_id=a.worktree_id)
            assert err.value.code == ErrorCode.NOT_OWNER
            with pytest.raises(CoordError) as err:
                await other.pool.release(worktree_id=a.worktree_id, force=True)
            assert err.value.code == ErrorCode.NOT_OWNER and "alive" in err.value.message
            r = await other.pool.release(worktree_id=a.worktree_id, force=True, over_live_agent=True)
            assert r.state == "FREE"
    finally:
        owner.kill()
        owner.wait()
    events = await coord.store.events()
    forced = [e for e in events if e.action == "release" and e.outcome == "ok"]
    assert forced[-1].detail.get("forced_from") == "agent-test"


async def test_remove_deletes_the_slot(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("gone")
    r = await coord.pool.release(worktree_id=a.worktree_id, remove=True)
    assert r.removed and not Path(a.path).exists()
    assert await coord.store.slots() == []
    assert a.path not in git(repo, "worktree", "list")


async def test_locked_worktree_is_not_released(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("locked")
    git(repo, "worktree", "lock", "--reason", "keep", a.path)
    with pytest.raises(CoordError) as err:
        await coord.pool.release(worktree_id=a.worktree_id, force=True)
    assert err.value.code == ErrorCode.WORKTREE_LOCKED


async def test_database_file_is_private(coord: Any, settings: Any) -> None:
    mode = stat.S_IMODE(os.stat(settings.db).st_mode)
    assert mode == 0o600


async def test_fencing_tokens_strictly_increase(coord: Any) -> None:
    tokens = []
    for i in range(5):
        a = await coord.pool.allocate(f"t{i}")
        tokens.append(a.fencing_token)
        await coord.pool.release(worktree_id=a.worktree_id)
    assert tokens == sorted(set(tokens))


async def test_worktreeinclude_and_post_create_once(make_settings: Any, repo: Path, tmp_path: Path) -> None:
    from agent_coord.engine.coordinator import Coordinator

    (repo / ".env").write_text("SECRET=1\n")
    (repo / ".worktreeinclude").write_text(".env\n")
    marker = tmp_path / "setup-runs.log"
    script = tmp_path / "setup.sh"
    script.write_text(f"#!/bin/sh\necho run >> {marker}\n")
    script.chmod(0o755)
    s = make_settings(post_create=(str(script),))
    async with Coordinator.open(s, register=True, agent_id="agent-setup") as c:
        a = await c.pool.allocate("inc")
        assert (Path(a.path) / ".env").read_text() == "SECRET=1\n"
        await c.pool.release(worktree_id=a.worktree_id)
        await c.pool.allocate("inc2")  # warm reuse: no second setup
    assert marker.read_text().count("run") == 1


async def test_failing_post_create_fails_cleanly(make_settings: Any) -> None:
    from agent_coord.engine.coordinator import Coordinator

    s = make_settings(post_create=("sh -c 'echo boom >&2; exit 3'",))
    async with Coordinator.open(s, register=True, agent_id="agent-setup") as c:
        with pytest.raises(CoordError) as err:
            await c.pool.allocate("setup-fails")
        assert err.value.code == ErrorCode.GIT_FAILED
        assert "boom" in err.value.message and "exited 3" in err.value.message
        (slot,) = await c.store.slots()
        assert slot.state == SlotState.FREE and not slot.setup_done


async def test_a_roll_back_without_gits_listing_keeps_the_slot(make_settings: Any, repo: Path) -> None:
    """The setup fails and leaves `git worktree list` failing too (an admin folder it cannot read): the
    roll-back cannot learn from git that the worktree exists, and must not drop the slot's row."""
    from agent_coord.engine.coordinator import Coordinator

    broken = repo / ".git" / "worktrees" / "not-ours"
    script = f"mkdir -p '{broken}/commondir' && echo '{broken}/gitdir-target' > '{broken}/gitdir' && exit 3"
    s = make_settings(post_create=(f"sh -c {shlex.quote(script)}",))
    async with Coordinator.open(s, register=True, agent_id="agent-setup") as c:
        with pytest.raises(CoordError) as err:
            await c.pool.allocate("setup-breaks-the-listing")
        assert err.value.code == ErrorCode.GIT_FAILED
        listing = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True)
        assert listing.returncode != 0, "the listing must fail for this test to mean anything"
        (slot,) = await c.store.slots()
        assert Path(slot.path).is_dir()
        assert slot.state in (SlotState.FREE, SlotState.QUARANTINED), slot


async def cancel_once_started(call: Awaitable[object], marker: Path) -> None:
    """Run `call` and cancel it once `marker` exists (its post-create command has started): at that
    step, whatever the machine's load, not after a guessed delay."""
    import anyio

    async def run() -> None:
        await call

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(60):
                while not marker.exists():
                    await anyio.sleep(0.02)
            scope.cancel()
    assert scope.cancelled_caught


async def test_cancelled_allocation_leaves_nothing_half_done(make_settings: Any) -> None:

    from agent_coord.engine.coordinator import Coordinator

    s = make_settings(post_create=("sh -c 'touch ../started; sleep 5'",))
    async with Coordinator.open(s, register=True, agent_id="agent-cancel") as c:
        await cancel_once_started(c.pool.allocate("cancelled"), Path(s.pool_root) / "started")
        (slot,) = await c.store.slots()
        assert slot.state == SlotState.FREE and slot.owner is None and slot.branch is None
        assert git(Path(slot.path), "status", "--porcelain=v2", "--branch").splitlines()[1].endswith("(detached)")
        events = [e for e in await c.store.events() if e.action == "reclaim"]
        assert events[-1].outcome == "rolled_back"


async def test_a_cancel_inside_worktree_add_leaves_no_lock_behind(make_settings: Any) -> None:
    """A cancelled request kills its git; killed inside `git worktree add`, git leaves its own lock
    ('initializing') on the new worktree. The roll-back removes that lock (and only that one), or the
    next agent would get a slot it can never release."""

    from agent_coord.engine.coordinator import Coordinator

    # As git leaves it: the marker in the worktree's admin dir, then the process dies (here: is cancelled).
    leave_marker = (
        "sh -c 'test -e ../once && exit 0;"
        ' echo initializing > "$(git rev-parse --git-path locked)"; touch ../once; sleep 5\''
    )
    s = make_settings(post_create=(leave_marker,))
    async with Coordinator.open(s, register=True, agent_id="agent-cancel") as c:
        await cancel_once_started(c.pool.allocate("cancelled"), Path(s.pool_root) / "once")
        (slot,) = await c.store.slots()
        assert slot.state == SlotState.FREE
        assert "locked" not in git(Path(slot.path), "worktree", "list", "--porcelain")
        (rolled,) = [e for e in await c.store.events() if e.action == "reclaim"]
        assert "initializing" in rolled.detail["cleared"]
        again = await c.pool.allocate("next")
        assert again.worktree_id == slot.id
        assert (await c.pool.release(worktree_id=again.worktree_id)).state == "FREE"
        # A person's lock, whatever it says, is never removed.
        git(Path(slot.path), "worktree", "lock", "--reason", "mine: initializing", slot.path)
        assert clear_add_marker(Path(slot.path), since=0.0) is False
        assert "locked mine: initializing" in git(Path(slot.path), "worktree", "list", "--porcelain")


async def test_setup_time_does_not_count_against_the_allocation_timeout(make_settings: Any) -> None:
    from agent_coord.engine.coordinator import Coordinator

    # The timeout leaves the checks and the git phase room on a loaded machine; setup alone outlasts it.
    s = make_settings(post_create=("sleep 6",), allocation_timeout_s=5.0)
    async with Coordinator.open(s, register=True, agent_id="agent-slow-setup") as c:
        result = await c.pool.allocate("slow-setup")
        assert result.latency_ms > 5000


async def test_a_setup_cut_short_is_ended_with_what_it_started(coord: Any, repo: Path, tmp_path: Path) -> None:
    """A post-create command cancelled (a timed-out or cancelled allocation) ends with its own children:
    nothing it started writes on in the slot once the allocation is rolled back."""
    import anyio

    from agent_coord.engine.allocate.slot_setup import run_post_create
    from agent_coord.engine.git.confinement import Bounds

    grant = await coord.pool.allocate("feat/setup-tree")
    confined = Bounds.of(repo, Path(grant.path).parent).slot(Path(grant.path))
    pid_file = tmp_path / "child.pid"
    command = shlex.join(["sh", "-c", f"sleep 300 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"])
    async with anyio.create_task_group() as tg:
        tg.start_soon(run_post_create, [command], confined, 600.0)
        await wait_for(pid_file.exists, MIN_WAIT_S)
        child = psutil.Process(int(pid_file.read_text()))
        tg.cancel_scope.cancel()
    await wait_for(lambda: exited(child), MIN_WAIT_S)


async def test_new_slots_skip_paths_taken_by_adopted_worktrees(coord: Any, repo: Path, tmp_path: Path) -> None:
    from agent_coord.engine.store import EventDraft
    from agent_coord.engine.store.records import SlotState

    pool = tmp_path / "pool"
    pool.mkdir(exist_ok=True)
    git(repo, "worktree", "add", "-q", "--detach", str(pool / "wt-02"))
    r = await coord.repos.resolve(None)
    adopted = await coord.store.insert_slot(
        r,
        str((pool / "wt-02").resolve()),
        state=SlotState.FREE,
        branch=None,
        event=EventDraft("adopt", "FREE", agent_id="agent-test"),
    )
    assert adopted.id == "wt-01"  # ids come from the sequence; the adopted path keeps its name
    a = await coord.pool.allocate("x1")  # warm: the adopted slot
    b = await coord.pool.allocate("x2")  # cold: wt-02's default path is taken, so wt-03
    assert a.worktree_id == "wt-01" and b.worktree_id == "wt-03"
    assert Path(b.path).name == "wt-03"


async def test_same_agent_process_releases_without_force(coord: Any, settings: Any) -> None:
    """A hook of the same Claude Code process allocates as `claude-<session>`; the session's server may
    release it: an agent is its process, whatever id it registered under."""
    from agent_coord.engine.coordinator import Coordinator

    async with Coordinator.open(settings, register=True, agent_id="claude-0123456789ab", origin="session") as hook:
        a = await hook.pool.allocate("from-hook")
    r = await coord.pool.release(worktree_id=a.worktree_id)
    assert r.state == "FREE"
    ok = [e for e in await coord.store.events() if e.action == "release" and e.outcome == "ok"]
    assert "forced_from" not in ok[-1].detail


async def test_new_branch_starts_from_its_only_remote_namesake(coord: Any, repo: Path, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    git(tmp_path, "clone", "-q", str(repo), str(upstream))
    git(upstream, "switch", "-q", "-c", "remote-only")
    (upstream / "r.txt").write_text("from upstream")
    git(upstream, "add", "r.txt")
    git(upstream, "commit", "-q", "-m", "upstream work")
    git(upstream, "branch", "x/remote-only")  # origin/x/remote-only: same last name, another branch
    git(repo, "remote", "add", "origin", str(upstream))
    git(repo, "fetch", "-q", "origin")
    a = await coord.pool.allocate("remote-only")
    assert git(Path(a.path), "rev-parse", "HEAD") == git(repo, "rev-parse", "origin/remote-only")


# ---- the warm path's safety checks, with fewer git processes -------------------------------------


async def test_stray_changes_in_a_free_slot_go_to_a_rescue_ref_before_the_switch(coord: Any, repo: Path) -> None:
    first = await coord.pool.allocate("first")
    await coord.pool.release(worktree_id=first.worktree_id)
    wt = Path(first.path)
    (wt / "stray.txt").write_text("written into a free slot\n")
    (wt / "deep").mkdir()
    (wt / "deep" / "er.txt").write_text("untracked, two levels down\n")
    (wt / "README.md").write_text("edited in a free slot\n")

    second = await coord.pool.allocate("second")
    assert second.reused and second.worktree_id == first.worktree_id
    rescues = [e for e in await coord.store.events() if e.action == "rescue"]
    assert [e.detail["reason"] for e in rescues] == ["stray changes in a free slot"]
    ref = rescues[0].detail["rescue_ref"]
    assert git(repo, "show", f"{ref}:stray.txt") == "written into a free slot\n"
    assert git(repo, "show", f"{ref}:deep/er.txt") == "untracked, two levels down\n"
    assert git(repo, "show", f"{ref}:README.md") == "edited in a free slot\n"
    # Nothing followed the slot into the new agent's branch.
    assert git(wt, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(wt, "symbolic-ref", "--short", "HEAD").strip() == "second"


async def test_commits_only_on_a_free_slots_head_are_rescued(coord: Any, repo: Path) -> None:
    # Two ways a FREE slot's detached HEAD ends up holding the only copy of commits: someone commits
    # in the free slot, or the branch it was released from is deleted.
    a = await coord.pool.allocate("committed-in-free-slot")
    await coord.pool.release(worktree_id=a.worktree_id)
    wt = Path(a.path)
    (wt / "c.txt").write_text("c")
    git(wt, "add", "c.txt")
    git(wt, "commit", "-q", "-m", "on the free slot's detached HEAD")
    lonely = git(wt, "rev-parse", "HEAD").strip()
    b = await coord.pool.allocate("after-commit")
    assert b.worktree_id == a.worktree_id

    (wt / "d.txt").write_text("d")
    git(wt, "add", "d.txt")
    git(wt, "commit", "-q", "-m", "on the branch")
    on_branch = git(wt, "rev-parse", "HEAD").strip()
    await coord.pool.release(worktree_id=b.worktree_id)
    git(repo, "branch", "-D", "after-commit")
    c = await coord.pool.allocate("after-delete")
    assert c.worktree_id == a.worktree_id

    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue").split()
    assert len(refs) == 2
    for commit in (lonely, on_branch):
        assert any(is_ancestor(repo, commit, r) for r in refs), commit


def is_ancestor(repo: Path, commit: str, ref: str) -> bool:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", commit, ref]).returncode == 0


async def test_an_unborn_repository_is_refused_before_any_claim(make_settings: Any, tmp_path: Path) -> None:
    from agent_coord.engine.coordinator import Coordinator

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q", "-b", "main")
    async with Coordinator.open(make_settings(), register=True, agent_id="agent-unborn") as c:
        with pytest.raises(CoordError) as err:
            await c.pool.allocate("first", repo=str(empty))
        assert err.value.code == ErrorCode.GIT_FAILED
        assert "no commit" in err.value.message
        assert await c.store.slots() == []


async def test_a_new_branch_starts_from_the_main_worktrees_head_as_it_is_now(coord: Any, repo: Path) -> None:
    a = await coord.pool.allocate("before")
    await coord.pool.release(worktree_id=a.worktree_id)
    (repo / "later.txt").write_text("later")
    git(repo, "add", "later.txt")
    git(repo, "commit", "-q", "-m", "main moves on")
    b = await coord.pool.allocate("after")
    assert git(Path(b.path), "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")
    git(repo, "switch", "-q", "--detach", "HEAD~1")  # a detached main worktree: its HEAD all the same
    c = await coord.pool.allocate("from-detached")
    assert git(Path(c.path), "rev-parse", "HEAD") == git(repo, "rev-parse", "HEAD")


async def test_git_processes_per_allocation_and_release(coord: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm path is CPU-bound by git processes (BENCHMARKS.md): hold it to its budget."""
    from agent_coord.engine.git import driver

    ran: list[str] = []
    real = driver.run_prepared

    async def counting(prepare: Any, **kwargs: Any) -> Any:
        def recorded() -> Any:
            command, env = prepare()
            ran.append(" ".join(str(c) for c in command[3:5] if not str(c).startswith("-")))
            return command, env

        return await real(recorded, **kwargs)

    monkeypatch.setattr(driver, "run_prepared", counting)
    cold = await coord.pool.allocate("cold")
    assert len(ran) == 1, ran  # worktree add (the worktree list and the branch's refs read from git's files)
    ran.clear()
    await coord.pool.release(worktree_id=cold.worktree_id)
    assert len(ran) == 2, ran  # status, switch --detach
    # The warm path without a seal, whatever the machine's speed (a release that took over the margin
    # could seal it; tests/engine/git/test_git_processes.py counts the sealed path).
    seal.drop(Path(git(Path(cold.path), "rev-parse", "--absolute-git-dir").strip()))
    ran.clear()
    warm = await coord.pool.allocate("warm")
    # status beside the unsaved-commit rev-list, switch
    assert warm.reused and len(ran) == 3, ran


async def test_a_locked_free_slot_is_never_handed_out(coord: Any) -> None:
    first = await coord.pool.allocate("feat/one")
    await coord.pool.release(worktree_id=first.worktree_id)
    git(Path(first.path), "worktree", "lock", "--reason", "keeping this one", first.path)
    second = await coord.pool.allocate("feat/two")
    assert second.worktree_id != first.worktree_id and not second.reused
    assert (await coord.pool.release(worktree_id=second.worktree_id)).state == "FREE"
    slots = {s.id: s.state for s in await coord.store.slots()}
    assert slots == {first.worktree_id: SlotState.FREE, second.worktree_id: SlotState.FREE}


async def test_a_done_grant_and_release_are_answered_done_when_the_radar_cannot_be_read(
    coord: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store goes away after the operation committed, as the answer reads the radar's pairs: the
    agent is told what happened (granted, released), without the pairs, not STORE_UNAVAILABLE."""
    from agent_coord.engine.store.connection import StoreUnavailableError

    async def store_gone() -> None:
        raise StoreUnavailableError(coord.store.path, "the server is gone")

    monkeypatch.setattr(coord.store, "live_pairs", store_gone)
    granted = await coord.pool.allocate("feat/answered")
    assert granted.conflicts == []
    released = await coord.pool.release(worktree_id=granted.worktree_id)
    assert released.conflicts == []
    monkeypatch.undo()
    (slot,) = [s for s in await coord.store.slots() if s.id == granted.worktree_id]
    assert slot.state == SlotState.FREE and slot.owner is None
