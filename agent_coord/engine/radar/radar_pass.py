"""One radar pass: snapshot every live allocation of this host, compare each pair and each allocation
with its base, store what changed.

Incremental: a pair is compared again only when one side's state (HEAD commit and snapshot tree), its
fencing token, or the base tip changed since the stored comparison; otherwise the stored row stands.
Change detection in two steps: inotify (watch.py) says which worktrees may have changed since the last
pass, HEAD is re-read for the others; only those are snapshotted again, and a worktree snapshotted by
this process before is looked at again only in the directories inotify names (snapshot.py). The
snapshot's tree id then decides: it changes exactly when the working tree's content does, an unstaged
edit of a tracked file included (an index mtime or HEAD alone would miss that).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pygit2

from agent_coord.engine.git.confinement import Bounds
from agent_coord.engine.git.driver import GitDriver, GitError
from agent_coord.engine.radar.predict import PairPrediction, Predictor, SidePaths
from agent_coord.engine.radar.snapshot import Snapshot, SnapshotError, admin_dir, snapshot
from agent_coord.engine.radar.watch import WorktreeWatcher
from agent_coord.engine.store import EventDraft, Store
from agent_coord.engine.store.radar import BASE_PREFIX, RadarPair, RadarTree, RadarWrite
from agent_coord.engine.store.records import Action, Repo, Slot, SlotState, of_this_host

logger = logging.getLogger("agent-coord")
SNAPSHOT_CONCURRENCY = 2  # background work: at most one git process per core of a 2-core machine
# More changed directories than this in one worktree (a build, a checkout): look at all of it.
MAX_CHANGED_DIRECTORIES = 64
GIT_ERRORS = (pygit2.GitError, KeyError, ValueError)


@dataclass
class PassReport:
    worktrees: int = 0
    pairs: int = 0  # pairs and base comparisons that exist after the pass
    computed: int = 0  # of which compared again in this pass
    snapshots: int = 0  # worktrees snapshotted in this pass (the others had not changed)
    whole: int = 0  # of which looked at whole (the others: only in the directories that changed)
    snapshot_ms: float = 0.0  # of the duration: snapshots (git)
    compare_ms: float = 0.0  # of the duration: comparisons (libgit2)
    conflicts: int = 0
    overlaps: int = 0
    skipped: list[str] = field(default_factory=list)  # worktree ids not snapshotted, with why
    duration_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)  # where the duration went (the bench prints it)

    def stage(self, name: str, since: float) -> float:
        """Adds the time since `since` (time.monotonic) to stage `name`; returns now."""
        now = time.monotonic()
        self.stages_ms[name] = round(self.stages_ms.get(name, 0.0) + (now - since) * 1000, 2)
        return now


@dataclass(frozen=True)
class _Side:
    slot: Slot
    head: str
    tree: str
    base_ref: str | None
    base_commit: str | None

    @property
    def state(self) -> str:
        return f"{self.head}:{self.tree}"

    @property
    def token(self) -> int:
        assert self.slot.fencing_token is not None
        return self.slot.fencing_token


def side_detail(side: SidePaths) -> dict[str, Any]:
    return {
        "conflict": side.conflict,
        "overlap": side.overlap,
        "ranges": {p: [list(r) for r in rs] for p, rs in side.ranges.items()},
    }


class RadarPass:
    def __init__(self, store: Store, git: GitDriver, host: str, scratch: Path | None = None) -> None:
        self.store = store
        self.git = git
        self.host = host
        self._given_scratch = scratch
        self._own_scratch: Path | None = None  # made at the first pass, removed by close()
        self._predictors: dict[str, Predictor] = {}
        # Worktree id -> the fencing token whose snapshot the scratch index `<id>.index` holds now.
        self._indexes: dict[str, int] = {}
        self.watcher = WorktreeWatcher()

    def close(self) -> None:
        self.watcher.close()
        self._indexes.clear()
        if self._own_scratch is not None:
            shutil.rmtree(self._own_scratch, ignore_errors=True)
            self._own_scratch = None

    def _scratch(self) -> Path:
        """Where the index copies go: made only by a server that runs passes (every coordinator has a
        RadarPass; most never run one), and made again if a temp cleaner removed it."""
        if self._given_scratch is not None:
            return self._given_scratch
        if self._own_scratch is None or not self._own_scratch.is_dir():
            self._own_scratch = Path(tempfile.mkdtemp(prefix="agent-coord-radar-"))
        return self._own_scratch

    async def run(self) -> PassReport:
        started = time.monotonic()
        report = PassReport()
        slots = await self.store.slots(None)
        agents = {a.id: a for a in await self.store.agents()}
        live = [
            s
            for s in slots
            if s.state == SlotState.BUSY
            and s.branch is not None
            and s.fencing_token is not None
            # Only worktrees on this host can be snapshotted: another host's are compared there.
            and of_this_host(s.host, self.host, shared=self.store.postgres)
            and (s.owner not in agents or agents[s.owner].host == self.host)
        ]
        # Each host's radar keeps its own clones' rows: another host's are that host's radar's.
        repos = [r for r in await self.store.repos() if of_this_host(r.host, self.host, shared=self.store.postgres)]
        t = report.stage("store_read", started)
        bounds = await anyio.to_thread.run_sync(_bounds, repos)
        admins = await anyio.to_thread.run_sync(_admin_dirs, live, bounds, report)
        live = [s for s in live if s.path in admins]  # a slot that fails the confinement guard is not read
        t = report.stage("confinement", t)
        changed = self.watcher.changed(admins)
        report.stage("watcher", t)
        for repo in repos:
            mine = [s for s in live if s.repo_id == repo.id]
            await self.run_repo(repo, bounds.get(repo.id), mine, changed, admins, report)
        report.duration_ms = round((time.monotonic() - started) * 1000, 1)
        return report

    def _since(self, slot: Slot) -> set[str] | None:
        """The directories to look at again in `slot`, or None for all of it: the first snapshot of an
        allocation in this process, when inotify cannot say, or when too much changed."""
        if self._indexes.get(slot.id) != slot.fencing_token:
            return None
        touched = self.watcher.touched(slot.path)
        if touched is None or len(touched) > MAX_CHANGED_DIRECTORIES:
            return None
        return touched

    def _predictor(self, repo: Repo) -> Predictor:
        if repo.path not in self._predictors:
            self._predictors[repo.path] = Predictor(repo.path)
        return self._predictors[repo.path]

    async def run_repo(
        self,
        repo: Repo,
        bounds: Bounds | None,
        live: list[Slot],
        changed: set[str],
        admins: dict[str, str],
        report: PassReport,
    ) -> None:
        t = time.monotonic()
        old_trees, old_pairs = await self.store.radar_rows(repo.id)
        if not live and not old_trees and not old_pairs:
            return
        known: dict[tuple[str, int], RadarTree] = {(t.worktree_id, t.fencing_token): t for t in old_trees}
        unknown = [(s.id, s.fencing_token) for s in live if (s.id, s.fencing_token) not in known]
        bases = await self.store.allocation_bases((wt, tok) for wt, tok in unknown if tok is not None)
        predictor = self._predictor(repo)
        t = report.stage("store_read", t)
        # Unchanged by the watcher's account, but HEAD may still have moved (a ref update touches no
        # watched file): those are snapshotted too.
        stale = await anyio.to_thread.run_sync(_moved_heads, predictor, live, known, admins, changed)
        t = report.stage("heads", t)
        snaps: dict[str, Snapshot] = {}
        scratch = self._scratch()
        limiter = anyio.Semaphore(SNAPSHOT_CONCURRENCY)

        async def take(slot: Slot) -> None:
            async with limiter:
                where = bounds.slot(slot.path) if bounds is not None else Path(slot.path)
                since = self._since(slot)
                self._indexes.pop(slot.id, None)  # until this snapshot succeeds
                try:
                    try:
                        snaps[slot.id] = await snapshot(self.git, where, scratch, slot.id, since=since)
                    except (GitError, SnapshotError):
                        if since is None:
                            raise
                        report.whole += 1  # a path git refused, a scratch index gone: all of it then
                        snaps[slot.id] = await snapshot(self.git, where, scratch, slot.id)
                except (GitError, SnapshotError, OSError) as exc:
                    self.watcher.mark(slot.path)
                    report.skipped.append(f"{slot.id}: {exc}")
                    return
                assert slot.fencing_token is not None
                self._indexes[slot.id] = slot.fencing_token
                if since is None:
                    report.whole += 1

        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            for slot in live:
                if slot.path in changed or slot.id in stale:
                    tg.start_soon(take, slot)
        report.snapshots += len(snaps)
        t1 = time.monotonic()
        report.snapshot_ms += round((t1 - t0) * 1000, 1)
        report.stage("snapshot", t0)
        write = await anyio.to_thread.run_sync(
            _compare, predictor, repo, live, snaps, known, bases, {(p.a, p.b): p for p in old_pairs}, report
        )
        report.compare_ms += round((time.monotonic() - t1) * 1000, 1)
        t = report.stage("compare", t1)
        await self.store.save_radar(repo.id, write)
        report.stage("store_write", t)


def _compare(
    predictor: Predictor,
    repo: Repo,
    live: list[Slot],
    snaps: dict[str, Snapshot],
    known: dict[tuple[str, int], RadarTree],
    bases: dict[tuple[str, int], str | None],
    old_pairs: dict[tuple[str, str], RadarPair],
    report: PassReport,
) -> RadarWrite:
    """Blocking (libgit2): the comparison part of a pass, run in a worker thread."""
    now = time.time()
    write = RadarWrite()
    sides: list[_Side] = []
    for slot in live:
        try:
            _side_of(predictor, repo, slot, snaps, known, bases, write, sides)
        except GIT_ERRORS as exc:
            report.skipped.append(f"{slot.id}: {exc}")
    report.worktrees += len(sides)
    live_tokens = {s.slot.id: s.token for s in sides}
    write.drop_worktrees = {wt for wt, token in known if live_tokens.get(wt) != token}
    write.drop_worktrees -= {t.worktree_id for t in write.trees}
    return _compare_pairs(predictor, repo, sides, old_pairs, write, report, now)


def _side_of(
    predictor: Predictor,
    repo: Repo,
    slot: Slot,
    snaps: dict[str, Snapshot],
    known: dict[tuple[str, int], RadarTree],
    bases: dict[tuple[str, int], str | None],
    write: RadarWrite,
    sides: list[_Side],
) -> None:
    """One live allocation as a side of comparisons: from its new snapshot, else from what was stored."""
    assert slot.fencing_token is not None
    old = known.get((slot.id, slot.fencing_token))
    snap = snaps.get(slot.id)
    head = predictor.resolve_head(snap.head) if snap is not None else None
    if snap is None or head is None:
        if old is not None:  # unchanged, or failed this time (the next pass tries again)
            base_commit = predictor.commit_of(old.base_ref) if old.base_ref else None
            sides.append(_Side(slot, old.head, old.tree, old.base_ref, base_commit))
            if base_commit != old.base_commit:  # the base moved: its changes-since-base follow
                write.trees.append(replace(old, base_commit=base_commit))
                write.changes[slot.id] = _changed_since_base(predictor, old.head, old.tree, base_commit)
        return
    if old is not None:
        base_name = old.base_ref
    else:
        assert slot.fencing_token is not None
        base_name = predictor.base_branch(bases.get((slot.id, slot.fencing_token)))
    if base_name is not None and base_name.removeprefix("refs/heads/") == slot.branch:
        base_name = None  # a branch is not compared with itself
    base_commit = predictor.commit_of(base_name) if base_name else None
    side = _Side(slot, head, snap.tree, base_name, base_commit)
    sides.append(side)
    if old is None or old.head != head or old.tree != snap.tree or old.base_commit != base_commit:
        assert slot.fencing_token is not None
        write.trees.append(RadarTree(slot.id, slot.fencing_token, repo.id, head, snap.tree, base_name, base_commit))
        write.changes[slot.id] = _changed_since_base(predictor, head, snap.tree, base_commit)


def _compare_pairs(
    predictor: Predictor,
    repo: Repo,
    sides: list[_Side],
    old_pairs: dict[tuple[str, str], RadarPair],
    write: RadarWrite,
    report: PassReport,
    now: float,
) -> RadarWrite:
    wanted: dict[tuple[str, str], RadarPair] = {}
    ordered = sorted(sides, key=lambda s: s.slot.id)

    def compare(key: tuple[str, str], fn: Callable[[RadarPair | None], RadarPair]) -> None:
        old = old_pairs.get(key)
        try:
            wanted[key] = fn(old)
        except GIT_ERRORS as exc:  # an object gone (gc, a rewritten ref): keep what we knew, retry next pass
            report.skipped.append(f"{key[0]} with {key[1]}: {exc}")
            if old is not None:
                wanted[key] = old

    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            compare((a.slot.id, b.slot.id), partial(_pair, predictor, repo, a, b, now=now))
        if a.base_ref and a.base_commit:
            compare((a.slot.id, BASE_PREFIX + a.base_ref), partial(_base_pair, predictor, repo, a, now=now))
    for key, pair in wanted.items():
        before = old_pairs.get(key)
        if before is None or before != pair:
            write.pairs.append(pair)
            report.computed += 1
        write.events.extend(_transition_events(repo, before, pair, ordered))
        if pair.kind == "conflict":
            report.conflicts += 1
        elif pair.kind == "overlap":
            report.overlaps += 1
    for key, gone in old_pairs.items():
        if key not in wanted:
            write.drop_pairs.add(key)
            write.events.extend(_transition_events(repo, gone, None, ordered))
    report.pairs += len(wanted)
    return write


def _changed_since_base(predictor: Predictor, head: str, tree: str, base_commit: str | None) -> list[str]:
    """The paths this side changed since it left its base (the edit guard looks them up)."""
    start = predictor.merge_base(head, base_commit) if base_commit else None
    return sorted(set(predictor.changed(predictor.tree_of(start or head), tree).values()))


def _bounds(repos: list[Repo]) -> dict[int, Bounds]:
    """Each repository's pool, for the confinement guard (blocking: resolves paths)."""
    out: dict[int, Bounds] = {}
    for repo in repos:
        with contextlib.suppress(OSError):
            out[repo.id] = Bounds.of(repo.path, repo.pool_root)
    return out


