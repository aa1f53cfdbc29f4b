"""The legacy Markdown pool file (worktrees.pool.md): import and export."""
