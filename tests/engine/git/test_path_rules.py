"""The confinement guard's path rules with Windows paths, proven on Linux (engine/git/path_rules.py).

The guard resolves what is real, then asks pure rules: is this entry directly inside the pool root,
with a name no platform reads as another, and not the repository or an ancestor of it? May this
relative path be written under a slot? May this folder be a pool root at all? Here those rules meet
`PureWindowsPath`: drive letters, UNC shares, `\\` and `/` mixed, `..`, case-insensitive names, the
trailing dots and spaces Windows drops, device names, streams. The property tests compare every
accepted path with a model of how Windows itself would resolve it: nothing accepted may land
anywhere but where the rule says.
"""

from __future__ import annotations

from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_coord.engine.git.path_rules import entry_problem, name_problem, pool_root_problem, relative_parts

W = PureWindowsPath
POOL = W("C:\\Users\\Ana María\\src\\repo.worktrees")
REPO = W("C:\\Users\\Ana María\\src\\repo")
COMMON = REPO / ".git"
UNC_POOL = W("\\\\fileserver\\projects\\pool")
UNC_REPO = W("\\\\fileserver\\projects\\repo")


def windows_model(path: str) -> tuple[str, ...]:
    """How Windows resolves `path` (absolute): both slashes separate, `.` stays, `..` climbs (never above
    the drive or share), trailing dots and spaces are dropped from each name, case does not count."""
    p = W(path)
    names: list[str] = [p.drive.replace("/", "\\").casefold()]
    for raw in path[len(p.drive) :].replace("/", "\\").split("\\"):
        if raw in ("", "."):
            continue
        stripped = raw.rstrip(". ")
        if raw == ".." or (not stripped and raw.startswith("..")):  # `.. ` is `..`
            if len(names) > 1:
                names.pop()
        elif stripped:  # `...` and `. ` are `.`
            names.append(stripped.casefold())
    return tuple(names)


# ---- examples ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    [
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-1",
        "c:/users/ana maría/SRC/Repo.Worktrees/wt-1",  # case and separators do not count on Windows
        "C:\\Users\\Ana María\\src\\repo.worktrees/wt 2 con espacios",
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-ñ",
    ],
)
def test_a_slot_inside_the_pool_passes_whatever_the_case_and_slashes(entry: str) -> None:
    assert entry_problem(POOL, REPO, COMMON, W(entry)) is None


@pytest.mark.parametrize(
    "entry",
    [
        "C:\\Users\\Ana María\\src\\repo.worktrees\\..\\repo",  # the repository through `..`
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-1\\..",
        "C:\\Users\\Ana María\\src\\repo.worktrees\\.. ",  # Windows reads `.. ` as `..`
        "C:\\Users\\Ana María\\src\\repo.worktrees\\...",
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-1.",  # would open wt-1
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-1 ",
        "C:\\Users\\Ana María\\src\\repo.worktrees\\CON",
        "C:\\Users\\Ana María\\src\\repo.worktrees\\nul.txt",
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-1:hidden",  # a stream of wt-1
        "C:\\Users\\Ana María\\src\\repo.worktrees\\wt-1\\deeper",
        "D:\\Users\\Ana María\\src\\repo.worktrees\\wt-1",  # another drive
        "\\\\fileserver\\projects\\pool\\wt-1",  # a share
        "Users\\Ana María\\src\\repo.worktrees\\wt-1",  # relative
        "C:repo.worktrees\\wt-1",  # drive-relative
        "C:\\Users\\Ana María\\src\\repo",
        "C:\\Users\\Ana María\\src",
        "C:\\",
    ],
)
def test_an_entry_that_escapes_or_aliases_is_refused(entry: str) -> None:
    assert entry_problem(POOL, REPO, COMMON, W(entry)) is not None


def test_unc_pools_compare_server_and_share_without_case() -> None:
    assert entry_problem(UNC_POOL, UNC_REPO, UNC_REPO / ".git", W("//FILESERVER/Projects/POOL/wt-1")) is None
    assert entry_problem(UNC_POOL, UNC_REPO, UNC_REPO / ".git", W("\\\\fileserver\\other\\pool\\wt-1")) is not None
    assert entry_problem(UNC_POOL, UNC_REPO, UNC_REPO / ".git", W("\\\\elsewhere\\projects\\pool\\wt-1")) is not None


@pytest.mark.parametrize(
    ("root", "refused"),
    [
        ("C:\\Users\\Ana María\\src\\repo.worktrees", False),
        ("c:\\users\\ana maría\\src\\REPO", True),  # the repository, in another case
        ("C:/Users/Ana María/src", True),  # its parent
        ("C:\\", True),
        ("C:\\Users", True),
        ("C:\\Users\\Ana María\\src\\repo\\.GIT\\pool", True),
        ("C:\\Users\\Ana María\\src\\repo\\.claude\\worktrees", False),  # inside the work tree is allowed
        ("D:\\pool", False),
        ("\\\\fileserver\\projects\\pool", False),
    ],
)
def test_a_pool_root_that_is_or_holds_the_repository_is_refused_on_windows(root: str, refused: bool) -> None:
    assert (pool_root_problem(W(root), REPO, COMMON) is not None) == refused