def _admin_dirs(slots: list[Slot], bounds: dict[int, Bounds], report: PassReport) -> dict[str, str]:
    """{worktree path: its git admin dir} for the slots that pass the confinement guard (blocking)."""
    out: dict[str, str] = {}
    for s in slots:
        pool = bounds.get(s.repo_id)
        try:
            out[s.path] = str(admin_dir(pool.slot(s.path) if pool is not None else Path(s.path)))
        except (GitError, SnapshotError, OSError, UnicodeDecodeError) as exc:
            report.skipped.append(f"{s.id}: {exc}")
    return out


def _moved_heads(
    predictor: Predictor,
    live: list[Slot],
    known: dict[tuple[str, int], RadarTree],
    admins: dict[str, str],
    changed: set[str],
) -> set[str]:
    """Worktree ids the watcher saw no change in whose HEAD no longer is the one stored (blocking)."""
    out: set[str] = set()
    for s in live:
        if s.path in changed or s.fencing_token is None:
            continue
        old = known.get((s.id, s.fencing_token))
        try:
            head_file = (Path(admins[s.path]) / "HEAD").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, KeyError):
            head_file = ""
        if old is None or predictor.resolve_head(head_file) != old.head:
            out.add(s.id)
    return out


def _same_sides(old: RadarPair | None, a_token: int, b_token: int | None, a_state: str, b_state: str) -> bool:
    return (
        old is not None
        and old.a_token == a_token
        and old.b_token == b_token
        and old.a_state == a_state
        and old.b_state == b_state
    )


