"""Who does what in the demo, and at which pace: alice and bob collide, carol crashes, the rest just work."""

from __future__ import annotations

from dataclasses import dataclass

from agent_coord.demo.simulated_agent import Plan, Task

NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj")
MIN_AGENTS, MAX_AGENTS = 3, len(NAMES)
CRASHER = "carol"
EXTRA_BRANCHES = (
    ("refactor/api", "docs/guide"),
    ("test/flaky-login", "perf/cache"),
    ("build/ci", "feat/export"),
    ("fix/logging", "ui/theme"),
    ("chore/deps", "feat/search-filters"),
    ("fix/timezone", "docs/api"),
    ("feat/billing", "test/billing"),
    ("perf/startup", "fix/memory"),
    ("feat/i18n", "chore/lint"),
)


@dataclass(frozen=True)
class Pace:
    step_s: float  # between two commits of a task
    files: int  # commits per task
    kill_after_s: float  # how long the crasher visibly holds its dirty worktree before the kill
    linger_s: float  # the final state stays on screen this long
    stagger_s: float  # extra agents start this much apart
    reclaim_timeout_s: float  # then the driver validates itself (never needed when servers run)
    deadline_s: float  # the whole demo, whatever happens
    jitter_max_ms: int


NORMAL = Pace(
    step_s=3.0,
    files=3,
    kill_after_s=4.0,
    linger_s=5.0,
    stagger_s=1.5,
    reclaim_timeout_s=15.0,
    deadline_s=150.0,
    jitter_max_ms=500,
)
FAST = Pace(
    step_s=0.2,
    files=2,
    kill_after_s=0.5,
    linger_s=0.3,
    stagger_s=0.1,
    reclaim_timeout_s=8.0,
    deadline_s=60.0,
    jitter_max_ms=100,
)


def agent_count(requested: int) -> int:
    return max(MIN_AGENTS, min(MAX_AGENTS, requested))


def build_plans(n: int, pace: Pace) -> list[Plan]:
    """alice and bob collide on feature/login, carol crashes, the others just work."""
    n = agent_count(n)
    step, files = pace.step_s, pace.files
    plans = [
        Plan(
            agent_id="alice",
            tasks=[
                Task(
                    branch="feature/login",
                    description="login form",
                    files=files,
                    step_s=step,
                    hold_until_conflict_s=20.0,
                ),
                Task(branch="fix/typo", description="typo in README", files=max(1, files - 1), step_s=step),
            ],
        ),
        Plan(
            agent_id="bob",
            tasks=[
                Task(
                    branch="feature/login",
                    description="login validation",
                    files=files,
                    step_s=step,
                    wait_until_held=True,
                ),
                Task(branch="docs/changelog", description="changelog", files=max(1, files - 1), step_s=step),
            ],
        ),
        Plan(
            agent_id=CRASHER,
            start_delay_s=pace.stagger_s,
            tasks=[Task(branch="feature/search", description="search index", files=files, step_s=step, crash=True)],
        ),
    ]
    for i in range(3, n):
        first, second = EXTRA_BRANCHES[(i - 3) % len(EXTRA_BRANCHES)]
        plans.append(
            Plan(
                agent_id=NAMES[i],
                start_delay_s=pace.stagger_s * (i - 1),
                tasks=[
                    Task(branch=first, description=first.split("/")[-1].replace("-", " "), files=files, step_s=step),
                    Task(branch=second, description=second.split("/")[-1].replace("-", " "), files=files, step_s=step),
                ],
            )
        )
    return plans
