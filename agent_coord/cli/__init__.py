"""The `agent-coord` command line. Each module registers its commands on the one Typer app."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from agent_coord.cli import (  # noqa: F401 - each module registers its commands
    core,  # serve, status, validate
    hooks,  # hook worktree-create|worktree-remove|session-start|session-end, install-claude
    observe,  # metrics, activity
    pool_files,  # release, import-pool, export-pool
    radar,  # conflicts
    showcase,  # dashboard, demo, web
)
from agent_coord.cli.common import EXIT_REFUSED, EXIT_USAGE, app
from agent_coord.config import SettingsError
from agent_coord.engine.errors import CoordError, ErrorCode
from agent_coord.engine.store import StoreBusyError


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command. Whatever goes wrong ends in one line on stderr and a documented exit code,
    never a traceback: a bad setting is a usage error (2), a refusal or failure is 1."""
    try:
        app(args=list(argv) if argv is not None else sys.argv[1:], prog_name="agent-coord")
    except SettingsError as exc:
        _die(f"agent-coord: bad setting: {exc}", EXIT_USAGE)
    except CoordError as exc:
        _die(str(exc), EXIT_REFUSED)
    except StoreBusyError:
        locked = CoordError(ErrorCode.STORE_UNAVAILABLE, "the coordination database stayed locked by another process")
        _die(str(locked), EXIT_REFUSED)
    except Exception as exc:  # a bug: one line for the person, the traceback only with debug logging
        logging.getLogger("agent-coord").debug("unexpected failure", exc_info=True)
        _die(f"agent-coord: unexpected {type(exc).__name__}: {exc}", EXIT_REFUSED)


def _die(line: str, code: int) -> None:
    print(" ".join(line.split()), file=sys.stderr)
    raise SystemExit(code)
