"""Domain logic. Nothing here imports MCP, tools or resources."""
