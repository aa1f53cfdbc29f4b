"""The `agent-coord` console script. Claude Code waits for every hook, so the hooks are answered here,
before the command line's framework (Typer, Click, Rich) is imported: `hook pre-edit`, which runs before
every edit, with the standard library alone; the others by the session's server or with only what their
work needs (agent_coord/claude/hook_run.py). `status --json`, which scripts and status lines poll, is
answered here too; everything else goes to the command line (agent_coord/cli/)."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # `typing` is not imported at run time: the edit guard starts with `sys` alone
if TYPE_CHECKING:
    from typing import Any

    from agent_coord.engine.coordinator import Coordinator


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "hook":
        if args[1] == "pre-edit":
            from agent_coord.engine.radar.guard import main as guard

            sys.exit(guard())
        from agent_coord.claude.hook_run import HOOKS, run

        if args[1] in HOOKS:
            sys.exit(run(args[1]))
    if args[:1] == ["status"] and "--json" in args:
        repo = _status_repo(args[1:])
        if not isinstance(repo, bool):
            sys.exit(status_json(repo))
    from agent_coord.cli import main as cli

    cli()


def _status_repo(options: list[str]) -> str | bool | None:
    """The `--repo` of `status --json [--repo R]`, None without one, False for any other form (left to
    the command line, which knows every spelling and says what is wrong)."""
    rest = [o for o in options if o != "--json"]
    if not rest:
        return None
    if len(rest) == 2 and rest[0] == "--repo" and not rest[1].startswith("-"):
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--repo=") and len(rest[0]) > len("--repo="):
        return rest[0].removeprefix("--repo=")
    return False


def status_json(repo: str | None) -> int:
    """`agent-coord status --json`: the same output, exit codes and error lines as the command line's
    (agent_coord/cli/core.py and agent_coord/cli/__init__.py), without Typer; answered by the user's
    hook host when one runs (agent_coord/claude/hook_host.py), which it starts otherwise."""
    import os

    from agent_coord.claude import hook_socket

    try:
        cwd: str | None = os.getcwd()
        repo_arg = os.path.realpath(os.path.expanduser(repo)) if repo else None
    except OSError:  # this directory was removed: the command line says what that means
        cwd, repo_arg = None, repo
    if hook_socket.supported() and cwd is not None:
        path = hook_socket.host_socket(cwd)
        request = hook_socket.request("status", "", cwd, repo=repo_arg)
        reply = hook_socket.ask(path, request) if path is not None else None
        if reply is not None:
            from agent_coord.claude.hook_run import printed

            return printed(reply)
    if cwd is not None:
        hook_socket.start_host(cwd)  # it comes up while this status works
    return _status_in_process(repo_arg)


def _status_in_process(repo_arg: str | None) -> int:
    import logging

    import anyio

    from agent_coord.config import SettingsError, load_settings
    from agent_coord.engine.coordinator import Coordinator
    from agent_coord.engine.errors import CoordError
    from agent_coord.engine.store import StoreBusyError

    def die(line: str, code: int) -> int:
        print(" ".join(line.split()), file=sys.stderr)
        return code

    try:
        settings = load_settings()

        async def status() -> dict[str, object]:
            async with Coordinator.open(settings, register=False) as coord:
                return await status_reply(coord, repo_arg)

        from agent_coord.claude.hook_run import printed

        return printed(anyio.run(status))
    except SettingsError as exc:
        return die(exc.line(), 2)
    except CoordError as exc:
        return die(str(exc), 1)
    except StoreBusyError as exc:
        return die(str(exc.refusal()), 1)
    except Exception as exc:  # a bug: one line for the person, the traceback only with debug logging
        logging.getLogger("agent-coord").debug("unexpected failure", exc_info=True)
        return die(f"agent-coord: unexpected {type(exc).__name__}: {exc}", 1)


async def status_reply(coord: Coordinator, repo: str | None) -> dict[str, Any]:
    """`agent-coord status --json` as a reply: its stdout, stderr lines and exit code (in-process here,
    or by the hook host, agent_coord/claude/hook_host.py)."""
    import json

    from agent_coord.engine.errors import CoordError
    from agent_coord.engine.store import StoreBusyError

    try:
        result = (await coord.status(repo)).model_dump(mode="json")
    except CoordError as exc:
        return {"stdout": None, "stderr": [str(exc)], "code": 1}
    except StoreBusyError as exc:
        return {"stdout": None, "stderr": [" ".join(str(exc.refusal()).split())], "code": 1}
    return {"stdout": json.dumps(result, indent=2, default=str), "stderr": [], "code": 0}
