"""The pool as a Markdown table: rendered for ``coord://pool.md``, parsed from hand-kept legacy files.

Parsing rules (for tables people maintain by hand)
--------------------------------------------------
* The pool table is the first GitHub table (a header row followed by a ``|---|`` delimiter row,
  outside fenced code blocks) whose header has a location column and a status column. Other
  tables before it are skipped. The table ends at a blank line or a line without ``|``.
* Header names are compared case-insensitively, ignoring emphasis and backticks around them,
  with ``_`` and ``-`` read as spaces. Location: ``path``, ``worktree path``, ``dir``,
  ``directory`` hold the path; ``worktree`` holds the worktree id when one of those is also
  present, and the path otherwise (legacy tables name the directory "worktree").
  ``id``/``worktree id``/``slot`` also hold the id. Status: ``status``, ``state``. Optional:
  ``agent``/``owner``/``agent id``, ``branch``. Other columns are ignored; the first of two
  synonyms wins.
* Status values (case-insensitive, emphasis stripped): ``free``/``available``/``idle`` -> FREE;
  ``busy``/``in use``/``used``/``taken``/``allocated`` -> BUSY; the store's own names ALLOCATING,
  RELEASING, QUARANTINED map to themselves so a rendered table parses back to the same states.
  An importer should treat ALLOCATING/RELEASING as held (``records.HELD_STATES``).
* ``-`` or an empty cell is "none" for agent, branch and id. ``\\|`` is an escaped pipe (GFM);
  other backslashes are kept, so Windows paths survive.
* A row with a different number of cells than the header, an unknown status or an empty path raises
  ``PoolFileError`` with its 1-based line number; no table at all raises it with line 0.
  Duplicate paths are returned as they are: deciding what they mean is the importer's job.

Rendering keeps the rows' order, shows times as ISO UTC (``-`` when unknown), replaces line breaks
inside values by spaces (a table row cannot hold them) and escapes ``|``. Values without line breaks
or surrounding whitespace round-trip through ``parse_pool_markdown``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from agent_coord.engine.models import StatusResult
from agent_coord.engine.store.records import HELD_STATES, SlotState

TITLE = "# agent-coord pool"
COLUMNS = ("worktree", "path", "status", "agent", "branch", "since", "lease")

_PATH_HEADERS = frozenset({"path", "worktree path", "dir", "directory"})
_WORKTREE_HEADER = "worktree"
_ID_HEADERS = frozenset({"id", "worktree id", "slot"})
_STATUS_HEADERS = frozenset({"status", "state"})
_AGENT_HEADERS = frozenset({"agent", "owner", "agent id"})
_BRANCH_HEADERS = frozenset({"branch"})

STATUS_ALIASES: dict[str, SlotState] = {
    "free": SlotState.FREE,
    "available": SlotState.FREE,
    "idle": SlotState.FREE,
    "busy": SlotState.BUSY,
    "in use": SlotState.BUSY,
    "used": SlotState.BUSY,
    "taken": SlotState.BUSY,
    "allocated": SlotState.BUSY,
    "allocating": SlotState.ALLOCATING,
    "releasing": SlotState.RELEASING,
    "quarantined": SlotState.QUARANTINED,
}

_DELIMITER_CELL = re.compile(r":?-+:?")
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


class PoolFileError(ValueError):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class PoolRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    worktree_id: str
    path: str
    state: SlotState
    agent_id: str | None = None
    branch: str | None = None
    since: float | None = None
    lease_expires_at: float | None = None
    fencing_token: int | None = None


class ParsedPoolRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    line: int  # 1-based line in the parsed text
    path: str | None
    worktree_id: str | None
    status: SlotState
    agent: str | None
    branch: str | None


def _iso(ts: float | None) -> str:
    # Floor first: fromtimestamp rounds to microseconds, which can carry into the next second.
    return "-" if ts is None else datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cell(value: str | None) -> str:
    if value is None or value == "":
        return "-"
    return _LINE_BREAKS.sub(" ", value).replace("|", "\\|")


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def pool_markdown(status: StatusResult) -> str:
    """The pool of a status as the table `coord://pool.md` serves and `export-pool` writes."""
    rows = [
        PoolRow(
            worktree_id=w.worktree_id,
            path=w.path,
            state=SlotState(w.state),
            agent_id=w.agent_id,
            branch=w.branch,
            since=w.since,
            lease_expires_at=w.lease_expires_at,
            fencing_token=w.fencing_token,
        )
        for w in status.worktrees
    ]
    return render_pool_markdown(rows)


def render_pool_markdown(rows: Sequence[PoolRow]) -> str:
    free = sum(1 for r in rows if r.state == SlotState.FREE)
    busy = sum(1 for r in rows if r.state in HELD_STATES)
    quarantined = sum(1 for r in rows if r.state == SlotState.QUARANTINED)
    lines = [
        TITLE,
        "",
        f"size: {len(rows)}, free: {free}, busy: {busy}, quarantined: {quarantined}",
        "",
        _row(COLUMNS),
        _row(["---"] * len(COLUMNS)),
    ]
    for r in rows:
        lines.append(
            _row(
                [
                    _cell(r.worktree_id),
                    _cell(r.path),
                    r.state.value,
                    _cell(r.agent_id),
                    _cell(r.branch),
                    _iso(r.since),
                    _iso(r.lease_expires_at),
                ]
            )
        )
    return "\n".join(lines) + "\n"


def _split_cells(line: str) -> list[str]:
    """GFM cell split: unescaped pipes separate cells; outer pipes are optional."""
    cells: list[str] = []
    current: list[str] = []
    text = line.strip()
    i = 0
    ends_with_pipe = False
    while i < len(text):
        ch = text[i]
        ends_with_pipe = False
        if ch == "\\" and text[i + 1 : i + 2] == "|":
            current.append("|")
            i += 2
            continue
        if ch == "|":
            cells.append("".join(current))
            current = []
            ends_with_pipe = True
        else:
            current.append(ch)
        i += 1
    if not ends_with_pipe:
        cells.append("".join(current))
    if text.startswith("|"):
        cells = cells[1:]
    return [c.strip() for c in cells]


def _is_delimiter(line: str) -> bool:
    if "-" not in line:
        return False
    cells = _split_cells(line)
    return bool(cells) and all(_DELIMITER_CELL.fullmatch(c) for c in cells)


def _normalize(text: str) -> str:
    text = text.strip().strip("*_`").strip().lower()
    return " ".join(text.replace("_", " ").replace("-", " ").split())


def _first(headers: list[str], names: frozenset[str]) -> int | None:
    return next((i for i, h in enumerate(headers) if h in names), None)


class _Columns(BaseModel):
    path: int
    worktree_id: int | None
    status: int
    agent: int | None
    branch: int | None


def _pool_columns(header_cells: list[str]) -> _Columns | None:
    headers = [_normalize(c) for c in header_cells]
    status = _first(headers, _STATUS_HEADERS)
    path = _first(headers, _PATH_HEADERS)
    worktree = _first(headers, frozenset({_WORKTREE_HEADER}))
    worktree_id = _first(headers, _ID_HEADERS)
    if path is None:
        path, worktree = worktree, None
    elif worktree_id is None:
        worktree_id = worktree
    if path is None or status is None:
        return None
    return _Columns(
        path=path,
        worktree_id=worktree_id,
        status=status,
        agent=_first(headers, _AGENT_HEADERS),
        branch=_first(headers, _BRANCH_HEADERS),
    )


def _optional(cells: list[str], index: int | None) -> str | None:
    if index is None:
        return None
    value = cells[index]
    return None if value in ("", "-") else value


def parse_status(value: str) -> SlotState | None:
    return STATUS_ALIASES.get(_normalize(value))


def _parse_row(lineno: int, line: str, columns: _Columns, width: int) -> ParsedPoolRow:
    cells = _split_cells(line)
    if len(cells) != width:
        raise PoolFileError(lineno, f"expected {width} cells like the header, found {len(cells)}")
    status = parse_status(cells[columns.status])
    if status is None:
        known = ", ".join(sorted(STATUS_ALIASES))
        raise PoolFileError(lineno, f"unknown status {cells[columns.status]!r} (known: {known})")
    path = _optional(cells, columns.path)
    if path is None:
        raise PoolFileError(lineno, "empty path")
    return ParsedPoolRow(
        line=lineno,
        path=path,
        worktree_id=_optional(cells, columns.worktree_id),
        status=status,
        agent=_optional(cells, columns.agent),
        branch=_optional(cells, columns.branch),
    )


def parse_pool_markdown(text: str) -> list[ParsedPoolRow]:
    lines = text.splitlines()
    fence: str | None = None
    undelimited: int | None = None
    for index, line in enumerate(lines):
        marker = _FENCE.match(line)
        if marker:
            token = marker.group(1)
            if fence is None:
                fence = token
            elif token[0] == fence[0] and len(token) >= len(fence):
                fence = None
            continue
        if fence is not None or "|" not in line:
            continue
        header = _split_cells(line)
        columns = _pool_columns(header)
        if columns is None:
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if not _is_delimiter(following):
            undelimited = undelimited or index + 1
            continue
        if len(_split_cells(following)) != len(header):
            raise PoolFileError(index + 2, "the delimiter row has a different number of cells than the header")
        rows: list[ParsedPoolRow] = []
        for offset, row in enumerate(lines[index + 2 :], start=index + 3):
            if not row.strip() or "|" not in row:
                break
            rows.append(_parse_row(offset, row, columns, len(header)))
        return rows
    hint = f"; line {undelimited} looks like one but has no |---| row under it" if undelimited else ""
    raise PoolFileError(0, f"no pool table found (need a header with a worktree/path column and a status column){hint}")
