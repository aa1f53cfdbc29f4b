"""The MCP resources: read-only views of the pool, agents, metrics, contention and activity."""
