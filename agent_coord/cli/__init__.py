"""The `agent-coord` command line. Each module registers its commands on the one Typer app.

A command imports only the module that defines it (Claude Code waits for every hook, and the other
modules bring the dashboard, rich tables, the demo); no command, `--help` or an unknown one loads
them all, so the help and the error list every command.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from agent_coord.cli.common import EXIT_REFUSED, EXIT_USAGE
from agent_coord.config import SettingsError
from agent_coord.engine.errors import CoordError
from agent_coord.engine.store import StoreBusyError

COMMAND_MODULES: dict[str, str] = {
    "serve": "core",
    "status": "core",
    "validate": "core",
    "hook": "hooks",
    "install-claude": "hooks",
    "metrics": "observe",
    "activity": "observe",
    "advise": "observe",
    "release": "pool_files",
    "export-pool": "pool_files",
    "import-pool": "pool_files",
    "conflicts": "radar",
    "migrate-store": "store_copy",
    "dashboard": "showcase",
    "demo": "showcase",
    "web": "showcase",
}


def _app(command: str | None = None) -> Any:
    modules = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else sorted(set(COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(f"agent_coord.cli.{module}")  # registers its commands
    from agent_coord.cli.common import app

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run one command. Whatever goes wrong ends in one line on stderr and a documented exit code,
    never a traceback: a bad setting is a usage error (2), a refusal or failure is 1."""
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        _app(args[0] if args else None)(args=args, prog_name="agent-coord")
    except SettingsError as exc:
        _die(exc.line(), EXIT_USAGE)
    except CoordError as exc:
        _die(str(exc), EXIT_REFUSED)
    except StoreBusyError as exc:
        _die(str(exc.refusal()), EXIT_REFUSED)
    except Exception as exc:  # a bug: one line for the person, the traceback only with debug logging
        logging.getLogger("agent-coord").debug("unexpected failure", exc_info=True)
        _die(f"agent-coord: unexpected {type(exc).__name__}: {exc}", EXIT_REFUSED)


def _die(line: str, code: int) -> None:
    print(" ".join(line.split()), file=sys.stderr)
    raise SystemExit(code)


def __getattr__(name: str) -> Any:
    if name == "app":  # the whole app, every command registered
        return _app()
    raise AttributeError(name)
