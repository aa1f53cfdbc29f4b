"""`agent-coord install-claude`: merge agent-coord's Claude Code configuration into a project.

The project's files belong to its owner. Everything already there is kept: servers, permissions,
hooks, unknown keys and their order. Ours is only added next to it, conflicts are reported rather
than resolved, and a second run changes nothing. All inputs are read and checked before the first
byte is written, so a refusal leaves the project exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, computed_field

SERVER_KEY = "coord"  # the name .mcp.json registers the server under; tools are mcp__coord__<tool>
TOOL_PREFIX = f"mcp__{SERVER_KEY}__"

# A tool name after the prefix. The class excludes `*` and `<`, so wildcard rules and placeholders
# such as `mcp__coord__<name>` are not mistaken for tools; a name may not end in a hyphen, so
# prose like "mcp__coord__status-" stays out.
_TOOL_NAME = r"[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)*"
_TOOL_IN_TEXT = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(TOOL_PREFIX)}({_TOOL_NAME})")
_TOOL_RULE = re.compile(rf"{re.escape(TOOL_PREFIX)}({_TOOL_NAME})")

MCP_FILE = ".mcp.json"
SETTINGS_FILE = "settings.json"
SNIPPET_FILE = "CLAUDE.md"
SKILLS_DIR = "skills"
SKILL_FILE = "SKILL.md"

# A project CLAUDE.md that mentions this already carries the snippet (or the owner's version of it).
_SNIPPET_MARKER = f"{TOOL_PREFIX}allocate_worktree"


class InstallError(ValueError):
    """The installation was refused; nothing in the project was changed (unless the text says so)."""


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


@dataclass
class _Plan:
    """Changes for one file, collected before anything is written."""

    label: str  # path relative to the project, as shown to the user
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def change(self, text: str) -> None:
        self.changes.append(f"{self.label}: {text}")

    def note(self, text: str) -> None:
        self.notes.append(f"{self.label}: {text}")


def default_source() -> Path:
    """`claude_config/` at the repository root, beside the `server` package (editable install)."""
    return Path(__file__).resolve().parent.parent / "claude_config"


def install_claude(project: Path, *, dry_run: bool, source: Path | None = None) -> InstallReport:
    """Merge `source` (default: the packaged `claude_config/`) into `project`'s Claude Code files.

    Raises `InstallError` when an input is missing or unreadable, when an existing JSON file is not
    valid JSON or not shaped as Claude Code expects, or when a write fails.
    """
    src = _check_source(source if source is not None else default_source())
    project = Path(project)
    if not project.is_dir():
        raise InstallError(f"{project}: not a directory; pass an existing project directory")

    mcp_target = project / MCP_FILE
    settings_target = project / ".claude" / SETTINGS_FILE
    ours_mcp = _read_required_json(src / MCP_FILE)
    ours_settings = _read_required_json(src / SETTINGS_FILE)
    # Read both project files before deciding anything: one broken file refuses the whole run.
    theirs_mcp = _read_json_object(mcp_target, whose="the project's", missing_ok=True)
    theirs_settings = _read_json_object(settings_target, whose="the project's", missing_ok=True)

    writes: list[tuple[Path, bytes]] = []
    plans: list[_Plan] = []

    mcp_plan = _Plan(MCP_FILE)
    merged_mcp = _merge_json_file(theirs_mcp, ours_mcp, mcp_plan, mcp_target)
    plans.append(mcp_plan)
    if mcp_plan.changes:
        writes.append((mcp_target, _dump_json(merged_mcp)))

    settings_plan = _Plan(f".claude/{SETTINGS_FILE}")
    merged_settings = _merge_json_file(theirs_settings, ours_settings, settings_plan, settings_target)
    _note_disabled_server(merged_settings, settings_plan)
    plans.append(settings_plan)
    if settings_plan.changes:
        writes.append((settings_target, _dump_json(merged_settings)))

    for name, data in _source_skills(src):
        target = project / ".claude" / SKILLS_DIR / name / SKILL_FILE
        plan = _Plan(f".claude/{SKILLS_DIR}/{name}/{SKILL_FILE}")
        existing = _read_bytes(target, missing_ok=True)
        if existing is None:
            plan.change("create")
            writes.append((target, data))
        elif existing != data:
            plan.note(
                f"differs from agent-coord's version (edited here, or from another release); "
                f"kept as is. Compare with {src / SKILLS_DIR / name / SKILL_FILE}"
            )
        plans.append(plan)

    snippet_plan = _Plan(SNIPPET_FILE)
    project_snippet = _read_bytes(project / SNIPPET_FILE, missing_ok=True)
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
        _apply(writes, project)
    return report


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
        settings = _read_required_json(settings_path)
        permissions = settings.get("permissions", {})
        if isinstance(permissions, dict):
            for kind in ("allow", "ask", "deny"):
                rules = permissions.get(kind, [])
                for rule in rules if isinstance(rules, list) else []:
                    if isinstance(rule, str) and (match := _TOOL_RULE.fullmatch(rule.strip())):
                        names.add(match.group(1))
    return names


# --- merging -------------------------------------------------------------------------------------


def _merge_json_file(theirs: dict[str, Any] | None, ours: dict[str, Any], plan: _Plan, target: Path) -> dict[str, Any]:
    if theirs is None:
        plan.change("create")
        _describe_new(ours, (), plan)
        return copy.deepcopy(ours)
    merged = copy.deepcopy(theirs)
    _merge_object(merged, ours, (), plan, target)
    return merged


def _describe_new(ours: dict[str, Any], path: tuple[str, ...], plan: _Plan) -> None:
    """Change lines for a file we create, so a dry run shows what the new file will hold."""
    for key, value in ours.items():
        here = (*path, key)
        if here == ("mcpServers",):
            for server in value:
                plan.change(f"add server '{server}'")
        elif here == ("hooks",):
            for event, groups in value.items():
                for command in _commands(groups):
                    plan.change(f"add hook {event}: {command}")
        elif isinstance(value, dict):
            _describe_new(value, here, plan)
        elif isinstance(value, list):
            for item in value:
                plan.change(f"add {_dotted(here)} {json.dumps(item)}")
        else:
            plan.change(f"set {_dotted(here)} = {json.dumps(value)}")


def _merge_object(
    theirs: dict[str, Any], ours: dict[str, Any], path: tuple[str, ...], plan: _Plan, target: Path
) -> None:
    """Add what `ours` has and `theirs` lacks, in place. Never removes or replaces their values."""
    for key, our_value in ours.items():
        here = (*path, key)
        if key not in theirs:
            theirs[key] = copy.deepcopy(our_value)
            if isinstance(our_value, dict):
                _describe_new(our_value, here, plan)
            elif isinstance(our_value, list):
                for item in our_value:
                    plan.change(f"add {_dotted(here)} {json.dumps(item)}")
            else:
                plan.change(f"set {_dotted(here)} = {json.dumps(our_value)}")
            continue
        their_value = theirs[key]
        _expect_same_type(their_value, our_value, here, target)
        if here == ("mcpServers",):
            _merge_servers(their_value, our_value, plan)
        elif here == ("hooks",):
            _merge_hooks(their_value, our_value, plan, target)
        elif isinstance(our_value, dict):
            _merge_object(their_value, our_value, here, plan, target)
        elif isinstance(our_value, list):
            for item in our_value:
                if item not in their_value:
                    their_value.append(copy.deepcopy(item))
                    plan.change(f"add {_dotted(here)} {json.dumps(item)}")
        elif their_value != our_value:
            plan.note(
                f"{_dotted(here)} is {json.dumps(their_value)}, agent-coord suggests "
                f"{json.dumps(our_value)}; kept yours"
            )


def _merge_servers(theirs: dict[str, Any], ours: dict[str, Any], plan: _Plan) -> None:
    # A server entry is taken or left whole: half of ours merged into half of theirs would start
    # neither program correctly.
    for name, entry in ours.items():
        if name not in theirs:
            theirs[name] = copy.deepcopy(entry)
            plan.change(f"add server '{name}'")
        elif theirs[name] != entry:
            plan.note(
                f"server '{name}' is already defined differently ({json.dumps(theirs[name])}); "
                f"kept yours. agent-coord's entry is {json.dumps(entry)}"
            )


def _merge_hooks(theirs: dict[str, Any], ours: dict[str, Any], plan: _Plan, target: Path) -> None:
    for event, our_groups in ours.items():
        if event not in theirs:
            theirs[event] = copy.deepcopy(our_groups)
            for command in _commands(our_groups):
                plan.change(f"add hook {event}: {command}")
            continue
        their_groups = theirs[event]
        if not isinstance(their_groups, list) or not all(isinstance(g, dict) for g in their_groups):
            raise InstallError(
                f"{target}: hooks.{event} should be a list of objects; fix it by hand. Nothing was changed."
            )
        present = set(_commands(their_groups))
        for group in our_groups:
            missing = [h for h in group.get("hooks", []) if (c := _command_of(h)) is not None and c not in present]
            if not missing:
                continue
            # Our own matcher group, appended after theirs: their groups and their order stay intact.
            new_group = {k: copy.deepcopy(v) for k, v in group.items() if k != "hooks"}
            new_group["hooks"] = copy.deepcopy(missing)
            their_groups.append(new_group)
            for hook in missing:
                plan.change(f"add hook {event}: {_command_of(hook)}")


def _commands(groups: Any) -> list[str]:
    """Every command string of an event's matcher groups, whatever else the groups hold."""
    found: list[str] = []
    for group in groups if isinstance(groups, list) else []:
        hooks = group.get("hooks", []) if isinstance(group, dict) else []
        for hook in hooks if isinstance(hooks, list) else []:
            command = _command_of(hook)
            if command is not None:
                found.append(command)
    return found


