"""A seal file that is not what a release wrote (garbage, another version, half a write) is no seal."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_coord.engine.git import seal

HEAD = "a" * 40


def admin_with(tmp: Path, body: bytes) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "HEAD").write_text(HEAD + "\n")
    (tmp / seal.SEAL_FILE).write_bytes(body)
    return tmp


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_other_seal_file_reads_as_none(tmp_path_factory: object, body: bytes) -> None:
    admin = admin_with(Path(tmp_path_factory.mktemp("admin")), body)  # type: ignore[attr-defined]
    assert seal.read(admin) is None
    assert not (admin / seal.SEAL_FILE).exists()  # read once, whatever it held


def test_a_seal_for_another_head_or_index_reads_as_none(tmp_path: Path) -> None:
    body = {"version": seal.SEAL_VERSION, "since_ns": 1, "head": "b" * 40, "index": None, "branch": "x"}
    assert seal.read(admin_with(tmp_path / "a", json.dumps(body).encode())) is None
    body = {"version": seal.SEAL_VERSION, "since_ns": 1, "head": HEAD, "index": [1, 2, 3, 4, 5], "branch": None}
    assert seal.read(admin_with(tmp_path / "b", json.dumps(body).encode())) is None
    body = {"version": seal.SEAL_VERSION, "since_ns": 1, "head": HEAD, "index": None, "branch": None}
    assert seal.read(admin_with(tmp_path / "c", json.dumps(body).encode())) == seal.Seal(1, HEAD, None, None)
