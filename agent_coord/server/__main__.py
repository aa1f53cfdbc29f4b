"""`python -m agent_coord.server` is `agent-coord serve`: the stdio MCP server.

It calls `run_stdio` directly instead of going through the CLI: importing Typer, Rich and every
command module first cost ~10 ms of start-up per server (BENCHMARKS.md, "Start-up and memory").
"""

import sys

from agent_coord.server.app import run_stdio

if __name__ == "__main__":
    sys.exit(run_stdio())
