"""Commands for scripts, hooks and legacy pool files: `release`, `import-pool`, `export-pool`."""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent_coord.cli.common import EXIT_REFUSED, absolute_repo, app, emit_json, run_with_coordinator
from agent_coord.config import load_settings
from agent_coord.dashboard.render import output_console
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.release.every import AgentRelease, release_every_worktree_of
from agent_coord.pool_file.import_rows import ImportResult, PoolImportError
from agent_coord.pool_file.importer import PoolImporter
from agent_coord.pool_file.markdown import PoolFileError, pool_markdown


def operator_id() -> str:
    """Who the CLI acts as: the configured agent id (a hook run inside an agent's environment acts for
    that agent), else `cli-<user>`, an operator that owns nothing, so the pool's NOT_OWNER rule
    still asks for --force before it takes an agent's worktree."""
    configured = load_settings().agent_id
    if configured:
        return configured
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"cli-{user}"


# What a person at the command line may do that an agent may not (the agents' advice is in
# agent_coord.engine.guidance): take a worktree back from its agent, or abandon a dirty one's changes.
OPERATOR_ADVICE = {
    ErrorCode.NOT_OWNER: "pass --force to take it back (its changes are saved to a rescue ref first)",
    ErrorCode.WORKTREE_DIRTY: "commit them, or pass --force to save them to a rescue ref",
}


def _cli_message(exc: CoordError) -> str:
    advice = OPERATOR_ADVICE.get(exc.code)
    return f"{exc.message}; {advice}" if advice else exc.message


def _cli_wording(exc: CoordError) -> str:
    return f"{exc.code.value}: {_cli_message(exc)}"


# ---- release ------------------------------------------------------------------------------------


@app.command()
def release(
    worktree: Annotated[str | None, typer.Option("--worktree", "-w", help="worktree id, e.g. wt-03")] = None,
    branch: Annotated[str | None, typer.Option("--branch", "-b", help="the branch an allocation holds")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="release every BUSY worktree of this agent")
    ] = None,
    path: Annotated[str | None, typer.Option("--path", help="the worktree's directory")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="take back another agent's worktree, even a live agent's; its changes are saved to a rescue ref first",
        ),
    ] = False,
    remove: Annotated[bool, typer.Option("--remove", help="delete the worktree instead of keeping it warm")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: {released: [...], refused: [...]}")] = False,
) -> None:
    """Release worktrees by id, branch, path or agent (for scripts and hooks).

    Exit codes: 0 released (or nothing to release), 1 refused (CODE: reason on stderr), 2 usage.
    """
    selectors = {"--worktree": worktree, "--branch": branch, "--path": path, "--agent": agent}
    chosen = [flag for flag, value in selectors.items() if value is not None]
    if len(chosen) != 1:
        given = f" (got {', '.join(chosen)})" if chosen else ""
        raise typer.BadParameter(f"give exactly one of --worktree, --branch, --path or --agent{given}")
    if path is not None:
        path = str(Path(path).expanduser().absolute())
    me = operator_id()

    async def go(coord: Coordinator) -> AgentRelease:
        if agent is not None:
            return await release_every_worktree_of(
                coord.pool.releaser, agent, force=force, remove=remove, over_live_agent=force
            )
        done = AgentRelease()
        try:
            done.released.append(
                await coord.pool.release(
                    worktree_id=worktree, branch=branch, path=path, force=force, remove=remove, over_live_agent=force
                )
            )
        except CoordError as exc:
            done.refused.append(exc)
        return done

    done = run_with_coordinator(go, agent_id=me)
    if as_json:
        emit_json(
            {
                "released": [r.model_dump(mode="json") for r in done.released],
                "refused": [{"code": e.code.value, "message": _cli_message(e)} for e in done.refused],
            }
        )
    elif done.released:
        table = Table("worktree", "state", "branch", "dirty", "rescue ref", "path", box=None, pad_edge=False)
        for r in done.released:
            table.add_row(
                r.worktree_id, r.state, r.branch or "-", "yes" if r.dirty else "no", r.rescue_ref or "-", r.path
            )
        output_console().print(table)
        for r in done.released:
            if r.state == "QUARANTINED":
                typer.echo(
                    f"{r.worktree_id}: its agent kept writing while it was saved (last in {r.rescue_ref}); left "
                    "untouched and quarantined until that agent is gone, then validation returns it",
                    err=True,
                )
    elif not done.refused:
        typer.echo(f"nothing to release: agent {agent} holds no BUSY worktree")
    for exc in done.refused:
        typer.echo(_cli_wording(exc), err=True)
    if done.refused:
        raise typer.Exit(EXIT_REFUSED)


