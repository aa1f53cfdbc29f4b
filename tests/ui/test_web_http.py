"""The web dashboard's safety over plain HTTP against a real `agent-coord web` process: the token, the
session cookie, Host and Origin checks, CSRF, read-only by default, and the tools' error codes."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from agent_coord.engine.store.records import Event
from agent_coord.web.charts import compute_charts, latency_histogram
from agent_coord.web.security import Guard, host_name, is_loopback
from agent_coord.web.serve import url_for
from agent_coord.web.views import event_view
from tests.agent_proc import agent_process, call_step, write_step
from tests.conftest import make_repo
from tests.paths import ROOT
from tests.web_support import Reply, WebServer, agent_coord_command, http, web_server

JSON = {"content-type": "application/json"}


def bearer(server: WebServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def log_in(server: WebServer) -> tuple[str, str]:
    """(cookie, csrf token) of a browser session, as the page gets them."""
    reply = http(server.url)
    assert reply.status == 303 and reply.headers["location"] == "./"
    cookie = reply.headers["set-cookie"].split(";", 1)[0]
    page = http(server.base, headers={"Cookie": cookie})
    assert page.status == 200
    match = re.search(rb'name="csrf-token" content="([^"]+)"', page.body)
    assert match
    return cookie, match.group(1).decode()


def post(server: WebServer, path: str, data: dict[str, Any], headers: dict[str, str]) -> Reply:
    return http(server.base + path, method="POST", body=json.dumps(data).encode(), headers={**JSON, **headers})


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    """One read-only server for the checks that change nothing: a configured token, a proxy prefix, an extra Host."""
    root = tmp_path_factory.mktemp("web")
    env = {
        "AGENT_COORD_DB": str(root / "state" / "coord.db"),
        "AGENT_COORD_REPO": str(make_repo(root)),
        "AGENT_COORD_POOL_ROOT": str(root / "pool"),
        "AGENT_COORD_MANICTIME_DB": "",
    }
    args = ("--root-path", "/coord", "--allow-host", "dash.example.org")
    with web_server(env, *args, AGENT_COORD_WEB_TOKEN="s3cret-token-for-tests") as server:
        yield server


def test_every_page_and_stream_needs_the_token(read_only: WebServer) -> None:
    server = read_only
    assert server.token == "s3cret-token-for-tests"  # AGENT_COORD_WEB_TOKEN
    for path in ("", "api/state", "events", "static/app.js", "static/app.css", "nothing-here"):
        reply = http(server.base + path)
        assert reply.status == 401, path
        assert server.token.encode() not in reply.body
    assert http(server.base + "api/state", headers={"Authorization": "Bearer wrong"}).status == 401
    assert http(server.base + "?token=wrong").status == 401
    # The token in the address buys an HttpOnly, SameSite=Strict cookie and a redirect that drops it.
    reply = http(server.url)
    assert reply.status == 303 and reply.headers["location"] == "./"
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/coord/" in cookie
    assert server.token not in cookie
    session = cookie.split(";", 1)[0]
    page = http(server.base, headers={"Cookie": session})
    assert page.status == 200 and b"<title>agent-coord</title>" in page.body
    assert server.token.encode() not in page.body  # no secret in the page
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert http(server.base + "static/app.js", headers={"Cookie": session}).status == 200
    # A forged cookie is not a session.
    forged = session[: session.index(".") + 1] + "0" * 43
    assert http(server.base, headers={"Cookie": forged}).status == 401
    state = json.loads(http(server.base + "api/state", headers=bearer(server)).body)
    assert state["read_only"] is True and state["conflicts"] == []
    assert all(h["merge_conflicts"] == 0 for h in state["charts"]["hours"])
    assert server.token not in json.dumps(state)


def test_host_header_must_name_this_server(read_only: WebServer) -> None:
    server = read_only
    port = server.netloc.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "dash.example.org"):
        assert http(server.base + "api/state", headers={**bearer(server), "Host": host}).status == 200, host
    # A DNS-rebinding page reaches us under its own name: refused before anything else.
    for host in (f"evil.example:{port}", "attacker.localhost.example", ""):
        reply = http(server.base + "api/state", headers={**bearer(server), "Host": host})
        assert reply.status in (400, 421), host


def test_actions_are_off_by_default(read_only: WebServer) -> None:
    server = read_only
    reply = post(server, "api/validate", {}, bearer(server))
    assert reply.status == 403 and json.loads(reply.body)["code"] == "READ_ONLY"
    cookie, csrf = log_in(server)
    reply = post(server, "api/release", {"worktree_id": "wt-01"}, {"Cookie": cookie, "X-CSRF-Token": csrf})
    assert reply.status == 403 and json.loads(reply.body)["code"] == "READ_ONLY"


def test_behind_a_proxy_prefix(read_only: WebServer) -> None:
    server = read_only
    assert server.base.endswith(":" + server.netloc.rsplit(":", 1)[1] + "/coord/")
    # The proxy strips the prefix, or not; the cookie and every URL in the page stay under it.
    assert http(server.base + "api/state", headers=bearer(server)).status == 200
    direct = server.base.removesuffix("coord/")
    reply = http(direct + "?token=" + server.token)
    assert reply.status == 303 and "Path=/coord/" in reply.headers["set-cookie"]
    reply = http(direct + "?token=" + server.token, headers={"X-Forwarded-Prefix": "/other"})
    assert "Path=/other/" in reply.headers["set-cookie"]
    page = http(direct, headers=bearer(server)).body.decode()
    assert not re.search(r'(href|src)="/', page), "absolute URLs break under a prefix"


@pytest.mark.anyio
async def test_actions_when_on_guarded_and_with_the_tools_codes(env: dict[str, str]) -> None:
    steps = [
        call_step("allocate_worktree", {"branch": "feat/owned"}, "a"),
        write_step("a", "draft.txt", b"not committed\n"),
    ]
    async with agent_process(env, steps, AGENT_COORD_AGENT_ID="owner") as agent:
        results = await agent.until_ready()
        wid = results[0]["result"]["worktree_id"]
        with web_server(env, "--allow-actions") as server:
            cookie, csrf = log_in(server)
            origin = f"http://{server.netloc}"
            # A session needs both the CSRF header and this server's Origin.
            for headers in (
                {"Cookie": cookie, "Origin": origin},
                {"Cookie": cookie, "X-CSRF-Token": "0" * 43, "Origin": origin},
                {"Cookie": cookie, "X-CSRF-Token": csrf},
                {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
            ):
                reply = post(server, "api/validate", {}, headers)
                assert reply.status == 403 and json.loads(reply.body)["code"] == "CSRF", headers
            reply = post(server, "api/validate", {}, {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": origin})
            assert reply.status == 200 and "findings" in json.loads(reply.body)
            # The header token is no ambient credential: no CSRF token needed, but a foreign Origin still fails.
            assert post(server, "api/validate", {"repair": False}, bearer(server)).status == 200
            assert post(server, "api/validate", {}, {**bearer(server), "Origin": "http://evil.example"}).status == 403
            # The tools' error codes, as JSON.
            reply = post(server, "api/release", {"worktree_id": "wt-99"}, bearer(server))
            assert reply.status == 404 and json.loads(reply.body)["code"] == "NOT_FOUND"
            reply = post(server, "api/release", {"worktree_id": 3}, bearer(server))
            assert reply.status == 400 and json.loads(reply.body)["code"] == "INVALID_ARGUMENT"
            reply = post(server, "api/validate", {"repair": "yes"}, bearer(server))
            assert reply.status == 400 and json.loads(reply.body)["code"] == "INVALID_ARGUMENT"
            reply = post(server, "api/release", {"worktree_id": wid}, bearer(server))
            body = json.loads(reply.body)
            assert reply.status == 409 and body["code"] == "NOT_OWNER" and "held by agent owner" in body["message"]
            preview = json.loads(post(server, "api/release-preview", {"worktree_id": wid}, bearer(server)).body)
            assert preview["dirty"] is True and preview["files"] == ["draft.txt"]
            assert preview["agent"] == "owner" and preview["rescue_ref"].startswith("refs/")
            done = json.loads(post(server, "api/release", {"worktree_id": wid, "force": True}, bearer(server)).body)
            assert done["state"] == "FREE" and done["rescue_ref"].startswith(preview["rescue_ref"])


def test_non_loopback_bind_warns(env: dict[str, str]) -> None:
    from tests.agent_proc import proc_env

    proc = subprocess.Popen(
        [*agent_coord_command(), "web", "--host", "0.0.0.0", "--port", "0"],
        env=proc_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith("http://127.0.0.1:") and "?token=" in first
        assert "warning" in proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(10)


# ---- pure parts ------------------------------------------------------------------------------------


def test_guard_and_addresses() -> None:
    guard = Guard.for_bind("t", "127.0.0.1", ["proxy.example"])
    assert guard.host_ok("localhost:8765") and guard.host_ok("[::1]:8765") and guard.host_ok("proxy.example")
    assert not guard.host_ok("evil.example:8765") and not guard.host_ok(None)
    assert guard.origin_ok("http://localhost:8765", "localhost:8765", None)
    assert not guard.origin_ok("http://localhost:9999", "localhost:8765", None)
    assert not guard.origin_ok("null", "localhost:8765", None)
    sid = guard.session_id(guard.new_session())
    assert sid and guard.csrf_ok(sid, guard.csrf_for(sid)) and not guard.csrf_ok(sid, "x")
    assert Guard.for_bind("t", "127.0.0.1").session_id(guard.new_session()) is None  # another process's key
    assert host_name("[::1]:80") == "::1" and host_name("Example.org:1") == "example.org"
    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert url_for("::", 80, "", "a b") == "http://[::1]:80/?token=a%20b"
    assert url_for("127.0.0.1", 80, "/x/", "t") == "http://127.0.0.1:80/x/?token=t"


def _event(
    i: int,
    ts: float,
    action: str,
    outcome: str,
    wid: str | None = "wt-01",
    ms: float | None = None,
    detail: dict[str, object] | None = None,
) -> Event:
    return Event(i, ts, "a", action, 1, wid, "b", outcome, ms, None, detail=detail or {})


def test_charts_from_the_event_log() -> None:
    now = 1_800_000_000.0
    events = [
        _event(1, now - 7200, "allocate", "ok", ms=30),
        _event(2, now - 5400, "release", "ok"),
        _event(3, now - 3000, "allocate", "BRANCH_CONFLICT", wid=None, ms=5),
        _event(4, now - 2000, "cas_lost", "lost", wid=None),
        _event(5, now - 1800, "allocate", "ok", wid="wt-02", ms=900),
        _event(6, now - 100, "allocate", "INVALID_BRANCH", wid=None, ms=1),  # a caller error: not counted
        # The radar: a conflict appears in each hour; the first is resolved, the second ends by a release.
        _event(7, now - 6000, "radar", "conflict", detail={"with": "wt-02"}),
        _event(8, now - 4000, "radar", "cleared", detail={"with": "wt-02", "reason": "resolved"}),
        _event(9, now - 1700, "radar", "conflict", detail={"with": "wt-02"}),
        _event(10, now - 60, "radar", "cleared", detail={"with": "wt-02", "reason": "released"}),
    ]
    charts = compute_charts(events, now=now, window_s=86400, slot_count=2)
    assert len(charts.hours) == 2
    assert [(h.merge_conflicts, h.merge_conflicts_resolved) for h in charts.hours] == [(1, 1), (1, 0)]
    assert [h.allocations for h in charts.hours] == [1, 1]
    assert [h.allocation_conflicts for h in charts.hours] == [0, 2]
    # First hour: wt-01 busy 30 of 60 minutes, of 2 slots. Second: wt-02 busy the last 30 minutes.
    assert charts.hours[0].utilisation == pytest.approx(0.25)
    assert charts.hours[1].utilisation == pytest.approx(0.25)
    assert charts.latency_samples == 3
    assert sum(b.count for b in charts.latency) == 3
    assert latency_histogram([25, 26, 10**6])[0].count == 1 and latency_histogram([10**6])[-1].count == 1
    assert compute_charts([], now=now, window_s=86400, slot_count=0).hours[0].utilisation is None
    # A radar event's activity row says with which branch and on which files.
    radar = _event(11, now, "radar", "conflict", detail={"with": "wt-02", "with_branch": "feat-b", "paths": ["a", "b"]})
    assert event_view(radar)["detail"] == "with_branch: feat-b; paths: a, b"


def test_screenshots_are_linked_from_the_readme() -> None:
    root = ROOT
    readme = (root / "README.md").read_text(encoding="utf-8")
    for name in ("dashboard-desktop.png", "dashboard-narrow.png"):
        assert f"docs/screenshots/{name}" in readme
        assert (root / "docs" / "screenshots" / name).stat().st_size > 10_000


def test_page_assets_are_shipped_and_small() -> None:
    from importlib import resources

    static = resources.files("agent_coord.web").joinpath("static")
    total = sum(static.joinpath(n).read_bytes().__len__() for n in ("index.html", "app.js", "app.css"))
    assert total < 100_000
