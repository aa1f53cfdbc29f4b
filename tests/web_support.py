"""A real `agent-coord web` server for tests, and plain HTTP against it (stdlib only, no redirects followed)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .agent_proc import proc_env


def agent_coord_command() -> list[str]:
    return [sys.executable, "-m", "agent_coord"]


@dataclass
class WebServer:
    proc: subprocess.Popen[str]
    url: str  # as printed: with the token
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.url.split("?", 1)[0]

    @property
    def token(self) -> str:
        return parse_qs(urlsplit(self.url).query)["token"][0]

    @property
    def netloc(self) -> str:
        return urlsplit(self.url).netloc


@contextlib.contextmanager
def web_server(env: dict[str, str], *args: str, timeout_s: float = 30.0, **extra: str) -> Iterator[WebServer]:
    proc = subprocess.Popen(
        [*agent_coord_command(), "web", "--port", "0", *args],
        env=proc_env(env, **extra),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    try:
        url_box: list[str] = []
        stdout = proc.stdout
        got = threading.Thread(target=lambda: url_box.append(stdout.readline()), daemon=True)
        got.start()
        got.join(timeout_s)
        assert url_box and url_box[0].startswith("http://"), f"no URL printed; stderr: {''.join(lines)}"
        server = WebServer(proc=proc, url=url_box[0].strip(), stderr_lines=lines)
        wait_until_serving(server, timeout_s)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def header_all(self) -> dict[str, str]:
        return self.headers


def http(url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with OPENER.open(request, timeout=20) as res:
            return Reply(res.status, {k.lower(): v for k, v in res.headers.items()}, res.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


def wait_until_serving(server: WebServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            reply = http(server.base + "api/state", headers={"Authorization": f"Bearer {server.token}"})
            if reply.status == 200:
                return
        except OSError:
            pass
        assert server.proc.poll() is None, f"server exited: {''.join(server.stderr_lines)}"
        assert time.monotonic() < deadline, "the web server did not answer in time"
        time.sleep(0.05)


def chromium_path() -> Path | None:
    for candidate in (os.environ.get("AGENT_COORD_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None
