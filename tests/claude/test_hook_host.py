"""The hook host (agent_coord/claude/hook_host.py): a hook that no server answers works in-process and
starts the host; the next hooks from the same directory and environment are answered by it, acting for
their own agent process, as they would have answered themselves.

Which process did the work shows in what the hook process imported (`-X importtime`): one answered by
the host never imports the engine's pydantic.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from agent_coord import LAUNCHER_PID
from agent_coord.claude import hook_socket
from agent_coord.claude.hook_host import running_hosts
from agent_coord.config import Settings
from agent_coord.engine.store.records import SlotState
from tests.agent_proc import exited
from tests.claude.test_hook_socket import wait_for
from tests.claude.test_hooks import create_payload, created_path, session_payload, state
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.skipif(not hook_socket.supported(), reason="the hook host is for Linux")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ac-"))  # mode 0700 and a short path, as XDG_RUNTIME_DIR is
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host_env(env: dict[str, str], run_dir: Path) -> Iterator[dict[str, str]]:
    """The hooks' whole environment, the host on; every host started under it is stopped afterwards."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    full |= env | {HOOK_HOST_OFF: "120", "XDG_RUNTIME_DIR": str(run_dir)}
    try:
        yield full
    finally:
        for proc in hosts(run_dir):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
            wait_for(lambda: exited(proc), "a killed host")  # noqa: B023 (waited for at once)


def hosts(run_dir: Path) -> list[psutil.Process]:
    """The hook hosts started with `run_dir` as their runtime directory."""
    return running_hosts(str(run_dir))


def host_socket(run_dir: Path, repo: Path, env: dict[str, str]) -> Path:
    key = hook_socket.host_key(hook_socket.host_directory(str(repo)), env)
    return run_dir / "agent-coord" / hook_socket.host_socket_name(key)


