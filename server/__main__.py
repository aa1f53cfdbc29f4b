"""`python -m server` is `agent-coord serve`: the stdio MCP server."""

from .cli import main

if __name__ == "__main__":
    main(["serve"])
