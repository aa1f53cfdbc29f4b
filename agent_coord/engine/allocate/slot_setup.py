"""First-time setup of a new slot: copy `.worktreeinclude` files, run post-create commands, once."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import anyio

from agent_coord.engine.git.driver import GitDriver

INCLUDE_FILE = ".worktreeinclude"
OUTPUT_TAIL = 2000


class SetupError(Exception):
    pass


def _copy_one(src_root: Path, dst_root: Path, rel: str) -> bool:
    rel_path = Path(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        return False
    src = src_root / rel_path
    dst = dst_root / rel_path
    if dst.exists() or dst.is_symlink():
        return False  # never overwrite what the slot already has
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_file():
        shutil.copy2(src, dst)
    else:
        return False
    return True


async def copy_included_files(git: GitDriver, repo: Path, slot: Path) -> list[str]:
    """Copy untracked files of the main worktree that `.worktreeinclude` (gitignore syntax) matches."""
    include = repo / INCLUDE_FILE
    if not await anyio.Path(include).is_file():  # a stat, but not on the event loop
        return []
    out = await git.run(repo, "ls-files", "-z", "--others", "--ignored", f"--exclude-from={include}")
    names = [n for n in out.split("\0") if n and n != INCLUDE_FILE]

    def copy_all() -> list[str]:
        return [n for n in names if _copy_one(repo, slot, n)]

    return await anyio.to_thread.run_sync(copy_all)


async def run_post_create(commands: Sequence[str], slot: Path, timeout_s: float) -> None:
    for command in commands:
        argv = shlex.split(command)
        if not argv:
            continue
        try:
            with anyio.fail_after(timeout_s):
                result = await anyio.run_process(argv, cwd=slot, check=False, stderr=subprocess.STDOUT)
        except TimeoutError as exc:
            raise SetupError(f"post-create command {command!r} timed out after {timeout_s:.0f}s") from exc
        except OSError as exc:
            raise SetupError(f"post-create command {command!r} could not start: {exc}") from exc
        if result.returncode != 0:
            output = result.stdout.decode("utf-8", "replace")[-OUTPUT_TAIL:].strip()
            raise SetupError(f"post-create command {command!r} exited {result.returncode}: {output}")
