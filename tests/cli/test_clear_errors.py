"""Whatever is wrong around agent-coord (the database, the settings, the disk, the pool root, a git
listing caught mid-change), the CLI, the hooks and `serve` answer with one line that starts with a
code or `agent-coord:`, exit with the documented code, and leave the database as it was."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.store import Store
from agent_coord.engine.store.schema import MIGRATIONS
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.anyio

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _env(env: dict[str, str], **extra: str) -> dict[str, str]:
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}
    full.update(env)
    full.update(extra)
    return full


def cli(env: dict[str, str], *args: str, stdin: str = "", limit_file_bytes: int | None = None, **extra: str):  # type: ignore[no-untyped-def]
    def limit() -> None:  # a full disk: every write past this size fails (Python ignores SIGXFSZ)
        if limit_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    return subprocess.run(
        [sys.executable, "-m", "agent_coord", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=_env(env, **extra),
        timeout=60,
        preexec_fn=limit,
    )


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def digest(path: Path) -> str:
    """Its bytes and its mode: a file refused as not ours is not even made private."""
    if not path.is_file():
        return "dir"
    return f"{hashlib.sha256(path.read_bytes()).hexdigest()} {path.stat().st_mode:o}"


def fresh_db(env: dict[str, str]) -> Path:
    """A real database with one allocation in it."""
    done = cli(env, "status")
    assert done.returncode == 0, done.stderr
    return Path(env["AGENT_COORD_DB"])


def damaged_databases(db: Path) -> dict[str, Path]:
    """Each way a database file can be unusable, as its own file beside `db`."""
    out: dict[str, Path] = {}
    garbage = db.with_name("garbage.db")
    garbage.write_bytes(os.urandom(3000))
    out["garbage"] = garbage
    truncated = db.with_name("truncated.db")
    truncated.write_bytes(db.read_bytes()[:8192])
    out["truncated"] = truncated
    foreign = db.with_name("foreign.db")
    with contextlib.closing(sqlite3.connect(foreign)) as raw:
        raw.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        raw.commit()
    out["foreign"] = foreign
    newer = db.with_name("newer.db")
    shutil.copy(db, newer)
    with contextlib.closing(sqlite3.connect(newer)) as raw:
        raw.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    out["newer"] = newer
    directory = db.with_name("a-directory.db")
    directory.mkdir()
    out["directory"] = directory
    return out


def test_a_bad_setting_is_a_usage_error_in_one_line(env: dict[str, str]) -> None:
    done = cli(env, "status", AGENT_COORD_POOL_MAX="abc")
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert line.startswith("agent-coord: bad setting: AGENT_COORD_POOL_MAX: "), line
    assert "abc" not in line  # a value may be a secret: named, never shown
    done = cli(env, "status", AGENT_COORD_FOCUS_MATCH="[not json")
    assert done.returncode == 2
    assert one_line(done.stderr).startswith("agent-coord: bad setting:")
    done = cli(env, "status", AGENT_COORD_CONFIG=str(Path(env["AGENT_COORD_DB"]).parent / "missing.toml"))
    assert done.returncode == 2
    assert "AGENT_COORD_CONFIG" in one_line(done.stderr)


def test_every_unusable_database_is_one_coded_line_and_left_as_it_was(env: dict[str, str]) -> None:
    db = fresh_db(env)
    for kind, bad in damaged_databases(db).items():
        if bad.is_file():
            bad.chmod(0o644)  # as another program leaves its files
        before = digest(bad)
        commands = [("status",)]
        if kind == "garbage":  # every command opens the store the same way; one kind goes through them all
            commands += [("validate", "--repair"), ("release", "--branch", "x", "--force"), ("activity",)]
        for args in commands:
            done = cli(env, *args, AGENT_COORD_DB=str(bad))
            assert done.returncode == 1, (kind, args, done.stderr)
            line = one_line(done.stderr)
            assert line.startswith("STORE_UNAVAILABLE: the coordination database"), (kind, line)
        assert digest(bad) == before, kind  # nothing written, not even WAL mode into a foreign file
        assert not Path(f"{bad}-wal").exists(), kind
    assert "another program" in one_line(cli(env, "status", AGENT_COORD_DB=str(db.with_name("foreign.db"))).stderr)
    assert "upgrade" in one_line(cli(env, "status", AGENT_COORD_DB=str(db.with_name("newer.db"))).stderr)
    assert "is a directory" in one_line(cli(env, "status", AGENT_COORD_DB=str(db.with_name("a-directory.db"))).stderr)


def test_a_full_disk_is_one_coded_line_and_nothing_half_written(env: dict[str, str]) -> None:
    alloc = cli(
        env,
        "hook",
        "worktree-create",
        stdin=json.dumps({"session_id": "s1", "name": "full", "cwd": env["AGENT_COORD_REPO"]}),
    )
    assert alloc.returncode == 0, alloc.stderr
    db = Path(env["AGENT_COORD_DB"])
    with contextlib.closing(sqlite3.connect(db)) as raw:
        before = raw.execute("SELECT id, state, owner, branch, version FROM slots").fetchall()
    for args in (("status",), ("release", "--branch", "worktree-full", "--force"), ("validate", "--repair")):
        done = cli(env, *args, limit_file_bytes=1024)
        assert done.returncode == 1, (args, done.stderr)
        line = one_line(done.stderr)
        assert line.startswith("STORE_UNAVAILABLE:") and "disk is full" in line, line
    with contextlib.closing(sqlite3.connect(db)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT id, state, owner, branch, version FROM slots").fetchall() == before
    # The hook says the same in one line, and nothing on stdout (Claude Code reads stdout as the path).
    hook = cli(
        env,
        "hook",
        "worktree-create",
        stdin=json.dumps({"session_id": "s2", "name": "other", "cwd": env["AGENT_COORD_REPO"]}),
        limit_file_bytes=1024,
    )
    assert hook.returncode == 1 and hook.stdout == ""
    assert one_line(hook.stderr).startswith("STORE_UNAVAILABLE:")


def test_the_hooks_answer_a_damaged_database_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "garbage.db"
    bad.write_bytes(os.urandom(2000))
    payload = json.dumps({"session_id": "s1", "name": "x", "cwd": env["AGENT_COORD_REPO"]})
    for event in ("worktree-create", "session-start"):
        done = cli(env, "hook", event, stdin=payload, AGENT_COORD_DB=str(bad))
        assert done.returncode == 1, (event, done.stderr)
        assert done.stdout == ""
        assert one_line(done.stderr).startswith("STORE_UNAVAILABLE:"), event
    done = cli(env, "hook", "worktree-create", stdin=payload, AGENT_COORD_POOL_MAX="many")
    assert done.returncode == 2 and done.stdout == ""  # a usage error, as on the command line
    assert one_line(done.stderr).startswith("agent-coord: bad setting: AGENT_COORD_POOL_MAX")


def _serve(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_coord.server"],
        input=json.dumps(INITIALIZE) + "\n",
        capture_output=True,
        text=True,
        env=_env(env, **extra),
        timeout=60,
    )


def test_serve_answers_initialize_with_the_reason_and_exits(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "garbage.db"
    bad.write_bytes(os.urandom(2000))
    done = _serve(env, AGENT_COORD_DB=str(bad))
    assert done.returncode == 1
    reply = json.loads(done.stdout)
    assert reply["id"] == 0
    assert reply["error"]["message"].startswith("STORE_UNAVAILABLE: the coordination database")
    assert reply["error"]["data"] == {"code": "STORE_UNAVAILABLE"}
    assert one_line(done.stderr).startswith("STORE_UNAVAILABLE:")
    done = _serve(env, AGENT_COORD_STALE_AFTER_S="-1")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["message"].startswith("agent-coord: bad setting: AGENT_COORD_STALE_AFTER_S")
    assert one_line(done.stderr).startswith("agent-coord: bad setting:")


def test_a_pool_root_that_cannot_be_listed_is_reported_not_raised(env: dict[str, str], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "pool-file"
    not_a_dir.write_text("a file where the pool root should be\n")
    done = cli(env, "validate", "--json", AGENT_COORD_POOL_ROOT=str(not_a_dir))
    assert "Traceback" not in done.stderr
    if done.returncode == 1:  # refused at start-up (a misconfigured pool root): one coded line
        assert one_line(done.stderr).split(":", 1)[0] in {c.value for c in ErrorCode}
    else:
        assert done.returncode in (0, 3), done.stderr
    alloc = cli(
        env,
        "hook",
        "worktree-create",
        stdin=json.dumps({"session_id": "s", "name": "n", "cwd": env["AGENT_COORD_REPO"]}),
        AGENT_COORD_POOL_ROOT=str(not_a_dir),
    )
    assert alloc.returncode == 1 and alloc.stdout == ""
    assert one_line(alloc.stderr).split(":", 1)[0] in {c.value for c in ErrorCode}


def _without_file_permission_override() -> list[str]:
    """A command prefix under which file modes bind: root ignores them, so root drops the capabilities
    that override them (`setpriv`), as an unprivileged user never had them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to make file modes bind for root")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_a_pool_root_without_read_permission_is_one_coded_line(env: dict[str, str], tmp_path: Path) -> None:
    """A real folder whose mode forbids reading it: every entry point names the setting and the cause and
    says what to do, and the folder is left as it was."""
    pool = Path(env["AGENT_COORD_POOL_ROOT"])
    pool.mkdir()
    assert cli(env, "validate", "--repair").returncode == 0  # the pool root is agent-coord's own
    before = sorted(p.name for p in pool.iterdir())
    pool.chmod(0)
    try:
        prefix = _without_file_permission_override()
        hook_input = json.dumps({"session_id": "s", "name": "n", "cwd": env["AGENT_COORD_REPO"]})
        for args, stdin in ((["validate", "--json"], ""), (["hook", "worktree-create"], hook_input)):
            done = subprocess.run(
                [*prefix, sys.executable, "-m", "agent_coord", *args],
                input=stdin,
                capture_output=True,
                text=True,
                env=_env(env),
                timeout=60,
            )
            assert done.returncode == 1 and done.stdout == "", (args, done.stdout, done.stderr)
            line = one_line(done.stderr)
            assert line.startswith("INVALID_ARGUMENT: AGENT_COORD_POOL_ROOT"), line
            assert "Permission denied" in line and "Next: set AGENT_COORD_POOL_ROOT" in line, line
    finally:
        pool.chmod(0o755)
    assert sorted(p.name for p in pool.iterdir()) == before


