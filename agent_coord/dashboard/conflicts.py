"""The conflict radar's pairs as people read them: who collides with whom, on which files, since when,
and what to do. One builder for the terminal dashboard and the web page, from the same report that
`coord://conflicts` and `agent-coord conflicts` show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agent_coord.engine.models import WorktreeView
from agent_coord.engine.radar.models import BaseBranch, Conflict, ConflictReport, OtherAllocation

Lines = list[tuple[int, int]]

# The skills' advice (multi-agent-conflict, "Predicted collisions"), worded for the person watching.
ADVICE = {
    ("conflict", False): "same lines on both sides: one agent keeps them, the other moves off them or rebases "
    "on the other branch once it merges; a file mostly one agent's goes to that agent; never edit the other's worktree",
    ("overlap", False): "same files, different lines: keep both changes small and rebase early once one side merges",
    ("conflict", True): "the base changed these lines since the branch left it: rebase onto the base now, "
    "before more work piles up on them",
    ("overlap", True): "the base changed these files too: rebase onto it early",
}
# The same, in a terminal column.
SHORT_ADVICE = {
    ("conflict", False): "one keeps the lines, the other rebases on it",
    ("overlap", False): "keep changes small; rebase early",
    ("conflict", True): "rebase onto the base now",
    ("overlap", True): "rebase onto the base early",
}


@dataclass(frozen=True)
class Side:
    worktree_id: str | None  # None: a base branch
    branch: str | None
    agent_id: str | None = None
    task: str | None = None

    @property
    def label(self) -> str:
        if self.worktree_id is None:
            return f"base {self.branch}"
        return f"{self.agent_id or '?'} · {self.branch or self.worktree_id}"


@dataclass(frozen=True)
class FileView:
    path: str  # in side a's names
    other_path: str | None  # in side b's names when it differs (a rename), else None
    a_lines: Lines = field(default_factory=list)  # a's colliding hunks in a's file (conflicts only)
    b_lines: Lines = field(default_factory=list)  # b's in b's file


@dataclass(frozen=True)
class PairView:
    kind: str  # conflict | overlap
    a: Side
    b: Side
    files: list[FileView]
    since: float
    advice: str
    short_advice: str
    also: list[str] = field(default_factory=list)  # files both changed, in different lines (beside a conflict)

    @property
    def with_base(self) -> bool:
        return self.b.worktree_id is None


def _matches(c: Conflict, other_id: str | None, base: str | None) -> bool:
    if isinstance(c.with_, OtherAllocation):
        return other_id is not None and c.with_.worktree_id == other_id
    return isinstance(c.with_, BaseBranch) and base is not None and c.with_.base == base


def _seen(report: ConflictReport, worktree: str, other_id: str | None, base: str | None, kind: str) -> list[Conflict]:
    return [c for c in report.worktrees.get(worktree, []) if c.kind == kind and _matches(c, other_id, base)]


def _side(worktree_id: str, slots: dict[str, WorktreeView], seen_from_other: Sequence[Conflict]) -> Side:
    slot = slots.get(worktree_id)
    if slot is not None:
        return Side(worktree_id, slot.branch, slot.agent_id, slot.task)
    for c in seen_from_other:  # another repository's slot than the one shown: the radar names it
        if isinstance(c.with_, OtherAllocation):
            return Side(worktree_id, c.with_.branch, c.with_.agent_id, c.with_.task)
    return Side(worktree_id, None)


def pair_views(report: ConflictReport | None, worktrees: Sequence[WorktreeView]) -> list[PairView]:
    """Every flagged pair, conflicts first, then the oldest first."""
    if report is None:
        return []
    slots = {w.worktree_id: w for w in worktrees}
    out: list[PairView] = []
    for p in report.pairs:
        base = p.b.removeprefix("base:") if p.b.startswith("base:") else None
        other_id = None if base is not None else p.b
        mine = _seen(report, p.a, other_id, base, p.kind)
        theirs = _seen(report, p.b, p.a, None, p.kind) if other_id is not None else []
        a = _side(p.a, slots, theirs)
        b = Side(None, base) if base is not None else _side(p.b, slots, [])
        a_ranges = {path: lines for c in mine for path, lines in (c.ranges or {}).items()}
        b_paths = [path for c in theirs for path in c.paths]
        b_ranges = {path: lines for c in theirs for path, lines in (c.ranges or {}).items()}
        files: list[FileView] = []
        for i, path in enumerate(p.paths):
            # The radar lists each side's paths sorted in its own names; a rename pairs them by position.
            other = b_paths[i] if len(b_paths) == len(p.paths) else path
            files.append(
                FileView(
                    path=path,
                    other_path=other if other != path else None,
                    a_lines=list(a_ranges.get(path, [])),
                    b_lines=list(b_ranges.get(other, [])),
                )
            )
        beside = _seen(report, p.a, other_id, base, "overlap") if p.kind == "conflict" else []
        also = [path for c in beside for path in c.paths]
        key = (p.kind, base is not None)
        out.append(PairView(p.kind, a, b, files, p.since, ADVICE[key], SHORT_ADVICE[key], also))
    out.sort(key=lambda v: (v.kind != "conflict", v.since, v.a.worktree_id or "", v.b.worktree_id or ""))
    return out


def lines_text(lines: Lines) -> str:
    return ",".join(f"{s}-{e}" if s != e else str(s) for s, e in lines)


def file_text(f: FileView) -> str:
    """`app.py:10-12` or, with lines on both sides, `app.py:10/11` (a's lines / b's)."""
    name = f.path if f.other_path is None else f"{f.path} ({f.other_path})"
    if not f.a_lines and not f.b_lines:
        return name
    if f.b_lines and f.b_lines != f.a_lines:
        return f"{name}:{lines_text(f.a_lines) or '-'}/{lines_text(f.b_lines)}"
    return f"{name}:{lines_text(f.a_lines or f.b_lines)}"
