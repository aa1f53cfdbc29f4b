"""What claude_config/ names exists: its tools in the real server's tools/list, its hooks as CLI commands."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
from mcp import Client
from typer.testing import CliRunner

from agent_coord.claude.install import SERVER_KEY, TOOL_PREFIX, default_source, referenced_tool_names
from agent_coord.cli import app
from agent_coord.config import Settings
from agent_coord.server.app import build_server

CONFIG = default_source()


async def _server_tools(settings: Settings) -> set[str]:
    async with Client(build_server(settings)) as client:
        return {tool.name for tool in (await client.list_tools()).tools}


def _settings_json() -> dict[str, Any]:
    value = json.loads((CONFIG / "settings.json").read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


@pytest.mark.anyio
async def test_every_referenced_tool_is_in_the_servers_tools_list(settings: Settings) -> None:
    tools = await _server_tools(settings)
    referenced = referenced_tool_names(CONFIG)
    assert referenced, "the skills and permissions should name the tools they use"
    assert not referenced - tools, f"claude_config names tools the server does not have: {referenced - tools}"


@pytest.mark.anyio
async def test_permission_entries_name_only_existing_tools(settings: Settings) -> None:
    tools = await _server_tools(settings)
    permissions = _settings_json()["permissions"]
    rules = [rule for kind in ("allow", "ask", "deny") for rule in permissions.get(kind, [])]
    assert rules
    for rule in rules:
        # The whole server (`mcp__coord`, `mcp__coord__*`) or one of its tools; nothing else ships.
        if rule in (f"mcp__{SERVER_KEY}", f"{TOOL_PREFIX}*"):
            continue
        assert rule.startswith(TOOL_PREFIX), rule
        assert rule.removeprefix(TOOL_PREFIX) in tools, rule


def test_mcp_json_server_is_the_one_the_prefix_names() -> None:
    mcp = json.loads((CONFIG / ".mcp.json").read_text(encoding="utf-8"))
    assert list(mcp["mcpServers"]) == [SERVER_KEY]
    assert SERVER_KEY in _settings_json()["enabledMcpjsonServers"]


def test_every_hook_command_is_a_cli_command() -> None:
    runner = CliRunner()
    commands = [
        hook["command"] for groups in _settings_json()["hooks"].values() for group in groups for hook in group["hooks"]
    ]
    assert commands
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "agent-coord", command
        result = runner.invoke(app, [*argv[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)