async def test_a_store_error_in_process_is_coded(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"SQLite format 3\x00" + os.urandom(500))
    with pytest.raises(CoordError) as caught:
        await Store.open(bad)
    assert caught.value.code == ErrorCode.STORE_UNAVAILABLE


async def test_a_listing_caught_mid_change_is_retried(repo: Path, tmp_path: Path) -> None:
    """A git that fails the way a concurrent `git worktree remove` makes it fail, once, then works: the
    listing succeeds. One that always fails so is reported, after a bounded number of attempts."""
    counter = tmp_path / "calls"
    wrapper = tmp_path / "flaky-git"
    real_git = shutil.which("git")
    assert real_git is not None
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo x >> "{counter}"\n'
        f'if [ "$(wc -l < "{counter}")" -le "$FAILS" ]; then\n'
        "  echo 'fatal: failed to read .git/worktrees/wt-41/commondir: No such file or directory' >&2; exit 128\n"
        "fi\n"
        f'exec "{real_git}" "$@"\n'
    )
    wrapper.chmod(0o755)
    os.environ["FAILS"] = "1"
    try:
        listed = await GitDriver(str(wrapper)).worktrees(repo)
        assert [w.path for w in listed] == [str(repo)]
        assert len(counter.read_text().splitlines()) == 2
        counter.unlink()
        os.environ["FAILS"] = "99"
        from agent_coord.engine.git.driver import LISTING_ATTEMPTS, GitError

        with pytest.raises(GitError, match="commondir"):
            await GitDriver(str(wrapper)).worktrees(repo)
        assert len(counter.read_text().splitlines()) == LISTING_ATTEMPTS
    finally:
        os.environ.pop("FAILS", None)


