"""First-time setup of a new slot: copy `.worktreeinclude` files, run post-create commands, once."""

from __future__ import annotations

import contextlib
import shlex
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import anyio

from agent_coord.engine.git.confinement import Confined, check_slot
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.git.slot_files import Refused, SlotFiles
from agent_coord.platform.termination import end_tree

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
                returncode, output = await _run_to_its_end(argv, checked.path)
        except TimeoutError as exc:
            raise SetupError(f"post-create command {command!r} timed out after {timeout_s:.0f}s") from exc
        except OSError as exc:
            raise SetupError(f"post-create command {command!r} could not start: {exc}") from exc
        if returncode != 0:
            tail = output.decode("utf-8", "replace")[-OUTPUT_TAIL:].strip()
            raise SetupError(f"post-create command {command!r} exited {returncode}: {tail}")


async def _run_to_its_end(argv: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run `argv` in `cwd` to its end: its exit status and output (stderr with stdout, the tail kept).
    Timed out or cancelled, it is ended with everything it started (an install's own children), so
    that nothing writes in the slot once its allocation is rolled back."""
    tail = b""
    async with await anyio.open_process(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        try:
            assert proc.stdout is not None
            async for chunk in proc.stdout:
                tail = (tail + chunk)[-OUTPUT_TAIL * 4 :]
            returncode = await proc.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(partial(end_tree, proc.pid, hard=True))
                await proc.wait()
            raise
    return returncode, tail
