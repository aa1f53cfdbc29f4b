"""What differs between Linux, macOS and Windows, proven as far as this Linux machine can: the paths
that run elsewhere are forced here (no /proc, Windows-style paths), and the rest is mypy's
`--platform win32` and `--platform darwin` in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath, PureWindowsPath

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent_coord.cli import app  # every command registered
from agent_coord.engine.liveness import judge
from agent_coord.platform import filesystems, process_identity
from agent_coord.platform.termination import end_tree
from agent_coord.pool_file.import_rows import map_windows_path, windows_name, windows_path
from tests.agent_proc import exited
from tests.conftest import git
from tests.paths import HOOK_HOST_OFF


def wait_until(condition: object, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def no_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine as macOS or Windows see it: no /proc, no Linux boot id."""
    monkeypatch.setattr(process_identity, "PROC", tmp_path / "no-proc")
    monkeypatch.setattr(process_identity, "BOOT_ID_FILE", tmp_path / "no-proc" / "boot_id")


def test_without_proc_the_create_time_decides(no_proc: None) -> None:
    me = psutil.Process()
    assert process_identity.start_since_boot(me.pid) is None
    assert judge.process_state(me.pid, me.create_time(), None) == "alive"
    # Another start under the same pid (what a reused pid looks like): proof of death without /proc,
    # because the create time there is a stamp a clock step does not move.
    assert judge.process_state(me.pid, me.create_time() - 5.0, None) == "reused"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    created = psutil.Process(child.pid).create_time()
    child.wait()
    assert judge.process_state(child.pid, created, None) == "gone"


def test_without_proc_the_boot_id_is_stable_and_marked_weaker(no_proc: None) -> None:
    first = process_identity.boot_id()
    assert first == process_identity.boot_id()
    assert first.startswith(process_identity.FALLBACK_BOOT_PREFIX)


def test_with_proc_the_start_since_boot_is_read() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("this machine has no /proc")
    assert process_identity.start_since_boot(os.getpid()) is not None
    assert not process_identity.boot_id().startswith(process_identity.FALLBACK_BOOT_PREFIX)


def test_end_tree_stops_a_process_and_its_children() -> None:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])",
        ]
    )
    assert wait_until(lambda: psutil.Process(parent.pid).children())
    child = psutil.Process(parent.pid).children()[0]
    end_tree(parent.pid, hard=True)
    parent.wait(timeout=10)
    assert wait_until(lambda: exited(child))


# ---- network filesystems --------------------------------------------------------------------------

MOUNTS = [("/", "ext4"), ("/mnt/team", "nfs4"), ("/mnt/team/local", "ext4"), ("/Volumes/share", "smbfs")]


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/home/me/.local/state/agent-coord/coord.db", None),
        ("/mnt/team/coord.db", "nfs4"),
        ("/mnt/team/local/coord.db", None),  # the deepest mount decides
        ("/Volumes/share/dir with spaces/coord.db", "smbfs"),
        ("/mnt/teamwork/coord.db", None),  # a prefix of the name is not a parent
    ],
)
def test_network_filesystem_is_found_by_its_mount(path: str, found: str | None) -> None:
    assert filesystems.network_fstype(PurePosixPath(path), MOUNTS) == found


@pytest.mark.parametrize(
    ("path", "unc"),
    [
        ("\\\\server\\share\\coord.db", True),
        ("//server/share/coord.db", True),
        ("C:\\Users\\me\\coord.db", False),
        ("\\\\?\\C:\\Users\\me\\coord.db", False),  # a long-path prefix, not a share
        ("/home/me/coord.db", False),
    ],
)
def test_unc_paths_are_network_locations(path: str, unc: bool) -> None:
    assert filesystems.is_unc(path) is unc


def test_a_database_on_a_share_is_refused_with_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(filesystems.NetworkShareError, match="local disk") as caught:
        filesystems.refuse_network_share(Path("\\\\server\\share\\coord.db"))
    assert "\n" not in str(caught.value)
    filesystems.refuse_network_share(tmp_path / "coord.db")  # a local file is fine


