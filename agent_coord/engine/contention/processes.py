"""Count agent processes on this host with psutil: the one contention signal ManicTime cannot give.

Cost, measured on the development container (Linux, 2 CPUs, psutil 7.2): a fresh `scan()` through
psutil takes 4.0 ms with 67 processes and 16.4 ms with 317 (about 50-60 µs per process); a cached one
about 0.3 µs. Hence the cache: allocation under contention may ask several times a second, and a
worker thread keeps the event loop free. On Linux the scan reads `/proc/<pid>/stat` and `cmdline`
itself, two reads a process where psutil's objects make several (a third of the time); with 16 agents'
servers each scanning every 2 s, psutil's scans were the largest part of their Python at allocation.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio.to_thread
import psutil

# Claude Code as a native binary ("claude"), as the npm package run by node, and its older name.
DEFAULT_AGENT_PATTERNS: tuple[str, ...] = ("claude", "@anthropic-ai/claude-code", "claude-code")

# A script run by one of these shows the script, not the program, as what is running.
_INTERPRETERS = frozenset({"node", "bun", "deno", "python", "python3"})


@dataclass(frozen=True, slots=True)
class ProcessScan:
    count: int  # agent processes, not counting a match whose parent also matched (a wrapper)
    pids: list[int]
    scanned_at_monotonic: float
    error: str | None = None

    @property
    def age_s(self) -> float:
        """Seconds since the scan; a property so a cached scan stays truthful about its age."""
        return time.monotonic() - self.scanned_at_monotonic


def _base(arg: str) -> str:
    name = arg.replace("\\", "/").rsplit("/", 1)[-1].casefold()
    return name.removesuffix(".exe")


def _is_cmdline_pattern(pattern: str) -> bool:
    # A bare name ("claude") must equal a process name; anything path- or argument-like
    # ("@anthropic-ai/claude-code", "sleep 31.5") is looked for inside the command line.
    return any(ch in pattern for ch in "/@\\ ")


class ProcessScanner:
    """Counts processes matching `patterns`, at most one real scan per `cache_s` seconds.

    A bare pattern matches the process name or the base name of its executable argument (the
    script's, for an interpreter such as node); a pattern with "/", "@", "\\" or a space matches a
    substring of the space-joined command line. Comparisons ignore case and a ".exe" suffix.
    """

    def __init__(self, patterns: Sequence[str] = DEFAULT_AGENT_PATTERNS, cache_s: float = 2.0) -> None:
        self.names = frozenset(_base(p) for p in patterns if p and not _is_cmdline_pattern(p))
        self.fragments = tuple(p.casefold() for p in patterns if p and _is_cmdline_pattern(p))
        self.cache_s = cache_s
        self._cached: ProcessScan | None = None
        self._lock = threading.Lock()  # concurrent callers share one scan instead of racing

    def scan(self) -> ProcessScan:
        with self._lock:
            cached = self._cached
            if cached is not None and time.monotonic() - cached.scanned_at_monotonic < self.cache_s:
                return cached
            self._cached = self._scan()
            return self._cached

    async def scan_async(self) -> ProcessScan:
        """`scan`, off the event loop when it must read the process table; a fresh cached scan is
        answered at once (an allocation under contention asks several times a second)."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached.scanned_at_monotonic < self.cache_s:
            return cached
        return await anyio.to_thread.run_sync(self.scan)

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def matches(self, name: str | None, cmdline: Sequence[str] | None) -> bool:
        if name and _base(name) in self.names:
            return True
        if not cmdline:
            return False
        first = _base(cmdline[0])
        if first in self.names:
            return True
        if first in _INTERPRETERS:
            script = next((a for a in cmdline[1:] if not a.startswith("-")), None)
            if script is not None and _base(script) in self.names:
                return True
        joined = " ".join(cmdline).casefold()
        return any(f in joined for f in self.fragments)

    def _scan(self) -> ProcessScan:
        started = time.monotonic()
        own = os.getpid()
        if sys.platform == "linux":
            with contextlib.suppress(OSError):
                return self._scan_proc(own, started)
        return self._scan_psutil(own, started)

    def _scan_psutil(self, own: int, started: float) -> ProcessScan:
        matched: dict[int, int | None] = {}
        try:
            # Attributes a process refuses (AccessDenied) come back as None; a process that exits
            # mid-iteration is skipped by process_iter itself.
            for proc in psutil.process_iter(["name", "cmdline", "ppid", "status"]):
                info = proc.info
                if proc.pid == own or info.get("status") == psutil.STATUS_ZOMBIE:
                    continue
                if self.matches(info.get("name"), info.get("cmdline")):
                    matched[proc.pid] = info.get("ppid")
        except (psutil.Error, OSError) as exc:
            return ProcessScan(0, [], started, error=f"process scan failed: {type(exc).__name__}: {exc}")
        pids = sorted(pid for pid, ppid in matched.items() if ppid not in matched)
        return ProcessScan(len(pids), pids, started)

    def _scan_proc(self, own: int, started: float) -> ProcessScan:
        """`_scan` from Linux's /proc: a process's name, state and parent from `stat`, its command line
        from `cmdline` (unreadable: None, as psutil's AccessDenied). A process gone mid-scan is skipped."""
        matched: dict[int, int | None] = {}
        with os.scandir("/proc") as entries:
            pids = [int(e.name) for e in entries if e.name.isdigit()]
        for pid in pids:
            if pid == own:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            # The name may hold spaces and parentheses: it is what lies between the first "(" and the last ")".
            close = stat.rfind(b")")
            name = stat[stat.find(b"(") + 1 : close].decode("utf-8", "replace")
            fields = stat[close + 2 :].split(b" ", 2)
            if len(fields) < 2 or not fields[1].isdigit() or fields[0] == b"Z":
                continue  # a zombie, or a line this reader does not know: no agent to count
            ppid = fields[1]
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue
            except OSError:
                cmdline = None
            else:
                cmdline = _split_cmdline(raw)
            if self.matches(name, cmdline):
                matched[pid] = int(ppid)
        found = sorted(pid for pid, ppid in matched.items() if ppid not in matched)
        return ProcessScan(len(found), found, started)


def _split_cmdline(raw: bytes) -> list[str]:
    """A command line as psutil reads it: NUL-separated arguments, or (a program that rewrote its own,
    as some servers do) one string of space-separated ones."""
    text = raw.decode("utf-8", "surrogateescape")
    if text.endswith("\0"):
        text = text[:-1]
    args = text.split("\0")
    if len(args) == 1 and " " in args[0]:
        args = args[0].split(" ")
    return args if text else []
