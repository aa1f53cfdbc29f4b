"""Allocation: from a branch name to a worktree granted under a fencing token."""
