"""The Claude Code integration: hooks, install-claude, and the configuration it ships (claude_config/)."""
