"""`agent-coord install-claude`: merge agent-coord's Claude Code configuration into a project.

The project's files belong to its owner. Everything already there is kept: servers, permissions,
hooks, unknown keys and their order. Ours is only added next to it, conflicts are reported rather
than resolved, and a second run changes nothing. All inputs are read and checked before the first
byte is written, so a refusal leaves the project exactly as it was.
"""

from __future__ import annotations

import copy
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, computed_field

from agent_coord.claude.config_files import (
    MCP_FILE,
    SETTINGS_FILE,
    SKILL_FILE,
    SKILLS_DIR,
    SNIPPET_FILE,
    InstallError,
    apply_writes,
    check_source,
    dump_json,
    read_bytes,
    read_json_object,
    read_required_json,
    source_skills,
)
from agent_coord.claude.merge import Plan, merge_json_file

SERVER_KEY = "coord"  # the name .mcp.json registers the server under; tools are mcp__coord__<tool>
TOOL_PREFIX = f"mcp__{SERVER_KEY}__"

# A tool name after the prefix. The class excludes `*` and `<`, so wildcard rules and placeholders
# such as `mcp__coord__<name>` are not mistaken for tools; a name may not end in a hyphen, so
# prose like "mcp__coord__status-" stays out.
_TOOL_NAME = r"[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*"
_TOOL_IN_TEXT = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(TOOL_PREFIX)}({_TOOL_NAME})")
_TOOL_RULE = re.compile(rf"{re.escape(TOOL_PREFIX)}({_TOOL_NAME})")

# A project CLAUDE.md that mentions this already carries the snippet (or the owner's version of it).
_SNIPPET_MARKER = f"{TOOL_PREFIX}allocate_worktree"


class InstallReport(BaseModel):
    """What `install_claude` did, or would do with `dry_run`, one human-readable line per change."""

    project: str
    source: str
    dry_run: bool
    changes: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # kept-as-is conflicts and hints; not changes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def render(self) -> str:
        if self.changes:
            head = "would change:" if self.dry_run else "changed:"
            lines = [f"{head} {self.project}", *(f"  + {c}" for c in self.changes)]
        else:
            lines = [f"up to date: {self.project}"]
        lines.extend(f"  ! {n}" for n in self.notes)
        return "\n".join(lines)


def default_source() -> Path:
    """The `claude_config/` package data of the installed `agent_coord`, wherever it was installed
    (a wheel in site-packages, pipx or uv tool environments, or an editable checkout)."""
    root = resources.files("agent_coord").joinpath("claude_config")
    if not isinstance(root, Path):
        # A zip import would need every file extracted first; pip, pipx and uv always unpack.
        raise InstallError(f"{root}: agent-coord is installed as a zip archive; install it unpacked (pip, pipx, uv)")
    return root


