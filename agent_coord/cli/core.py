"""Core commands: serve, status, validate."""

from __future__ import annotations

from typing import Annotated

import typer

from agent_coord.cli.common import EXIT_FINDINGS, absolute_repo, app, emit_json, run_with_coordinator


@app.command()
def serve() -> None:
    """Run the MCP server on stdio (what `.mcp.json` starts)."""
    from agent_coord.claude.hook_server import serve_hooks
    from agent_coord.server.app import run_stdio

    code = run_stdio(background=[serve_hooks])  # the session's hooks answered here (claude/hook_socket.py)
    if code:
        raise typer.Exit(code)


@app.command()
def status(
    repo: Annotated[str | None, typer.Option(help="repository path (default: configured or cwd)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the pool, the agents and the contention."""
    result = run_with_coordinator(lambda c: c.status(absolute_repo(repo)))
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    from agent_coord.dashboard.render import print_status

    print_status(result)


@app.command()
def validate(
    repair: Annotated[bool, typer.Option("--repair", help="fix what is safe to fix")] = False,
    repo: Annotated[str | None, typer.Option(help="repository path (default: all known)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Find drift between the store and git; with --repair, fix it."""
    result = run_with_coordinator(lambda c: c.validate(repair=repair, repo=absolute_repo(repo)))
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        from agent_coord.dashboard.render import print_findings

        print_findings(result)
    unresolved = [f for f in result.findings if not f.repaired]
    if unresolved:
        raise typer.Exit(EXIT_FINDINGS)
