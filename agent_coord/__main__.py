"""`python -m agent_coord` is `agent-coord`, the command line."""

from agent_coord.cli import main

if __name__ == "__main__":
    main()
