"""The `agent-coord` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, TypeVar

import anyio
import typer

from .config import Settings
from .engine.coordinator import Coordinator
from .engine.errors import CoordError

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Warm git worktrees for parallel agents.")

EXIT_OK = 0
EXIT_REFUSED = 1  # the coordinator refused (a code is printed)
EXIT_USAGE = 2
EXIT_FINDINGS = 3  # validate found drift (without --repair), or some repairs failed


def run_with_coordinator(fn: Callable[[Coordinator], Awaitable[T]], *, register: bool = False) -> T:
    settings = Settings()

    async def go() -> T:
        async with Coordinator.open(settings, register=register) as coord:
            return await fn(coord)

    try:
        return anyio.run(go)
    except CoordError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_REFUSED) from exc


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def serve() -> None:
    """Run the MCP server on stdio (what `.mcp.json` starts)."""
    from .app import serve_stdio

    anyio.run(serve_stdio)


@app.command()
def status(
    repo: Annotated[str | None, typer.Option(help="repository path (default: configured or cwd)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the pool, the agents and the contention."""
    result = run_with_coordinator(lambda c: c.status(repo))
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    from .render import print_status

    print_status(result)


@app.command()
def validate(
    repair: Annotated[bool, typer.Option("--repair", help="fix what is safe to fix")] = False,
    repo: Annotated[str | None, typer.Option(help="repository path (default: all known)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Find drift between the store and git; with --repair, fix it."""
    result = run_with_coordinator(lambda c: c.validate(repair=repair, repo=repo))
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        from .render import print_findings

        print_findings(result)
    unresolved = [f for f in result.findings if not f.repaired]
    if unresolved:
        raise typer.Exit(EXIT_FINDINGS)


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="agent-coord")