def _command_of(hook: Any) -> str | None:
    if isinstance(hook, dict) and isinstance(hook.get("command"), str):
        # Surrounding whitespace does not change what the shell runs; treat it as the same command.
        return str(hook["command"]).strip()
    return None


def _note_disabled_server(settings: dict[str, Any], plan: _Plan) -> None:
    disabled = settings.get("disabledMcpjsonServers")
    if isinstance(disabled, list) and SERVER_KEY in disabled:
        plan.note(
            f"disabledMcpjsonServers lists '{SERVER_KEY}', which wins over enabledMcpjsonServers; "
            f"remove it there to use the pool"
        )


def _expect_same_type(theirs: Any, ours: Any, path: tuple[str, ...], target: Path) -> None:
    for kind in (dict, list):
        if isinstance(ours, kind) and not isinstance(theirs, kind):
            expected = "an object" if kind is dict else "a list"
            raise InstallError(
                f"{target}: '{_dotted(path)}' should be {expected} but is {json.dumps(theirs)}; "
                f"fix it by hand. Nothing was changed."
            )


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


# --- reading and writing -------------------------------------------------------------------------


def _check_source(src: Path) -> Path:
    missing = [n for n in (MCP_FILE, SETTINGS_FILE) if not (src / n).is_file()]
    if not (src / SKILLS_DIR).is_dir():
        missing.append(SKILLS_DIR + "/")
    if missing:
        raise InstallError(
            f"{src}: not an agent-coord claude_config directory (missing {', '.join(missing)}); "
            f"pass the repository's claude_config/ as the source"
        )
    return src


