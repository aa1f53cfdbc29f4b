"""Claude Code commands: `hook worktree-create|worktree-remove|session-start|session-end`, `install-claude`.

The hooks speak Claude Code's contract: one JSON object on stdin; for worktree-create the
worktree's absolute path as the last (and only) line of stdout; on refusal a non-zero exit with a
one-line reason on stderr. Everything else a hook might print (logging, warnings, a child process)
is sent to stderr, because Claude Code reads stdout as the path.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import anyio
import typer

from agent_coord.claude import watch
from agent_coord.claude.config_files import InstallError
from agent_coord.claude.hooks import (
    MAX_INPUT_BYTES,
    HookInput,
    SessionEndInput,
    SessionStartInput,
    WorktreeCreateInput,
    WorktreeRemoveInput,
    branch_for,
    create_worktree,
    end_session,
    hook_identity,
    hook_settings,
    parse_input,
    provide_claude_setup,
    remove_worktree,
    session_context,
)
from agent_coord.claude.install import install_claude
from agent_coord.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, app
from agent_coord.config import Settings, SettingsError, load_settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.models import AllocationResult
from agent_coord.engine.store import StoreBusyError
from agent_coord.engine.store.records import Origin

T = TypeVar("T")
M = TypeVar("M", bound=HookInput)
ORIGINS: dict[str, Origin] = {"explicit": "explicit", "session": "session", "process": "process"}
MAX_REASON = 2000  # Claude Code shows stderr to the user; a page of git output helps nobody

hook_app = typer.Typer(
    no_args_is_help=True,
    help="Claude Code hooks (wired by claude_config/settings.json): read the hook's JSON on stdin.",
)
app.add_typer(hook_app, name="hook")


# ---- plumbing shared by the hooks ---------------------------------------------------------------


def _one_line(text: str) -> str:
    line = " | ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= MAX_REASON else line[: MAX_REASON - 1] + "…"


def _fail(reason: str, exit_code: int = EXIT_REFUSED) -> NoReturn:
    typer.echo(_one_line(reason), err=True)
    raise typer.Exit(exit_code)


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


def _read_payload(model: type[M]) -> M:
    stdin = sys.stdin
    # Run by hand in a terminal there is nothing to wait for; treat it like an empty payload.
    raw = b"" if stdin is None or stdin.isatty() else stdin.buffer.read(MAX_INPUT_BYTES + 1)
    try:
        return parse_input(model, raw)
    except CoordError as exc:
        _fail(str(exc))


def _run_hook(
    fn: Callable[[Coordinator], Awaitable[T]],
    *,
    identity: tuple[str | None, Origin],
    register: bool,
    settings: Settings,
) -> T:
    agent_id, origin = identity

    async def go() -> T:
        async with Coordinator.open(settings, register=register, agent_id=agent_id, origin=origin) as coord:
            try:
                return await fn(coord)
            finally:
                # The hook process ends as soon as it answers, but the agent it registered is the
                # Claude Code process, which works on. Leaving the record "active" keeps it counted as a
                # live agent; "disconnected" would say its session ended (only session-end says that).
                coord.registered = False

    try:
        return anyio.run(go)
    except CoordError as exc:
        _fail(str(exc))
    except StoreBusyError as exc:
        _fail(str(exc.refusal()))
    except Exception as exc:
        # Claude Code shows stderr to the user; one line naming the failure beats a traceback there.
        _fail(f"agent-coord: unexpected {type(exc).__name__}: {exc}")


def _settings() -> Settings:
    try:
        return hook_settings(load_settings())
    except SettingsError as exc:  # a malformed AGENT_COORD_* variable, an unreadable config file
        _fail(exc.line(), EXIT_USAGE)


def _enter(cwd: str | None) -> None:
    """Work from the session's directory, so the default repository is the session's repository."""
    if cwd and os.path.isabs(cwd) and os.path.isdir(cwd):
        os.chdir(cwd)


# ---- the hooks ----------------------------------------------------------------------------------


@hook_app.command("worktree-create")
def worktree_create() -> None:
    """WorktreeCreate: allocate a pool slot; print its absolute path as the last line of stdout."""
    with _stdout_reserved():
        payload = _read_payload(WorktreeCreateInput)
        settings = _settings()
        name = payload.requested_name
        if name is None:
            _fail("INVALID_ARGUMENT: hook input has no worktree name (expected `name` or `worktree_name`)")
        try:
            branch = branch_for(name, settings.branch_prefix)
        except CoordError as exc:
            _fail(str(exc))
        _enter(payload.cwd)

        async def create(coord: Coordinator) -> tuple[AllocationResult, str | None]:
            result = await create_worktree(coord, payload, branch)
            return result, await provide_claude_setup(coord, result)

        identity = hook_identity(payload.session_id, settings.agent_id)
        result, problem = _run_hook(create, identity=identity, register=True, settings=settings)
        if problem:
            typer.echo(_one_line(problem), err=True)
        _watch_claude(result, identity[1])
    typer.echo(result.path)


def _watch_claude(result: AllocationResult, origin: Origin) -> None:
    """Under Claude Code (which names itself in CLAUDE_PID), give the slot back when it exits even if
    it runs no SessionEnd hook (see agent_coord/claude/watch.py)."""
    pid = os.environ.get("CLAUDE_PID", "")
    if pid.isdigit() and not watch.spawn(int(pid), result.agent_id, origin, result.path):
        typer.echo(f"agent-coord: Claude Code process {pid} not found; the slot comes back by validation", err=True)


@hook_app.command("worktree-remove")
def worktree_remove() -> None:
    """WorktreeRemove: give the slot at `worktree_path` back, kept warm; a dirty slot stays held."""
    with _stdout_reserved():
        payload = _read_payload(WorktreeRemoveInput)
        settings = _settings()
        _enter(payload.cwd)
        result = _run_hook(
            lambda coord: remove_worktree(coord, payload),
            identity=hook_identity(payload.session_id, settings.agent_id),
            register=False,
            settings=settings,
        )
        typer.echo(f"agent-coord: {result.worktree_id} is {result.state} ({result.path})", err=True)


@hook_app.command("session-start")
def session_start() -> None:
    """SessionStart: one line of context for the session (its worktrees, the pool)."""
    with _stdout_reserved():
        payload = _read_payload(SessionStartInput)
        settings = _settings()
        _enter(payload.cwd)

        async def context(coord: Coordinator) -> str | None:
            try:
                return (await session_context(coord, payload)).render()
            except CoordError as exc:
                if exc.code == ErrorCode.NOT_A_REPOSITORY:
                    return None  # a session outside any repository has no pool to tell about
                raise

        line = _run_hook(
            context,
            identity=hook_identity(payload.session_id, settings.agent_id),
            register=False,
            settings=settings,
        )
    if line:
        typer.echo(line)


@hook_app.command("session-end")
def session_end(
    as_agent: Annotated[str | None, typer.Option("--as-agent", hidden=True)] = None,
    as_origin: Annotated[str, typer.Option("--as-origin", hidden=True)] = "explicit",
) -> None:
    """SessionEnd: release what the ending session holds, best effort; always exits 0 once read."""
    # --as-agent/--as-origin: the watcher (claude/watch.py) ends a session as the agent its hook made.
    with _stdout_reserved():
        payload = _read_payload(SessionEndInput)
        settings = _settings()
        _enter(payload.cwd)
        identity = hook_identity(payload.session_id, settings.agent_id)
        if as_agent:
            identity = (as_agent, ORIGINS.get(as_origin, "explicit"))
        try:
            report = _run_hook(
                lambda coord: end_session(coord, payload),
                identity=identity,
                register=False,
                settings=settings,
            )
        except typer.Exit:
            # The reason is on stderr already. Claude Code is exiting; nothing it can do with a failure,
            # and validation reclaims whatever is left once the process is gone.
            raise typer.Exit(EXIT_OK) from None
        for released in report.released:
            typer.echo(f"agent-coord: released {released.worktree_id} ({released.path})", err=True)
        for kept in report.kept:
            typer.echo(_one_line(f"agent-coord: {kept}"), err=True)


# ---- install-claude -----------------------------------------------------------------------------


@app.command("install-claude")
def install_claude_command(
    project: Annotated[
        Path | None, typer.Option("--project", help="the project to set up (default: the current directory)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would change; write nothing")] = False,
    launcher: Annotated[
        str | None,
        typer.Option(
            "--launcher",
            help="the command that runs agent-coord, written into .mcp.json and the hooks "
            "(default: `agent-coord` when the one on PATH is this one, else this one's absolute path)",
        ),
    ] = None,
) -> None:
    """Merge agent-coord's .mcp.json, settings, hooks and skills into a project's Claude Code files."""
    try:
        argv = shlex.split(launcher) if launcher is not None else running_launcher()
        report = install_claude(project if project is not None else Path.cwd(), dry_run=dry_run, launcher=argv)
        if launcher is None and (note := ephemeral_note(argv)):
            report.notes.append(note)
    except InstallError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    except ValueError as exc:  # a --launcher shlex cannot split
        typer.echo(f"--launcher: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(report.render())


def running_launcher() -> list[str]:
    """`agent-coord` when PATH reaches this installation through a directory other than its own
    scripts folder (pipx's and `uv tool install`'s link directory): the portable choice, fit for a
    committed .mcp.json. An activated venv or `uvx` only puts the installation's own folder on PATH,
    for this shell or this one run, so there the absolute path of the running script is written, which
    Claude Code can start whatever its PATH holds."""
    script = Path(sys.argv[0])
    if script.name != "agent-coord":  # `python -m agent_coord.cli`: the script beside the interpreter
        script = Path(sys.executable).parent / "agent-coord"
    script = Path(os.path.abspath(script))
    with contextlib.suppress(OSError):
        own = script.resolve().parent
        elsewhere = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != own]
        found = shutil.which("agent-coord", path=os.pathsep.join(elsewhere))
        if found is not None and Path(found).resolve() == script.resolve():
            return ["agent-coord"]
    return [str(script)]


def ephemeral_note(launcher: list[str]) -> str | None:
    """A warning when the launcher written is a path inside uv's cache (`uvx`), which `uv cache clean`
    or `uv cache prune` deletes."""
    roots = [Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"]
    if configured := os.environ.get("UV_CACHE_DIR"):
        roots.append(Path(configured))
    if len(launcher) == 1 and any(Path(launcher[0]).is_relative_to(r) for r in roots):
        return (
            f"{launcher[0]} is inside uv's cache (uvx) and goes away with `uv cache clean`; "
            'install agent-coord with `uv tool install` or pipx, or pass --launcher "uvx --from <source> agent-coord"'
        )
    return None


@hook_app.command("pre-edit")
def pre_edit() -> None:
    """PreToolUse (Edit|Write|MultiEdit|NotebookEdit): say who else changes the file
    (AGENT_COORD_EDIT_GUARD off|warn|ask|deny). The console script answers it before Typer loads."""
    from agent_coord.engine.radar.guard import main as guard

    raise typer.Exit(guard())
