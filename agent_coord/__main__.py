"""`python -m agent_coord` is `agent-coord`, the console script (its fast paths for hooks included)."""

from agent_coord.console import main

if __name__ == "__main__":
    main()
