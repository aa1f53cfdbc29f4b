"""Hooks answered by the session's own MCP server, over a private local socket.

Claude Code starts `agent-coord serve` (the session's MCP server) and runs every hook as a new process,
both as its children. A hook process that does the work itself pays for importing the engine (pydantic,
anyio, the store) on every call; the server has all of it loaded. So the server listens on a Unix
socket named after its agent process (the Claude Code process: pid and start time), and a hook first
looks for the socket of each of its ancestors: when one answers, the hook sends its payload and prints
the server's answer; when none does (no server yet, another host, not Linux), it works in-process as
before (agent_coord/claude/hook_run.py). Both compute the answer with the same code.

The server answers only what the hook itself would have answered, and otherwise says "not here" and the
hook works in-process:
* the peer is the same user (SO_PEERCRED), and its agent process (its nearest non-wrapper ancestor) is
  the server's own agent process, so the hook acts as the same agent it would act as;
* it runs the same agent-coord (package directory and version) with the same environment for everything
  that decides the answer (`AGENT_COORD_*`, `GIT_*`, HOME, PATH, the state and config directories), and
  from the same directory.

The socket is private: mode 0600 in a directory of mode 0700 owned by the user
(`$XDG_RUNTIME_DIR/agent-coord`, else `<tmp>/agent-coord-<uid>`); a directory that is not exactly that
(another owner, other permissions, a symlink) is never used, by the server or by a hook.

The hook side imports only the standard library.
"""

from __future__ import annotations

import os
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

PROC = "/proc"
MAX_ANCESTORS = 16
ACCEPTED = b"answering\n"  # the server's first line when it takes the request; anything else: not answered
ACCEPT_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 4 << 20  # the payload (at most 1 MiB, agent_coord.claude.hooks) and the environment
# Variables that decide a hook's answer: a server whose own differ answers nothing (the hook works itself).
SAME_ENV = ("HOME", "PATH", "PYTHONPATH", "XDG_STATE_HOME", "XDG_CONFIG_HOME", "LOCALAPPDATA")
SAME_ENV_PREFIXES = ("AGENT_COORD_", "GIT_")


def supported() -> bool:
    return sys.platform == "linux" and hasattr(os, "getuid")


def deciding_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of `env` that decides a hook's answer (names compared as Settings reads them)."""
    return {k.upper(): v for k, v in env.items() if k.upper() in SAME_ENV or k.upper().startswith(SAME_ENV_PREFIXES)}


def code_identity() -> list[str]:
    """Which agent-coord this is: its package directory and version."""
    import agent_coord

    return [os.path.dirname(os.path.abspath(agent_coord.__file__)), agent_coord.__version__]


def socket_dir(create: bool = False) -> str | None:
    """The user's private directory for the sockets, or None when it is missing (and not `create`d) or
    is not private (another owner, group or other permissions, not a directory, a symlink)."""
    if sys.platform == "win32":
        return None
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        path = os.path.join(runtime, "agent-coord")
    else:
        import tempfile

        path = os.path.join(tempfile.gettempdir(), f"agent-coord-{os.getuid()}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return None
    try:
        info = os.lstat(path)
    except OSError:
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    return path if private else None


def process_key(pid: int) -> tuple[int, str] | None:
    """(parent pid, `<pid>-<start in clock ticks since boot>`) from /proc, or None when unreadable.
    The start tells a process from a later one that reuses its pid."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as fh:
            raw = fh.read()
        fields = raw.rsplit(b")", 1)[1].split()  # after the command name, which may hold anything
        return int(fields[1]), f"{pid}-{int(fields[19])}"
    except (OSError, IndexError, ValueError):
        return None


def socket_name(key: str) -> str:
    return f"hooks-{key}.sock"


def find_socket() -> str | None:
    """The socket of the nearest ancestor of this process that has one (its Claude Code, when that
    runs an agent-coord server), or None."""
    directory = socket_dir()
    if directory is None:
        return None
    try:
        present = set(os.listdir(directory))
    except OSError:
        return None
    if not present:
        return None
    pid = os.getppid()
    for _ in range(MAX_ANCESTORS):
        if pid <= 1:
            return None
        found = process_key(pid)
        if found is None:
            return None
        parent, key = found
        if socket_name(key) in present:
            return os.path.join(directory, socket_name(key))
        pid = parent
    return None
