"""The `agent-coord` command line. Each module registers its commands on the one Typer app."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import core  # noqa: F401 - registers serve, status, validate
from .common import app


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="agent-coord")
