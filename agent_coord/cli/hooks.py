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
from pathlib import Path
from typing import Annotated

import typer

from agent_coord.claude import hook_run
from agent_coord.claude.config_files import InstallError
from agent_coord.claude.install import install_claude
from agent_coord.cli.common import EXIT_REFUSED, app

hook_app = typer.Typer(
    no_args_is_help=True,
    help="Claude Code hooks (wired by claude_config/settings.json): read the hook's JSON on stdin.",
)
app.add_typer(hook_app, name="hook")


# ---- the hooks: the console script runs them without Typer (agent_coord/claude/hook_run.py) -----


@hook_app.command("worktree-create")
def worktree_create() -> None:
    """WorktreeCreate: allocate a pool slot; print its absolute path as the last line of stdout."""
    _exit(hook_run.in_process("worktree-create"))


@hook_app.command("worktree-remove")
def worktree_remove() -> None:
    """WorktreeRemove: give the slot at `worktree_path` back, kept warm; a dirty slot stays held."""
    _exit(hook_run.in_process("worktree-remove"))


@hook_app.command("session-start")
def session_start() -> None:
    """SessionStart: one line of context for the session (its worktrees, the pool)."""
    _exit(hook_run.in_process("session-start"))


@hook_app.command("session-end")
def session_end(
    as_agent: Annotated[str | None, typer.Option("--as-agent", hidden=True)] = None,
    as_origin: Annotated[str, typer.Option("--as-origin", hidden=True)] = "explicit",
) -> None:
    """SessionEnd: release what the ending session holds, best effort; always exits 0 once read."""
    # --as-agent/--as-origin: the watcher (claude/watch.py) ends a session as the agent its hook made.
    _exit(hook_run.in_process("session-end", as_agent=as_agent, as_origin=as_origin))


def _exit(code: int) -> None:
    if code:
        raise typer.Exit(code)


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
