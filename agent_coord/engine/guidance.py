"""What an agent should do on each error code: the one source.

Every refusal's text ends with its code's `next` (what the agent may do) and, where there is one,
`ask` (what to ask the user); the skills' error table and docs/errors.md are generated from this
table (`python -m agent_coord.claude.error_table`), and tests/server/test_voice.py fails when they drift or
when a message the real server returns recommends one of its code's `forbidden` actions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent_coord.engine.errors import ErrorCode

# Said once, here, and quoted by ALLOCATION_ENDED and the skills: a rescue ref is shaped like a stash
# (parents: the branch tip, the index), so this puts the staged and unstaged work and the untracked
# files back on the branch the slot holds; the slot never leaves its branch.
RECOVERY = "`git stash apply --index <rescue_ref>`"


@dataclass(frozen=True)
class Forbidden:
    """An action the skills forbid on this code, and how a text that recommends it reads."""

    action: str  # for the skills' "never" column
    pattern: str  # a regular expression no message of the code may match (case-insensitive)

    def found_in(self, text: str) -> bool:
        return re.search(self.pattern, text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Guidance:
    code: ErrorCode
    meaning: str  # what happened, for the tables
    next: str  # what the agent may do next, appended to every message of the code
    ask: str = ""  # what to ask the user, when a person must decide
    forbidden: tuple[Forbidden, ...] = ()

    def advice(self) -> str:
        """The text every message of this code ends with."""
        ask = f" Ask the user {self.ask}" if self.ask else ""
        return f"Next: {self.next}{ask}"


# Actions the skills forbid on every code: no message may recommend them.
# An agent's force (the tool argument); a person's `agent-coord release --force` is the user's to run.
NO_FORCE = Forbidden("force", r"force\s*[=:]\s*true|\bpass force\b|\bwith force\b|\bretry with force\b")
NO_UNLOCK = Forbidden("unlock a worktree", r"git worktree unlock|\bunlock it with\b")
NO_SWITCH = Forbidden(
    "switch, check out in or edit the worktree that holds it",
    r"\bswitch (that|the|this|it)\b|git (switch|checkout)|\bcheck(ed)? out another\b",
)
NO_PRUNE = Forbidden("`git worktree remove`/`prune`", r"git worktree (prune|remove)")
NO_WIPE = Forbidden("clean or reset a worktree", r"git clean|reset --hard|git restore|git stash (drop|clear)")
NO_BRANCH_MOVE = Forbidden("move a pool worktree off its branch", r"checkout -b|switch -c")
ALWAYS = (NO_UNLOCK, NO_PRUNE, NO_WIPE, NO_BRANCH_MOVE)

GUIDANCE: dict[ErrorCode, Guidance] = {
    g.code: g
    for g in (
        Guidance(
            ErrorCode.BRANCH_CONFLICT,
            "the branch is held by another agent, or checked out in another worktree or the main checkout",
            "allocate another branch (e.g. add a suffix), or wait for its release: heartbeat `idle`, "
            "check `status` every minute or two, then retry.",
            "whether they will take the main checkout (or the worktree outside the pool) off that branch.",
            (NO_FORCE, NO_SWITCH),
        ),
        Guidance(
            ErrorCode.POOL_EXHAUSTED,
            "every slot is busy and the pool is at its maximum",
            "release worktrees of yours you no longer need; if `status` lists agents with `alive: false`, "
            "`validate` with `repair: true` reclaims their slots (work saved first); else heartbeat `idle` "
            "and retry after 30 s, 60 s, 120 s.",
            "to raise `AGENT_COORD_POOL_MAX` if it lasts.",
            (NO_FORCE,),
        ),
        Guidance(
            ErrorCode.ALLOCATION_TIMEOUT,
            "the machine is contended and the call ran out of time; nothing was left half-done",
            "retry the same call after a few seconds; after a second timeout check `status` and wait longer.",
        ),
        Guidance(
            ErrorCode.INVALID_BRANCH,
            "git refuses the branch name",
            "choose another name (no spaces, `..`, `@{`, `~^:?*[\\`; no `-` or `/` first; no `/`, `.`, "
            "`.lock` last; no part starting with `.`) and retry; the same name fails the same way.",
        ),
        Guidance(
            ErrorCode.NOT_A_REPOSITORY,
            "the repository cannot be found or is not a git repository",
            "pass `repo` as the repository's absolute top-level path (`git rev-parse --show-toplevel`).",
            "which repository to use, if you do not know.",
        ),
        Guidance(
            ErrorCode.NOT_OWNER,
            "the worktree is held by another agent",
            "leave it alone; call `status` and release only your own. If its agent shows `alive: false`, "
            "`validate` with `repair: true` reclaims it safely.",
            "whether it must be taken back from a live agent (a person can: `agent-coord release --worktree "
            "<worktree_id> --force`, work saved first).",
            (NO_FORCE, NO_SWITCH),
        ),
        Guidance(
            ErrorCode.ALLOCATION_ENDED,
            "the allocation you named was released or reclaimed meanwhile; the text says when, why and by whom",
            "nothing to release. To go on, allocate the branch again; if a rescue ref is named, restore it "
            f"there with {RECOVERY}.",
            forbidden=(NO_FORCE,),
        ),
        Guidance(
            ErrorCode.WORKTREE_DIRTY,
            "the worktree has uncommitted or untracked changes, or commits no ref holds",
            "commit in your worktree (`git add -A && git commit`) and release again; to abandon the changes, "
            "release with `force: true`, which saves them to the `rescue_ref` it returns.",
        ),
        Guidance(
            ErrorCode.WORKTREE_LOCKED,
            "the worktree is locked with `git worktree lock`, usually on purpose by a person",
            "leave it locked; it stays as it is. Work on another branch meanwhile.",
            "whether they will unlock it.",
            (NO_FORCE,),
        ),
        Guidance(
            ErrorCode.NOT_FOUND,
            "no such worktree, path or branch in the pool, or you hold none",
            "call `status` and use a `worktree_id`, `path` or `branch` it lists; if none is yours, there is "
            "nothing to release.",
        ),
        Guidance(
            ErrorCode.GIT_FAILED,
            "a git command failed, quoted in the text; what was started was rolled back",
            "fix what is yours (a `base` that does not exist, an `index.lock` of a finished process of yours) "
            "and retry once; if it fails again, run `validate` without `repair`.",
            "to look at git's message and the findings, if it fails twice.",
        ),
        Guidance(
            ErrorCode.STORE_UNAVAILABLE,
            "the coordination database cannot be used (damaged, read-only, full disk, another program's, "
            "locked); nothing was changed",
            "if it was locked, retry in a moment; otherwise retrying will not help: work without a pool worktree "
            "until it is fixed.",
            "to fix what the text names (the file and the fix).",
        ),
        Guidance(
            ErrorCode.OPERATION_IN_PROGRESS,
            "a rebase, merge, cherry-pick, revert or bisect is stopped in the worktree, or git runs in it",
            "in your own worktree, finish or abort it as the text says, then call again; in another "
            "agent's, leave it alone.",
            forbidden=(NO_FORCE,),
        ),
        Guidance(
            ErrorCode.INVALID_ARGUMENT,
            "an argument has the wrong type or shape",
            "fix the call to match the tool's input schema and retry; the same call fails the same way.",
        ),
    )
}


# For a code added without its guidance (tests/server/test_voice.py fails until it has one): never a crash.
UNKNOWN = "read the text; if it does not say what to do, ask the user."


def guidance(code: ErrorCode) -> Guidance:
    return GUIDANCE.get(code) or Guidance(code, "", UNKNOWN)


def forbidden_for(code: ErrorCode) -> tuple[Forbidden, ...]:
    """Everything no message of `code` may recommend: the code's own list and the always-forbidden."""
    return guidance(code).forbidden + ALWAYS
