"""Claude Code's hooks as processes: `agent-coord hook worktree-create|worktree-remove|session-start|session-end`.

Claude Code waits for every hook, so the console script (agent_coord/console.py) calls `run` before the
command line's framework (Typer, Click, Rich) is imported. A hook first asks the session's own MCP
server to answer (agent_coord/claude/hook_socket.py: the server has the engine loaded); when none
answers, it works in-process, importing only what its work needs. Both compute the answer with
`answer` below, so they answer alike; the Typer commands of the same names (agent_coord/cli/hooks.py,
for `--help` and the watcher's `--as-agent`) work in-process through the same functions.

The contract: one JSON object on stdin; for worktree-create the worktree's absolute path as the last
(and only) line of stdout; on refusal a non-zero exit with a one-line reason on stderr. Everything
else a hook might print (logging, warnings, a child process) goes to stderr, because Claude Code reads
stdout as the path.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

TYPE_CHECKING = False  # `typing` is not imported at run time: a few ms of every hook's start-up
if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from typing import NoReturn, TypeVar

    from agent_coord.claude.hooks import HookInput
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.models import AllocationResult
    from agent_coord.engine.store.records import Origin

    T = TypeVar("T")
    M = TypeVar("M", bound=HookInput)

# The exit codes of agent_coord/cli/common.py (not imported from there: it loads Typer).
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
MAX_REASON = 2000  # Claude Code shows stderr to the user; a page of git output helps nobody
HOOKS = ("worktree-create", "worktree-remove", "session-start", "session-end")
ORIGINS: dict[str, Origin] = {"explicit": "explicit", "session": "session", "process": "process"}
MAX_INPUT_BYTES = 1 << 20  # a hook payload is a few hundred bytes; refuse to buffer anything huge


class Answer:
    """What a hook says: one line (or nothing) for stdout, lines for stderr, its exit code."""

    def __init__(self) -> None:
        self.stdout: str | None = None
        self.stderr: list[str] = []
        self.code = EXIT_OK

    def say(self, line: str) -> None:
        self.stderr.append(line)

    def fail(self, reason: str, code: int = EXIT_REFUSED) -> NoReturn:
        self.say(_one_line(reason))
        self.code = code
        raise _Refused

    def emit(self) -> int:
        for line in self.stderr:
            print(line, file=sys.stderr)
        sys.stderr.flush()
        if self.stdout is not None:
            print(self.stdout, flush=True)
        return self.code


class _Refused(Exception):
    """The hook's answer is complete: a refusal, already on its stderr."""


class NotServed(Exception):
    """The hook host cannot answer this hook as the hook would: the hook works in-process."""


def run(hook: str) -> int:
    """Run `hook` (one of `HOOKS`) as this process; its exit code. Whatever goes wrong ends in one
    line on stderr, as from the command line (agent_coord/cli/__init__.py), never a traceback."""
    try:
        raw = _read_stdin()
        forwarded = _forwarded(hook, raw)
        if forwarded is not None:
            return forwarded
        cwd = _cwd()  # before the hook enters its payload's directory
        if cwd is not None:
            # Started first, it comes up while this hook works: the next hook (Claude Code runs
            # SessionStart right after the WorktreeCreate of `claude --worktree`) finds it listening.
            _start_host(raw, cwd)
        return in_process(hook, raw)
    except Exception as exc:  # a bug: one line for the person, the traceback only with debug logging
        import logging

        logging.getLogger("agent-coord").debug("unexpected failure", exc_info=True)
        print(" ".join(f"agent-coord: unexpected {type(exc).__name__}: {exc}".split()), file=sys.stderr)
        return EXIT_REFUSED


def in_process(hook: str, raw: bytes | None = None, *, as_agent: str | None = None, as_origin: str = "explicit") -> int:
    """Work out `hook`'s answer in this process, print it and return its exit code."""
    import anyio

    with _stdout_reserved():
        payload = _read_stdin() if raw is None else raw
        result = anyio.run(lambda: answer(hook, payload, as_agent=as_agent, as_origin=as_origin))
    return result.emit()


