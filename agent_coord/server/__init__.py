"""The MCP adapter: the server, its five tools and its resources, over the engine."""
