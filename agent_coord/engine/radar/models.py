"""What the radar tells agents: `conflicts[]` on tool results, `conflict_pairs` on status."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OtherAllocation(BaseModel):
    worktree_id: str = Field(description="the other live allocation's worktree id")
    branch: str | None = Field(description="its branch")
    agent_id: str | None = Field(description="the agent that holds it")
    task: str | None = Field(default=None, description="its task, as given to allocate_worktree")
    host: str | None = Field(default=None, description="the host that agent runs on")


class BaseBranch(BaseModel):
    base: str = Field(description="the branch this allocation will merge into (its base, else the default branch)")


class Conflict(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    kind: Literal["overlap", "conflict"] = Field(
        description="conflict: a merge now would conflict on `paths`; overlap: both sides changed `paths` "
        "since their merge base, in different lines"
    )
    paths: list[str] = Field(description="paths in your worktree (your names, after renames)")
    ranges: dict[str, list[tuple[int, int]]] | None = Field(
        default=None,
        description="for a conflict: per path, [first, last] line ranges (1-based, inclusive) of your hunks "
        "that collide with the other side's, in your file; absent for binary files and deletions",
    )
    with_: OtherAllocation | BaseBranch = Field(alias="with", description="the other side")
    since: float = Field(description="when this was first predicted (seconds since the epoch, UTC)")


class ConflictPair(BaseModel):
    a: str = Field(description="a worktree id")
    b: str = Field(description="another worktree id, or `base:<branch>` for a's comparison with its base")
    kind: Literal["overlap", "conflict"] = Field(description="the stronger of the two found between a and b")
    paths: list[str] = Field(description="the conflicting paths (kind conflict) or the overlapping ones, in a's names")
    since: float = Field(description="when this kind was first predicted for the pair (seconds since the epoch)")


class ConflictReport(BaseModel):
    """The whole radar picture: `coord://conflicts` and `agent-coord conflicts --json`."""

    repo: str | None = Field(description="the repository shown (None: every repository)")
    pairs: list[ConflictPair] = Field(description="every flagged pair of live allocations, or allocation and base")
    worktrees: dict[str, list[Conflict]] = Field(description="per live worktree id: what it sees, from its side")
    note: str = Field(
        default="only worktrees on the radar's host are compared; another host's allocations are compared by a "
        "radar running there, against commits reachable in its local repository",
        description="what the comparison covers",
    )
