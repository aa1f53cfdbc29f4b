"""Activity lines: exact format, escaping, round-trip, and the shared Markdown mirror."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_coord.engine.observe.activity import (
    MIRROR_HEADER,
    ActivityFormatError,
    ActivityMirror,
    format_activity_line,
    parse_activity_line,
)
from agent_coord.engine.store.records import Event
from tests.paths import ROOT

REPO_ROOT = ROOT
TS = datetime(2026, 11, 28, 6, 10, 3, tzinfo=UTC).timestamp()


def ev(**kw: Any) -> Event:
    fields: dict[str, Any] = {
        "id": 1,
        "ts": TS,
        "agent_id": "a3",
        "action": "allocate",
        "repo_id": 1,
        "worktree_id": "wt-02",
        "branch": "feat/x",
        "outcome": "ok",
        "duration_ms": 412.0,
        "fencing_token": 7,
    }
    fields.update(kw)
    return Event(**fields)


def test_exact_format() -> None:
    assert format_activity_line(ev()) == "2026-11-28T06:10:03Z | a3 | allocate | feat/x | ok | 412ms"


def test_missing_values_and_agent_label() -> None:
    line = format_activity_line(ev(agent_id=None, branch=None, duration_ms=None, ts=TS + 0.999))
    assert line == "2026-11-28T06:10:03Z | - | allocate | - | ok | -ms"
    assert format_activity_line(ev(), agent_label="a3 (pid 4121)").split(" | ")[1] == "a3 (pid 4121)"
    parsed = parse_activity_line(line)
    assert (parsed.agent, parsed.branch, parsed.duration_ms) == (None, None, None)
    assert parse_activity_line(line.removesuffix("-ms") + "-").duration_ms is None


@pytest.mark.parametrize(("ms", "shown"), [(0.4, "0ms"), (0.5, "1ms"), (412.5, "413ms"), (9999.49, "9999ms")])
def test_duration_rounds_half_up(ms: float, shown: str) -> None:
    assert format_activity_line(ev(duration_ms=ms)).endswith(f" | {shown}")


def test_pipes_newlines_and_dashes_are_escaped() -> None:
    line = format_activity_line(ev(branch="a | b\nc\\", outcome="-", agent_id="x\u2028y"))
    assert "\n" not in line and len(line.splitlines()) == 1
    assert len(line.split(" | ")) == 6
    assert line == "2026-11-28T06:10:03Z | x\\u2028y | allocate | a \\| b\\nc\\\\ | \\- | 412ms"
    parsed = parse_activity_line(line)
    assert (parsed.agent, parsed.branch, parsed.outcome) == ("x\u2028y", "a | b\nc\\", "-")
    assert parsed.time == datetime(2026, 11, 28, 6, 10, 3, tzinfo=UTC)
    assert parsed.ts == TS


@pytest.mark.parametrize(
    "line",
    [
        "2026-11-28T06:10:03Z | a3 | allocate | feat/x | ok",
        "2026-11-28 06:10:03 | a3 | allocate | feat/x | ok | 1ms",
        "2026-11-28T06:10:03Z | a3 | allocate | feat/x | ok | 1s",
        "2026-11-28T06:10:03Z | a3 | - | feat/x | ok | 1ms",
        "2026-11-28T06:10:03Z | a\\q | allocate | feat/x | ok | 1ms",
    ],
)
def test_parse_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(ActivityFormatError):
        parse_activity_line(line)


_text = st.text(alphabet=st.sampled_from("ab-|\\ \n\r\u2028\x85u0|") | st.characters(), max_size=30)


@settings(max_examples=400, deadline=None)
@given(
    ts=st.floats(0, 4_000_000_000),
    agent=st.none() | _text,
    label=st.none() | _text,
    action=_text,
    branch=st.none() | _text,
    outcome=_text,
    duration=st.none() | st.floats(0, 1e9),
)
def test_round_trip(
    ts: float,
    agent: str | None,
    label: str | None,
    action: str,
    branch: str | None,
    outcome: str,
    duration: float | None,
) -> None:
    line = format_activity_line(
        ev(ts=ts, agent_id=agent, action=action, branch=branch, outcome=outcome, duration_ms=duration),
        agent_label=label,
    )
    assert len(line.split(" | ")) == 6
    assert line.splitlines() == [line]
    parsed = parse_activity_line(line)
    assert parsed.ts == math.floor(ts)
    assert parsed.agent == (label if label is not None else agent)
    assert (parsed.action, parsed.branch, parsed.outcome) == (action, branch, outcome)
    assert parsed.duration_ms == (None if duration is None else math.floor(duration + 0.5))


def test_mirror_creates_header_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "activity.md"
    mirror = ActivityMirror(path)
    mirror.append([])
    assert not path.exists()
    first = [format_activity_line(ev(id=i)) for i in range(3)]
    mirror.append(first)
    mirror.append(first[:1])
    text = path.read_text()
    assert text.startswith("# agent-coord activity\n")
    assert text.count("# agent-coord activity") == 1
    assert text == MIRROR_HEADER + "".join(f"{line}\n" for line in first + first[:1])
    assert len(mirror.read_lines()) == 4


def test_mirror_rejects_multiline_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ActivityMirror(tmp_path / "a.md").append(["one\ntwo"])


def _batch(writer: str, batch: int) -> list[str]:
    # Long branch names make each batch larger than a typical pipe/stdio buffer chunk.
    return [
        format_activity_line(ev(agent_id=writer, branch=f"b{batch}-" + "x" * 300, outcome=str(i))) for i in range(5)
    ]


def _assert_batches_contiguous(mirror: ActivityMirror, writers: list[str], batches: int) -> None:
    lines = mirror.read_lines()
    assert len(lines) == len(writers) * batches * 5
    for start in range(0, len(lines), 5):
        chunk = lines[start : start + 5]
        assert len({(line.agent, line.branch) for line in chunk}) == 1, chunk
        assert [line.outcome for line in chunk] == ["0", "1", "2", "3", "4"]
    for writer in writers:
        seen = [line.branch for line in lines[::5] if line.agent == writer]
        assert seen == [f"b{b}-" + "x" * 300 for b in range(batches)]


def test_mirror_two_threads_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "activity.md"
    batches = 200
    barrier = threading.Barrier(2)

    def writer(name: str) -> None:
        mirror = ActivityMirror(path)
        barrier.wait()
        for b in range(batches):
            mirror.append(_batch(name, b))

    threads = [threading.Thread(target=writer, args=(name,)) for name in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_text().count("# agent-coord activity") == 1
    _assert_batches_contiguous(ActivityMirror(path), ["t1", "t2"], batches)


def test_header_is_first_when_many_threads_create_the_file(tmp_path: Path) -> None:
    # The creation race is narrow, so repeat it in fresh directories.
    for attempt in range(20):
        path = tmp_path / str(attempt) / "activity.md"
        barrier = threading.Barrier(8)

        def writer(name: str, path: Path = path, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            ActivityMirror(path).append(_batch(name, 0))

        threads = [threading.Thread(target=writer, args=(f"t{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert path.read_text().startswith(MIRROR_HEADER)
        assert len(ActivityMirror(path).read_lines()) == 40
        assert [p.name for p in path.parent.iterdir()] == ["activity.md"]


_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, sys.argv[4])
from test_activity_format import _batch
from agent_coord.engine.observe.activity import ActivityMirror
mirror = ActivityMirror(Path(sys.argv[1]))
for b in range(100):
    mirror.append(_batch(sys.argv[2], b))
"""


def test_mirror_two_processes_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "activity.md"
    here = str(Path(__file__).parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(path), name, here, str(REPO_ROOT)]) for name in ("p1", "p2")
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert path.read_text().count("# agent-coord activity") == 1
    _assert_batches_contiguous(ActivityMirror(path), ["p1", "p2"], 100)
