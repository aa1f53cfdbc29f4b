"""`agent-coord web`: bind, print the address (token included) as the first line, serve until stopped."""

from __future__ import annotations

import socket
import sys
import threading
import webbrowser
from urllib.parse import quote

import uvicorn

from agent_coord.config import Settings
from agent_coord.web.app import WebConfig, create_app
from agent_coord.web.security import is_loopback


def bind(host: str, port: int) -> socket.socket:
    """Bind before printing, so the printed port is the real one (`--port 0` picks a free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int, root_path: str, token: str) -> str:
    shown = "127.0.0.1" if host in {"0.0.0.0", ""} else "[::1]" if host == "::" else host  # noqa: S104
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    prefix = "/" + root_path.strip("/") + "/" if root_path.strip("/") else "/"
    return f"http://{shown}:{port}{prefix}?token={quote(token)}"


def serve(config: WebConfig, *, port: int, open_browser: bool) -> None:
    if not is_loopback(config.bind_host):
        print(
            f"warning: serving on {config.bind_host}, reachable from other machines; anyone with the token "
            "can see the pool" + (" and act on it" if config.allow_actions else ""),
            file=sys.stderr,
        )
    sock = bind(config.bind_host, port)
    url = url_for(config.bind_host, sock.getsockname()[1], config.root_path, config.token)
    print(url, flush=True)
    if not config.allow_actions:
        print("read-only (start with --allow-actions to release and validate from the page)", file=sys.stderr)
    if open_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    app = create_app(Settings(), config)
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False, timeout_graceful_shutdown=2)
    )
    server.run(sockets=[sock])
