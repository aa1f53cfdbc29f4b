"""The hook host: one process per user, repository and environment that answers hooks for any agent
process of the user, so that a hook answers in tens of milliseconds even where no session server runs
(`claude --worktree` creates the worktree before its session's server starts; a hook run by hand).

A hook that no server answered starts the host and works in-process meanwhile
(hook_socket.start_host): `python -P -m agent_coord.claude.hook_host --key K`, detached, in the hook's
working directory and with its environment. The host takes the lock named after K (one host per key;
a second start exits at once), opens the engine once and listens on the socket named after K until it
has answered nothing for AGENT_COORD_HOOK_HOST_IDLE_S seconds. It answers a request only when the answer
is the one the hook process would have worked out itself:
* the peer is the same user (SO_PEERCRED) and its parent is still the process that started it (a
  re-parented hook works itself);
* it runs the same agent-coord with the same deciding environment, from the host's repository (its
  main worktree, where the host runs, or a slot or subdirectory git places in it), and the settings
  it loads now are the host's (a settings file, database file, code or directory changed since: the
  host answers nothing more and exits);
* the hook acts for its own agent process, found from the peer's pid as the hook would find it from
  its own (Identity.detect), over the host's store, git driver and repositories (Coordinator.acting_as).
`agent-coord status --json` is answered the same way (console.py), for the process that asks.

The host runs none of a server's background work (validation, the radar, alerts): a hook does none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
from anyio.abc import SocketStream

from agent_coord.claude import hook_run, hook_socket
from agent_coord.claude.hook_server import peer_like_me, receive_all, same_directory
from agent_coord.claude.hooks import hook_settings
from agent_coord.config import Settings, SettingsError, load_settings
from agent_coord.console import status_reply
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError
from agent_coord.engine.liveness.judge import is_init_adopter
from agent_coord.store_target import PostgresUrl

logger = logging.getLogger("agent-coord")

LOG_BYTES = 256 << 10
RECHECK_S = 5.0
STATUS = "status"  # the request for `agent-coord status --json` (no hook has that name)


def database_file(settings: Settings) -> tuple[int, int] | None:
    """The SQLite database file the settings name (device, inode), or None (PostgreSQL, or no file)."""
    if isinstance(settings.db, PostgresUrl):
        return None
    try:
        info = os.stat(settings.db)
    except OSError:
        return None
    return info.st_dev, info.st_ino


class HostState:
    """When the host last answered, how many answers are under way, and whether it should go."""

    def __init__(self, idle_s: float) -> None:
        self.idle_s = idle_s
        self.last = time.monotonic()
        self.in_flight = 0
        self.stale = False  # what it answers from changed under it: a fresh host answers from now on
        self.database: tuple[int, int] | None = None  # the SQLite file the host opened
        self.code = code_fingerprint()  # the code it runs
        self.checked_at = time.monotonic()  # when the code and the repositories were last looked at
        self._poke = anyio.Event()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            self.last = time.monotonic()
            self._poke.set()

    def code_changed(self, base: Coordinator) -> bool:
        """Has agent-coord's code changed in place? Looked at most every RECHECK_S (a walk of its
        modules), when the repositories are also resolved afresh (their pool roots checked again,
        as a validating server would)."""
        now = time.monotonic()
        if now - self.checked_at < RECHECK_S:
            return False
        self.checked_at = now
        base.repos.forget()
        return code_fingerprint() != self.code

    def go_stale(self) -> None:
        self.stale = True
        self._poke.set()

    async def until_over(self) -> None:
        """Return once no answer is under way and none has come for `idle_s` (or the host is stale)."""
        while True:
            if not self.in_flight:
                left = 0.0 if self.stale else self.last + self.idle_s - time.monotonic()
                if left <= 0:
                    return
            else:
                left = self.idle_s
            with anyio.move_on_after(left):
                await self._poke.wait()
            self._poke = anyio.Event()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {hook_socket.HOST_MODULE}")
    parser.add_argument("--key", required=True, help="the host's key, as the hook that starts it computed it")
    args = parser.parse_args(argv)
    workdir = os.getcwd()
    if not hook_socket.supported() or hook_socket.host_key(workdir, os.environ) != args.key:
        return 0  # another agent-coord or environment than the hook's: it would answer nothing
    directory = hook_socket.socket_dir(create=True)
    if directory is None:
        return 0
    lock = hook_socket.open_lock(directory, args.key)  # held until this process exits
    if not hook_socket.holds_lock(lock):
        return 0  # another host for this key runs or starts
    try:
        settings = load_settings()
    except SettingsError:
        return 0  # every hook says what is wrong with the settings itself
    if settings.hook_host_idle_s == 0:
        return 0
    path = os.path.join(directory, hook_socket.host_socket_name(args.key))
    _log_to(os.path.join(directory, f"host-{args.key}.log"))
    logger.info("hook host %d for %s: listening on %s", os.getpid(), workdir, path)
    failed = os.path.join(directory, hook_socket.host_failed_name(args.key))
    try:
        why = anyio.run(serve, settings, path, failed)
    except Exception:
        logger.exception("hook host %d stopped", os.getpid())
        with contextlib.suppress(OSError):
            # O_TRUNC on a file that exists sets its time too: the back-off starts now either way.
            os.close(os.open(failed, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600))
        return 1
    logger.info("hook host %d: %s, exiting", os.getpid(), why)
    return 0


def _log_to(path: str) -> None:
    """The host has no terminal: what it did and what went wrong go to a small file beside its socket."""
    from logging.handlers import RotatingFileHandler

    with contextlib.suppress(OSError):  # private like its directory (a rotated file is too: 0700 above it)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600))
    handler = RotatingFileHandler(path, maxBytes=LOG_BYTES, backupCount=1, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


async def serve(settings: Settings, path: str, failed: str | None = None) -> str:
    """Answer at `path` until idle or stale (which it returns). The caller holds the host's lock: a
    socket there is a dead host's. Once serving, the mark of an earlier host's failure (`failed`) goes."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    host = HostState(settings.hook_host_idle_s)
    async with Coordinator.open(settings, register=False) as base:
        host.database = database_file(settings)
        listener = await anyio.create_unix_listener(path, mode=0o600)
        if failed is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(failed)
        inode = os.stat(path).st_ino
        try:
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, lambda stream: _answer_one(base, stream, host))
                await host.until_over()
                # No answer is under way, and none starts before this (no await since the check): a
                # connection not yet taken is dropped, and its hook works in-process.
                tg.cancel_scope.cancel()
        finally:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
    return "stale" if host.stale else "idle"


