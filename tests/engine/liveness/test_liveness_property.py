"""A property test: random sequences of allocate / release / write / heartbeat / kill / stale / crash /
restart / validate, some of them concurrent, across three agents sharing one database and repository.

Each agent is an in-process coordinator with its own database connection (as a server would be),
whose *agent process* is a real child process: "kill" SIGKILLs and reaps it, so death is detected
exactly as in production. After every step:

* no slot has two owners: no two held rows share a branch, every BUSY row has one owner, and no grant
  an agent still legitimately holds has been taken from it (a live, heartbeating agent is never
  reclaimed);
* fencing tokens only grow: the counter never goes back, each grant's token is above every earlier
  one, and no row's token ever decreases;
* no work is lost: every uncommitted file ever written in a worktree is still in that worktree, or in
  a rescue ref, byte for byte;
* after a repair, no slot is held by a dead agent, and a second repair finds nothing; a dry run
  changes nothing.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from agent_coord.engine.liveness.judge import Identity, boot_id
from agent_coord.engine.store import Store
from tests.conftest import make_repo

AGENTS = 3
BRANCHES = 4
MIN_STEPS = 10
MAX_STEPS = 25
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "8"))
HELD = ("ALLOCATING", "BUSY", "RELEASING")

agent_ix = st.integers(0, AGENTS - 1)
branch_ix = st.integers(0, BRANCHES - 1)
STEP = st.one_of(
    st.tuples(st.just("allocate"), agent_ix, branch_ix),
    st.tuples(st.just("release"), agent_ix, st.booleans()),
    st.tuples(st.just("write"), agent_ix, st.binary(min_size=1, max_size=48)),
    st.tuples(st.just("heartbeat"), agent_ix),
    st.tuples(st.just("kill"), agent_ix),
    st.tuples(st.just("stale"), agent_ix),
    st.tuples(st.just("crash"), agent_ix, branch_ix),
    st.tuples(st.just("restart"), agent_ix),
    st.tuples(st.just("validate"), agent_ix, st.booleans()),
    st.tuples(st.just("race"), agent_ix, branch_ix),
)


@dataclass
class Written:
    worktree: Path
    name: str
    data: bytes


@dataclass
class Agent:
    agent_id: str
    proc: subprocess.Popen[bytes] | None = None
    coord: Coordinator | None = None
    stack: AsyncExitStack | None = None
    # Grants this agent legitimately holds: worktree id -> fencing token. Dropped (not protected any
    # more) once the agent is killed or its lease is made to lapse, since reclaiming is then allowed.
    grants: dict[str, int] = field(default_factory=dict)
    stale: bool = False  # its lease was made to lapse; a heartbeat or a new server renews it

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = make_repo(root)
        self.env = {
            "AGENT_COORD_DB": str(root / "state" / "coord.db"),
            "AGENT_COORD_REPO": str(self.repo),
            "AGENT_COORD_POOL_ROOT": str(root / "pool"),
            "AGENT_COORD_MANICTIME_DB": "",
        }
        self.settings = Settings(
            db=Path(self.env["AGENT_COORD_DB"]),
            repo=self.repo,
            pool_root=root / "pool",
            manictime_db=None,
            pool_max=4,
            contention_threshold=100,
            stale_after_s=300,
        )
        self.agents = [Agent(f"p{i}") for i in range(AGENTS)]
        self.written: list[Written] = []
        self.max_token = 0
        self.row_tokens: dict[str, int] = {}

    # ---- agents ---------------------------------------------------------------------------------

    async def start(self, a: Agent) -> None:
        """A (new) agent process and a server for it; registering with the same id resumes it."""
        if not a.alive:
            a.proc = subprocess.Popen(["sleep", "600"])
        assert a.proc is not None
        await self.stop_server(a)
        me = psutil.Process()
        identity = Identity(
            a.agent_id,
            socket.gethostname(),
            boot_id(),
            a.proc.pid,
            psutil.Process(a.proc.pid).create_time(),
            me.pid,
            me.create_time(),
        )
        a.stack = AsyncExitStack()
        store = await Store.open(self.settings.db)
        a.stack.push_async_callback(store.close)
        a.coord = Coordinator(self.settings, store, identity)
        await a.coord.register()
        a.stale = False

    async def stop_server(self, a: Agent) -> None:
        if a.stack is not None:
            await a.stack.aclose()
        a.stack = None
        a.coord = None

    def kill(self, a: Agent) -> None:
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()  # reaped: the pid is gone, as a crashed agent's would be
        a.grants.clear()

    async def close(self) -> None:
        for a in self.agents:
            await self.stop_server(a)
            self.kill(a)

    def live(self) -> list[Agent]:
        return [a for a in self.agents if a.alive and a.coord is not None]

    # ---- reading the world ------------------------------------------------------------------------

    def rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        conn = sqlite3.connect(f"file:{self.env['AGENT_COORD_DB']}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return list(conn.execute(sql, args))
        finally:
            conn.close()

    def git(self, *args: str, check: bool = True) -> bytes:
        return subprocess.run(["git", "-C", str(self.repo), *args], capture_output=True, check=check).stdout


@asynccontextmanager
async def world(root: Path) -> AsyncIterator[World]:
    w = World(root)
    try:
        for a in w.agents:
            await w.start(a)
        yield w
    finally:
        with anyio.CancelScope(shield=True):
            await w.close()


# ---- steps ----------------------------------------------------------------------------------------


async def allocate(w: World, a: Agent, branch: int) -> None:
    if a.coord is None or not a.alive:
        return
    try:
        grant = await a.coord.pool.allocate(f"b{branch}")
    except CoordError:
        return
    if grant.strategy != "existing":
        assert grant.fencing_token > w.max_token, "a new grant must carry a token above every earlier one"
    w.max_token = max(w.max_token, grant.fencing_token)
    if not a.stale:  # a stale agent's grants may be reclaimed at any time: not protected
        a.grants[grant.worktree_id] = grant.fencing_token


async def release(w: World, a: Agent, force: bool) -> None:
    if a.coord is None or not a.alive or not a.grants:
        return
    wt = sorted(a.grants)[0]
    try:
        await a.coord.pool.release(worktree_id=wt, force=force)
    except CoordError:
        return  # dirty without force, say: the grant stands
    a.grants.pop(wt, None)


async def write(w: World, a: Agent, data: bytes) -> None:
    if not a.alive or not a.grants:
        return
    wt = sorted(a.grants)[-1]
    (row,) = w.rows("SELECT path FROM slots WHERE id = ?", (wt,))
    name = f"u{len(w.written)}-{a.agent_id}.bin"
    path = Path(row["path"])
    (path / name).write_bytes(data)
    w.written.append(Written(path, name, data))


async def validate(w: World, a: Agent, repair: bool) -> None:
    if a.coord is None or not a.alive:
        return
    if not repair:
        before = w.rows("SELECT * FROM slots ORDER BY id"), len(w.rows("SELECT id FROM events"))
        await a.coord.validate(repair=False)
        after = w.rows("SELECT * FROM slots ORDER BY id"), len(w.rows("SELECT id FROM events"))
        assert [tuple(r) for r in before[0]] == [tuple(r) for r in after[0]] and before[1] == after[1]
        return
    await a.coord.validate(repair=True)
    again = await a.coord.validate(repair=True)
    assert again.findings == [], f"a second repair found {again.findings}"
    dead = {x.agent_id for x in w.agents if not x.alive}
    held_by_dead = [r["id"] for r in w.rows("SELECT * FROM slots") if r["state"] in HELD and r["owner"] in dead]
    assert held_by_dead == [], f"slots still held by dead agents after a repair: {held_by_dead}"


async def crash(w: World, a: Agent, branch: int) -> None:
    """The server dies right after phase 1 (the row is ALLOCATING); the agent starts a new server."""
    if a.coord is None or not a.alive:
        return
    repo = await a.coord.default_repo()
    assert repo is not None
    free = [r for r in w.rows("SELECT * FROM slots WHERE state = 'FREE' ORDER BY id")]
    try:
        if free:
            claimed = await a.coord.store.claim_any_free_slot(
                repo.id,
                paths=[free[0]["path"]],
                warmest=True,
                owner=a.agent_id,
                branch=f"b{branch}",
                task=None,
                lease_s=300,
            )
        else:
            claimed = await a.coord.store.claim_new_slot(
                repo, owner=a.agent_id, branch=f"b{branch}", task=None, lease_s=300, pool_max=4
            )
    except Exception:  # the branch is held, say: nothing was claimed
        return
    if claimed is not None and claimed.fencing_token is not None:
        assert claimed.fencing_token > w.max_token
        w.max_token = claimed.fencing_token
    await anyio.sleep(0.01)  # the new server registers strictly after the claim
    await w.start(a)


async def step(w: World, s: tuple[Any, ...]) -> None:
    op, i = s[0], s[1]
    a = w.agents[i]
    if op == "allocate":
        await allocate(w, a, s[2])
    elif op == "release":
        await release(w, a, s[2])
    elif op == "write":
        await write(w, a, s[2])
    elif op == "heartbeat":
        if a.coord is not None and a.alive:
            await a.coord.heartbeat("active")
            a.stale = False
    elif op == "kill":
        w.kill(a)
    elif op == "stale":
        # Alive but silent: its lease lapses; from now on its slots may be reclaimed.
        conn = sqlite3.connect(w.env["AGENT_COORD_DB"], timeout=10)
        conn.execute("UPDATE agents SET lease_expires_at = ? WHERE id = ?", (time.time() - 1, a.agent_id))
        conn.commit()
        conn.close()
        a.grants.clear()
        a.stale = True
    elif op == "crash":
        await crash(w, a, s[2])
    elif op == "restart":
        await w.start(a)
    elif op == "validate":
        await validate(w, a, s[2])
    elif op == "race":
        # An allocation, a repair and a release at the same moment, by three different agents.
        others = [x for x in w.live() if x is not a]
        async with anyio.create_task_group() as tg:
            tg.start_soon(allocate, w, a, s[2])
            if others:
                tg.start_soon(_repair_only, others[0])
            if len(others) > 1:
                tg.start_soon(release, w, others[1], True)


async def _repair_only(a: Agent) -> None:
    if a.coord is not None:
        await a.coord.validate(repair=True)


# ---- invariants -------------------------------------------------------------------------------------


def check(w: World) -> None:
    slots = w.rows("SELECT * FROM slots")
    # No slot has two owners.
    held = [(r["repo_id"], r["branch"]) for r in slots if r["state"] in HELD]
    assert len(held) == len(set(held)), f"a branch is held twice: {held}"
    assert all(r["owner"] for r in slots if r["state"] == "BUSY")
    by_id = {r["id"]: r for r in slots}
    holders: dict[str, list[str]] = {}
    for a in w.agents:
        for wt, token in a.grants.items():
            holders.setdefault(wt, []).append(a.agent_id)
            row = by_id.get(wt)
            assert row is not None, f"{a.agent_id}'s grant {wt} vanished"
            assert (row["state"], row["owner"], row["fencing_token"]) == ("BUSY", a.agent_id, token), (
                f"{a.agent_id}'s live grant {wt}/{token} was taken: {dict(row)}"
            )
    assert all(len(v) == 1 for v in holders.values()), holders
    # Fencing tokens only grow.
    (counter,) = w.rows("SELECT value FROM meta WHERE key = 'fencing_token'")
    assert counter["value"] >= w.max_token
    w.max_token = max(w.max_token, counter["value"])
    for r in slots:
        if r["fencing_token"] is not None:
            assert r["fencing_token"] >= w.row_tokens.get(r["id"], 0), f"{r['id']}'s token went back"
            w.row_tokens[r["id"]] = r["fencing_token"]
    # No work is lost.
    refs = w.git("for-each-ref", "--format=%(refname)", "refs/agent-coord/rescue").decode().split()
    for f in w.written:
        here = f.worktree / f.name
        if here.is_file() and here.read_bytes() == f.data:
            continue
        saved = any(w.git("cat-file", "blob", f"{ref}:{f.name}", check=False) == f.data for ref in refs)
        assert saved, f"{f.name} ({f.data!r}) is neither in {f.worktree} nor in a rescue ref"


async def run(root: Path, steps: list[tuple[Any, ...]]) -> None:
    async with world(root) as w:
        for s in steps:
            await step(w, s)
            check(w)


# ---- the tests ------------------------------------------------------------------------------------

COMMON = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
}


@settings(max_examples=EXAMPLES, **COMMON)  # type: ignore[arg-type]
@given(steps=st.lists(STEP, min_size=MIN_STEPS, max_size=MAX_STEPS))
def test_random_sequences_keep_the_invariants(tmp_path_factory: pytest.TempPathFactory, steps: list[Any]) -> None:
    anyio.run(run, tmp_path_factory.mktemp("prop"), steps)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("PROPERTY_LONG_EXAMPLES", "60")), **COMMON)  # type: ignore[arg-type]
@given(steps=st.lists(STEP, min_size=5, max_size=40))
def test_random_sequences_keep_the_invariants_long(tmp_path_factory: pytest.TempPathFactory, steps: list[Any]) -> None:
    anyio.run(run, tmp_path_factory.mktemp("prop"), steps)


def test_a_known_hard_sequence(tmp_path: Path) -> None:
    """Dirty work, a kill, a race between a new allocation and the repair, a crash, a restart."""
    steps: list[tuple[Any, ...]] = [
        ("allocate", 0, 0),
        ("allocate", 1, 1),
        ("write", 0, b"\x00zero"),
        ("write", 1, b"one\xff"),
        ("kill", 0),
        ("race", 2, 0),
        ("crash", 1, 2),
        ("allocate", 1, 1),
        ("stale", 1),
        ("validate", 2, False),
        ("validate", 2, True),
        ("restart", 0),
        ("allocate", 0, 0),
        ("release", 1, True),
        ("validate", 0, True),
    ]
    anyio.run(run, tmp_path, steps)
