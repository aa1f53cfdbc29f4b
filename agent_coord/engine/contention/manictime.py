"""Read-only view of ManicTime's `ManicTimeReports.db`: which window has the user's focus; is the user there.

ManicTime records only the focused window (docs/architecture.md, "ManicTime"), so this answers
"which agent's window has the focus" and "active/away/locked/off", never "how many agents run".
The database belongs to a live program: it is opened read-only per read (no long-lived snapshot or
lock), every failure becomes `available=False` with a reason, and nothing here ever raises.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

from agent_coord.engine.contention.window_match import AgentWindowKey, WindowMatchRules, best_match

Presence = Literal["active", "away", "locked", "off", "unknown"]

APPLICATIONS = "ManicTime/Applications"
COMPUTER_USAGE = "ManicTime/ComputerUsage"
DOCUMENTS = "ManicTime/Documents"

_PRESENCE_BY_KEY: dict[str, Presence] = {
    "manictime/active": "active", "manictime/away": "away",
    "manictime/sessionlocked": "locked", "manictime/poweroff": "off",
}  # fmt: skip
# Only consulted when a group has no Key (seen in hand-made and very old databases).
_PRESENCE_BY_NAME: dict[str, Presence] = {
    "active": "active", "away": "away", "session lock": "locked", "session locked": "locked",
    "power off": "off",
}  # fmt: skip
_REQUIRED: dict[str, tuple[str, ...]] = {
    "Ar_Timeline": ("ReportId", "SchemaName"),
    "Ar_Activity": ("ReportId", "Name", "GroupId", "StartUtcTime", "EndUtcTime"),
    "Ar_Group": ("ReportId", "GroupId", "Key", "Name"),
}
_TS = "%Y-%m-%d %H:%M:%S"
_SQLITE_BUSY_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED


@dataclass(frozen=True, slots=True)
class FocusedApp:
    name: str | None  # Ar_Group.Name, e.g. "Windows Terminal"
    executable: str | None  # Other.fileName, else the part of Ar_Group.Key before ";"
    path: str | None  # Other.fullPath
    window_title: str | None  # Ar_Activity.Name
    document: str | None = None  # ManicTime/Documents activity covering the same instant


@dataclass(frozen=True, slots=True)
class ManicTimeView:
    available: bool
    reason: str | None
    focused_app: FocusedApp | None = None
    presence: Presence = "unknown"
    focused_agent_id: str | None = None
    focused_is_agent_program: bool = False
    last_focus: dict[str, datetime | None] = field(default_factory=dict)
    read_ms: float = 0.0
    warnings: tuple[str, ...] = ()  # degraded but usable, e.g. an older schema without Ar_Group.Other


class _Unavailable(Exception):
    """A reason to answer available=False; the text is the human reason."""


@dataclass(frozen=True, slots=True)
class _Row:
    kind: str  # the timeline's SchemaName
    start: datetime
    end: datetime
    title: str | None
    group_name: str | None
    group_key: str | None
    other: str | None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _parse_utc(value: Any) -> datetime | None:
    # Whole seconds are precision enough; .NET may append up to 7 fractional digits and a "T".
    text = (_text(value) or "").strip()[:19].replace("T", " ")
    try:
        return datetime.strptime(text, _TS).replace(tzinfo=UTC)
    except ValueError:
        return None


def _app_from(row: _Row) -> FocusedApp:
    executable: str | None = None
    path: str | None = None
    try:
        other = json.loads(row.other) if row.other else None
    except (ValueError, RecursionError):
        other = None
    if isinstance(other, dict):
        file_name, full_path = other.get("fileName"), other.get("fullPath")
        executable = file_name if isinstance(file_name, str) and file_name else None
        path = full_path if isinstance(full_path, str) and full_path else None
    if executable is None and row.group_key and ";" in row.group_key:
        executable = row.group_key.split(";", 1)[0] or None
    return FocusedApp(name=row.group_name, executable=executable, path=path, window_title=row.title)


def _hays(row: _Row) -> list[str | None]:
    """Where a row may name an agent: a window's title, app name and path; a document's path or URL."""
    if row.kind == DOCUMENTS:
        return [row.title, row.group_key]
    return [row.title, row.group_name, _app_from(row).path]


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return getattr(exc, "sqlite_errorcode", None) in _SQLITE_BUSY_CODES or "locked" in text or "busy" in text


class ManicTimeReader:
    """Reads focus, presence and per-agent last focus at an instant. Blocking: call from a worker thread.

    `lag_tolerance_s`: ManicTime may flush the current activity to the reports database late; with a
    positive value an activity that ended at most that long before `at` still counts as covering it.
    `history`: how far back `last_focus` looks (bounds the rows read).

    Cost, measured on the development container: about 0.6 ms on the fixture day; about 60 ms on a
    database holding 490,000 activities (two years), because nothing indexes the UTC columns and
    every read scans the activity table once.
    """

    def __init__(
        self,
        path: Path | None,
        busy_timeout_ms: int = 200,
        *,
        busy_retries: int = 2,
        rules: WindowMatchRules | None = None,
        history: timedelta = timedelta(hours=24),
        lag_tolerance_s: float = 0.0,
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.busy_retries = busy_retries
        self.rules = rules or WindowMatchRules()
        self.history = history
        self.lag_tolerance = timedelta(seconds=max(0.0, lag_tolerance_s))

    def read(self, at: datetime, agents: Sequence[AgentWindowKey]) -> ManicTimeView:
        started = time.perf_counter()
        try:
            view = self._read(at, agents)
        except _Unavailable as exc:
            view = ManicTimeView(available=False, reason=str(exc))
        except Exception as exc:  # the contract is "never raise": contention then comes from elsewhere
            reason = f"unexpected error reading ManicTime database {self.path}: {type(exc).__name__}: {exc}"
            view = ManicTimeView(available=False, reason=reason)
        return replace(view, read_ms=(time.perf_counter() - started) * 1000.0)

    async def read_async(self, at: datetime, agents: Sequence[AgentWindowKey], timeout_s: float = 2.0) -> ManicTimeView:
        """`read` in a worker thread. Past `timeout_s` the thread is abandoned (it ends on its own
        within the busy-retry budget) and the answer is available=False."""
        started = time.perf_counter()
        if self.path is None:  # nothing to read: no thread for it
            return self.read(at, agents)
        with anyio.move_on_after(timeout_s):
            return await anyio.to_thread.run_sync(self.read, at, list(agents), abandon_on_cancel=True)
        return ManicTimeView(
            available=False,
            reason=f"ManicTime read did not finish within {timeout_s:g} s",
            read_ms=(time.perf_counter() - started) * 1000.0,
        )

    # -- internals ---------------------------------------------------------------------------------

    def _read(self, at: datetime, agents: Sequence[AgentWindowKey]) -> ManicTimeView:
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        if self.path is None:
            raise _Unavailable("no ManicTime database configured")
        if not self.path.is_file():
            raise _Unavailable(f"ManicTime database not found at {self.path}")
        attempts = self.busy_retries + 1
        for attempt in range(attempts):
            try:
                return self._query(at, agents)
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise _Unavailable(f"cannot read ManicTime database {self.path}: {exc}") from exc
                if attempt + 1 < attempts:
                    time.sleep(0.025 * (attempt + 1))
        raise _Unavailable(
            f"ManicTime database {self.path} stayed locked by another process through {attempts} attempts "
            f"of {self.busy_timeout_ms} ms; try again later"
        )

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        # mode=ro and never immutable=1: ManicTime writes this file while we read it.
        uri = self.path.resolve().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_ms / 1000.0, isolation_level=None)
        conn.execute("PRAGMA query_only = 1")
        return conn

    def _query(self, at: datetime, agents: Sequence[AgentWindowKey]) -> ManicTimeView:
        conn = self._connect()
        try:
            # One read transaction, so all queries see the same snapshot.
            conn.execute("BEGIN")
            warnings, has_other = self._check_schema(conn)
            kinds = self._timelines(conn, warnings)
            since = at - max(self.lag_tolerance, self.history if agents else timedelta(0))
            rows = self._rows(conn, kinds, has_other, at, since)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return self._answer(at, agents, rows, warnings)

    def _check_schema(self, conn: sqlite3.Connection) -> tuple[list[str], bool]:
        missing: list[str] = []
        group_columns: set[str] = set()
        for table, required in _REQUIRED.items():
            columns = {str(r[1]) for r in conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}
            if not columns:
                missing.append(f"table {table}")
                continue
            missing.extend(f"column {table}.{c}" for c in required if c not in columns)
            if table == "Ar_Group":
                group_columns = columns
        if missing:
            raise _Unavailable(
                f"ManicTime schema in {self.path} is not one this reader knows (older or newer ManicTime?): "
                f"missing {', '.join(missing)}"
            )
        if "Other" in group_columns:
            return [], True
        return ["Ar_Group.Other is missing: executables come from Ar_Group.Key, paths are unknown"], False

    def _timelines(self, conn: sqlite3.Connection, warnings: list[str]) -> dict[int, str]:
        wanted = (APPLICATIONS, COMPUTER_USAGE, DOCUMENTS)
        kinds: dict[int, str] = {}
        for report_id, schema in conn.execute(
            "SELECT ReportId, SchemaName FROM Ar_Timeline WHERE SchemaName IN (?, ?, ?)", wanted
        ):
            if isinstance(report_id, int):
                kinds[report_id] = str(schema)
        found = set(kinds.values())
        if APPLICATIONS not in found and COMPUTER_USAGE not in found:
            raise _Unavailable(f"ManicTime database {self.path} has no {APPLICATIONS} or {COMPUTER_USAGE} timeline")
        warnings.extend(f"no {name} timeline" for name in wanted if name not in found)
        return kinds

    def _rows(
        self, conn: sqlite3.Connection, kinds: dict[int, str], has_other: bool, at: datetime, since: datetime
    ) -> list[_Row]:
        ids = sorted(kinds)
        marks = ", ".join("?" for _ in ids)
        other = "g.Other" if has_other else "NULL"
        # UTC columns only: the local ones jump at DST changes. The text comparison is a prefilter;
        # the parsed values decide.
        sql = (
            f"SELECT a.ReportId, a.StartUtcTime, a.EndUtcTime, a.Name, g.Name, g.Key, {other} "  # noqa: S608
            "FROM Ar_Activity a LEFT JOIN Ar_Group g ON g.ReportId = a.ReportId AND g.GroupId = a.GroupId "
            f"WHERE a.ReportId IN ({marks}) AND a.StartUtcTime <= ? AND a.EndUtcTime > ?"
        )
        rows: list[_Row] = []
        window_end = (at + timedelta(seconds=1)).strftime(_TS)  # the prefilter drops sub-seconds
        for rid, start_v, end_v, title, gname, gkey, gother in conn.execute(
            sql, (*ids, window_end, since.strftime(_TS))
        ):
            start, end = _parse_utc(start_v), _parse_utc(end_v)
            kind = kinds.get(rid) if isinstance(rid, int) else None
            if kind is None or start is None or end is None or start > at or end <= since:
                continue
            rows.append(_Row(kind, start, end, _text(title), _text(gname), _text(gkey), _text(gother)))
        return rows

    def _covering(self, rows: list[_Row], kind: str, at: datetime) -> _Row | None:
        cutoff = at - self.lag_tolerance
        candidates = [r for r in rows if r.kind == kind and r.end > cutoff]
        return max(candidates, key=lambda r: (r.end, r.start), default=None)

    def _answer(
        self, at: datetime, agents: Sequence[AgentWindowKey], rows: list[_Row], warnings: list[str]
    ) -> ManicTimeView:
        usage = self._covering(rows, COMPUTER_USAGE, at)
        presence: Presence = "unknown"
        if usage is not None:
            by_key = _PRESENCE_BY_KEY.get((usage.group_key or "").casefold())
            by_name = _PRESENCE_BY_NAME.get((usage.group_name or usage.title or "").strip().casefold())
            presence = by_key or by_name or "unknown"

        compiled = self.rules.compile(agents)
        app_row = self._covering(rows, APPLICATIONS, at)
        doc_row = self._covering(rows, DOCUMENTS, at)
        focused: FocusedApp | None = None
        focused_agent: str | None = None
        if app_row is not None:
            app = _app_from(app_row)
            document = doc_row.title if doc_row else None
            focused = FocusedApp(app.name, app.executable, app.path, app.window_title, document)
            focused_agent = best_match(compiled, _hays(app_row) + (_hays(doc_row) if doc_row else []))

        last_focus: dict[str, datetime | None] = {a.agent_id: None for a in agents}
        pending = set(last_focus)
        for row in sorted(rows, key=lambda r: r.end, reverse=True):
            if not pending:
                break
            owner = best_match(compiled, _hays(row)) if row.kind != COMPUTER_USAGE else None
            if owner in pending:
                last_focus[owner] = min(row.end, at)
                pending.discard(owner)
        if focused_agent is not None:
            last_focus[focused_agent] = at  # it has the focus now, whatever the rows' ends say

        return ManicTimeView(
            available=True,
            reason=None,
            focused_app=focused,
            presence=presence,
            focused_agent_id=focused_agent,
            focused_is_agent_program=focused is not None and self.rules.is_agent_program(focused),
            last_focus=last_focus,
            warnings=tuple(warnings),
        )
