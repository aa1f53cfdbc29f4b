"""What every command shares: the Typer app, settings, a coordinator for one command, exit codes."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import typer

from agent_coord.config import load_settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Warm git worktrees for parallel agents.")


@app.callback()
def _commands() -> None:
    """Warm git worktrees for parallel agents."""
    # A group even when one command is registered: a command imports only its own module, and Typer
    # would run a lone command as the program itself ('agent-coord conflicts' read 'conflicts' as an argument).


# Exit codes scripts can rely on (documented in the README).
EXIT_OK = 0
EXIT_REFUSED = 1  # the coordinator refused; the code and reason are on stderr
EXIT_USAGE = 2  # bad command line (Typer's own)
EXIT_FINDINGS = 3  # validate found drift it did not repair


def run_with_coordinator(
    fn: Callable[[Coordinator], Awaitable[T]], *, register: bool = False, agent_id: str | None = None
) -> T:
    """Open a coordinator for one command (observer by default: the CLI is not an agent)."""
    settings = load_settings()

    async def go() -> T:
        async with Coordinator.open(settings, register=register, agent_id=agent_id) as coord:
            return await fn(coord)

    try:
        return anyio.run(go)
    except CoordError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_REFUSED) from exc


def absolute_repo(repo: str | None) -> str | None:
    """A --repo given on the command line may be relative to the shell's directory; the engine wants absolute."""
    return str(Path(repo).expanduser().resolve()) if repo else None


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
