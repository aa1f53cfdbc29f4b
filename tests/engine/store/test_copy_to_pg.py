"""`agent-coord migrate-store`: a SQLite store that has lived is copied into a real PostgreSQL, and a
coordinator on the copy sees what it saw on SQLite; a target that is not empty, a source still in use,
an older source and an unreachable server are refused with their codes, and nothing is written."""

from __future__ import annotations

import itertools
import os
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.observe.retention import Retention, prune
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.connection import _split_sql
from agent_coord.engine.store.copy_to_pg import MigrationRefusedError, copy_to_postgresql
from agent_coord.engine.store.records import MetricTotals
from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.store_target import PostgresUrl
from bench.pg_cluster import PASSWORD, Cluster
from tests.pg_support import raw

pytestmark = pytest.mark.anyio

DAY = 86400.0
NAMES = itertools.count(1)


def dead_process() -> tuple[int, float]:
    proc = subprocess.Popen(["true"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, created


async def live_a_little(settings: Settings) -> None:
    """A store that has lived, built through the engine's own API: grants and releases, a branch
    conflict, an agent that died holding dirty work (reclaimed, its work saved, an alert raised), lease
    renewals, a radar pass, and history the retention already pruned (only the rollups count it)."""
    async with (
        Coordinator.open(settings, register=True, agent_id="agent-a") as a,
        Coordinator.open(settings, register=True, agent_id="agent-b") as b,
    ):
        one = await a.pool.allocate("feat/one", task="first")
        two = await a.pool.allocate("feat/two")
        await a.pool.release(worktree_id=one.worktree_id)
        with pytest.raises(CoordError) as conflict:
            await b.pool.allocate("feat/two")
        assert conflict.value.code == ErrorCode.BRANCH_CONFLICT
        await b.pool.allocate("feat/three")
        # An allocation in flight (claimed, its process recorded), as a copy may catch one.
        repo_row = await b.default_repo()
        assert repo_row is not None
        in_flight = await b.store.claim_new_slot(
            repo_row,
            owner=b.agent_id,
            branch="feat/in-flight",
            task=None,
            lease_s=3600.0,
            pool_max=8,
            worker=b.identity.as_worker(),
        )
        assert in_flight is not None
        async with Coordinator.open(settings, register=True, agent_id="agent-ghost") as ghost:
            held = await ghost.pool.allocate("feat/ghost")
            (Path(held.path) / "unsaved.txt").write_text("the ghost's work\n")
            record = await ghost.store.agent("agent-ghost")
        assert record is not None
        pid, created = dead_process()
        await a.store.register_agent(
            replace(
                record, pid=pid, pid_create_time=created, server_pid=pid, server_create_time=created, status="active"
            )
        )
        repaired = await a.validate(repair=True)
        assert any(f.kind == "dead_agent" and f.repaired for f in repaired.findings), repaired.findings
        await a.alert_watch.evaluate()
        assert await a.store.active_alerts()
        for _ in range(2):
            await a.heartbeat()
        (Path(two.path) / "README.md").write_text("changed on feat/two\n")
        await a.radar_loop.tick()
        now = time.time()
        old = now - 3 * DAY
        await a.store.append_history(
            [(old + i, EventDraft("allocate", "ok", agent_id="agent-old", duration_ms=40.0 + i)) for i in range(5)]
        )
        # A lease its server never gave back (killed): the copy carries it until it lapses.
        assert await a.store.take_lease("validator-of-a-killed-server", "agent-ghost:1", 600.0)
        pruned, _ = await prune(a.store, Retention(keep_s=2 * DAY, rollups_keep_s=9 * DAY), now=now)
        assert pruned == 5


async def seen(settings: Settings, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a coordinator on the store shows: status (without the metrics of its own `now`), and the metrics."""
    async with Coordinator.open(settings, register=False) as c:
        status = (await c.status(with_contention=False)).model_dump(mode="json")
        status.pop("metrics")
        return status, (await c.metrics(now=now)).model_dump(mode="json")


def target_state(url: PostgresUrl) -> list[Any]:
    """Every table's rows, and the sequences, of the target's current schema."""
    with raw(url) as conn:
        tables = [
            str(r[0]) for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        ]
        state: list[Any] = [(t, sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"')))) for t in sorted(tables)]
        sequences = conn.execute("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
    return [*state, sequences]


@pytest.fixture
def lived(make_settings: Callable[..., Settings]) -> tuple[Settings, Path]:
    settings = make_settings(stale_after_s=3600.0)
    anyio.run(live_a_little, settings)
    assert isinstance(settings.db, Path)
    return settings, settings.db


async def test_a_lived_store_is_copied_whole_and_a_coordinator_on_it_sees_the_same(
    lived: tuple[Settings, Path], pg_url: PostgresUrl
) -> None:
    settings, db = lived
    now = time.time()
    before = await seen(settings, now)
    with sqlite3.connect(db) as conn:
        tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        copied_max_token = max(
            int(conn.execute("SELECT value FROM meta WHERE key = 'fencing_token'").fetchone()[0]),
            *(int(r[0]) for r in conn.execute("SELECT fencing_token FROM slots WHERE fencing_token IS NOT NULL")),
        )
        copied_max_event = int(conn.execute("SELECT max(id) FROM events").fetchone()[0])
        non_empty = {
            t for t in tables - {"sqlite_sequence"} if conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
        }

    report = copy_to_postgresql(db, pg_url)

    assert report.verified and not report.dry_run
    assert {t.table for t in report.tables} == tables - {"sqlite_sequence"}  # every table of the store
    assert all(t.source == t.target for t in report.tables)
    assert non_empty == tables - {"sqlite_sequence"}, tables - non_empty  # the store lived in every table
    assert report.max_event_id.source == report.max_event_id.target == copied_max_event
    assert report.fencing_token.source == report.fencing_token.target == copied_max_token
    assert PASSWORD not in report.model_dump_json() and "***" in report.target

    with raw(pg_url) as conn:  # the triggers disabled for the copy are all back (the rollups go on)
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'D'") == [(0,)]
    on_pg = settings.model_copy(update={"db": pg_url})
    # The same slots, agents, alerts and metrics: the rollups were copied, not rebuilt from the events,
    # so the history the retention pruned still counts, and once only.
    assert await seen(on_pg, now) == before
    async with Coordinator.open(on_pg, register=True, agent_id="agent-new") as c:
        granted = await c.pool.allocate("feat/after-the-move")
        assert granted.fencing_token > copied_max_token
        (event,) = [e for e in await c.store.events() if e.action == "allocate" and e.branch == "feat/after-the-move"]
        assert event.id > copied_max_event


async def test_a_target_that_is_not_empty_is_refused_and_left_as_it_was(
    lived: tuple[Settings, Path], pg_url: PostgresUrl
) -> None:
    _, db = lived
    copy_to_postgresql(db, pg_url)
    before = target_state(pg_url)
    with pytest.raises(MigrationRefusedError) as again:
        copy_to_postgresql(db, pg_url)
    assert again.value.code == "TARGET_NOT_EMPTY" and "nothing was written" in again.value.message
    assert target_state(pg_url) == before
    # A database of another program is refused too (here a schema of its own), and keeps only its table.
    with raw(pg_url) as conn:
        conn.execute("CREATE SCHEMA billing")
        conn.execute("CREATE TABLE billing.invoices (id INTEGER)")
    foreign = pg_url.with_query(options="-csearch_path=billing")
    with pytest.raises(MigrationRefusedError) as theirs:
        copy_to_postgresql(db, foreign)
    assert theirs.value.code == "TARGET_NOT_EMPTY" and "invoices" in theirs.value.message
    with raw(pg_url) as conn:
        assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'billing'") == [("invoices",)]


async def test_a_dry_run_checks_everything_and_writes_nothing(
    lived: tuple[Settings, Path], pg_url: PostgresUrl
) -> None:
    _, db = lived
    report = copy_to_postgresql(db, pg_url, dry_run=True)
    assert report.dry_run and report.verified and report.tables and all(t.source == t.target for t in report.tables)
    assert target_state(pg_url) == [[]]  # no table, no sequence
    # A database where a server only created the schema is empty still: its seeded settings give way.
    await (await Store.open(pg_url)).close()
    report = copy_to_postgresql(db, pg_url)
    assert report.verified and {t.table: t.target for t in report.tables}["meta"] > 0


async def test_a_source_still_in_use_is_refused_unless_allowed(
    make_settings: Callable[..., Settings], pg_url: PostgresUrl
) -> None:
    settings = make_settings()
    assert isinstance(settings.db, Path)
    async with Coordinator.open(settings, register=True, agent_id="agent-running") as running:
        await running.pool.allocate("feat/live")
        with pytest.raises(MigrationRefusedError) as busy:
            copy_to_postgresql(settings.db, pg_url)
        assert busy.value.code == "SOURCE_IN_USE" and "agent-running" in busy.value.message
        assert target_state(pg_url) == [[]]
        report = copy_to_postgresql(settings.db, pg_url, allow_running=True)
        assert [s.agent_id for s in report.running_servers] == ["agent-running"] and report.verified


async def test_an_older_source_or_one_with_unknown_columns_is_refused(tmp_path: Path, pg_url: PostgresUrl) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old, isolation_level=None) as conn:
        for statement in (s for m in MIGRATIONS[:-1] for s in _split_sql(m)):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    before = old.read_bytes()
    with pytest.raises(MigrationRefusedError) as refused:
        copy_to_postgresql(old, pg_url)
    assert refused.value.code == "SCHEMA_MISMATCH" and "agent-coord status" in refused.value.message
    assert old.read_bytes() == before and target_state(pg_url) == [[]]
    # A column the target's schema lacks would be lost: refused, never dropped silently.
    with sqlite3.connect(old, isolation_level=None) as conn:
        for statement in _split_sql(MIGRATIONS[-1]):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        conn.execute("ALTER TABLE slots ADD COLUMN added_by_hand TEXT")
    with pytest.raises(MigrationRefusedError) as extra:
        copy_to_postgresql(old, pg_url)
    assert extra.value.code == "SCHEMA_MISMATCH" and "slots.added_by_hand" in extra.value.message
    assert target_state(pg_url) == [[]]


async def test_an_unreachable_server_is_store_unavailable_without_the_password(
    lived: tuple[Settings, Path],
) -> None:
    _, db = lived
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = PostgresUrl(f"postgresql://coord:s3cret-pw@127.0.0.1:{port}/coord")
    with pytest.raises(CoordError) as gone:
        copy_to_postgresql(db, url)
    assert gone.value.code == ErrorCode.STORE_UNAVAILABLE
    assert "s3cret-pw" not in str(gone.value) and "***" in str(gone.value)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
EVENTS = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=7 * DAY),  # seconds ago
        st.sampled_from(["allocate", "release", "reclaim", "adopt", "cas_lost", "agent_dead", "radar"]),
        st.sampled_from(["ok", "BUSY", "BRANCH_CONFLICT", "INVALID_BRANCH", "GIT_FAILED"]),
        st.one_of(st.none(), st.sampled_from(["wt-01", "wt-02"])),
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        st.one_of(st.none(), st.integers(min_value=1, max_value=2**63 - 1)),
        TEXT,
    ),
    max_size=25,
)


@given(history=EVENTS)
@example(history=[(60.0, "allocate", "ok", "wt-01", float("inf"), 2**63 - 1, 'it\'s\t\\N\n"x"')])
@example(history=[(60.0, "allocate", "ok", "wt-01", 12.5, 1, "nul\x00inside")])
@examples(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_history_is_copied_exactly_or_refused_whole(pg_cluster: Cluster, history: list[Any]) -> None:
    """Any text (quotes, tabs, backslashes, NUL), any float (NaN, infinities), tokens up to 2^63 - 1: the
    copy is verified, the metrics read the same on both sides; or PostgreSQL refuses a value (its text
    has no NUL) and the copy is refused whole with its code, the target left without a table."""
    now = time.time()
    entries = [
        (
            now - ago,
            EventDraft(
                action,
                outcome,
                agent_id=text or None,
                worktree_id=wt,
                branch=text,
                duration_ms=ms,
                fencing_token=token,
                detail={"note": text},
            ),
        )
        for ago, action, outcome, wt, ms, token, text in history
    ]
    url = PostgresUrl(pg_cluster.create_database(f"h{os.getpid()}_{next(NAMES)}"))
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "c.db"

        async def build() -> MetricTotals:
            store = await Store.open(db)
            await store.append_history(entries)
            totals = await store.metric_totals(now=now, window_s=7 * DAY, holds_since=now - 8 * DAY)
            await store.close()
            return totals

        async def read() -> MetricTotals:
            store = await Store.open(url)
            totals = await store.metric_totals(now=now, window_s=7 * DAY, holds_since=now - 8 * DAY)
            await store.close()
            return totals

        on_sqlite = anyio.run(build)
        try:
            report = copy_to_postgresql(db, url)
        except MigrationRefusedError as refused:
            assert refused.code == "COPY_REFUSED" and any("\x00" in e[6] for e in history), refused
            assert target_state(url) == [[]]
            return
        assert report.verified
        assert anyio.run(read) == on_sqlite


async def test_rows_from_before_hosts_are_adopted_by_their_host_on_postgresql(
    lived: tuple[Settings, Path], pg_url: PostgresUrl
) -> None:
    """A SQLite store upgraded from before schema 7 has repositories and slots without a host: copied as
    they are, and on PostgreSQL the first server of this host to resolve the repository makes them its
    own (docs/hosts.md), so its warm slots serve the next allocation."""
    settings, db = lived
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute("UPDATE repos SET host = NULL, project = NULL")
        conn.execute("UPDATE slots SET host = NULL, project = NULL")
        free = {str(r[0]) for r in conn.execute("SELECT path FROM slots WHERE state = 'FREE'")}
    assert free and copy_to_postgresql(db, pg_url).verified
    with raw(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM slots WHERE host IS NOT NULL") == [(0,)]
    on_pg = settings.model_copy(update={"db": pg_url})
    async with Coordinator.open(on_pg, register=True, agent_id="agent-after") as c:
        granted = await c.pool.allocate("feat/adopted")
        assert granted.path in free  # a warm slot of the copy, not a new one
        assert {s.host for s in await c.store.slots()} == {settings.host_id}
