"""`agent-coord conflicts`: what the conflict radar last predicted, from the store."""

from __future__ import annotations

from typing import Annotated

import typer

from agent_coord.cli.common import absolute_repo, app, emit_json, run_with_coordinator
from agent_coord.engine.coordinator import Coordinator
from agent_coord.engine.radar.models import BaseBranch, ConflictReport


@app.command()
def conflicts(
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    repo: Annotated[str | None, typer.Option("--repo", help="one repository (default: all)")] = None,
) -> None:
    """Predicted merge conflicts and overlapping changes between live worktrees, and with their base."""

    async def read(coord: Coordinator) -> ConflictReport:
        return await coord.conflict_report(absolute_repo(repo))

    report = run_with_coordinator(read)
    if as_json:
        emit_json(report.model_dump(mode="json", by_alias=True))
        return
    if not report.pairs:
        typer.echo("no overlapping changes between live worktrees")
        return
    for wt, seen in report.worktrees.items():
        for c in seen:
            other = (
                f"base {c.with_.base}"
                if isinstance(c.with_, BaseBranch)
                else (f"{c.with_.worktree_id} ({c.with_.branch}, {c.with_.agent_id})")
            )
            where = ", ".join(
                f"{p}:{','.join(f'{s}-{e}' for s, e in (c.ranges or {}).get(p, []))}" if (c.ranges or {}).get(p) else p
                for p in c.paths
            )
            typer.echo(f"{wt} {c.kind} with {other}: {where}")
