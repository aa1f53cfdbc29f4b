"""agent-coord: a warm pool of git worktrees for parallel AI coding agents."""

__version__ = "0.1.0"
