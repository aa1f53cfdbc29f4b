"""When the server cannot start (bad settings, an unusable database), say so to the client.

The MCP client is waiting for an answer to `initialize`: answering it with a JSON-RPC error whose
message starts with the code lets the client show the reason (Claude Code shows it under `/mcp`),
where a crash would show only "connection closed". The reason also goes to stderr as one line, and
the process exits 1 without a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import time

# How long to wait for the client's first request; a client that says nothing is not waited for longer.
FIRST_REQUEST_WAIT_S = 10.0
INTERNAL_ERROR = -32603  # JSON-RPC "internal error": the server is there but cannot serve
EXIT_FAILED = 1


def refuse_on_stdio(reason: str, *, exit_code: int = EXIT_FAILED, wait_s: float = FIRST_REQUEST_WAIT_S) -> int:
    """Answer the client's first request (normally `initialize`) with `reason` as a JSON-RPC error;
    return the exit status. Notifications before it are skipped; a closed stdin ends the wait."""
    line = " ".join(reason.split())
    print(line, file=sys.stderr, flush=True)
    request_id = _first_request_id(wait_s)
    if request_id is not None:
        error = {"code": INTERNAL_ERROR, "message": line, "data": {"code": line.split(":", 1)[0]}}
        reply = json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})
        with contextlib.suppress(OSError):  # the client went away: nobody to tell
            os.write(sys.stdout.fileno(), (reply + "\n").encode())
    return exit_code


def _first_request_id(wait_s: float) -> int | str | None:
    deadline = time.monotonic() + wait_s
    fd = sys.stdin.fileno()
    buffer = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
        while b"\n" in buffer:
            raw, buffer = buffer.split(b"\n", 1)
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict) and isinstance(message.get("id"), int | str) and "method" in message:
                return message["id"]  # type: ignore[no-any-return]
    return None
