"""First-time setup of a new slot: copy `.worktreeinclude` files, run post-create commands, once."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import Confined, check_slot
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.slot_files import Refused, SlotFiles

INCLUDE_FILE = ".worktreeinclude"
OUTPUT_TAIL = 2000


class SetupError(Exception):
    pass


async def copy_included_files(git: GitDriver, repo: Path, slot: Confined) -> list[str]:
    """Copy untracked files of the main worktree that `.worktreeinclude` (gitignore syntax) matches.
    Each one is written through the guard (`slot_files`): a name that would leave the slot, or a folder
    of the slot that is a link or a file, leaves that file out; a slot that fails the guard, all."""
    include = repo / INCLUDE_FILE
    if not await anyio.Path(include).is_file():  # a stat, but not on the event loop
        return []
    out = await git.run(repo, "ls-files", "-z", "--others", "--ignored", f"--exclude-from={include}")
    names = [n for n in out.split("\0") if n and n != INCLUDE_FILE]

    def copy_all() -> list[str]:
        copied: list[str] = []
        with SlotFiles.of_slot(slot.bounds, slot.path) as files:
            for name in names:
                with contextlib.suppress(Refused):
                    if files.copy_in(name, repo / name):
                        copied.append(name)
        return copied

    return await anyio.to_thread.run_sync(copy_all)


async def run_post_create(commands: Sequence[str], slot: Confined, timeout_s: float) -> None:
    """Run each command in the slot; the slot passes the guard right before each, and the command runs
    in the real directory the guard checked."""
    for command in commands:
        argv = shlex.split(command)
        if not argv:
            continue
        checked = await anyio.to_thread.run_sync(check_slot, slot.bounds, slot.path)
        try:
            with anyio.fail_after(timeout_s):
                result = await anyio.run_process(argv, cwd=checked.path, check=False, stderr=subprocess.STDOUT)
        except TimeoutError as exc:
            raise SetupError(f"post-create command {command!r} timed out after {timeout_s:.0f}s") from exc
        except OSError as exc:
            raise SetupError(f"post-create command {command!r} could not start: {exc}") from exc
        if result.returncode != 0:
            output = result.stdout.decode("utf-8", "replace")[-OUTPUT_TAIL:].strip()
            raise SetupError(f"post-create command {command!r} exited {result.returncode}: {output}")
