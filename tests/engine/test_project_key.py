"""The project key (every clone of one repository shares it) and the host id (which machine this is)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent_coord.config import Settings, SettingsError, load_settings
from agent_coord.engine.git.driver import GitDriver
from agent_coord.engine.project_key import local_key, normalise_remote, project_key
from agent_coord.platform.host_id import _as_host_id, default_host_id, valid_host_id
from tests.conftest import git, make_repo

pytestmark = pytest.mark.anyio

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12).filter(
    lambda s: not s.startswith("-")
)


@given(host=NAME, owner=NAME, name=NAME)
def test_every_spelling_of_one_remote_is_one_key(host: str, owner: str, name: str) -> None:
    spellings = [
        f"git@{host}.com:{owner}/{name}.git",
        f"ssh://git@{host}.com:22/{owner}/{name}",
        f"https://{host.upper()}.com/{owner}/{name}/",
        f"https://user:secret@{host}.com/{owner}/{name}.git",
    ]
    assert {normalise_remote(s) for s in spellings} == {f"{host}.com/{owner}/{name}"}


def test_local_paths_and_forks_stay_apart() -> None:
    assert normalise_remote("/srv/git/app.git") == normalise_remote("file:///srv/git/app") == "file:/srv/git/app"
    assert normalise_remote("git@github.com:acme/app.git") != normalise_remote("git@github.com:fork/app.git")
    assert normalise_remote("C:\\repos\\app") == "file:C:\\repos\\app"  # a Windows path is not scp-like


@given(st.text(max_size=80))
def test_any_remote_text_gives_a_key(text: str) -> None:
    assert isinstance(normalise_remote(text), str)


async def test_clones_of_one_origin_share_a_key_and_a_clone_without_one_has_its_own(tmp_path: Path) -> None:
    source = make_repo(tmp_path, "source")
    git(tmp_path, "clone", "-q", str(source), "one")
    git(tmp_path, "clone", "-q", str(source), "two")
    driver = GitDriver()
    one = await project_key(driver, tmp_path / "one", host="h1", configured=None)
    two = await project_key(driver, tmp_path / "two", host="h2", configured=None)
    root = git(source, "rev-list", "--max-parents=0", "HEAD").strip()
    assert one == two == f"{root}@file:{source}"
    # The source has no origin: it cannot prove it is anyone's clone.
    assert await project_key(driver, source, host="h1", configured=None) == local_key("h1", source)
    assert await project_key(driver, source, host="h1", configured="mine") == "mine"
    # A recorded key of the same origin is kept without walking the history again.
    assert await project_key(driver, tmp_path / "one", host="h1", configured=None, recorded="kept@file:" + str(source))
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", str(empty))
    git(empty, "remote", "add", "origin", str(source))
    assert await project_key(driver, empty, host="h1", configured=None) == local_key("h1", empty)


@given(st.text(max_size=100))
def test_any_machine_id_text_becomes_a_valid_host_id_or_nothing(text: str) -> None:
    found = _as_host_id(text)
    assert found is None or valid_host_id(found)


def test_the_host_id_defaults_to_the_machine_id_and_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert valid_host_id(default_host_id())
    machine = Path("/etc/machine-id")
    if machine.exists() and machine.read_text().strip():
        assert default_host_id() == machine.read_text().strip()
    assert Settings(host_id="build-7.example").host_id == "build-7.example"
    assert Settings(host_id="").host_id == default_host_id()
    for bad in ("-x", "a b", "x" * 65, "ü"):
        monkeypatch.setenv("AGENT_COORD_HOST_ID", bad)
        with pytest.raises(SettingsError) as refused:
            load_settings()
        assert "AGENT_COORD_HOST_ID" in str(refused.value)
    monkeypatch.delenv("AGENT_COORD_HOST_ID")
    monkeypatch.setenv("AGENT_COORD_PROJECT", " padded ")
    with pytest.raises(SettingsError, match="AGENT_COORD_PROJECT"):
        load_settings()
