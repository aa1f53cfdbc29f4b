"""Copy a SQLite store into an empty PostgreSQL database (`agent-coord migrate-store`), all or nothing.

The source is read in one read transaction (one snapshot of a WAL database, whatever servers still
write meanwhile), opened read-only: the copy never changes its source. The target gets, in ONE
transaction: the schema of this version (the source's: an older or newer source is refused), every
row of every table of the source (the columns both sides have, found from the two schemas, so a
migration added to both engines is carried without a change here), a comparison of both sides, and
its sequences set past what was copied. Anything wrong, and that transaction rolls back: the target
is left as it was.

Rows are copied as they are, never replayed as operations: the rollups of the source count events its
retention already deleted, and a trigger that derived rows again from the copied events would count
them twice (or count what the source no longer has). So the target's triggers are disabled for the
copy, inside the copying transaction, and enabled again before it commits (ALTER TABLE holds its lock
until then: no other session ever sees them disabled); the rollup tables are then compared row for row
with the source's.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql as pg_sql
from pydantic import BaseModel, Field

from agent_coord.engine.liveness.judge import process_state
from agent_coord.engine.store.connection import OWN_TABLES, StoreUnavailableError
from agent_coord.engine.store.pg_connection import CONNECT_TIMEOUT_S, migrate_schema, unreachable
from agent_coord.engine.store.rows import AGENT_SELECT, _agent
from agent_coord.engine.store.schema import MIGRATIONS
from agent_coord.engine.store.schema_pg import MIGRATION_LOCK, WRITER_LOCK
from agent_coord.platform.process_identity import boot_id
from agent_coord.store_target import PostgresUrl

# How long the copy waits for a lock a process on the target holds (a server starting against it).
LOCK_TIMEOUT = "30s"
# The log, compared by count and ids (it is the largest table, and copied by the same COPY as the rest);
# every other table is compared row for row.
LOG_TABLE = "events"
# The sequences that are no table's identity column, and what each must be set past: the largest value of
# these (table, column) pairs, and of `meta` rows named so. Any other sequence on the target makes the
# copy refuse: it would not know how to carry it.
SEQUENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "events_id": (("events", "id"),),
    "fencing_tokens": (("slots", "fencing_token"), ("events", "fencing_token"), ("radar_trees", "fencing_token")),
}
META_SEQUENCES = {"fencing_tokens": "fencing_token"}  # SQLite's own counter: the last token issued


class MigrationRefusedError(Exception):
    """A refusal of `migrate-store` with a stable code (TARGET_NOT_EMPTY, SOURCE_IN_USE, SCHEMA_MISMATCH,
    COPY_REFUSED, COPY_MISMATCH); nothing was written to the target. `str()` is `CODE: what happened; what to do`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class TableCount(BaseModel):
    table: str = Field(description="a table of the store")
    source: int = Field(description="rows in the SQLite source (in the snapshot copied)")
    target: int = Field(description="rows in the PostgreSQL target after the copy")


class Compared(BaseModel):
    source: int = Field(description="the value in the SQLite source")
    target: int = Field(description="the value in the PostgreSQL target after the copy")


class RunningServer(BaseModel):
    agent_id: str = Field(description="the agent whose server still uses the source")
    server_pid: int = Field(description="that server's process id")
    host: str = Field(description="the host it was registered on")
    why: str = Field(description="how we know it runs: its process, or its unexpired lease")


class MigrationReport(BaseModel):
    source: str = Field(description="the SQLite file copied")
    target: str = Field(description="the PostgreSQL URL copied into, without its password")
    schema_version: int = Field(description="the schema version of both sides")
    dry_run: bool = Field(description="true: everything was done and checked, then rolled back")
    tables: list[TableCount] = Field(description="rows per table on each side, in copy order")
    max_event_id: Compared = Field(description="the largest event id; new events get larger ones")
    fencing_token: Compared = Field(
        description="the last fencing token issued (source: the largest known; target: the sequence's "
        "value after the copy, unchanged by a dry run); new allocations get larger ones"
    )
    running_servers: list[RunningServer] = Field(
        description="servers that still used the source (copied anyway only with --allow-running)"
    )
    verified: bool = Field(description="every count and every compared table agreed")


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]


