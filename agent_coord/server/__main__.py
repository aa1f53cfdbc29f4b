"""`python -m agent_coord.server` is `agent-coord serve`: the stdio MCP server.

It calls `serve_stdio` directly instead of going through the CLI: importing Typer, Rich and every
command module first cost ~10 ms of start-up per server (BENCHMARKS.md, "Start-up and memory").
"""

import anyio

from agent_coord.server.app import serve_stdio

if __name__ == "__main__":
    anyio.run(serve_stdio)
