"""Bad-input campaign: hypothesis generates the arguments of every tool and the stdin payloads of every
hook. Whatever comes in: no crash, no unhandled exception text, every refusal starts with a known
error code (server.engine.errors.ErrorCode), and a refused call changes nothing (the slots table and
`git worktree list --porcelain` are compared before and after every refused call).

Tools are called through an in-memory `mcp.Client(build_server(settings))` that stays up for the whole
module (a blocking portal keeps its event loop alive between hypothesis examples); hooks are called
in process through the `agent-coord` Typer app, as `agent-coord hook <name>` with the payload on stdin.

The CI subset makes about 870 calls (~40 s of CPU; each hook call opens a coordinator); `pytest -m slow
tests/system/test_fuzz.py` makes at least 10,000.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_coord.engine.errors import ErrorCode
from tests.conftest import git, make_repo

KNOWN_CODES = frozenset(c.value for c in ErrorCode)
TOOLS = ("allocate_worktree", "release_worktree", "heartbeat", "status", "validate")
HOOKS = ("worktree-create", "worktree-remove", "session-start", "session-end")
CI_EXAMPLES_PER_TOOL = 150
CI_EXAMPLES_PER_HOOK = 30
FULL_EXAMPLES_PER_TOOL = 1700
FULL_EXAMPLES_PER_HOOK = 400
FULL_MINIMUM_CALLS = 10_000


@dataclass
class Sandbox:
    root: Path
    repo: Path
    pool: Path
    db: Path
    other_repo: Path
    plain_dir: Path
    env: dict[str, str]


@dataclass
class Harness:
    sandbox: Sandbox
    portal: Any
    client: Any
    calls: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)

    # -- what must not change --

    def snapshot(self) -> tuple[Any, ...]:
        with sqlite3.connect(f"file:{self.sandbox.db}?mode=ro", uri=True, timeout=30) as conn:
            slots = conn.execute("SELECT * FROM slots ORDER BY id").fetchall()
        worktrees = git(self.sandbox.repo, "worktree", "list", "--porcelain")
        return tuple(slots), worktrees

    # -- tools --

    def call(self, tool: str, args: dict[str, Any]) -> Any:
        return self.portal.call(self.client.call_tool, tool, args)

    def check_tool(self, tool: str, args: dict[str, Any]) -> None:
        before = self.snapshot()
        result = self.call(tool, args)  # an exception here is a crash of the server or the transport
        self.calls[tool] += 1
        if result.is_error:
            text = result.content[0].text if result.content else ""
            code = text.split(":", 1)[0]
            self.outcomes[f"{tool}:{code}"] += 1
            assert not text.startswith("Error executing tool"), (tool, args, text)
            assert code in KNOWN_CODES, (tool, args, text)
            after = self.snapshot()
            assert after == before, ("a refused call changed the store or git", tool, args, text)
            return
        self.outcomes[f"{tool}:ok"] += 1
        assert result.structured_content is not None, (tool, args)
        if tool == "allocate_worktree" and result.structured_content.get("strategy") != "existing":
            # Give it back, so the pool never fills up with what the fuzzer was granted.
            back = self.call(
                "release_worktree", {"worktree_id": result.structured_content["worktree_id"], "force": True}
            )
            assert not back.is_error, back.content
        self.ensure_keep()

    def ensure_keep(self) -> None:
        """Keep one allocation held throughout, so conflicts and releases of a held slot get exercised."""
        result = self.call("allocate_worktree", {"branch": "keep"})
        assert not result.is_error, result.content

    # -- hooks --

    def check_hook(self, hook: str, payload: bytes) -> None:
        from typer.testing import CliRunner

        from agent_coord.cli import app

        before = self.snapshot()
        cwd = os.getcwd()
        try:
            result = CliRunner().invoke(app, ["hook", hook], input=payload, catch_exceptions=True)
        finally:
            os.chdir(cwd)  # a hook works from the payload's cwd
        self.calls[f"hook {hook}"] += 1
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            hook,
            payload[:300],
            repr(result.exception),
        )
        stdout = result.stdout
        stderr = result.stderr
        if result.exit_code == 0:
            self.outcomes[f"hook {hook}:ok"] += 1
            if hook == "worktree-create":
                lines = stdout.splitlines()
                assert len(lines) == 1, (payload[:300], stdout)
                path = Path(lines[0])
                # The configured repository's pool, or the default `<repo>.worktrees` of the other
                # repository when the payload's cwd is in it (docs/decisions.md, "Store").
                pools = {
                    self.sandbox.pool.resolve(): self.sandbox.repo,
                    self.sandbox.other_repo.with_name("other.worktrees").resolve(): self.sandbox.other_repo,
                }
                assert path.is_absolute() and path.parent in pools, (payload[:300], stdout)
                status = self.call("status", {"repo": str(pools[path.parent])}).structured_content
                slot = next(w for w in status["worktrees"] if w["path"] == str(path))
                # The hook's agent (this test's process) is alive: only a person may take its worktree
                # back with force, through the command line (an agent's force is refused).
                back = CliRunner().invoke(app, ["release", "--worktree", slot["worktree_id"], "--force"])
                assert back.exit_code == 0, back.output
                self.ensure_keep()
            else:
                assert stdout.strip() == "" or hook == "session-start", (hook, payload[:300], stdout)
            return
        reason = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        code = reason.split(":", 1)[0]
        self.outcomes[f"hook {hook}:{code}"] += 1
        assert result.exit_code == 1, (hook, payload[:300], result.exit_code, stderr)
        assert stdout.strip() == "", (hook, payload[:300], stdout)
        assert len(stderr.strip().splitlines()) == 1, (hook, payload[:300], stderr)
        assert code in KNOWN_CODES, (hook, payload[:300], stderr)
        after = self.snapshot()
        assert after == before, ("a refused hook changed the store or git", hook, payload[:300], stderr)


# ---- the sandbox and the long-lived server -----------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    from anyio.from_thread import start_blocking_portal
    from mcp import Client

    from agent_coord.config import Settings
    from agent_coord.server.app import build_server

    root = tmp_path_factory.mktemp("fuzz")
    repo = make_repo(root)
    git(repo, "branch", "existing")
    other = make_repo(root, "other")
    plain = root / "plain-dir"
    plain.mkdir()
    sandbox = Sandbox(
        root=root,
        repo=repo,
        pool=root / "pool",
        db=root / "state" / "coord.db",
        other_repo=other,
        plain_dir=plain,
        env={
            "AGENT_COORD_DB": str(root / "state" / "coord.db"),
            "AGENT_COORD_REPO": str(repo),
            "AGENT_COORD_POOL_ROOT": str(root / "pool"),
            "AGENT_COORD_MANICTIME_DB": "",
            "AGENT_COORD_POOL_MAX": "4",
            # No background writes between a snapshot and the call it brackets.
            "AGENT_COORD_HEARTBEAT_ACTIVE_S": "100000",
            "AGENT_COORD_HEARTBEAT_IDLE_S": "100000",
            "AGENT_COORD_VALIDATE_EVERY_S": "100000",
        },
    )
    mp = pytest.MonkeyPatch()
    for key, value in sandbox.env.items():
        mp.setenv(key, value)  # the hooks read their settings from the environment
    try:
        server = build_server(Settings(agent_id="fuzzer"))
        with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(server)) as client:
            h = Harness(sandbox, portal, client)
            h.ensure_keep()
            warm = h.call("allocate_worktree", {"branch": "warm"})  # one FREE slot as well
            h.call("release_worktree", {"worktree_id": warm.structured_content["worktree_id"]})
            yield h
    finally:
        mp.undo()


# ---- strategies --------------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    "-",
    "--",
    "-rf",
    "--force",
    "--orphan",
    "-C/tmp",
    "--upload-pack=touch /tmp/pwned",
    "HEAD",
    "@",
    "@{-1}",
    "main",
    "keep",
    "warm",
    "existing",
    "a..b",
    "a/",
    "/a",
    "a//b",
    ".hidden",
    "x.lock",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[",
    "a\\b",
    "x\x00y",
    "\n",
    "\t",
    "..",
    "../..",
    "../../etc",
    "/",
    "/etc/passwd",
    "/dev/null",
    "~",
    "~root",
    "~nosuchuser",
    "~nosuchuser/repo",
    "wt-01",
    "wt-02",
    "wt-99",
    "wt-00",
    "wt-1",
    "worktree-x",
    "ü",
    "\u202e",
    "🙂",
    "$(touch /tmp/pwned)",
    "`id`",
    "a" * 255,
    "a" * 256,
    "b" * 5000,
    "refs/heads/main",
    "origin/main",
    "[]",
    "{}",
    "null",
    '["a"]',
    "true",
    "12",
]


def sandbox_paths(s: Sandbox) -> list[str]:
    return [
        str(s.repo),
        str(s.repo) + "/",
        str(s.repo / ".git"),
        str(s.repo / "README.md"),
        str(s.pool),
        str(s.pool / "wt-01"),
        str(s.pool / "wt-02"),
        str(s.pool / "wt-99"),
        str(s.pool / ".." / "repo"),
        str(s.pool / "wt-01" / ".." / "wt-02"),
        str(s.other_repo),
        str(s.plain_dir),
        str(s.root),
        str(s.root / "missing"),
        "relative/path",
        "./repo",
    ]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
REF_ALPHABET = "abcxyz019-_./@{}~^:?*[]\\ \x00\x7f\n"


def strings(s: Sandbox) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(TRICKY + sandbox_paths(s)),
        st.text(alphabet=REF_ALPHABET, max_size=40),
        st.text(max_size=60),
        st.from_regex(r"[a-z][a-z0-9/_-]{0,30}", fullmatch=True),
    )


def values(s: Sandbox) -> st.SearchStrategy[Any]:
    return st.one_of(strings(s), strings(s), strings(s), JSON_VALUES)


def tool_args(tool: str, s: Sandbox) -> st.SearchStrategy[dict[str, Any]]:
    text, anything = strings(s), values(s)
    flag = st.one_of(st.booleans(), st.booleans(), anything)
    keys: dict[str, st.SearchStrategy[Any]] = {
        "allocate_worktree": {
            "branch": st.one_of(text, text, anything),
            "base": anything,
            "repo": anything,
            "task": anything,
        },
        "release_worktree": {
            "worktree_id": anything,
            "path": anything,
            "branch": anything,
            "force": flag,
            "remove": flag,
        },
        "heartbeat": {"status": st.one_of(st.sampled_from(["active", "idle"]), anything), "note": anything},
        "status": {"repo": anything},
        "validate": {"repair": flag, "repo": anything},
    }[tool]
    required = {"branch": keys["branch"]} if tool == "allocate_worktree" else {}
    optional = {k: v for k, v in keys.items() if k not in required}
    known = st.fixed_dictionaries(required, optional=optional)
    extra = st.dictionaries(st.text(max_size=12), anything, max_size=2)
    return st.one_of(known, known, known, st.builds(lambda a, b: {**b, **a}, known, extra), extra)


def hook_payloads(hook: str, s: Sandbox) -> st.SearchStrategy[bytes]:
    text, anything = strings(s), values(s)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "session_id": st.one_of(text, anything),
        "cwd": st.one_of(st.sampled_from(sandbox_paths(s)), anything),
        "hook_event_name": anything,
        "transcript_path": anything,
    }
    fields.update(
        {
            "worktree-create": {"name": text, "worktree_name": text, "base_path": anything, "source_ref": anything},
            "worktree-remove": {"worktree_path": st.one_of(st.sampled_from(sandbox_paths(s)), anything)},
            "session-start": {"source": anything},
            "session-end": {"reason": anything},
        }[hook]
    )
    objects = st.fixed_dictionaries({}, optional=fields).map(lambda d: json.dumps(d).encode())
    return st.one_of(
        objects,
        objects,
        objects,
        st.binary(max_size=200),
        JSON_VALUES.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.just(b"{" * 5000),
        st.just(b'{"name": "' + b"x" * (1 << 20) + b'"}'),
    )


# ---- the campaigns -----------------------------------------------------------------------------


def fuzz_tool(h: Harness, tool: str, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=False,
    )
    @given(args=tool_args(tool, h.sandbox))
    def prop(args: dict[str, Any]) -> None:
        h.check_tool(tool, args)

    prop()


def fuzz_hook(h: Harness, hook: str, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(payload=hook_payloads(hook, h.sandbox))
    def prop(payload: bytes) -> None:
        h.check_hook(hook, payload)

    prop()


@pytest.mark.parametrize("tool", TOOLS)
def test_fuzz_tool_arguments(harness: Harness, tool: str) -> None:
    fuzz_tool(harness, tool, CI_EXAMPLES_PER_TOOL)
    assert harness.calls[tool] >= CI_EXAMPLES_PER_TOOL // 2


@pytest.mark.parametrize("hook", HOOKS)
def test_fuzz_hook_payloads(harness: Harness, hook: str) -> None:
    fuzz_hook(harness, hook, CI_EXAMPLES_PER_HOOK)
    assert harness.calls[f"hook {hook}"] >= CI_EXAMPLES_PER_HOOK // 2


def test_fuzzing_left_the_pool_consistent(harness: Harness) -> None:
    """After everything the fuzzer threw: validation finds no drift, and git and the store agree."""
    result = harness.call("validate", {"repair": False})
    assert not result.is_error, result.content
    assert result.structured_content["findings"] == [], result.structured_content["findings"]
    ran = subprocess.run(["git", "-C", str(harness.sandbox.repo), "fsck", "--no-progress"], capture_output=True)
    assert ran.returncode == 0, ran.stderr


def test_hook_in_another_repository_uses_that_repositorys_pool(harness: Harness) -> None:
    """Found by the fuzzer: a payload whose cwd is another repository gets a slot of that repository's
    default pool (`<repo>.worktrees`), not of the configured one; an option-like name is sanitised."""
    s = harness.sandbox
    payload = json.dumps({"session_id": "", "cwd": str(s.other_repo), "worktree_name": "--force"}).encode()
    before = harness.outcomes["hook worktree-create:ok"]
    harness.check_hook("worktree-create", payload)  # asserts the path's pool and releases the slot
    assert harness.outcomes["hook worktree-create:ok"] == before + 1


@pytest.mark.parametrize("hook", HOOKS)
def test_a_cwd_too_long_for_the_file_system_is_a_known_refusal(harness: Harness, hook: str) -> None:
    """Found by the full campaign: ENAMETOOLONG from a stat of the payload's cwd escaped as an
    unexpected error. Every hook must answer it with a known code (or ignore it), like any bad path."""
    payload = {"session_id": "s", "cwd": "a" * 300, "worktree_name": "x", "worktree_path": "a" * 300}
    harness.check_hook(hook, json.dumps(payload).encode())


def test_invalid_base_is_refused_before_any_claim(harness: Harness) -> None:
    spare = harness.call("allocate_worktree", {"branch": "spare"})  # make sure a FREE slot is there to claim
    assert not spare.is_error, spare.content
    harness.call("release_worktree", {"worktree_id": spare.structured_content["worktree_id"]})
    before = harness.snapshot()
    result = harness.call("allocate_worktree", {"branch": "fresh-branch-from-bad-base", "base": "no-such-commit"})
    assert result.is_error
    assert harness.snapshot() == before, result.content[0].text


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("allocate_worktree", {"branch": "x", "repo": "~nosuchuser"}),
        ("release_worktree", {"path": "~nosuchuser/wt-01"}),
        ("status", {"repo": "~nosuchuser"}),
        ("validate", {"repo": "~nosuchuser"}),
    ],
)
def test_unknown_user_path_is_refused_with_a_code(harness: Harness, tool: str, args: dict[str, Any]) -> None:
    result = harness.call(tool, args)
    assert result.is_error
    assert result.content[0].text.split(":", 1)[0] in KNOWN_CODES, result.content[0].text


@pytest.mark.parametrize(
    ("tool", "args", "field"),
    [
        ("allocate_worktree", {"branch": "json-task-1", "task": "[]"}, "task"),
        ("allocate_worktree", {"branch": "json-task-2", "task": "null"}, "task"),
        ("heartbeat", {"note": '{"a": 1}'}, None),
        ("status", {"repo": "[]"}, None),
    ],
)
def test_json_looking_strings_stay_strings(
    harness: Harness, tool: str, args: dict[str, Any], field: str | None
) -> None:
    result = harness.call(tool, args)
    if result.is_error:
        assert result.content[0].text.split(":", 1)[0] in KNOWN_CODES, result.content[0].text
        return
    if field is not None:
        assert result.structured_content.get(field, args[field]) == args[field]
        status = harness.call("status", {}).structured_content
        held = next(w for w in status["worktrees"] if w["branch"] == args["branch"])
        harness.call("release_worktree", {"worktree_id": held["worktree_id"], "force": True})
        assert held["task"] == args[field], held


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fuzz_full_campaign(harness: Harness) -> None:
    """At least 10,000 generated calls over every tool and every hook."""
    start = sum(harness.calls.values())
    for tool in TOOLS:
        fuzz_tool(harness, tool, FULL_EXAMPLES_PER_TOOL)
    for hook in HOOKS:
        fuzz_hook(harness, hook, FULL_EXAMPLES_PER_HOOK)
    made = sum(harness.calls.values()) - start
    print(f"{made} calls: {dict(harness.calls)}")
    print("outcomes:", dict(sorted(harness.outcomes.items())))
    assert made >= FULL_MINIMUM_CALLS, harness.calls
    test_fuzzing_left_the_pool_consistent(harness)