# ---- Windows paths in a legacy pool file ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("C:/work/repo.worktrees/wt-01", "wt-01"),
        ("C:\\work\\repo.worktrees\\wt-01", "wt-01"),
        ("c:\\work/mixed\\wt-01", "wt-01"),
        ("\\\\server\\share\\repo.worktrees\\wt-01", "wt-01"),
        ("C:/work/repo.worktrees/wt-01. ", "wt-01"),  # Windows drops trailing dots and spaces
        ("C:/Users/Zoë Müller/repo.worktrees/wt 02", "wt 02"),
    ],
)
def test_windows_paths_are_recognised_and_named(text: str, name: str) -> None:
    path = windows_path(text)
    assert path is not None and windows_name(path) == name


@pytest.mark.parametrize("text", ["/home/me/wt-01", "wt-01", "pool/wt-01", "~/wt-01"])
def test_posix_paths_are_not_windows_paths(text: str) -> None:
    assert windows_path(text) is None


def test_mapping_is_case_insensitive_only_when_unique(tmp_path: Path) -> None:
    root = tmp_path / "pool"
    worktrees = {root / "WT-01", root / "wt-02", root / "Wt-02"}
    assert map_windows_path(PureWindowsPath("C:/x/wt-01"), root, worktrees) == root / "WT-01"
    assert map_windows_path(PureWindowsPath("C:/x/wt-02"), root, worktrees) == root / "wt-02"  # exact wins
    assert map_windows_path(PureWindowsPath("C:/x/WT-02"), root, worktrees) is None  # two candidates
    assert map_windows_path(PureWindowsPath("C:/x/other"), root, worktrees) is None


@given(st.text(alphabet="abcXYZ0-_. éü", min_size=1, max_size=12))
def test_a_windows_name_never_ends_in_a_dot_or_space(name: str) -> None:
    path = windows_path(f"C:/pool/{name}")
    assert path is not None
    got = windows_name(path)
    assert not got.endswith((" ", "."))


