"""The project a clone belongs to: the key every clone of one repository shares, on any host.

`<root commit>@<normalised origin URL>`: the root commit tells repositories apart that happen to share
a URL (a force-pushed rewrite, a reused name), the URL tells forks apart that share their history.
Two clones of one origin are one project, wherever they are, so a branch held in one is held in all.
A clone without an `origin` (or without a commit yet) cannot prove it is anyone else's clone: its key
names its host and path, and it is a project of its own, as every repository was before.
`AGENT_COORD_PROJECT` overrides the key (mirrors with different URLs, a remote not named `origin`).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from agent_coord.engine.git.driver import GitDriver, GitError

_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>(?!//).*)$")


def normalise_remote(url: str) -> str:
    """One spelling per remote: `host/path` without scheme, user, port, trailing `/` or `.git`, the host
    in lower case (`git@github.com:o/r.git`, `ssh://git@github.com:22/o/r` and `https://github.com/o/r/`
    are all `github.com/o/r`); a local path (or `file://` URL) is `file:<path>`."""
    text = url.strip()
    if "://" in text:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        path = parts.path
        if parts.scheme == "file" or not host:
            return "file:" + _trim(path)
        return f"{host}/{_trim(path).lstrip('/')}"
    scp = _SCP_LIKE.match(text)
    if scp is not None and "/" not in scp.group("host") and not re.match(r"^[A-Za-z]:[\\/]", text):
        return f"{scp.group('host').lower()}/{_trim(scp.group('path')).lstrip('/')}"
    return "file:" + _trim(text)


def _trim(path: str) -> str:
    path = path.rstrip("/")
    return path[: -len(".git")] if path.endswith(".git") else path


def local_key(host: str, repo: Path) -> str:
    return f"local:{host}:{repo}"


async def project_key(
    git: GitDriver, repo: Path, *, host: str, configured: str | None, recorded: str | None = None
) -> str:
    """The project key of the clone at `repo` (its main worktree) on `host`; `configured` wins. A
    `recorded` key of the same origin is kept: finding the root commit walks the whole history."""
    if configured:
        return configured
    try:
        origin = (await git.run(repo, "config", "--get", "remote.origin.url", check=False)).strip()
        if not origin:
            return local_key(host, repo)
        remote = normalise_remote(origin)
        if recorded is not None and recorded.endswith("@" + remote) and not recorded.startswith("local:"):
            return recorded
        roots = (await git.run(repo, "rev-list", "--max-parents=0", "HEAD")).split()
    except GitError:
        return local_key(host, repo)  # no commit yet
    return f"{min(roots)}@{remote}" if roots else local_key(host, repo)
