"""Release: giving a worktree back to the pool, its work saved first when asked."""
