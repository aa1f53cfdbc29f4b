"""Branch names judged in Python agree with `git check-ref-format --branch`, the authority they stand in for."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git import branch_names
from agent_coord.engine.git.driver import GitDriver

# Refused on purpose though git takes it: `@` is HEAD in every revision git reads.
REFUSED_ON_PURPOSE = {"@"}


@pytest.fixture(scope="module")
def oracle_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh repository with no branch history for git's verdicts: in the caller's checkout, a name
    such as `@{-1}` would resolve to whatever branch was checked out before."""
    repo = tmp_path_factory.mktemp("oracle")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    return repo


def git_accepts(name: str, cwd: Path) -> bool:
    if name in REFUSED_ON_PURPOSE:
        return False
    result = subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True, check=False, cwd=cwd)
    return result.returncode == 0


def we_accept(driver: GitDriver, name: str) -> bool:
    try:
        got = anyio.run(branch_names.check_branch_name, name, driver)
    except CoordError as exc:
        assert exc.code == ErrorCode.INVALID_BRANCH, (name, exc)
        return False
    assert got == name  # a name is never changed on the way
    return True


def plain_names() -> list[str]:
    """Every name of up to four characters of the plain alphabet's kinds of character, and every
    combination of up to three of the fragments git's rules look at."""
    short = ["".join(p) for n in range(1, 5) for p in itertools.product("a._/-", repeat=n)]
    fragments = ["a", ".", "/", "-", "_", "lock", ".lock", "..", "Z9"]
    combined = ["".join(p) for n in range(1, 4) for p in itertools.product(fragments, repeat=n)]
    return sorted(set(short + combined))


def test_plain_names_get_git_verdict_without_git(tmp_path: Path, oracle_repo: Path) -> None:
    # A driver whose git does not exist: any name that needed git would fail loudly, not be judged.
    driver = GitDriver(git=str(tmp_path / "no-such-git"))
    names = plain_names()
    assert all(branch_names.PLAIN_CHARACTERS.issuperset(n) for n in names)
    disagreements = [n for n in names if we_accept(driver, n) != git_accepts(n, oracle_repo)]
    assert disagreements == []
    # Both verdicts are well represented, so the comparison means something.
    accepted = sum(we_accept(driver, n) for n in names)
    assert 100 < accepted < len(names) - 100


OTHER_NAMES = [
    "a~b",
    "a b",
    "a*b",
    "a?b",
    "a[b",
    "a\\b",
    "a^b",
    "a:b",
    "@",
    "a@{b",
    "@{-1}",
    "HEAD",
    "a@b",
    "feat/ü",
    "🙂",
    "x\u00a0",
    "x\u3000",
    "\u202e",
    "a+b,c=d#e%f!g",
    "'quoted'",
    '"q"',
    "$(id)",
    "a\x7fb",
    "tab\tname",
    "/abs",
]


@pytest.mark.parametrize("name", OTHER_NAMES)
def test_other_names_get_git_verdict(name: str, oracle_repo: Path) -> None:
    assert we_accept(GitDriver(), name) == git_accepts(name, oracle_repo)


def test_a_trailing_space_like_character_stays_part_of_the_name() -> None:
    # git's own output ends in a newline; stripping it as text used to drop a trailing no-break space.
    assert anyio.run(branch_names.check_branch_name, "nbsp\u00a0", GitDriver()) == "nbsp\u00a0"


def test_a_lone_surrogate_is_refused_with_a_code() -> None:
    with pytest.raises(CoordError) as err:
        anyio.run(branch_names.check_branch_name, "bad\ud800", GitDriver())
    assert err.value.code == ErrorCode.INVALID_BRANCH


def test_git_verdicts_on_other_names_are_remembered(tmp_path: Path) -> None:
    driver = GitDriver()
    assert we_accept(driver, "ok@name") and not we_accept(driver, "bad~name")
    driver.git = str(tmp_path / "no-such-git")  # from now on, asking git would fail
    assert we_accept(driver, "ok@name") and not we_accept(driver, "bad~name")
    with pytest.raises(OSError):
        anyio.run(branch_names.check_branch_name, "new@name", driver)  # proof that git was needed for a new one


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="ab-_./@{}~^:?*[]\\ lockü\u00a0", min_size=1, max_size=12))
def test_random_names_agree_with_git(oracle_repo: Path, name: str) -> None:
    assert we_accept(GitDriver(), name) == git_accepts(name, oracle_repo)
