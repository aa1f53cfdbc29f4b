"""Adopting the worktrees a legacy Markdown pool file lists (``agent-coord import-pool``).

Every row is checked against git before anything changes, and all problems are reported at once,
each naming its line; the store writes then happen in one transaction, so an import is all or
nothing. Decisions, and why:

* **Paths** must be worktrees of the repository (``git worktree list``) and direct children of its
  pool root. The pool confines every slot to the pool root (release and allocation refuse a path
  outside it), so a slot adopted from elsewhere could never be released; the error says how to
  move it (``git worktree move``). Relative paths are read from the pool file's directory, as a
  Markdown link would be. The main worktree is never a slot.
* **FREE** rows must be clean (no changes, no untracked files, no commits only on a detached HEAD)
  and unlocked, because a FREE slot is handed to the next agent that asks. A FREE worktree that has
  a branch checked out is detached (the branch itself stays), as a released slot would be.
* **BUSY** rows (and ALLOCATING/RELEASING, which a hand-kept file cannot mean literally) say
  somebody is using the worktree: they are adopted BUSY for the named agent, with a new fencing token
  and a lease, exactly like a grant, and then liveness governs them. The agent renews that lease by
  running an agent-coord server under the same id (``AGENT_COORD_AGENT_ID``); if it never does,
  validation reclaims the slot when the lease lapses, saving any work to a rescue ref first. An
  agent id the store does not know is recorded as a placeholder agent whose only liveness signal is
  that lease (its host is ``(imported)``, never a real host name, so no process check applies). A
  BUSY row must name its agent. The branch is git's: a row whose branch disagrees with git is an
  error (the file is out of date), and a row without a branch takes git's.
* **QUARANTINED** rows stay quarantined (never handed out) with git's branch and no holder.
* A path the store already knows is **skipped** and its record kept, so running an import twice is
  harmless; the store, once it knows a slot, is the truth.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import anyio
from opentelemetry import trace

from agent_coord.engine.errors import CoordError
from agent_coord.engine.git.driver import GitDriver, GitError, WorktreeStatus
from agent_coord.engine.liveness.judge import Identity
from agent_coord.engine.repos import RepoResolver, bounds_of, confine
from agent_coord.engine.store import AdoptionConflictError, BranchHeldError, EventDraft, SlotAdoption, Store
from agent_coord.engine.store.records import HELD_STATES, Action, Agent, Repo, SlotState
from agent_coord.pool_file.import_rows import (
    ImportPlan,
    ImportResult,
    ImportRow,
    PoolImportError,
    absolute,
    dirty_message,
    map_windows_path,
    resolved,
    store_problem,
    target_state,
    unmapped_windows_path,
    windows_path,
)
from agent_coord.pool_file.markdown import ParsedPoolRow, PoolFileError, parse_pool_markdown

tracer = trace.get_tracer("agent-coord.import")

# Not a valid host name (parentheses), so `judge` never mistakes a placeholder for a local process.
PLACEHOLDER_HOST = "(imported)"
PLACEHOLDER_STATUS = "imported"
STATUS_CONCURRENCY = 8


class PoolImporter:
    def __init__(self, store: Store, git: GitDriver, repos: RepoResolver, identity: Identity) -> None:
        self.store = store
        self.git = git
        self.repos = repos
        self.identity = identity

    async def import_text(
        self,
        text: str,
        *,
        base_dir: Path,
        source: str,
        repo_arg: str | None = None,
        lease_s: float,
        dry_run: bool = False,
    ) -> ImportResult:
        """Raises `PoolFileError` (malformed table), `PoolImportError` (rows git contradicts) or
        `CoordError` (the repository cannot be resolved). Nothing has changed when any is raised."""
        with tracer.start_as_current_span("import_pool") as span:
            span.set_attribute("import.source", source)
            span.set_attribute("import.dry_run", dry_run)
            rows = parse_pool_markdown(text)
            repo = await self.repos.resolve(repo_arg)
            plans = await self._check(repo, rows, base_dir)
            span.set_attribute("import.rows", len(plans))
            new_agents = await self._placeholders(repo, plans, lease_s)
            if dry_run:
                return self._result(repo, source, True, plans, {}, new_agents, lease_s)
            adopted = await self._adopt(repo, plans, new_agents, lease_s, source)
            # The person's worktrees are the pool's now: once nothing else is there, the root is its own.
            await self.repos.mark_if_own(repo)
            return self._result(repo, source, False, plans, adopted, new_agents, lease_s)

    # ---- checking -------------------------------------------------------------------------------

    async def _check(self, repo: Repo, rows: list[ParsedPoolRow], base_dir: Path) -> list[ImportPlan]:
        problems: list[PoolFileError] = []
        main = Path(repo.path)
        try:
            worktrees = await self.git.worktrees(main)
        except GitError as exc:
            raise PoolImportError([PoolFileError(0, f"git worktree list failed in {repo.path}: {exc.reason}")]) from exc
        all_slots = await self.store.slots()
        # resolve() reads symlinks from disk: keep it off the event loop.
        by_path, known = await anyio.to_thread.run_sync(
            lambda: ({resolved(w.path): w for w in worktrees}, {resolved(s.path): s for s in all_slots})
        )
        held_branches = {
            s.branch: s for s in await self.store.slots(repo.id) if s.state in HELD_STATES and s.branch is not None
        }
        pool_root = Path(repo.pool_root)
        seen: dict[Path, int] = {}
        candidates: list[ImportPlan] = []
        for row in rows:
            assert row.path is not None  # the parser refuses an empty path
            foreign = windows_path(row.path)
            if foreign is not None:
                mapped = await anyio.to_thread.run_sync(map_windows_path, foreign, pool_root, set(by_path))
                if mapped is None:
                    problems.append(PoolFileError(row.line, unmapped_windows_path(row.path, foreign, pool_root)))
                    continue
                path = mapped
            else:
                path = await absolute(row.path, base_dir)
            where = row.path if str(path) == row.path else f"{row.path} ({path})"
            if path in seen:
                problems.append(PoolFileError(row.line, f"{where} is listed again (first on line {seen[path]})"))
                continue
            seen[path] = row.line
            info = by_path.get(path)
            if info is None:
                problems.append(PoolFileError(row.line, await self._not_a_worktree(where, path, main)))
                continue
            if path == main:
                problems.append(PoolFileError(row.line, f"{where} is the main worktree; it cannot be a pool slot"))
                continue
            if info.prunable:
                problems.append(
                    PoolFileError(row.line, f"{where}: git lists it but its directory is gone; run: git worktree prune")
                )
                continue
            try:
                await anyio.to_thread.run_sync(confine, pool_root, path)
            except CoordError:
                problems.append(
                    PoolFileError(
                        row.line,
                        f"{where} is outside the pool root {pool_root}; move it first: "
                        f"git worktree move {path} {pool_root / path.name}",
                    )
                )
                continue
            slot = known.get(path)
            plan = ImportPlan(row=row, path=path, state=target_state(row.status), branch=info.branch, owner=None)
            if slot is not None:
                plan.known_as = slot.id
                plan.state, plan.branch, plan.owner = slot.state, slot.branch, slot.owner
                candidates.append(plan)
                continue
            if plan.state == SlotState.BUSY:
                if row.agent is None:
                    problems.append(
                        PoolFileError(row.line, f"{where} is {row.status.value} but names no agent; add the agent id")
                    )
                    continue
                plan.owner = row.agent
            if row.branch is not None and row.branch != info.branch and plan.state != SlotState.FREE:
                problems.append(
                    PoolFileError(
                        row.line,
                        f"the file says branch {row.branch!r} but git has "
                        f"{repr(info.branch) if info.branch else 'a detached HEAD'} checked out at {path}",
                    )
                )
                continue
            holder = held_branches.get(info.branch) if info.branch else None
            if plan.state == SlotState.BUSY and holder is not None:
                problems.append(
                    PoolFileError(
                        row.line, f"branch {info.branch!r} is already held by agent {holder.owner} ({holder.id})"
                    )
                )
                continue
            if plan.state == SlotState.FREE and info.locked:
                problems.append(
                    PoolFileError(
                        row.line,
                        f"{where} is locked ({info.lock_reason or 'git worktree lock'}) and cannot be handed out; "
                        "unlock it or list it as BUSY",
                    )
                )
                continue
            candidates.append(plan)
        # Only FREE rows need `git status` (they must be clean); run those at once, a few at a time.
        statuses = await self._statuses(
            repo, [p.path for p in candidates if p.known_as is None and p.state == SlotState.FREE]
        )
        plans: list[ImportPlan] = []
        for plan in candidates:
            if plan.known_as is None and plan.state == SlotState.FREE:
                status = statuses[plan.path]
                if isinstance(status, str):
                    problems.append(PoolFileError(plan.row.line, f"git status failed in {plan.path}: {status}"))
                    continue
                if status.dirty:
                    problems.append(PoolFileError(plan.row.line, dirty_message(plan.path, status)))
                    continue
                plan.detach_from, plan.branch = status.branch, None
            plans.append(plan)
        if problems:
            raise PoolImportError(problems)
        return plans

    async def _not_a_worktree(self, where: str, path: Path, main: Path) -> str:
        try:
            if not await anyio.Path(path).is_dir():
                return f"{where} does not exist"
        except OSError as exc:
            return f"{where} cannot be used: {exc.strerror}"
        try:
            other = await self.git.main_worktree(path)
        except CoordError:
            return f"{where} is not a git worktree"
        if other != main:
            return f"{where} is a worktree of another repository ({other}), not of {main}"
        return f"{where} is not a worktree of {main} (git worktree list does not show it)"

    async def _statuses(self, repo: Repo, paths: list[Path]) -> dict[Path, WorktreeStatus | str]:
        bounds = await bounds_of(repo)
        found: dict[Path, WorktreeStatus | str] = {}
        limiter = anyio.CapacityLimiter(STATUS_CONCURRENCY)

        async def probe(path: Path) -> None:
            async with limiter:
                try:
                    found[path] = await self.git.status(bounds.slot(path))
                except GitError as exc:
                    found[path] = exc.reason

        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(probe, path)
        return found

    async def _placeholders(self, repo: Repo, plans: list[ImportPlan], lease_s: float) -> list[Agent]:
        registered = {a.id for a in await self.store.agents()}
        now = time.time()
        owners = sorted({p.owner for p in plans if p.known_as is None and p.owner and p.owner not in registered})
        return [
            Agent(
                id=owner,
                host=PLACEHOLDER_HOST,
                boot_id="",
                pid=0,
                pid_create_time=0.0,
                server_pid=0,
                server_create_time=0.0,
                repo_id=repo.id,
                status=PLACEHOLDER_STATUS,
                note="recorded by import-pool; governed by its lease until it registers",
                started_at=now,
                last_heartbeat=now,
                lease_expires_at=now + lease_s,
            )
            for owner in owners
        ]

    # ---- adopting -------------------------------------------------------------------------------

    async def _adopt(
        self, repo: Repo, plans: list[ImportPlan], agents: list[Agent], lease_s: float, source: str
    ) -> dict[Path, str]:
        todo = [p for p in plans if p.known_as is None]
        if not todo:
            return {}
        # Git first, store second: a FREE slot in the store must already be detached, or the next
        # agent would be handed a worktree whose branch is still checked out.
        detached: list[ImportPlan] = []
        bounds = await bounds_of(repo)
        try:
            for plan in todo:
                if plan.detach_from is not None:
                    await self.git.detach(bounds.slot(plan.path))
                    detached.append(plan)
            adoptions = [
                SlotAdoption(
                    path=str(p.path),
                    state=p.state,
                    branch=p.branch,
                    owner=p.owner,
                    event=EventDraft(
                        Action.ADOPT,
                        p.state.value,
                        agent_id=self.identity.agent_id,
                        repo_id=repo.id,
                        branch=p.branch if p.detach_from is None else p.detach_from,
                        detail={
                            "source": "import",
                            "file": source,
                            "line": p.row.line,
                            "path": str(p.path),
                            "owner": p.owner,
                            "detached_from": p.detach_from,
                        },
                    ),
                )
                for p in todo
            ]
            slots = await self.store.adopt_slots(repo, adoptions, lease_s=lease_s, agents=agents)
        except (GitError, AdoptionConflictError, BranchHeldError) as exc:
            # Put back what git changed, so a failed import leaves the worktrees as they were.
            with anyio.CancelScope(shield=True):
                for plan in detached:
                    assert plan.detach_from is not None
                    with contextlib.suppress(GitError):  # best effort: the branch ref itself is untouched
                        await self.git.switch(bounds.slot(plan.path), plan.detach_from)
            raise PoolImportError([store_problem(exc, todo)]) from exc
        return {Path(s.path): s.id for s in slots}

    def _result(
        self,
        repo: Repo,
        source: str,
        dry_run: bool,
        plans: list[ImportPlan],
        adopted: dict[Path, str],
        agents: list[Agent],
        lease_s: float,
    ) -> ImportResult:
        rows: list[ImportRow] = []
        placeholder_ids = {a.id for a in agents}
        for p in plans:
            notes: list[str] = []
            if p.known_as is not None:
                notes.append(f"already in the pool as {p.known_as}; its record is kept")
                listed = target_state(p.row.status)
                if listed != p.state or (p.row.agent is not None and p.row.agent != p.owner):
                    # E.g. a server's validation adopted it before the import: say so, do not guess.
                    holder = f" ({p.row.agent})" if p.row.agent else ""
                    notes.append(f"the file says {p.row.status.value}{holder}")
            if p.detach_from is not None:
                notes.append(f"detached from {p.detach_from}")
            if p.known_as is None and p.state == SlotState.BUSY:
                notes.append(f"lease {lease_s:g}s")
                if p.owner in placeholder_ids:
                    notes.append("new agent (placeholder until it registers)")
            if p.row.status != p.state and p.known_as is None:
                notes.append(f"listed as {p.row.status.value}")
            rows.append(
                ImportRow(
                    line=p.row.line,
                    path=str(p.path),
                    action="skip" if p.known_as is not None else "adopt",
                    state=p.state.value,
                    agent_id=p.owner,
                    branch=p.branch,
                    worktree_id=p.known_as or adopted.get(p.path),
                    note="; ".join(notes),
                )
            )
        adopted_count = sum(1 for p in plans if p.known_as is None)
        return ImportResult(
            repo=repo.path,
            pool_root=repo.pool_root,
            source=source,
            dry_run=dry_run,
            adopted=adopted_count,
            skipped=len(plans) - adopted_count,
            placeholder_agents=sorted(placeholder_ids),
            lease_s=lease_s,
            rows=rows,
        )
