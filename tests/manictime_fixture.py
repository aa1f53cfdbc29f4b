"""A ManicTimeReports.db fixture: one realistic day, with the expected answers.

Table and column names follow what public tools that read real databases use (yllibed/manictime-mcp
spec 04, tuckn/tkn_manictime_data_pipeline, ManicTime metricbeat module): `Ar_Timeline`,
`Ar_Activity` (UTC and local times as text, `CommonGroupId`, `RelatedActivityId` from a document to
its application activity), `Ar_Group` (`Key` = "exe;name", `Other` = JSON with fileName/fullPath),
`Ar_CommonGroup` (`CommonId`, `ReportGroupType` 1 = applications, `UpperKey`).

The day is 2025-10-26 in Europe/Paris: DST ends at 01:00 UTC (03:00 CEST becomes 02:00 CET), so
the local columns run backwards across the night session while the UTC ones do not. Report ids are
deliberately not 1, 2, 3, and a Tags timeline carries a title that would fool a reader that ignored
SchemaName.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent_coord.engine.contention.manictime import AgentWindowKey, Presence

DAY = datetime(2025, 10, 26, tzinfo=UTC)
DST_CHANGE_UTC = DAY + timedelta(hours=1)
HOME = "/home/u"
WT1, WT2 = f"{HOME}/proj.worktrees/wt-01", f"{HOME}/proj.worktrees/wt-02"
AGENT1 = AgentWindowKey("agent-a1c2", WT1, "fix/auth-timeout")
AGENT2 = AgentWindowKey("agent-b7f3", WT2, "feat/login-form")
AGENT3 = AgentWindowKey("agent-c9d0", f"{HOME}/proj.worktrees/wt-03", "chore/deps")  # never seen

APPS, USAGE, DOCS, TAGS = (
    "ManicTime/Applications",
    "ManicTime/ComputerUsage",
    "ManicTime/Documents",
    "ManicTime/Tags",
)
DEFAULT_REPORT_IDS: dict[str, int] = {TAGS: 1, APPS: 3, DOCS: 4, USAGE: 7}

# name -> (Key, Other.fileName, Other.fullPath)
APP_GROUPS: dict[str, tuple[str, str, str]] = {
    "Windows Terminal": (
        "windowsterminal.exe;windows terminal",
        "WindowsTerminal.exe",
        r"C:\Program Files\WindowsApps\Microsoft.WindowsTerminal_1.21.2911.0_x64__8wekyb3d8bbwe"
        r"\WindowsTerminal.exe",
    ),
    "Firefox": ("firefox.exe;firefox", "firefox.exe", r"C:\Program Files\Mozilla Firefox\firefox.exe"),
    "Google Chrome": (
        "chrome.exe;google chrome",
        "chrome.exe",
        r"C:\Program Files\Google\Chrome\Application\chrome.exe",
    ),
    "Visual Studio Code": (
        "code.exe;visual studio code",
        "Code.exe",
        r"C:\Users\u\AppData\Local\Programs\Microsoft VS Code\Code.exe",
    ),
    "Slack": ("slack.exe;slack", "slack.exe", r"C:\Users\u\AppData\Local\slack\app-4.41.105\slack.exe"),
    "Windows Command Processor": (
        "cmd.exe;windows command processor",
        "cmd.exe",
        r"C:\Windows\System32\cmd.exe",
    ),
}
USAGE_GROUPS = {
    "Active": "ManicTime/Active",
    "Away": "ManicTime/Away",
    "Session lock": "ManicTime/SessionLocked",
    "Power off": "ManicTime/PowerOff",
}
DOC_FILE = r"\\wsl.localhost\Ubuntu\home\u\proj.worktrees\wt-01\src\app.py"
DOC_URL = "https://github.com/acme/proj/pull/42"


@dataclass(frozen=True)
class FixtureActivity:
    timeline: str
    start: datetime
    end: datetime
    group: str  # Ar_Group.Name
    title: str
    agent_id: str | None = None  # whose window this is, by construction (independent of the reader)


@dataclass(frozen=True)
class Expected:
    at: datetime
    presence: Presence
    app: str | None  # Ar_Group.Name of the focused application
    title: str | None = None
    document: str | None = None
    agent_id: str | None = None
    agent_program: bool = False


def _t(hms: str) -> datetime:
    h, m, s = (int(x) for x in hms.split(":"))
    return DAY + timedelta(hours=h, minutes=m, seconds=s)


T_WT1 = f"u@box: {WT1}"
T_DOCS = "asyncio — Python 3.13 documentation — Mozilla Firefox"
T_BRANCH = "claude — feat/login-form"
T_GMAIL = "Inbox (3) - u@example.com - Gmail - Google Chrome"
T_CODE = "app.py - wt-01 [WSL: Ubuntu] - Visual Studio Code"
T_SLACK = "general (Channel) - Acme - Slack"
T_TILDE = "u@box: ~/proj.worktrees/wt-02"
T_WT1_CLAUDE = f"u@box: {WT1}: claude"
T_PR = "Pull request #42 · acme/proj · GitHub — Mozilla Firefox"
T_AGENT_ID = "AGENT-B7F3 · claude"
T_DIFF = f"u@box: diff -r {WT1} {WT2}"  # names both worktrees equally well: nobody's
T_CMD = r"C:\WINDOWS\system32\cmd.exe"
T_WT010 = f"u@box: {WT1}0"  # another worktree whose name merely starts like wt-01
WT, FF, CODE, CMD = "Windows Terminal", "Firefox", "Visual Studio Code", "Windows Command Processor"
A1, A2 = AGENT1.agent_id, AGENT2.agent_id


def _day() -> list[FixtureActivity]:
    rows = [
        (USAGE, "00:20:00", "01:40:00", "Active", "Active", None),
        (USAGE, "01:40:00", "01:46:00", "Session lock", "Session lock", None),
        (USAGE, "01:46:00", "06:50:00", "Power off", "Power off", None),
        (USAGE, "06:50:00", "09:00:00", "Active", "Active", None),
        (USAGE, "09:00:00", "09:12:00", "Away", "Away", None),
        (USAGE, "09:12:00", "10:00:00", "Active", "Active", None),
        (USAGE, "10:00:00", "10:05:00", "Session lock", "Session lock", None),
        (USAGE, "10:05:00", "10:30:00", "Active", "Active", None),
        (APPS, "00:20:00", "00:48:30", WT, T_WT1, A1),
        (APPS, "00:48:30", "01:25:00", FF, T_DOCS, None),  # local end is before local start (DST)
        (APPS, "01:25:00", "01:40:00", WT, T_BRANCH, A2),
        (APPS, "06:50:00", "07:05:00", "Google Chrome", T_GMAIL, None),
        (APPS, "07:05:00", "07:40:00", CODE, T_CODE, None),
        (DOCS, "07:05:00", "07:40:00", "app.py", DOC_FILE, A1),
        (APPS, "07:40:00", "08:10:00", "Slack", T_SLACK, None),
        (APPS, "08:10:00", "08:40:00", WT, T_TILDE, A2),
        (APPS, "08:40:00", "09:00:00", WT, T_WT1_CLAUDE, A1),
        (APPS, "09:12:00", "09:30:00", FF, T_PR, None),
        (DOCS, "09:12:00", "09:30:00", "github.com", DOC_URL, None),
        (APPS, "09:30:00", "10:00:00", WT, T_AGENT_ID, A2),
        (APPS, "10:05:00", "10:08:00", WT, T_DIFF, None),
        (APPS, "10:08:00", "10:12:00", CMD, T_CMD, None),
        (APPS, "10:12:00", "10:30:00", WT, T_WT010, None),
        (TAGS, "07:00:00", "09:00:00", "Review", f"{WT2} review", None),
    ]
    return [FixtureActivity(tl, _t(a), _t(b), g, title, agent) for tl, a, b, g, title, agent in rows]


def _expectations() -> list[Expected]:
    e = Expected
    return [
        e(_t("00:30:00"), "active", WT, T_WT1, agent_id=A1, agent_program=True),
        e(_t("00:48:30"), "active", FF, T_DOCS),  # start inclusive, end exclusive
        e(_t("00:55:00"), "active", FF, T_DOCS),  # before the DST change, local 02:55 CEST
        e(_t("01:10:00"), "active", FF, T_DOCS),  # after it, local 02:10 CET
        e(_t("01:30:00"), "active", WT, T_BRANCH, agent_id=A2, agent_program=True),
        e(_t("01:43:00"), "locked", None),
        e(_t("04:00:00"), "off", None),
        e(_t("07:20:00"), "active", CODE, T_CODE, document=DOC_FILE, agent_id=A1, agent_program=True),
        e(_t("07:50:00"), "active", "Slack", T_SLACK),
        e(_t("08:20:00"), "active", WT, T_TILDE, agent_id=A2, agent_program=True),
        e(_t("09:05:00"), "away", None),
        e(_t("09:20:00"), "active", FF, T_PR, document=DOC_URL),
        e(_t("09:45:00"), "active", WT, T_AGENT_ID, agent_id=A2, agent_program=True),
        e(_t("10:02:00"), "locked", None),
        e(_t("10:06:00"), "active", WT, T_DIFF, agent_program=True),
        e(_t("10:10:00"), "active", CMD, T_CMD, agent_program=True),
        e(_t("10:20:00"), "active", WT, T_WT010, agent_program=True),
        e(_t("11:00:00"), "unknown", None),
    ]


@dataclass(frozen=True)
class FixtureDay:
    path: Path
    report_ids: dict[str, int]
    activities: list[FixtureActivity]
    expectations: list[Expected]
    agents: tuple[AgentWindowKey, ...] = (AGENT1, AGENT2, AGENT3)
    home_dir: str = HOME
    dst_change_utc: datetime = DST_CHANGE_UTC
    app_groups: dict[str, tuple[str, str, str]] = field(default_factory=lambda: dict(APP_GROUPS))

    def expected_last_focus(self, at: datetime) -> dict[str, datetime | None]:
        """End of each agent's latest window at or before `at` (clamped to `at`), from construction."""
        out: dict[str, datetime | None] = {a.agent_id: None for a in self.agents}
        for act in self.activities:
            if act.agent_id is not None and act.start <= at:
                seen = min(act.end, at)
                previous = out[act.agent_id]
                out[act.agent_id] = seen if previous is None else max(previous, seen)
        return out


