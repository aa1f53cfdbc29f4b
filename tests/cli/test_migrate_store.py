"""`agent-coord migrate-store` as a person runs it: its own process, its exit codes, its output, and the
password never printed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from agent_coord.config import Settings
from agent_coord.engine.coordinator import Coordinator
from agent_coord.store_target import PostgresUrl
from bench.pg_cluster import PASSWORD
from tests.paths import HOOK_HOST_OFF
from tests.pg_support import raw

CLI = [sys.executable, "-c", "from agent_coord.cli import main; main()"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)} | env
    return subprocess.run([*CLI, "migrate-store", *args], capture_output=True, text=True, env=full, timeout=120)


@pytest.fixture
def used_store(settings: Settings) -> Settings:
    async def use() -> None:
        async with Coordinator.open(settings, register=True, agent_id="agent-cli") as c:
            granted = await c.pool.allocate("feat/cli")
            await c.pool.release(worktree_id=granted.worktree_id)

    anyio.run(use)
    return settings


def test_copies_prints_the_counts_and_refuses_a_second_time(
    used_store: Settings, env: dict[str, str], pg_url: PostgresUrl, tmp_path: Path
) -> None:
    without_password = pg_url.secret_url().replace(f":{PASSWORD}@", "@")
    assert PASSWORD not in without_password
    secret = tmp_path / "pg-password"
    secret.write_text(PASSWORD + "\n")

    dry = run(env, "--to", without_password, "--password-file", str(secret), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].startswith("checked (dry run: rolled back, nothing written)")
    (events,) = [line.split() for line in lines if line.startswith("events ")]
    assert events[1] == events[2] != "0", dry.stdout  # table, sqlite, postgresql
    assert lines[-1] == "verified: every table agrees"
    with raw(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()") == [(0,)]

    done = run(env, "--to", pg_url.secret_url(), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verified"] and not report["dry_run"] and report["source"] == env["AGENT_COORD_DB"]
    counts = {t["table"]: (t["source"], t["target"]) for t in report["tables"]}
    assert counts["slots"] == (1, 1) and counts["events"][0] == counts["events"][1] > 0
    assert PASSWORD not in done.stdout + done.stderr and "***" in report["target"]

    again = run(env, "--to", pg_url.secret_url(), "--json")
    assert again.returncode == 1
    assert again.stderr.startswith("TARGET_NOT_EMPTY: ") and again.stderr.count("\n") == 1
    assert json.loads(again.stdout)["error"]["code"] == "TARGET_NOT_EMPTY"
    assert PASSWORD not in again.stdout + again.stderr


def test_a_bad_url_is_a_usage_error_and_an_unreachable_server_a_refusal(
    used_store: Settings, env: dict[str, str]
) -> None:
    for bad in ("mysql://coord@db/coord", "postgresql://coord:pw@db:notaport/coord", "/var/lib/coord.db"):
        done = run(env, "--to", bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert done.stderr.startswith("INVALID_ARGUMENT: --to: ") and "pw" not in done.stderr
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = run(env, "--to", f"postgresql://coord:s3cret-pw@127.0.0.1:{port}/coord")
    assert gone.returncode == 1
    assert gone.stderr.startswith("STORE_UNAVAILABLE: ") and "s3cret-pw" not in gone.stderr + gone.stdout
    nowhere = str(Path(env["AGENT_COORD_DB"]).parent / "none.db")
    missing = run(env, "--from", nowhere, "--to", f"postgresql://coord@127.0.0.1:{port}/coord")
    assert missing.returncode == 1 and missing.stderr.startswith("STORE_UNAVAILABLE: ")
    assert "does not exist" in missing.stderr and not Path(nowhere).exists()
