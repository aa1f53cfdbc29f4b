"""The MCP tools: thin handlers over the coordinator, one module each."""
