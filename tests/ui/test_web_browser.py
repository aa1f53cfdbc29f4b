"""The web dashboard in a real headless Chromium (Debian's package) driven by Playwright.

Under CI=true these tests run and fail if they cannot; elsewhere they skip when Chromium or Playwright
is missing. Screenshots go to $WEB_SCREENSHOT_DIR when set (docs/screenshots is made that
way), else to the test's temporary directory, so a test run never changes the working tree.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.agent_proc import agent_process, call_step, write_step
from tests.conftest import git
from tests.paths import DATA
from tests.web_support import chromium_path, http, web_server

pytestmark = pytest.mark.anyio

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = DATA / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1360, "height": 900}
NARROW = {"width": 390, "height": 844}


def _browser_or_skip() -> Path:
    path = chromium_path()
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        message = "Chromium or Playwright missing: apt-get install chromium; pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def chromium() -> Path:
    return _browser_or_skip()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("WEB_SCREENSHOT_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Page:
    """A page plus what it logged: console errors, uncaught exceptions, and how many documents it loaded."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.loads = 0
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("load", lambda _: self._loaded())

    def _loaded(self) -> None:
        self.loads += 1


@asynccontextmanager
async def browser(chromium: Path) -> AsyncIterator[Callable[..., Awaitable[Page]]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:

            async def new_page(url: str | None = None, viewport: dict[str, int] = DESKTOP) -> Page:
                # bypass_csp only so that the test can inject axe-core; the app's own CSP stays on otherwise.
                context = await b.new_context(viewport=viewport, bypass_csp=True)
                # Every wait is on a condition; its bound only decides when a test gives up, and a loaded
                # CI machine can take tens of seconds to draw a page.
                context.set_default_timeout(90_000)
                page = Page(await context.new_page())
                if url:
                    await page.page.goto(url)
                    await page.page.wait_for_function("window.agentCoord && window.agentCoord.version > 0")
                return page

            yield new_page
        finally:
            await b.close()


def slot_states(env: dict[str, str]) -> dict[str, str]:
    with sqlite3.connect(env["AGENT_COORD_DB"]) as db:
        return dict(db.execute("SELECT id, state FROM slots").fetchall())


async def wait_for(check: Callable[[], bool], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await anyio.sleep(0.05)


async def test_page_renders_live_and_follows_another_process(chromium: Path, env: dict[str, str], shots: Path) -> None:
    with web_server(env) as server:
        async with browser(chromium) as new_page:
            view = await new_page(server.url)
            page = view.page
            # The token was traded for a cookie: the address bar no longer shows it.
            assert "token=" not in page.url
            assert await page.locator("#mode").text_content() == "read-only"
            steps = [call_step("allocate_worktree", {"branch": "feat/live", "task": "show the web dashboard"}, "a")]
            async with agent_process(env, steps, AGENT_COORD_AGENT_ID="painter") as agent:
                results = await agent.until_ready()
                assert results[0]["ok"], results
                wid = results[0]["result"]["worktree_id"]
                row = page.locator(f'tr[data-slot="{wid}"][data-state="BUSY"]')
                await row.wait_for()
                assert "feat/live" in (await row.text_content() or "")
                assert "painter" in (await page.locator("#agent-rows").text_content() or "")
                await page.locator('tr[data-event] >> text="allocate"').first.wait_for()
                # Read-only: no action is offered.
                assert not await page.locator(f"#force-{wid}").is_visible()
                assert view.loads == 1, "the page reloaded"
                await page.screenshot(path=str(shots / "dashboard-desktop.png"), full_page=True)
                narrow = await new_page(server.url, NARROW)
                await narrow.page.locator(f'tr[data-slot="{wid}"]').wait_for()
                await narrow.page.screenshot(path=str(shots / "dashboard-narrow.png"), full_page=True)
                assert narrow.errors == []
            # Filters: only problems, then a search that matches nothing.
            await page.check("#f-problems")
            await page.uncheck("#f-problems")
            await page.fill("#f-text", "no-such-thing-anywhere")
            assert "No event matches" in (await page.locator("#event-rows").text_content() or "")
            assert view.errors == []


async def test_release_through_the_page_and_refused_without_token(
    chromium: Path, env: dict[str, str], shots: Path
) -> None:
    steps = [
        call_step("allocate_worktree", {"branch": "feat/held", "task": "hold a slot"}, "a"),
        write_step("a", "notes.txt", b"unsaved work\n"),
    ]
    async with agent_process(env, steps, AGENT_COORD_AGENT_ID="holder") as agent:
        results = await agent.until_ready()
        assert all(r["ok"] for r in results), results
        wid = results[0]["result"]["worktree_id"]
        with web_server(env, "--allow-actions") as server:
            async with browser(chromium) as new_page:
                # Without the token: the page, the stream and the action all answer 401, in the browser too.
                stranger = await new_page()
                reply = await stranger.page.goto(server.base)
                assert reply is not None and reply.status == 401
                status = await stranger.page.evaluate(
                    """async (wid) => (await fetch("api/release", {method: "POST",
                        headers: {"content-type": "application/json"},
                        body: JSON.stringify({worktree_id: wid, force: true})})).status""",
                    wid,
                )
                assert status == 401
                assert slot_states(env)[wid] == "BUSY"

                view = await new_page(server.url)
                page = view.page
                await page.locator(f'tr[data-slot="{wid}"][data-state="BUSY"]').wait_for()
                # A plain release of another agent's slot is refused with the tools' code.
                await page.click(f"#release-{wid}")
                await page.locator("#notice >> text=NOT_OWNER").wait_for()
                await page.click(f"#force-{wid}")
                dialog = page.locator("#confirm")
                await dialog.wait_for(state="visible")
                text = await dialog.text_content() or ""
                assert "refs/" in text and "notes.txt" in text and "holder" in text, text
                await page.screenshot(path=str(shots / "force-release-confirm.png"))
                await page.click("#confirm-ok")
                await page.locator(f'tr[data-slot="{wid}"][data-state="FREE"]').wait_for()
                await page.locator("#notice >> text=rescue").wait_for()
                assert slot_states(env)[wid] == "FREE"
                # Chromium logs the expected refusal (409 NOT_OWNER) as a failed resource; nothing else.
                assert [e for e in view.errors if "status of 409" not in e] == []
                assert len(view.errors) == 1
                # The release went through the engine: the event log has it with its rescue ref.
                with sqlite3.connect(env["AGENT_COORD_DB"]) as db:
                    detail = db.execute(
                        "SELECT detail FROM events WHERE action='release' AND outcome='ok' AND worktree_id=?", (wid,)
                    ).fetchone()[0]
                assert json.loads(detail)["rescue_ref"].startswith("refs/")
                # The token still matters after the fact: a POST without it is refused.
                refused = http(server.base + "api/validate", method="POST", body=b"{}", headers={"x": "y"})
                assert refused.status == 401


async def test_keyboard_navigation_and_accessibility(chromium: Path, env: dict[str, str], shots: Path) -> None:
    steps = [call_step("allocate_worktree", {"branch": "feat/a11y", "task": "be reachable"}, "a")]
    async with agent_process(env, steps, AGENT_COORD_AGENT_ID="keyboarder") as agent:
        results = await agent.until_ready()
        wid = results[0]["result"]["worktree_id"]
        with web_server(env, "--allow-actions") as server:
            async with browser(chromium) as new_page:
                for viewport in (DESKTOP, NARROW):
                    view = await new_page(server.url, viewport)
                    page = view.page
                    await page.locator(f'tr[data-slot="{wid}"]').wait_for()
                    await page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
                    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
                    serious = [
                        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
                        for v in result["violations"]
                        if v["impact"] in ("serious", "critical")
                    ]
                    assert serious == [], serious
                    assert view.errors == []

                # Keyboard only: the skip link comes first and moves focus to the slots.
                page = (await new_page(server.url)).page
                await page.locator(f'tr[data-slot="{wid}"]').wait_for()
                await page.keyboard.press("Tab")
                assert await page.evaluate("document.activeElement.className") == "skip"
                await page.keyboard.press("Enter")
                await page.wait_for_function("location.hash === '#slots'")
                # Tab on from the slots reaches the slot's buttons; Enter opens the dialog, Escape closes it.
                for _ in range(30):
                    await page.keyboard.press("Tab")
                    if await page.evaluate("document.activeElement.id") == f"force-{wid}":
                        break
                else:
                    raise AssertionError("Tab never reached the force-release button")
                await page.keyboard.press("Enter")
                await page.locator("#confirm").wait_for(state="visible")
                assert await page.evaluate("document.activeElement.id") == "confirm-cancel"
                await page.keyboard.press("Escape")
                await page.locator("#confirm").wait_for(state="hidden")
                assert slot_states(env)[wid] == "BUSY"


APP = "".join(f"line {i}\n" for i in range(1, 31))


def edited(line: int, text: str) -> bytes:
    lines = APP.splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    return "".join(lines).encode()


async def test_the_conflict_radar_in_the_page(chromium: Path, env: dict[str, str], shots: Path) -> None:
    """Two agents edit the same line, uncommitted: the radar (running in their servers) predicts the
    conflict and the open page shows the pair, its file and lines, and what to do, without a reload;
    one agent takes its edit back and the pair goes, counted as resolved in the chart."""
    repo = Path(env["AGENT_COORD_REPO"])
    (repo / "app.py").write_text(APP)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "app")
    radar = {"AGENT_COORD_RADAR_EVERY_S": "1"}
    with web_server(env) as server:
        async with browser(chromium) as new_page:
            view = await new_page(server.url)
            page = view.page
            assert "No predicted merge conflicts" in (await page.locator("#conflict-rows").text_content() or "")
            left = [
                call_step("allocate_worktree", {"branch": "feat/left", "task": "rename the helpers"}, "a"),
                write_step("a", "app.py", edited(7, "seven by left")),
            ]
            right = [
                call_step("allocate_worktree", {"branch": "feat/right", "task": "fix the helpers"}, "a"),
                write_step("a", "app.py", edited(7, "seven by right")),
            ]
            async with (
                agent_process(env, left, AGENT_COORD_AGENT_ID="lefty", **radar) as a,
                agent_process(env, right, AGENT_COORD_AGENT_ID="righty", **radar) as b,
            ):
                assert all(r["ok"] for r in await a.until_ready()) and all(r["ok"] for r in await b.until_ready())
                row = page.locator('#conflict-rows tr[data-kind="conflict"]')
                await row.wait_for()
                text = await row.text_content() or ""
                for expected in ("feat/left", "feat/right", "lefty", "righty", "app.py", "lines 7", "rebases"):
                    assert expected in text, (expected, text)
                assert "1 conflict" in (await page.locator("#conflict-count").text_content() or "")
                await page.locator("#chart-merge svg").wait_for()
                assert view.loads == 1, "the page reloaded"
                # Accessible with the radar's rows in it, at both widths.
                for shot, viewport in (("conflicts-desktop.png", DESKTOP), ("conflicts-narrow.png", NARROW)):
                    v = view if viewport is DESKTOP else await new_page(server.url, viewport)
                    await v.page.locator('#conflict-rows tr[data-kind="conflict"]').wait_for()
                    await v.page.add_script_tag(content=AXE.read_text(encoding="utf-8"))
                    result = await v.page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
                    serious = [
                        f"{x['id']} ({x['impact']}): {x['help']} at {[n['target'] for n in x['nodes']][:3]}"
                        for x in result["violations"]
                        if x["impact"] in ("serious", "critical")
                    ]
                    assert serious == [], serious
                    await v.page.locator("#conflicts").screenshot(path=str(shots / shot))
                    assert v.errors == []
                # One side takes its edit back: the pair goes, and the chart counts it as resolved.
                assert (await b.send(write_step("a", "app.py", APP.encode())))["ok"]
                await page.locator("#conflict-rows >> text=No predicted merge conflicts").wait_for()
                await page.wait_for_function(
                    "(document.querySelector('#chart-merge svg') || {getAttribute: () => ''})"
                    ".getAttribute('aria-label').includes('1 predicted, 1 resolved')"
                )
                await page.locator("#chart-merge").screenshot(path=str(shots / "merge-conflicts-chart.png"))
                assert view.loads == 1 and view.errors == []
