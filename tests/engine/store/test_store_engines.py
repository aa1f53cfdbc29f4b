"""The store's transitions behave the same on SQLite and on a real PostgreSQL server (each test runs on
both, through the `store_target` fixture), and what only PostgreSQL has: its URL, its password, its
change notifications, and surviving a server restart."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_coord.config import Settings, SettingsError, load_settings
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.observe.watch import ChangeWatcher
from agent_coord.engine.store import BranchHeldError, EventDraft, SlotAdoption, Store, pg_connection
from agent_coord.engine.store.connection import StoreUnavailableError
from agent_coord.engine.store.radar import RadarPair, RadarTree, RadarWrite
from agent_coord.engine.store.records import Agent, SlotState, WorkerProcess, freed
from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.engine.store.schema_pg import PG_MIGRATIONS
from agent_coord.store_target import PostgresUrl, StoreTargetError
from bench.pg_cluster import PASSWORD, Cluster
from tests.pg_support import raw

pytestmark = pytest.mark.anyio

Target = Path | PostgresUrl


def agent(agent_id: str, now: float, *, status: str = "active") -> Agent:
    return Agent(agent_id, "h", "b", 4_000_000, 1.0, 4_000_001, 1.0, None, status, None, now, now, now + 60)


def columns(target: Target) -> set[tuple[str, str]]:
    with raw(target) as conn:
        if conn.postgres:
            rows = conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            )
        else:
            rows = conn.execute(
                "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'"
            )
    return {(str(t), str(c)) for t, c in rows if t not in ("schema_version", "sqlite_sequence")}


async def test_both_engines_have_every_migration_and_the_same_tables(tmp_path: Path, pg_url: PostgresUrl) -> None:
    assert len(PG_MIGRATIONS) == len(MIGRATIONS)
    for target in (tmp_path / "c.db", pg_url):
        await (await Store.open(target)).close()
        await (await Store.open(target)).close()  # a second open migrates nothing
    assert columns(tmp_path / "c.db") == columns(pg_url)
    with raw(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version") == [(len(MIGRATIONS),)]


async def test_claims_are_compare_and_swaps_with_rising_fencing_tokens(store_target: Target) -> None:
    store = await Store.open(store_target)
    repo = await store.ensure_repo("/r", "/pool")
    assert (await store.ensure_repo("/r", "/pool")).id == repo.id
    a = await store.claim_new_slot(repo, owner="a", branch="b1", task="t", lease_s=30, pool_max=2)
    b = await store.claim_new_slot(repo, owner="b", branch="b2", task=None, lease_s=30, pool_max=2)
    assert a and b and a.fencing_token and b.fencing_token
    assert await store.claim_new_slot(repo, owner="c", branch="b3", task=None, lease_s=30, pool_max=2) is None
    with pytest.raises(BranchHeldError) as held:
        await store.claim_new_slot(repo, owner="c", branch="b1", task=None, lease_s=30, pool_max=9)
    assert held.value.holder.owner == "a"
    # A CAS on a stale token or version loses, and changes nothing.
    assert await store.transition(a.id, expect_state=SlotState.ALLOCATING, expect_token=999, changes={}) is None
    busy = await store.transition(
        a.id,
        expect_state=SlotState.ALLOCATING,
        expect_token=a.fencing_token,
        changes={"state": SlotState.BUSY, "setup_done": True},
        events=[EventDraft("allocate", "ok", agent_id="a", duration_ms=float("nan"))],
    )
    assert busy and busy.state == SlotState.BUSY and busy.setup_done and busy.version == a.version + 1
    free = await store.transition(a.id, expect_state=SlotState.BUSY, changes=freed(time.time()))
    assert free and free.state == SlotState.FREE and free.owner is None
    stale = await store.transition(a.id, expect_state=SlotState.FREE, expect_version=free.version - 1, changes={})
    assert stale is None
    again = await store.claim_any_free_slot(
        repo.id, paths=[a.path], warmest=True, owner="x", branch="b4", task=None, lease_s=5
    )
    assert again and again.fencing_token and again.fencing_token > b.fencing_token > a.fencing_token
    await store.transition(
        a.id,
        expect_state=SlotState.ALLOCATING,
        expect_version=again.version,
        changes={"state": SlotState.BUSY},
        events=[EventDraft("allocate", "ok", agent_id="x")],
    )
    # The database itself refuses a second live allocation of one branch.
    with raw(store_target) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE slots SET branch = 'b4' WHERE id = ?", (b.id,))
    events = await store.events()
    assert [e.fencing_token for e in events if e.action == "allocate"] == [a.fencing_token, again.fencing_token]
    assert events[0].duration_ms is None  # NaN is stored as NULL on both engines
    await store.close()


async def test_each_transition_is_marked_and_takes_only_its_own_process(store_target: Target) -> None:
    """The database marks every transition into ALLOCATING or RELEASING (and forgets it on the next,
    whoever writes it); the process doing one is recorded in its compare-and-swap's own transaction, so
    no record of an earlier transition is ever taken for the current one, whatever its state and token."""
    store = await Store.open(store_target)
    repo = await store.ensure_repo("/r", "/pool")
    p1 = WorkerProcess("h", "boot", 4_000_000, 12.5, 3.25)
    p2 = WorkerProcess("h", "boot", 4_000_001, 13.5, None)

    async def recorded(slot: Any) -> WorkerProcess | None:
        mark = await store.worker(slot)
        assert mark is not None and (mark.version, mark.state) == (slot.version, slot.state)
        return mark.process

    # A claim by an earlier version (no worker): marked by the database, no process, aged by its clock.
    bare = await store.claim_new_slot(repo, owner="a", branch="b0", task=None, lease_s=30, pool_max=3)
    assert bare is not None and await recorded(bare) is None
    assert 0 <= (await store.worker(bare)).age_s < 60  # type: ignore[union-attr]
    claimed = await store.claim_new_slot(repo, owner="a", branch="b1", task=None, lease_s=30, pool_max=3, worker=p1)
    assert claimed is not None and await recorded(claimed) == p1

    busy = await store.transition(claimed.id, expect_state=SlotState.ALLOCATING, changes={"state": SlotState.BUSY})
    assert busy is not None and await store.worker(busy) is None, "no transition in flight"
    releasing = await store.transition(
        busy.id, expect_state=SlotState.BUSY, changes={"state": SlotState.RELEASING}, worker=p1
    )
    assert releasing is not None and await recorded(releasing) == p1
    renewed = await store.transition(releasing.id, expect_state=SlotState.RELEASING, changes={"lease_expires_at": 9.0})
    assert renewed is not None and (await store.worker(renewed)).process == p1, "its own writes keep it"  # type: ignore[union-attr]
    # Put back (a git failure) and released again by an earlier version: the same state and token,
    # another transition, and no record of the first is taken for it.
    back = await store.transition(renewed.id, expect_state=SlotState.RELEASING, changes={"state": SlotState.BUSY})
    assert back is not None
    again = await store.transition(back.id, expect_state=SlotState.BUSY, changes={"state": SlotState.RELEASING})
    assert again is not None and again.fencing_token == releasing.fencing_token and await recorded(again) is None
    # Taken over under the same owner (a reclaim by the releaser's own agent): nothing the database sees
    # as a new transition, but the compare-and-swap records its process in place of the earlier one.
    taken = await store.transition(
        again.id, expect_state=SlotState.RELEASING, changes={"lease_expires_at": 7.0}, worker=p2
    )
    assert taken is not None and (await store.worker(taken)).process == p2  # type: ignore[union-attr]
    # A warm claim records its process too.
    free = await store.transition(taken.id, expect_state=SlotState.RELEASING, changes=freed(time.time()))
    assert free is not None
    warm = await store.claim_any_free_slot(
        repo.id, paths=[free.path], warmest=True, owner="b", branch="b2", task=None, lease_s=30, worker=p2
    )
    assert warm is not None and await recorded(warm) == p2
    assert await store.transition(warm.id, expect_state=SlotState.ALLOCATING, delete=True)
    assert await store.transition(bare.id, expect_state=SlotState.ALLOCATING, delete=True)
    with raw(store_target) as conn:
        assert conn.execute("SELECT COUNT(*) FROM slot_workers") == [(0,)], "gone with their slots"
    await store.close()


async def test_a_transition_deletes_fills_its_events_and_meets_the_constraints_alike(store_target: Target) -> None:
    """On PostgreSQL these writes run as server-side functions: the same answers, rows and events as the
    transaction functions SQLite runs (the deleted row, the drafts filled in, the integrity error, an
    unknown column refused only when the row matched)."""
    store = await Store.open(store_target)
    repo = await store.ensure_repo("/r", "/pool/")
    event = EventDraft("allocate", "ok", agent_id="a", detail={"k": [1, "x"]})
    a = await store.claim_new_slot(repo, owner="a", branch="b1", task="t", lease_s=30, pool_max=4, event=event)
    b = await store.claim_new_slot(repo, owner="b", branch="b2", task=None, lease_s=30, pool_max=4)
    assert a and b and a.path == "/pool/wt-01" and (event.worktree_id, event.fencing_token) == (a.id, a.fencing_token)
    drafts = [
        EventDraft("note", "ok", duration_ms=3),
        EventDraft("note", "ok", worktree_id="elsewhere", fencing_token=7),
    ]
    moved = await store.transition(
        a.id, expect_state=[SlotState.BUSY, SlotState.ALLOCATING], changes={"task": None, "since": 5}, events=drafts
    )
    assert moved and moved.task is None and moved.since == 5 and moved.version == a.version + 1
    assert [(d.worktree_id, d.fencing_token) for d in drafts] == [(a.id, a.fencing_token), ("elsewhere", 7)]
    with pytest.raises(sqlite3.IntegrityError):  # b2 is live in b's slot
        await store.transition(a.id, expect_state=SlotState.ALLOCATING, changes={"branch": "b2"})
    assert await store.transition(a.id, expect_state=SlotState.FREE, changes={"nope": 1}) is None
    with pytest.raises(ValueError, match="nope"):
        await store.transition(a.id, expect_state=SlotState.ALLOCATING, changes={"nope": 1})
    gone = await store.transition(
        b.id, expect_state=SlotState.ALLOCATING, delete=True, events=[EventDraft("reclaim", "ok")]
    )
    assert gone and gone.id == b.id and gone.branch == "b2"
    assert [s.id for s in await store.slots(repo.id)] == [a.id]
    events = [(e.action, e.worktree_id, e.fencing_token, e.duration_ms, e.detail) for e in await store.events()]
    assert events == [
        ("allocate", a.id, a.fencing_token, None, {"k": [1, "x"]}),
        ("note", a.id, a.fencing_token, 3.0, {}),
        ("note", "elsewhere", 7, None, {}),
        ("reclaim", b.id, b.fencing_token, None, {}),
    ]
    await store.close()


async def test_a_warm_claim_takes_the_warmest_free_slot(store_target: Target) -> None:
    store = await Store.open(store_target)
    repo = await store.ensure_repo("/r", "/pool")
    slots = []
    for i in range(3):
        s = await store.claim_new_slot(repo, owner="a", branch=f"b{i}", task=None, lease_s=30, pool_max=5)
        assert s
        slots.append(s)
    for i, s in enumerate(slots):
        await store.transition(s.id, expect_state=SlotState.ALLOCATING, changes=freed(1000.0 + i))
    paths = [s.path for s in slots]
    warm = await store.claim_any_free_slot(
        repo.id, paths=paths, warmest=True, owner="w", branch="x", task=None, lease_s=5
    )
    cold = await store.claim_any_free_slot(
        repo.id, paths=paths, warmest=False, owner="c", branch="y", task=None, lease_s=5
    )
    assert warm and cold and (warm.id, cold.id) == (slots[2].id, slots[0].id)
    await store.close()


async def test_adoption_is_all_or_nothing(store_target: Target) -> None:
    store = await Store.open(store_target)
    repo = await store.ensure_repo("/r", "/pool")
    ok = [
        SlotAdoption("/pool/wt-07", SlotState.BUSY, "feat", EventDraft("adopt", "BUSY"), owner="a"),
        SlotAdoption("/elsewhere/x", SlotState.FREE, None, EventDraft("adopt", "FREE")),
    ]
    adopted = await store.adopt_slots(repo, ok, lease_s=60, agents=[agent("a", time.time())])
    assert [s.id for s in adopted] == ["wt-07", "wt-08"]
    bad = [
        SlotAdoption("/pool/other", SlotState.FREE, None, EventDraft("adopt", "FREE")),
        SlotAdoption("/pool/again", SlotState.BUSY, "feat", EventDraft("adopt", "BUSY"), owner="b"),
    ]
    with pytest.raises(BranchHeldError):
        await store.adopt_slots(repo, bad, lease_s=60)
    assert len(await store.slots(repo.id)) == 2
    fresh = await store.claim_new_slot(repo, owner="c", branch="n", task=None, lease_s=5, pool_max=9)
    assert fresh and fresh.id == "wt-09"
    await store.close()


async def test_agents_heartbeats_cursors_and_leases(store_target: Target) -> None:
    store = await Store.open(store_target)
    now = time.time()
    await store.register_agent(agent("a", now))
    await store.register_agent(agent("a", now))  # a re-registration replaces, never duplicates
    repo = await store.ensure_repo("/r", "/pool")
    held = await store.claim_new_slot(repo, owner="a", branch="b", task=None, lease_s=1, pool_max=3)
    assert held
    renewed_agent, renewed = await store.heartbeat("a", status="idle", note="n", lease_s=600, server_pid=4_000_001)
    assert renewed_agent and renewed_agent.status == "idle" and renewed == 1
    assert await store.heartbeat("a", status=None, note=None, lease_s=1, server_pid=1) == (None, 0)
    assert [a.id for a in await store.live_agents()] == ["a"]
    assert await store.set_agent_status("a", "disconnected", server_pid=None, event=EventDraft("disconnect", "ok"))
    # Every event is claimed by exactly one reader of a cursor.
    top = (await store.events())[-1].id
    assert await store.claim_events("mirror", top) is not None
    assert await store.claim_events("mirror", top) is None
    # Leases: taken, renewed by the holder, refused to another until they lapse or are judged gone.
    assert await store.take_lease("validator", "p1", 60)
    assert await store.take_lease("validator", "p1", 60)
    assert not await store.take_lease("validator", "p2", 60)
    assert await store.take_lease("validator", "p2", 60, replace="p1")
    await store.release_lease("validator", "p2")
    assert await store.lease("validator") is None
    assert await store.integrity_check() == "ok"
    await store.close()


async def test_radar_rows_round_trip(store_target: Target) -> None:
    store = await Store.open(store_target)
    repo = await store.ensure_repo("/r", "/pool")
    a = await store.claim_new_slot(
        repo, owner="a", branch="x", task=None, lease_s=60, pool_max=3, event=EventDraft("allocate", "ok")
    )
    b = await store.claim_new_slot(repo, owner="b", branch="y", task=None, lease_s=60, pool_max=3)
    assert a and b and a.fencing_token and b.fencing_token
    for s in (a, b):
        await store.transition(s.id, expect_state=SlotState.ALLOCATING, changes={"state": SlotState.BUSY})
    pair = RadarPair(a.id, b.id, repo.id, a.fencing_token, b.fencing_token, "h:t", "h:u", "conflict", {"f": 1}, 5.0)
    write = RadarWrite(
        trees=[RadarTree(a.id, a.fencing_token, repo.id, "h", "t", "main", "c")],
        changes={a.id: ["src/x.py", "src/x.py", "y"]},
        pairs=[pair],
        events=[EventDraft("radar", "conflict", detail={"with": b.id})],
    )
    await store.save_radar(repo.id, write)
    await store.save_radar(repo.id, write)  # the same pass again replaces, never duplicates
    trees, pairs = await store.radar_rows(repo.id)
    assert [t.worktree_id for t in trees] == [a.id] and pairs == [pair]
    (live,) = await store.live_pairs(repo.id)
    assert live.pair == pair and live.b and live.b.branch == "y"
    assert await store.allocation_bases([(a.id, a.fencing_token)]) == {(a.id, a.fencing_token): None}
    await store.close()


async def test_concurrent_claims_from_two_stores_never_grant_one_slot_twice(store_target: Target) -> None:
    """Two stores (as two processes would have) race 40 claims for 4 slots, then release them."""
    stores = [await Store.open(store_target), await Store.open(store_target)]
    repo = await stores[0].ensure_repo("/r", "/pool")
    granted: list[tuple[str, int]] = []

    async def agent_loop(i: int) -> None:
        store = stores[i % 2]
        for round_ in range(5):
            slot = await store.claim_new_slot(
                repo, owner=f"a{i}", branch=f"b{i}-{round_}", task=None, lease_s=30, pool_max=4
            )
            if slot is None:
                free = [s.path for s in await store.slots(repo.id) if s.state == SlotState.FREE]
                slot = await store.claim_any_free_slot(
                    repo.id, paths=free, warmest=True, owner=f"a{i}", branch=f"b{i}-{round_}", task=None, lease_s=30
                )
            if slot is None:
                continue
            assert slot.fencing_token
            granted.append((slot.id, slot.fencing_token))
            done = await store.transition(
                slot.id, expect_state=SlotState.ALLOCATING, expect_token=slot.fencing_token, changes=freed(time.time())
            )
            assert done is not None  # nobody else touched a slot we hold

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(agent_loop, i)
    tokens = [t for _, t in granted]
    assert len(tokens) == len(set(tokens)) and granted
    assert len(await stores[0].slots(repo.id)) <= 4
    for store in stores:
        await store.close()


async def test_alerts_and_lease_gaps(store_target: Target) -> None:
    from agent_coord.engine.store.alerts import AlertDraft

    store = await Store.open(store_target)
    now = time.time()
    await store.register_agent(agent("a", now - 30))
    await store.renewal_history("a", 4_000_001, [now - 20, now - 10, now - 7], 60)
    gaps = await store.lease_gaps(since=now - 3600)
    assert gaps.renewals == 3 and gaps.agents["a"][0] == 3 and gaps.max_s == pytest.approx(10.0)
    draft = AlertDraft("stuck:wt-1", "stuck", "warning", "wt-1 is stuck")
    kinds = frozenset({"stuck"})
    raised = await store.sync_alerts([draft], kinds=kinds, now=now, cooldown_s=60)
    assert len(raised) == 1 and [a.key for a in await store.active_alerts()] == ["stuck:wt-1"]
    assert await store.sync_alerts([draft], kinds=kinds, now=now, cooldown_s=60) == []  # deduplicated
    cleared = await store.sync_alerts([], kinds=kinds, now=now + 1, cooldown_s=60)
    assert len(cleared) == 1 and await store.active_alerts() == []
    await store.close()


# ---- AGENT_COORD_DB --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("postgresql://u:pw@db.example:5432/coord", PostgresUrl),
        ("postgres://u@db.example/coord?sslmode=verify-full", PostgresUrl),
        ("/var/lib/agent-coord/coord.db", Path),
        ("C:\\Users\\me\\coord.db", Path),
        ("coord.db", Path),
    ],
)
def test_the_store_is_chosen_by_the_value(value: str, kind: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_COORD_DB", value)
    assert isinstance(load_settings().db, kind)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("mysql://u:pw@h/db", "mysql:// is not a store"),
        ("sqlite://x.db", "sqlite:// is not a store"),
        ("postgresql://u:pw@h:notaport/db", "does not parse"),
        ("postgresql://u:pw@h:70000/db", "does not parse"),
        ("postgresql://u:pw@h/", "names no database"),
        ("postgresql:///db", "names no host"),
    ],
)
def test_other_schemes_and_malformed_urls_are_refused_without_the_password(
    value: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_COORD_DB", value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "AGENT_COORD_DB" in str(refused.value) and says in str(refused.value)
    assert "pw" not in str(refused.value).replace("pwd", "")


@given(st.text(min_size=6, max_size=40).filter(lambda p: p.strip() == p and p not in "postgresql://u:***@h/db"))
def test_no_password_shows_in_the_url_text(password: str) -> None:
    url = PostgresUrl("postgresql://u@h/db", password=password)
    assert PostgresUrl(url.secret_url()) == url  # it survives quoting into the URL and back
    assert password not in f"{url} {url!r} {url.redacted()}"
    assert password not in url.scrub(f"connection to {url.secret_url()} failed: {password}")


def test_the_password_may_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    monkeypatch.setenv("AGENT_COORD_DB", "postgresql://u@h/db")
    monkeypatch.setenv("AGENT_COORD_DB_PASSWORD_FILE", str(secret))
    db = load_settings().db
    assert isinstance(db, PostgresUrl) and db.secret_url() == "postgresql://u:from-file@h/db"
    monkeypatch.setenv("AGENT_COORD_DB", "postgresql://u:inline@h/db")
    with pytest.raises(SettingsError, match="given twice"):
        load_settings()
    with pytest.raises(StoreTargetError):
        PostgresUrl("http://h/db")


async def test_a_wrong_password_is_store_unavailable_and_never_printed(
    pg_cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-Pw-4711"
    url = PostgresUrl(pg_cluster.url(password=False), password=wrong)
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as refused:
        await Store.open(url)
    assert time.monotonic() - started < 30
    assert refused.value.code == ErrorCode.STORE_UNAVAILABLE
    text = str(refused.value)
    assert "password authentication failed" in text and "***" in text
    assert wrong not in text and wrong not in caplog.text and PASSWORD not in caplog.text


async def test_the_password_comes_from_pgpassfile(
    pg_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg_cluster.port}:*:coordtest:{PASSWORD}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    store = await Store.open(PostgresUrl(pg_cluster.url(password=False)))
    assert await store.repos() == []
    await store.close()


async def test_a_database_of_another_program_is_refused(pg_url: PostgresUrl) -> None:
    with raw(pg_url) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreUnavailableError, match="another program"):
        await Store.open(pg_url)


async def test_a_schema_of_its_own_through_the_url(pg_url: PostgresUrl) -> None:
    """A database shared with another program: agent-coord's tables go into the schema the URL names."""
    with raw(pg_url) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.execute("CREATE SCHEMA coord")
    url = pg_url.with_query(options="-csearch_path=coord")
    store = await Store.open(url)
    await store.ensure_repo("/r", "/pool")
    await store.close()
    with raw(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM coord.repos") == [(1,)]


def test_settings_never_show_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_COORD_DB", "postgresql://u:Hidden-9@h/db")
    settings = Settings()
    assert "Hidden-9" not in repr(settings) and "Hidden-9" not in str(settings.model_dump())


@given(st.text(alphabet="?:'%ab =_\"", max_size=30))
def test_parameters_are_translated_outside_quotes_only(text: str) -> None:
    from agent_coord.engine.store.pg_connection import translate

    out = translate(text)
    quoted_free = text.count("'") == 0 and text.count('"') == 0
    if quoted_free:
        assert out.count("%s") == text.count("?")
        assert "?" not in out


def test_quoted_text_and_casts_are_left_alone() -> None:
    from agent_coord.engine.store.pg_connection import translate

    assert translate("SELECT ':x ?' , a::int, ? , :name, 5 % 2") == "SELECT ':x ?' , a::int, %s , %(name)s, 5 %% 2"


# ---- PostgreSQL only: notifications and a restart ---------------------------------------------------


async def test_a_serialization_failure_or_deadlock_is_retried_whole_and_bounded(pg_url: PostgresUrl) -> None:
    """The server's own 40001 and 40P01 (raised by it, not mocked): the transaction runs again from the
    start; one that keeps failing ends in StoreBusyError after the bounded retries."""
    from agent_coord.engine.store import StoreBusyError
    from agent_coord.engine.store.dialect import Db
    from agent_coord.engine.store.pg_connection import RETRIES, PgConnection

    conn = await PgConnection.open(pg_url)
    attempts: list[int] = []

    def flaky(db: Db) -> int:
        attempts.append(1)
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('tries', 1) ON CONFLICT (key) DO UPDATE SET value = meta.value + 1"
        )
        if len(attempts) <= 2:
            code = "serialization_failure" if len(attempts) == 1 else "deadlock_detected"
            db.execute(f"DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '{code}'; END $$")
        row = db.execute("SELECT value FROM meta WHERE key = 'tries'").fetchone()
        return int(row[0])

    assert await conn.write(flaky) == 1  # the failed attempts were rolled back whole
    assert len(attempts) == 3

    def hopeless(db: Db) -> None:
        attempts.append(1)
        db.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")

    attempts.clear()
    with pytest.raises(StoreBusyError):
        await conn.write(hopeless)
    assert len(attempts) == RETRIES
    await conn.close()