async def answer(
    hook: str,
    raw: bytes,
    *,
    chdir: bool = True,
    claude_pid: str | None = None,
    as_agent: str | None = None,
    as_origin: str = "explicit",
    server: Coordinator | None = None,
) -> Answer:
    """The answer to `hook` given its payload `raw`. `chdir`: work from the payload's directory (a
    hook process; the server answers only when that is its own directory already). `claude_pid`: the
    Claude Code process to watch after a worktree-create (default: CLAUDE_PID). `server`: the session
    server's coordinator, when it answers (the hook then works over its store and repositories)."""
    out = Answer()
    try:
        if hook == "worktree-create":
            watch = os.environ.get("CLAUDE_PID", "") if claude_pid is None else claude_pid
            await _worktree_create(out, raw, chdir, watch, server)
        elif hook == "worktree-remove":
            await _worktree_remove(out, raw, chdir, server)
        elif hook == "session-start":
            await _session_start(out, raw, chdir, server)
        elif hook == "session-end":
            await _session_end(out, raw, chdir, as_agent, as_origin, server)
        else:
            out.fail(f"agent-coord: no hook {hook!r}", EXIT_USAGE)
    except _Refused:
        pass
    return out


# ---- plumbing shared by the hooks ---------------------------------------------------------------


def _one_line(text: str) -> str:
    line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


@contextmanager
def _stdout_reserved() -> Iterator[None]:
    """Point file descriptor 1 at stderr while the hook works, so nothing but the final answer can
    reach Claude Code's stdout: not a print, not a warning, not a child process that inherits it."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _read_stdin() -> bytes:
    stdin = sys.stdin
    # Run by hand in a terminal there is nothing to wait for; treat it like an empty payload.
    return b"" if stdin is None or stdin.isatty() else stdin.buffer.read(MAX_INPUT_BYTES + 1)


def _payload(out: Answer, model: type[M], raw: bytes) -> M:
    from agent_coord.claude.hooks import parse_input
    from agent_coord.engine.errors import CoordError

    try:
        return parse_input(model, raw)
    except CoordError as exc:
        out.fail(str(exc))


def _settings(out: Answer) -> Settings:
    from agent_coord.claude.hooks import hook_settings
    from agent_coord.config import SettingsError, load_settings

    try:
        return hook_settings(load_settings())
    except SettingsError as exc:  # a malformed AGENT_COORD_* variable, an unreadable config file
        out.fail(exc.line(), EXIT_USAGE)


def _read(out: Answer, model: type[M], raw: bytes, chdir: bool) -> tuple[M, Settings]:
    """The hook's input and settings (or the hook fails, saying why), working from the session's
    directory when `chdir`."""
    payload = _payload(out, model, raw)
    settings = _settings(out)
    if chdir:
        _enter(payload.cwd)
    return payload, settings


def _enter(cwd: str | None) -> None:
    """Work from the session's directory, so the default repository is the session's repository."""
    from agent_coord.claude.hook_socket import usable_directory

    if usable_directory(cwd):
        os.chdir(cwd)


async def _with_coordinator(
    out: Answer,
    fn: Callable[[Coordinator], Awaitable[T]],
    *,
    identity: tuple[str | None, Origin],
    register: bool,
    settings: Settings,
    server: Coordinator | None = None,
) -> T:
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.errors import CoordError
    from agent_coord.engine.store import StoreBusyError

    agent_id, origin = identity
    # Answered by a server whose agent process is the hook's (hook_server and hook_host prove it), the
    # hook's agent is that engine acting for the hook's id (without one, the id generated from that
    # process, as the server's), with the hook's own lease, over the server's store and resolved
    # repositories: not a second engine for one answer.
    served = server is not None and _same_but_lease(settings, server.settings)
    if server is not None and served and agent_id is None and server.identity.origin == "process":
        agent_id = server.agent_id
    if server is not None and server.for_another_process and not (served and agent_id):
        # The hook host acts for another process: an engine of its own would be the host's agent.
        raise NotServed("the settings changed while the hook host answered")
    try:
        if server is not None and served and agent_id is not None:
            coord = server.acting_for(agent_id, origin, settings)
            if register:
                await coord.register()
            return await fn(coord)
        async with Coordinator.open(settings, register=register, agent_id=agent_id, origin=origin) as coord:
            try:
                return await fn(coord)
            finally:
                # The hook ends as soon as it answers, but the agent it registered is the Claude Code
                # process, which works on. Leaving the record "active" keeps it counted as a live
                # agent; "disconnected" would say its session ended (only session-end says that).
                coord.registered = False
    except CoordError as exc:
        out.fail(str(exc))
    except StoreBusyError as exc:
        out.fail(str(exc.refusal()))
    except Exception as exc:
        # Claude Code shows stderr to the user; one line naming the failure beats a traceback there.
        out.fail(f"agent-coord: unexpected {type(exc).__name__}: {exc}")


def _same_but_lease(hook: Settings, server: Settings) -> bool:
    """Do the hook's settings differ from its server's only by the hook agent's lease (hook_settings)?"""
    return hook.model_copy(update={"stale_after_s": server.stale_after_s}) == server