async def _answer_one(base: Coordinator, stream: SocketStream, host: HostState) -> None:
    """One request: "not answered", or taken and answered. Whatever goes wrong stays in this connection
    (the other answers under way go on): after taking a request, a failure is answered `null`, and the
    hook then works in-process (every hook is safe to repeat)."""
    async with stream:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            try:
                request = json.loads(await receive_all(stream))
                coord = await _acting_for(base, stream, request, host) if isinstance(request, dict) else None
            except Exception:  # the hook does the work itself
                logger.info("request not answered", exc_info=True)
                coord = None
            if coord is None:
                await stream.send(b"not answered\n")
                return
            with host.busy():  # only answers keep the host: refused ones must let it go idle
                await stream.send(hook_socket.ACCEPTED)
                try:
                    reply = await _reply(coord, request)
                except hook_run.NotServed as exc:
                    logger.info("%s: left to the hook: %s", request["hook"], exc)
                    reply = None
                except Exception:
                    logger.exception("%s: failed; left to the hook", request["hook"])
                    reply = None
                await stream.send(json.dumps(reply).encode())
                if reply is not None:
                    who = f"process {coord.identity.pid}"  # the agent process it acted for
                    logger.info("answered %s for %s: exit %s", request["hook"], who, reply["code"])


async def _reply(coord: Coordinator, request: dict[str, Any]) -> dict[str, Any]:
    if request["hook"] == STATUS:
        return await status_reply(coord, request.get("repo"))
    claude_pid = request.get("claude_pid")
    answer = await hook_run.answer(
        request["hook"],
        request["stdin"].encode(),
        chdir=False,
        claude_pid=claude_pid if isinstance(claude_pid, str) else "",
        server=coord,
    )
    return {"stdout": answer.stdout, "stderr": answer.stderr, "code": answer.code}


