"""The edit guard: Claude Code's PreToolUse hook for Edit|Write|MultiEdit|NotebookEdit (`agent-coord hook
pre-edit`). When the file about to be edited is changed in another live worktree of the same repository
(as the radar last stored it), it answers per AGENT_COORD_EDIT_GUARD:

* `warn` (default): no permission decision, so the user's own rules still apply; the agent is told in
  `additionalContext` who else changes the file and what to do;
* `ask` / `deny`: `permissionDecision` with the reason, naming the other branch;
* `off`: nothing.

It runs before every edit, so it imports only the standard library (no MCP SDK, no pydantic, no git)
and reads the store with bare sqlite3, read-only; even `json` is imported only when there is something
to say (the event is read with SQLite's JSON functions). A PostgreSQL store is read through psycopg, the
one import that path adds, in a read-only transaction; the event is still read by an in-memory SQLite.
It fails open: when the store cannot be read it allows the edit and says why in one line on stderr.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from agent_coord.settings_file import read_settings_file

# `typing` costs a few ms of the hook's start-up; annotations are never evaluated here (PEP 563).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TextIO

    # Runs one SELECT written with `?` placeholders on the store, whichever engine holds it.
    Query = Callable[[str, tuple[Any, ...]], list[tuple[Any, ...]]]

MODES = ("off", "warn", "ask", "deny")
MAX_INPUT_BYTES = 1 << 20


class GuardError(Exception):
    pass


def _setting(name: str, file: dict[str, Any]) -> str | None:
    value = os.environ.get(f"AGENT_COORD_{name.upper()}")
    if value is None and name in file:
        value = str(file[name])
    return value or None


def db_path(file: dict[str, Any]) -> str:
    configured = _setting("db", file)
    if configured:
        return os.path.expanduser(configured)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "agent-coord", "coord.db")


# The event's fields the guard needs, read by SQLite (malformed JSON is an sqlite3.Error: fail open).
_EVENT_FIELDS = """
SELECT json_type(:e),
       CASE WHEN json_type(:e, '$.tool_input.file_path') = 'text'
            THEN json_extract(:e, '$.tool_input.file_path') END,
       CASE WHEN json_type(:e, '$.tool_input.notebook_path') = 'text'
            THEN json_extract(:e, '$.tool_input.notebook_path') END,
       CASE WHEN json_type(:e, '$.cwd') = 'text' THEN json_extract(:e, '$.cwd') END
"""


def _event_fields(conn: sqlite3.Connection, raw: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(JSON type of the event, tool_input.file_path, tool_input.notebook_path, cwd), strings or None."""
    try:
        kind, file_path, notebook_path, cwd = conn.execute(_EVENT_FIELDS, {"e": raw}).fetchone()
        return kind, file_path, notebook_path, cwd
    except sqlite3.OperationalError as exc:
        if "no such function" not in str(exc):
            raise
    import json  # an SQLite built without its JSON functions

    event = json.loads(raw)
    if not isinstance(event, dict):
        return "array", None, None, None
    tool_input = event.get("tool_input")
    fields = tool_input if isinstance(tool_input, dict) else {}
    texts = [v if isinstance(v, str) else None for v in (fields.get("file_path"), fields.get("notebook_path"))]
    cwd = event.get("cwd")
    return "object", texts[0], texts[1], cwd if isinstance(cwd, str) else None


def _target(conn: sqlite3.Connection, raw: str) -> str | None:
    """The file the tool is about to change, absolute with links resolved; None when it names none."""
    kind, file_path, notebook_path, cwd = _event_fields(conn, raw)
    if kind != "object":
        raise GuardError("the hook input is not a JSON object")
    path = file_path or notebook_path
    if not path:
        return None
    if not os.path.isabs(path):
        path = os.path.join(cwd if cwd is not None else os.getcwd(), path)
    return os.path.realpath(path)


def _within(path: str, root: str) -> str | None:
    """`path` relative to `root` (a directory), or None when it is not inside."""
    real = os.path.realpath(root)
    if not path.startswith(real.rstrip(os.sep) + os.sep):
        return None
    return os.path.relpath(path, real).replace(os.sep, "/")


