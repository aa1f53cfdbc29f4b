"""The git layer: one async driver, branch-name rules, and readers of git's worktree records."""
