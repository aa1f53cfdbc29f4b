"""Branch names: refused in Python when git's rules are plain, left to `git check-ref-format` otherwise.

Asking git (`check-ref-format --branch`) costs a process per allocation. For names made only of
ASCII letters, digits and `-_./` (what agents and hooks use) git's rules come down to a few string
tests, written out below from git's `check_refname_format` (refs.c) as applied to
`refs/heads/<name>` by `strbuf_check_branch_ref`; tests/engine/allocate/test_branch_names.py holds
them to git's verdict over every short name of that alphabet. Any other character (`@`, non-ASCII,
punctuation) still goes to git, whose verdict is remembered per name.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

from agent_coord.engine.errors import CoordError, ErrorCode

if TYPE_CHECKING:
    from agent_coord.engine.git.driver import GitDriver

MAX_REF_LENGTH = 255
MAX_REF_COMPONENT_BYTES = 250  # NAME_MAX 255 minus ".lock"
PLAIN_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-_./")


def refuse(name: str, why: str) -> CoordError:
    return CoordError(ErrorCode.INVALID_BRANCH, f"{name!r} is not a valid branch name: {why}")


async def check_branch_name(name: str, git: GitDriver) -> str:
    """`name` if git can create it as a branch, else INVALID_BRANCH (before anything is claimed).

    Git's rules in order: first what no name may be, whatever its characters (git's rules too,
    except the component length, which is the file system's: each component becomes a file, and a
    ".lock" beside it, under refs/heads); then, for a plain name, the few of git's rules that can
    apply to the plain alphabet (for `--branch`, a leading `-` and `HEAD` are refused above); any
    other name goes to `git check-ref-format --branch` once (`GitDriver.accepts_branch_name`). A
    name never reaches git as an option and never changes on the way."""
    if not name or len(name) > MAX_REF_LENGTH:
        raise CoordError(ErrorCode.INVALID_BRANCH, f"branch name must be 1..{MAX_REF_LENGTH} characters")
    if name.startswith("-"):
        raise CoordError(
            ErrorCode.INVALID_BRANCH, f"branch name {name!r} starts with '-', which git would read as an option"
        )
    if "\x00" in name:
        raise CoordError(ErrorCode.INVALID_BRANCH, "branch name contains a NUL byte")
    try:
        encoded = [part.encode() for part in name.split("/")]
    except UnicodeEncodeError as exc:
        # A lone surrogate from JSON: it has no UTF-8 spelling, so git would see other bytes than we store.
        raise refuse(name, "it is not valid Unicode text") from exc
    if "@{" in name or name in {"HEAD", "@"} or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise refuse(name, "git reserves '@{', 'HEAD', '@' and control characters")
    if any(len(part) > MAX_REF_COMPONENT_BYTES for part in encoded):
        raise CoordError(
            ErrorCode.INVALID_BRANCH,
            f"a component of the branch name is longer than {MAX_REF_COMPONENT_BYTES} bytes (file name limit)",
        )
    if not PLAIN_CHARACTERS.issuperset(name):
        if not await git.accepts_branch_name(name):
            raise CoordError(ErrorCode.INVALID_BRANCH, f"{name!r} is not a valid branch name (git check-ref-format)")
        return name
    if ".." in name:
        raise refuse(name, "it contains '..'")
    if name.endswith("."):
        raise refuse(name, "it ends with '.'")
    for part in name.split("/"):
        if not part:
            raise refuse(name, "it has an empty component (a leading, trailing or doubled '/')")
        if part.startswith("."):
            raise refuse(name, f"its component {part!r} starts with '.'")
        if part.endswith(".lock"):
            raise refuse(name, f"its component {part!r} ends with '.lock'")
    return name