def _read_only_mount_works(directory: Path) -> bool:
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f"mount --bind {directory} {directory} && mount -o remount,ro,bind {directory} {directory}",
        ],
        capture_output=True,
    )
    return probe.returncode == 0


def test_a_read_only_database_is_one_coded_line(env: dict[str, str], tmp_path: Path) -> None:
    """A database on a read-only file system (a bind mount made read-only in a user namespace: root
    ignores file modes, so a mode would prove nothing)."""
    if shutil.which("unshare") is None or not _read_only_mount_works(tmp_path):
        pytest.skip("no user namespaces here to mount a read-only file system")
    directory = tmp_path / "ro"
    directory.mkdir()
    db = directory / "coord.db"
    assert cli(env, "status", AGENT_COORD_DB=str(db)).returncode == 0
    before = digest(db)
    script = (
        f'mount --bind "{directory}" "{directory}" && mount -o remount,ro,bind "{directory}" "{directory}" '
        f'&& exec "{sys.executable}" -m agent_coord validate --repair'
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=_env(env, AGENT_COORD_DB=str(db)),
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("STORE_UNAVAILABLE:") and "read-only" in line, line
    assert digest(db) == before


def test_a_database_locked_through_every_retry_is_one_coded_line(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds the write lock and never lets go: the command gives up after its bounded
    retries with one line (the waits are shortened here; the rule is the same)."""
    from agent_coord.cli import main

    db = fresh_db(env)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AGENT_COORD_STORE_WAIT_S", "0.05")
    holder = sqlite3.connect(db, timeout=0)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(SystemExit) as exited:
            main(["validate", "--repair"])
    finally:
        holder.rollback()
        holder.close()
    assert exited.value.code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("STORE_UNAVAILABLE:") and "locked" in line, line
