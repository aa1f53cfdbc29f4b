"""Merging agent-coord's JSON configuration into a project's: ours is only added, theirs is never
removed or replaced, and a conflict becomes a note on the plan rather than a change.
"""

from __future__ import annotations

import copy
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_coord.claude.config_files import InstallError


@dataclass
class Plan:
    """Changes for one file, collected before anything is written."""

    label: str  # path relative to the project, as shown to the user
    changes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def change(self, text: str) -> None:
        self.changes.append(f"{self.label}: {text}")

    def note(self, text: str) -> None:
        self.notes.append(f"{self.label}: {text}")


def merge_json_file(theirs: dict[str, Any] | None, ours: dict[str, Any], plan: Plan, target: Path) -> dict[str, Any]:
    if theirs is None:
        plan.change("create")
        _describe_new(ours, (), plan)
        return copy.deepcopy(ours)
    merged = copy.deepcopy(theirs)
    _merge_object(merged, ours, (), plan, target)
    return merged


def _describe_new(ours: dict[str, Any], path: tuple[str, ...], plan: Plan) -> None:
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
        else:
            _describe_value(value, here, plan)


def _describe_value(value: Any, here: tuple[str, ...], plan: Plan) -> None:
    if isinstance(value, dict):
        _describe_new(value, here, plan)
    elif isinstance(value, list):
        for item in value:
            plan.change(f"add {_dotted(here)} {json.dumps(item)}")
    else:
        plan.change(f"set {_dotted(here)} = {json.dumps(value)}")


def _merge_object(
    theirs: dict[str, Any], ours: dict[str, Any], path: tuple[str, ...], plan: Plan, target: Path
) -> None:
    """Add what `ours` has and `theirs` lacks, in place. Never removes or replaces their values."""
    for key, our_value in ours.items():
        here = (*path, key)
        if key not in theirs:
            theirs[key] = copy.deepcopy(our_value)
            _describe_value(our_value, here, plan)
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


def _merge_servers(theirs: dict[str, Any], ours: dict[str, Any], plan: Plan) -> None:
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


def _merge_hooks(theirs: dict[str, Any], ours: dict[str, Any], plan: Plan, target: Path) -> None:
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
        present = {_hook_key(c) for c in _commands(their_groups)}
        for group in our_groups:
            missing = [
                h for h in group.get("hooks", []) if (c := _command_of(h)) is not None and _hook_key(c) not in present
            ]
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


def _hook_key(command: str) -> str:
    """What a hook command runs: agent-coord's own hooks are the same hook whichever launcher starts
    them (`agent-coord`, an absolute path, `uvx …`), so a second install never adds a second one."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return command
    if len(argv) >= 3 and argv[-2] == "hook" and any(Path(a).name == "agent-coord" for a in argv[:-2]):
        return f"agent-coord hook {argv[-1]}"
    return command


def _command_of(hook: Any) -> str | None:
    if isinstance(hook, dict) and isinstance(hook.get("command"), str):
        # Surrounding whitespace does not change what the shell runs; treat it as the same command.
        return str(hook["command"]).strip()
    return None


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