def _since(old: RadarPair | None, a_token: int, b_token: int | None, kind: str, now: float) -> float:
    """When this kind of collision was first seen for these two allocations."""
    if old is not None and old.a_token == a_token and old.b_token == b_token and old.kind == kind:
        return old.since
    return now


def _pair(predictor: Predictor, repo: Repo, a: _Side, b: _Side, old: RadarPair | None, *, now: float) -> RadarPair:
    if _same_sides(old, a.token, b.token, a.state, b.state):
        assert old is not None
        return old
    start = predictor.merge_base(a.head, b.head)
    prediction = (
        predictor.predict(predictor.tree_of(start), a.tree, b.tree)
        if start is not None
        else PairPrediction(SidePaths(), SidePaths())
    )
    detail = {"a": side_detail(prediction.a), "b": side_detail(prediction.b), "merge_base": start}
    kind = prediction.kind
    return RadarPair(
        a.slot.id,
        b.slot.id,
        repo.id,
        a.token,
        b.token,
        a.state,
        b.state,
        kind,
        detail,
        _since(old, a.token, b.token, kind, now),
    )


def _base_pair(predictor: Predictor, repo: Repo, a: _Side, old: RadarPair | None, *, now: float) -> RadarPair:
    assert a.base_ref is not None and a.base_commit is not None
    b_state = a.base_commit
    if _same_sides(old, a.token, None, a.state, b_state):
        assert old is not None
        return old
    start = predictor.merge_base(a.head, a.base_commit)
    base_tree = predictor.tree_of(a.base_commit)
    prediction = (
        predictor.predict(predictor.tree_of(start), a.tree, base_tree)
        if start is not None
        else PairPrediction(SidePaths(), SidePaths())
    )
    detail = {"a": side_detail(prediction.a), "b": side_detail(prediction.b), "merge_base": start}
    kind = prediction.kind
    return RadarPair(
        a.slot.id,
        BASE_PREFIX + a.base_ref,
        repo.id,
        a.token,
        None,
        a.state,
        b_state,
        kind,
        detail,
        _since(old, a.token, None, kind, now),
    )