# ---- export-pool --------------------------------------------------------------------------------


@app.command("export-pool")
def export_pool(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to FILE instead of stdout")] = None,
    repo: Annotated[str | None, typer.Option(help="repository path (default: configured or cwd)")] = None,
) -> None:
    """Write the pool as the Markdown table `coord://pool.md` serves."""
    status = run_with_coordinator(lambda c: c.status(absolute_repo(repo), with_contention=False))
    text = pool_markdown(status)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    _write_atomically(output, text)
    typer.echo(f"wrote {len(status.worktrees)} worktrees to {output}", err=True)


def _write_atomically(target: Path, text: str) -> None:
    """Replace `target` in one step, so a reader (or a crash) never sees half a table."""
    target = target.expanduser()
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if target.exists():
            # mkstemp makes the file 0600; keep the mode the existing file had.
            os.chmod(tmp, target.stat().st_mode & 0o777)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- import-pool --------------------------------------------------------------------------------


@app.command("import-pool")
def import_pool(
    file: Annotated[str, typer.Argument(help="a Markdown pool table, e.g. worktrees.pool.md ('-' for stdin)")],
    repo: Annotated[str | None, typer.Option(help="repository path (default: configured or cwd)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check every row and show the plan; change nothing")] = (
        False
    ),
    lease: Annotated[
        float | None,
        typer.Option(
            "--lease",
            min=1.0,
            help="seconds a BUSY row's agent has to start heartbeating before its worktree is reclaimable "
            "(default: AGENT_COORD_STALE_AFTER_S)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Adopt the worktrees a Markdown pool table lists, after checking each against git.

    FREE rows must be clean and are detached; BUSY rows are adopted for their agent with a new fencing
    token and a lease. Any problem (named by its line) aborts the whole import: exit 1, nothing changed.
    """
    if file == "-":
        text, base_dir, source = sys.stdin.read(), Path.cwd(), "<stdin>"
    else:
        source_path = Path(file).expanduser()
        try:
            text = source_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            typer.echo(f"cannot read {file}: {exc}", err=True)
            raise typer.Exit(EXIT_REFUSED) from exc
        base_dir, source = source_path.absolute().parent, str(source_path)

    async def go(coord: Coordinator) -> ImportResult | str:
        importer = PoolImporter(coord.store, coord.git, coord.repos, coord.identity)
        try:
            return await importer.import_text(
                text,
                base_dir=base_dir,
                source=source,
                repo_arg=absolute_repo(repo),
                lease_s=lease if lease is not None else coord.settings.stale_after_s,
                dry_run=dry_run,
            )
        except (PoolFileError, PoolImportError) as exc:  # the table itself, or rows git contradicts
            return str(exc)

    result = run_with_coordinator(go, agent_id=operator_id())
    if isinstance(result, str):
        typer.echo(f"{source}: {result}" if "\n" not in result else f"{source}:\n{result}", err=True)
        raise typer.Exit(EXIT_REFUSED)
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    print_import(result, output_console())


def print_import(result: ImportResult, console: Console) -> None:
    table = Table("line", "action", "state", "worktree", "agent", "branch", "path", "note", box=None, pad_edge=False)
    for r in result.rows:
        table.add_row(
            str(r.line),
            r.action,
            r.state,
            r.worktree_id or "-",
            r.agent_id or "-",
            r.branch or "-",
            r.path,
            r.note,
        )
    if result.rows:
        console.print(table)
    verb = "would adopt" if result.dry_run else "adopted"
    tail = " (dry run: nothing changed)" if result.dry_run else ""
    console.print(f"{verb} {result.adopted}, skipped {result.skipped} into {result.pool_root}{tail}")
