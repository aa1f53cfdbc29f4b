"""ManicTime reader against a fixture day whose answers are known by construction."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.contention.manictime import AgentWindowKey, ManicTimeReader, ManicTimeView, WindowMatchRules
from tests.manictime_fixture import (
    AGENT1,
    AGENT2,
    APPS,
    DOCS,
    TAGS,
    USAGE,
    FixtureDay,
    _t,
    build_manictime_db,
)

pytestmark = pytest.mark.anyio


def reader_for(
    day: FixtureDay,
    *,
    busy_timeout_ms: int = 200,
    history: timedelta = timedelta(hours=24),
    lag_tolerance_s: float = 0.0,
) -> ManicTimeReader:
    rules = WindowMatchRules(home_dir=day.home_dir)
    return ManicTimeReader(day.path, busy_timeout_ms, rules=rules, history=history, lag_tolerance_s=lag_tolerance_s)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> FixtureDay:
    return build_manictime_db(tmp_path_factory.mktemp("mt") / "ManicTimeReports.db")


def assert_matches(view: ManicTimeView, day: FixtureDay, at: datetime) -> None:
    expected = next(e for e in day.expectations if e.at == at)
    assert view.available, view.reason
    assert view.presence == expected.presence
    if expected.app is None:
        assert view.focused_app is None
    else:
        assert view.focused_app is not None
        _key, file_name, full_path = day.app_groups[expected.app]
        assert view.focused_app.name == expected.app
        assert view.focused_app.executable == file_name
        assert view.focused_app.path == full_path
        assert view.focused_app.window_title == expected.title
        assert view.focused_app.document == expected.document
    assert view.focused_agent_id == expected.agent_id
    assert view.focused_is_agent_program == expected.agent_program
    assert view.last_focus == day.expected_last_focus(at)


def test_fixture_local_columns_jump_while_utc_ones_do_not(day: FixtureDay) -> None:
    with sqlite3.connect(day.path) as conn:
        rows = conn.execute(
            "SELECT StartLocalTime, EndLocalTime, StartUtcTime, EndUtcTime FROM Ar_Activity "
            "WHERE StartUtcTime < ? AND EndUtcTime > ?",
            ("2025-10-26 01:00:00", "2025-10-26 01:00:00"),
        ).fetchall()
    assert rows
    assert all(utc_end > utc_start for _, _, utc_start, utc_end in rows)
    # The Firefox activity across the change ends, in local time, before it starts.
    assert any(local_end < local_start for local_start, local_end, _, _ in rows)


@pytest.mark.parametrize("index", range(18), ids=lambda i: f"instant{i:02}")
def test_chosen_instants(day: FixtureDay, index: int) -> None:
    expected = day.expectations[index]
    assert_matches(reader_for(day).read(expected.at, day.agents), day, expected.at)


def test_hand_checked_last_focus(day: FixtureDay) -> None:
    view = reader_for(day).read(_t("09:05:00"), day.agents)
    assert view.last_focus == {
        AGENT1.agent_id: _t("09:00:00"),  # the wt-01 terminal, just before going away
        AGENT2.agent_id: _t("08:40:00"),  # not 09:00: the Tags timeline naming wt-02 is ignored
        "agent-c9d0": None,
    }


def test_timelines_found_by_schema_name_not_report_id(tmp_path: Path) -> None:
    shuffled = build_manictime_db(tmp_path / "m.db", report_ids={APPS: 2, USAGE: 11, DOCS: 1, TAGS: 3})
    reader = reader_for(shuffled)
    for expected in shuffled.expectations:
        assert_matches(reader.read(expected.at, shuffled.agents), shuffled, expected.at)


def test_same_instant_in_another_offset_gives_the_same_answer(day: FixtureDay) -> None:
    at = _t("01:10:00")
    paris = at.astimezone(timezone(timedelta(hours=1)))
    naive_utc = at.replace(tzinfo=None)
    reader = reader_for(day)
    for variant in (paris, naive_utc):
        assert_matches(reader.read(variant, day.agents), day, at)


def test_no_agents_means_empty_last_focus(day: FixtureDay) -> None:
    view = reader_for(day).read(_t("00:30:00"), [])
    assert view.available and view.focused_agent_id is None and view.last_focus == {}
    assert view.focused_app is not None and view.focused_is_agent_program


def test_lag_tolerance_bridges_a_late_flush(day: FixtureDay) -> None:
    at = _t("10:30:40")  # the data ends at 10:30:00
    assert reader_for(day).read(at, day.agents).presence == "unknown"
    late = reader_for(day, lag_tolerance_s=60.0).read(at, day.agents)
    assert late.presence == "active"
    assert late.focused_app is not None and late.focused_app.name == "Windows Terminal"


def test_history_bounds_last_focus(day: FixtureDay) -> None:
    short = reader_for(day, history=timedelta(minutes=90)).read(_t("11:00:00"), day.agents)
    assert short.last_focus == {AGENT1.agent_id: None, AGENT2.agent_id: _t("10:00:00"), "agent-c9d0": None}


@pytest.mark.parametrize(
    ("agent", "title", "expected"),
    [
        (
            AgentWindowKey("w", r"C:\Users\u\proj.worktrees\wt-01", None),
            r"C:\Users\u\proj.worktrees\wt-01>",
            "w",
        ),
        (
            AgentWindowKey("w", "C:/Users/u/proj.worktrees/wt-01/", None),
            r"c:\users\U\PROJ.worktrees\wt-01",
            "w",
        ),
        (AgentWindowKey("m", None, "main"), "main.py - proj - Visual Studio Code", None),
        (AgentWindowKey("m", None, "main"), "proj [main] - claude", "m"),
        (AgentWindowKey("", "", ""), "anything at all", None),  # empty keys are ignored
        (AgentWindowKey("a", "   ", " "), "a", None),
        (AgentWindowKey("ab", None, "x"), "ab x", None),  # too short to mean anything
    ],
)
def test_window_match_rules(agent: AgentWindowKey, title: str, expected: str | None) -> None:
    assert WindowMatchRules(home_dir=None).best_agent([agent], [title]) == expected


# -- unavailable, never raising ------------------------------------------------------------------------


def test_no_path_configured() -> None:
    view = ManicTimeReader(None).read(datetime.now(UTC), [AGENT1])
    assert not view.available and view.reason == "no ManicTime database configured"


def test_missing_file(tmp_path: Path) -> None:
    view = ManicTimeReader(tmp_path / "nope.db").read(datetime.now(UTC), [AGENT1])
    assert not view.available
    assert view.reason is not None and "not found" in view.reason
    assert view.presence == "unknown" and view.focused_app is None


@pytest.mark.parametrize("content", [b"this is not a database, just text\n" * 40, b"\x00\xff" * 4096])
def test_not_a_database(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ManicTimeReports.db"
    path.write_bytes(content)
    view = ManicTimeReader(path).read(datetime.now(UTC), [AGENT1])
    assert not view.available
    assert view.reason is not None and "not a database" in view.reason


def test_empty_file_is_a_database_without_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "ManicTimeReports.db"
    path.touch()
    view = ManicTimeReader(path).read(datetime.now(UTC), [AGENT1])
    assert not view.available
    assert view.reason is not None and "missing table Ar_Timeline" in view.reason


def test_reader_never_writes(day: FixtureDay) -> None:
    before = day.path.read_bytes()
    reader_for(day).read(_t("07:20:00"), day.agents)
    assert day.path.read_bytes() == before
    assert not Path(str(day.path) + "-journal").exists()


@pytest.mark.parametrize(
    ("omit_tables", "omit_columns", "missing"),
    [
        (["Ar_Group"], {}, "missing table Ar_Group"),
        (["Ar_Timeline"], {}, "missing table Ar_Timeline"),
        (
            [],
            {"Ar_Activity": ["StartUtcTime", "EndUtcTime"]},
            "Ar_Activity.StartUtcTime, column Ar_Activity.EndUtcTime",
        ),
        ([], {"Ar_Timeline": ["SchemaName"]}, "column Ar_Timeline.SchemaName"),
    ],
)
def test_older_schema_without_what_is_needed(
    tmp_path: Path, omit_tables: list[str], omit_columns: dict[str, list[str]], missing: str
) -> None:
    old = build_manictime_db(tmp_path / "m.db", omit_tables=omit_tables, omit_columns=omit_columns)
    view = reader_for(old).read(_t("00:30:00"), old.agents)
    assert not view.available
    assert view.reason is not None and missing in view.reason and "older or newer ManicTime" in view.reason


def test_older_schema_without_group_other_degrades(tmp_path: Path) -> None:
    old = build_manictime_db(tmp_path / "m.db", omit_columns={"Ar_Group": ["Other"]})
    view = reader_for(old).read(_t("00:30:00"), old.agents)
    assert view.available and view.presence == "active"
    assert view.focused_app is not None
    assert view.focused_app.executable == "windowsterminal.exe"  # from Key "exe;name"
    assert view.focused_app.path is None
    assert view.focused_agent_id == AGENT1.agent_id and view.focused_is_agent_program
    assert any("Ar_Group.Other" in w for w in view.warnings)


def test_without_common_group_or_documents_table_columns(tmp_path: Path) -> None:
    old = build_manictime_db(tmp_path / "m.db", omit_tables=["Ar_CommonGroup"])
    for expected in old.expectations:
        assert_matches(reader_for(old).read(expected.at, old.agents), old, expected.at)


def test_newer_schema_with_extra_columns_still_works(tmp_path: Path) -> None:
    new = build_manictime_db(tmp_path / "m.db", newer_schema=True)
    with sqlite3.connect(new.path) as conn:
        conn.execute("CREATE TABLE Ar_SomethingNew (Id INTEGER PRIMARY KEY, Payload TEXT)")
    reader = reader_for(new)
    for expected in new.expectations:
        assert_matches(reader.read(expected.at, new.agents), new, expected.at)


# -- a live database: another process holds the lock ------------------------------------------------------


@pytest.fixture
def locker() -> Iterator[list[sqlite3.Connection]]:
    held: list[sqlite3.Connection] = []
    yield held
    for conn in held:
        conn.rollback()
        conn.close()


@pytest.mark.parametrize(
    ("journal_mode", "begin", "must_answer"),
    [
        ("delete", "BEGIN IMMEDIATE", True),  # RESERVED: readers still read
        ("delete", "BEGIN EXCLUSIVE", False),  # EXCLUSIVE: readers are shut out
        ("wal", "BEGIN IMMEDIATE", True),
        ("wal", "BEGIN EXCLUSIVE", True),  # WAL readers read the last committed snapshot
    ],
)
def test_read_while_another_connection_writes(
    tmp_path: Path, locker: list[sqlite3.Connection], journal_mode: str, begin: str, must_answer: bool
) -> None:
    live = build_manictime_db(tmp_path / "m.db", journal_mode=journal_mode)
    writer = sqlite3.connect(live.path, isolation_level=None)
    locker.append(writer)
    writer.execute(begin)
    # Uncommitted: a focus change the reader must not see.
    writer.execute("UPDATE Ar_Activity SET Name = 'uncommitted' WHERE Name LIKE 'u@box: %wt-01'")
    at = _t("00:30:00")
    started = time.monotonic()
    view = reader_for(live).read(at, live.agents)
    elapsed = time.monotonic() - started
    # Never waits out the writer: its own lock wait is a fraction of a second (a hang would be minutes);
    # the bound leaves room for a loaded machine.
    assert elapsed < 10.0, f"read took {elapsed:.3f}s"
    if view.available:
        assert_matches(view, live, at)
    else:
        assert not must_answer, view.reason
        assert view.reason is not None and "locked" in view.reason
        assert elapsed >= 0.2  # it did wait for the lock before giving up
    assert view.available == must_answer


async def test_read_async_answers_and_honours_its_timeout(tmp_path: Path, locker: list[sqlite3.Connection]) -> None:
    live = build_manictime_db(tmp_path / "m.db")
    reader = reader_for(live, busy_timeout_ms=400)
    view = await reader.read_async(_t("07:20:00"), live.agents)
    assert_matches(view, live, _t("07:20:00"))

    writer = sqlite3.connect(live.path, isolation_level=None)
    locker.append(writer)
    writer.execute("BEGIN EXCLUSIVE")
    view = await reader.read_async(_t("07:20:00"), live.agents, timeout_s=0.1)
    assert not view.available
    assert view.reason is not None and "did not finish within 0.1 s" in view.reason


# -- garbage in, no exception out -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> FixtureDay:
    return build_manictime_db(tmp_path_factory.mktemp("garbage") / "base.db")


_int64 = st.integers(-(2**63), 2**63 - 1)  # what SQLite can store
_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=120)
_json = st.recursive(
    st.none() | st.booleans() | _int64 | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_other = st.one_of(
    _text,
    st.binary(max_size=64),
    st.none(),
    _int64,
    _json.map(json.dumps),
    st.fixed_dictionaries({"fileName": _json, "fullPath": _json}).map(json.dumps),
)
_cell = st.one_of(_text, st.binary(max_size=64), st.none(), _int64, st.floats(allow_nan=False))
_agents = st.lists(st.builds(AgentWindowKey, _text, st.none() | _text, st.none() | _text), max_size=4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    titles=st.lists(st.tuples(st.integers(1, 24), _cell), max_size=6),
    groups=st.lists(st.tuples(st.integers(1, 6), _other, _cell, _cell), max_size=6),
    times=st.lists(st.tuples(st.integers(1, 24), _cell.filter(lambda v: v is not None)), max_size=2),
    agents=_agents,
    at=st.datetimes(min_value=datetime(2025, 10, 25), max_value=datetime(2025, 10, 27), timezones=st.just(UTC)),
)
def test_garbage_never_raises(
    base_db: FixtureDay,
    titles: list[tuple[int, object]],
    groups: list[tuple[int, object, object, object]],
    times: list[tuple[int, object]],
    agents: list[AgentWindowKey],
    at: datetime,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.db"
        shutil.copyfile(base_db.path, path)
        with sqlite3.connect(path) as conn:
            conn.executemany("UPDATE Ar_Activity SET Name = ? WHERE ActivityId = ?", [(v, i) for i, v in titles])
            conn.executemany(
                "UPDATE Ar_Group SET Other = ?, Key = ?, Name = ? WHERE GroupId = ? AND ReportId = 3",
                [(other, key, name, gid) for gid, other, key, name in groups],
            )
            conn.executemany("UPDATE Ar_Activity SET EndUtcTime = ? WHERE ActivityId = ?", [(v, i) for i, v in times])
        view = ManicTimeReader(path).read(at, agents)
    assert isinstance(view, ManicTimeView)
    assert view.available, view.reason
    assert view.presence in ("active", "away", "locked", "off", "unknown")
    assert set(view.last_focus) == {a.agent_id for a in agents}
    if view.focused_agent_id is not None:
        assert view.focused_agent_id in view.last_focus
