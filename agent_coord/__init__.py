"""agent-coord: a warm pool of git worktrees for parallel AI coding agents."""

__version__ = "0.1.0"

import os as _os

# The process that started this one, read before anything else is imported. If it exits while we
# start up, we are re-parented (to pid 1 or a subreaper), and the liveness code must not mistake that
# adopter for our agent (agent_coord/engine/liveness/judge.py, Identity.detect).
LAUNCHER_PID = _os.getppid()
