"""See it work: `dashboard` (the live view of the pool) and `demo` (real agents in a throw-away repo)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from agent_coord.cli.common import EXIT_OK, EXIT_REFUSED, app
from agent_coord.config import load_settings
from agent_coord.engine.errors import CoordError

EXIT_INTERRUPTED = 130  # the shell's convention for "stopped by SIGINT"


@app.command()
def dashboard(
    repo: Annotated[str | None, typer.Option(help="repository path (default: configured or cwd, else all)")] = None,
    once: Annotated[bool, typer.Option("--once", help="print one snapshot and exit, even on a terminal")] = False,
) -> None:
    """Live full-screen view of slots, agents, contention, metrics and events; q or Ctrl-C quits.

    It redraws when any process commits a change. When stdout is not a terminal (a pipe, a file),
    it prints one snapshot of everything and exits.
    """
    from rich.console import Console

    from agent_coord.dashboard import print_snapshot, run_dashboard, take_snapshot
    from agent_coord.engine.coordinator import Coordinator

    settings = load_settings()
    # The engine wants an absolute path; a person types a relative one.
    repo_arg = str(Path(repo).expanduser().resolve()) if repo is not None else None
    console = Console()
    live = not once and sys.stdout.isatty()

    async def go() -> None:
        async with Coordinator.open(settings, register=False) as coord:
            if live:
                await run_dashboard(coord, repo_arg, console)
            else:
                print_snapshot(await take_snapshot(coord, repo_arg), console, host=coord.identity.host)

    try:
        anyio.run(go)
    except CoordError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    except KeyboardInterrupt:  # only before the signal handler is installed; the terminal is untouched then
        raise typer.Exit(EXIT_OK) from None


@app.command()
def demo(
    agents: Annotated[int, typer.Option("--agents", min=3, max=12, help="simulated agents (3-12)")] = 4,
    fast: Annotated[bool, typer.Option("--fast", help="short pauses (about 10 s, for CI)")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="keep the demo's repository, pool and database")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the final summary as one line of JSON on stdout (the rest on stderr)")
    ] = False,
) -> None:
    """Run real agents on a throw-away repository: allocations, a branch collision, a crash and its reclaim.

    Shows the live dashboard when stdout is a terminal, otherwise one line per event. Ends with the
    metrics and where the files are. Exit code 0 when every step of the scenario happened.
    """
    from agent_coord.demo import DemoOptions, run_demo

    options = DemoOptions(agents=agents, fast=fast, keep=keep, as_json=as_json)
    try:
        code = anyio.run(run_demo, options)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    raise typer.Exit(code)


@app.command()
def web(
    host: Annotated[str, typer.Option(help="address to listen on; anything but loopback is reachable by others")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="port (0 picks a free one)")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(envvar="AGENT_COORD_WEB_TOKEN", help="access token (default: a random one, printed)"),
    ] = None,
    allow_actions: Annotated[
        bool, typer.Option("--allow-actions", help="let the page release worktrees and run validate")
    ] = False,
    allow_host: Annotated[
        list[str] | None, typer.Option("--allow-host", help="another Host name to answer to (a reverse proxy's)")
    ] = None,
    root_path: Annotated[str, typer.Option("--root-path", help="path prefix a reverse proxy serves it under")] = "",
    repo: Annotated[str | None, typer.Option(help="repository path (default: configured or cwd, else all)")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="open the page in the default browser")] = False,
) -> None:
    """Serve the live dashboard in a browser; the first line printed is the address to open (token included).

    Read-only unless --allow-actions. Every page and stream needs the token; listens on loopback only
    unless --host says otherwise.
    """
    from agent_coord.web.app import WebConfig
    from agent_coord.web.security import new_token
    from agent_coord.web.serve import serve

    config = WebConfig(
        token=token or new_token(),
        allow_actions=allow_actions,
        bind_host=host,
        allowed_hosts=tuple(allow_host or ()),
        root_path=root_path,
        repo=str(Path(repo).expanduser().resolve()) if repo is not None else None,
    )
    try:
        serve(config, port=port, open_browser=open_browser)
    except OSError as exc:
        typer.echo(f"cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(EXIT_REFUSED) from exc
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