def run_hook(
    env: dict[str, str], event: str, payload: dict[str, object], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The hook as Claude Code runs it, with what it imports on stderr (before its own lines)."""
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent_coord", "hook", event],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def imported(proc: subprocess.CompletedProcess[str], module: str) -> bool:
    return any(
        line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() == module
        for line in proc.stderr.splitlines()
    )


def own_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]


def as_created(proc: subprocess.CompletedProcess[str]) -> Path:
    return created_path(
        subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, "\n".join(own_lines(proc)))
    )


def test_a_hook_in_process_starts_the_host_which_answers_the_next_as_the_hook_would(
    host_env: dict[str, str], repo: Path, run_dir: Path, settings: Settings
) -> None:
    first = run_hook(host_env, "worktree-create", create_payload(repo, "one", "11111111-aaaa"), repo)
    assert imported(first, "pydantic"), "the first hook works in-process"
    path = as_created(first)
    sock = host_socket(run_dir, repo, host_env)
    wait_for(lambda: listening(sock), "the hook host")
    assert (sock.stat().st_mode & 0o777) == 0o600
    (log,) = sock.parent.glob("host-*.log")
    assert (log.stat().st_mode & 0o777) == 0o600

    second = run_hook(host_env, "worktree-create", create_payload(repo, "two", "22222222-bbbb"), repo)
    assert not imported(second, "pydantic"), "answered by the host"
    other = as_created(second)
    assert other != path
    slots, agents = state(settings)
    one, two = agents["claude-11111111-aaa"], agents["claude-22222222-bbb"]
    # Each hook acted for its own agent process (this test process: a hook's parent), with the hook's
    # lease; the server is the process that did the work (the hook itself, then the host), so that an
    # allocation a dead host leaves behind is provably stuck.
    assert one.pid == two.pid == os.getpid()
    assert two.server_pid in [p.pid for p in hosts(run_dir)] and one.server_pid != two.server_pid
    assert two.lease_expires_at - two.last_heartbeat == pytest.approx(one.lease_expires_at - one.last_heartbeat)
    assert slots[str(other)].owner == "claude-22222222-bbb"

    start = run_hook(host_env, "session-start", session_payload(repo, "SessionStart", "22222222-bbbb"), repo)
    assert start.returncode == 0 and not imported(start, "pydantic")
    assert "two" in start.stdout
    # From the slot (where Claude Code runs a `--worktree` session's hooks): the project's host answers.
    assert hook_socket.host_directory(str(other)) == str(repo)
    in_slot = run_hook(host_env, "session-start", session_payload(other, "SessionStart", "22222222-bbbb"), other)
    assert in_slot.returncode == 0 and not imported(in_slot, "pydantic")
    assert in_slot.stdout == start.stdout
    removed = run_hook(
        host_env,
        "worktree-remove",
        {**session_payload(repo, "WorktreeRemove", "22222222-bbbb"), "worktree_path": str(other)},
        repo,
    )
    assert removed.returncode == 0 and not imported(removed, "pydantic"), removed.stderr
    slots, _ = state(settings)
    assert slots[str(other)].owner is None
    # A refusal is the hook's own, too: one line on stderr, a non-zero exit.
    refused = run_hook(host_env, "worktree-create", {"cwd": str(repo), "session_id": "x"}, repo)
    assert refused.returncode == 1 and not imported(refused, "pydantic")
    assert own_lines(refused) == [
        "INVALID_ARGUMENT: hook input has no worktree name (expected `name` or `worktree_name`)"
    ]


def test_status_json_is_answered_by_the_host_with_the_same_output(
    host_env: dict[str, str], repo: Path, run_dir: Path
) -> None:
    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "agent_coord", "status", "--json"],
            capture_output=True,
            text=True,
            env=host_env,
            cwd=repo,
            timeout=120,
        )

    alone = status()
    assert alone.returncode == 0 and imported(alone, "pydantic")
    wait_for(lambda: listening(host_socket(run_dir, repo, host_env)), "the hook host")
    hosted = status()
    assert hosted.returncode == 0 and not imported(hosted, "pydantic")
    mine, its = json.loads(alone.stdout), json.loads(hosted.stdout)
    assert mine.keys() == its.keys()
    assert (mine["repo"], mine["pool"], mine["worktrees"]) == (its["repo"], its["pool"], its["worktrees"])
    # What depends on who asks (this test process's agent): the host asked as the command's own.
    assert mine["conflicts"] == its["conflicts"]
    assert mine["contention"]["caller_focused"] == its["contention"]["caller_focused"]


def test_the_host_answers_only_its_user_environment_and_directory(
    host_env: dict[str, str], repo: Path, run_dir: Path, tmp_path: Path
) -> None:
    created_path_of = run_hook(host_env, "worktree-create", create_payload(repo, "one", "11111111-aaaa"), repo)
    assert created_path_of.returncode == 0
    sock = host_socket(run_dir, repo, host_env)
    wait_for(lambda: listening(sock), "the hook host")

    def ask(**changes: object) -> bytes:
        request = {
            "hook": "session-start",
            "stdin": json.dumps(session_payload(repo, "SessionStart")),
            "cwd": str(repo),
            "env": hook_socket.deciding_env(host_env),
            "code": hook_socket.code_identity(),
            "launcher": LAUNCHER_PID,  # this process's parent, which still runs
            **changes,
        }
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(str(sock))
            conn.sendall(json.dumps(request).encode())
            conn.shutdown(socket.SHUT_WR)
            return conn.makefile("rb").readline()

    assert ask() == hook_socket.ACCEPTED
    not_answered = b"not answered\n"
    assert ask(env={**hook_socket.deciding_env(host_env), "AGENT_COORD_POOL_MAX": "3"}) == not_answered
    assert ask(code=["/elsewhere/agent_coord", "0.0.0"]) == not_answered
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert ask(cwd=str(elsewhere), stdin=json.dumps({"cwd": str(elsewhere)})) == not_answered
    assert ask(hook="pre-edit") == not_answered
    assert ask(stdin=7) == not_answered
    assert ask(launcher=1) == not_answered  # as from a hook whose parent is gone (re-parented)
    # From a subdirectory of the repository: answered (the default repository is git's answer from
    # there, the host's own); unless the hook names a path relative to its directory.
    sub = repo / "docs"
    sub.mkdir()
    assert ask(cwd=str(sub), stdin=json.dumps({"cwd": str(sub)})) == hook_socket.ACCEPTED
    relative = {"cwd": str(sub), "worktree_path": "../x", "session_id": "s"}
    assert ask(hook="worktree-remove", cwd=str(sub), stdin=json.dumps(relative)) == not_answered
    # Another environment names another host: that hook works in-process (and starts its own).
    other_env = host_env | {"AGENT_COORD_BRANCH_PREFIX": "other-"}
    assert host_socket(run_dir, repo, other_env) != sock
    other = run_hook(other_env, "worktree-create", create_payload(repo, "two", "22222222-bbbb"), repo)
    assert other.returncode == 0 and imported(other, "pydantic")


def test_a_killed_host_is_replaced_and_an_idle_one_exits(host_env: dict[str, str], repo: Path, run_dir: Path) -> None:
    env = host_env | {HOOK_HOST_OFF: "1"}
    assert run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    sock = host_socket(run_dir, repo, env)
    wait_for(lambda: not sock.exists() and not hosts(run_dir), "the idle host to exit")

    env = host_env
    assert run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    sock = host_socket(run_dir, repo, env)  # another idle time is another environment: another host
    wait_for(lambda: listening(sock), "the hook host")
    [first] = hosts(run_dir)
    first.send_signal(signal.SIGKILL)
    wait_for(lambda: exited(first), "the killed host")
    assert sock.exists(), "a killed host leaves its socket"
    after = run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo)
    assert after.returncode == 0 and imported(after, "pydantic"), "nobody answers: in-process"
    wait_for(lambda: [p.pid for p in hosts(run_dir)] not in ([], [first.pid]) and listening(sock), "a new host")
    answered = run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo)
    assert answered.returncode == 0 and not imported(answered, "pydantic")


def test_a_host_killed_during_an_allocation_leaves_the_hook_its_slot(
    host_env: dict[str, str], repo: Path, run_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    """The host dies while setting up the hook's new slot (its claim made, the branch checked out): the
    hook works in-process and gets a slot, not BRANCH_CONFLICT from the claim the dead host left."""
    hold = tmp_path / "hold.py"
    hold.write_text(
        "import os, pathlib, sys, time\n"
        f"here = pathlib.Path({str(tmp_path)!r})\n"
        "(here / f'setup-{os.getpid()}').touch()\n"
        "while not (here / 'go').exists():\n"
        "    time.sleep(0.02)\n"
    )
    env = host_env | {"AGENT_COORD_POST_CREATE": json.dumps([shlex.join([sys.executable, str(hold)])])}
    assert run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    wait_for(lambda: listening(host_socket(run_dir, repo, env)), "the hook host")
    [host] = hosts(run_dir)

    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps(create_payload(repo, "held", "33333333-dddd")))
    with payload.open() as stdin:
        hook = subprocess.Popen(
            [sys.executable, "-m", "agent_coord", "hook", "worktree-create"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=repo,
        )
    wait_for(lambda: any(tmp_path.glob("setup-*")), "the host's setup of the new slot")
    host.kill()
    wait_for(lambda: exited(host), "the killed host")
    (tmp_path / "go").touch()
    out, err = hook.communicate(timeout=120)

    path = created_path(subprocess.CompletedProcess(hook.args, hook.returncode, out, err))
    slots, _ = state(settings)
    assert slots[str(path)].state == SlotState.BUSY and slots[str(path)].owner == "claude-33333333-ddd"


def test_a_host_that_cannot_serve_is_not_started_again_at_once(
    host_env: dict[str, str], repo: Path, run_dir: Path
) -> None:
    """A configuration the engine refuses (a pool root holding other files) makes the host fail as it
    starts: for a minute no hook starts another (each would fail the same way); then one does."""
    pool = Path(host_env["AGENT_COORD_POOL_ROOT"])
    pool.mkdir(parents=True, exist_ok=True)
    (pool / "someone-else.txt").write_text("not a slot")
    refused = run_hook(host_env, "session-start", session_payload(repo, "SessionStart"), repo)
    assert "AGENT_COORD_POOL_ROOT" in refused.stderr
    key = hook_socket.host_key(hook_socket.host_directory(str(repo)), host_env)
    failed = run_dir / "agent-coord" / hook_socket.host_failed_name(key)
    wait_for(lambda: failed.exists() and not hosts(run_dir), "the host to fail")
    assert (failed.stat().st_mode & 0o777) == 0o600

    def start_host() -> bool:
        code = f"from agent_coord.claude import hook_socket; print(hook_socket.start_host({str(repo)!r}))"
        done = subprocess.run([sys.executable, "-c", code], env=host_env, capture_output=True, text=True, timeout=60)
        return done.stdout.strip() == "True"

    assert not start_host(), "within the back-off: not started"
    (pool / "someone-else.txt").unlink()
    os.utime(failed, (time.time() - 2 * hook_socket.FAILED_BACKOFF_S,) * 2)
    assert start_host(), "after it: started"
    wait_for(lambda: listening(host_socket(run_dir, repo, host_env)) and not failed.exists(), "the host")


def listening(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(sock))
        except OSError:
            return False
    return True


def test_a_changed_configuration_retires_the_host(
    host_env: dict[str, str], repo: Path, run_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[agent-coord]\n")
    env = host_env | {"AGENT_COORD_CONFIG": str(config)}
    assert run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    sock = host_socket(run_dir, repo, env)
    wait_for(lambda: listening(sock), "the hook host")
    [old] = hosts(run_dir)
    config.write_text("[agent-coord]\nbranch_prefix = 'changed-'\n")
    after = run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo)
    assert after.returncode == 0 and imported(after, "pydantic"), "the host answers nothing on older settings"
    wait_for(lambda: exited(old), "the stale host to go")


def test_hooks_start_no_host_when_it_is_turned_off(
    host_env: dict[str, str], repo: Path, run_dir: Path, tmp_path: Path
) -> None:
    env = host_env | {HOOK_HOST_OFF: "0"}
    assert run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    # The host is started before the hook exits, so it would be in the process table now.
    assert hosts(run_dir) == []
    assert not hook_socket.host_wanted({HOOK_HOST_OFF: "0"}) and hook_socket.host_wanted({HOOK_HOST_OFF: "5"})
    # Turned off in the settings file alone: no host either.
    config = tmp_path / "config.toml"
    config.write_text("[agent-coord]\nhook_host_idle_s = 0\n")
    env = {k: v for k, v in host_env.items() if k != HOOK_HOST_OFF} | {"AGENT_COORD_CONFIG": str(config)}
    assert run_hook(env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    assert hosts(run_dir) == []


def test_a_removed_database_retires_the_host(
    host_env: dict[str, str], repo: Path, run_dir: Path, env: dict[str, str]
) -> None:
    assert run_hook(host_env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    sock = host_socket(run_dir, repo, host_env)
    wait_for(lambda: listening(sock), "the hook host")
    [old] = hosts(run_dir)
    # The user starts over: the host still holds the old file open, and a hook would make a new one.
    for suffix in ("", "-wal", "-shm"):
        Path(env["AGENT_COORD_DB"] + suffix).unlink(missing_ok=True)
    after = run_hook(host_env, "worktree-create", create_payload(repo, "fresh", "33333333-cccc"), repo)
    assert imported(after, "pydantic"), "the host answers nothing over a removed database"
    as_created(after)
    assert Path(env["AGENT_COORD_DB"]).exists()
    wait_for(lambda: exited(old), "the stale host to go")


def test_the_host_imports_nothing_from_the_repository_and_a_removed_directory_is_no_failure(
    host_env: dict[str, str], repo: Path, run_dir: Path, tmp_path: Path
) -> None:
    # A repository with a module named like one the host imports: the host never runs it.
    marker = tmp_path / "ran"
    (repo / "argparse.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(3)\n")
    assert run_hook(host_env, "session-start", session_payload(repo, "SessionStart"), repo).returncode == 0
    wait_for(lambda: listening(host_socket(run_dir, repo, host_env)), "the hook host")
    assert not marker.exists()
    # A hook whose own directory was removed works from its payload's directory, as it always did.
    gone = tmp_path / "gone"
    gone.mkdir()
    remove_then_run = (
        "import os, subprocess, sys; os.rmdir(sys.argv[1]); "
        "sys.exit(subprocess.run(sys.argv[2:], input=sys.stdin.buffer.read()).returncode)"
    )
    hook = [sys.executable, "-m", "agent_coord", "hook", "session-start"]
    proc = subprocess.Popen(
        [sys.executable, "-c", remove_then_run, str(gone), *hook],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=host_env,
        cwd=gone,
    )
    _, err = proc.communicate(json.dumps(session_payload(repo, "SessionStart")).encode(), timeout=120)
    assert proc.returncode == 0, err
    assert b"unexpected" not in err


def test_the_host_answers_over_postgresql(host_env: dict[str, str], repo: Path, run_dir: Path, pg_url: Any) -> None:
    """On a PostgreSQL store (no database file to watch) the host answers as on SQLite, and the agent
    row it writes is the hook's own."""
    env = host_env | {"AGENT_COORD_DB": pg_url.secret_url()}
    first = run_hook(env, "worktree-create", create_payload(repo, "pg-one", "44444444-dddd"), repo)
    assert imported(first, "pydantic")
    as_created(first)
    wait_for(lambda: listening(host_socket(run_dir, repo, env)), "the hook host")
    second = run_hook(env, "worktree-create", create_payload(repo, "pg-two", "55555555-eeee"), repo)
    assert not imported(second, "pydantic"), "answered by the host"
    path = as_created(second)

    async def read() -> dict[str, Any]:
        from agent_coord.engine.store import Store

        store = await Store.open(pg_url)
        try:
            return {a.id: a for a in await store.agents()} | {s.path: s for s in await store.slots()}
        finally:
            await store.close()

    rows = anyio.run(read)
    assert rows["claude-44444444-ddd"].pid == rows["claude-55555555-eee"].pid == os.getpid()
    assert rows[str(path)].owner == "claude-55555555-eee"