def _quote_sqlite(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _open_source(path: Path) -> sqlite3.Connection:
    """The source, read-only, inside one read transaction (its snapshot is taken by the first read)."""
    if not path.is_file():
        raise StoreUnavailableError(path, "does not exist; pass --from with the SQLite file to copy")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        conn.execute("BEGIN")
        conn.execute("PRAGMA user_version").fetchone()
    except sqlite3.Error as exc:
        raise StoreUnavailableError(path, f"cannot be read ({exc})") from None
    return conn


def _source_schema(conn: sqlite3.Connection, path: Path) -> dict[str, tuple[str, ...]]:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    names = [
        str(r[0])
        for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    ]
    if version == 0 or not set(names) >= OWN_TABLES:
        raise StoreUnavailableError(path, "is not an agent-coord store; pass --from with agent-coord's SQLite file")
    if version < len(MIGRATIONS):
        raise MigrationRefusedError(
            "SCHEMA_MISMATCH",
            f"the source {path} has schema {version}, older than this agent-coord's ({len(MIGRATIONS)}); "
            f"open it once with this version (e.g. AGENT_COORD_DB={path} agent-coord status), which upgrades "
            "it in place, then copy it; nothing was written",
        )
    if version > len(MIGRATIONS):
        raise MigrationRefusedError(
            "SCHEMA_MISMATCH",
            f"the source {path} has schema {version}, newer than this agent-coord ({len(MIGRATIONS)}); "
            "copy it with the agent-coord that wrote it; nothing was written",
        )
    return {
        name: tuple(str(c[1]) for c in conn.execute(f"PRAGMA table_info({_quote_sqlite(name)})"))
        for name in sorted(names)
    }


def running_servers(conn: sqlite3.Connection, *, now: float) -> list[RunningServer]:
    """Servers that may still write to the source: an agent not disconnected whose server process runs
    on this machine (same boot), or, recorded on another machine or before a reboot, whose lease has not
    lapsed. What they write after the snapshot would stay in SQLite."""
    here = boot_id()
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    found: list[RunningServer] = []
    for agent in (_agent(r) for r in cur.execute(AGENT_SELECT)):
        if agent.status not in ("active", "idle"):
            continue
        leased = agent.lease_expires_at >= now
        if agent.boot_id == here:
            state = process_state(agent.server_pid, agent.server_create_time, agent.server_start_s)
            if state == "alive":
                found.append(RunningServer(agent_id=agent.id, server_pid=agent.server_pid, host=agent.host, why="runs"))
            elif state == "unknown" and leased:
                found.append(
                    RunningServer(agent_id=agent.id, server_pid=agent.server_pid, host=agent.host, why="lease")
                )
        elif leased:
            found.append(RunningServer(agent_id=agent.id, server_pid=agent.server_pid, host=agent.host, why="lease"))
    return found


def _connect(url: PostgresUrl) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(
            url.secret_url(),
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="agent-coord migrate-store",
        )
    except psycopg.Error as exc:
        raise unreachable(url, exc) from None
    conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    return conn


def _target_tables(db: psycopg.Connection[Any]) -> dict[str, tuple[str, ...]]:
    rows = db.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name <> 'schema_version' ORDER BY table_name, ordinal_position"
    ).fetchall()
    tables: dict[str, list[str]] = {}
    for table, column in rows:
        tables.setdefault(str(table), []).append(str(column))
    return {t: tuple(c) for t, c in tables.items()}


