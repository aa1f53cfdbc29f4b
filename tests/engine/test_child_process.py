"""run_child: a child run to its end in a worker thread; a cancelled caller leaves no child behind."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio
import psutil
import pytest

from agent_coord.engine.child_process import run_child

pytestmark = pytest.mark.anyio


async def test_output_exit_code_and_input_come_back() -> None:
    script = "import sys; data = sys.stdin.read(); print(data.upper()); print('err', file=sys.stderr); sys.exit(3)"
    result = await run_child([sys.executable, "-c", script], env=dict(os.environ), input=b"hello")
    assert (result.returncode, result.stdout.strip(), result.stderr.strip()) == (3, b"HELLO", b"err")


async def test_without_input_the_child_reads_nothing() -> None:
    result = await run_child([sys.executable, "-c", "import sys; print(len(sys.stdin.read()))"], env=dict(os.environ))
    assert result.stdout.strip() == b"0"


async def test_a_cancelled_caller_kills_the_child_and_waits_for_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_child, [sys.executable, "-c", script], env=dict(os.environ)))
            while not (pid_file.exists() and pid_file.read_text()):
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught  # ended by our cancel, not by the 60 s sleep
    pid = int(pid_file.read_text())
    # Waited for: the child is gone (reaped), not merely signalled.
    assert not psutil.pid_exists(pid)


CANCELLED_EARLY = """
import anyio, sys
from agent_coord.engine.child_process import run_child

async def main(mode):
    if mode == "at-once":
        with anyio.move_on_after(0):
            await run_child(["true"], env=None)
    else:  # queued for a worker thread, cancelled before one takes it
        async with anyio.create_task_group() as tg:
            async def go():
                await run_child(["true"], env=None)
            tg.start_soon(go)
            await anyio.sleep(0)
            tg.cancel_scope.cancel()
    print("returned", mode)

anyio.run(main, sys.argv[1])
"""


@pytest.mark.parametrize("mode", ["at-once", "queued"])
def test_a_caller_cancelled_before_the_child_started_returns(mode: str) -> None:
    """No child was started, so none is waited for (a wait for one would never end)."""
    done = subprocess.run(
        [sys.executable, "-c", CANCELLED_EARLY, mode], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == f"returned {mode}", done.stderr