# ---- the hooks ----------------------------------------------------------------------------------


async def _worktree_create(out: Answer, raw: bytes, chdir: bool, claude_pid: str, server: Coordinator | None) -> None:
    """WorktreeCreate: allocate a pool slot; print its absolute path as the last line of stdout."""
    from agent_coord.claude.hooks import (
        WorktreeCreateInput,
        branch_for,
        create_worktree,
        hook_identity,
        provide_claude_setup,
    )
    from agent_coord.engine.errors import CoordError

    payload, settings = _read(out, WorktreeCreateInput, raw, chdir)
    name = payload.requested_name
    if name is None:
        out.fail("INVALID_ARGUMENT: hook input has no worktree name (expected `name` or `worktree_name`)")
    try:
        branch = branch_for(name, settings.branch_prefix)
    except CoordError as exc:
        out.fail(str(exc))

    async def create(coord: Coordinator) -> tuple[AllocationResult, str | None]:
        result = await create_worktree(coord, payload, branch)
        return result, await provide_claude_setup(coord, result)

    identity = hook_identity(payload.session_id, settings.agent_id)
    result, problem = await _with_coordinator(
        out, create, identity=identity, register=True, settings=settings, server=server
    )
    if problem:
        out.say(_one_line(problem))
    _watch_claude(out, claude_pid, result, identity[1])
    out.stdout = result.path


def _watch_claude(out: Answer, pid: str, result: AllocationResult, origin: Origin) -> None:
    """Under Claude Code (which names itself in CLAUDE_PID), give the slot back when it exits even if
    it runs no SessionEnd hook (see agent_coord/claude/watch.py)."""
    if not pid.isdigit():
        return
    from agent_coord.claude import watch

    if not watch.spawn(int(pid), result.agent_id, origin, result.path):
        out.say(f"agent-coord: Claude Code process {pid} not found; the slot comes back by validation")


async def _worktree_remove(out: Answer, raw: bytes, chdir: bool, server: Coordinator | None) -> None:
    """WorktreeRemove: give the slot at `worktree_path` back, kept warm; a dirty slot stays held."""
    from agent_coord.claude.hooks import WorktreeRemoveInput, hook_identity, remove_worktree

    payload, settings = _read(out, WorktreeRemoveInput, raw, chdir)
    result = await _with_coordinator(
        out,
        lambda coord: remove_worktree(coord, payload),
        identity=hook_identity(payload.session_id, settings.agent_id),
        register=False,
        settings=settings,
        server=server,
    )
    out.say(f"agent-coord: {result.worktree_id} is {result.state} ({result.path})")


