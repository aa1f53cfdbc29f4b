"""The optional settings file (`AGENT_COORD_CONFIG`, TOML): read by the settings and by the edit guard,
which imports only the standard library to start fast."""

from __future__ import annotations

import os
from typing import Any


def read_settings_file() -> dict[str, Any]:
    """The file's `[agent-coord]` table (or its top level), keys in lower case; empty without a file."""
    path = os.environ.get("AGENT_COORD_CONFIG")
    if not path:
        return {}
    import tomllib

    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    section = raw.get("agent-coord", raw)
    return {str(k).lower(): v for k, v in section.items()}
