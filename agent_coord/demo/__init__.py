"""`agent-coord demo`: a throw-away repository, several real agents, one collision, one crash.

The driver creates a repository (a few files, a few commits), a database and a pool under a new
temporary directory (``workspace``), then starts N simulated agents (``agents``; each runs
``server/demo_agent.py``, which starts its own real ``python -m server`` over stdio through the
official MCP client). The script (``plans`` for the agents, ``scenario`` for the driver):

* every agent allocates a branch, commits a few files in its worktree, releases, and takes a
  second task;
* bob waits until alice holds ``feature/login``, asks for it anyway, gets ``BRANCH_CONFLICT`` and
  takes ``feature/login-bob``;
* carol leaves uncommitted work in her worktree and the driver SIGKILLs her process; the
  servers' own validation (every second in the demo) finds her dead and reclaims the worktree,
  saving the work to a rescue ref first.

The driver only observes (a read-only coordinator on the same database): the live dashboard when
stdout is a terminal, otherwise one line per event (``progress``). It ends with the metrics and
where the files are (``summary``). Every process it starts is stopped on the way out, Ctrl-C
included (``cleanup``).
"""

from __future__ import annotations

from agent_coord.demo.driver import DemoOptions, run_demo
from agent_coord.demo.plans import CRASHER, FAST, NORMAL, Pace, build_plans

__all__ = ["CRASHER", "FAST", "NORMAL", "DemoOptions", "Pace", "build_plans", "run_demo"]