async def _acting_for(
    base: Coordinator, stream: SocketStream, request: dict[str, Any], host: HostState
) -> Coordinator | None:
    """The engine acting for the process that sent `request`, when the host answers it as that process
    would answer itself (module docstring); else None."""
    peer = peer_like_me(stream, request)
    hook = request.get("hook")
    if peer is None or (hook not in hook_run.HOOKS and hook != STATUS):
        return None
    raw, cwd = request["stdin"], request["cwd"]
    if hook == STATUS and not isinstance(request.get("repo"), str | None):
        return None
    try:
        here = os.getcwd()
    except OSError:
        host.go_stale()  # its directory was removed: a hook there would find another (or none)
        return None
    try:
        loaded = load_settings()
    except SettingsError:
        loaded = None
    if loaded is None or loaded != base.settings or database_file(loaded) != host.database or host.code_changed(base):
        # Its configuration file changed, its database file was removed or replaced (a hook would open
        # the new one), or its code was changed in place: answer nothing more, exit.
        host.go_stale()
        return None
    if not await _serves_directory(base, hook_socket.working_directory(raw, cwd), here, raw, loaded):
        return None
    launcher = request.get("launcher")
    if not isinstance(launcher, int) or not await anyio.to_thread.run_sync(lambda: _parent_is(peer, launcher)):
        return None  # re-parented: the hook records its agent as gone, which only it can tell
    return await base.acting_for_process(peer, loaded if hook == STATUS else hook_settings(loaded))


async def _serves_directory(base: Coordinator, workdir: str, here: str, raw: str, settings: Settings) -> bool:
    """Would work from `workdir` answer as work from the host's directory `here`? Yes in it; from
    elsewhere in the same repository (a pool slot, a subdirectory) when the repository is the one git
    finds from there (the engine resolves the default repository to its main worktree) and nothing
    the hook reads is a path relative to its directory (a setting, its payload's `worktree_path`)."""
    if same_directory(workdir, here):
        return True
    if _reads_relative_paths(raw, settings):
        return False
    try:
        top = await base.git.main_worktree(Path(workdir))
    except CoordError:
        return False
    return same_directory(str(top), here)


def _reads_relative_paths(raw: str, settings: Settings) -> bool:
    """Does the hook read a path relative to its directory: the settings file, a setting, or its
    payload's `worktree_path`?"""
    config = os.environ.get("AGENT_COORD_CONFIG")
    if config and not os.path.isabs(os.path.expanduser(config)):
        return True
    if any(isinstance(v, Path) and not v.expanduser().is_absolute() for v in dict(settings).values()):
        return True
    try:
        payload = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return False  # the hook refuses it alike anywhere
    path = payload.get("worktree_path") if isinstance(payload, dict) else None
    return path is not None and not (isinstance(path, str) and os.path.isabs(path))


def running_hosts(runtime_dir: str) -> list[psutil.Process]:
    """The hook hosts started with `runtime_dir` as their XDG_RUNTIME_DIR that have not exited (a zombie
    has): what a test or bench that started them stops."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        info = proc.info
        if info.get("status") == psutil.STATUS_ZOMBIE or hook_socket.HOST_MODULE not in (info.get("cmdline") or []):
            continue
        if (info.get("environ") or {}).get("XDG_RUNTIME_DIR") == runtime_dir:
            found.append(proc)
    return found


def _parent_is(pid: int, launcher: int) -> bool:
    """Is the process that started `pid` (`launcher`, read by it at its start) still its parent, and no
    init program that adopts orphans (judge.orphaned_from)?"""
    try:
        parent = psutil.Process(pid).ppid()
    except psutil.Error:
        return False
    return parent == launcher and not is_init_adopter(parent)


def code_fingerprint() -> tuple[int, int]:
    """How many modules agent-coord has and when the last changed: an edit in place (an editable install,
    a reinstall of the same version) shows, and a host running the old code retires."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    count, newest = 0, 0
    for folder, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
                    count += 1
    return count, newest


if __name__ == "__main__":
    sys.exit(main())
