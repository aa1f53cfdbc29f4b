"""`install_claude` merges agent-coord's Claude Code files into a project without clobbering it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent_coord.claude.install import InstallError, default_source, install_claude

CONFIG = default_source()
OUR_COMMANDS = {
    "WorktreeCreate": "agent-coord hook worktree-create",
    "WorktreeRemove": "agent-coord hook worktree-remove",
    "SessionStart": "agent-coord hook session-start",
    "SessionEnd": "agent-coord hook session-end",
    "PreToolUse": "agent-coord hook pre-edit",
}
SKILLS = ("allocate-worktree", "release-worktree", "multi-agent-conflict", "parallel-agent-coordination")
OTHER_SERVER = {"command": "npx", "args": ["-y", "@example/server"], "env": {"TOKEN_FILE": "~/.t"}}
THEIR_SETTINGS: dict[str, Any] = {
    "model": "opus",
    "permissions": {
        "allow": ["Bash(npm test)", "mcp__coord__status"],
        "deny": ["Read(./.env)"],
        "additionalDirectories": ["../docs/"],
    },
    "enabledMcpjsonServers": ["other"],
    "hooks": {
        "PostToolUse": [{"matcher": "Write|Edit", "hooks": [{"type": "command", "command": "prettier --write ."}]}],
        "SessionEnd": [{"hooks": [{"type": "command", "command": "echo bye", "timeout": 5}]}],
    },
}


def _write_json(path: Path, value: Any, *, indent: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Four spaces on purpose: a file we need not change must keep its owner's formatting.
    path.write_text(json.dumps(value, indent=indent) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file and symlink under `root`, by relative path, with its bytes or link target."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes()
        found.update({str((Path(dirpath) / d).relative_to(root)) + "/": b"" for d in dirnames})
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    _write_json(root / ".mcp.json", {"mcpServers": {"other": OTHER_SERVER}, "x-note": "mine"})
    _write_json(root / ".claude" / "settings.json", THEIR_SETTINGS)
    return root


def _hook_commands(settings: dict[str, Any], event: str) -> list[str]:
    return [h["command"] for group in settings["hooks"].get(event, []) for h in group["hooks"]]


def test_merge_keeps_everything_and_adds_ours(project: Path) -> None:
    report = install_claude(project, dry_run=False)
    assert report.changed and not report.dry_run

    mcp = _read_json(project / ".mcp.json")
    assert mcp["mcpServers"]["other"] == OTHER_SERVER
    assert mcp["x-note"] == "mine"
    assert mcp["mcpServers"]["coord"] == _read_json(CONFIG / ".mcp.json")["mcpServers"]["coord"]
    assert list(mcp["mcpServers"]) == ["other", "coord"], "their entries stay first, in order"

    settings = _read_json(project / ".claude" / "settings.json")
    ours = _read_json(CONFIG / "settings.json")
    assert settings["model"] == "opus"
    allow = settings["permissions"]["allow"]
    assert allow[:2] == ["Bash(npm test)", "mcp__coord__status"]
    assert set(ours["permissions"]["allow"]) <= set(allow)
    assert len(allow) == len(set(allow)), "no duplicate permission"
    assert settings["permissions"]["deny"] == ["Read(./.env)"]
    assert settings["permissions"]["additionalDirectories"] == ["../docs/"]
    assert settings["enabledMcpjsonServers"] == ["other", "coord"]

    assert settings["hooks"]["PostToolUse"] == THEIR_SETTINGS["hooks"]["PostToolUse"]
    assert settings["hooks"]["SessionEnd"][0] == THEIR_SETTINGS["hooks"]["SessionEnd"][0]
    assert _hook_commands(settings, "SessionEnd") == ["echo bye", OUR_COMMANDS["SessionEnd"]]
    for event, command in OUR_COMMANDS.items():
        assert _hook_commands(settings, event).count(command) == 1, event
        assert ours["hooks"][event][0] in settings["hooks"][event], "our entry is added whole"

    for skill in SKILLS:
        installed = project / ".claude" / "skills" / skill / "SKILL.md"
        assert installed.read_bytes() == (CONFIG / "skills" / skill / "SKILL.md").read_bytes()

    # Files we rewrote are in our format; no temporary files are left behind.
    for path in (project / ".mcp.json", project / ".claude" / "settings.json"):
        text = path.read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"
    assert not [p for p in project.rglob("*") if p.name.endswith(".tmp")]
    assert any("server 'coord'" in c for c in report.changes)
    assert any("hook SessionEnd" in c for c in report.changes)
    assert not any("PostToolUse" in c for c in report.changes)


def test_second_run_changes_nothing(project: Path) -> None:
    install_claude(project, dry_run=False)
    before = _snapshot(project)
    mtimes = {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()}

    report = install_claude(project, dry_run=False)

    assert not report.changed
    assert report.changes == []
    assert _snapshot(project) == before
    assert {p: p.stat().st_mtime_ns for p in project.rglob("*") if p.is_file()} == mtimes
    assert report.render().startswith("up to date")


def test_fresh_project_is_created_in_full(tmp_path: Path) -> None:
    report = install_claude(tmp_path, dry_run=False)
    assert report.changed
    # With nothing to merge, the project gets exactly the shipped files.
    assert (tmp_path / ".mcp.json").read_bytes() == (CONFIG / ".mcp.json").read_bytes()
    assert (tmp_path / ".claude" / "settings.json").read_bytes() == (CONFIG / "settings.json").read_bytes()
    assert oct((tmp_path / ".mcp.json").stat().st_mode & 0o777) == oct(0o644)
    assert not install_claude(tmp_path, dry_run=False).changed


def test_dry_run_writes_nothing_but_reports(project: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    shutil.copytree(project, twin)
    before = _snapshot(project)

    dry = install_claude(project, dry_run=True)

    assert dry.dry_run and dry.changed
    assert _snapshot(project) == before
    assert dry.render().startswith("would change")
    real = install_claude(twin, dry_run=False)
    assert dry.changes == real.changes, "a dry run reports exactly what a real run does"


def test_dry_run_on_empty_project_creates_no_directory(tmp_path: Path) -> None:
    report = install_claude(tmp_path, dry_run=True)
    assert report.changed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("broken", [".mcp.json", ".claude/settings.json"])
@pytest.mark.parametrize("content", ["{not json", "", '["a list"]', '{"a": 1,}'])
def test_invalid_json_is_refused_and_nothing_changes(project: Path, broken: str, content: str) -> None:
    (project / broken).write_text(content, encoding="utf-8")
    before = _snapshot(project)

    with pytest.raises(InstallError) as caught:
        install_claude(project, dry_run=False)

    assert isinstance(caught.value, ValueError)
    assert str(project / broken) in str(caught.value)
    assert "Nothing was changed" in str(caught.value)
    assert _snapshot(project) == before


def test_wrong_shape_is_refused_and_nothing_changes(project: Path) -> None:
    settings = dict(THEIR_SETTINGS, permissions={"allow": "Bash(ls)"})
    _write_json(project / ".claude" / "settings.json", settings)
    before = _snapshot(project)
    with pytest.raises(InstallError, match=r"permissions\.allow"):
        install_claude(project, dry_run=False)
    assert _snapshot(project) == before


def test_existing_different_coord_server_is_kept_and_reported(project: Path) -> None:
    mine = {"command": "/opt/agent-coord/bin/agent-coord", "args": ["serve", "--verbose"]}
    _write_json(project / ".mcp.json", {"mcpServers": {"coord": mine}})

    report = install_claude(project, dry_run=False)

    assert _read_json(project / ".mcp.json") == {"mcpServers": {"coord": mine}}
    assert not any(c.startswith(".mcp.json") for c in report.changes)
    assert any(n.startswith(".mcp.json") and "server 'coord'" in n for n in report.notes)


def test_identical_hook_command_is_not_added_twice(project: Path) -> None:
    settings = json.loads(json.dumps(THEIR_SETTINGS))
    # Same command under their own matcher group, with other options: still the same hook.
    settings["hooks"]["SessionStart"] = [
        {"matcher": "startup", "hooks": [{"type": "command", "command": " agent-coord hook session-start"}]}
    ]
    _write_json(project / ".claude" / "settings.json", settings)

    install_claude(project, dry_run=False)

    merged = _read_json(project / ".claude" / "settings.json")
    assert merged["hooks"]["SessionStart"] == settings["hooks"]["SessionStart"]


def test_user_modified_skill_is_kept_and_reported(project: Path) -> None:
    skill = project / ".claude" / "skills" / "release-worktree" / "SKILL.md"
    skill.parent.mkdir(parents=True)
    skill.write_text("---\nname: release-worktree\ndescription: my own\n---\nmine\n", encoding="utf-8")

    report = install_claude(project, dry_run=False)

    assert skill.read_text(encoding="utf-8").endswith("mine\n")
    assert any("release-worktree" in n and "kept" in n for n in report.notes)
    assert not any("release-worktree" in c for c in report.changes)
    assert any("allocate-worktree" in c for c in report.changes)


def test_symlinked_settings_stay_a_symlink(project: Path, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "settings.json"
    dotfiles.parent.mkdir()
    shutil.move(project / ".claude" / "settings.json", dotfiles)
    (project / ".claude" / "settings.json").symlink_to(dotfiles)

    install_claude(project, dry_run=False)

    assert (project / ".claude" / "settings.json").is_symlink()
    assert "agent-coord hook session-end" in dotfiles.read_text(encoding="utf-8")


def test_explicit_source_is_used(tmp_path: Path) -> None:
    source = tmp_path / "cfg"
    shutil.copytree(CONFIG, source)
    _write_json(source / ".mcp.json", {"mcpServers": {"coord": {"command": "custom"}}}, indent=2)
    project = tmp_path / "p"
    project.mkdir()

    report = install_claude(project, dry_run=False, source=source)

    assert report.source == str(source)
    assert _read_json(project / ".mcp.json") == {"mcpServers": {"coord": {"command": "custom"}}}


def test_bad_source_or_project_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="claude_config"):
        install_claude(tmp_path, dry_run=True, source=tmp_path / "nowhere")
    with pytest.raises(InstallError, match="not a directory"):
        install_claude(tmp_path / "missing", dry_run=True)


def test_disabled_coord_server_is_pointed_out(project: Path) -> None:
    settings = dict(THEIR_SETTINGS, disabledMcpjsonServers=["coord"])
    _write_json(project / ".claude" / "settings.json", settings)
    report = install_claude(project, dry_run=True)
    assert any("disabledMcpjsonServers" in n for n in report.notes)