async def test_a_commit_by_another_process_is_announced(pg_url: PostgresUrl) -> None:
    store = await Store.open(pg_url)
    heard = anyio.Event()

    async def listen() -> None:
        async for _ in ChangeWatcher(pg_url, 0.05).changes():
            heard.set()
            return

    async with anyio.create_task_group() as tg:
        tg.start_soon(listen)
        with anyio.fail_after(20):
            while not heard.is_set():  # until the watcher is listening and hears one
                await store.log(EventDraft("note", "ok"))
                with anyio.move_on_after(0.5):
                    await heard.wait()
    await store.close()


async def test_a_restart_of_the_server_is_survived(pg_cluster: Cluster, pg_url: PostgresUrl) -> None:
    """During the outage a call is STORE_UNAVAILABLE within seconds; after it, the same store works."""
    store = await Store.open(pg_url)
    repo = await store.ensure_repo("/r", "/pool")
    before = await store.claim_new_slot(repo, owner="a", branch="x", task=None, lease_s=60, pool_max=4)
    assert before
    await asyncio.to_thread(pg_cluster.stop)
    try:
        started = time.monotonic()
        with pytest.raises(CoordError) as down:
            await store.slots()
        assert down.value.code == ErrorCode.STORE_UNAVAILABLE
        assert time.monotonic() - started < 15
    finally:
        await asyncio.to_thread(pg_cluster.start)
    with anyio.fail_after(30):
        while True:
            try:
                after = await store.claim_new_slot(repo, owner="b", branch="y", task=None, lease_s=60, pool_max=4)
                break
            except StoreUnavailableError:
                await anyio.sleep(0.2)
    assert after and before.fencing_token and after.fencing_token and after.fencing_token > before.fencing_token
    assert {s.branch for s in await store.slots(repo.id)} == {"x", "y"}
    await store.close()