def test_legacy_pool_file_from_windows_imports_what_it_can(tmp_path: Path, repo: Path, settings: object) -> None:
    pool = tmp_path / "pool"
    git(repo, "worktree", "add", "-q", "--detach", str(pool / "wt 01"))
    git(repo, "worktree", "add", "-q", "-b", "feat/ü", str(pool / "wt-02"))
    text = (
        "| Worktree | Status | Agent | Branch |\n"
        "|---|---|---|---|\n"
        "| C:\\Users\\Zoë\\repo.worktrees\\wt 01 | free | - | - |\n"
        "| C:/Users/Zoë/repo.worktrees/WT-02. | busy | alice | feat/ü |\n"
    )
    legacy = tmp_path / "worktrees.pool.md"
    legacy.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(app, ["import-pool", str(legacy), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["adopted"] == 2

    unknown = tmp_path / "unknown.pool.md"
    unknown.write_text(
        "| Worktree | Status | Agent | Branch |\n|---|---|---|---|\n| D:/elsewhere/wt-09 | free | - | - |\n",
        encoding="utf-8",
    )
    refused = CliRunner().invoke(app, ["import-pool", str(unknown)])
    assert refused.exit_code == 1
    said = refused.stderr.strip()
    assert "line 3: D:/elsewhere/wt-09 is a Windows path" in said and str(pool.resolve() / "wt-09") in said


# ---- the database setting -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["C:\\Users\\Zoë\\coord.db", "c:/state/coord.db", "/tmp/dir with space/coord.db"])
def test_a_windows_or_posix_path_is_a_database_file(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent_coord.config import Settings

    monkeypatch.setenv("AGENT_COORD_DB", value)
    assert str(Settings().db) == value


@pytest.mark.parametrize(
    "value", ["mysql://coord:s3cret@db/x", "sqlite://coord:s3cret@x/y", "postgresql://coord:s3cret@h:x/y"]
)
def test_a_url_is_never_taken_as_a_file_name_and_its_secret_is_never_shown(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import ValidationError

    from agent_coord.config import Settings

    monkeypatch.setenv("AGENT_COORD_DB", value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "AGENT_COORD_DB" in str(caught.value) or "db" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("value", ["postgresql://coord:s3cret@db.example/coord", "postgres://coord:s3cret@db/x"])
def test_a_postgresql_url_selects_postgresql_and_its_secret_is_never_shown(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_coord.config import Settings
    from agent_coord.store_target import PostgresUrl

    monkeypatch.setenv("AGENT_COORD_DB", value)
    settings = Settings()
    assert isinstance(settings.db, PostgresUrl)
    assert "s3cret" not in f"{settings!r} {settings.db} {settings.model_dump()}"


# ---- hooks given paths and names from elsewhere ---------------------------------------------------


def _hook(env: dict[str, str], event: str, payload: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if (not k.startswith("AGENT_COORD_") or k == HOOK_HOST_OFF)} | env
    agent_coord = Path(sys.executable).parent / "agent-coord"
    return subprocess.run(
        [str(agent_coord), "hook", event],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


@pytest.mark.parametrize(
    "path",
    ["C:\\Users\\Zoë\\repo.worktrees\\wt-01", "\\\\server\\share\\repo.worktrees\\wt-01", "c:/mixed\\wt-01. "],
)
def test_worktree_remove_with_a_windows_path_is_a_clear_refusal(env: dict[str, str], repo: Path, path: str) -> None:
    before = git(repo, "worktree", "list", "--porcelain")
    done = _hook(env, "worktree-remove", {"worktree_path": path, "cwd": str(repo)})
    assert done.returncode == 1
    assert done.stderr.startswith("NOT_FOUND: ") and path in done.stderr and len(done.stderr.splitlines()) == 1
    assert git(repo, "worktree", "list", "--porcelain") == before


@pytest.mark.parametrize("name", ["wt é 01", "C:\\Users\\x", "名前 with spaces", "trailing. "])
def test_worktree_create_turns_any_name_into_a_valid_branch(env: dict[str, str], repo: Path, name: str) -> None:
    done = _hook(env, "worktree-create", {"name": name, "cwd": str(repo), "session_id": "s-1"})
    assert done.returncode == 0, done.stderr
    slot = Path(done.stdout.strip().splitlines()[-1])
    assert slot.is_dir() and slot.parent == Path(env["AGENT_COORD_POOL_ROOT"]).resolve()
    branch = git(slot, "branch", "--show-current").strip()
    assert branch.startswith("worktree-")
    assert (
        subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True, cwd=repo).returncode == 0
    )


# ---- the Claude Code exit watcher judges a process as liveness does -------------------------------


def test_the_exit_watcher_knows_a_process_by_its_start_since_boot() -> None:
    from agent_coord.claude.watch import _is_same_process, wait_for_exit

    me = psutil.Process()
    since_boot = process_identity.start_since_boot(me.pid)
    if since_boot is None:
        pytest.skip("this machine has no /proc")
    # The start since boot decides where known: a create time moved by a clock step changes nothing.
    assert _is_same_process(me.pid, me.create_time() + 30.0, since_boot)
    assert not _is_same_process(me.pid, me.create_time(), since_boot + 5.0)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    created, child_since_boot = psutil.Process(child.pid).create_time(), process_identity.start_since_boot(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    assert wait_for_exit(child.pid, created, bound_s=30.0, since_boot=child_since_boot)
    child.wait()


def test_the_exit_watcher_without_proc_uses_the_create_time(no_proc: None) -> None:
    from agent_coord.claude.watch import _is_same_process

    me = psutil.Process()
    assert _is_same_process(me.pid, me.create_time(), None)
    assert not _is_same_process(me.pid, me.create_time() + 30.0, None)


def test_the_claude_setup_is_never_linked_through_a_symlink_out_of_the_slot(tmp_path: Path) -> None:
    """A branch may commit `.claude` as a link to a folder elsewhere: linking the setup into the slot
    must not write into that folder."""
    from agent_coord.claude.slot_setup import _link_missing
    from agent_coord.engine.git.slot_files import SlotFiles

    main, slot, elsewhere = tmp_path / "main", tmp_path / "slot", tmp_path / "elsewhere"
    (main / ".claude").mkdir(parents=True)
    (main / ".claude" / "settings.json").write_text("{}")
    (main / ".mcp.json").write_text("{}")
    slot.mkdir()
    elsewhere.mkdir()
    (slot / ".claude").symlink_to(elsewhere)
    with SlotFiles(slot) as files:
        linked = _link_missing(main, files, [".claude/settings.json", ".mcp.json"])
    assert linked == [".mcp.json"]
    assert list(elsewhere.iterdir()) == []
