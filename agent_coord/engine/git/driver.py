"""Async git driver. Every call is an argument list; no user string reaches git as an option."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from opentelemetry import trace

from agent_coord.engine.child_process import Prepare, run_child, run_prepared
from agent_coord.engine.concurrency import gather
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.git.confinement import Confined, check_slot
from agent_coord.engine.git.git_error import GitError as GitError

tracer = trace.get_tracer("agent-coord.git")

BRANCH_VERDICTS_KEPT = 4096  # git's verdicts on names outside the plain alphabet, oldest dropped first
RESCUE_NAMESPACE = "refs/agent-coord/rescue"
RESCUE_IDENTITY = {
    "GIT_AUTHOR_NAME": "agent-coord rescue",
    "GIT_AUTHOR_EMAIL": "agent-coord@localhost",
    "GIT_COMMITTER_NAME": "agent-coord rescue",
    "GIT_COMMITTER_EMAIL": "agent-coord@localhost",
}


# `git worktree list` meeting a worktree that another process is adding or removing right now.
LISTING_ATTEMPTS = 4
LISTING_RETRY_PAUSE_S = 0.02
CONCURRENT_CHANGE_MARKERS = ("/commondir", "/gitdir", "/head", "/worktrees/")


def is_concurrent_worktree_change(exc: GitError) -> bool:
    """Did git fail on another worktree's admin files (`failed to read .git/worktrees/wt-41/commondir`),
    which a concurrent `git worktree add`/`remove` leaves half there for a moment?"""
    text = exc.stderr.lower()
    return ("failed to read" in text or "unable to read" in text or "no such file" in text) and any(
        marker in text for marker in CONCURRENT_CHANGE_MARKERS
    )


@dataclass(frozen=True)
class WorktreeInfo:
    path: str
    head: str | None
    branch: str | None  # short name, None when detached
    detached: bool
    bare: bool
    locked: bool
    lock_reason: str | None
    prunable: bool


@dataclass(frozen=True)
class BranchRefs:
    exists: bool
    remotes: list[str]  # "origin/<branch>", …
    clash: str | None  # an existing branch that makes this name impossible to create (`a` for `a/b`)


@dataclass(frozen=True)
class WorktreeStatus:
    changed: list[str] = field(default_factory=list)  # porcelain lines: "XY path"
    unsaved_commits: int = 0  # commits reachable only from a detached HEAD
    branch: str | None = None
    head: str | None = None

    @property
    def dirty(self) -> bool:
        return bool(self.changed) or self.unsaved_commits > 0


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Machine-readable messages, never a prompt, and no optional lock that an agent's own git would trip on.
    env.update({"LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0"})
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(key, None)
    if extra:
        env.update(extra)
    return env


def _git_command(git: str, cwd: str | Path | Confined, args: tuple[str, ...], env: Mapping[str, str] | None) -> Prepare:
    """git's argument list and environment in `cwd`, worked out in the thread that starts it: a slot
    (`Confined`) is checked by the confinement guard there, right before, and git pinned to it."""

    def prepare() -> tuple[list[str], Mapping[str, str] | None]:
        where, pinned = cwd, env
        if isinstance(cwd, Confined):
            checked = check_slot(cwd.bounds, cwd.path)
            where, pinned = checked.path, {**checked.git_env(), **(env or {})}
        return [git, "-C", str(where), *args], _env(pinned)

    return prepare


def reject_option_like(value: str, what: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT) -> None:
    if value.startswith("-"):
        raise CoordError(code, f"{what} {value!r} starts with '-', which git would read as an option")
    if "\x00" in value:
        raise CoordError(code, f"{what} contains a NUL byte")


class GitDriver:
    def __init__(self, git: str = "git") -> None:
        self.git = git
        self._branch_verdicts: dict[str, bool] = {}

    async def run(
        self, cwd: str | Path | Confined, *args: str, check: bool = True, env: Mapping[str, str] | None = None
    ) -> str:
        """Run git in `cwd`. A slot (`Confined`) is checked by the confinement guard right before, and git
        is pinned to it (GIT_DIR, GIT_WORK_TREE): see `confinement`."""
        with tracer.start_as_current_span("git") as span:
            span.set_attribute("git.command", args[0] if args else "")
            span.set_attribute("git.cwd", str(cwd.path if isinstance(cwd, Confined) else cwd))
            started = time.monotonic()
            result = await run_prepared(_git_command(self.git, cwd, args, env))
            span.set_attribute("git.duration_ms", (time.monotonic() - started) * 1000)
            span.set_attribute("git.returncode", result.returncode)
            if check and result.returncode != 0:
                err = GitError(result.argv, result.returncode, result.stderr.decode("utf-8", "replace"))
                span.set_attribute("git.error", err.reason)
                raise err
            return result.stdout.decode("utf-8", "replace")

    async def run_input(
        self, cwd: str | Path | Confined, text: str, *args: str, env: Mapping[str, str] | None = None
    ) -> str:
        """`run` with `text` on git's standard input (always checked)."""
        with tracer.start_as_current_span("git") as span:
            span.set_attribute("git.command", args[0] if args else "")
            span.set_attribute("git.cwd", str(cwd.path if isinstance(cwd, Confined) else cwd))
            prepare = _git_command(self.git, cwd, args, env)
            result = await run_prepared(prepare, input=text.encode("utf-8", "surrogateescape"))
            span.set_attribute("git.returncode", result.returncode)
            if result.returncode != 0:
                raise GitError(result.argv, result.returncode, result.stderr.decode("utf-8", "replace"))
            return result.stdout.decode("utf-8", "replace")

    # ---- repositories and names ---------------------------------------------------------------

    async def main_worktree(self, path: Path) -> Path:
        """The main worktree of the repository containing `path` (a linked worktree resolves to it)."""
        try:
            is_dir = await anyio.Path(path).is_dir()
        except OSError as exc:  # a name too long, a path through a file: not a place we can use
            raise CoordError(ErrorCode.NOT_A_REPOSITORY, f"{path} cannot be used: {exc.strerror}") from exc
        if not is_dir:
            raise CoordError(ErrorCode.NOT_A_REPOSITORY, f"{path} is not a directory")
        try:
            out = await self.run(path, "rev-parse", "--path-format=absolute", "--git-common-dir")
        except GitError as exc:
            raise CoordError(ErrorCode.NOT_A_REPOSITORY, f"{path} is not inside a git repository") from exc
        common = Path(out.strip())
        if common.name != ".git":
            raise CoordError(ErrorCode.NOT_A_REPOSITORY, f"{path} belongs to a bare repository ({common})")
        return common.parent.resolve()

    async def accepts_branch_name(self, name: str) -> bool:
        """Git's verdict on `name` as a branch (`check-ref-format --branch`), asked once per name. Only
        for what `branch_names.check_branch_name` cannot judge itself: it refuses a leading `-` first."""
        valid = self._branch_verdicts.get(name)
        if valid is None:
            result = await run_child([self.git, "check-ref-format", "--branch", name], env=_env())
            valid = result.returncode == 0
            if len(self._branch_verdicts) >= BRANCH_VERDICTS_KEPT:
                self._branch_verdicts.pop(next(iter(self._branch_verdicts)))
            self._branch_verdicts[name] = valid
        return valid

    async def resolve_commit(self, repo: Path, rev: str) -> str:
        out = await self.run(repo, "rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
        return out.strip()

    async def head_commit(self, repo: Path) -> str | None:
        try:
            return (await self.run(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")).strip() or None
        except GitError:
            return None

    async def branch_refs(self, repo: Path, branch: str) -> BranchRefs:
        """In one call: does the local branch exist, which remote-tracking branches share its name,
        and would creating it clash with a branch above or below it (`a` vs `a/b`: refs are files)."""
        out = await self.run(repo, "for-each-ref", "--format=%(refname)", "refs/heads", f"refs/remotes/*/{branch}")
        own = f"refs/heads/{branch}"
        parts = branch.split("/")
        parents = {f"refs/heads/{'/'.join(parts[:i])}" for i in range(1, len(parts))}
        exists = False
        clash: str | None = None
        remotes: list[str] = []
        for ref in out.splitlines():
            if ref.startswith("refs/heads/"):
                if ref == own:
                    exists = True
                elif clash is None and (ref in parents or ref.startswith(f"{own}/")):
                    clash = ref.removeprefix("refs/heads/")
            elif (short := ref.removeprefix("refs/remotes/")).partition("/")[2] == branch:
                # Exact namesakes only: `origin/<branch>`, never `origin/x/<branch>`.
                remotes.append(short)
        return BranchRefs(exists, remotes, clash)

    # ---- worktrees ----------------------------------------------------------------------------

    async def worktrees(self, repo: Path) -> list[WorktreeInfo]:
        """Git's worktree list. A worktree being added or removed by another process at that moment can
        make git fail to read its half-written admin files; the listing is read-only, so it is retried
        a bounded number of times before the failure is reported."""
        for attempt in range(LISTING_ATTEMPTS):
            try:
                out = await self.run(repo, "worktree", "list", "--porcelain", "-z")
                break
            except GitError as exc:
                if attempt == LISTING_ATTEMPTS - 1 or not is_concurrent_worktree_change(exc):
                    raise
                await anyio.sleep(LISTING_RETRY_PAUSE_S * (attempt + 1))
        infos: list[WorktreeInfo] = []
        record: dict[str, str | None] = {}
        for item in [*out.split("\0"), ""]:
            if item == "":
                if record:
                    infos.append(_worktree_info(record))
                    record = {}
                continue
            key, _, value = item.partition(" ")
            record[key] = value if value else None
        return infos

    async def worktree_add(self, repo: Path, path: Path, *, branch: str, create_from: str | None) -> None:
        if create_from is not None:
            await self.run(repo, "worktree", "add", "--quiet", "-b", branch, "--", str(path), create_from)
        else:
            await self.run(repo, "worktree", "add", "--quiet", "--", str(path), branch)

    async def switch(self, worktree: Confined, branch: str, *, create_from: str | None = None) -> None:
        if create_from is not None:
            await self.run(worktree, "switch", "--quiet", "--no-guess", "-c", branch, create_from)
        else:
            await self.run(worktree, "switch", "--quiet", "--no-guess", branch)

    async def branch_at_head(self, worktree: Confined, branch: str) -> None:
        """A new branch at HEAD, checked out. Without a start point git neither reads the tree nor
        refreshes the index (no two-way merge): ~3 ms on 5,000 files, where `-c <branch> <commit>` costs
        ~11 ms even when the commit is HEAD (BENCHMARKS.md)."""
        await self.run(worktree, "switch", "--quiet", "--no-guess", "-c", branch)

    async def detach(self, worktree: Confined) -> None:
        await self.run(worktree, "switch", "--quiet", "--detach")

    async def worktree_remove(self, repo: Path, slot: Confined, *, force: bool = False) -> None:
        # Checked right before, like every command in a slot; git gets the real path it was checked at.
        checked = await anyio.to_thread.run_sync(check_slot, slot.bounds, slot.path)
        args = ["worktree", "remove", *(["--force"] if force else []), "--", str(checked.path)]
        await self.run(repo, *args)

    async def status(
        self, worktree: Confined, *, expect_detached: bool = False, count_unsaved: bool = True
    ) -> WorktreeStatus:
        """Changed and untracked files, the branch and HEAD, in one `git status` (porcelain v2), and the
        commits only a detached HEAD holds. With `expect_detached` (a FREE slot) both run at once."""
        status_args = (
            "status",
            "--porcelain=v2",
            "--branch",
            "-z",
            "--untracked-files=all",
            "--ignore-submodules=none",
        )
        if expect_detached:
            # A FREE slot is ours, not an agent's: let status write back the index it refreshed (an
            # optional lock), or a slot whose index was written in the second its files were (racily
            # clean entries) has every file re-read by every status until something rewrites it.
            out, count = await gather(
                self.run(worktree, *status_args, env={"GIT_OPTIONAL_LOCKS": "1"}), self._unsaved_commits(worktree)
            )
        else:
            out, count = await self.run(worktree, *status_args), None
        changed, branch, head = _parse_status_v2(out)
        unsaved = 0
        if branch is None and head is not None and count_unsaved:
            # A detached HEAD's own commits would be lost to the reflog once we detach elsewhere.
            unsaved = count if count is not None else await self._unsaved_commits(worktree)
        return WorktreeStatus(changed=changed, unsaved_commits=unsaved, branch=branch, head=head)

    async def heads_with_unsaved_commits(self, repo: Path, heads: Sequence[str]) -> set[str]:
        """Which of these commits hold commits no branch, tag, remote or rescue ref has: one `rev-list`
        for a whole pool instead of one per worktree (a head is in the output iff it is unsaved)."""
        if not heads:
            return set()
        out = await self.run(
            repo,
            "rev-list",
            *sorted(set(heads)),
            "--not",
            "--branches",
            "--tags",
            "--remotes",
            f"--glob={RESCUE_NAMESPACE.removeprefix('refs/')}/*",
        )
        listed = set(out.split())
        return {h for h in heads if h in listed}

    async def unsaved_commits(self, worktree: Confined) -> int:
        """How many commits only the worktree's HEAD holds (no branch, tag, remote or rescue ref)."""
        return await self._unsaved_commits(worktree)

    async def _unsaved_commits(self, worktree: Confined) -> int:
        out = await self.run(
            worktree,
            "rev-list",
            "--count",
            "HEAD",
            "--not",
            "--branches",
            "--tags",
            "--remotes",
            f"--glob={RESCUE_NAMESPACE.removeprefix('refs/')}/*",
            check=False,  # an unborn HEAD has no commits to lose
        )
        return int(out.strip() or 0) if out.strip().isdigit() else 0

    # ---- saving work --------------------------------------------------------------------------

    async def free_rescue_ref(self, repo: Path | Confined, branch: str | None, slot_id: str) -> str:
        """A rescue ref name nobody has used: two rescues of one branch in one millisecond must not clash."""
        base = rescue_ref_name(branch, slot_id)
        for n in range(100):
            ref = base if n == 0 else f"{base}-{n}"
            exists = await self.run(repo, "rev-parse", "--verify", "--quiet", ref, check=False)
            if not exists.strip():
                return ref
        raise GitError(["rev-parse", base], 1, "no free rescue ref name")

    async def discard_changes(self, worktree: Confined) -> None:
        """Reset tracked files and remove untracked ones (not ignored ones: build caches stay warm)."""
        await self.run(worktree, "reset", "--hard", "--quiet")
        await self.run(worktree, "clean", "-d", "--force", "--quiet")


def _parse_status_v2(out: str) -> tuple[list[str], str | None, str | None]:
    """(changes as "XY path", branch or None when detached, HEAD commit or None when unborn)."""
    changed: list[str] = []
    branch: str | None = None
    head: str | None = None
    fields = out.split("\0")
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if not entry:
            continue
        if entry.startswith("# branch.oid "):
            oid = entry.removeprefix("# branch.oid ")
            head = None if oid == "(initial)" else oid
        elif entry.startswith("# branch.head "):
            name = entry.removeprefix("# branch.head ")
            branch = None if name == "(detached)" else name
        elif entry.startswith("? "):
            changed.append(f"?? {entry[2:]}")
        elif entry.startswith("1 "):
            parts = entry.split(" ", 8)
            changed.append(f"{parts[1]} {parts[8]}")
        elif entry.startswith("2 "):
            parts = entry.split(" ", 9)
            changed.append(f"{parts[1]} {parts[9]}")
            i += 1  # a rename carries its source path as the next field
        elif entry.startswith("u "):
            parts = entry.split(" ", 10)
            changed.append(f"{parts[1]} {parts[10]}")
    return changed, branch, head


def _worktree_info(record: dict[str, str | None]) -> WorktreeInfo:
    branch_ref = record.get("branch")
    return WorktreeInfo(
        path=record.get("worktree") or "",
        head=record.get("HEAD"),
        branch=branch_ref.removeprefix("refs/heads/") if branch_ref else None,
        detached="detached" in record,
        bare="bare" in record,
        locked="locked" in record,
        lock_reason=record.get("locked"),
        prunable="prunable" in record,
    )


def rescue_ref_name(branch: str | None, slot_id: str, when: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when or time.time()))
    suffix = f"{int((when or time.time()) * 1000) % 1000:03d}"
    return f"{RESCUE_NAMESPACE}/{branch or slot_id}/{stamp}.{suffix}"
