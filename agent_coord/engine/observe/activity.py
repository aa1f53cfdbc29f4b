"""The activity view: one line per event, and a Markdown file mirroring it.

Line format (``coord://activity`` and the mirror file)::

    <ISO time> | <agent> | <action> | <branch> | <outcome> | <N>ms
    2026-11-28T06:10:03Z | a3 | allocate | feat/x | ok | 412ms

* Time is UTC with whole seconds, truncated (never shows a second that has not begun).
* A missing agent or branch is ``-``; a missing duration is ``-ms``, so the last field always ends
  in ``ms`` and ``-`` means "missing" in every field. Durations are rounded half up to an integer.
* Values are escaped so that splitting a line on `` | `` always yields six fields: ``\\`` for a
  backslash, ``\\|`` for ``|``, ``\\n``/``\\r`` for newlines, ``\\uXXXX`` for the other characters
  ``str.splitlines`` breaks on, and ``\\-`` for a value that is literally ``-``. Every ``|`` inside a
  value is preceded by a backslash, so `` | `` never occurs inside one.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from agent_coord.engine.store.records import Event

if TYPE_CHECKING:
    from agent_coord.engine.store import Store

SEPARATOR = " | "
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MISSING = "-"
ACTIVITY_LINES = 50  # what `coord://activity` shows

MIRROR_HEADER = (
    "# agent-coord activity\n"
    "\n"
    "One line per event: `time | agent | action | branch | outcome | duration`, oldest first.\n"
    "\n"
    # Never closed on purpose: CommonMark ends an unclosed fence at the end of the document, so
    # appended lines render one per line in monospace and the file stays appendable.
    "```text\n"
)

# Everything str.splitlines() treats as a line boundary; any of them would split a record.
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_DURATION_RE = re.compile(r"(-?\d+)ms")


class ActivityFormatError(ValueError):
    pass


class ActivityLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    time: datetime  # UTC, whole seconds
    agent: str | None
    action: str
    branch: str | None
    outcome: str
    duration_ms: int | None

    @property
    def ts(self) -> float:
        return self.time.timestamp()


def escape_value(value: str | None) -> str:
    if value is None:
        return MISSING
    if value == MISSING:
        return "\\-"
    out: list[str] = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "|":
            out.append("\\|")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch in _LINE_BREAKS:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def unescape_value(field: str) -> str | None:
    if field == MISSING:
        return None
    out: list[str] = []
    i = 0
    while i < len(field):
        ch = field[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = field[i + 1 : i + 2]
        if nxt in ("\\", "|", "-"):
            out.append(nxt)
            i += 2
        elif nxt == "n":
            out.append("\n")
            i += 2
        elif nxt == "r":
            out.append("\r")
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", field[i + 2 : i + 6]):
            out.append(chr(int(field[i + 2 : i + 6], 16)))
            i += 6
        else:
            raise ActivityFormatError(f"bad escape {field[i : i + 2]!r} in {field!r}")
    return "".join(out)


def format_time(ts: float) -> str:
    # Floor first: fromtimestamp rounds to microseconds, which can carry into the next second.
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime(TIME_FORMAT)


def format_duration(duration_ms: float | None) -> str:
    if duration_ms is None or not math.isfinite(duration_ms):
        return f"{MISSING}ms"
    return f"{math.floor(duration_ms + 0.5)}ms"


def format_activity_line(e: Event, agent_label: str | None = None) -> str:
    """One line for ``e``; ``agent_label`` (e.g. ``"a3 (pid 4121)"``) replaces the bare agent id."""
    agent = agent_label if agent_label is not None else e.agent_id
    fields = [
        format_time(e.ts),
        escape_value(agent),
        escape_value(e.action),
        escape_value(e.branch),
        escape_value(e.outcome),
        format_duration(e.duration_ms),
    ]
    return SEPARATOR.join(fields)


def parse_activity_line(line: str) -> ActivityLine:
    """Inverse of ``format_activity_line``. Raises ``ActivityFormatError`` (a ValueError)."""
    line = line.rstrip("\r\n")
    fields = line.split(SEPARATOR)
    if len(fields) != 6:
        raise ActivityFormatError(f"expected 6 fields separated by ' | ', got {len(fields)}: {line!r}")
    time_s, agent_s, action_s, branch_s, outcome_s, duration_s = fields
    try:
        time = datetime.strptime(time_s, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise ActivityFormatError(f"bad time {time_s!r}, expected e.g. 2026-11-28T06:10:03Z") from None
    action = unescape_value(action_s)
    outcome = unescape_value(outcome_s)
    if action is None or outcome is None:
        raise ActivityFormatError(f"action and outcome are required: {line!r}")
    duration: int | None
    if duration_s in (f"{MISSING}ms", MISSING):
        duration = None
    elif m := _DURATION_RE.fullmatch(duration_s):
        duration = int(m.group(1))
    else:
        raise ActivityFormatError(f"bad duration {duration_s!r}, expected e.g. 412ms or -ms")
    return ActivityLine(
        time=time,
        agent=unescape_value(agent_s),
        action=action,
        branch=unescape_value(branch_s),
        outcome=outcome,
        duration_ms=duration,
    )


class ActivityMirror:
    """Appends activity lines to a Markdown file that several server processes share.

    Each batch is a single ``write(2)`` on an ``O_APPEND`` descriptor, so concurrent appenders
    (threads or processes) never interleave inside a batch on a local filesystem. Not fsynced: the
    event log in the store is the record; this is a view.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        for line in lines:
            if any(ch in _LINE_BREAKS for ch in line):
                raise ValueError(f"an activity line must be a single line: {line!r}")
        body = "".join(f"{line}\n" for line in lines).encode("utf-8")
        for _ in range(2):
            self._ensure_header()
            try:
                # No O_CREAT: a file created here would lack its header.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:  # removed (rotated) since _ensure_header: create it again
                continue
            try:
                view = memoryview(body)
                # Regular files do not return short writes in practice; the loop only guards the API.
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            return
        raise FileNotFoundError(f"{self.path} keeps disappearing")

    def _ensure_header(self) -> None:
        """Create the file with its header in one step, so no appender can get in before the header.

        An O_EXCL create followed by a write would leave a moment where the file exists but is
        empty, and another process's batch could land above the header. Instead the header is
        written to a private temporary file and hard-linked into place, which fails if the file
        already exists.
        """
        if self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MIRROR_HEADER.encode("utf-8"))
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
            except OSError:
                # No hard links on this filesystem: fall back to a plain exclusive create. The
                # window where another appender could precede the header is then tiny but real.
                with contextlib.suppress(FileExistsError), open(self.path, "xb") as f:
                    f.write(MIRROR_HEADER.encode("utf-8"))
        finally:
            os.unlink(tmp)

    def read_lines(self) -> list[ActivityLine]:
        """The parsed lines after the header (for tests and tools)."""
        text = self.path.read_text(encoding="utf-8")
        body = text.split(MIRROR_HEADER, 1)[1] if text.startswith(MIRROR_HEADER) else text
        return [parse_activity_line(line) for line in body.split("\n") if line]


async def activity_lines(store: Store, limit: int = ACTIVITY_LINES) -> list[str]:
    """The newest `limit` events, oldest first, one line each (`coord://activity`)."""
    return [format_activity_line(e) for e in await store.events(limit=limit, newest=True)]