def local_text(utc: datetime) -> str:
    """What ManicTime writes in the *LocalTime columns for Europe/Paris (no offset stored)."""
    offset = timedelta(hours=2 if utc < DST_CHANGE_UTC else 1)
    return (utc + offset).strftime("%Y-%m-%d %H:%M:%S")


def utc_text(utc: datetime) -> str:
    return utc.strftime("%Y-%m-%d %H:%M:%S")


# Column definitions in the order a real database lists them; (name, declared type).
SCHEMA: dict[str, list[tuple[str, str]]] = {
    "Ar_Timeline": [("ReportId", "INTEGER NOT NULL PRIMARY KEY"), ("TimelineKey", "TEXT"),
                    ("SchemaName", "TEXT NOT NULL"), ("BaseSchemaName", "TEXT"), ("Name", "TEXT"),
                    ("SchemaVersion", "TEXT"), ("EnvironmentId", "TEXT")],
    "Ar_Activity": [("ReportId", "INTEGER NOT NULL"), ("ActivityId", "INTEGER NOT NULL"), ("Name", "TEXT"),
                    ("Notes", "TEXT"), ("GroupId", "INTEGER"), ("CommonGroupId", "INTEGER"),
                    ("RelatedActivityId", "INTEGER"), ("IsActive", "INTEGER"), ("IsBillable", "INTEGER"),
                    ("StartLocalTime", "TEXT NOT NULL"), ("EndLocalTime", "TEXT NOT NULL"),
                    ("StartUtcTime", "TEXT NOT NULL"), ("EndUtcTime", "TEXT NOT NULL"),
                    ("CurrentChangeSequence", "INTEGER"), ("Other", "TEXT")],
    "Ar_Group": [("ReportId", "INTEGER NOT NULL"), ("GroupId", "INTEGER NOT NULL"), ("Name", "TEXT"),
                 ("Key", "TEXT"), ("Color", "TEXT"), ("GroupType", "TEXT"), ("FolderId", "INTEGER"),
                 ("CommonId", "INTEGER"), ("Other", "TEXT"), ("Icon16", "BLOB")],
    "Ar_CommonGroup": [("CommonId", "INTEGER NOT NULL PRIMARY KEY"), ("ReportGroupType", "INTEGER"),
                       ("Key", "TEXT"), ("UpperKey", "TEXT"), ("Name", "TEXT"), ("Color", "TEXT"),
                       ("GroupType", "TEXT"), ("Icon32", "BLOB")],
}  # fmt: skip
PRIMARY_KEYS = {"Ar_Activity": "ReportId, ActivityId", "Ar_Group": "ReportId, GroupId"}
# A hypothetical newer ManicTime: columns put first, so positional reads would break.
NEWER_COLUMNS = {
    "Ar_Timeline": [("Capabilities", "TEXT")],
    "Ar_Activity": [("SyncState", "INTEGER"), ("TagsJson", "TEXT")],
    "Ar_Group": [("DisplayKey", "TEXT"), ("Icon32", "BLOB")],
    "Ar_CommonGroup": [("FolderKey", "TEXT")],
}


