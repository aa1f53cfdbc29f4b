"""`agent-coord migrate-store`: copy a SQLite store into an empty PostgreSQL database, all or nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from agent_coord.cli.common import EXIT_REFUSED, EXIT_USAGE, app, emit_json
from agent_coord.store_target import PostgresUrl, StoreTargetError, read_password_file


def _refuse(code: str, message: str, exit_code: int, *, as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(json.dumps({"error": {"code": code, "message": message}}))
    typer.echo(" ".join(f"{code}: {message}".split()), err=True)
    raise typer.Exit(exit_code)


@app.command("migrate-store")
def migrate_store(
    to: Annotated[
        str,
        typer.Option(
            "--to", help="the PostgreSQL URL to copy into (an empty database); put the password in a file, not here"
        ),
    ],
    source: Annotated[
        Path | None, typer.Option("--from", help="the SQLite file to copy (default: AGENT_COORD_DB)")
    ] = None,
    password_file: Annotated[
        Path | None,
        typer.Option("--password-file", help="a file whose first line is the PostgreSQL password"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="copy and check everything, then roll back: nothing is written")
    ] = False,
    allow_running: Annotated[
        bool,
        typer.Option(
            "--allow-running", help="copy even while servers still use the source (their later writes stay in SQLite)"
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Copy a SQLite store (pool, agents, events, rollups: every table) into an empty PostgreSQL database,
    in one transaction, and compare both sides. Stop the servers first."""
    try:
        target = PostgresUrl(to.strip())
        if password_file is not None:
            if target.has_password:
                raise StoreTargetError("the password is given twice (in --to and in --password-file): keep one")
            target = target.with_password(read_password_file(password_file))
    except StoreTargetError as exc:
        _refuse("INVALID_ARGUMENT", f"--to: {exc}", EXIT_USAGE, as_json=as_json)
    if source is None:
        from agent_coord.config import load_settings

        db = load_settings().db
        if isinstance(db, PostgresUrl):
            _refuse(
                "INVALID_ARGUMENT",
                "AGENT_COORD_DB is a PostgreSQL URL already; pass --from with the SQLite file to copy",
                EXIT_USAGE,
                as_json=as_json,
            )
        source = db
    source = source.expanduser()

    from agent_coord.engine.errors import CoordError

    try:
        from agent_coord.engine.store.copy_to_pg import MigrationRefusedError, copy_to_postgresql
    except ImportError as exc:
        _refuse(
            "STORE_UNAVAILABLE",
            f"the PostgreSQL driver is missing ({exc.name}): pip install 'agent-coord[postgresql]'",
            EXIT_REFUSED,
            as_json=as_json,
        )
    try:
        report = copy_to_postgresql(source, target, dry_run=dry_run, allow_running=allow_running)
    except MigrationRefusedError as exc:
        _refuse(exc.code, exc.message, EXIT_REFUSED, as_json=as_json)
    except CoordError as exc:
        _refuse(exc.code.value, exc.message, EXIT_REFUSED, as_json=as_json)

    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        what = "checked (dry run: rolled back, nothing written)" if report.dry_run else "copied"
        typer.echo(f"{what}: {report.source} -> {report.target} (schema {report.schema_version})")
        for server in report.running_servers:
            typer.echo(f"warning: {server.agent_id} (server pid {server.server_pid}) still used the source")
        width = max(len(t.table) for t in report.tables)
        typer.echo(f"{'table':<{width}}  {'sqlite':>10}  {'postgresql':>10}")
        for t in report.tables:
            typer.echo(f"{t.table:<{width}}  {t.source:>10}  {t.target:>10}")
        typer.echo(f"{'max event id':<{width}}  {report.max_event_id.source:>10}  {report.max_event_id.target:>10}")
        token = "not set" if report.dry_run else report.fencing_token.target
        typer.echo(f"{'fencing token':<{width}}  {report.fencing_token.source:>10}  {token:>10}")
        typer.echo("verified: every table agrees" if report.verified else "NOT verified: the counts above differ")
    if not report.verified:
        raise typer.Exit(EXIT_REFUSED)
