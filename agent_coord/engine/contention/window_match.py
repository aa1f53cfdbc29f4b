"""Which agent a window belongs to: the needles an agent's windows may show (worktree path, branch,
id), matched as whole tokens in titles and paths, the most specific match winning and ties naming nobody.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent_coord.engine.contention.manictime import FocusedApp

# Per agent: its id and its needles, each with a (rank, length) score; higher wins.
Compiled = list[tuple[str, list[tuple[tuple[int, int], str]]]]

DEFAULT_AGENT_EXECUTABLES: frozenset[str] = frozenset(
    {
        "claude", "claude.exe", "code", "code.exe", "windowsterminal.exe", "wt.exe", "cmd.exe",
        "powershell.exe", "pwsh.exe", "bash", "zsh", "alacritty", "kitty", "iterm2", "gnome-terminal",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AgentWindowKey:
    """What an agent's windows may show: its worktree path, its branch, its id."""

    agent_id: str
    worktree_path: str | None = None
    branch: str | None = None


def _norm(text: str) -> str:
    # Windows paths, WSL UNC paths and POSIX paths compare alike once slashes agree.
    return text.replace("\\", "/").casefold()


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch in "_-."


def _contains_token(hay: str, needle: str) -> bool:
    """`needle` in `hay`, not inside a longer name: "wt-01" does not match "wt-010", "main" not "main.py"."""
    start = hay.find(needle)
    while start != -1:
        end = start + len(needle)
        before = start == 0 or not (_is_word(needle[0]) and _is_word(hay[start - 1]))
        after = end == len(hay) or not (_is_word(needle[-1]) and _is_word(hay[end]))
        if before and after:
            return True
        start = hay.find(needle, start + 1)
    return False


@dataclass(frozen=True, slots=True)
class WindowMatchRules:
    """How a window is tied to an agent. Paths outrank branches, which outrank ids; ties name nobody."""

    match_worktree_path: bool = True
    match_branch: bool = True
    match_agent_id: bool = True
    min_needle_len: int = 3  # a one-letter branch or id would match nearly every title
    # Shell prompts in terminal titles abbreviate the home directory to "~".
    home_dir: str | None = field(default_factory=lambda: os.path.expanduser("~"))
    known_agent_executables: frozenset[str] = DEFAULT_AGENT_EXECUTABLES

    def _needles(self, agent: AgentWindowKey) -> list[tuple[tuple[int, int], str]]:
        found: list[tuple[int, str]] = []
        if self.match_worktree_path and agent.worktree_path and agent.worktree_path.strip():
            path = _norm(agent.worktree_path.strip()).rstrip("/")
            found.append((3, path))
            home = _norm(self.home_dir).rstrip("/") if self.home_dir else ""
            if home and path.startswith(home + "/"):
                found.append((3, "~" + path[len(home) :]))
        if self.match_branch and agent.branch and agent.branch.strip():
            found.append((2, _norm(agent.branch.strip())))
        if self.match_agent_id and agent.agent_id and agent.agent_id.strip():
            found.append((1, _norm(agent.agent_id.strip())))
        return [((rank, len(n)), n) for rank, n in found if len(n) >= self.min_needle_len]

    def compile(self, agents: Sequence[AgentWindowKey]) -> Compiled:
        """Each agent's needles, worked out once per read rather than once per row."""
        return [(agent.agent_id, self._needles(agent)) for agent in agents]

    def best_agent(self, agents: Sequence[AgentWindowKey], haystacks: Sequence[str | None]) -> str | None:
        """The one agent whose key the window shows most specifically, or None (no match, or a tie)."""
        return best_match(self.compile(agents), haystacks)

    def is_agent_program(self, app: FocusedApp) -> bool:
        base = app.path.replace("\\", "/").rsplit("/", 1)[-1] if app.path else None
        return any(n.casefold() in self.known_agent_executables for n in (app.executable, app.name, base) if n)


def best_match(compiled: Compiled, haystacks: Sequence[str | None]) -> str | None:
    hay = "\n".join(_norm(h) for h in haystacks if h)  # "\n" is no word character: no false joins
    best: tuple[int, int] | None = None
    winners: set[str] = set()
    for agent_id, needles in compiled:
        for score, needle in needles:
            if (best is None or score >= best) and _contains_token(hay, needle):
                if best is None or score > best:
                    best, winners = score, set()
                winners.add(agent_id)
    return next(iter(winners)) if len(winners) == 1 else None
