"""OpenTelemetry spans: one allocation makes the expected tree; nothing is recorded unless configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from tests.engine.allocate.test_slot_writes import swap_for_link


@pytest.fixture(scope="session")
def spans() -> InMemorySpanExporter:
    """One exporter for the session. The global provider can be set once per process, so reuse an SDK
    provider that is already installed; the engine's module-level tracers are proxies that resolve
    to whatever global provider exists when a span starts."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def children(all_spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [s for s in all_spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def descendants(all_spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    found: list[ReadableSpan] = []
    for child in children(all_spans, parent):
        found += [child, *descendants(all_spans, child)]
    return found


@pytest.mark.anyio
async def test_one_allocation_makes_the_expected_span_tree(spans: InMemorySpanExporter, coord: Any) -> None:
    spans.clear()
    result = await coord.pool.allocate("feat/traced")
    finished = list(spans.get_finished_spans())

    roots = [s for s in finished if s.name == "allocate"]
    assert len(roots) == 1
    root = roots[0]
    assert root.parent is None  # a root span: the allocation is the whole story
    assert root.instrumentation_scope is not None and root.instrumentation_scope.name == "agent-coord.pool"
    attrs = dict(root.attributes or {})
    assert attrs["agent.id"] == "agent-test"
    assert attrs["branch"] == "feat/traced"
    assert attrs["allocation.strategy"] == "optimistic"
    assert attrs["allocation.attempts"] == 1
    assert isinstance(attrs["contention.level"], int)
    assert attrs["worktree.id"] == result.worktree_id
    assert attrs["allocation.reused"] is False
    assert root.status.is_ok

    # The phases, in order: claim (CAS, no git), git outside any transaction, commit (CAS). Other
    # children (git reads before the claim, slot set-up) may come and go with the engine.
    phases = ["cas.claim", "git.phase", "cas.commit"]
    ordered = sorted(children(finished, root), key=lambda s: s.start_time or 0)
    assert [s.name for s in ordered if s.name in phases] == phases
    by_name = {s.name: s for s in children(finished, root)}
    assert not [s for s in descendants(finished, by_name["cas.claim"]) if s.name == "git"]
    assert not [s for s in descendants(finished, by_name["cas.commit"]) if s.name == "git"]
    assert dict(by_name["git.phase"].attributes or {})["worktree.warm"] is False

    git_spans = [s for s in descendants(finished, by_name["git.phase"]) if s.name == "git"]
    commands = [dict(s.attributes or {})["git.command"] for s in git_spans]
    assert "worktree" in commands  # a cold slot: `git worktree add`
    for s in git_spans:
        a = dict(s.attributes or {})
        assert s.instrumentation_scope is not None and s.instrumentation_scope.name == "agent-coord.git"
        duration = a["git.duration_ms"]
        assert isinstance(duration, float) and duration >= 0
        assert a["git.returncode"] == 0 and a["git.cwd"]

    spans.clear()
    await coord.pool.release(worktree_id=result.worktree_id)
    released = [s for s in spans.get_finished_spans() if s.name == "release"]
    assert len(released) == 1 and dict(released[0].attributes or {})["worktree.id"] == result.worktree_id


@pytest.mark.anyio
async def test_a_refused_allocation_says_why(spans: InMemorySpanExporter, coord: Any, settings: Settings) -> None:
    await coord.pool.allocate("feat/taken")
    async with Coordinator.open(settings, register=True, agent_id="someone-else") as other:
        spans.clear()
        with pytest.raises(CoordError, match="BRANCH_CONFLICT"):
            await other.pool.allocate("feat/taken")
    root = next(s for s in spans.get_finished_spans() if s.name == "allocate")
    attrs = dict(root.attributes or {})
    assert attrs["error.code"] == "BRANCH_CONFLICT" and attrs["agent.id"] == "someone-else"
    assert not root.status.is_ok and "held by agent agent-test" in (root.status.description or "")


@pytest.mark.anyio
async def test_an_allocation_decided_again_ends_ok_and_says_what_was_rolled_back(
    spans: InMemorySpanExporter, coord: Any, repo: Path
) -> None:
    """The slot it claimed was a symlink (refused, rolled back); another slot served: a grant, not an error."""
    first = await coord.pool.allocate("feat/first")
    await coord.pool.release(worktree_id=first.worktree_id)
    swap_for_link(Path(first.path), repo)
    spans.clear()
    result = await coord.pool.allocate("feat/again")
    root = next(s for s in spans.get_finished_spans() if s.name == "allocate")
    assert root.status.is_ok and dict(root.attributes or {})["worktree.id"] == result.worktree_id
    (rolled,) = [e for e in root.events if e.name == "rolled back"]
    assert dict(rolled.attributes or {})["worktree.id"] == first.worktree_id


def test_nothing_is_recorded_without_configuration() -> None:
    """The API alone records nothing, even with the SDK's variables set: exporting needs an SDK
    provider, which only the user installs (e.g. `opentelemetry-instrument agent-coord serve`)."""
    code = (
        "import json\n"
        "from opentelemetry import trace\n"
        "from agent_coord.engine.allocate import pool\n"
        "from agent_coord.engine.git import driver as git\n"
        "span = pool.tracer.start_span('allocate')\n"
        "print(json.dumps([type(trace.get_tracer_provider()).__name__, span.is_recording(),"
        " git.tracer.start_span('git').is_recording()]))\n"
    )
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "agent-coord"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == ["ProxyTracerProvider", False, False]
    assert out.stderr == ""