def _source_skills(src: Path) -> list[tuple[str, bytes]]:
    skills: list[tuple[str, bytes]] = []
    for skill_file in sorted((src / SKILLS_DIR).glob(f"*/{SKILL_FILE}")):
        data = _read_bytes(skill_file, missing_ok=False)
        assert data is not None  # missing_ok=False raises instead
        skills.append((skill_file.parent.name, data))
    return skills


def _read_bytes(path: Path, *, missing_ok: bool) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InstallError(f"{path}: missing") from None
    except OSError as exc:
        raise InstallError(f"{path}: cannot read ({exc.strerror or exc}). Nothing was changed.") from exc


def _read_json_object(path: Path, *, whose: str, missing_ok: bool = False) -> dict[str, Any] | None:
    data = _read_bytes(path, missing_ok=missing_ok)
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InstallError(f"{path}: {whose} file is not UTF-8 text. Nothing was changed.") from exc
    except json.JSONDecodeError as exc:
        raise InstallError(
            f"{path}: {whose} file is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            f"fix or remove it and run again. Nothing was changed."
        ) from exc
    if not isinstance(value, dict):
        raise InstallError(f"{path}: {whose} file should hold a JSON object. Nothing was changed.")
    return value


def _read_required_json(path: Path) -> dict[str, Any]:
    value = _read_json_object(path, whose="agent-coord's")
    assert value is not None  # missing_ok=False raises instead
    return value


def _dump_json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _apply(writes: list[tuple[Path, bytes]], project: Path) -> None:
    done: list[Path] = []
    for target, data in writes:
        try:
            _write_atomic(target, data)
        except OSError as exc:
            written = ", ".join(str(p.relative_to(project)) for p in done) or "none"
            raise InstallError(f"{target}: cannot write ({exc.strerror or exc}); already written: {written}") from exc
        done.append(target)


def _write_atomic(target: Path, data: bytes) -> None:
    # Write through a symlink (settings kept in a dotfiles repository stay linked), never over it.
    real = target.resolve() if target.is_symlink() else target
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(real.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644  # mkstemp creates 0600; a config file others read should not stay private
    fd, tmp_name = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
