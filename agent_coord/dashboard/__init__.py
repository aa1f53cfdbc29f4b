"""The live dashboard: one full screen that follows the store as any process commits.

``snapshot`` reads the store, ``screen`` renders a snapshot for a terminal size (sections, metrics,
the row plan in ``layout``, one-line tables in ``table``), ``live`` keeps it up to date, and
``terminal`` handles keys and the signals that end it.
"""

from __future__ import annotations

from agent_coord.dashboard.layout import RowPlan, plan_rows
from agent_coord.dashboard.live import TICK_S, Dashboard, run_dashboard
from agent_coord.dashboard.screen import print_snapshot, render_screen
from agent_coord.dashboard.sections import AGENT_COLUMNS, EVENT_COLUMNS, SLOT_COLUMNS
from agent_coord.dashboard.snapshot import NOISE, Snapshot, gone_agents, take_snapshot
from agent_coord.dashboard.table import Column, fit_columns, table_lines
from agent_coord.dashboard.terminal import cancel_on_stop_signal

__all__ = [
    "AGENT_COLUMNS",
    "EVENT_COLUMNS",
    "NOISE",
    "SLOT_COLUMNS",
    "TICK_S",
    "Column",
    "Dashboard",
    "RowPlan",
    "Snapshot",
    "cancel_on_stop_signal",
    "fit_columns",
    "gone_agents",
    "plan_rows",
    "print_snapshot",
    "render_screen",
    "run_dashboard",
    "table_lines",
    "take_snapshot",
]
