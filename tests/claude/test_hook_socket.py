"""Hooks answered by the session's own MCP server over its private socket (agent_coord/claude/hook_socket.py).

The test process plays Claude Code: it starts `agent-coord serve` and runs the hooks, both as its
children, as Claude Code does. Which process did the work shows in the hook agent's record: its
`server_pid` is the process that registered it (the server, or the hook process itself).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_coord.claude import hook_socket
from agent_coord.claude.hooks import hook_lease_s
from agent_coord.config import Settings
from tests.claude.test_hooks import AGENT, SESSION, create_payload, created_path, hook, session_payload, state
from tests.paths import HOOK_HOST_OFF

pytestmark = pytest.mark.skipif(not hook_socket.supported(), reason="the hooks' socket is for Linux")
AGENT_COORD = Path(sys.executable).parent / "agent-coord"


def full_env(env: dict[str, str]) -> dict[str, str]:
    """What the hooks of tests/claude/test_hooks.py run with (and so what the server must run with)."""
    return {**{k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)}, **env}


def wait_for(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def server(env: dict[str, str], repo: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The session's MCP server, started in the project directory, listening for this process's hooks."""
    key = hook_socket.process_key(os.getpid())
    assert key is not None
    sockets = hook_socket.socket_dir(create=True)
    assert sockets is not None
    path = Path(sockets) / hook_socket.socket_name(key[1])
    path.unlink(missing_ok=True)  # left by a server an earlier test of this process killed
    proc = subprocess.Popen(
        [str(AGENT_COORD), "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=full_env(env),
        cwd=repo,
    )
    try:
        wait_for(lambda: path.exists() or proc.poll() is not None, "the server's socket")
        assert proc.poll() is None, "the server exited"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the MCP session ends: the server stops and takes its socket away
        proc.wait(timeout=60)
    assert not path.exists()


def test_the_sessions_server_answers_its_hooks_as_the_hook_would(
    env: dict[str, str], repo: Path, settings: Settings, server: subprocess.Popen[bytes]
) -> None:
    path = created_path(hook(env, "worktree-create", create_payload(repo, "served")))
    slots, agents = state(settings)
    assert slots[str(path)].owner == AGENT
    assert agents[AGENT].server_pid == server.pid, "answered by the session's server"
    assert agents[AGENT].pid == os.getpid(), "registered for the Claude Code process, as the hook would"
    assert agents[AGENT].origin == "session"
    # The hook agent's long lease, as the hook would give it and its slot (not the server's own).
    lease = hook_lease_s(settings)
    assert lease > 10 * settings.stale_after_s
    assert agents[AGENT].lease_expires_at > time.time() + lease - 600
    assert slots[str(path)].lease_expires_at > time.time() + lease - 600

    started = hook(env, "session-start", session_payload(repo, "SessionStart"))
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("agent-coord: your worktree: wt-") and str(path) in started.stdout

    removed = hook(env, "worktree-remove", {"session_id": SESSION, "cwd": str(repo), "worktree_path": str(path)})
    assert removed.returncode == 0 and removed.stdout == "", removed.stderr
    assert removed.stderr.strip().endswith(f"is FREE ({path})")

    # Refusals read the same, in one line, nothing on stdout.
    bad = hook(env, "worktree-remove", "{}")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("INVALID_ARGUMENT: hook input") and bad.stderr.count("\n") == 1
    usage = hook(env, "session-start", session_payload(repo, "SessionStart"), AGENT_COORD_POOL_MAX="many")
    assert usage.returncode == 2 and usage.stdout == ""
    assert usage.stderr.startswith("agent-coord: bad setting: AGENT_COORD_POOL_MAX")


def test_a_hook_the_server_would_answer_otherwise_works_in_its_own_process(
    env: dict[str, str], repo: Path, settings: Settings, server: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    # Another setting than the server's: the hook does the work itself, with its own settings.
    other = "fedcba98-7654-3210-ffff-eeeeddddcccc"
    created_path(hook(env, "worktree-create", create_payload(repo, "own", other), AGENT_COORD_BRANCH_PREFIX="own-"))
    _, agents = state(settings)
    assert agents["claude-fedcba98-765"].server_pid not in (server.pid, os.getpid())
    # Another agent process (a program between Claude Code and the hook that is not a wrapper): the
    # server does not act for it, though the hook finds its grandparent's socket.
    third = "0badc0de-0000-1111-2222-333344445555"
    payload = json.dumps(create_payload(repo, "third", third))
    relay = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
    wrapped = subprocess.run(
        [sys.executable, "-c", relay, str(AGENT_COORD), "hook", "worktree-create"],
        input=payload,
        capture_output=True,
        text=True,
        env=full_env(env),
        timeout=120,
    )
    assert wrapped.returncode == 0, wrapped.stderr
    _, agents = state(settings)
    assert agents["claude-0badc0de-000"].server_pid != server.pid
    assert agents["claude-0badc0de-000"].pid not in (os.getpid(), server.pid)


def test_the_socket_is_private_and_a_shared_directory_is_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = hook_socket.socket_dir(create=True)
    assert made == str(tmp_path / "agent-coord")
    assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700
    os.chmod(made, 0o755)  # others could see and reach the sockets: not ours to use
    assert hook_socket.socket_dir(create=True) is None
    os.rmdir(made)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, made)  # a link another user could point anywhere
    assert hook_socket.socket_dir(create=True) is None
    assert hook_socket.find_socket() is None


def test_a_server_that_takes_no_request_leaves_the_hook_to_work_itself(
    env: dict[str, str], repo: Path, settings: Settings
) -> None:
    """A socket under our agent process's name whose server never answers (stopped, its loop stuck):
    the hook waits `ACCEPT_TIMEOUT_S` at most, then does the work in its own process."""
    # A short directory of its own: a socket path has at most 107 bytes, and tmp_path is long.
    run_dir = Path(tempfile.mkdtemp(prefix="ac-"))  # mode 0700, as XDG_RUNTIME_DIR is
    (run_dir / "agent-coord").mkdir(mode=0o700)
    key = hook_socket.process_key(os.getpid())
    assert key is not None
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.bind(str(run_dir / "agent-coord" / hook_socket.socket_name(key[1])))
    stuck.listen(8)  # connections are queued by the kernel and never read
    try:
        path = created_path(hook(env, "worktree-create", create_payload(repo, "stuck"), XDG_RUNTIME_DIR=str(run_dir)))
    finally:
        stuck.close()
        shutil.rmtree(run_dir)
    slots, agents = state(settings)
    assert slots[str(path)].owner == AGENT
    assert agents[AGENT].server_pid != os.getpid()


def test_a_starting_server_removes_the_sockets_of_agent_processes_that_are_gone(tmp_path: Path) -> None:
    from agent_coord.claude.hook_server import _remove_stale

    key = hook_socket.process_key(os.getpid())
    assert key is not None
    live = tmp_path / hook_socket.socket_name(key[1])
    gone = tmp_path / hook_socket.socket_name(f"{os.getpid()}-1")  # this pid, another start: a reuse
    never = tmp_path / hook_socket.socket_name("999999999-5")
    unrelated = tmp_path / "notes.txt"
    for path in (live, gone, never, unrelated):
        path.write_text("")
    _remove_stale(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, unrelated.name])


def test_a_served_hook_works_over_the_servers_own_engine(
    env: dict[str, str], repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's answer acts for the hook's agent over its own engine: no second one is opened."""
    import anyio

    from agent_coord.claude import hook_run
    from agent_coord.config import load_settings
    from agent_coord.engine.coordinator import Coordinator

    for key, value in full_env(env).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(repo)

    async def answer() -> hook_run.Answer:
        async with Coordinator.open(load_settings(), register=True) as server:
            with monkeypatch.context() as m:
                m.setattr(Coordinator, "open", None)  # any second engine would fail here
                raw = json.dumps(create_payload(repo, "over-the-server")).encode()
                return await hook_run.answer("worktree-create", raw, chdir=False, claude_pid="", server=server)

    out = anyio.run(answer)
    assert out.code == 0 and out.stdout is not None and Path(out.stdout).is_dir(), out.stderr
