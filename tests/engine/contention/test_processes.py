"""Process scanner against real spawned processes, plus the matching rules it applies."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from agent_coord.engine.contention import processes
from agent_coord.engine.contention.processes import DEFAULT_AGENT_PATTERNS, ProcessScan, ProcessScanner

pytestmark = pytest.mark.anyio


@pytest.fixture
def unique_seconds() -> str:
    # Long enough to outlive the test, unique enough that nothing else on the host matches it.
    return f"{random.randint(600, 900)}.{random.randint(100000, 999999)}"


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def fresh(scanner: ProcessScanner) -> ProcessScan:
    scanner.invalidate()
    return scanner.scan()


def test_counts_a_spawned_process_and_forgets_it_when_killed(
    spawned: list[subprocess.Popen[bytes]], unique_seconds: str
) -> None:
    scanner = ProcessScanner([f"sleep {unique_seconds}"], cache_s=2.0)
    before = fresh(scanner)
    assert before.error is None
    proc = subprocess.Popen(["sleep", unique_seconds])
    spawned.append(proc)
    wait_for(lambda: proc.pid in fresh(scanner).pids)
    during = scanner.scan()
    assert during.count == before.count + 1

    proc.kill()
    # Not reaped yet: a zombie, which is no agent.
    wait_for(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE)
    assert proc.pid not in fresh(scanner).pids
    proc.wait(timeout=5)
    after = fresh(scanner)
    assert after.count == before.count and proc.pid not in after.pids


def test_a_wrapper_and_its_child_count_once(spawned: list[subprocess.Popen[bytes]], unique_seconds: str) -> None:
    scanner = ProcessScanner([f"sleep {unique_seconds}"], cache_s=0.0)
    before = scanner.scan()
    # `; exit 0` stops sh from exec-ing sleep, so both processes carry the pattern.
    wrapper = subprocess.Popen(["sh", "-c", f"sleep {unique_seconds}; exit 0"])
    spawned.append(wrapper)
    wait_for(lambda: any(c.name() == "sleep" for c in psutil.Process(wrapper.pid).children()))
    scan = scanner.scan()
    assert scan.count == before.count + 1
    assert wrapper.pid in scan.pids
    for child in psutil.Process(wrapper.pid).children():
        child.kill()


def test_second_scan_within_cache_s_returns_the_cached_object(
    spawned: list[subprocess.Popen[bytes]], unique_seconds: str
) -> None:
    scanner = ProcessScanner([f"sleep {unique_seconds}"], cache_s=30.0)
    first = scanner.scan()
    proc = subprocess.Popen(["sleep", unique_seconds])
    spawned.append(proc)
    time.sleep(0.05)
    second = scanner.scan()
    assert second is first  # the new process is not seen until the cache lapses
    assert second.age_s >= 0.05
    assert first.scanned_at_monotonic <= time.monotonic() - 0.05


def test_cache_lapses_after_cache_s() -> None:
    scanner = ProcessScanner(cache_s=0.05)
    first = scanner.scan()
    time.sleep(0.08)
    second = scanner.scan()
    assert second is not first
    # A fresh scan, taken after the cached one lapsed (not how old it is by now: that is the machine's load).
    assert second.scanned_at_monotonic >= first.scanned_at_monotonic + 0.05


async def test_scan_async_runs_in_a_worker_thread(spawned: list[subprocess.Popen[bytes]], unique_seconds: str) -> None:
    proc = subprocess.Popen(["sleep", unique_seconds])
    spawned.append(proc)
    scanner = ProcessScanner([f"sleep {unique_seconds}"], cache_s=0.0)
    wait_for(lambda: proc.pid in scanner.scan().pids)
    scan = await scanner.scan_async()
    assert proc.pid in scan.pids and scan.error is None


@pytest.mark.parametrize(
    ("name", "cmdline", "expected"),
    [
        ("claude", ["claude", "--resume"], True),  # the native binary
        ("claude.exe", None, True),  # Windows, command line denied
        ("node", ["node", "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js"], True),
        ("node", ["node", "--no-warnings", "/home/u/.local/bin/claude", "-p", "hi"], True),
        (None, [r"C:\Users\u\AppData\Roaming\npm\claude.cmd"], False),  # a .cmd shim is not the agent
        ("claude-code", ["claude-code"], True),
        ("claude-desktop", ["/opt/Claude/claude-desktop"], False),
        ("bash", ["bash", "-c", "cat ~/.claude/settings.json"], False),  # mentions, is not, claude
        ("node", ["node", "server.js"], False),
        (None, None, False),  # everything denied
    ],
)
def test_default_patterns(name: str | None, cmdline: list[str] | None, expected: bool) -> None:
    assert ProcessScanner(DEFAULT_AGENT_PATTERNS).matches(name, cmdline) is expected


class FakeProc:
    def __init__(self, pid: int, info: dict[str, Any]) -> None:
        self.pid = pid
        self.info = info


def test_tolerates_denied_and_zombie_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    procs = [
        FakeProc(101, {"name": "claude", "cmdline": None, "ppid": 1, "status": "sleeping"}),
        FakeProc(102, {"name": None, "cmdline": None, "ppid": None, "status": None}),  # all denied
        FakeProc(103, {"name": "claude", "cmdline": ["claude"], "ppid": 1, "status": psutil.STATUS_ZOMBIE}),
        FakeProc(104, {"name": "claude", "cmdline": ["claude"], "ppid": 101, "status": "running"}),
    ]
    monkeypatch.setattr(processes.psutil, "process_iter", lambda attrs: iter(procs))
    # psutil's scan: every system but Linux, and Linux where /proc cannot be read.
    scan = ProcessScanner(cache_s=0.0)._scan_psutil(0, 0.0)
    assert scan.count == 1 and scan.pids == [101] and scan.error is None


def test_a_failed_scan_reports_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(attrs: list[str]) -> Iterator[FakeProc]:
        raise psutil.AccessDenied(pid=None, name=None, msg="/proc is not readable")

    monkeypatch.setattr(processes.psutil, "process_iter", broken)
    scan = ProcessScanner(cache_s=0.0)._scan_psutil(0, 0.0)
    assert scan.count == 0 and scan.pids == []
    assert scan.error is not None and "AccessDenied" in scan.error


@pytest.mark.skipif(sys.platform != "linux", reason="the /proc reader is Linux's")
def test_the_proc_reader_finds_what_psutil_finds(spawned: list[subprocess.Popen[bytes]], unique_seconds: str) -> None:
    """A plain program, a wrapper and its child, an interpreter's script, a process that renamed itself
    with parentheses in its name: the /proc reader and psutil agree on each pattern."""
    name = f"a)(c{random.randint(10000, 99999)}"  # at most 15 bytes: the kernel's limit
    renamed = f"import ctypes, time; ctypes.CDLL(None).prctl(15, b'{name}', 0, 0, 0); time.sleep({unique_seconds})"
    spawned.append(subprocess.Popen(["sleep", unique_seconds]))
    spawned.append(subprocess.Popen(["sh", "-c", f"sleep {unique_seconds}; exit 0"]))
    sleeper = "import sys, time; time.sleep(float(sys.argv[1]))"
    spawned.append(subprocess.Popen(["python3", "-c", sleeper, unique_seconds, "x@y/z"]))
    spawned.append(subprocess.Popen(["python3", "-c", renamed]))
    for patterns, count in (([f"sleep {unique_seconds}"], 2), ([f"{unique_seconds} x@y/z"], 1), ([name], 1)):
        scanner = ProcessScanner(patterns, cache_s=0.0)
        wait_for(lambda: scanner._scan_psutil(0, 0.0).count == count)  # noqa: B023 (used at once)
        ours = scanner._scan_proc(0, 0.0)
        assert ours.pids == scanner._scan_psutil(0, 0.0).pids and ours.count == count, patterns