def others_changing(query: Query, target: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(my worktree id or None, the other live allocations that changed this file)."""
    best: tuple[int, str | None, int, str] | None = None  # (depth, slot id, repo id, relative path)
    rows = query(
        "SELECT id, repo_id, path FROM slots WHERE state = 'BUSY' UNION ALL SELECT NULL, id, path FROM repos", ()
    )
    for slot_id, repo_id, root in rows:
        rel = _within(target, root)
        if rel is not None and (best is None or len(root) > best[0]):
            best = (len(root), slot_id, repo_id, rel)
    if best is None:
        return None, []
    _, mine, repo_id, rel = best
    others = query(
        "SELECT s.id, s.branch, s.owner, s.task FROM radar_changes c"
        " JOIN radar_trees t ON t.worktree_id = c.worktree_id"
        " JOIN slots s ON s.id = c.worktree_id AND s.fencing_token = t.fencing_token AND s.state = 'BUSY'"
        " WHERE c.repo_id = ? AND c.path = ? AND c.worktree_id IS NOT ? ORDER BY s.id",
        (repo_id, rel, mine),
    )
    found: list[dict[str, Any]] = []
    for wt, branch, owner, task in others:
        entry: dict[str, Any] = {"worktree_id": wt, "branch": branch, "agent_id": owner, "task": task, "path": rel}
        if mine is not None:
            entry["ranges"] = _conflict_ranges(query, mine, wt, rel)
        found.append(entry)
    return mine, found


def _conflict_ranges(query: Query, mine: str, other: str, rel: str) -> list[list[int]] | None:
    """My lines of `rel` that the radar predicts will conflict with `other`, or None when it predicts
    no conflict there ([] when it does but has no line ranges: binary, deleted)."""
    import json  # only when another worktree changes the file: there is something to say

    a, b = sorted((mine, other))
    rows = query("SELECT detail, kind FROM radar_pairs WHERE a = ? AND b = ?", (a, b))
    if not rows or rows[0][1] != "conflict":
        return None
    side = json.loads(rows[0][0]).get("a" if mine == a else "b", {})
    if rel not in side.get("conflict", []):
        return None
    ranges = side.get("ranges", {}).get(rel, [])
    return [list(r) for r in ranges]


def message(found: list[dict[str, Any]]) -> str:
    parts: list[str] = []
    for o in found:
        who = f"branch {o['branch']!r} ({o['worktree_id']}, agent {o['agent_id']}"
        who += f", task: {o['task']})" if o.get("task") else ")"
        ranges = o.get("ranges")
        if ranges:
            lines = ", ".join(f"{s}-{e}" if s != e else str(s) for s, e in ranges)
            parts.append(f"{who} — a merge would conflict at your lines {lines}")
        elif ranges is not None:
            parts.append(f"{who} — a merge would conflict on this file")
        else:
            parts.append(who)
    path = found[0]["path"]
    return (
        f"agent-coord: {path} is also changed by {'; '.join(parts)}. Keep your change to this file narrow, "
        "or leave the file to the agent that has more of it and tell the user; never edit another agent's "
        "worktree."
    )


def decide(raw_event: str, mode: str, conn: sqlite3.Connection, query: Query | None = None) -> dict[str, Any] | None:
    """The hook's stdout JSON, or None for no output (allow, say nothing). `conn` reads the event (and
    the store, unless `query` reads it elsewhere)."""
    target = _target(conn, raw_event)
    if mode == "off" or target is None:
        return None
    _, found = others_changing(query or _sqlite_query(conn), target)
    if not found:
        return None
    text = message(found)
    out: dict[str, Any] = {"hookEventName": "PreToolUse"}
    if mode == "warn":
        out["additionalContext"] = text
    else:
        out["permissionDecision"] = mode
        out["permissionDecisionReason"] = text
    return {"hookSpecificOutput": out}


def run(stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Always exits 0: the guard never blocks by failing."""
    try:
        file = read_settings_file()
        mode = (_setting("edit_guard", file) or "warn").lower()
        if mode not in MODES:
            raise GuardError(f"AGENT_COORD_EDIT_GUARD must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "off":
            return 0
        raw_event = stdin.read(MAX_INPUT_BYTES) or "{}"
        db = db_path(file)
        if "://" in db:
            answer = _decide_on_postgresql(raw_event, mode, db, _setting("db_password_file", file))
        else:
            answer = _decide_on_sqlite(raw_event, mode, db)
    except (OSError, ValueError, sqlite3.Error, GuardError) as exc:
        stderr.write(f"agent-coord edit guard: allowed without checking ({exc})\n")
        return 0
    if answer is not None:
        import json  # ASCII-only output (non-ASCII escaped), whatever the terminal's encoding

        stdout.write(json.dumps(answer) + "\n")
    return 0


def _sqlite_query(conn: sqlite3.Connection) -> Query:
    return lambda sql, params: conn.execute(sql, params).fetchall()


def _decide_on_sqlite(raw_event: str, mode: str, db: str) -> dict[str, Any] | None:
    if not os.path.isfile(db):
        raise GuardError(f"no coordination database at {db}")
    conn = sqlite3.connect(f"file:{_uri_path(os.path.abspath(db))}?mode=ro", uri=True, timeout=0.1)
    try:
        return decide(raw_event, mode, conn)
    finally:
        conn.close()


def _decide_on_postgresql(raw_event: str, mode: str, url: str, password_file: str | None) -> dict[str, Any] | None:
    """The same answer from a PostgreSQL store. Its errors never carry the URL's password: psycopg's
    texts are scrubbed, and a URL that cannot be parsed is not shown at all."""
    from agent_coord.store_target import PostgresUrl, StoreTargetError

    try:
        target = PostgresUrl(url)
    except StoreTargetError:
        raise GuardError("AGENT_COORD_DB is not a usable PostgreSQL URL") from None
    conn = sqlite3.connect(":memory:")  # reads the event, as on the SQLite path
    try:
        if _target(conn, raw_event) is None:  # nothing to look up: no connection made
            return None
        import psycopg

        extra: dict[str, Any] = {}
        if password_file:
            with open(os.path.expanduser(password_file), encoding="utf-8") as fh:
                extra["password"] = fh.read().strip()
        try:
            with psycopg.connect(target.secret_url(), connect_timeout=3, **extra) as pg:
                pg.read_only = True

                def query(sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
                    # SQLite's null-safe `IS NOT` (older SQLites lack IS DISTINCT FROM) is PostgreSQL's.
                    sql = sql.replace("IS NOT ?", "IS DISTINCT FROM ?").replace("?", "%s")
                    return pg.execute(sql, params).fetchall()

                return decide(raw_event, mode, conn, query)
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GuardError(f"the PostgreSQL store cannot be read: {target.scrub(first)}") from None
    finally:
        conn.close()


def _uri_path(path: str) -> str:
    """`path` for an SQLite URI: only %, ? and # mean something there (urllib.parse costs an import)."""
    return path.replace("%", "%25").replace("?", "%3F").replace("#", "%23")


def main() -> int:
    return run(sys.stdin, sys.stdout, sys.stderr)
