"""A real PostgreSQL for the tests: one throwaway cluster per session, one fresh database per test.

Under CI=true a cluster that cannot start fails the tests that need it; elsewhere they are skipped
with the reason (a developer without PostgreSQL still runs everything else).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_coord.store_target import PostgresUrl
from bench.pg_cluster import Cluster, ClusterUnavailableError, running_cluster

_names = itertools.count(1)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL here: {reason}")


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        _unavailable(f"psycopg is not installed ({exc})")
    try:
        with running_cluster() as cluster:
            yield cluster
    except ClusterUnavailableError as exc:
        _unavailable(str(exc))


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> PostgresUrl:
    """A fresh, empty database of the session's cluster."""
    return PostgresUrl(pg_cluster.create_database(f"t{os.getpid()}_{next(_names)}"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | PostgresUrl:
    """Where a store test's store lives: each test runs once on each engine."""
    if request.param == "sqlite":
        return tmp_path / "c.db"
    url: PostgresUrl = request.getfixturevalue("pg_url")
    return url


class Raw:
    """Plain SQL on the store's database, outside the store (as another writer's would be), with
    SQLite's parameter spelling on both engines. Autocommit: each statement stands alone."""

    def __init__(self, target: Path | PostgresUrl) -> None:
        self.target = target
        self.postgres = isinstance(target, PostgresUrl)
        self._conn: Any
        if isinstance(target, PostgresUrl):
            import psycopg

            self._conn = psycopg.connect(target.secret_url(), autocommit=True)
        else:
            self._conn = sqlite3.connect(target, isolation_level=None)

    def execute(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        if self.postgres:
            import psycopg

            from agent_coord.engine.store.pg_connection import translate

            try:
                cur = self._conn.execute(translate(sql), params)
            except psycopg.IntegrityError as exc:
                raise sqlite3.IntegrityError(str(exc)) from exc
            return list(cur.fetchall()) if cur.description else []
        return list(self._conn.execute(sql, params).fetchall())

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self.postgres:
            from agent_coord.engine.store.pg_connection import translate

            with self._conn.cursor() as cur:
                cur.executemany(translate(sql), rows)
        else:
            self._conn.execute("BEGIN")
            self._conn.executemany(sql, rows)
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def raw(target: Path | PostgresUrl) -> Iterator[Raw]:
    conn = Raw(target)
    try:
        yield conn
    finally:
        conn.close()