def _create(conn: sqlite3.Connection, table: str, columns: list[tuple[str, str]]) -> None:
    body = ", ".join(f'"{name}" {decl}' for name, decl in columns)
    if table in PRIMARY_KEYS:
        body += f", PRIMARY KEY ({PRIMARY_KEYS[table]})"
    conn.execute(f'CREATE TABLE "{table}" ({body})')


def _insert(conn: sqlite3.Connection, table: str, present: Mapping[str, set[str]], row: dict[str, object]) -> None:
    if table not in present:
        return
    kept = {k: v for k, v in row.items() if k in present[table]}
    names = ", ".join(f'"{k}"' for k in kept)
    conn.execute(f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" for _ in kept)})', tuple(kept.values()))


def build_manictime_db(
    path: Path,
    *,
    journal_mode: str = "delete",
    omit_tables: Sequence[str] = (),
    omit_columns: Mapping[str, Sequence[str]] | None = None,
    newer_schema: bool = False,
    report_ids: Mapping[str, int] | None = None,
    activities: Sequence[FixtureActivity] | None = None,
) -> FixtureDay:
    """Write the fixture day to `path`. `omit_*` simulate an older ManicTime, `newer_schema` a newer one."""
    ids = dict(report_ids or DEFAULT_REPORT_IDS)
    omit = {t: set(c) for t, c in (omit_columns or {}).items()}
    activities = list(activities) if activities is not None else _day()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_mode = {journal_mode}")
        present: dict[str, set[str]] = {}
        for table, columns in SCHEMA.items():
            if table in omit_tables:
                continue
            cols = (NEWER_COLUMNS.get(table, []) if newer_schema else []) + columns
            cols = [c for c in cols if c[0] not in omit.get(table, set())]
            _create(conn, table, cols)
            present[table] = {c[0] for c in cols}
        conn.execute("BEGIN")
        for schema, rid in ids.items():
            row = {
                "ReportId": rid,
                "TimelineKey": f"{schema.split('/')[1].lower()}-{rid}",
                "SchemaName": schema,
                "BaseSchemaName": schema,
                "Name": schema.split("/")[1],
                "SchemaVersion": "1.0.0.0",
                "EnvironmentId": "3f2a9c1e-env",
                "Capabilities": "[]",
            }
            _insert(conn, "Ar_Timeline", present, row)
        groups: dict[tuple[str, str], int] = {}
        for common_id, (name, (key, file_name, full_path)) in enumerate(APP_GROUPS.items(), start=1):
            _insert(
                conn,
                "Ar_CommonGroup",
                present,
                {
                    "CommonId": common_id,
                    "ReportGroupType": 1,
                    "Key": key,
                    "UpperKey": key.upper(),
                    "Name": name,
                    "Color": "3A0EC5",
                },
            )
            other = json.dumps({"fileName": file_name, "fullPath": full_path})
            _insert(
                conn,
                "Ar_Group",
                present,
                {
                    "ReportId": ids[APPS],
                    "GroupId": common_id,
                    "Name": name,
                    "Key": key,
                    "Color": "3A0EC5",
                    "CommonId": common_id,
                    "Other": other,
                    "Icon16": b"\x89PNG",
                },
            )
            groups[(APPS, name)] = common_id
        for group_id, (name, key) in enumerate(USAGE_GROUPS.items(), start=1):
            _insert(
                conn,
                "Ar_Group",
                present,
                {
                    "ReportId": ids[USAGE],
                    "GroupId": group_id,
                    "Name": name,
                    "Key": key,
                    "Color": "58C10C" if name == "Active" else "F61500",
                },
            )
            groups[(USAGE, name)] = group_id
        docs = {"app.py": (DOC_FILE, "ManicTime/Files"), "github.com": ("github.com", "ManicTime/WebSites")}
        for group_id, (name, (key, group_type)) in enumerate(docs.items(), start=1):
            _insert(
                conn,
                "Ar_Group",
                present,
                {
                    "ReportId": ids[DOCS],
                    "GroupId": group_id,
                    "Name": name,
                    "Key": key,
                    "GroupType": group_type,
                    "Other": "{}",
                },
            )
            groups[(DOCS, name)] = group_id
        _insert(
            conn,
            "Ar_Group",
            present,
            {"ReportId": ids[TAGS], "GroupId": 1, "Name": "Review", "Key": "review"},
        )
        groups[(TAGS, "Review")] = 1
        last_app_activity: dict[datetime, int] = {}
        for activity_id, act in enumerate(activities, start=1):
            if act.timeline == APPS:
                last_app_activity[act.start] = activity_id
            group_id = groups[(act.timeline, act.group)]
            row = {
                "ReportId": ids[act.timeline],
                "ActivityId": activity_id,
                "Name": act.title,
                "GroupId": group_id,
                "CommonGroupId": group_id if act.timeline == APPS else None,
                # A document points at the application activity it was seen in.
                "RelatedActivityId": last_app_activity.get(act.start) if act.timeline == DOCS else None,
                "IsActive": 1,
                "IsBillable": 0,
                "StartLocalTime": local_text(act.start),
                "EndLocalTime": local_text(act.end),
                "StartUtcTime": utc_text(act.start),
                "EndUtcTime": utc_text(act.end),
                "CurrentChangeSequence": activity_id,
                "Other": "{}",
            }
            _insert(conn, "Ar_Activity", present, row)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return FixtureDay(path=path, report_ids=ids, activities=activities, expectations=_expectations())
