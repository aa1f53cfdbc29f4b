"""The `agent-coord` console script. `hook pre-edit` runs before every edit an agent makes, so it is
answered here, before the command line's framework (Typer, the MCP SDK, pydantic) is imported."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:3] == ["hook", "pre-edit"] and len(sys.argv) == 3:
        from agent_coord.engine.radar.guard import main as guard

        sys.exit(guard())
    from agent_coord.cli import main as cli

    cli()
