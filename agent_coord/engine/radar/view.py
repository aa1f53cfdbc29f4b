"""The stored radar results as agents see them: from each receiving allocation's side."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from agent_coord.engine.radar.models import BaseBranch, Conflict, ConflictPair, OtherAllocation
from agent_coord.engine.store.radar import BASE_PREFIX, LivePair, SideInfo


def _other(info: SideInfo) -> OtherAllocation:
    return OtherAllocation(
        worktree_id=info.worktree_id, branch=info.branch, agent_id=info.agent_id, task=info.task, host=info.host
    )


def _side_conflicts(detail: dict[str, Any], other: OtherAllocation | BaseBranch, since: float) -> list[Conflict]:
    out: list[Conflict] = []
    conflict = [str(p) for p in detail.get("conflict", [])]
    if conflict:
        raw = detail.get("ranges", {})
        ranges = {p: [(int(r[0]), int(r[1])) for r in raw[p]] for p in conflict if raw.get(p)}
        out.append(_conflict("conflict", conflict, ranges or None, other, since))
    overlap = [str(p) for p in detail.get("overlap", [])]
    if overlap:
        out.append(_conflict("overlap", overlap, None, other, since))
    return out


def _conflict(
    kind: str, paths: list[str], ranges: dict[str, list[tuple[int, int]]] | None, other: BaseModel, since: float
) -> Conflict:
    # By alias: `with` is a Python keyword, so the field is `with_` in code.
    return Conflict.model_validate({"kind": kind, "paths": paths, "ranges": ranges, "with": other, "since": since})


def conflicts_for(pairs: list[LivePair], receives: Callable[[SideInfo], bool]) -> list[Conflict]:
    """The conflicts of every allocation for which `receives(side)` is true, from its own side."""
    out: list[Conflict] = []
    for live in pairs:
        p = live.pair
        if receives(live.a):
            other: OtherAllocation | BaseBranch = (
                _other(live.b) if live.b is not None else BaseBranch(base=_short(p.b.removeprefix(BASE_PREFIX)))
            )
            out.extend(_side_conflicts(p.detail.get("a", {}), other, p.since))
        if live.b is not None and receives(live.b):
            out.extend(_side_conflicts(p.detail.get("b", {}), _other(live.a), p.since))
    return out


def conflict_pairs(pairs: list[LivePair]) -> list[ConflictPair]:
    out: list[ConflictPair] = []
    for live in pairs:
        p = live.pair
        side = p.detail.get("a", {})
        paths = side.get("conflict") if p.kind == "conflict" else side.get("overlap")
        b = p.b if live.b is not None else BASE_PREFIX + _short(p.b.removeprefix(BASE_PREFIX))
        out.append(ConflictPair(a=p.a, b=b, kind=p.kind, paths=[str(x) for x in paths or []], since=p.since))  # type: ignore[arg-type]
    return out


def _short(ref: str) -> str:
    for prefix in ("refs/heads/", "refs/remotes/"):
        if ref.startswith(prefix):
            return ref.removeprefix(prefix)
    return ref