async def _session_start(out: Answer, raw: bytes, chdir: bool, server: Coordinator | None) -> None:
    """SessionStart: one line of context for the session (its worktrees, the pool)."""
    from agent_coord.claude.hooks import SessionStartInput, hook_identity, session_context
    from agent_coord.engine.errors import CoordError, ErrorCode

    payload, settings = _read(out, SessionStartInput, raw, chdir)

    async def context(coord: Coordinator) -> str | None:
        try:
            return (await session_context(coord, payload)).render()
        except CoordError as exc:
            if exc.code == ErrorCode.NOT_A_REPOSITORY:
                return None  # a session outside any repository has no pool to tell about
            raise

    line = await _with_coordinator(
        out,
        context,
        identity=hook_identity(payload.session_id, settings.agent_id),
        register=False,
        settings=settings,
        server=server,
    )
    if line:
        out.stdout = line


async def _session_end(
    out: Answer, raw: bytes, chdir: bool, as_agent: str | None, as_origin: str, server: Coordinator | None
) -> None:
    """SessionEnd: release what the ending session holds, best effort; always exits 0 once read.
    `as_agent`/`as_origin`: the watcher (claude/watch.py) ends a session as the agent its hook made."""
    from agent_coord.claude.hooks import SessionEndInput, end_session, hook_identity

    payload, settings = _read(out, SessionEndInput, raw, chdir)
    identity = hook_identity(payload.session_id, settings.agent_id)
    if as_agent:
        identity = (as_agent, ORIGINS.get(as_origin, "explicit"))
    try:
        report = await _with_coordinator(
            out,
            lambda coord: end_session(coord, payload),
            identity=identity,
            register=False,
            settings=settings,
            server=server,
        )
    except _Refused:
        # The reason is on stderr already. Claude Code is exiting; nothing it can do with a failure,
        # and validation reclaims whatever is left once the process is gone.
        out.code = EXIT_OK
        return
    for released in report.released:
        out.say(f"agent-coord: released {released.worktree_id} ({released.path})")
    for kept in report.kept:
        out.say(_one_line(f"agent-coord: {kept}"))


# ---- asking a server (agent_coord/claude/hook_socket.py) ----------------------------------------


def _forwarded(hook: str, raw: bytes) -> int | None:
    """The exit code of `hook` answered by the session's agent-coord server or else the user's hook
    host (its answer printed), or None when neither answers it."""
    from agent_coord.claude import hook_socket

    cwd = _cwd()
    if sys.platform == "win32" or not hook_socket.supported() or len(raw) > MAX_INPUT_BYTES or cwd is None:
        return None
    text = raw.decode("utf-8", "replace")
    request = hook_socket.request(hook, text, cwd, claude_pid=os.environ.get("CLAUDE_PID", ""))
    for path in (hook_socket.find_socket(), hook_socket.host_socket(hook_socket.working_directory(text, cwd))):
        reply = hook_socket.ask(path, request) if path is not None else None
        if reply is not None:
            return printed(reply)
    return None


def _cwd() -> str | None:
    """This process's directory, or None when it was removed (the hook then works from its payload's)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def printed(reply: dict[str, object]) -> int:
    """Print a server's answer as this process's own; its exit code."""
    out = Answer()
    stdout, stderr, code = reply.get("stdout"), reply.get("stderr"), reply.get("code")
    out.stdout = stdout if isinstance(stdout, str) else None
    out.stderr = [line for line in stderr if isinstance(line, str)] if isinstance(stderr, list) else []
    out.code = code if isinstance(code, int) else EXIT_REFUSED
    return out.emit()


def _start_host(raw: bytes, cwd: str) -> None:
    """Before answering in-process: start the user's hook host, so that the next hook is answered
    without importing the engine (agent_coord/claude/hook_socket.py)."""
    from agent_coord.claude import hook_socket

    if sys.platform != "win32" and len(raw) <= MAX_INPUT_BYTES:
        hook_socket.start_host(hook_socket.working_directory(raw.decode("utf-8", "replace"), cwd))
