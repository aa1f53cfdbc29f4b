"""Read a store's tables from outside it (checkers, benches), whichever engine holds it: rows as
mappings by column name, the statement in SQLite's parameter spelling."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_coord.store_target import PostgresUrl


def rows(target: Path | PostgresUrl, sql: str, params: tuple[Any, ...] = ()) -> list[Mapping[str, Any]]:
    if isinstance(target, PostgresUrl):
        import psycopg
        from psycopg.rows import dict_row

        from agent_coord.engine.store.pg_connection import translate

        with psycopg.connect(target.secret_url(), autocommit=True, row_factory=dict_row) as conn:
            return list(conn.execute(translate(sql), params).fetchall())
    with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql, params).fetchall())


def integrity(target: Path | PostgresUrl) -> str:
    """SQLite's integrity check; on PostgreSQL, the indexes left invalid (it checks its pages itself)."""
    if isinstance(target, PostgresUrl):
        bad = rows(target, "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE NOT indisvalid")
        return "ok" if not bad else "invalid: " + ", ".join(str(r["name"]) for r in bad)
    with contextlib.closing(sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=30)) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def store_target(value: str) -> Path | PostgresUrl:
    return PostgresUrl(value) if value.startswith(("postgresql://", "postgres://")) else Path(value)
