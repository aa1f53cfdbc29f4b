"""The shipped Claude Code configuration (claude_config/) is well formed and names only real tools."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from agent_coord.claude.install import default_source, referenced_tool_names
from agent_coord.engine.errors import ErrorCode

CONFIG = default_source()

# The design's MCP surface: skills and permissions may name these and nothing else.
DESIGN_TOOLS = {"allocate_worktree", "release_worktree", "heartbeat", "status", "validate"}
DESIGN_ERROR_CODES = (
    "BRANCH_CONFLICT",
    "POOL_EXHAUSTED",
    "ALLOCATION_TIMEOUT",
    "INVALID_BRANCH",
    "NOT_A_REPOSITORY",
    "NOT_OWNER",
    "WORKTREE_DIRTY",
    "WORKTREE_LOCKED",
    "NOT_FOUND",
    "GIT_FAILED",
    "INVALID_ARGUMENT",
    "STORE_UNAVAILABLE",
    "OPERATION_IN_PROGRESS",
    "ALLOCATION_ENDED",
)
SKILLS = ("allocate-worktree", "release-worktree", "multi-agent-conflict", "parallel-agent-coordination")
# One error table (generated from agent_coord/engine/guidance.py, see tests/server/test_voice.py); the other
# skills and CLAUDE.md point to it.
TABLE_SKILL = "multi-agent-conflict"

HOOK_COMMANDS = {
    "WorktreeCreate": "agent-coord hook worktree-create",
    "WorktreeRemove": "agent-coord hook worktree-remove",
    "SessionStart": "agent-coord hook session-start",
    "SessionEnd": "agent-coord hook session-end",
    "PreToolUse": "agent-coord hook pre-edit",
}
TOOL_MATCHERS = {"PreToolUse": "Edit|Write|MultiEdit|NotebookEdit"}

_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_KEY_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(?: (.*))?$")


class FrontmatterError(ValueError):
    pass


def parse_frontmatter(text: str) -> tuple[dict[str, str], str]:
    """Strict parser for the subset of YAML a SKILL.md header needs: one `key: value` per line.

    Anything this rejects is either not a scalar mapping or would parse differently in real YAML
    (a plain scalar holding `: ` or ` #`), so a header that passes here means the same to Claude Code.
    """
    if not text.startswith("---\n"):
        raise FrontmatterError("file must start with a '---' line")
    end = text.find("\n---\n", 3)
    if end == -1:
        raise FrontmatterError("no closing '---' line")
    header, body = text[4:end], text[end + 5 :]
    fields: dict[str, str] = {}
    for number, line in enumerate(header.split("\n"), start=2):
        match = _KEY_LINE.match(line)
        if not match:
            raise FrontmatterError(f"line {number}: expected 'key: value', got {line!r}")
        key, raw = match.group(1), (match.group(2) or "").strip()
        if key in fields:
            raise FrontmatterError(f"line {number}: duplicate key {key!r}")
        fields[key] = _scalar(raw, number)
    return fields, body


def _scalar(raw: str, number: int) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        inner = raw[1:-1]
        if raw[0] == '"':
            return str(json.loads(raw))  # a double-quoted YAML scalar without escapes beyond JSON's
        if "'" in inner.replace("''", ""):
            raise FrontmatterError(f"line {number}: unescaped quote in single-quoted value")
        return inner.replace("''", "'")
    if not raw:
        raise FrontmatterError(f"line {number}: empty value")
    if raw[0] in "!&*[]{}|>'\"%@`#,?:-":
        raise FrontmatterError(f"line {number}: plain value may not start with {raw[0]!r}; quote it")
    if ": " in raw or " #" in raw or raw.endswith(":"):
        raise FrontmatterError(f"line {number}: plain value holds ': ' or ' #'; quote it")
    return raw


def _load(name: str) -> dict[str, Any]:
    value = json.loads((CONFIG / name).read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def _skill(name: str) -> tuple[dict[str, str], str]:
    return parse_frontmatter((CONFIG / "skills" / name / "SKILL.md").read_text(encoding="utf-8"))


# --- JSON files ----------------------------------------------------------------------------------


def test_mcp_json_registers_the_server_as_coord() -> None:
    assert _load(".mcp.json") == {
        "mcpServers": {"coord": {"type": "stdio", "command": "agent-coord", "args": ["serve"]}}
    }


def test_settings_allow_only_coord_tools_and_enable_the_server() -> None:
    settings = _load("settings.json")
    allow = settings["permissions"]["allow"]
    assert allow, "the coord tools should be pre-approved"
    assert len(allow) == len(set(allow))
    for rule in allow:
        assert rule == "mcp__coord__*" or rule.removeprefix("mcp__coord__") in DESIGN_TOOLS, rule
    assert settings["enabledMcpjsonServers"] == ["coord"]


def test_settings_hooks_follow_claude_code_schema() -> None:
    hooks = _load("settings.json")["hooks"]
    assert set(hooks) == set(HOOK_COMMANDS)
    for event, groups in hooks.items():
        assert isinstance(groups, list) and len(groups) == 1, event
        group = groups[0]
        # Worktree and session events take no tool matcher; an absent matcher means "every time".
        assert set(group) == ({"hooks", "matcher"} if event in TOOL_MATCHERS else {"hooks"}), event
        assert group.get("matcher") == TOOL_MATCHERS.get(event), event
        assert group["hooks"] == [
            {"type": "command", "command": HOOK_COMMANDS[event], "timeout": group["hooks"][0]["timeout"]}
        ]
        timeout = group["hooks"][0]["timeout"]
        assert isinstance(timeout, int) and 0 < timeout <= 600, (event, timeout)
    # Claude Code gives SessionEnd hooks 1.5 s unless a timeout is declared, and at most 60 s.
    assert 1.5 < hooks["SessionEnd"][0]["hooks"][0]["timeout"] <= 60


def test_json_files_are_written_the_way_the_installer_writes() -> None:
    # Two-space indent and a trailing newline: a fresh install copies them byte for byte.
    for name in (".mcp.json", "settings.json"):
        text = (CONFIG / name).read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n", name


# --- skills --------------------------------------------------------------------------------------


def test_exactly_the_design_skills_ship() -> None:
    shipped = sorted(p.name for p in (CONFIG / "skills").iterdir() if p.is_dir())
    assert shipped == sorted(SKILLS)


@pytest.mark.parametrize("name", SKILLS)
def test_skill_frontmatter_is_valid(name: str) -> None:
    fields, body = _skill(name)
    assert set(fields) == {"name", "description"}
    assert fields["name"] == name
    assert _NAME_RE.match(fields["name"]) and len(fields["name"]) <= 64
    description = fields["description"]
    assert 0 < len(description) <= 1024
    assert "<" not in description and ">" not in description, "no XML tags in a description"
    assert "Use when" in description or "Use before" in description, "say when to use it"
    assert body.strip(), "the body tells the agent what to do"


def test_the_table_skill_handles_every_error_code() -> None:
    _, body = _skill(TABLE_SKILL)
    missing = [code for code in DESIGN_ERROR_CODES if f"**{code}**" not in body]
    assert not missing, f"{TABLE_SKILL} does not say what to do on {missing}"


@pytest.mark.parametrize("name", [s for s in SKILLS if s != TABLE_SKILL])
def test_other_skills_point_to_the_one_table(name: str) -> None:
    _, body = _skill(name)
    assert f"`{TABLE_SKILL}` skill" in body, name
    listed = [code for code in DESIGN_ERROR_CODES if f"**{code}**" in body]
    assert not listed, f"{name} repeats the error table for {listed}"


def test_design_error_codes_are_the_servers() -> None:
    assert set(DESIGN_ERROR_CODES) == {c.value for c in ErrorCode}


def test_allocate_skill_names_every_argument_and_the_absolute_path() -> None:
    _, body = _skill("allocate-worktree")
    for word in ("`branch`", "`base`", "`repo`", "`task`", "`path`", "mcp__coord__heartbeat", '"idle"'):
        assert word in body, word


def test_release_skill_explains_force_and_rescue_recovery() -> None:
    _, body = _skill("release-worktree")
    for word in (
        "`force`",
        "`remove`",
        "rescue_ref",
        "refs/agent-coord/rescue/<branch>/<timestamp>",
        "git stash apply --index <rescue_ref>",
    ):
        assert word in body, word


def test_one_recovery_recipe_that_keeps_the_slot_on_its_branch() -> None:
    # `git checkout -b <new> <rescue_ref>` inside a pool worktree moves the slot off its allocated
    # branch, which validate then reports as drift; the recipe restores the work onto the branch.
    texts = [(CONFIG / "CLAUDE.md").read_text(encoding="utf-8")] + [_skill(name)[1] for name in SKILLS]
    for text in texts:
        assert "checkout -b" not in text and "switch -c" not in text
    recipes = [text for text in texts if "git stash apply --index <rescue_ref>" in text]
    assert len(recipes) == 2  # release-worktree's recipe and the table's ALLOCATION_ENDED line, one text


def test_the_worktree_exemption_is_stated_once() -> None:
    texts = [(CONFIG / "CLAUDE.md").read_text(encoding="utf-8")] + [_skill(name)[1] for name in SKILLS]
    stated = [text for text in texts if "do not allocate or release it" in " ".join(text.split())]
    assert len(stated) == 1


def test_no_skill_asks_to_keep_the_fencing_token() -> None:
    # No tool takes a fencing token; an agent has nothing to keep it for.
    texts = [(CONFIG / "CLAUDE.md").read_text(encoding="utf-8")] + [_skill(name)[1] for name in SKILLS]
    assert not [text for text in texts if "fencing_token" in text]


def test_frontmatter_parser_is_strict() -> None:
    good = "---\nname: a-b\ndescription: 'it''s fine: quoted'\n---\nbody\n"
    assert parse_frontmatter(good)[0] == {"name": "a-b", "description": "it's fine: quoted"}
    for bad in (
        "name: x\n",  # no frontmatter
        "---\nname: x\n",  # not closed
        "---\nname: x\nname: y\n---\n",  # duplicate key
        "---\nname: x\ndescription: a: b\n---\n",  # would be a nested mapping in YAML
        "---\nname: x\n  description: y\n---\n",  # indentation
        "---\nname: x\ndescription: [a]\n---\n",  # a list, not a string
    ):
        with pytest.raises(FrontmatterError):
            parse_frontmatter(bad)


# --- tool names ----------------------------------------------------------------------------------


def test_referenced_tools_are_the_design_tools() -> None:
    assert referenced_tool_names(CONFIG) == DESIGN_TOOLS


def test_referenced_tool_names_skips_wildcards_and_placeholders(tmp_path: Path) -> None:
    (tmp_path / "skills" / "s").mkdir(parents=True)
    (tmp_path / "skills" / "s" / "SKILL.md").write_text(
        "Call `mcp__coord__status`, then mcp__coord__heartbeat. Not mcp__coord__<name> or "
        "mcp__coord__*; xmcp__coord__nope is another server's.",
        encoding="utf-8",
    )
    (tmp_path / "CLAUDE.md").write_text("use mcp__coord__validate.\n", encoding="utf-8")
    (tmp_path / "settings.json").write_text(
        json.dumps(
            {
                "permissions": {
                    "allow": ["mcp__coord__*", "mcp__coord", "mcp__coord__allocate_worktree", "Bash(ls)"],
                    "deny": ["mcp__other__status", "mcp__coord__release_worktree"],
                }
            }
        ),
        encoding="utf-8",
    )
    assert referenced_tool_names(tmp_path) == {
        "status",
        "heartbeat",
        "validate",
        "allocate_worktree",
        "release_worktree",
    }


def test_claude_md_snippet_names_the_tools() -> None:
    text = (CONFIG / "CLAUDE.md").read_text(encoding="utf-8")
    for tool in DESIGN_TOOLS:
        assert f"mcp__coord__{tool}" in text, tool
