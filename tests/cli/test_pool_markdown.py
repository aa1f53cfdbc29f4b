"""The Markdown pool table: rendering, parsing hand-kept files, errors with line numbers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_coord.engine.store.records import SlotState
from agent_coord.pool_file.markdown import (
    STATUS_ALIASES,
    ParsedPoolRow,
    PoolFileError,
    PoolRow,
    parse_pool_markdown,
    render_pool_markdown,
)

SINCE = datetime(2026, 11, 28, 6, 10, 3, tzinfo=UTC).timestamp()


def test_render() -> None:
    rows = [
        PoolRow(
            worktree_id="wt-01",
            path="/repo.worktrees/wt-01",
            state=SlotState.BUSY,
            agent_id="a3",
            branch="feat/a|b",
            since=SINCE,
            lease_expires_at=SINCE + 300,
            fencing_token=12,
        ),
        PoolRow(worktree_id="wt-02", path="/repo.worktrees/wt-02", state=SlotState.FREE),
        PoolRow(worktree_id="wt-03", path="/repo.worktrees/wt-03", state=SlotState.QUARANTINED),
    ]
    assert render_pool_markdown(rows) == (
        "# agent-coord pool\n"
        "\n"
        "size: 3, free: 1, busy: 1, quarantined: 1\n"
        "\n"
        "| worktree | path | status | agent | branch | since | lease |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        "| wt-01 | /repo.worktrees/wt-01 | BUSY | a3 | feat/a\\|b"
        " | 2026-11-28T06:10:03Z | 2026-11-28T06:15:03Z |\n"
        "| wt-02 | /repo.worktrees/wt-02 | FREE | - | - | - | - |\n"
        "| wt-03 | /repo.worktrees/wt-03 | QUARANTINED | - | - | - | - |\n"
    )


def test_render_empty_pool_parses_to_no_rows() -> None:
    text = render_pool_markdown([])
    assert "size: 0, free: 0, busy: 0" in text
    assert parse_pool_markdown(text) == []


HAND_KEPT = """\
# Worktrees we use

Agents table first (not the pool):

| Agent | Notes |
|-------|-------|
| a1 | ok |

```
| path | status |
|---|---|
| /in/a/code/block | free |
```

Worktree Path | Owner | Status | Notes | Branch
:--- | --- | :---: | --- | ---:
../repo-wt1 | alice | **In Use** | do not touch \\| really | feat/login
../repo-wt2 | - | available | | -
../repo-wt3 |  | Idle | x | main
C:\\work\\repo-wt4 | bob | BUSY | | fix/y