def install_claude(
    project: Path, *, dry_run: bool, source: Path | None = None, launcher: list[str] | None = None
) -> InstallReport:
    """Merge `source` (default: the packaged `claude_config/`) into `project`'s Claude Code files.

    `launcher` is the command that runs agent-coord (default: the shipped `agent-coord`, found on
    PATH); the server entry and the hook commands are written with it.

    Raises `InstallError` when an input is missing or unreadable, when an existing JSON file is not
    valid JSON or not shaped as Claude Code expects, or when a write fails.
    """
    src = check_source(source if source is not None else default_source())
    project = Path(project)
    if not project.is_dir():
        raise InstallError(f"{project}: not a directory; pass an existing project directory")

    mcp_target = project / MCP_FILE
    settings_target = project / ".claude" / SETTINGS_FILE
    ours_mcp = read_required_json(src / MCP_FILE)
    ours_settings = read_required_json(src / SETTINGS_FILE)
    if launcher is not None:
        ours_mcp, ours_settings = with_launcher(ours_mcp, ours_settings, launcher)
    # Read both project files before deciding anything: one broken file refuses the whole run.
    theirs_mcp = read_json_object(mcp_target, whose="the project's", missing_ok=True)
    theirs_settings = read_json_object(settings_target, whose="the project's", missing_ok=True)

    writes: list[tuple[Path, bytes]] = []
    plans: list[Plan] = []

    mcp_plan = Plan(MCP_FILE)
    merged_mcp = merge_json_file(theirs_mcp, ours_mcp, mcp_plan, mcp_target)
    plans.append(mcp_plan)
    if mcp_plan.changes:
        writes.append((mcp_target, dump_json(merged_mcp)))

    settings_plan = Plan(f".claude/{SETTINGS_FILE}")
    merged_settings = merge_json_file(theirs_settings, ours_settings, settings_plan, settings_target)
    _note_disabled_server(merged_settings, settings_plan)
    plans.append(settings_plan)
    if settings_plan.changes:
        writes.append((settings_target, dump_json(merged_settings)))

    for name, data in source_skills(src):
        target = project / ".claude" / SKILLS_DIR / name / SKILL_FILE
        plan = Plan(f".claude/{SKILLS_DIR}/{name}/{SKILL_FILE}")
        existing = read_bytes(target, missing_ok=True)
        if existing is None:
            plan.change("create")
            writes.append((target, data))
        elif existing != data:
            plan.note(
                f"differs from agent-coord's version (edited here, or from another release); "
                f"kept as is. Compare with {src / SKILLS_DIR / name / SKILL_FILE}"
            )
        plans.append(plan)

    snippet_plan = Plan(SNIPPET_FILE)
    project_snippet = read_bytes(project / SNIPPET_FILE, missing_ok=True)
    if project_snippet is None or _SNIPPET_MARKER.encode() not in project_snippet:
        snippet_plan.note(f"to tell agents how to use the pool, paste {src / SNIPPET_FILE} into it")
    plans.append(snippet_plan)

    report = InstallReport(
        project=str(project),
        source=str(src),
        dry_run=dry_run,
        changes=[c for p in plans for c in p.changes],
        notes=[n for p in plans for n in p.notes],
    )
    if not dry_run:
        apply_writes(writes, project)
    return report


SHIPPED_LAUNCHER = "agent-coord"


def with_launcher(
    mcp: dict[str, Any], settings: dict[str, Any], launcher: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The shipped `.mcp.json` and settings with `agent-coord` replaced by `launcher` (an argv prefix)."""
    if not launcher or not all(launcher):
        raise InstallError("the agent-coord launcher must be a non-empty command")
    mcp, settings = copy.deepcopy(mcp), copy.deepcopy(settings)
    server = mcp.get("mcpServers", {}).get(SERVER_KEY)
    if isinstance(server, dict) and server.get("command") == SHIPPED_LAUNCHER:
        server["command"] = launcher[0]
        server["args"] = [*launcher[1:], *server.get("args", [])]
    prefix = SHIPPED_LAUNCHER + " "
    for groups in settings.get("hooks", {}).values():
        for group in groups:
            for hook in group.get("hooks", []):
                command = hook.get("command")
                if isinstance(command, str) and command.startswith(prefix):
                    # Claude Code runs a hook command through `sh -c`: quote the launcher for it.
                    hook["command"] = shlex.join(launcher) + " " + command.removeprefix(prefix)
    return mcp, settings


def referenced_tool_names(config_dir: Path) -> set[str]:
    """Bare names of every `mcp__coord__<tool>` the configuration in `config_dir` refers to.

    Looks at the skills, CLAUDE.md and the permission rules of settings.json. Wildcard and
    whole-server rules (`mcp__coord__*`, `mcp__coord`) name no tool and are left out.
    """
    names: set[str] = set()
    texts = sorted((config_dir / SKILLS_DIR).glob(f"*/{SKILL_FILE}"))
    snippet = config_dir / SNIPPET_FILE
    if snippet.is_file():
        texts.append(snippet)
    for path in texts:
        names.update(_TOOL_IN_TEXT.findall(path.read_text(encoding="utf-8")))

    settings_path = config_dir / SETTINGS_FILE
    if settings_path.is_file():
        settings = read_required_json(settings_path)
        permissions = settings.get("permissions", {})
        if isinstance(permissions, dict):
            for kind in ("allow", "ask", "deny"):
                rules = permissions.get(kind, [])
                for rule in rules if isinstance(rules, list) else []:
                    if isinstance(rule, str) and (match := _TOOL_RULE.fullmatch(rule.strip())):
                        names.add(match.group(1))
    return names


def _note_disabled_server(settings: dict[str, Any], plan: Plan) -> None:
    disabled = settings.get("disabledMcpjsonServers")
    if isinstance(disabled, list) and SERVER_KEY in disabled:
        plan.note(
            f"disabledMcpjsonServers lists '{SERVER_KEY}', which wins over enabledMcpjsonServers; "
            f"remove it there to use the pool"
        )
