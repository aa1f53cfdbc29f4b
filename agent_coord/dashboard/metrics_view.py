"""The metrics section: compact lines that wrap between metrics, or the full table on a tall terminal."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from agent_coord.dashboard.formatting import duration
from agent_coord.dashboard.render import METRIC_STATE_STYLE
from agent_coord.dashboard.table import Cell, Column, table_lines
from agent_coord.engine.observe.metrics import MetricsReport

METRIC_WORD = {"ok": "ok", "warning": "warn", "failing": "FAIL", "not enough data": "n/a"}
METRIC_SHORT = {
    "allocation_success_rate": "success",
    "allocation_latency_p50": "p50",
    "allocation_latency_p99": "p99",
    "conflict_rate": "conflicts",
    "pool_utilization": "utilization",
    "agent_crash_rate": "crashes",
    "stale_allocation_rate": "stale",
    "predicted_merge_conflicts": "radar",
}
METRIC_COLUMNS = (
    Column("METRIC", 8, 24),
    Column("VALUE", 5, 10, right=True),
    Column("TARGET", 6, 12),
    Column("STATE", 4, 15),
    Column("N", 1, 6, right=True),
    Column("DETAIL", 8, None, shrink=3, drop=1),
)


def short_value(value: float | None, unit: str) -> str:
    """Narrower than ``engine.metrics.format_value``: no space before the unit, fewer decimals."""
    if value is None:
        return "-"
    if unit == "ratio":
        pct = value * 100
        return f"{pct:.0f}%" if pct >= 10 or pct == 0 else f"{pct:.1f}%"
    if unit == "ms":
        return f"{value:.0f}ms" if value < 10000 else f"{value / 1000:.1f}s"
    if unit == "per_week":
        return f"{value:.1f}/wk"
    if unit == "per_day":
        return f"{value:.1f}/day"
    return f"{value:g}"


def short_target(target: str) -> str:
    return target.replace(" ", "").replace("10000ms", "10s").replace("/week", "/wk")


def metric_chunks(report: MetricsReport) -> list[Text]:
    chunks: list[Text] = []
    for m in report.metrics:
        chunk = Text(no_wrap=True)
        chunk.append(METRIC_SHORT.get(m.name, m.name) + " ", style="bold")
        if m.value is None:
            chunk.append(f"n={m.samples}", style="dim")
        else:
            chunk.append(short_value(m.value, m.unit))
        if m.target != "informational":
            chunk.append(f" ({short_target(m.target)})", style="dim")
        if m.target != "informational" or m.value is None:
            chunk.append(" " + METRIC_WORD[m.state], style=METRIC_STATE_STYLE[m.state])
        chunks.append(chunk)
    return chunks


def pack(prefix: Text, chunks: Sequence[Text], width: int, sep: str = " · ", indent: int = 2) -> list[Text]:
    """Chunks laid out left to right, wrapping between chunks (never inside one)."""
    lines = [prefix.copy()]
    fresh = True  # no chunk on the current line yet
    for chunk in chunks:
        current = lines[-1]
        if not fresh and len(current) + len(sep) + len(chunk) > width:
            current = Text(" " * indent, no_wrap=True)
            lines.append(current)
            fresh = True
        if not fresh:
            current.append(sep, style="dim")
        current.append_text(chunk)
        fresh = False
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines


def metric_lines_compact(report: MetricsReport | None, width: int) -> list[Text]:
    if report is None:
        return [Text("metrics unavailable", style="dim")]
    prefix = Text("metrics ", style="bold")
    prefix.append(METRIC_WORD[report.overall], style=METRIC_STATE_STYLE[report.overall])
    prefix.append(": ")
    return pack(prefix, metric_chunks(report), width)


def metric_table(report: MetricsReport, width: int) -> list[Text]:
    rows: list[list[Cell]] = [
        [
            (m.name, ""),
            (short_value(m.value, m.unit), ""),
            (m.target, "dim"),
            (m.state, METRIC_STATE_STYLE[m.state]),
            (str(m.samples), "dim"),
            (m.detail, "dim"),
        ]
        for m in report.metrics
    ]
    window = duration(report.window_s)
    cols = (Column(f"METRICS ({window}) {report.overall}", 8, 30), *METRIC_COLUMNS[1:])
    return table_lines(cols, rows, width, len(rows) + 1)