def _transition_events(
    repo: Repo, old: RadarPair | None, new: RadarPair | None, sides: list[_Side]
) -> list[EventDraft]:
    """An event when a predicted conflict appears, and one when it goes away (resolved, or released)."""
    was = old is not None and old.kind == "conflict"
    same_allocations = old is not None and new is not None and (old.a_token, old.b_token) == (new.a_token, new.b_token)
    is_now = new is not None and new.kind == "conflict"
    branches = {s.slot.id: s.slot.branch for s in sides}
    out: list[EventDraft] = []
    if was and not (is_now and same_allocations):
        assert old is not None
        reason = "resolved" if same_allocations else "released"
        out.append(_event(repo, old, "cleared", branches, {"reason": reason}))
    if is_now and not (was and same_allocations):
        assert new is not None
        out.append(_event(repo, new, "conflict", branches, {}))
    return out


def _event(
    repo: Repo, pair: RadarPair, outcome: str, branches: dict[str, str | None], extra: dict[str, Any]
) -> EventDraft:
    paths = sorted(
        set(pair.detail.get("a", {}).get("conflict", [])) | set(pair.detail.get("b", {}).get("conflict", []))
    )
    other = pair.b.removeprefix(BASE_PREFIX) if pair.b.startswith(BASE_PREFIX) else branches.get(pair.b) or pair.b
    return EventDraft(
        Action.RADAR,
        outcome,
        repo_id=repo.id,
        worktree_id=pair.a,
        branch=branches.get(pair.a),
        fencing_token=pair.a_token,
        detail={"with": pair.b, "with_branch": other, "paths": paths, **extra},
    )
