"""The `agent-coord` command line. Each module registers its commands on the one Typer app."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from agent_coord.cli import (  # noqa: F401 - each module registers its commands
    core,  # serve, status, validate
    hooks,  # hook worktree-create|worktree-remove|session-start|session-end, install-claude
    observe,  # metrics, activity
    pool_files,  # release, import-pool, export-pool
    showcase,  # dashboard, demo
)
from agent_coord.cli.common import app


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="agent-coord")
