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

When no session server answers, the hook asks the user's hook host for its repository and environment
(agent_coord/claude/hook_host.py): a process that a hook working in-process starts in the background,
which answers any hook process of the user working in that repository (its main worktree, a pool
slot, a subdirectory: `host_directory`) with that agent-coord and
environment, acting for the hook's own agent process (found from the peer's pid), and exits once no
hook has come for AGENT_COORD_HOOK_HOST_IDLE_S seconds. Its socket and lock are named after a hash
of everything that decides the answer (`host_key`).

The hook side imports only the standard library.
"""

from __future__ import annotations

import os
import stat
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TypeGuard

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


# ---- asking a server ----------------------------------------------------------------------------


def request(hook: str, stdin: str, cwd: str, **more: object) -> dict[str, object]:
    """What a hook (or `status --json`) sends a server: its payload and directory, and what the server
    compares with its own before it answers (agent_coord/claude/hook_server.py, hook_host.py)."""
    from agent_coord import LAUNCHER_PID

    return {
        "hook": hook,
        "stdin": stdin,
        "cwd": cwd,
        "env": deciding_env(os.environ),
        "code": code_identity(),
        "launcher": LAUNCHER_PID,  # the process that started the hook: still its parent, or it is orphaned
        **more,
    }


def ask(path: str, request: dict[str, object]) -> dict[str, object] | None:
    """The reply of the server listening on `path` to `request`, or None when it does not answer it
    (gone, going, stuck before taking it, or it leaves the request to the caller)."""
    if sys.platform == "win32":
        return None
    import json
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            # A server that does not take the request at once (stopped, its event loop stuck) is left
            # alone; once it has taken it, the work may take as long as an allocation takes.
            conn.settimeout(ACCEPT_TIMEOUT_S)
            conn.connect(path)
            conn.sendall(json.dumps(request).encode())
            conn.shutdown(socket.SHUT_WR)
            reader = conn.makefile("rb")
            if reader.readline() != ACCEPTED:
                return None
            conn.settimeout(None)
            reply = json.loads(reader.read())
    except (OSError, ValueError):
        return None  # the caller does the work (every hook is safe to repeat)
    return reply if isinstance(reply, dict) else None


# ---- the hook host ------------------------------------------------------------------------------

HOST_MODULE = "agent_coord.claude.hook_host"
IDLE_ENV = "AGENT_COORD_HOOK_HOST_IDLE_S"


def working_directory(raw: str, cwd: str) -> str:
    """The directory a hook works from: its payload's `cwd` when usable, else `cwd`."""
    import json

    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return cwd
    wanted = data.get("cwd") if isinstance(data, dict) else None
    return wanted if usable_directory(wanted) else cwd


def usable_directory(cwd: object) -> TypeGuard[str]:
    """Is a payload's `cwd` one a hook works from (an absolute path to a directory)?"""
    return isinstance(cwd, str) and os.path.isabs(cwd) and os.path.isdir(cwd)


def host_key(workdir: str, env: Mapping[str, str]) -> str:
    """Names the hook host that answers work from `workdir` under `env` with this agent-coord."""
    import hashlib
    import json

    blob = json.dumps([code_identity(), deciding_env(env), os.path.realpath(workdir)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def host_socket_name(key: str) -> str:
    return f"host-{key}.sock"


def host_lock_name(key: str) -> str:
    return f"host-{key}.lock"


def host_failed_name(key: str) -> str:
    """A host that could not serve (its engine refused to open) leaves this file: hooks start no other
    for `FAILED_BACKOFF_S` (the same configuration would fail the same way, each start ~250 ms of CPU)."""
    return f"host-{key}.failed"


FAILED_BACKOFF_S = 60.0


def host_directory(workdir: str) -> str:
    """Where the hook host for work from `workdir` runs: the main worktree of the repository `workdir`
    is in (a pool slot and the project share one host), read from git's files; `workdir` itself when
    that takes more than reading them (a bare repository, anything odd). The host checks it with git."""
    here = os.path.abspath(workdir)
    while True:
        marker = os.path.join(here, ".git")
        if os.path.isdir(marker):
            return here
        if os.path.isfile(marker):
            return _main_of_linked(here, marker) or workdir
        parent = os.path.dirname(here)
        if parent == here:
            return workdir
        here = parent


def _main_of_linked(top: str, marker: str) -> str | None:
    """The main worktree of the linked worktree at `top` (its `.git` file names its git directory,
    whose `commondir` names the repository's), or None."""
    try:
        with open(marker, encoding="utf-8") as fh:
            line = fh.readline().strip()
        if not line.startswith("gitdir: "):
            return None
        gitdir = os.path.join(top, line.removeprefix("gitdir: "))
        with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as fh:
            common = os.path.realpath(os.path.join(gitdir, fh.readline().strip()))
    except (OSError, ValueError):
        return None
    return os.path.dirname(common) if os.path.basename(common) == ".git" else None


def host_socket(workdir: str) -> str | None:
    """The socket of the hook host for work from `workdir` in this environment, where one listens."""
    directory = socket_dir()
    if directory is None:
        return None
    path = os.path.join(directory, host_socket_name(host_key(host_directory(workdir), os.environ)))
    return path if os.path.exists(path) else None


def host_wanted(env: Mapping[str, str]) -> bool:
    """Has the user left the hook host on (AGENT_COORD_HOOK_HOST_IDLE_S, else the settings file's
    `hook_host_idle_s`, not 0)? A value the settings refuse is left to the host, which reads the
    settings and says nothing (it exits)."""
    value: object = next((v for k, v in env.items() if k.upper() == IDLE_ENV), None)
    if value is None:
        try:
            from agent_coord.settings_file import read_settings_file

            value = read_settings_file().get("hook_host_idle_s")
        except Exception:  # an unreadable file: every hook says what is wrong with it
            return False
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return float(value) != 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def holds_lock(fd: int) -> bool:
    """Take the lock on the open file `fd` without waiting; False when another process holds it."""
    if sys.platform == "win32":
        return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def open_lock(directory: str, key: str) -> int:
    if sys.platform == "win32":
        raise OSError("the hook host is for Linux")
    return os.open(
        os.path.join(directory, host_lock_name(key)),
        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )


def start_host(workdir: str) -> bool:
    """Start the hook host for work from `workdir` in the background (in `host_directory`), unless the
    user turned it off, one runs or starts already (it holds its lock), or one failed to serve within
    `FAILED_BACKOFF_S`. Best effort: hooks answer without it. Says whether it started one."""
    if not supported() or not host_wanted(os.environ):
        return False
    directory = socket_dir(create=True)
    workdir = host_directory(workdir)
    if directory is None or not os.path.isdir(workdir):
        return False
    key = host_key(workdir, os.environ)
    try:
        failed = os.stat(os.path.join(directory, host_failed_name(key))).st_mtime
    except OSError:
        failed = None
    if failed is not None and abs(time.time() - failed) < FAILED_BACKOFF_S:
        return False
    try:
        fd = open_lock(directory, key)
    except OSError:
        return False
    try:
        if not holds_lock(fd):
            return False  # running, or starting
    finally:
        os.close(fd)  # the host takes the lock itself (a start racing ours finds it held and exits)
    import subprocess

    try:
        subprocess.Popen(
            # -P: the working directory (a repository, which may hold an `argparse.py`) is not on sys.path.
            [sys.executable, "-P", "-m", HOST_MODULE, "--key", key],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # Claude Code reads the hook's stdout to its end
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            close_fds=True,
            start_new_session=True,  # the user's Ctrl-C in the session does not reach it
        )
    except OSError:
        return False
    return True
