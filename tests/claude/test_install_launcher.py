"""install-claude writes the command that runs agent-coord, and knows its own hooks under any launcher."""

from __future__ import annotations

import json
from pathlib import Path

from agent_coord.claude.install import install_claude

UVX = ["uvx", "--from", "/opt/my tools/agent-coord", "agent-coord"]


def _hooks(project: Path) -> dict[str, list[str]]:
    settings = json.loads((project / ".claude" / "settings.json").read_text())
    return {e: [h["command"] for g in groups for h in g["hooks"]] for e, groups in settings["hooks"].items()}


def test_a_launcher_is_written_for_the_server_and_quoted_for_the_hooks(tmp_path: Path) -> None:
    install_claude(tmp_path, dry_run=False, launcher=UVX)
    server = json.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]["coord"]
    assert server == {"type": "stdio", "command": "uvx", "args": [*UVX[1:], "serve"]}
    assert _hooks(tmp_path)["WorktreeCreate"] == [
        "uvx --from '/opt/my tools/agent-coord' agent-coord hook worktree-create"
    ]


def test_a_second_install_under_another_launcher_adds_no_second_hook(tmp_path: Path) -> None:
    install_claude(tmp_path, dry_run=False, launcher=["agent-coord"])
    before = _hooks(tmp_path)
    report = install_claude(tmp_path, dry_run=False, launcher=["/home/u/.venv/bin/agent-coord"])
    assert _hooks(tmp_path) == before
    assert not report.changes, report.changes
    assert any("server 'coord' is already defined differently" in n for n in report.notes), report.notes
