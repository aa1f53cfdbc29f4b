"""What the pool reports: metrics, the activity log, the change watcher."""