def _count(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute(pg_sql.SQL("SELECT count(*) FROM {}").format(pg_sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _refuse_unless_empty(db: psycopg.Connection[Any], url: PostgresUrl) -> None:
    """Before anything is written: a database of another program, or a store with rows, is refused."""
    has_schema = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    tables = sorted(_target_tables(db))
    if not (has_schema and has_schema[0]):
        if tables:
            raise MigrationRefusedError(
                "TARGET_NOT_EMPTY",
                f"the target {url} already has tables of another program ({', '.join(tables[:8])}); nothing "
                "was written; copy into a new, empty database (or a schema of its own, through search_path)",
            )
        return
    row = db.execute("SELECT version FROM schema_version").fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise MigrationRefusedError(
            "SCHEMA_MISMATCH",
            f"the target {url} has schema {version}, newer than this agent-coord ({len(MIGRATIONS)}); "
            "nothing was written",
        )
    # `meta` holds the settings its migrations seed; every other table of an unused store is empty.
    held = {t: n for t in tables if t != "meta" and (n := _count(db, t))}
    if held:
        rows = ", ".join(f"{t}: {n}" for t, n in sorted(held.items()))
        raise MigrationRefusedError(
            "TARGET_NOT_EMPTY",
            f"the target {url} already holds an agent-coord store ({rows}); nothing was written; copy into a "
            "new, empty database, or drop this one if nothing in it is needed",
        )


def _copy_order(db: psycopg.Connection[Any], tables: Iterable[str]) -> list[str]:
    """Referenced tables before the tables that reference them (foreign keys), otherwise by name."""
    edges = db.execute(
        "SELECT child.relname, parent.relname FROM pg_constraint c"
        " JOIN pg_class child ON child.oid = c.conrelid JOIN pg_class parent ON parent.oid = c.confrelid"
        " WHERE c.contype = 'f' AND child.relnamespace = current_schema()::regnamespace"
    ).fetchall()
    wanted = sorted(tables)
    graph: dict[str, set[str]] = {t: set() for t in wanted}
    for child, parent in edges:
        if str(child) in graph and str(parent) in graph and child != parent:
            graph[str(child)].add(str(parent))
    order: list[str] = []
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order


def _enabled_triggers(db: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    rows = db.execute(
        "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' AND c.relnamespace = current_schema()::regnamespace"
        " ORDER BY 1, 2"
    ).fetchall()
    return [(str(table), str(name)) for table, name in rows]


def _set_triggers(db: psycopg.Connection[Any], triggers: Sequence[tuple[str, str]], *, enable: bool) -> None:
    verb = pg_sql.SQL("ENABLE" if enable else "DISABLE")
    for table, name in triggers:
        db.execute(
            pg_sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(pg_sql.Identifier(table), verb, pg_sql.Identifier(name))
        )


def _source_rows(src: sqlite3.Connection, table: _Table) -> sqlite3.Cursor:
    columns = ", ".join(_quote_sqlite(c) for c in table.columns)
    return src.execute(f"SELECT {columns} FROM {_quote_sqlite(table.name)}")  # noqa: S608 - names from the schema


def _copy_table(src: sqlite3.Connection, db: psycopg.Connection[Any], table: _Table) -> None:
    statement = pg_sql.SQL("COPY {} ({}) FROM STDIN").format(
        pg_sql.Identifier(table.name), pg_sql.SQL(", ").join(pg_sql.Identifier(c) for c in table.columns)
    )
    try:
        with db.cursor() as cur, cur.copy(statement) as copy:
            for row in _source_rows(src, table):
                copy.write_row(row)
    except (psycopg.DataError, psycopg.IntegrityError) as exc:
        # A value SQLite keeps and PostgreSQL cannot (a NUL character in a text, say): a person must decide.
        raise MigrationRefusedError(
            "COPY_REFUSED",
            f"PostgreSQL refused a row of the source's table {table.name} ({' '.join(str(exc).split())}); the "
            "copy was rolled back, nothing was written; correct or delete that row in the SQLite file (with "
            "the servers stopped), then copy again",
        ) from None


def _same_value(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row as both engines give it back: SQLite may return an int where PostgreSQL has a float of equal
    value (equal in Python, and of equal hash), and a NaN never equals itself."""
    return tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row)


def _differs(src: sqlite3.Connection, db: psycopg.Connection[Any], table: _Table) -> bool:
    mine = Counter(_same_value(r) for r in _source_rows(src, table))
    statement = pg_sql.SQL("SELECT {} FROM {}").format(
        pg_sql.SQL(", ").join(pg_sql.Identifier(c) for c in table.columns), pg_sql.Identifier(table.name)
    )
    theirs = Counter(_same_value(r) for r in db.execute(statement))
    return mine != theirs


def _max(src_or_db: Any, table: str, column: str, *, postgres: bool) -> int:
    if postgres:
        statement: Any = pg_sql.SQL("SELECT max({}) FROM {}").format(
            pg_sql.Identifier(column), pg_sql.Identifier(table)
        )
    else:
        statement = f"SELECT max({_quote_sqlite(column)}) FROM {_quote_sqlite(table)}"  # noqa: S608
    row = src_or_db.execute(statement).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _sqlite_sequence(src: sqlite3.Connection, table: str) -> int:
    """AUTOINCREMENT's high-water mark: ids of deleted rows (retention) are never given again."""
    try:
        row = src.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table at all
        return 0
    return int(row[0]) if row and row[0] is not None else 0


def _sequence_targets(src: sqlite3.Connection, db: psycopg.Connection[Any], url: PostgresUrl) -> dict[str, int]:
    """Each sequence of the target, and the value the copy sets it to: past every value copied."""
    targets: dict[str, int] = {}
    identities = db.execute(
        "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name)"
        " FROM information_schema.columns WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    owned: set[str] = set()
    for table, column, sequence in identities:
        owned.add(str(sequence).rsplit(".", 1)[-1].strip('"'))
        high = max(_max(src, str(table), str(column), postgres=False), _sqlite_sequence(src, str(table)))
        targets[str(sequence)] = high
    for sequence, columns in SEQUENCES.items():
        high = max(_max(src, t, c, postgres=False) for t, c in columns)
        if sequence == "events_id":
            high = max(high, _sqlite_sequence(src, "events"))
        if key := META_SEQUENCES.get(sequence):
            row = src.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            high = max(high, int(row[0]) if row and row[0] is not None else 0)
        targets[sequence] = high
    present = {
        str(r[0])
        for r in db.execute(
            "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = current_schema()"
        )
    }
    unknown = sorted(present - owned - set(SEQUENCES))
    if unknown:
        raise MigrationRefusedError(
            "SCHEMA_MISMATCH",
            f"the target {url} has sequences this copy does not know how to carry ({', '.join(unknown)}); "
            "nothing was written",
        )
    return targets


def _set_sequences(db: psycopg.Connection[Any], targets: dict[str, int]) -> None:
    """Past every copied value: the next value drawn is larger than any in the copied rows."""
    for sequence, high in targets.items():
        if high >= 1:
            db.execute("SELECT setval(%s::regclass, %s, true)", (sequence, high))


def _last_value(db: psycopg.Connection[Any], sequence: str) -> int:
    row = db.execute(
        pg_sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {}").format(pg_sql.Identifier(sequence))
    ).fetchone()
    return int(row[0]) if row else 0


def copy_to_postgresql(
    source: Path, target: PostgresUrl, *, dry_run: bool = False, allow_running: bool = False
) -> MigrationReport:
    """Copy the SQLite store at `source` into the empty PostgreSQL database at `target`; see the module."""
    src = _open_source(source)
    try:
        schema = _source_schema(src, source)
        running = running_servers(src, now=time.time())
        if running and not allow_running:
            names = ", ".join(f"{s.agent_id} (server pid {s.server_pid} on {s.host})" for s in running[:5])
            raise MigrationRefusedError(
                "SOURCE_IN_USE",
                f"servers still use the source {source}: {names}{' …' if len(running) > 5 else ''}; what they "
                "write after the copy would stay in SQLite. Stop them (end those agent sessions) and retry, "
                "or pass --allow-running to copy the snapshot anyway; nothing was written",
            )
        db = _connect(target)
        try:
            return _copy(src, db, source, target, schema, running, dry_run=dry_run)
        except pg_errors.LockNotAvailable as exc:
            raise StoreUnavailableError(
                target, f"stayed locked by another process ({target.scrub(str(exc))}); nothing was written"
            ) from None
        except pg_errors.InsufficientPrivilege as exc:
            raise StoreUnavailableError(
                target,
                f"refused the copy ({target.scrub(str(exc))}); run it as the role that owns the database "
                "(it creates the schema and disables the triggers during the copy); nothing was written",
            ) from None
        except psycopg.Error as exc:
            raise unreachable(target, exc) from None
        finally:
            db.close()
    finally:
        src.close()


def _copy(
    src: sqlite3.Connection,
    db: psycopg.Connection[Any],
    source: Path,
    target: PostgresUrl,
    schema: dict[str, tuple[str, ...]],
    running: list[RunningServer],
    *,
    dry_run: bool,
) -> MigrationReport:
    with db.transaction(force_rollback=dry_run):
        # The migration lock keeps a starting server from migrating beside us; the writer lock keeps
        # every server's writes out until the copy commits.
        db.execute(f"SELECT {MIGRATION_LOCK}, {WRITER_LOCK}")
        _refuse_unless_empty(db, target)
        migrate_schema(db, target)
        target_schema = _target_tables(db)
        missing = sorted(
            {
                name if name not in target_schema else f"{name}.{column}"
                for name, columns in schema.items()
                for column in columns
                if name not in target_schema or column not in target_schema[name]
            }
        )
        if missing:
            raise MigrationRefusedError(
                "SCHEMA_MISMATCH",
                f"the target {target} lacks what the source has ({', '.join(missing[:8])}); nothing was written",
            )
        tables = [
            _Table(name, tuple(c for c in target_schema[name] if c in schema.get(name, ())))
            for name in _copy_order(db, target_schema)
        ]
        triggers = _enabled_triggers(db)
        _set_triggers(db, triggers, enable=False)
        for table in tables:
            if table.name in schema:
                # Rows the migrations seeded (`meta`'s settings) give way to the source's own.
                db.execute(pg_sql.SQL("DELETE FROM {}").format(pg_sql.Identifier(table.name)))
                _copy_table(src, db, table)
        counts = [
            TableCount(
                table=t.name,
                source=_source_count(src, t.name) if t.name in schema else 0,
                target=_count(db, t.name),
            )
            for t in tables
        ]
        wrong = [c.table for c in counts if c.source != c.target]
        wrong += [t.name for t in tables if t.name in schema and t.name != LOG_TABLE and _differs(src, db, t)]
        max_event = Compared(
            source=_max(src, "events", "id", postgres=False), target=_max(db, "events", "id", postgres=True)
        )
        if max_event.source != max_event.target:
            wrong.append("events.id")
        if wrong:
            raise MigrationRefusedError(
                "COPY_MISMATCH",
                f"the copy into {target} does not match the source ({', '.join(sorted(set(wrong)))}); it was "
                "rolled back, nothing was written",
            )
        _set_triggers(db, triggers, enable=True)
        sequences = _sequence_targets(src, db, target)
        if not dry_run:  # sequences are not transactional: a rolled-back setval would stay
            _set_sequences(db, sequences)
        token = Compared(source=sequences["fencing_tokens"], target=_last_value(db, "fencing_tokens"))
    if not dry_run:
        # Read again from a new snapshot: what others see now that it committed.
        with db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            counts = [c.model_copy(update={"target": _count(db, c.table)}) for c in counts]
            max_event.target = _max(db, "events", "id", postgres=True)
    return MigrationReport(
        source=str(source),
        target=str(target),
        schema_version=len(MIGRATIONS),
        dry_run=dry_run,
        tables=counts,
        max_event_id=max_event,
        fencing_token=token,
        running_servers=running,
        verified=all(c.source == c.target for c in counts) and max_event.source == max_event.target,
    )


def _source_count(src: sqlite3.Connection, table: str) -> int:
    row = src.execute(f"SELECT count(*) FROM {_quote_sqlite(table)}").fetchone()  # noqa: S608
    return int(row[0]) if row else 0
