"""The project's Claude Code setup in a pool slot, committed or not.

A slot is checked out from a commit, so a `.mcp.json`, `.claude/` or CLAUDE.md that `install-claude`
wrote but nobody committed is not there, and a `claude --worktree` session started in the slot runs
without the coord server's permissions, hooks (no SessionStart, no SessionEnd) or skills. The
WorktreeCreate hook therefore links every such file that git does not track in the main checkout into
the slot, as a symlink to the main checkout's file (one setup, edited in one place), and never over
anything the slot already has.

The links must not make the slot dirty (a dirty slot is kept for its owner instead of released), so
their paths go into the repository's `info/exclude`. That file lives in the common git directory and
applies to every worktree of the repository, the main checkout included: git offers no exclude file of
a single linked worktree (`$GIT_DIR/info/exclude` is shared; a per-worktree `core.excludesFile` needs
the `extensions.worktreeConfig` repository extension, which older git tools refuse). Ignored files are
also exactly what git lets a checkout overwrite, so a branch that commits its own version of one of
these files still switches into the slot cleanly.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import Confined
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.slot_files import Refused, SlotFiles

# What Claude Code reads from a project directory (files, or folders of files).
SETUP_PATHS = (
    ".mcp.json",
    "CLAUDE.md",
    "CLAUDE.local.md",
    ".claude/CLAUDE.md",
    ".claude/settings.json",
    ".claude/settings.local.json",
    ".claude/skills",
    ".claude/agents",
    ".claude/commands",
    ".claude/rules",
    ".claude/hooks",
    ".claude/output-styles",
)
MAX_FILES = 1000  # a setup is a few dozen files; a runaway folder is not copied link by link
EXCLUDE_HEADER = "# agent-coord: the project's uncommitted Claude Code setup, linked into pool worktrees"


def _exclude_pattern(rel: str) -> str:
    """`rel` as an anchored gitignore pattern that matches only that path."""
    escaped = "".join("\\" + c if c in "*?[\\" else c for c in rel)
    if escaped[0] in "!#":
        escaped = "\\" + escaped
    return "/" + escaped


def _link_missing(main: Path, files: SlotFiles, names: list[str]) -> list[str]:
    """Link each of `names` into the slot `files` writes in, through the guard (`slot_files`): never
    over what the slot has (its branch's own version, a file the user made), never through a folder
    of the slot that is a link (a branch that commits `.claude` as a link to elsewhere) or a file."""
    linked: list[str] = []
    for rel in names:
        source = main / rel
        if not (source.is_file() or source.is_symlink()):
            continue
        with contextlib.suppress(OSError, Refused):
            if files.link_in(rel, source):
                linked.append(rel)
    return linked


def _add_excludes(exclude_file: Path, names: list[str]) -> None:
    try:
        present = set(exclude_file.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        present = set()
    wanted = [p for p in map(_exclude_pattern, names) if p not in present]
    if not wanted:
        return
    block = ([] if EXCLUDE_HEADER in present else [EXCLUDE_HEADER]) + wanted
    exclude_file.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(block) + "\n"
    # One append of the whole block: two hooks at once at worst repeat a line, which git ignores.
    fd = os.open(exclude_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if exclude_file.stat().st_size > 0 and not exclude_file.read_bytes().endswith(b"\n"):
            text = "\n" + text
        os.write(fd, text.encode("utf-8"))
    finally:
        os.close(fd)


async def link_claude_setup(git: GitDriver, main: Path, slot: Confined) -> list[str]:
    """Link into `slot` each file of `main`'s Claude Code setup that git does not track and the slot
    lacks, and exclude every such path from git's view; returns the paths linked now. The slot must
    pass the confinement guard (Unconfined, a GitError, otherwise)."""
    # Without exclude options `--others` lists ignored files too: a gitignored settings.local.json is
    # part of the setup as much as an untracked one.
    out = await git.run(main, "ls-files", "-z", "--others", "--", *SETUP_PATHS)
    names = [n for n in out.split("\0") if n and not n.endswith("/")][:MAX_FILES]
    if not names:
        return []
    common = Path((await git.run(main, "rev-parse", "--path-format=absolute", "--git-common-dir")).strip())
    exclude_file = common / "info" / "exclude"

    def apply() -> list[str]:
        with SlotFiles.of_slot(slot.bounds, slot.path) as files:
            _add_excludes(exclude_file, names)
            return _link_missing(main, files, names)

    return await anyio.to_thread.run_sync(apply)