async def test_a_write_whose_flush_meets_a_clean_shutdown_is_acknowledged(
    pg_cluster: Cluster, pg_url: PostgresUrl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COMMIT answered, then the flush is cut short (here: the backend ends itself, as a fast shutdown
    or an administrator ends it): the write is done and said to be done, not STORE_UNAVAILABLE."""
    store = await Store.open(pg_url)
    try:
        repo = await store.ensure_repo("/r", "/pool")
        monkeypatch.setattr(pg_connection, "FLUSH", "SELECT pg_terminate_backend(pg_backend_pid())")
        claimed = await store.claim_new_slot(repo, owner="a", branch="x", task=None, lease_s=60, pool_max=4)
        assert claimed is not None and claimed.owner == "a"
        monkeypatch.undo()
        (slot,) = await store.slots(repo.id)
        assert (slot.id, slot.owner, slot.branch) == (claimed.id, "a", "x")
    finally:
        await store.close()


def test_a_fast_shutdown_ends_a_flush_with_admin_shutdown_and_keeps_the_commit(pg_cluster: Cluster) -> None:
    """What the store's answer above rests on, asked of PostgreSQL itself: a commit that did not wait for
    its WAL, then a fast shutdown before the flush. The flush fails with 57P01 (and nothing else would
    tell it from a lost connection); the committed row is there after the restart."""
    import psycopg
    from psycopg import errors as pg_errors

    url = pg_cluster.create_database("flush_shutdown")
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute("CREATE TABLE t (x int)")
    conn = psycopg.connect(url, autocommit=True)
    try:
        conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("COMMIT")
        pg_cluster.stop("fast")
        try:
            with pytest.raises(pg_errors.AdminShutdown):
                conn.execute(pg_connection.FLUSH)
        finally:
            pg_cluster.start()
    finally:
        conn.close()
    with psycopg.connect(url, autocommit=True) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)


# ---- many processes ----------------------------------------------------------------------------------


def test_sixteen_processes_race_on_postgresql_without_a_double_grant(pg_cluster: Cluster) -> None:
    """16 worker processes, each with its own store, allocate and release as fast as they can over a
    pool of 16 (bench/store_cas_pg.py, shortened); the log is then checked grant by grant."""
    from bench.store_cas_pg import run_once

    result = run_once("store", 16, 2.0, 0.0, pg_cluster.url("race"))
    assert result["cycles"] > 0 and result["busy_to_caller"] == 0, result
    assert (result["double_grants"], result["lost_acknowledged"]) == (0, 0), result


@pytest.mark.slow
@pytest.mark.parametrize("rate", [0.0, 20.0])
def test_sixteen_processes_race_on_postgresql_long(pg_cluster: Cluster, rate: float) -> None:
    from bench.store_cas_pg import run_once

    for impl in ("store", "raw"):
        result = run_once(impl, 16, 20.0, rate, pg_cluster.url("race_long"))
        assert (result["double_grants"], result["lost_acknowledged"], result["busy_to_caller"]) == (0, 0, 0), result