Text after the table | with a pipe.
"""


def test_parse_hand_kept_table() -> None:
    rows = parse_pool_markdown(HAND_KEPT)
    assert rows == [
        ParsedPoolRow(
            line=17,
            path="../repo-wt1",
            worktree_id=None,
            status=SlotState.BUSY,
            agent="alice",
            branch="feat/login",
        ),
        ParsedPoolRow(line=18, path="../repo-wt2", worktree_id=None, status=SlotState.FREE, agent=None, branch=None),
        ParsedPoolRow(line=19, path="../repo-wt3", worktree_id=None, status=SlotState.FREE, agent=None, branch="main"),
        ParsedPoolRow(
            line=20,
            path="C:\\work\\repo-wt4",
            worktree_id=None,
            status=SlotState.BUSY,
            agent="bob",
            branch="fix/y",
        ),
    ]
    assert HAND_KEPT.splitlines()[16].startswith("../repo-wt1")


def test_worktree_column_alone_is_the_path_and_id_columns_are_ids() -> None:
    alone = "| Worktree | State |\n|---|---|\n| wt-1 | free |\n"
    assert parse_pool_markdown(alone)[0].path == "wt-1"
    assert parse_pool_markdown(alone)[0].worktree_id is None
    with_id = "| slot | dir | state |\n|---|---|---|\n| 3 | /x/3 | QUARANTINED |\n"
    (row,) = parse_pool_markdown(with_id)
    assert (row.worktree_id, row.path, row.status) == ("3", "/x/3", SlotState.QUARANTINED)


@pytest.mark.parametrize(
    ("value", "state"),
    [
        ("FREE", SlotState.FREE),
        ("free", SlotState.FREE),
        ("Available", SlotState.FREE),
        ("idle", SlotState.FREE),
        ("BUSY", SlotState.BUSY),
        ("in use", SlotState.BUSY),
        ("in-use", SlotState.BUSY),
        ("`busy`", SlotState.BUSY),
        ("ALLOCATING", SlotState.ALLOCATING),
        ("releasing", SlotState.RELEASING),
        ("Quarantined", SlotState.QUARANTINED),
    ],
)
def test_status_values(value: str, state: SlotState) -> None:
    (row,) = parse_pool_markdown(f"| directory | status |\n|---|---|\n| /w | {value} |\n")
    assert row.status == state


def test_every_slot_state_has_an_alias() -> None:
    assert set(STATUS_ALIASES.values()) == set(SlotState)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("| /w/2 | BUSY |", "expected 3 cells"),
        ("| /w/2 | BUSY | a | b |", "expected 3 cells"),
        ("| /w/2 | BUZY | a |", "unknown status 'BUZY'"),
        ("| /w/2 | | a |", "unknown status ''"),
        ("|  | FREE | a |", "empty path"),
        ("| - | FREE | a |", "empty path"),
    ],
)
def test_malformed_row_names_its_line(row: str, problem: str) -> None:
    text = f"# pool\n\n| path | status | agent |\n|---|---|---|\n| /w/1 | FREE | - |\n{row}\n"
    with pytest.raises(PoolFileError) as info:
        parse_pool_markdown(text)
    assert info.value.line == 6
    assert str(info.value).startswith("line 6: ")
    assert problem in str(info.value)


def test_no_table_is_line_zero() -> None:
    with pytest.raises(PoolFileError) as info:
        parse_pool_markdown("# pool\n\n| agent | notes |\n|---|---|\n| a | b |\n")
    assert info.value.line == 0
    assert str(info.value).startswith("line 0: no pool table found")


def test_header_without_delimiter_is_hinted() -> None:
    with pytest.raises(PoolFileError) as info:
        parse_pool_markdown("intro\n| path | status |\n| /w | FREE |\n")
    assert info.value.line == 0
    assert "line 2 looks like one" in str(info.value)


def test_delimiter_width_mismatch() -> None:
    with pytest.raises(PoolFileError) as info:
        parse_pool_markdown("| path | status |\n|---|---|---|\n")
    assert info.value.line == 2


_value = st.text(
    alphabet=st.sampled_from("abc/.-_ |\\:é") | st.characters(exclude_categories=["Cc", "Zl", "Zp", "Cs"]),
    min_size=1,
    max_size=20,
).filter(lambda s: s == s.strip() and s not in ("", "-"))


@st.composite
def _rows(draw: st.DrawFn) -> list[PoolRow]:
    ids = draw(st.lists(_value, unique=True, max_size=8))
    return [
        PoolRow(
            worktree_id=wid,
            path=draw(_value),
            state=draw(st.sampled_from(list(SlotState))),
            agent_id=draw(st.none() | _value),
            branch=draw(st.none() | _value),
            since=draw(st.none() | st.floats(0, 4e9)),
            lease_expires_at=draw(st.none() | st.floats(0, 4e9)),
            fencing_token=draw(st.none() | st.integers(0, 10**9)),
        )
        for wid in ids
    ]


@settings(max_examples=300, deadline=None)
@given(rows=_rows())
def test_round_trip(rows: list[PoolRow]) -> None:
    text = render_pool_markdown(rows)
    parsed = parse_pool_markdown(text)
    assert [(p.worktree_id, p.path, p.status, p.agent, p.branch) for p in parsed] == [
        (r.worktree_id, r.path, r.state, r.agent_id, r.branch) for r in rows
    ]
    lines = text.splitlines()
    assert all(lines[p.line - 1].startswith("| ") for p in parsed)


def test_render_flattens_line_breaks() -> None:
    row = PoolRow(worktree_id="wt-1", path="/a\nb", state=SlotState.FREE, branch="x\r\ny")
    (parsed,) = parse_pool_markdown(render_pool_markdown([row]))
    assert (parsed.path, parsed.branch) == ("/a b", "x y")
