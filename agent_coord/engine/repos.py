"""Which repository a call is about, where its pool lives, and keeping slot paths inside that pool."""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import anyio

from agent_coord.config import Settings
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.confinement import Bounds, check_pool_root, mark_pool_root
from agent_coord.engine.git.driver import GitDriver, reject_option_like
from agent_coord.engine.project_key import project_key
from agent_coord.engine.store import Store
from agent_coord.engine.store.records import Repo

MAX_PATH = 4096
logger = logging.getLogger("agent-coord")


def default_pool_root(repo: Path) -> Path:
    return repo.parent / f"{repo.name}.worktrees"


async def bounds_of(repo: Repo) -> Bounds:
    """The confinement bounds of a repository's pool (resolving paths: in a worker thread)."""
    return await anyio.to_thread.run_sync(Bounds.of, repo.path, repo.pool_root)


def confine(pool_root: Path, path: Path) -> Path:
    """`path` resolved (symlinks included) and proven to be a direct child of the pool root."""
    root = pool_root.resolve()
    resolved = path.resolve()
    if resolved.parent != root or resolved.name in {"", ".", ".."}:
        raise CoordError(ErrorCode.INVALID_ARGUMENT, f"{path} is outside the pool root {root}")
    return resolved


class RepoResolver:
    def __init__(self, store: Store, git: GitDriver, settings: Settings, *, host: str | None = None) -> None:
        self.store = store
        self.git = git
        self.settings = settings
        self.host = host or settings.host_id  # the acting identity's host (Identity.host)
        self._by_arg: dict[str, Repo] = {}
        self._by_id: dict[int, Repo] = {}

    def forget(self) -> None:
        """Resolve every repository afresh from now on (its pool root checked again): for a process that
        answers for a long time without validating (the hook host)."""
        self._by_arg.clear()

    async def resolve(self, repo_arg: str | None) -> Repo:
        """The repository a call is about, its pool root checked (`check_pool_root`); a pool root that
        exists and holds nothing but the pool's slots is marked as the pool's own."""
        key = repo_arg if repo_arg is not None else ""
        cached = self._by_arg.get(key)
        if cached is not None:
            return cached
        if repo_arg is not None:
            if not repo_arg or len(repo_arg) > MAX_PATH:
                raise CoordError(ErrorCode.NOT_A_REPOSITORY, "repo must be a path of 1..4096 characters")
            reject_option_like(repo_arg, "repo", ErrorCode.NOT_A_REPOSITORY)
            try:
                start = Path(await anyio.Path(repo_arg).expanduser())
            except RuntimeError as exc:  # "~name" for a user that does not exist
                raise CoordError(ErrorCode.NOT_A_REPOSITORY, f"cannot expand {repo_arg!r}: no such user") from exc
            if not start.is_absolute():
                raise CoordError(ErrorCode.NOT_A_REPOSITORY, f"repo must be an absolute path, got {repo_arg!r}")
        elif self.settings.repo is not None:
            start = self.settings.repo.expanduser()
        else:
            start = Path(os.getcwd())
        top = await self.git.main_worktree(start)
        configured = (
            self.settings.repo is not None and (await self._main_or_none(self.settings.repo.expanduser())) == top
        )
        if self.settings.pool_root is not None and (repo_arg is None or configured):
            pool_root = self.settings.pool_root.expanduser().resolve()
        else:
            pool_root = default_pool_root(top)
        # A pool root that holds the repository or other people's repositories is refused before
        # anything is written (a refused root, once recorded, would outlive the setting that named it)
        # and before anything runs in it; a repository keeps the pool root it was registered with.
        host = self.host
        known = self._known(await self.store.repos(), str(top))
        if known is None:
            candidate = await anyio.to_thread.run_sync(Bounds.of, top, pool_root)
            await anyio.to_thread.run_sync(check_pool_root, candidate, set())
        project = await project_key(
            self.git,
            top,
            host=host,
            configured=self.settings.project if repo_arg is None or configured else None,
            recorded=known.project if known else None,
        )
        repo = known
        if known is None or known.host != host or known.project != project:
            repo = await self.store.ensure_repo(str(top), str(pool_root), host=host, project=project)
        assert repo is not None
        if repo.project != project:
            logger.warning(
                "%s stays in project %s: a branch it holds is held under %s too; release one of them",
                repo.path,
                repo.project,
                project,
            )
        await self.mark_if_own(repo)
        self._by_arg[key] = repo
        self._by_id[repo.id] = repo
        return repo

    def _known(self, repos: list[Repo], path: str) -> Repo | None:
        """This host's row for the clone at `path`, or one no host has claimed yet (of an earlier
        version); on SQLite (one host per file) the row at `path` whatever host id recorded it."""
        here = [r for r in repos if r.path == path and (r.host in (self.host, None) or not self.store.postgres)]
        return min(here, key=lambda r: r.host != self.host) if here else None

    async def mark_if_own(self, repo: Repo) -> None:
        """Check the repository's pool root (PoolRootRefused) and mark it when it is the pool's own."""
        recorded = {s.path for s in await self.store.slots(repo.id)}
        bounds = await bounds_of(repo)
        if await anyio.to_thread.run_sync(check_pool_root, bounds, recorded):
            await anyio.to_thread.run_sync(partial(mark_pool_root, bounds, create=False))

    async def _main_or_none(self, path: Path) -> Path | None:
        try:
            return await self.git.main_worktree(path)
        except CoordError:
            return None

    async def by_id(self, repo_id: int) -> Repo:
        """A repository of this host by id: another host's clone is NOT_FOUND here (its directories are
        that host's to touch, never this one's)."""
        if repo_id not in self._by_id:
            elsewhere = None
            for repo in await self.store.repos():
                if repo.host in (self.host, None):
                    self._by_id[repo.id] = repo
                elif repo.id == repo_id:
                    elsewhere = repo
            if elsewhere is not None:
                raise CoordError(
                    ErrorCode.NOT_FOUND,
                    f"repository #{repo_id} ({elsewhere.path}) is a clone on host {elsewhere.host}; only "
                    f"agent-coord on that host touches its worktrees (this is host {self.host})",
                )
        if repo_id not in self._by_id:
            raise CoordError(ErrorCode.NOT_FOUND, f"repository #{repo_id} is not known")
        return self._by_id[repo_id]