@pytest.mark.parametrize(
    ("name", "windows_only"),
    [
        ("wt-1.", True),
        ("wt-1 ", True),
        ("COM1", True),
        ("lpt9.log", True),
        ("a:b", True),
        ("a*b", True),
        ("..", False),
        (".", False),
        ("", False),
        ("a\x00b", False),
    ],
)
def test_names_windows_reads_as_others_are_refused_there(name: str, windows_only: bool) -> None:
    assert name_problem(name, windows=True) is not None
    assert (name_problem(name, windows=False) is None) == windows_only


# ---- properties ----------------------------------------------------------------------------------

TRICKY = st.sampled_from(
    [
        "..",
        ".",
        "...",
        ".. ",
        ". ",
        "wt-1",
        "WT-1",
        "wt-1.",
        "wt-1 ",
        "con",
        "Nul.txt",
        "a:b",
        "C:",
        "c:",
        "",
        "repo",
        "REPO",
        "repo.worktrees",
        "Repo.Worktrees",
        "src",
        "Ana María",
        "ñ",
        "x y",
        "~1",
        "\\",
        "/",
    ]
)
SEP = st.sampled_from(["\\", "/", "\\\\", "//"])
ROOTS = st.sampled_from(
    [
        "C:\\Users\\Ana María\\src\\repo.worktrees",
        "c:/users/ana maría/src/repo.worktrees",
        "C:/Users\\Ana María/src\\REPO.WORKTREES",
    ]
)


@st.composite
def windows_candidates(draw: st.DrawFn) -> str:
    root = draw(st.sampled_from([draw(ROOTS), "C:", "D:\\", "\\\\fileserver\\projects", ""]))
    tail = draw(st.lists(st.tuples(SEP, TRICKY), max_size=5))
    return root + "".join(sep + name for sep, name in tail)


@settings(max_examples=400, deadline=None)
@given(windows_candidates())
def test_no_windows_entry_outside_the_pool_is_ever_accepted(candidate: str) -> None:
    entry = W(candidate)
    if entry_problem(POOL, REPO, COMMON, entry) is not None:
        return
    where = windows_model(candidate)
    pool = windows_model(str(POOL))
    assert where[:-1] == pool, (candidate, where)
    assert where[-1] not in ("", ".", ".."), candidate
    assert where != windows_model(str(REPO)) and where not in [windows_model(str(p)) for p in REPO.parents]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(SEP, TRICKY), min_size=1, max_size=6))
def test_no_relative_windows_path_accepted_for_a_write_leaves_the_slot(tail: list[tuple[str, str]]) -> None:
    rel = "".join(sep + name for sep, name in tail)[1:]
    slot = "C:\\pool\\wt-1"
    try:
        parts = relative_parts(rel, PureWindowsPath)
    except ValueError:
        return
    where = windows_model(slot + "\\" + rel)
    inside = windows_model(slot)
    assert where[: len(inside)] == inside and len(where) > len(inside), (rel, where)
    assert tuple(p.casefold() for p in parts) == where[len(inside) :], (rel, parts, where)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b", "", "c d", "\\", "..\\x"]), min_size=1, max_size=6))
def test_no_relative_posix_path_accepted_for_a_write_leaves_the_slot(names: list[str]) -> None:
    rel = "/".join(names)
    try:
        parts = relative_parts(rel, PurePosixPath)
    except ValueError:
        return
    resolved: list[str] = []
    for name in rel.split("/"):
        if name in ("", "."):
            continue
        assert name != "..", rel
        resolved.append(name)
    assert tuple(resolved) == parts and parts


def test_the_host_flavour_is_the_default() -> None:
    assert relative_parts("a/b") == tuple(PurePath("a/b").parts)


# ---- the real guard, with spaces and non-ASCII in every path -------------------------------------


@pytest.mark.anyio
async def test_a_pool_whose_paths_hold_spaces_and_non_ascii_works_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agent_coord.config import Settings
    from agent_coord.engine.coordinator import Coordinator
    from tests.conftest import make_repo

    home = tmp_path / "Ana María" / "código fuente"
    repo = make_repo(home, "mi repo ñ")
    (repo / ".env").write_text("SECRETO=sí\n")
    (repo / ".worktreeinclude").write_text(".env\n")
    monkeypatch.setenv("AGENT_COORD_DB", str(tmp_path / "estado dé" / "coord.db"))
    monkeypatch.setenv("AGENT_COORD_REPO", str(repo))
    monkeypatch.setenv("AGENT_COORD_MANICTIME_DB", "")
    async with Coordinator.open(Settings(), register=True, agent_id="agent-ñ") as c:
        a = await c.pool.allocate("feat/ñandú-sin-espacios")
        slot = Path(a.path)
        assert slot.parent == (home / "mi repo ñ.worktrees").resolve()
        assert (slot / ".env").read_text() == "SECRETO=sí\n"
        (slot / "notas de trabajo é.txt").write_text("trabajo\n")
        forced = await c.pool.release(worktree_id=a.worktree_id, force=True)
        assert forced.rescue_ref
        assert (await c.validate(repair=True)).findings == []
        b = await c.pool.allocate("feat/otra")
        assert (await c.pool.release(worktree_id=b.worktree_id, remove=True)).state == "REMOVED"
        assert not slot.exists()
