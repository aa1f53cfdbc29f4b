"""The demo's throw-away files (repository, pool, database, logs) and the environment that points at them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import anyio

from agent_coord.config import Settings
from agent_coord.demo.plans import Pace

GIT_QUIET = {
    # A demo must not stop for the user's signing key or hooks: these apply to every git we and
    # our servers run (GIT_CONFIG_* needs git >= 2.31; older gits ignore them).
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "commit.gpgsign",
    "GIT_CONFIG_VALUE_0": "false",
    "GIT_CONFIG_KEY_1": "core.hooksPath",
    "GIT_CONFIG_VALUE_1": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}
SEED_FILES = {
    "README.md": "# shop\n\nA tiny web shop, used by `agent-coord demo`.\n",
    "src/app.py": "def main() -> None:\n    print('shop')\n",
    "src/login.py": "def login(user: str) -> bool:\n    return bool(user)\n",
    "src/search.py": "def search(query: str) -> list[str]:\n    return []\n",
    "docs/guide.md": "# Guide\n\nRun `python -m src.app`.\n",
    ".gitignore": "__pycache__/\n.env\n",
}
SEED_HISTORY = (
    ("initial layout", ["README.md", ".gitignore", "src/app.py"]),
    ("login stub", ["src/login.py"]),
    ("search stub and guide", ["src/search.py", "docs/guide.md"]),
)


@dataclass(frozen=True)
class DemoPaths:
    root: Path
    repo: Path
    pool: Path
    db: Path
    activity: Path
    logs: Path

    @classmethod
    def under(cls, root: Path) -> DemoPaths:
        return cls(
            root=root,
            repo=root / "repo",
            pool=root / "repo.worktrees",
            db=root / "state" / "coord.db",
            activity=root / "worktrees.activity.md",
            logs=root / "logs",
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "root": str(self.root),
            "repo": str(self.repo),
            "pool": str(self.pool),
            "db": str(self.db),
            "activity_file": str(self.activity),
            "logs": str(self.logs),
        }


async def make_demo_repo(repo: Path) -> None:
    """A small project with some history, so that branches have something to start from."""
    env = {**os.environ, **GIT_QUIET, **git_identity("agent-coord demo")}

    async def git(*args: str) -> None:
        await anyio.run_process(["git", "-C", str(repo), *args], env=env, check=True)

    await anyio.Path(repo).mkdir(parents=True)
    await git("init", "-q")
    await git("symbolic-ref", "HEAD", "refs/heads/main")  # whatever init.defaultBranch says
    for message, names in SEED_HISTORY:
        for name in names:
            target = anyio.Path(repo / name)
            await target.parent.mkdir(parents=True, exist_ok=True)
            await target.write_text(SEED_FILES[name])
        await git("add", "--", *names)
        await git("commit", "-q", "-m", message)


def git_identity(name: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": "demo@agent-coord.invalid",
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": "demo@agent-coord.invalid",
    }


def pool_max(n: int) -> int:
    # One function, so that the servers (through the environment) and the observer agree.
    return max(8, n + 2)


def demo_env(paths: DemoPaths, pace: Pace, n: int) -> dict[str, str]:
    """The environment of every agent and server: this demo's files, fast validation, no ManicTime."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_COORD_")}
    env.update(GIT_QUIET)
    env.update(git_identity("agent-coord demo"))
    env.update(
        {
            "AGENT_COORD_DB": str(paths.db),
            "AGENT_COORD_REPO": str(paths.repo),
            "AGENT_COORD_POOL_ROOT": str(paths.pool),
            "AGENT_COORD_POOL_MAX": str(pool_max(n)),
            "AGENT_COORD_ACTIVITY_FILE": str(paths.activity),
            "AGENT_COORD_MANICTIME_DB": "",
            # Validation every second finds the crash at once. Short leases (renewed every 2 s) so that
            # an agent whose server hangs goes stale within the demo rather than after five minutes.
            "AGENT_COORD_VALIDATE_EVERY_S": "1",
            "AGENT_COORD_STALE_AFTER_S": "15",
            "AGENT_COORD_HEARTBEAT_ACTIVE_S": "2",
            "AGENT_COORD_HEARTBEAT_IDLE_S": "4",
            "AGENT_COORD_JITTER_MAX_MS": str(pace.jitter_max_ms),
            "AGENT_COORD_WATCH_INTERVAL_S": "0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def observer_settings(paths: DemoPaths, n: int) -> Settings:
    # Everything explicit: the user's own AGENT_COORD_* variables must not point the demo elsewhere.
    return Settings(
        db=paths.db,
        repo=paths.repo,
        pool_root=paths.pool,
        pool_max=pool_max(n),
        manictime_db=None,
        activity_file=None,
        validate_every_s=1.0,
        stale_after_s=15.0,
        watch_interval_s=0.1,
    )
