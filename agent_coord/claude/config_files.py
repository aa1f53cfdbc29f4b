"""Reading and writing the Claude Code configuration files for `install_claude`: every read error
becomes an `InstallError` the owner can act on, and every write is atomic and keeps symlinks.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

MCP_FILE = ".mcp.json"
SETTINGS_FILE = "settings.json"
SNIPPET_FILE = "CLAUDE.md"
SKILLS_DIR = "skills"
SKILL_FILE = "SKILL.md"


class InstallError(ValueError):
    """The installation was refused; nothing in the project was changed (unless the text says so)."""


def check_source(src: Path) -> Path:
    missing = [n for n in (MCP_FILE, SETTINGS_FILE) if not (src / n).is_file()]
    if not (src / SKILLS_DIR).is_dir():
        missing.append(SKILLS_DIR + "/")
    if missing:
        raise InstallError(
            f"{src}: not an agent-coord claude_config directory (missing {', '.join(missing)}); "
            f"pass the repository's claude_config/ as the source"
        )
    return src


def source_skills(src: Path) -> list[tuple[str, bytes]]:
    skills: list[tuple[str, bytes]] = []
    for skill_file in sorted((src / SKILLS_DIR).glob(f"*/{SKILL_FILE}")):
        data = read_bytes(skill_file, missing_ok=False)
        assert data is not None  # missing_ok=False raises instead
        skills.append((skill_file.parent.name, data))
    return skills


def read_bytes(path: Path, *, missing_ok: bool) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InstallError(f"{path}: missing") from None
    except OSError as exc:
        raise InstallError(f"{path}: cannot read ({exc.strerror or exc}). Nothing was changed.") from exc


def read_json_object(path: Path, *, whose: str, missing_ok: bool = False) -> dict[str, Any] | None:
    data = read_bytes(path, missing_ok=missing_ok)
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


def read_required_json(path: Path) -> dict[str, Any]:
    value = read_json_object(path, whose="agent-coord's")
    assert value is not None  # missing_ok=False raises instead
    return value


def dump_json(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def apply_writes(writes: list[tuple[Path, bytes]], project: Path) -> None:
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
